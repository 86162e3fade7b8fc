"""Paths written into run and evaluation files: one rule, so a run never depends on a cwd.

A path inside the runs root is stored relative to the directory of the file that holds it and
resolved against that directory (a moved or copied runs root keeps working); a path outside
it is stored absolute. Nothing is ever resolved against the reader's current directory: jobs
run elsewhere (the local executor starts in the run directory, SLURM wherever sbatch ran).
Torch-free.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

# Values that name something other than a file (e.g. the demo's generated segmentation data).
_NOT_A_PATH_PREFIXES = ("generated:",)


def is_path_value(value: Any) -> bool:
    return isinstance(value, str) and bool(value) and not value.startswith(_NOT_A_PATH_PREFIXES)


def store_path(path: str | os.PathLike, holder: str | os.PathLike, runs_root: str | os.PathLike) -> str:
    """How `path` is written into a file kept in directory `holder` of `runs_root`.

    A relative `path` is the user's input and so means the current directory, here, once.
    """
    absolute = os.path.realpath(os.path.expanduser(os.fspath(path)))
    root = os.path.realpath(runs_root)
    if absolute == root or absolute.startswith(root.rstrip(os.sep) + os.sep):
        return os.path.relpath(absolute, os.path.realpath(holder))
    return absolute


def resolve_stored(value: str, holder: str | os.PathLike) -> str:
    """The path a stored value names: relative values are relative to `holder`."""
    path = os.path.expanduser(value)
    if os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(os.path.abspath(holder), path))


def map_fields(data: dict[str, Any], fields: Iterable[str], convert: Callable[[str], str]) -> dict[str, Any]:
    """A copy of the nested dict `data` with the dotted path `fields` passed through `convert`."""
    out = dict(data)
    for dotted in fields:
        head, _, rest = dotted.partition(".")
        if head not in out:
            continue
        if rest:
            if isinstance(out[head], dict):
                out[head] = map_fields(out[head], [rest], convert)
        elif is_path_value(out[head]):
            out[head] = convert(out[head])
    return out


def store_fields(data: dict[str, Any], fields: Iterable[str], holder: str | os.PathLike,
                 runs_root: str | os.PathLike) -> dict[str, Any]:
    return map_fields(data, fields, lambda v: store_path(v, holder, runs_root))


def resolve_fields(data: dict[str, Any], fields: Iterable[str], holder: str | os.PathLike) -> dict[str, Any]:
    return map_fields(data, fields, lambda v: resolve_stored(v, holder))

