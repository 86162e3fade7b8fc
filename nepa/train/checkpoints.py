"""A run's checkpoint directory: when to save, what to keep, where to resume from."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nepa import checkpoint, rundir
from nepa.checkpoint import CheckpointError
from nepa.rundir import checkpoint_name, checkpoint_steps
from nepa.train.config import CheckpointConfig


class CheckpointManager:
    """Owns `RUN/checkpoints/`: step_XXXXXXXX.pt files, the `latest` pointer, retention."""

    def __init__(self, run_dir: str | Path, cfg: CheckpointConfig):
        self.dir = Path(run_dir) / "checkpoints"
        self.cfg = cfg

    def due(self, step: int) -> bool:
        return step % self.cfg.every_steps == 0 or step in self.cfg.keep_steps

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        """Write atomically, update `latest`, apply retention. Rank 0 only."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".step_*.tmp"):  # left by a writer killed mid-write
            stale.unlink(missing_ok=True)
        self._check_free_space()
        path = checkpoint.save(self.dir / checkpoint_name(step), payload)
        rundir.write_pointer(self.dir, path.name)
        self._apply_retention()
        return path

    def resume(self, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
        """Newest checkpoint that verifies (falling back past corrupt ones), or None."""
        return checkpoint.load_newest_valid(self.dir.parent, warn=warn)

    def protect(self, step: int) -> None:
        rundir.protect_step(self.dir.parent, step)

    def protected(self) -> set[int]:
        return rundir.protected_steps(self.dir.parent)

    def steps(self) -> list[int]:
        return checkpoint_steps(self.dir.parent)

    def _apply_retention(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.cfg.keep_last:]) | self.protected() | set(self.cfg.keep_steps)
        if self.cfg.milestone_every:
            keep |= {s for s in steps if s % self.cfg.milestone_every == 0}
        for step in steps:
            if step not in keep:
                (self.dir / checkpoint_name(step)).unlink(missing_ok=True)

    def _check_free_space(self) -> None:
        existing = [p.stat().st_size for p in self.dir.glob("step_*.pt")]
        if not existing:
            return
        need = int(max(existing) * self.cfg.min_free_factor)
        free = shutil.disk_usage(self.dir).free
        if free < need:
            raise CheckpointError(
                f"only {free / 2**30:.2f} GiB free in {self.dir}, a checkpoint needs about "
                f"{need / 2**30:.2f} GiB; free disk space or lower checkpoint.keep_last"
            )
