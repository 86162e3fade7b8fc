"""The run directory: its file names, how files in it are written and read. Torch-free.

    RUN/run.json        RunInfo: what listings show without parsing configs (versioned)
    RUN/config.yaml     resolved run config (nepa.train.runconfig)   RUN/eval.yaml  an evaluation's spec
    RUN/cluster.yaml    resolved cluster profile               RUN/ledger.jsonl  submit/requeue/end events
    RUN/checkpoints/    step_XXXXXXXX.pt, `latest` pointer, protected.json
    RUN/metrics.jsonl   one record per logged step             RUN/outcome.json  how the job ended
    RUN/heartbeats/     rank<i>.json                           RUN/code/, submitit/, attempts/, evals/

Every file is written atomically (temporary sibling, fsync, rename, fsync of the directory), so
a reader sees the old or the new content, never a torn one; JSON-lines files are appended and
a torn last line (a writer killed mid-append) is skipped by every reader.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

# Version 1: run directories written before RunInfo was versioned (no "format" key);
# version 2: RunInfo with "format", paths in specs by nepa.paths' rule.
FORMAT_VERSION = 2

RUN_INFO = "run.json"
LEDGER = "ledger.jsonl"
METRICS = "metrics.jsonl"
OUTCOME = "outcome.json"
CHECKPOINTS = "checkpoints"
HEARTBEATS = "heartbeats"
LATEST = "latest"  # pointer file in CHECKPOINTS: the newest checkpoint's file name
PROTECTED = "protected.json"  # in CHECKPOINTS: steps that evaluations still need


# ---------------------------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------------------------


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


def write_json(path: str | Path, data: dict[str, Any]) -> Path:
    text = json.dumps(data, indent=1).encode()
    return atomic_write(path, lambda f: f.write(text))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in `path`; None when missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # ValueError: bad JSON and bad UTF-8 alike
        return None
    return data if isinstance(data, dict) else None


# ---------------------------------------------------------------------------------------------
# JSON lines
# ---------------------------------------------------------------------------------------------


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """One line per record; appends of one short line are atomic on local filesystems."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _records(lines: list[bytes]) -> Iterator[dict[str, Any]]:
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:  # a torn or garbled line: skipped, never fatal
            continue
        if isinstance(record, dict):
            yield record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Every whole record of a JSON-lines file ([] when missing)."""
    try:
        return list(_records(Path(path).read_bytes().splitlines()))
    except OSError:
        return []


def tail_jsonl(path: str | Path, count: int, chunk: int = 65536) -> list[dict[str, Any]]:
    """The last `count` whole records, reading only the file's tail."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - chunk))
            lines = f.read().splitlines()
    except OSError:
        return []
    if size > chunk:
        lines = lines[1:]  # the first line read may be cut by the seek
    return list(_records(lines))[-count:]


def last_jsonl(path: str | Path) -> dict[str, Any] | None:
    records = tail_jsonl(path, 1, chunk=8192)
    return records[-1] if records else None


# ---------------------------------------------------------------------------------------------
# Checkpoint files
# ---------------------------------------------------------------------------------------------


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}.pt"


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a checkpoint file name (None for any other file)."""
    stem = Path(path).name
    if not (stem.startswith("step_") and stem.endswith(".pt")):
        return None
    digits = stem[5:-3]
    return int(digits) if digits.isdigit() else None


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def write_pointer(directory: Path, name: str) -> None:
    """Point `directory/latest` at checkpoint file `name`, atomically."""
    atomic_write(directory / LATEST, lambda f: f.write(name.encode() + b"\n"))


def read_pointer(directory: Path) -> Path | None:
    """The file `latest` names; None when missing or not a checkpoint file name."""
    try:
        name = (directory / LATEST).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return directory / name if checkpoint_step(name) is not None and "/" not in name else None


def checkpoint_steps(run_dir: str | Path) -> list[int]:
    """Steps of the run's checkpoint files, ascending."""
    directory = checkpoint_dir(run_dir)
    if not directory.is_dir():
        return []
    return sorted(s for p in directory.iterdir() if (s := checkpoint_step(p)) is not None)


def checkpoint_files(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run directory, newest first (the `latest` pointer's file first)."""
    directory = checkpoint_dir(run_dir)
    files = [directory / checkpoint_name(s) for s in reversed(checkpoint_steps(run_dir))]
    pointed = read_pointer(directory) if files else None
    if pointed is not None and pointed in files:
        files.remove(pointed)
        files.insert(0, pointed)
    return files


def protect_step(run_dir: str | Path, step: int) -> None:
    """Retention never deletes this checkpoint: an evaluation still has to read it."""
    steps = sorted(protected_steps(run_dir) | {step})
    atomic_write(checkpoint_dir(run_dir) / PROTECTED, lambda f: f.write(json.dumps(steps).encode()))


def protected_steps(run_dir: str | Path) -> set[int]:
    try:
        steps = json.loads((checkpoint_dir(run_dir) / PROTECTED).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {s for s in steps if isinstance(s, int)} if isinstance(steps, list) else set()


# ---------------------------------------------------------------------------------------------
# run.json
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class RunInfo:
    """run.json: what a listing needs about a run or an evaluation without parsing its config."""

    name: str
    task: str  # "pretrain", an evaluation task, "eval" (a --weights evaluations holder)
    size: str = "custom"
    nodes: int = 1
    procs_per_node: int = 1
    gpus_per_node: int = 0
    executor: str = "local"  # "slurm", "local" or "debug"
    created: float = 0.0
    max_steps: int | None = None
    kind: str = "run"  # "run" or "eval"
    run: str | None = None  # an evaluation: the run it belongs to
    seed: int | None = None
    weights: str | None = None  # a --weights holder: what it evaluates (nepa.paths' rule)
    derived: dict[str, Any] = field(default_factory=dict)  # values computed at render time
    layers: tuple[str, ...] = ()  # the template layers that made the spec, in precedence order
    format: int = FORMAT_VERSION

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = list(self.layers)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunInfo:
        """Tolerant: a run.json of an older version lacks fields (format 1: no "format")."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("format", 1)
        values.setdefault("name", "?")
        values.setdefault("task", "?")
        if "layers" in values:
            values["layers"] = tuple(values["layers"] or ())
        if values.get("kind") is None:
            values["kind"] = "eval" if values["task"] not in ("pretrain", "eval") and "run" in data else "run"
        return cls(**values)


def write_run_info(directory: str | Path, info: RunInfo) -> Path:
    return write_json(Path(directory) / RUN_INFO, info.as_dict())


def read_run_info(directory: str | Path) -> RunInfo | None:
    data = read_json(Path(directory) / RUN_INFO)
    if data is None:
        return None
    try:
        return RunInfo.from_dict(data)
    except (TypeError, ValueError):
        return None
