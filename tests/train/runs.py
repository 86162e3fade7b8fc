"""Tiny run directories for engine tests: real bundled digits, tiny model, a handful of steps."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import torch

from nepa.data import DataConfig
from nepa.model_config import model_config
from nepa.train import Callback
from nepa.train.config import CheckpointConfig, EMAConfig, OptimConfig, TrainConfig
from nepa.train.runconfig import RunConfig, write_run_config

REPO = Path(__file__).resolve().parents[2]


def tiny_config(**sections) -> RunConfig:
    """A run of tiny NEPA (2 blocks) on digits: global batch 32 in micro-batches of 8."""
    cfg = RunConfig(
        name="test",
        model=model_config("tiny", depth=2),
        data=DataConfig(source="digits", num_workers=0),
        optim=OptimConfig(blr=1e-3, warmup_steps=2),
        ema=EMAConfig(decay=0.99, warmup_steps=10),
        checkpoint=CheckpointConfig(every_steps=2, keep_last=3),
        train=TrainConfig(global_batch=32, micro_batch=8, max_steps=8, seed=7),
    )
    for name, changes in sections.items():
        cfg = dataclasses.replace(cfg, **{name: dataclasses.replace(getattr(cfg, name), **changes)})
    return cfg


def make_run(path: Path, **sections) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    write_run_config(path, tiny_config(**sections))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), **extra}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    env.update(extra)
    return env


def launch(run_dir: Path, **extra: str) -> subprocess.Popen:
    """`python -m nepa.train RUN` in a new process (the engine's own launcher)."""
    return subprocess.Popen([sys.executable, "-m", "nepa.train", str(run_dir)],
                            env=subprocess_env(**extra), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from nepa import checkpoint

    path, payload = checkpoint.load_newest_valid(run_dir)
    return {"model": payload["model"], "ema": payload["ema"], "step": payload["step"]}


class StopAt(Callback):
    """Request a stop (as a signal handler would) once step `step` is done."""

    def __init__(self, step: int, reason: str = "test"):
        self.step, self.reason = step, reason

    def on_step_end(self, trainer, record):
        if record["step"] == self.step:
            trainer.request_stop(self.reason)
