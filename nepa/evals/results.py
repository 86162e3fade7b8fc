"""The result file every evaluation writes: strict JSON, one schema, read back with checks.

Torch-free, so `nepactl results` can gather thousands of them quickly. Each file holds one
evaluation (run, checkpoint step and hash, task, seed, protocol) and its metrics, each metric
with its value, weights (raw / EMA / frozen) and split.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from nepa.errors import NepaError

SCHEMA_VERSION = 1
RESULT_FILE = "result.json"
_REQUIRED = ("schema", "run", "task", "seed", "protocol", "checkpoint", "metrics")
_METRIC_REQUIRED = ("metric", "value", "weights", "split")


class ResultError(NepaError):
    """A result file that does not follow the schema."""


def make_result(*, run: str, task: str, seed: int, protocol: str, checkpoint: dict[str, Any],
                metrics: list[dict[str, Any]], curves: dict | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A result document; `checkpoint` = {"path", "step", "sha256", "random_init"}."""
    return {"schema": SCHEMA_VERSION, "run": run, "task": task, "seed": seed, "protocol": protocol,
            "paper_protocol": protocol == "paper", "checkpoint": checkpoint, "metrics": metrics,
            "curves": curves or {}, "created": time.time(), **(extra or {})}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def validate(doc: Any, where: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ResultError(f"{where}: a result must be a JSON object")
    missing = [k for k in _REQUIRED if k not in doc]
    if missing:
        raise ResultError(f"{where}: missing {', '.join(missing)}; re-run the evaluation")
    if doc["schema"] != SCHEMA_VERSION:
        raise ResultError(f"{where}: schema {doc['schema']} is not {SCHEMA_VERSION}; "
                          "upgrade nepactl or re-run the evaluation")
    for i, metric in enumerate(doc["metrics"]):
        gaps = [k for k in _METRIC_REQUIRED if k not in metric]
        if gaps or not _finite(metric["value"]):
            raise ResultError(f"{where}: metrics[{i}] needs {', '.join(_METRIC_REQUIRED)} with a "
                              "finite value")
    return doc


def write_result(path: str | Path, doc: dict[str, Any]) -> Path:
    """Validate, then write atomically (strict JSON: NaN or infinity is an error)."""
    path = Path(path)
    validate(doc, str(path))
    text = json.dumps(doc, indent=1, allow_nan=False)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not strict JSON")


def read_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (OSError, ValueError) as exc:
        raise ResultError(f"{path}: unreadable result ({exc}); re-run the evaluation") from None
    return validate(doc, str(path))
