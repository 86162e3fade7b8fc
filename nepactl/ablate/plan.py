"""The ablation's runs, rendered and checked, with the state of those that exist; creates nothing."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nepa.config import ConfigError, suggest
from nepactl import runs
from nepactl.ablate.variants import Variant, load_variants, select_variants, split_sets
from nepactl.errors import CliError
from nepactl.render import TEMPLATES, Rendered, render

TASKS = ("linprobe", "finetune")
RETRYABLE = ("FAILED", "CANCELLED")
ARRAY_EXECUTORS = ("slurm",)  # executors whose pretraining runs go out as one job array


@dataclass(frozen=True)
class Member:
    """One pretraining run of the ablation."""

    variant: str
    seed: int
    rendered: Rendered
    state: str  # "new" or a status state (COMPLETED, FAILED, RUNNING, ...)

    @property
    def name(self) -> str:
        return self.rendered.run.name


@dataclass(frozen=True)
class AblationPlan:
    prefix: str
    root: Path
    cluster: str  # the profile, as given
    executor: str  # what it resolves to: slurm, local or debug
    tasks: tuple[str, ...]
    eval_sets: tuple[str, ...]
    variants: dict[str, Variant]
    members: tuple[Member, ...]

    @property
    def summary_dir(self) -> Path:
        return self.root / f"{self.prefix}-ablation"

    @property
    def arrays(self) -> bool:
        """Pretraining goes out as one job array (and evaluations wait for it)."""
        return self.executor in ARRAY_EXECUTORS


def member_name(prefix: str, variant: str, seed: int) -> str:
    return f"{prefix}-{variant}-s{seed}"


def _member_state(root: Path, rendered: Rendered) -> str:
    """'new', or the existing run's state; an existing run must have the same config."""
    from nepa.train.runconfig import load_run_config
    from nepactl.status import collect

    run_dir = root / rendered.run.name
    if not (run_dir / runs.RUN_INFO).is_file():
        return "new"
    if _comparable(load_run_config(run_dir)) != _comparable(rendered.run):
        raise CliError(f"run '{rendered.run.name}' exists with another config (other --steps or "
                       "--set than before); use them again, or choose another --name")
    (row,), _ = collect(root, [rendered.run.name])
    return row.state


def _comparable(run: Any) -> dict:
    """A run config as a dict whose data path is absolute, however it was written."""
    from nepa.config import to_dict

    data = to_dict(run)
    if data["data"].get("path"):
        data["data"]["path"] = os.path.realpath(data["data"]["path"])
    return data


def plan_ablation(*, prefix: str, root: Path, variants: str, seeds: tuple[int, ...],
                  steps: int | None, cluster: str, sets: tuple[str, ...] = (),
                  tasks: tuple[str, ...] = TASKS, templates: Path = TEMPLATES) -> AblationPlan:
    """Every (variant, seed) run rendered and checked, with its state; creates nothing.

    Precedence per run: tiny recipe < the user's --set < the variant's overrides < the seed
    and --steps, so a variant's switch always holds and every variant gets the same budget.
    """
    runs.check_name(prefix)
    table = load_variants(templates)
    chosen = select_variants(variants, table)
    for task in tasks:
        if task not in TASKS:
            raise ConfigError(f"--tasks: unknown task '{task}'{suggest(task, TASKS)}; tasks: {', '.join(TASKS)}")
    run_sets, eval_sets = split_sets(sets)
    members = []
    for variant in chosen:
        for seed in seeds:
            own = (*run_sets, *table[variant].sets, f"train.seed={seed}",
                   *((f"train.max_steps={steps}",) if steps else ()))
            rendered = render(size="tiny", cluster=cluster, sets=own, templates=templates,
                              name=member_name(prefix, variant, seed))
            members.append(Member(variant, seed, rendered, _member_state(root, rendered)))
    executor = members[0].rendered.cluster.resolved_executor()
    return AblationPlan(prefix, root, cluster, executor, tasks, eval_sets,
                        {v: table[v] for v in chosen}, tuple(members))
