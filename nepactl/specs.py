"""The `evals` section of a run spec: which evaluations a pretraining run chains. Torch-free.

Rendering (nepactl.render) reads it, the run directory stores it as chain.yaml, and the
orchestration (nepactl.chain) acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from nepa.config import check, from_dict, load_yaml, to_dict

CHAIN_FILE = "chain.yaml"


@dataclass(frozen=True, kw_only=True)
class EvalChainConfig:
    """The `evals` section of a run spec."""

    tasks: tuple[str, ...] = ()  # evaluated at each of at_steps and when the run completes
    at_steps: tuple[int, ...] = ()  # milestone steps (their checkpoints are kept)
    on_complete: bool = True  # evaluate the final checkpoint (the EMA weights) too
    seeds: tuple[int, ...] = (0,)
    random_init: bool = False  # also the same architecture at random init, once per task and seed
    sets: tuple[str, ...] = ()  # KEY=VALUE overrides of the evaluation specs (as nepactl eval --set)

    def __post_init__(self) -> None:
        chainable = ("finetune", "linprobe", "ade20k")  # nepa.evals.spec.TASKS less imagenet-val
        for task in self.tasks:
            check(task in chainable, "evals.tasks",
                  f"unknown or unchainable task '{task}'; choose from {', '.join(chainable)} "
                  "(imagenet-val evaluates fine-tuned weights: nepactl eval --weights)")
        check(all(step >= 1 for step in self.at_steps), "evals.at_steps", "steps must be >= 1")
        check(not self.at_steps or self.tasks, "evals.at_steps",
              "milestones need evals.tasks, e.g. --set evals.tasks=[linprobe]")
        check(len(self.seeds) >= 1, "evals.seeds", "give at least one seed")
        check(all("=" in s and not s.startswith("cluster.") for s in self.sets), "evals.sets",
              "expected KEY=VALUE evaluation settings, e.g. linprobe.epochs=10")

    @property
    def active(self) -> bool:
        return bool(self.tasks)


def write_chain(run_dir: Path, chain: EvalChainConfig) -> None:
    (run_dir / CHAIN_FILE).write_text(yaml.safe_dump(to_dict(chain), sort_keys=False))


def read_chain(run_dir: Path) -> EvalChainConfig | None:
    path = run_dir / CHAIN_FILE
    if not path.is_file():
        return None
    chain = from_dict(EvalChainConfig, load_yaml(path.read_text(), str(path)) or {}, path="evals",
                      source=str(path))
    return chain if chain.active else None
