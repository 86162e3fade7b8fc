"""The run registry: one directory per run under the runs root. Imports no torch.

The layout and the file primitives (atomic writes, JSON lines, checkpoint names, RunInfo) are
nepa.rundir's; this module names, creates, finds and lists runs, appends to their ledgers and
snapshots the code a job runs.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from nepa import rundir
from nepa.rundir import LEDGER, RUN_INFO, read_json, write_json
from nepactl.errors import CliError

NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def runs_root(value: str | Path | None = None) -> Path:
    return Path(value or os.environ.get("NEPA_RUNS", "runs"))


MAX_NAME = 100  # leaves room for the staging name (and file names) under 255-byte limits


def check_name(name: str) -> None:
    if not name or name.startswith(".") or not set(name) <= NAME_CHARS:
        raise CliError(f"run name {name!r} may only use letters, digits, '.', '_' and '-' "
                       "(and must not start with '.'); choose another --name")
    if len(name) > MAX_NAME:
        raise CliError(f"run name of {len(name)} characters is longer than {MAX_NAME}; choose a "
                       "shorter --name")


def create_run(root: Path, name: str, fill: Callable[[Path], None]) -> Path:
    """Build the run directory under a temporary name, then rename it into place.

    The rename fails when the name exists, so two concurrent submissions cannot both win,
    and a failure while filling leaves nothing behind.
    """
    check_name(name)
    root.mkdir(parents=True, exist_ok=True)
    final = root / name
    if final.exists():
        raise CliError(f"run '{name}' already exists in {root}; choose another --name, or "
                       f"continue it with: nepactl resume {name}")
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".staging", dir=root))
    try:
        fill(staging)
        try:
            os.rename(staging, final)  # atomic; refuses an existing non-empty directory
        except OSError:
            raise CliError(f"run '{name}' was created by another submission just now; choose "
                           "another --name") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def find_run(root: Path, name: str) -> Path:
    path = root / name
    if not (path / RUN_INFO).is_file():
        known = [p.name for p in list_runs(root)]
        from nepa.config import suggest

        raise CliError(f"no run '{name}' in {root}{suggest(name, known)}; list runs with "
                       "nepactl runs (or set --runs-root / NEPA_RUNS)")
    return path


def list_runs(root: Path) -> list[Path]:
    """Run directories (those holding run.json), by name; one that cannot be looked into
    (permissions, I/O errors) is listed too, for its reader to report."""
    try:
        entries = [e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    except OSError:
        return []
    return [root / name for name in sorted(entries) if _maybe_run(root / name)]


def _maybe_run(directory: Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(directory / RUN_INFO).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:  # EACCES, EIO: maybe a run, unreadable
        return True


def unreadable(run_dir: Path) -> str | None:
    """Why a run directory cannot be read (its listing, run.json or ledger), or None."""
    try:
        os.listdir(run_dir)
        for name in (RUN_INFO, LEDGER):
            path = run_dir / name
            if name == RUN_INFO or path.exists():
                with open(path, "rb") as f:
                    f.read(1)
    except OSError as exc:
        return f"{exc.strerror or type(exc).__name__}: {exc.filename or run_dir}"
    return None


def append_ledger(run_dir: Path, event: str, **fields: Any) -> None:
    rundir.append_jsonl(run_dir / LEDGER, {"time": time.time(), "event": event, **fields})


def read_ledger(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events (records without an "event" are skipped)."""
    return [e for e in rundir.read_jsonl(run_dir / LEDGER) if isinstance(e.get("event"), str)]


def submitted_jobs(run_dir: Path) -> list[tuple[str, str]]:
    """(job id, executor) of every job the run submitted, its own and its evaluations', in order."""
    seen, ids = set(), []
    for event in read_ledger(run_dir):
        job = event.get("job_id")
        if event["event"] in ("submit", "eval_submit") and job and job not in seen:
            seen.add(job)
            ids.append((job, event.get("executor", "local")))
    return ids


def submit_record(ledger: list[dict[str, Any]], job_id: str) -> dict[str, Any] | None:
    """The `submit` event of a job (a local one carries its controller's identity, `process`)."""
    return next((e for e in reversed(ledger) if e["event"] == "submit" and e.get("job_id") == job_id), None)


def own_job_id(ledger: list[dict[str, Any]]) -> str:
    """The newest job id of the run's own job (not of the evaluations it launched)."""
    return next((e["job_id"] for e in reversed(ledger) if e.get("job_id") and e["event"] != "eval_submit"), "")


def snapshot_code(destination: Path) -> dict[str, Any]:
    """Copy the nepa and nepactl packages (+ git revision and uncommitted diff) for the job."""
    source_root = Path(__file__).resolve().parents[1]
    destination.mkdir(parents=True)
    for package in ("nepa", "nepactl"):
        shutil.copytree(source_root / package, destination / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    info: dict[str, Any] = {"source": str(source_root)}
    try:
        rev = subprocess.run(["git", "-C", str(source_root), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        if rev.returncode == 0:
            info["git_revision"] = rev.stdout.strip()
            diff = subprocess.run(["git", "-C", str(source_root), "diff", "HEAD"],
                                  capture_output=True, text=True, timeout=30)
            (destination / "uncommitted.diff").write_text(diff.stdout)
            info["dirty"] = bool(diff.stdout.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    write_json(destination / "snapshot.json", info)
    return info


def iter_heartbeats(run_dir: Path) -> Iterator[dict[str, Any]]:
    directory = run_dir / rundir.HEARTBEATS
    if directory.is_dir():
        for path in directory.glob("rank*.json"):
            beat = read_json(path)
            if beat is not None:
                yield beat


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} when missing or not a mapping)."""
    import yaml

    from nepa.config import load_yaml

    try:
        data = load_yaml(path.read_text(encoding="utf-8"), str(path))
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}
