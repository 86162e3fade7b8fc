"""The nepa checkpoint format: one torch file of plain tensors and primitive metadata.

Files are written atomically (temporary name in the same directory, fsync, rename, fsync of
the directory) and read with `torch.load(weights_only=True)`, so a crash mid-write never
leaves a half-written file under the final name and loading never runs pickled code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from nepa.config import from_dict, to_dict
from nepa.errors import NepaError
from nepa.model import ModelConfig

FORMAT = "nepa-checkpoint"
FORMAT_VERSION = 1
LATEST = "latest"  # pointer file in a checkpoint directory: the newest checkpoint's file name


class CheckpointError(NepaError, RuntimeError):
    """A checkpoint is missing, unreadable or not a nepa checkpoint."""


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_path(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Let `write(tmp_path)` create a temporary sibling, fsync it, rename it over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Atomic write through `write(file)` (see atomic_write_path)."""

    def through_file(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            write(f)

    return atomic_write_path(path, through_file)


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


def write_pointer(directory: Path, name: str) -> None:
    """Point `directory/latest` at checkpoint file `name`, atomically."""
    atomic_write(directory / LATEST, lambda f: f.write(name.encode() + b"\n"))


def read_pointer(directory: Path) -> Path | None:
    pointer = directory / LATEST
    if not pointer.is_file():
        return None
    return directory / pointer.read_text().strip()


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


def run_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run directory, newest first (the `latest` pointer's file first)."""
    directory = Path(run_dir) / "checkpoints"
    files = sorted(directory.glob("step_*.pt"), key=lambda p: p.name, reverse=True)
    pointed = read_pointer(directory) if directory.is_dir() else None
    if pointed is not None and pointed in files:
        files.remove(pointed)
        files.insert(0, pointed)
    return files


def load_newest_valid(run_dir: str | Path, warn: Callable[[str], None] | None = None
                      ) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads, falling back past corrupt ones.

    None when the run has no checkpoint; CheckpointError when checkpoints exist but none
    loads (never a silent restart from scratch).
    """
    files = run_checkpoints(run_dir)
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
