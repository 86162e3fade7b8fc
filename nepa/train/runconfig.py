"""The resolved run config: every component's config in one frozen tree, read from YAML.

The CLI renders templates into this once; the YAML written into the run directory is the only
thing jobs and resumes read.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nepa.config import ConfigError, from_dict, load_yaml, to_dict
from nepa.data.config import DataConfig
from nepa.model_config import ModelConfig
from nepa.objective_config import ObjectiveConfig
from nepa.paths import resolve_fields, store_fields
from nepa.train.config import CheckpointConfig, EMAConfig, OptimConfig, TrainConfig

CONFIG_FILE = "config.yaml"
PATH_FIELDS = ("data.path",)  # stored and resolved by nepa.paths' rule


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """One pretraining run."""

    name: str = "nepa"
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def run_config_from_dict(data: dict[str, Any], source: str | None = None) -> RunConfig:
    return from_dict(RunConfig, data, source=source)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def load_yaml_text(text: str, source: str, holder: str | Path | None = None) -> RunConfig:
    """Parse a run config; with `holder` (the file's directory) relative paths resolve there."""
    try:
        data = load_yaml(text, source) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    if holder is not None:
        data = resolve_fields(data, PATH_FIELDS, holder)
    return run_config_from_dict(data, source=source)


def load_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config of a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no resolved config; create the run with nepactl or write_run_config")
    return load_yaml_text(path.read_text(), str(path), holder=path.parent)


def write_run_config(run_dir: str | Path, cfg: RunConfig, *, holder: str | Path | None = None,
                     runs_root: str | Path | None = None) -> Path:
    """Write config.yaml into `run_dir` (a staging directory that becomes `holder`, or the run
    directory itself); data paths follow nepa.paths' rule (absolute outside `runs_root`)."""
    from nepa.rundir import atomic_write

    path = Path(run_dir) / CONFIG_FILE
    data = to_dict(cfg)
    data = store_fields(data, PATH_FIELDS, holder or run_dir, runs_root if runs_root is not None
                        else Path(os.path.abspath(holder or run_dir)).parent)
    text = yaml.safe_dump(data, sort_keys=False)
    return atomic_write(path, lambda f: f.write(text.encode()))
