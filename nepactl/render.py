"""Templates -> one validated run spec: defaults < size < task < cluster < user files < --set.

Every layer's keys are checked on their own (errors name the file), the merged result is
validated strictly, and derived values (world size, accumulation, lr, steps) are computed.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from nepa.config import ConfigError, check_keys, deep_merge, from_dict, load_yaml, suggest, to_dict, unknown_key
from nepa.train.runconfig import RunConfig
from nepactl.cluster import ClusterConfig
from nepactl.specs import EvalChainConfig

TEMPLATES = Path(os.environ.get("NEPA_TEMPLATES", Path(__file__).resolve().parents[1] / "templates"))


@dataclass(frozen=True)
class Rendered:
    run: RunConfig
    cluster: ClusterConfig
    derived: dict[str, Any]
    layers: list[str]
    chain: EvalChainConfig = field(default_factory=EvalChainConfig)

    def spec(self) -> dict[str, Any]:
        """The resolved document, as written into the run directory."""
        return {**to_dict(self.run), "cluster": to_dict(self.cluster), "evals": to_dict(self.chain)}


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = load_yaml(path.read_text(), str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; check the path") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where} is not valid YAML ({getattr(exc, 'problem', exc)}); "
                          "fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, train, ...) at the top")
    return data


def check_layer(data: dict, source: str) -> None:
    """Unknown keys of one layer, named with the layer's file (sections: RunConfig + cluster)."""
    from typing import get_type_hints

    sections = {**get_type_hints(RunConfig), "cluster": ClusterConfig, "evals": EvalChainConfig}
    for section, value in data.items():
        if section not in sections:
            raise unknown_key(section, section, sections, source)
        if isinstance(value, dict):
            check_keys(sections[section], value, path=section, source=source)


def cluster_profile_path(profile: str, templates: Path = TEMPLATES) -> Path:
    """A profile name under templates/clusters/ or a path to a user file."""
    candidate = Path(profile)
    if candidate.suffix in (".yaml", ".yml") or os.sep in profile:
        return candidate
    path = templates / "clusters" / f"{profile}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (templates / "clusters").glob("*.yaml"))
        raise ConfigError(f"unknown cluster profile '{profile}'{suggest(profile, known)}; "
                          f"profiles: {', '.join(known)} (or a path to a YAML file)")
    return path


def parse_set(assignment: str) -> dict[str, Any]:
    """'train.max_steps=100' -> {'train': {'max_steps': 100}} (values parsed as YAML)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {assignment!r}: expected KEY=VALUE, e.g. train.max_steps=100")
    try:
        value = load_yaml(raw, f"--set {key.strip()}") if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {}
    cursor = nested
    parts = key.strip().split(".")
    for part in parts[:-1]:
        cursor = cursor.setdefault(part, {})
    cursor[parts[-1]] = value
    return nested


def render(*, size: str, task: str = "pretrain", cluster: str = "auto", files: tuple[Path, ...] = (),
           sets: tuple[str, ...] = (), nodes: int | None = None, gpus_per_node: int | None = None,
           name: str | None = None, evals: tuple[str, ...] | None = None,
           templates: Path = TEMPLATES) -> Rendered:
    """Resolve the precedence chain into a validated RunConfig + ClusterConfig."""
    from nepa.model_config import SIZES, resolve_size

    canonical = resolve_size(size)
    layers: list[tuple[str, dict]] = [(f"size preset {canonical}", {"model": SIZES[canonical]})]
    size_file = templates / "sizes" / f"{canonical}.yaml"
    if size_file.is_file():
        layers.append((str(size_file), read_yaml(size_file)))
    task_file = templates / "tasks" / f"{task}.yaml"
    if not task_file.is_file():
        known = sorted(p.stem for p in (templates / "tasks").glob("*.yaml"))
        raise ConfigError(f"unknown task '{task}'{suggest(task, known)}; tasks: {', '.join(known)}")
    layers.append((str(task_file), read_yaml(task_file)))
    profile = cluster_profile_path(cluster, templates)
    layers.append((str(profile), read_yaml(profile)))
    layers += [(str(path), read_yaml(Path(path))) for path in files]
    for assignment in sets:
        layers.append((f"--set {assignment}", parse_set(assignment)))
    flags: dict[str, Any] = {}
    if nodes is not None:
        flags.setdefault("train", {})["nodes"] = nodes
    if gpus_per_node is not None:
        flags["cluster"] = {"gpus_per_node": gpus_per_node, "tasks_per_node": max(1, gpus_per_node)}
    if name is not None:
        flags["name"] = name
    if evals is not None:
        flags["evals"] = {"tasks": list(evals)}
    if flags:
        layers.append(("command-line flags", flags))

    merged: dict[str, Any] = {}
    for source, layer in layers:
        check_layer(layer, source)
        merged = deep_merge(merged, layer)
    cluster_cfg = from_dict(ClusterConfig, merged.pop("cluster", {}), path="cluster")
    chain = from_dict(EvalChainConfig, merged.pop("evals", {}), path="evals")
    if chain.at_steps:  # milestone checkpoints are written and kept for their evaluations
        checkpoint = merged.setdefault("checkpoint", {})
        checkpoint["keep_steps"] = sorted({*checkpoint.get("keep_steps", ()), *chain.at_steps})
    merged.setdefault("train", {})["procs_per_node"] = cluster_cfg.tasks_per_node
    merged["name"] = merged.get("name") or f"{task}-{canonical}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = merged.get("data", {}).get("path")
    if isinstance(path, str) and "://" not in path and not path.startswith("pipe:"):
        merged["data"]["path"] = os.path.abspath(os.path.expanduser(path))  # jobs run elsewhere
    run = from_dict(RunConfig, merged)
    return Rendered(run, cluster_cfg, derive(run), [source for source, _ in layers], chain)


def derive(run: RunConfig) -> dict[str, Any]:
    """Values computed from the config, shown next to their inputs."""
    from nepa.train.config import base_lr

    train = run.train
    derived = {
        "world_size": f"{train.world_size} = nodes {train.nodes} x procs_per_node {train.procs_per_node}",
        "accumulation": f"{train.accumulation} = global_batch {train.global_batch} / "
                        f"(world_size {train.world_size} x micro_batch {train.micro_batch})",
        "lr": f"{base_lr(run.optim, train.global_batch):.4g} = "
              + ("optim.lr" if run.optim.lr is not None
                 else f"blr {run.optim.blr:g} x global_batch {train.global_batch} / 256"),
    }
    if train.max_steps is not None:
        derived["total_steps"] = f"{train.max_steps} = train.max_steps"
    else:
        derived["total_steps"] = (f"epochs {train.epochs} x (train images // global_batch "
                                  f"{train.global_batch}); counted when the job starts")
    return derived
