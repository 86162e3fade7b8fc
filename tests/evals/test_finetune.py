"""Fine-tuning on the bundled real digits: metrics, frozen embedding, zero head, attention
switch, exact resume after a stop, a corrupt newest checkpoint, weights-only checkpoints."""

from __future__ import annotations

import json
import logging
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from nepa import checkpoint
from nepa.config import ConfigError
from nepa.data.config import DataConfig
from nepa.evals.classify import run_imagenet_val
from nepa.evals.common import EvalControl
from nepa.evals.config import ClassifyConfig, FinetuneConfig
from nepa.evals.finetune import METRICS_FILE, build_classifier, run_finetune
from nepa.model import build_model
from nepa.train.config import EMAConfig

DATA = DataConfig(source="digits", num_workers=0)
# 2 epochs of 3 steps, 2 micro-batches of 16 per step (accumulation), the whole val split.
CFG = FinetuneConfig(epochs=2, epoch_steps=3, global_batch=32, micro_batch=16, eval_batch=300,
                     blr=2e-2, head_lr=1e-2)


def _stop_after(step: int) -> EvalControl:
    control = EvalControl()
    control.progress = lambda r: control.request_stop("preempted") if r["step"] == step else None
    return control


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("tiny", depth=2)  # the tiny size, two blocks: seconds on a CPU
    path = tmp_path_factory.mktemp("pre") / "pretrained.pt"
    checkpoint.save(path, checkpoint.model_payload(model.cfg, model.state_dict()))
    return path, model.state_dict()


@pytest.fixture(scope="module")
def reference(pretrained, tmp_path_factory):
    """The uninterrupted run every resumed run must equal."""
    work = tmp_path_factory.mktemp("reference")
    reports = []
    outcome = run_finetune(pretrained[0], CFG, DATA, work, control=EvalControl(progress=reports.append))
    return outcome, work, reports


def _final(work) -> dict:
    return checkpoint.load(work / "checkpoints" / "step_00000006.pt")


