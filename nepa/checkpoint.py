"""The nepa checkpoint format: one torch file of plain tensors and primitive metadata.

Files are written atomically (nepa.rundir.atomic_write_path: temporary name, fsync, rename,
fsync of the directory) and read with `torch.load(weights_only=True)`, so a crash mid-write never
leaves a half-written file under the final name and loading never runs pickled code.

Format versions: 1 carries no checksums (it still loads, unverified); 2 adds `checksums`, an
xxh3-64 digest of every tensor's bytes and one of the remaining metadata, verified on load, so
bytes flipped anywhere in the file are caught, not trained on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import xxhash  # a dependency of `datasets` (xxh3: ~10 GB/s per core, releases the GIL)

from nepa.config import from_dict, to_dict
from nepa.errors import NepaError
from nepa.model_config import ModelConfig
from nepa.rundir import atomic_write_path, checkpoint_files

FORMAT = "nepa-checkpoint"
FORMAT_VERSION = 2  # 1: no checksums; 2: `checksums` of every tensor and the metadata
META = "<meta>"  # the checksum key of everything that is not a tensor


# What a training checkpoint must hold finite: a non-finite one is never written nor resumed.
STATE_KEYS = ("model", "optimizer", "ema")


class CheckpointError(NepaError, RuntimeError):
    """A checkpoint is missing, unreadable or not a nepa checkpoint."""


class NonFiniteError(CheckpointError):
    """Weights or optimizer state hold NaN or infinity: not worth saving or resuming."""


def save(path: str | Path, payload: dict[str, Any], *, checksum: bool = True) -> Path:
    """Atomically write a checkpoint payload (adds the format marker and the checksums).

    Tensors are copied to the CPU first (torch.save would copy them too) and hashed there.
    `checksum=False` writes version 1, unverifiable: only to measure what checksums cost.
    torch.save is given the path, not a Python file object: its own writer is faster.
    """
    # A payload read from an older checkpoint is written in this format, with fresh checksums.
    payload = _to_cpu({k: v for k, v in payload.items() if k not in ("format", "format_version", "checksums")})
    if checksum:
        payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
        payload["checksums"] = checksums(payload)
    else:
        payload = {"format": FORMAT, "format_version": 1, **payload}
    try:
        return atomic_write_path(path, lambda tmp: _torch_save_fast(payload, tmp))
    except (OSError, RuntimeError) as exc:  # torch's writer reports a full disk as RuntimeError
        raise write_error(Path(path), exc, payload_bytes(payload)) from exc


def payload_bytes(payload: Any) -> int:
    """What a payload's tensors occupy (the file is this plus a little metadata)."""
    return sum(t.numel() * t.element_size() for _, t in _tensors(payload))


def write_error(path: Path, exc: BaseException, need: int) -> CheckpointError:
    """One line for a failed checkpoint write: the path, the cause, the space needed and free.

    torch's writer reports a full disk as an opaque RuntimeError ("iostream error", "unexpected
    pos"): with less free space than the checkpoint needs, the cause is named as what it is.
    """
    import errno
    import shutil

    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or (free is not None and free < need):
        cause = "disk full"
    elif isinstance(exc, OSError) and exc.strerror:
        cause = exc.strerror
    else:
        cause = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    shown = "free space unknown" if free is None else f"{free / 2**30:.2f} GiB free"
    return CheckpointError(
        f"could not write checkpoint {path} ({cause}): it needs about {need / 2**30:.2f} GiB, "
        f"{shown} there; free disk space or lower checkpoint.keep_last (the previous checkpoint "
        "is intact)")


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    return value


