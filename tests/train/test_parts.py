"""Engine parts: weight-decay groups, lr schedule, EMA warm-up, retention, metrics, launch checks."""

from __future__ import annotations

import json
import math

import pytest
import torch

from nepa import checkpoint
from nepa.checkpoint import CheckpointError, NonFiniteError
from nepa.config import ConfigError
from nepa.model import build_model
from nepa.train import distributed
from nepa.train.checkpoints import CheckpointManager
from nepa.train.config import CheckpointConfig, EMAConfig, OptimConfig, TrainConfig, base_lr, warmup_steps
from nepa.train.ema import EMA
from nepa.train.metrics import MetricsLog, read_metrics
from nepa.train.optim import lr_at, param_groups


def test_weight_decay_follows_the_release_exclusions():
    model = build_model("tiny", depth=1, qk_norm_affine=True)
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    excluded = {names[id(p)] for p in no_decay["params"]}
    assert "cls_token" in decayed and "blocks.0.attn.qkv.weight" in decayed
    assert "patch_embed.proj.weight" in decayed
    for name in ("blocks.0.attn.qkv.bias", "blocks.0.norm1.weight", "blocks.0.attn.q_norm.weight",
                 "blocks.0.ls1.gamma", "norm.bias", "patch_embed.proj.bias"):
        assert name in excluded
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0


def test_lr_scaling_warmup_and_cosine_to_zero():
    cfg = OptimConfig()
    assert base_lr(cfg, 4096) == pytest.approx(3e-4 * 16)
    assert base_lr(OptimConfig(lr=1e-3), 4096) == 1e-3
    total = 1000
    warm = warmup_steps(cfg, total)
    assert warm == 25
    lrs = [lr_at(s, peak=1.0, total_steps=total, warmup=warm) for s in range(total)]
    assert lrs[0] == pytest.approx(1 / 25) and lrs[24] == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in zip(lrs[25:], lrs[26:]))  # monotone decay
    assert lr_at(total, peak=1.0, total_steps=total, warmup=warm) == pytest.approx(0.0)
    mid = 25 + (total - 25) // 2
    assert lrs[mid] == pytest.approx(0.5, abs=0.01)


def test_ema_warms_up_then_tracks_with_the_configured_decay():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, EMAConfig(decay=0.9999, warmup_steps=10))
    assert ema.decay_at(0) == pytest.approx(0.1)  # early: mostly the new weights
    assert ema.decay_at(10**7) == 0.9999
    with torch.no_grad():
        model.weight.fill_(1.0)
    before = ema.shadow["weight"].clone()
    ema.update(model, 0)
    assert torch.allclose(ema.shadow["weight"], 0.1 * before + 0.9)
    assert ema.shadow["weight"].dtype == torch.float32


def test_retention_keeps_last_k_milestones_and_protected(tmp_path):
    manager = CheckpointManager(tmp_path, CheckpointConfig(every_steps=1, keep_last=2, milestone_every=4))
    manager.save(1, {"x": torch.zeros(1)})
    manager.protect(1)
    for step in range(2, 8):
        manager.save(step, {"x": torch.zeros(1)})
    assert manager.steps() == [1, 4, 6, 7]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_00000007.pt"


def test_keep_steps_are_due_and_never_deleted(tmp_path):
    manager = CheckpointManager(tmp_path, CheckpointConfig(every_steps=10, keep_last=1, keep_steps=(3,)))
    assert [s for s in range(1, 21) if manager.due(s)] == [3, 10, 20]
    for step in (3, 10, 20):
        manager.save(step, {"x": torch.zeros(1)})
    assert manager.steps() == [3, 20]


def test_checkpoint_refused_when_disk_is_too_full(tmp_path, monkeypatch):
    manager = CheckpointManager(tmp_path, CheckpointConfig(every_steps=1))
    manager.save(1, {"x": torch.zeros(1000)})
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10, 10, 10))
    with pytest.raises(CheckpointError, match="free disk space"):
        manager.save(2, {"x": torch.zeros(1000)})
    assert manager.steps() == [1]


def test_metrics_keep_each_step_once_across_resume(tmp_path):
    log = MetricsLog(tmp_path, resume_step=0)
    for step in range(1, 6):
        log.write({"step": step, "loss": -step / 10})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # torn by a kill
    log = MetricsLog(tmp_path, resume_step=3)  # resumed from the step-3 checkpoint
    for step in range(4, 7):
        log.write({"step": step, "loss": 0.0})
    log.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]


def test_tensorboard_keeps_one_run_identity(tmp_path):
    log = MetricsLog(tmp_path, resume_step=0, tensorboard=True)
    log.write({"step": 1, "loss": 0.5})
    log.close()
    log = MetricsLog(tmp_path, resume_step=1, tensorboard=True)
    log.write({"step": 2, "loss": 0.4})
    log.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))  # one directory: one run in TensorBoard
    events.Reload()
    scalars = [(e.step, round(e.value, 6)) for e in events.Scalars("train/loss")]
    assert scalars == [(1, 0.5), (2, 0.4)]  # both attempts' scalars, each step once


