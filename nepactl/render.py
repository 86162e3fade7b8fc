"""Templates -> one validated run spec: defaults < size < task < cluster profile < data default
< user files < --set < flags.

Every layer's keys are checked on their own (errors name the file), the merged result is
validated strictly, and derived values (world size, accumulation, lr, steps) are computed.
The cluster profile is --cluster, else $NEPA_CLUSTER, else the user's config file, else `auto`;
sizes meant for GPUs need real data and a profile that asks for GPUs (or cluster.device: cpu).
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
from nepactl import userconfig
from nepactl.cluster import IMAGES_PER_S_PER_GPU, ClusterConfig
from nepactl.specs import EvalChainConfig

GPU_SIZES = ("S", "B", "L", "H")  # sizes meant for GPUs and real data (tiny: CPUs and digits)
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


def cluster_layer(choice: str | None, templates: Path = TEMPLATES) -> tuple[str, dict[str, Any]]:
    """(source, layer) of the profile: --cluster > $NEPA_CLUSTER > the user file > `auto`."""
    choice = choice or os.environ.get(userconfig.CLUSTER_ENV) or None
    if choice is None:
        user = userconfig.read()
        if "cluster" in user:
            return str(userconfig.config_file()), {"cluster": user["cluster"] or {}}
        choice = "auto"
    path = cluster_profile_path(choice, templates)
    return str(path), read_yaml(path)


def data_section(value: str | dict[str, Any]) -> dict[str, Any]:
    """--data PATH (or a user default) as a data section: the source detected from the layout."""
    from nepa.data.layout import detect_source

    if isinstance(value, dict):
        return value
    if value == "digits":
        return {"source": "digits", "path": None}
    path = value if "://" in value or value.startswith("pipe:") else os.path.abspath(os.path.expanduser(value))
    return {"source": detect_source(path), "path": path}


def data_layer(size: str, data: str | None) -> tuple[str, dict[str, Any]] | None:
    """--data > $NEPA_DATA > the user file's data; tiny keeps its digits unless --data is given."""
    if data:
        return f"--data {data}", {"data": data_section(data)}
    if size not in GPU_SIZES:
        return None
    if os.environ.get(userconfig.DATA_ENV):
        value = os.environ[userconfig.DATA_ENV]
        return f"${userconfig.DATA_ENV}={value}", {"data": data_section(value)}
    user = userconfig.read().get("data")
    return (str(userconfig.config_file()), {"data": data_section(user)}) if user else None


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