def _tensors(value: Any, path: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(dotted path, tensor) of every tensor in a payload, in a fixed order."""
    if isinstance(value, torch.Tensor):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _tensors(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            yield from _tensors(item, f"{path}.{i}" if path else str(i))


def _skeleton(value: Any) -> Any:
    """The payload with each tensor replaced by its dtype and shape (hashed as metadata)."""
    if isinstance(value, torch.Tensor):
        return f"tensor({value.dtype}, {tuple(value.shape)})"
    if isinstance(value, dict):
        return {k: _skeleton(v) for k, v in value.items() if k != "checksums"}
    if isinstance(value, list | tuple):
        return type(value)(_skeleton(v) for v in value)
    return value


def _digest(tensor: torch.Tensor) -> int:
    return xxhash.xxh3_64_intdigest(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def checksums(payload: dict[str, Any]) -> dict[str, int]:
    """xxh3-64 of every (CPU) tensor's bytes by dotted path, and of the rest under META."""
    named = list(_tensors({k: v for k, v in payload.items() if k != "checksums"}))
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        digests = list(pool.map(_digest, (t for _, t in named)))
    sums = {name: digest for (name, _), digest in zip(named, digests, strict=True)}
    sums[META] = xxhash.xxh3_64_intdigest(repr(_skeleton(payload)).encode())
    return sums


def nonfinite(payload: dict[str, Any], keys: tuple[str, ...] = STATE_KEYS) -> list[str]:
    """Dotted paths of the floating-point tensors under `keys` holding NaN or infinity.

    One reduction per tensor (aminmax propagates NaN), on the tensor's own device.
    """
    named = [(name, t) for name, t in _tensors({k: payload[k] for k in keys if payload.get(k) is not None})
             if t.is_floating_point() and t.numel()]
    if not named:
        return []
    finite = [torch.isfinite(torch.stack(torch.aminmax(t.detach()))).all().cpu() for _, t in named]
    return [name for (name, _), ok in zip(named, torch.stack(finite).tolist(), strict=True) if not ok]


def _verify(path: Path, payload: dict[str, Any]) -> None:
    expected = payload.get("checksums")
    if not isinstance(expected, dict):
        raise CheckpointError(f"checkpoint {path} (format version {payload['format_version']}) has no checksums")
    actual = checksums(payload)
    bad = [name for name in actual.keys() | expected.keys() if actual.get(name) != expected.get(name)]
    if bad:
        shown = ", ".join(sorted(bad)[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise CheckpointError(f"checkpoint {path} is corrupt: checksum mismatch in {shown}")


def _torch_save_fast(payload: dict[str, Any], path: Path) -> None:
    """torch.save without per-record CRC32 (15-20% of the save time, and torch.load does not
    check it); fsync + rename guard against torn files, our checksums against changed bytes."""
    from torch.utils.serialization import config

    previous = config.save.compute_crc32
    config.save.compute_crc32 = False
    try:
        torch.save(payload, path)
    finally:
        config.save.compute_crc32 = previous


def load(path: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read and verify a checkpoint written by `save` (weights_only, on CPU).

    Version 2 files are checked against their checksums (`verify=False`: read into memory
    unchecked, as before checksums, only to measure their cost); version 1 files have none and
    load as they are, `format_version` 1 says so. Tensors map the file copy-on-write (it is
    replaced only by rename, never rewritten in place).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # Verifying reads every byte anyway: mapping the file (private, copy-on-write) instead
        # of copying it into fresh memory pays for the checksums (benchmarks/bench_checkpoint.py).
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=verify)
    except Exception as exc:  # truncated zip, wrong magic, disallowed pickle global, ...
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a nepa checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {payload['format_version']}, newer than this nepa "
            f"({FORMAT_VERSION}); upgrade nepa to read it"
        )
    if verify and payload.get("format_version", 1) >= 2:  # version 1: written before checksums
        _verify(path, payload)
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


def load_newest_valid(run_dir: str | Path, warn: Callable[[str], None] | None = None, *,
                      finite: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint of a run that loads (and, with `finite`, holds only finite
    weights and optimizer state), falling back past the others with one warning each.

    None when the run has no checkpoint; CheckpointError when checkpoints exist but none
    loads (never a silent restart from scratch).
    """
    files = checkpoint_files(run_dir)
    errors = []
    for path in files:
        try:
            payload = load(path)
            if finite and (bad := nonfinite(payload)):
                raise NonFiniteError(f"checkpoint {path} holds non-finite values in {', '.join(bad[:3])}")
            return path, payload
        except CheckpointError as exc:
            errors.append(str(exc))
            if warn is not None:
                warn(f"skipping corrupt checkpoint: {exc}")
    if errors:
        raise CheckpointError(f"no checkpoint of {run_dir} loads: " + "; ".join(errors))
    return None
