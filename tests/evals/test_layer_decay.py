"""Layer-wise lr decay: group assignment, per-group warmup, the dynamic decay, purity."""

from __future__ import annotations

import math

import pytest

from nepa.evals.config import FinetuneConfig
from nepa.evals.layer_decay import LayerDecaySchedule, layer_scale, param_groups
from nepa.model import build_model
from nepa.train.optim import lr_at

DEPTH = 3


def _groups(**overrides):
    model = build_model("tiny", depth=DEPTH, num_classes=10, mask_ratio=0.5, **overrides)
    return model, param_groups(model, lr=3e-3, head_lr=1e-3, weight_decay=0.05, depth=DEPTH)


def test_every_trainable_parameter_is_in_exactly_one_group_with_its_scale():
    model, groups = _groups()
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen))
    assert set(seen) == {id(p) for p in model.parameters()}
    expected = {"head.": (0, 1e-3), "norm.": (0, 1e-3), "fc_norm.": (0, 3e-3),
                "patch_embed.": (DEPTH, 3e-3), "cls_token": (DEPTH, 3e-3), "mask_token": (DEPTH, 3e-3)}
    expected.update({f"blocks.{i}.": (DEPTH - 1 - i, 3e-3) for i in range(DEPTH)})
    params = dict(model.named_parameters())
    checked = 0
    for group in groups:
        assert len(group["params"]) == len(group["param_names"])
        for name, param in zip(group["param_names"], group["params"]):
            assert params[name] is param
            prefix = next(p for p in expected if name.startswith(p))
            assert (group["scale"], group["peak"]) == expected[prefix], name
            decayed = param.ndim > 1  # biases, norms, LayerScale: 1-D; the CLS token is decayed
            assert group["weight_decay"] == (0.05 if decayed else 0.0), name
            checked += 1
    assert checked == len(params)
    assert any(g["weight_decay"] == 0.05 and "cls_token" in g["param_names"] for g in groups)


def test_frozen_parameters_are_left_out_and_head_lr_is_not_scaled_by_the_batch():
    model = build_model("tiny", depth=DEPTH, num_classes=10)
    model.patch_embed.requires_grad_(False)
    cfg = FinetuneConfig(global_batch=512, micro_batch=64)
    assert cfg.peak_lr == pytest.approx(1.5e-3 * 2)
    groups = param_groups(model, lr=cfg.peak_lr, head_lr=cfg.head_lr, weight_decay=0.05, depth=DEPTH)
    names = {n for g in groups for n in g["param_names"]}
    assert not any(n.startswith("patch_embed.") for n in names)
    assert {g["peak"] for g in groups if "head.weight" in g["param_names"]} == {1e-3}
    assert {g["peak"] for g in groups if "fc_norm.weight" in g["param_names"]} == {cfg.peak_lr}
    assert layer_scale("blocks.0.attn.qkv.weight", 12) == (11, False)
    with pytest.raises(ValueError, match="no layer-decay rule"):
        layer_scale("adapter.weight", 12)


def test_release_schedule_gives_each_group_its_own_warmup():
    s = LayerDecaySchedule(decay=0.65, total_steps=1000, warmup=200)
    assert s.group_warmup(0) == 1  # head and top block: at their peak after one step
    assert s.group_warmup(1) == 200 - round(200 * 0.65)  # 70
    assert s.group_warmup(12) == 200 - round(200 * 0.65**12) == 199  # embeddings of B
    assert LayerDecaySchedule(decay=0.65, total_steps=10, warmup=0).group_warmup(5) == 1
    assert s.lr(0, peak=1e-3, scale=0) == pytest.approx(1e-3)
    w = s.group_warmup(1)
    assert s.lr(w - 1, peak=1.0, scale=1) == pytest.approx(0.65)  # warmup ends at the peak
    assert s.lr(w // 2, peak=1.0, scale=1) == pytest.approx(0.65 * (w // 2 + 1) / w)
    assert s.lr(w, peak=1.0, scale=1) == pytest.approx(0.65)  # then cosine to 0
    assert s.lr(1000, peak=1.0, scale=1) == pytest.approx(0.0, abs=1e-12)
    assert s.lr(600, peak=1.0, scale=3) == pytest.approx(
        0.65**3 * lr_at(600, peak=1.0, total_steps=1000, warmup=s.group_warmup(3)))


@pytest.mark.parametrize("ramp, quarter", [
    ("linear", 0.35 + 0.65 * 0.25),
    ("cosine", 0.35 + 0.65 * 0.5 * (1 - math.cos(math.pi / 4))),
])
def test_dynamic_decay_ramps_from_035_to_1(ramp, quarter):
    s = LayerDecaySchedule(decay=0.65, total_steps=401, warmup=40, schedule="dynamic", ramp=ramp)
    assert s.decay_at(0) == pytest.approx(0.35)
    assert s.decay_at(100) == pytest.approx(quarter)
    assert s.decay_at(200) == pytest.approx(0.675)  # both ramps cross the middle at half time
    assert s.decay_at(400) == pytest.approx(1.0)
    assert s.decay_at(10_000) == pytest.approx(1.0)
    # one global warmup for every group, the decay applied on top of it
    for scale in (0, 4):
        assert s.lr(20, peak=1.0, scale=scale) == pytest.approx(
            s.decay_at(20) ** scale * 21 / 40)
    assert s.lr(400, peak=1.0, scale=12) == pytest.approx(
        lr_at(400, peak=1.0, total_steps=401, warmup=40))


@pytest.mark.parametrize("schedule", ["release", "dynamic"])
def test_schedules_are_pure_functions_of_the_step(schedule):
    _, groups = _groups()
    s = LayerDecaySchedule(decay=0.75, total_steps=300, warmup=90, schedule=schedule)
    first = s.lrs(150, groups)
    s.lrs(3, groups), s.lrs(299, groups)
    again = LayerDecaySchedule(decay=0.75, total_steps=300, warmup=90, schedule=schedule)
    assert s.lrs(150, groups) == first == again.lrs(150, groups)
    assert len(first) == len(groups) and len(set(first)) > 1