def test_world_size_mismatch_fails_fast(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(distributed.LaunchError, match=r"world size is 3 .* expects 4"):
        distributed.setup(4, 60)
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(distributed.LaunchError, match="expects 2"):
        distributed.setup(2, 60)


def test_batch_geometry_is_validated_and_derived():
    cfg = TrainConfig(global_batch=4096, micro_batch=64, nodes=8, procs_per_node=8)
    assert cfg.world_size == 64 and cfg.accumulation == 1
    assert TrainConfig(global_batch=4096, micro_batch=32, nodes=2, procs_per_node=8).accumulation == 8
    with pytest.raises(ConfigError, match="train.global_batch: 100 is not divisible"):
        TrainConfig(global_batch=100, micro_batch=8)
    assert math.isclose(OptimConfig().betas[1], 0.95)
    json.dumps(cfg.__dict__)


def test_ema_shadows_follow_the_model_device_after_loading_a_cpu_checkpoint():
    """Checkpoints load on the CPU; a GPU model's EMA must keep its shadows on the GPU (the `meta`
    device stands in for CUDA here), or its first update after a resume fails."""
    model = torch.nn.Linear(8, 8, device="meta")
    ema = EMA(model, EMAConfig())
    saved = {k: torch.full(v.shape, 0.5) for k, v in ema.state_dict().items()}  # as loaded on the CPU
    ema.load_state_dict(saved)
    assert {v.device.type for v in ema.shadow.values()} == {"meta"}
    ema.update(model, step=11)  # lerp with the model's own (meta) tensors
    cpu_model = torch.nn.Linear(8, 8)
    cpu_ema = EMA(cpu_model, EMAConfig())
    cpu_ema.load_state_dict(saved)
    assert all(torch.equal(v, saved[k]) for k, v in cpu_ema.shadow.items())  # values, not references
    assert all(v.data_ptr() != saved[k].data_ptr() for k, v in cpu_ema.shadow.items())


def test_non_finite_state_is_never_saved_and_retention_keeps_the_newest_finite(tmp_path):
    manager = CheckpointManager(tmp_path, CheckpointConfig(every_steps=1, keep_last=1))
    manager.save(1, {"model": {"w": torch.ones(4)}, "optimizer": {"state": {}}})
    with pytest.raises(NonFiniteError, match=r"step 2: non-finite values in optimizer.state.0.exp_avg"):
        manager.save(2, {"model": {"w": torch.ones(4)},
                         "optimizer": {"state": {0: {"exp_avg": torch.tensor([math.nan])}}}})
    assert manager.steps() == [1] and manager.finite_step == 1
    # A file it did not write (an older nepa's, say) is not known finite: step 1 stays.
    checkpoint.save(tmp_path / "checkpoints" / "step_00000003.pt", {"model": {"w": torch.full((4,), math.inf)}})
    manager._apply_retention()
    assert manager.steps() == [1, 3]


def test_free_space_is_checked_against_the_live_state(tmp_path):
    """Step 0 has no optimizer moments yet: the next checkpoint is sized from what it will hold."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], check=True)
    try:
        manager = CheckpointManager(disk, CheckpointConfig(every_steps=1))
        manager.save(0, {"model": {"w": torch.ones(2**18)}, "optimizer": {"state": {}}})  # 1 MiB
        full = {"model": {"w": torch.ones(2**18)},
                "optimizer": {"state": {0: {"exp_avg": torch.ones(2**18), "exp_avg_sq": torch.ones(2**20)}}}}
        with pytest.raises(CheckpointError, match=r"the next checkpoint needs about 0\.01 GiB .*free disk space"):
            manager.save(1, full)
        assert manager.steps() == [0] and not list((disk / "checkpoints").glob(".step_*"))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def test_weights_that_turn_non_finite_roll_back_to_a_finite_checkpoint(tmp_path, caplog):
    """The optimizer step itself yields inf weights (finite loss and gradients): the due save is
    refused, the following NaN steps roll back, and every file on disk stays finite."""
    from nepa.train import Callback, RunStatus, Trainer
    from nepa.train.runconfig import load_run_config
    from tests.train.runs import make_run

    class PoisonOnce(Callback):
        done = False

        def on_step_end(self, trainer, record):
            if record["step"] == 3 and not self.done:
                self.done = True
                with torch.no_grad():
                    next(trainer.model.parameters()).fill_(math.inf)

    run = make_run(tmp_path / "run", train={"max_steps": 6, "max_bad_steps": 1},
                   checkpoint={"every_steps": 1, "keep_last": 2})
    result = Trainer(load_run_config(run), run, callbacks=[PoisonOnce()]).fit()
    assert result.status is RunStatus.COMPLETED and result.step == 6
    assert "checkpoint skipped: step 3: non-finite values in model." in caplog.text
    assert "rolling back" in caplog.text
    for path in (run / "checkpoints").glob("step_*.pt"):
        assert checkpoint.nonfinite(checkpoint.load(path)) == [], path.name
