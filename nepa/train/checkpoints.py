"""A run's checkpoint directory: when to save, what to keep, where to resume from."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nepa import checkpoint, rundir
from nepa.checkpoint import CheckpointError, NonFiniteError
from nepa.rundir import checkpoint_name, checkpoint_steps
from nepa.train.config import CheckpointConfig

METADATA_BYTES = 1 << 20  # the pickled structure around the tensors, generously


class CheckpointManager:
    """Owns `RUN/checkpoints/`: step_XXXXXXXX.pt files, the `latest` pointer, retention.

    Only finite state is written or resumed, so every file it writes is a rollback target;
    retention also keeps the newest one known to be finite (`finite_step`).
    """

    def __init__(self, run_dir: str | Path, cfg: CheckpointConfig):
        self.dir = Path(run_dir) / "checkpoints"
        self.cfg = cfg
        self.finite_step: int | None = None  # newest step saved or resumed with finite state

    def due(self, step: int) -> bool:
        return step % self.cfg.every_steps == 0 or step in self.cfg.keep_steps

    def save(self, step: int, payload: dict[str, Any]) -> Path:
        """Write atomically, update `latest`, apply retention. Rank 0 only.

        NonFiniteError (nothing written) when weights or optimizer state hold NaN or infinity.
        """
        bad = checkpoint.nonfinite(payload)
        if bad:
            raise NonFiniteError(f"step {step}: non-finite values in {', '.join(bad[:3])}"
                                 + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                                 + "; not saved, the previous checkpoints are kept")
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(".step_*.tmp"):  # left by a writer killed mid-write
            stale.unlink(missing_ok=True)
        self._check_free_space(checkpoint.payload_bytes(payload) + METADATA_BYTES)
        path = checkpoint.save(self.dir / checkpoint_name(step), payload)
        rundir.write_pointer(self.dir, path.name)
        self.finite_step = step
        self._apply_retention()
        return path

    def resume(self, warn: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
        """Newest checkpoint that verifies and is finite (falling back past others), or None."""
        found = checkpoint.load_newest_valid(self.dir.parent, warn=warn, finite=True)
        if found is not None and isinstance(found[1].get("step"), int):
            self.finite_step = found[1]["step"]
        return found

    def protect(self, step: int) -> None:
        rundir.protect_step(self.dir.parent, step)

    def protected(self) -> set[int]:
        return rundir.protected_steps(self.dir.parent)

    def steps(self) -> list[int]:
        return checkpoint_steps(self.dir.parent)

    def _apply_retention(self) -> None:
        steps = self.steps()
        keep = set(steps[-self.cfg.keep_last:]) | self.protected() | set(self.cfg.keep_steps)
        if self.finite_step is not None:
            keep.add(self.finite_step)
        if self.cfg.milestone_every:
            keep |= {s for s in steps if s % self.cfg.milestone_every == 0}
        for step in steps:
            if step not in keep:
                (self.dir / checkpoint_name(step)).unlink(missing_ok=True)

    def _check_free_space(self, size: int) -> None:
        """Refuse before writing when the disk cannot hold `size` bytes (x min_free_factor)."""
        need = int(size * self.cfg.min_free_factor)
        free = shutil.disk_usage(self.dir).free
        if free < need:
            raise CheckpointError(
                f"only {free / 2**30:.2f} GiB free in {self.dir}, the next checkpoint needs about "
                f"{need / 2**30:.2f} GiB ({self.cfg.min_free_factor}x its {size / 2**30:.2f} GiB); "
                "free disk space or lower checkpoint.keep_last")