def test_short_finetune_reports_raw_and_ema_top1_top5(reference):
    outcome, work, reports = reference
    assert outcome.status == "COMPLETED" and outcome.step == outcome.total_steps == 6
    assert [r["step"] for r in reports] == list(range(1, 7))
    assert {"step", "total", "loss", "epoch"} <= set(reports[0]) and reports[-1]["total"] == 6
    assert all(0 < r["loss"] < 10 for r in reports)
    by = {(m.weights, m.detail["selected"], m.name): m for m in outcome.metrics}
    assert len(by) == len(outcome.metrics) == 8
    for weights in ("raw", "ema"):
        for selected in ("final", "best_ema"):
            top1, top5 = by[weights, selected, "top1"].value, by[weights, selected, "top5"].value
            assert 0 <= top1 <= 100 and top1 <= top5 <= 100
    assert {m.detail["epoch"] for m in outcome.metrics if m.detail["selected"] == "final"} == {2}
    lines = [json.loads(line) for line in (work / METRICS_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines == outcome.curves["val"]
    assert all(r["images"] == 300 for r in lines)  # the whole val split, once
    best = max(lines, key=lambda r: r["ema_top1"])
    assert by["ema", "best_ema", "top1"].value == best["ema_top1"]
    assert by["ema", "best_ema", "top1"].detail["epoch"] == best["epoch"]
    assert lines[-1]["raw_top1"] > 10.0  # better than chance on 10 classes after 6 steps


def test_classifier_starts_at_zero_on_the_pretrained_backbone(pretrained):
    path, state = pretrained
    model = build_classifier(path, CFG, 10, [str(d) for d in range(10)])
    assert torch.count_nonzero(model.head.weight) == 0 and torch.count_nonzero(model.head.bias) == 0
    assert model.cfg.num_classes == 10 and model.cfg.pool == "mean" and model.fc_norm is not None
    assert model.cfg.drop_path == 0.1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    assert not any(p.requires_grad for p in model.patch_embed.parameters())
    assert model.cls_token.requires_grad and model.head.weight.requires_grad


def test_a_qk_norm_gain_is_added_at_one_as_the_release_does_for_b(pretrained):
    """The release's B fine-tune config learns a QK-norm gain its pretraining lacks."""
    path, _ = pretrained
    images = torch.randn(2, 3, 32, 32)
    outputs = {}
    for affine in (None, True):
        model = build_classifier(path, FinetuneConfig(qk_norm_affine=affine), 10).eval()
        gains = [p for n, p in model.named_parameters() if n.endswith(("q_norm.weight", "k_norm.weight"))]
        assert len(gains) == (0 if affine is None else 2 * 2)  # 2 blocks x (q, k)
        assert all(torch.equal(g, torch.ones_like(g)) and g.requires_grad for g in gains)
        with torch.no_grad():
            outputs[affine] = model.forward_features(images)
    torch.testing.assert_close(outputs[None], outputs[True])  # a gain of 1 changes nothing
    assert build_classifier(path, CFG, 10).cfg.qk_norm_affine is True  # the default
    gained = path.with_name("gained.pt")
    model = build_classifier(path, CFG, 10)
    checkpoint.save(gained, checkpoint.model_payload(model.cfg, model.state_dict()))
    with pytest.raises(ConfigError, match="finetune.qk_norm_affine"):
        build_classifier(gained, FinetuneConfig(qk_norm_affine=False), 10)


def test_training_moves_everything_but_the_frozen_patch_embedding(reference, pretrained):
    _, work, _ = reference
    _, state = pretrained
    final = _final(work)["model"]
    assert torch.equal(final["patch_embed.proj.weight"], state["patch_embed.proj.weight"])
    assert torch.equal(final["patch_embed.proj.bias"], state["patch_embed.proj.bias"])
    assert not torch.equal(final["blocks.0.attn.qkv.weight"], state["blocks.0.attn.qkv.weight"])
    assert not torch.equal(final["cls_token"], state["cls_token"])
    assert torch.count_nonzero(final["head.weight"]) > 0


def test_bidirectional_and_causal_attention_really_differ(tmp_path):
    model = build_model("tiny", depth=2, layerscale_init=1.0)  # so attention visibly matters
    path = checkpoint.save(tmp_path / "pre.pt", checkpoint.model_payload(model.cfg, model.state_dict()))
    images = torch.randn(2, 3, 32, 32)
    changed = images.clone()
    changed[:, :, -4:, -4:] += 1.0  # only the last patch (4x4 patches, raster order)
    cls_moved = {}
    for causal in (False, True):
        model = build_classifier(path, FinetuneConfig(causal=causal), 10).eval()
        assert all(block.attn.causal is causal for block in model.blocks)
        with torch.no_grad():
            a, b = model.forward_features(images), model.forward_features(changed)
        cls_moved[causal] = (a[:, 0] - b[:, 0]).abs().max().item()
    assert cls_moved[True] == 0.0  # causal: the CLS token never sees a later patch
    assert cls_moved[False] > 1e-3  # bidirectional: it does


def test_stop_then_resume_equals_the_uninterrupted_run(reference, pretrained, tmp_path):
    ref_outcome, ref_work, _ = reference
    stopped = run_finetune(pretrained[0], CFG, DATA, tmp_path, control=_stop_after(4))
    assert stopped.status == "STOPPED" and stopped.step == 4 and stopped.metrics == ()
    assert [r["epoch"] for r in stopped.curves["val"]] == [1]
    saved = tmp_path / "checkpoints" / "step_00000004.pt"
    raw = torch.load(saved, map_location="cpu", weights_only=True)  # plain tensors, primitives
    assert raw["step"] == 4 and raw["epoch"] == 1 and len(raw["metrics"]) == 1
    assert {"model", "ema", "optimizer", "rng", "model_config"} <= set(raw)

    resumed = run_finetune(pretrained[0], CFG, DATA, tmp_path, control=EvalControl())
    assert resumed.status == "COMPLETED" and resumed.step == 6
    mine, ref = _final(tmp_path), _final(ref_work)
    for part in ("model", "ema"):
        assert mine[part].keys() == ref[part].keys()
        assert all(torch.equal(mine[part][k], ref[part][k]) for k in ref[part]), part
    assert (tmp_path / METRICS_FILE).read_text() == (ref_work / METRICS_FILE).read_text()
    assert resumed.metrics == ref_outcome.metrics


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous(reference, pretrained, tmp_path,
                                                                  caplog):
    _, ref_work, _ = reference
    run_finetune(pretrained[0], CFG, DATA, tmp_path, control=_stop_after(4))
    newest = tmp_path / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="nepa.evals.finetune"):
        resumed = run_finetune(pretrained[0], CFG, DATA, tmp_path, control=EvalControl())
    assert "skipping corrupt checkpoint" in caplog.text and "step_00000004.pt" in caplog.text
    assert resumed.status == "COMPLETED" and resumed.step == 6
    mine, ref = _final(tmp_path)["model"], _final(ref_work)["model"]
    assert all(torch.equal(mine[k], ref[k]) for k in ref)  # redone from step 3, identically
    assert (tmp_path / METRICS_FILE).read_text() == (ref_work / METRICS_FILE).read_text()


def test_the_finetuned_directory_is_a_classifier_for_the_val_evaluation(reference, tmp_path):
    outcome, work, _ = reference
    val = run_imagenet_val(work, ClassifyConfig(batch_size=300), DATA, tmp_path, control=EvalControl())
    final_ema = {m.name: m.value for m in outcome.metrics
                 if m.weights == "ema" and m.detail["selected"] == "final"}
    assert {m.name: m.value for m in val.metrics} == pytest.approx(final_ema)
    assert {m.weights for m in val.metrics} == {"ema"}


def test_without_mixup_or_ema_label_smoothed_ce_and_raw_selection(pretrained, tmp_path):
    cfg = FinetuneConfig(max_steps=2, global_batch=15, micro_batch=15, eval_batch=300, mixup=0.0,
                         cutmix=0.0, ema=EMAConfig(enabled=False))  # odd batch: fine without mixup
    outcome = run_finetune(pretrained[0], cfg, DATA, tmp_path, control=EvalControl())
    assert outcome.status == "COMPLETED" and outcome.step == 2
    assert {(m.weights, m.detail["selected"]) for m in outcome.metrics} == {
        ("raw", "final"), ("raw", "best_raw")}
    assert list(outcome.curves["val"][0]) == ["epoch", "step", "train_loss", "skipped_steps",
                                              "raw_top1", "raw_top5", "images"]


def test_a_non_finite_gradient_with_a_finite_loss_skips_the_step(pretrained, tmp_path, monkeypatch):
    from nepa.evals import finetune

    def inf_head_gradient(*args, **kwargs):
        model = build_classifier(*args, **kwargs)
        model.head.weight.register_hook(lambda grad: grad * float("inf"))
        return model

    monkeypatch.setattr(finetune, "build_classifier", inf_head_gradient)
    cfg = FinetuneConfig(max_steps=1, global_batch=16, micro_batch=16, eval_batch=300,
                         ema=EMAConfig(enabled=False))
    outcome = run_finetune(pretrained[0], cfg, DATA, tmp_path, control=EvalControl())
    assert outcome.status == "COMPLETED"
    assert outcome.curves["val"][0]["skipped_steps"] == 1
    saved = checkpoint.load(tmp_path / "checkpoints" / "step_00000001.pt")
    assert saved["optimizer"]["state"] == {}  # the optimizer never stepped
    assert not saved["model"]["head.weight"].any()  # still the zero-initialised head
    assert all(torch.equal(saved["model"][k], v) for k, v in pretrained[1].items() if k in saved["model"])


def test_config_checks_name_the_dotted_field():
    with pytest.raises(ConfigError, match=r"finetune\.micro_batch: Mixup/CutMix pair images"):
        FinetuneConfig(global_batch=30, micro_batch=15)
    with pytest.raises(ConfigError, match=r"finetune\.micro_batch: 48 does not divide"):
        FinetuneConfig(global_batch=1024, micro_batch=48)
    with pytest.raises(ConfigError, match=r"finetune\.layer_decay"):
        FinetuneConfig(layer_decay=1.5)
    assert FinetuneConfig(global_batch=15, micro_batch=15, mixup=0.0, cutmix=0.0).micro_batch == 15


def _rank(rank: int, port: int, weights: str, work: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    cfg = FinetuneConfig(epochs=1, epoch_steps=2, global_batch=32, micro_batch=16, eval_batch=150)
    outcome = run_finetune(weights, cfg, DATA, work, control=EvalControl())
    torch.save({"status": outcome.status, "val": outcome.curves["val"]}, f"{work}/rank{rank}.pt")


def test_two_process_gloo_finetune_agrees_across_ranks(pretrained, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children need no fresh import of torch (spawn costs ~30 s on a loaded 2-core box)
    mp.start_processes(_rank, args=(port, str(pretrained[0]), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["status"] for r in results] == ["COMPLETED"] * 2
    assert results[0]["val"] == results[1]["val"] and results[0]["val"][0]["images"] == 300
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["latest", "step_00000002.pt"]
    assert len((tmp_path / METRICS_FILE).read_text().splitlines()) == 1  # written by rank 0 only
