"""The B and L recipes as rendered from the templates, value by value against their sources.

One table: every value the release (its scripts and configs) or the cited protocol (MAE's
linear probe, MAE-B's and BEiT-L's UPerNet on ADE20K) fixes. A default that drifts from its
source fails here. The demo (tiny) keeps its own, measured recipe: the last tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from nepa.config import to_dict
from nepa.evals.segmentation.config import drop_path, feature_blocks, layer_decay
from nepa.evals.spec import recipe_name
from nepa.model_config import SIZES
from nepa.train.config import EMAConfig, base_lr
from nepactl.evaluate import render_spec
from nepactl.render import render
from nepactl.results import protocol_label

REL = "release"  # the release's scripts and configs (reference: "Recipes of the release")
MAE_PROBE = "MAE main_linprobe.py"
MAE_ADE = "mmseg MAE-B UPerNet 160k"
BEIT_L = "BEiT-L UPerNet"

# (task, sizes, dotted key, value, source)
RECIPES = [
    # -- pretraining ---------------------------------------------------------------------------
    ("pretrain", "BL", "train.epochs", 1600, REL),
    ("pretrain", "BL", "train.global_batch", 4096, REL),
    ("pretrain", "BL", "train.seed", 1337, REL),
    ("pretrain", "BL", "optim.blr", 3e-4, f"{REL}: lr = 3e-4 x batch/256"),
    ("pretrain", "BL", "optim.lr", None, f"{REL}: the blr rule, not an absolute lr"),
    ("pretrain", "BL", "optim.min_lr", 0.0, f"{REL}: cosine to 0"),
    ("pretrain", "BL", "optim.betas", [0.9, 0.95], REL),
    ("pretrain", "BL", "optim.weight_decay", 0.05, REL),
    ("pretrain", "BL", "optim.warmup_fraction", 0.025, REL),
    ("pretrain", "BL", "optim.warmup_steps", None, f"{REL}: the 2.5 % rule"),
    ("pretrain", "BL", "optim.clip_grad", 1.0, REL),
    ("pretrain", "BL", "data.crop_scale", [0.08, 1.0], f"{REL}: RandomResizedCrop(224) defaults"),
    ("pretrain", "BL", "data.hflip", True, REL),
    ("pretrain", "BL", "ema.enabled", True, REL),
    ("pretrain", "BL", "ema.decay", 0.9999, REL),
    ("pretrain", "BL", "ema.warmup_steps", 0, f"{REL}: constant decay from step 1"),
    ("pretrain", "BL", "objective.shift", True, REL),
    ("pretrain", "BL", "objective.stop_grad", True, REL),
    ("pretrain", "BL", "model.causal", True, REL),
    ("pretrain", "BL", "model.rope_rescale", 2.0, f"{REL}: pos_embed_rescale"),
    ("pretrain", "BL", "model.layerscale_init", 1e-5, REL),
    ("pretrain", "BL", "model.drop_path", 0.0, REL),
    ("pretrain", "B", "model.qk_norm_affine", False, f"{REL}: B pretrain config.json"),
    ("pretrain", "L", "model.qk_norm_affine", True, f"{REL}: L pretrain config.json"),
    # -- fine-tuning ---------------------------------------------------------------------------
    ("finetune", "BL", "finetune.epochs", 100, REL),
    ("finetune", "BL", "finetune.global_batch", 1024, REL),
    ("finetune", "BL", "finetune.lr", None, f"{REL}: lr = blr x batch/256"),
    ("finetune", "B", "finetune.blr", 1.5e-3, REL),
    ("finetune", "L", "finetune.blr", 1e-3, REL),
    ("finetune", "BL", "finetune.head_lr", 1e-3, f"{REL}: head_lr, not scaled"),
    ("finetune", "BL", "finetune.betas", [0.9, 0.999], REL),
    ("finetune", "BL", "finetune.weight_decay", 0.05, REL),
    ("finetune", "B", "finetune.warmup_fraction", 0.2, REL),
    ("finetune", "L", "finetune.warmup_fraction", 0.3, REL),
    ("finetune", "BL", "finetune.clip_grad", 1.0, f"{REL}: the trainer's default"),
    ("finetune", "B", "finetune.layer_decay", 0.65, REL),
    ("finetune", "L", "finetune.layer_decay", 0.75, REL),
    ("finetune", "BL", "finetune.layer_decay_schedule", "release", f"{REL}: per-group warm-up"),
    ("finetune", "B", "finetune.drop_path", 0.1, REL),
    ("finetune", "L", "finetune.drop_path", 0.2, REL),
    ("finetune", "BL", "finetune.causal", False, f"{REL}: is_causal false"),
    ("finetune", "BL", "finetune.freeze_embed", True, REL),
    ("finetune", "BL", "finetune.qk_norm_affine", True, f"{REL}: B and L fine-tune configs"),
    ("finetune", "BL", "finetune.pool", "mean", f"{REL}: add_pooling_layer"),
    ("finetune", "BL", "finetune.label_smoothing", 0.1, REL),
    ("finetune", "BL", "finetune.mixup", 0.8, REL),
    ("finetune", "BL", "finetune.cutmix", 1.0, REL),
    ("finetune", "BL", "finetune.mixup_switch_prob", 0.5, REL),
    ("finetune", "BL", "finetune.auto_augment", "rand-m9-mstd0.5-inc1", REL),
    ("finetune", "BL", "finetune.re_prob", 0.25, REL),
    ("finetune", "BL", "finetune.crop_scale", [0.08, 1.0], f"{REL}: timm create_transform"),
    ("finetune", "BL", "finetune.hflip", 0.5, f"{REL}: timm create_transform"),
    ("finetune", "BL", "finetune.ema.decay", 0.9999, REL),
    ("finetune", "BL", "finetune.ema.warmup_steps", 0, REL),
    ("finetune", "B", "finetune.eval_crop_pct", 0.875, f"{REL}: 256 -> 224"),
    ("finetune", "L", "finetune.eval_crop_pct", 0.95, f"{REL}: crop_pct 0.95"),
    ("finetune", "B", "finetune.eval_squash", False, REL),
    ("finetune", "L", "finetune.eval_squash", True, f"{REL}: (235, 235) resize"),
    ("imagenet-val", "B", "classify.crop_pct", 0.875, REL),
    ("imagenet-val", "L", "classify.crop_pct", 0.95, REL),
    ("imagenet-val", "L", "classify.squash", True, REL),
    # -- linear probe --------------------------------------------------------------------------
    ("linprobe", "BL", "linprobe.protocol", "mae", MAE_PROBE),
    ("linprobe", "BL", "linprobe.epochs", 90, MAE_PROBE),
    ("linprobe", "BL", "linprobe.global_batch", 16384, MAE_PROBE),
    ("linprobe", "BL", "linprobe.blr", 0.1, MAE_PROBE),
    ("linprobe", "BL", "linprobe.warmup_epochs", 10, MAE_PROBE),
    ("linprobe", "BL", "linprobe.momentum", 0.9, MAE_PROBE),
    ("linprobe", "BL", "linprobe.trust_coefficient", 0.001, MAE_PROBE),
    ("linprobe", "BL", "linprobe.weight_decay", 0.0, MAE_PROBE),
    ("linprobe", "BL", "linprobe.train_crop_scale", [0.08, 1.0], MAE_PROBE),
    ("linprobe", "BL", "linprobe.crop_pct", 0.875, f"{MAE_PROBE}: 256 -> 224"),
    ("linprobe", "BL", "linprobe.features", ["mean", "last"], "paper: average / last token"),
    # -- ADE20K (resolved against the depth) ---------------------------------------------------
    ("ade20k", "BL", "segmentation.iters", 160_000, MAE_ADE),
    ("ade20k", "BL", "segmentation.batch_size", 16, MAE_ADE),
    ("ade20k", "BL", "segmentation.crop_size", 512, MAE_ADE),
    ("ade20k", "BL", "segmentation.weight_decay", 0.05, MAE_ADE),
    ("ade20k", "BL", "segmentation.warmup_iters", 1500, MAE_ADE),
    ("ade20k", "BL", "segmentation.feature_norm", False, f"{MAE_ADE}: no norm on the taps"),
    ("ade20k", "B", "segmentation.lr", 1e-4, MAE_ADE),
    ("ade20k", "B", "segmentation.layer_decay", 0.65, MAE_ADE),
    ("ade20k", "B", "segmentation.drop_path", 0.1, MAE_ADE),
    ("ade20k", "B", "segmentation.feature_blocks", [3, 5, 7, 11], MAE_ADE),
    ("ade20k", "L", "segmentation.lr", 2e-5, BEIT_L),
    ("ade20k", "L", "segmentation.layer_decay", 0.95, BEIT_L),
    ("ade20k", "L", "segmentation.drop_path", 0.2, BEIT_L),
    ("ade20k", "L", "segmentation.feature_blocks", [7, 11, 15, 23], BEIT_L),
]


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def _lookup(doc: dict, dotted: str):
    for part in dotted.split("."):
        doc = doc[part]
    return _plain(doc)


@pytest.fixture(scope="module")
def paper_data(tmp_path_factory) -> Path:
    """An ImageFolder stand-in (not digits: the specs must render as the paper protocol)."""
    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        (root / split / "n01").mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / split / "n01" / "a.png")
    (root / "images").mkdir()  # doubles as an ADE20K root for the segmentation spec
    return root


@pytest.fixture(scope="module")
def rendered(paper_data) -> dict[tuple[str, str], dict]:
    """{(task, size): the rendered document} for B and L."""
    docs = {}
    for size in ("B", "L"):
        docs["pretrain", size] = render(size=size, cluster="slurm", nodes=1, gpus_per_node=8,
                                        data=str(paper_data)).spec()
        for task in ("finetune", "imagenet-val", "linprobe", "ade20k"):
            spec, _ = render_spec(task=task, size=size, weights="w.pt", seed=0, random_init=False,
                                  run_data={"source": "imagefolder", "path": str(paper_data)},
                                  sets=(f"segmentation.data_root={paper_data}",))
            assert spec.protocol == "paper", (task, size)
            doc = to_dict(spec)
            if task == "ade20k":  # the values the job uses, resolved against the depth
                seg, depth = spec.segmentation, SIZES[size]["depth"]
                doc["segmentation"].update(layer_decay=layer_decay(seg, depth), drop_path=drop_path(seg, depth),
                                           feature_blocks=list(feature_blocks(seg, depth)))
            docs[task, size] = doc
    return docs


@pytest.mark.parametrize(("task", "size", "key", "value", "source"),
                         [(t, s, k, v, src) for t, sizes, k, v, src in RECIPES for s in sizes],
                         ids=lambda x: x if isinstance(x, str) and len(x) < 40 else "")
def test_rendered_recipe_matches_its_source(rendered, task, size, key, value, source):
    got = _lookup(rendered[task, size], key)
    assert got == pytest.approx(value) if isinstance(value, float) else got == value, (
        f"{task} {size} {key} = {got!r}, but {source} says {value!r}")


def test_derived_pretraining_lr_follows_the_release_rule(paper_data):
    run = render(size="B", cluster="slurm", nodes=1, gpus_per_node=8, data=str(paper_data)).run
    assert base_lr(run.optim, run.train.global_batch) == pytest.approx(4.8e-3)  # 3e-4 x 4096 / 256


def test_recipes_without_a_release_name_their_source(paper_data):
    def spec(task, size):
        return render_spec(task=task, size=size, weights="w.pt", seed=0, random_init=False,
                           run_data={"source": "imagefolder", "path": str(paper_data)},
                           sets=(f"segmentation.data_root={paper_data}",))[0]

    assert recipe_name(spec("linprobe", "B")) == "MAE linear probe (LARS, BN)"
    assert recipe_name(spec("ade20k", "B")) == "UPerNet, MAE-B recipe"
    assert recipe_name(spec("ade20k", "L")) == "UPerNet, BEiT-L recipe"
    assert recipe_name(spec("finetune", "B")) is None  # the release's own
    doc = {"protocol": "paper", "recipe": "MAE linear probe (LARS, BN)"}
    assert protocol_label(doc, {"detail": {}}) == "paper: MAE linear probe (LARS, BN)"
    assert protocol_label({"protocol": "demo"}, {"detail": {"protocol": "fast probe"}}) == "demo: fast probe"


def test_the_release_ema_is_constant_from_the_first_step():
    import torch

    from nepa.train.ema import EMA

    ema = EMA(torch.nn.Linear(2, 2), EMAConfig())
    assert ema.decay_at(0) == ema.decay_at(10**6) == 0.9999
    warm = EMA(torch.nn.Linear(2, 2), EMAConfig(warmup_steps=10))
    assert warm.decay_at(0) == pytest.approx(0.1)


def test_the_demo_keeps_its_measured_recipe():
    """tiny: crops of 20-100 %, a warm-up EMA, the fast probe, fine-tuning as measured."""
    run = render(size="tiny", cluster="local").run
    assert run.data.crop_scale == (0.2, 1.0) and run.ema.warmup_steps == 10
    probe, _ = render_spec(task="linprobe", size="tiny", weights="w.pt", seed=0, random_init=False,
                           run_data=None)
    assert probe.protocol == "demo" and probe.linprobe.protocol == "fast" and probe.linprobe.epochs == 100
    assert recipe_name(probe) == "fast probe (AdamW, standardised)"
    tune, _ = render_spec(task="finetune", size="tiny", weights="w.pt", seed=0, random_init=False,
                          run_data=None)
    assert tune.finetune.clip_grad is None and tune.finetune.qk_norm_affine is None
    assert tune.finetune.ema.warmup_steps == 10
    custom, _ = render_spec(task="linprobe", size="custom", weights="w.pt", seed=0, random_init=False,
                            run_data=None, sets=("linprobe.protocol=mae",))  # digits, chosen by hand
    assert custom.protocol == "demo" and custom.linprobe.protocol == "mae"
