"""ADE20K through mmseg: the recipe (golden), the backbone, layer decay, the demo data, and
real tiny runs that stop and resume."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nepa import checkpoint
from nepa.config import ConfigError
from nepa.evals.common import EvalControl
from nepa.evals.segmentation.config import (
    SegmentationConfig,
    build_mmseg_config,
    drop_path,
    feature_blocks,
    layer_decay,
)
from nepa.evals.segmentation.tiny_ade import make_tiny_ade20k
from nepa.model import build_model
from nepa.model_config import model_config

# Known-harmless mmcv/mmseg warnings, silenced here only (the library leaves them): no compiled
# mmcv ops (UPerNet needs none), a deprecation notice the fork prints even for the intended
# `reduce_zero_label` use, the loss's `avg_non_ignore` default note, the disabled visualiser.
pytestmark = [
    pytest.mark.seg,
    pytest.mark.filterwarnings("ignore:Fail to import ``MultiScaleDeformableAttention``:UserWarning"),
    pytest.mark.filterwarnings("ignore:`reduce_zero_label` will be deprecated:UserWarning"),
    pytest.mark.filterwarnings("ignore:Default ``avg_non_ignore`` is False:UserWarning"),
    pytest.mark.filterwarnings("ignore:The draw is False:UserWarning"),
]

GOLDEN = Path(__file__).parent / "golden" / "segmentation_B.json"
TINY = dict(crop_size=64, batch_size=4, warmup_iters=2, num_workers=0, decode_channels=32,
            aux_channels=32, log_interval=2, lr=1e-3)


def _mm():
    """The mmseg registries with our modules registered (imported lazily, like the library)."""
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    import nepa.evals.segmentation.backbone  # noqa: F401

    register_all_modules(init_default_scope=True)
    return MODELS


@pytest.fixture(scope="module")
def tiny_ade(tmp_path_factory) -> Path:
    return make_tiny_ade20k(tmp_path_factory.mktemp("ade") / "tiny_ade", train=8, val=4, size=96)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> Path:
    """A tiny nepa checkpoint with non-default weights (so loading is observable)."""
    torch.manual_seed(1)
    model = build_model("tiny")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    checkpoint.save(path, checkpoint.model_payload(model.cfg, model.state_dict()))
    return path


def _tiny_mm(**overrides) -> dict:
    return build_mmseg_config(model_config("tiny"), SegmentationConfig(**{**TINY, "sync_bn": False, **overrides}),
                              None, "/nonexistent")


# ---------------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------------


def test_default_config_for_base_equals_the_golden_file():
    rendered = build_mmseg_config(model_config("B"), SegmentationConfig(), "weights/nepa-base", "work_dirs/ade20k")
    text = json.dumps(rendered, indent=1, sort_keys=True) + "\n"
    if os.environ.get("NEPA_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "recipe changed: check it, then regenerate with NEPA_UPDATE_GOLDEN=1"
    # The recipe's headline values, readable here rather than only in the golden file.
    assert rendered["train_cfg"]["max_iters"] == 160_000
    assert rendered["train_dataloader"]["batch_size"] == 16
    assert rendered["optim_wrapper"]["paramwise_cfg"] == {"num_layers": 12, "layer_decay_rate": 0.65}
    assert rendered["model"]["data_preprocessor"]["size"] == (518, 518)
    assert rendered["model"]["test_cfg"] == {"mode": "slide", "crop_size": (518, 518), "stride": (345, 345)}
    assert not any("http" in line for line in text.splitlines())


def test_feature_blocks_and_size_defaults_follow_the_depth():
    cfg = SegmentationConfig()
    assert feature_blocks(cfg, 12) == (3, 5, 7, 11)  # B
    assert feature_blocks(cfg, 24) == (7, 11, 15, 23)  # L
    assert feature_blocks(cfg, 6) == (1, 2, 3, 5)  # tiny
    assert (layer_decay(cfg, 12), layer_decay(cfg, 24)) == (0.65, 0.95)  # MAE-B, BEiT-L
    assert (drop_path(cfg, 12), drop_path(cfg, 24)) == (0.1, 0.2)
    large = build_mmseg_config(model_config("L"), cfg, None, "w")
    assert large["model"]["backbone"]["out_indices"] == [7, 11, 15, 23]
    assert large["model"]["decode_head"]["in_channels"] == [1024] * 4
    assert large["optim_wrapper"]["paramwise_cfg"]["layer_decay_rate"] == 0.95
    assert large["model"]["backbone"]["model"]["causal"] is False


def test_config_checks_name_the_field():
    with pytest.raises(ConfigError, match="segmentation.feature_blocks"):
        SegmentationConfig(feature_blocks=(3, 5, 5, 11))
    with pytest.raises(ConfigError, match="segmentation.warmup_iters"):
        SegmentationConfig(iters=100, warmup_iters=100)
    with pytest.raises(ConfigError, match="segmentation.layer_decay"):
        SegmentationConfig(layer_decay=1.5)
    with pytest.raises(ConfigError, match="segmentation.batch_size"):
        build_mmseg_config(model_config("tiny"), SegmentationConfig(batch_size=6), None, "w", world_size=4)


def test_importing_the_package_config_and_data_is_light():
    code = ("import sys, nepa, nepa.evals, nepa.evals.segmentation.config, nepa.evals.segmentation.tiny_ade; "
            "print(sorted(m for m in ('mmseg', 'mmcv', 'mmengine', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"  # no mmseg stack, not even torch


# ---------------------------------------------------------------------------------------------
# Backbone, pyramid, optimizer
# ---------------------------------------------------------------------------------------------


def test_tiny_pyramid_has_strides_1_2_4_8_from_the_patch_4_grid():
    models = _mm()
    mm = _tiny_mm()
    backbone, neck = models.build(mm["model"]["backbone"]), models.build(mm["model"]["neck"])
    maps = backbone(torch.randn(2, 3, 64, 64))
    assert [tuple(m.shape) for m in maps] == [(2, 128, 16, 16)] * 4  # blocks 1, 2, 3, 5
    pyramid = neck(maps)
    assert [tuple(p.shape[-2:]) for p in pyramid] == [(64, 64), (32, 32), (16, 16), (8, 8)]
    assert backbone.out_indices == (1, 2, 3, 5)


def test_patch_14_crops_of_512_are_padded_to_518_with_ignored_labels():
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    models = _mm()
    mm = build_mmseg_config(model_config("tiny", patch_size=14, image_size=224, dim=64, depth=4, num_heads=4,
                                         mlp_dim=128), SegmentationConfig(sync_bn=False), None, "w")
    pre = models.build(mm["model"]["data_preprocessor"])
    sample = SegDataSample(gt_sem_seg=PixelData(data=torch.zeros(1, 512, 512, dtype=torch.long)))
    out = pre({"inputs": [torch.zeros(3, 512, 512, dtype=torch.uint8)], "data_samples": [sample]}, training=True)
    assert out["inputs"].shape == (1, 3, 518, 518)
    labels = out["data_samples"][0].gt_sem_seg.data
    assert labels.shape == (1, 518, 518) and labels[0, 512:].eq(255).all() and labels[0, :512, :512].eq(0).all()
    maps = models.build(mm["model"]["backbone"])(out["inputs"])
    assert tuple(maps[0].shape) == (1, 64, 37, 37)
    assert [tuple(p.shape[-2:]) for p in models.build(mm["model"]["neck"])(maps)] == [
        (148, 148), (74, 74), (37, 37), (18, 18)]


def test_backbone_loads_nepa_weights_exactly_and_attends_both_ways(tiny_weights):
    from nepa.evals.segmentation.backbone import NepaBackbone

    models = _mm()
    spec = {**_tiny_mm()["model"]["backbone"], "weights": str(tiny_weights)}
    backbone = models.build(spec)
    assert isinstance(backbone, NepaBackbone)
    backbone.init_weights()
    saved = checkpoint.load(tiny_weights)["model"]
    own = backbone.vit.state_dict()
    assert own.keys() == saved.keys()
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    assert torch.equal(own["blocks.3.attn.qkv.weight"], saved["blocks.3.attn.qkv.weight"])
    assert not any(block.attn.causal for block in backbone.vit.blocks)
    backbone.eval()
    image = torch.randn(1, 3, 64, 64)
    changed = image.clone()
    changed[..., 60:, 60:] += 1.0  # only the last patch (row-major) changes
    with torch.no_grad():
        first, second = backbone(image)[0], backbone(changed)[0]
    # Patch 0 sees the last one (a causal backbone gives exactly 0). Raw taps, no final norm:
    # LayerScale (1e-5) keeps each block's change small.
    assert (first[0, :, 0, 0] - second[0, :, 0, 0]).abs().max() > 1e-6
    assert not backbone.vit.norm.weight.requires_grad  # untapped: frozen, no unused DDP parameter


def test_layer_decay_groups_scale_lr_per_block_and_skip_decay_on_norms():
    from mmengine.optim import build_optim_wrapper

    models = _mm()
    mm = _tiny_mm(feature_norm=True)  # the final norm trained too: every backbone group
    model = models.build(mm["model"])
    wrapper = build_optim_wrapper(model, mm["optim_wrapper"])
    lr_of, wd_of = {}, {}
    for group in wrapper.optimizer.param_groups:
        for name in group["param_names"]:
            assert name not in lr_of  # every parameter in exactly one group
            lr_of[name], wd_of[name] = group["lr"], group["weight_decay"]
    assert set(lr_of) == {n for n, _ in model.named_parameters()}
    base, rate, depth = 1e-3, 0.65, 6
    expected = {
        "backbone.vit.patch_embed.proj.weight": base * rate ** (depth + 1),
        "backbone.vit.cls_token": base * rate ** (depth + 1),
        "backbone.vit.blocks.0.attn.qkv.weight": base * rate**depth,
        "backbone.vit.blocks.3.mlp.fc1.weight": base * rate ** (depth - 3),
        "backbone.vit.blocks.5.ls2.gamma": base * rate,
        "backbone.vit.norm.weight": base,
        "neck.upsample_4x.0.weight": base,
        "decode_head.conv_seg.weight": base,
    }
    for name, lr in expected.items():
        assert math.isclose(lr_of[name], lr, rel_tol=1e-9), name
    no_decay = ["backbone.vit.cls_token", "backbone.vit.blocks.2.norm1.weight", "backbone.vit.blocks.2.attn.qkv.bias",
                "backbone.vit.blocks.2.ls1.gamma", "backbone.vit.norm.bias", "decode_head.bottleneck.bn.weight"]
    assert all(wd_of[n] == 0.0 for n in no_decay)
    assert wd_of["backbone.vit.blocks.2.attn.qkv.weight"] == 0.05
    assert wd_of["decode_head.conv_seg.weight"] == 0.05


# ---------------------------------------------------------------------------------------------
# Demo data
# ---------------------------------------------------------------------------------------------


def test_tiny_ade20k_has_the_ade_layout_and_label_encoding(tiny_ade, tmp_path):
    train = sorted((tiny_ade / "images" / "training").iterdir())
    val = sorted((tiny_ade / "annotations" / "validation").iterdir())
    assert [p.name for p in train[:2]] == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
    assert len(train) == 8 and [p.name for p in val] == [f"ADE_val_{i:08d}.png" for i in range(1, 5)]
    image = Image.open(train[0])
    label = Image.open(tiny_ade / "annotations" / "training" / "ADE_train_00000001.png")
    assert (image.mode, image.size, label.mode, label.size) == ("RGB", (96, 72), "L", (96, 72))
    values = set(np.unique(np.concatenate(
        [np.asarray(Image.open(p)).ravel() for p in (tiny_ade / "annotations" / "training").iterdir()])))
    assert {0, 1} <= values <= set(range(12)) and len(values - {0, 1}) >= 5  # ignore, canvas, digits
    again = make_tiny_ade20k(tmp_path / "again", train=8, val=4, size=96)
    same = Image.open(again / "annotations" / "training" / "ADE_train_00000001.png")
    assert np.array_equal(np.asarray(label), np.asarray(same))  # deterministic
    # mmseg reads it with reduce_zero_label: 0 -> 255 (ignored), k -> k - 1
    from mmseg.datasets import ADE20KDataset

    _mm()
    dataset = ADE20KDataset(data_root=str(tiny_ade), data_prefix=dict(
        img_path="images/training", seg_map_path="annotations/training"),
        pipeline=[dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", reduce_zero_label=True)])
    assert len(dataset) == 8
    seg = dataset[0]["gt_seg_map"]
    assert set(np.unique(seg)) == {255 if v == 0 else v - 1 for v in np.unique(np.asarray(label))}


# ---------------------------------------------------------------------------------------------
# Real runs
# ---------------------------------------------------------------------------------------------


def test_tiny_run_trains_validates_and_reports_miou(tiny_ade, tiny_weights, tmp_path):
    from nepa.evals.segmentation import run_segmentation

    records = []
    cfg = SegmentationConfig(data_root=str(tiny_ade), iters=8, val_interval=4, checkpoint_interval=4, **TINY)
    outcome = run_segmentation(tiny_weights, cfg, tmp_path / "seg", control=EvalControl(progress=records.append))
    assert (outcome.status, outcome.step, outcome.total_steps) == ("COMPLETED", 8, 8)
    assert [r["step"] for r in records] == list(range(1, 9)) and all(r["total"] == 8 for r in records)
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in records)
    miou, aacc = outcome.metrics
    assert (miou.name, miou.split, miou.weights, aacc.name) == ("mIoU", "val", "raw", "aAcc")
    assert 0.0 <= miou.value <= 100.0 and 0.0 < aacc.value <= 100.0
    per_class = miou.detail["per_class_iou"]
    assert "wall" in per_class and 2 <= len(per_class) <= 150  # the canvas class is ADE "wall"
    assert all(0.0 <= v <= 100.0 for v in per_class.values())
    assert [p["step"] for p in outcome.curves["val"]] == [4, 8]
    assert outcome.curves["val"][-1]["mIoU"] == miou.value
    assert (tmp_path / "seg" / "iter_8.pth").is_file()


def test_stop_saves_and_a_fresh_call_resumes_where_it_stopped(tiny_ade, tiny_weights, tmp_path):
    from nepa.evals.segmentation import run_segmentation

    work_dir = tmp_path / "seg"
    cfg = SegmentationConfig(data_root=str(tiny_ade), iters=7, val_interval=7, checkpoint_interval=7, **TINY)
    first = []
    control = EvalControl()
    control.progress = lambda r: (first.append(r["step"]), r["step"] == 3 and control.request_stop("preempted"))
    stopped = run_segmentation(tiny_weights, cfg, work_dir, control=control)
    assert (stopped.status, stopped.step, stopped.metrics) == ("STOPPED", 3, ())
    assert first == [1, 2, 3]
    assert (work_dir / "last_checkpoint").read_text().strip() == str((work_dir / "iter_3.pth").resolve())
    with pytest.raises(ConfigError, match="segmentation.iters"):  # a resume cannot extend the schedule
        run_segmentation(tiny_weights, dataclasses.replace(cfg, iters=9), work_dir, control=EvalControl())
    second = []
    done = run_segmentation(tiny_weights, cfg, work_dir, control=EvalControl(progress=lambda r: second.append(r)))
    assert [r["step"] for r in second] == [4, 5, 6, 7]  # continues, does not restart
    assert (done.status, done.step) == ("COMPLETED", 7)
    assert 0.0 <= done.metrics[0].value <= 100.0 and [p["step"] for p in done.curves["val"]] == [7]
    third = []  # a requeue after the end: nothing trains, the same numbers come back
    again = run_segmentation(tiny_weights, cfg, work_dir, control=EvalControl(progress=third.append))
    assert third == [] and again.metrics == done.metrics and again.step == 7