def render(*, size: str, task: str = "pretrain", cluster: str | None = None, files: tuple[Path, ...] = (),
           sets: tuple[str, ...] = (), nodes: int | None = None, gpus_per_node: int | None = None,
           name: str | None = None, evals: tuple[str, ...] | None = None, data: str | None = None,
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
    profile_source, profile = cluster_layer(cluster, templates)
    layers.append((profile_source, profile))
    data_default = data_layer(canonical, data)
    if data_default is not None:
        layers.append(data_default)
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
    data_cfg = merged.setdefault("data", {})
    data_cfg.setdefault("num_workers", default_workers(cluster_cfg))
    merged["name"] = merged.get("name") or f"{task}-{canonical}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = merged.get("data", {}).get("path")
    if isinstance(path, str) and "://" not in path and not path.startswith("pipe:"):
        merged["data"]["path"] = os.path.abspath(os.path.expanduser(path))  # jobs run elsewhere
    run = from_dict(RunConfig, merged)
    _require_gpus_and_data(canonical, cluster_cfg, profile_source, layers)
    if "image_size" not in data_cfg and run.data.image_size != run.model.image_size:
        from dataclasses import replace  # the crop the model is built for

        run = replace(run, data=replace(run.data, image_size=run.model.image_size))
    return Rendered(run, cluster_cfg, derive(run, cluster_cfg, canonical), [source for source, _ in layers],
                    chain)


def _require_gpus_and_data(size: str, cluster: ClusterConfig, profile: str,
                           layers: list[tuple[str, dict]]) -> None:
    """Sizes meant for GPUs: never a silent zero-GPU job, never the bundled digits by default."""
    if size not in GPU_SIZES:
        return
    if cluster.resolved_executor() == "slurm" and cluster.gpus_per_node == 0 and cluster.device != "cpu":
        raise ConfigError(
            f"size {size} needs GPUs but the cluster profile ({profile}) asks for none; create one "
            "with `nepactl cluster init` (or pass --gpus-per-node N), or set cluster.device=cpu "
            "to use CPUs on purpose")
    if not any("source" in (layer.get("data") or {}) for _, layer in layers):
        raise ConfigError(
            f"size {size} trains on real data: pass --data PATH (an image folder, HF dataset or "
            f"shards), set ${userconfig.DATA_ENV}, or add `data: {{path: ...}}` to "
            f"{userconfig.config_file()}; --set data.source=digits uses the bundled digits on purpose")


def default_workers(cluster: ClusterConfig) -> int:
    """DataLoader workers per rank: the CPUs of one task, less the one that trains."""
    if cluster.cpus_per_task is not None:
        cpus = cluster.cpus_per_task
    elif cluster.resolved_executor() == "slurm":
        cpus = 1  # SLURM's default: one CPU per task
    else:
        cpus = max(1, (os.cpu_count() or 1) // cluster.tasks_per_node)
    return max(0, cpus - 1)


def derive(run: RunConfig, cluster: ClusterConfig | None = None, size: str | None = None,
           train_images: int | None = None) -> dict[str, Any]:
    """Values computed from the config, shown next to their inputs (steps: once the training
    set is counted, on the login node before submitting)."""
    from nepa.train.config import base_lr, warmup_steps

    train = run.train
    derived = {
        "world_size": f"{train.world_size} = nodes {train.nodes} x procs_per_node {train.procs_per_node}",
        "accumulation": f"{train.accumulation} = global_batch {train.global_batch} / "
                        f"(world_size {train.world_size} x micro_batch {train.micro_batch})",
        "lr": f"{base_lr(run.optim, train.global_batch):.4g} = "
              + ("optim.lr" if run.optim.lr is not None
                 else f"blr {run.optim.blr:g} x global_batch {train.global_batch} / 256"),
    }
    if train_images is None:
        if train.max_steps is not None:
            derived["total_steps"] = f"{train.max_steps} = train.max_steps"
        else:
            derived["total_steps"] = (f"epochs {train.epochs} x (train images // global_batch "
                                      f"{train.global_batch}); the images are counted before submitting")
        return derived
    per_epoch = train_images // train.global_batch
    derived["steps_per_epoch"] = f"{per_epoch:,} = train images {train_images:,} // global_batch {train.global_batch}"
    total = train.max_steps or train.epochs * per_epoch
    derived["total_steps"] = (f"{total:,} = train.max_steps" if train.max_steps is not None
                              else f"{total:,} = epochs {train.epochs} x steps_per_epoch {per_epoch:,}")
    warm = warmup_steps(run.optim, total)
    derived["warmup_steps"] = (f"{warm:,} = optim.warmup_steps" if run.optim.warmup_steps is not None
                               else f"{warm:,} = warmup_fraction {run.optim.warmup_fraction:g} x total_steps")
    if cluster is not None and cluster.uses_gpus:
        measured = cluster.images_per_s_per_gpu
        rate = measured or IMAGES_PER_S_PER_GPU.get(size or "", 0.0)
        if rate:
            gpus = train.nodes * cluster.gpus_per_node
            hours = total * train.global_batch / (rate * gpus) / 3600
            basis = ("cluster.images_per_s_per_gpu" if measured else
                     f"assumed for size {size} (bf16, H100-class); set cluster.images_per_s_per_gpu to yours")
            derived["wall_time"] = (f"~{hours:,.1f} h = total_steps x global_batch / ({rate:g} images/s "
                                    f"per GPU x {gpus} GPUs), {basis}")
    return derived
