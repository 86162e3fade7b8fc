"""What every evaluation returns, and how a launcher stops it: one contract for all of them.

An evaluation is a function `run_X(weights, cfg, data, work_dir, *, control) -> EvalOutcome`.
It resumes from its own newest valid checkpoint in `work_dir` (written with
`nepa.checkpoint.save`, so it loads with `weights_only=True`), checks `control.should_stop()`
at step boundaries (saving first and returning status STOPPED), and reports progress through
`control.progress`. The launcher (the `nepactl` job wrapper) turns STOPPED into a requeue and
COMPLETED metrics into result files.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

Weights = Literal["raw", "ema", "frozen"]  # which weights a number was measured with


@dataclass(frozen=True)
class Metric:
    """One reported number, e.g. Metric("top1", 81.2, weights="ema", split="val")."""

    name: str  # "top1", "top5", "mIoU", "aAcc", "probe_top1", ...
    value: float  # percent for accuracies and IoUs
    weights: Weights = "frozen"
    split: str = "val"
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. {"feature": "mean", "lr": 0.01}


@dataclass(frozen=True)
class EvalOutcome:
    status: Literal["COMPLETED", "STOPPED"]
    step: int  # optimizer steps done by the evaluation so far
    total_steps: int
    metrics: tuple[Metric, ...] = ()
    curves: dict[str, list[dict[str, float]]] = field(default_factory=dict)  # e.g. {"val": [...]}


@dataclass
class EvalControl:
    """The launcher's handle: a stop request (from a signal handler) and a progress sink."""

    progress: Callable[[dict[str, Any]], None] | None = None
    _stop_reason: str | None = None

    def request_stop(self, reason: str) -> None:
        """Safe to call from a signal handler: only sets a flag."""
        self._stop_reason = reason

    def should_stop(self) -> bool:
        return self._stop_reason is not None

    @property
    def stop_reason(self) -> str | None:
        return self._stop_reason

    def report(self, record: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress(record)
