"""The nepa checkpoint format: one torch file of plain tensors and primitive metadata.

Files are written atomically (nepa.rundir.atomic_write_path: temporary name, fsync, rename,
fsync of the directory) and read with `torch.load(weights_only=True)`, so a crash mid-write never
leaves a half-written file under the final name and loading never runs pickled code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from nepa.config import from_dict, to_dict
from nepa.errors import NepaError
from nepa.model_config import ModelConfig
from nepa.rundir import atomic_write_path, checkpoint_files

FORMAT = "nepa-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(NepaError, RuntimeError):
    """A checkpoint is missing, unreadable or not a nepa checkpoint."""


def save(path: str | Path, payload: dict[str, Any]) -> Path:
    """Atomically write a checkpoint payload (adds the format marker).

    torch.save is given the path, not a Python file object: its own writer is faster.
    """
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    return atomic_write_path(path, lambda tmp: _torch_save_fast(payload, tmp))


def _torch_save_fast(payload: dict[str, Any], path: Path) -> None:
    """torch.save without per-record CRC32 (15-20% of the save time); fsync + rename and the
    structural check on load guard against torn files."""
    from torch.utils.serialization import config

    previous = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save(payload, path)
    finally:
        config.save.compute_crc32 = previous


def load(path: str | Path) -> dict[str, Any]:
    """Read and verify a checkpoint written by `save` (weights_only, on CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, wrong magic, disallowed pickle global, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nepa checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {payload['format_version']}, newer than this nepa "
            f"({FORMAT_VERSION}); upgrade nepa to read it"
        )
    return payload


def model_payload(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], **extra: Any) -> dict:
    """A weights-only checkpoint payload: model config + state dict (+ metadata)."""
    return {"model_config": to_dict(cfg), "model": state_dict, **extra}


def read_model(payload: dict[str, Any], *, ema: bool = True) -> tuple[ModelConfig, dict]:
    """(config, state dict) of a checkpoint, the EMA weights when present and `ema`."""
    if "model_config" not in payload or "model" not in payload:
        raise CheckpointError("checkpoint holds no model (keys: " + ", ".join(sorted(payload)) + ")")
    cfg = from_dict(ModelConfig, payload["model_config"], path="model_config", source="checkpoint")
    weights = payload["ema"] if ema and payload.get("ema") is not None else payload["model"]
    return cfg, weights


def load_newest_valid(run_dir: str | Path, warn: Callable[[str], None] | None = None
                      ) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads, falling back past corrupt ones.

    None when the run has no checkpoint; CheckpointError when checkpoints exist but none
    loads (never a silent restart from scratch).
    """
    files = checkpoint_files(run_dir)
    errors = []
    for path in files:
        try:
            return path, load(path)
        except CheckpointError as exc:
            errors.append(str(exc))
            if warn is not None:
                warn(f"skipping corrupt checkpoint: {exc}")
    if errors:
        raise CheckpointError(f"no checkpoint of {run_dir} loads: " + "; ".join(errors))
    return None
