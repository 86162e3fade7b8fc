"""One evaluation job, fully resolved: which task, which weights, which data and recipe.

The CLI renders templates into an `EvalSpec` once and writes it as `eval.yaml` into the
evaluation's directory; the job (and every requeue of it) reads only that file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nepa.config import ConfigError, check, from_dict, load_yaml, to_dict
from nepa.data.config import DataConfig
from nepa.evals.config import ClassifyConfig, FinetuneConfig, LinProbeConfig
from nepa.evals.segmentation.config import GENERATED_ADE, SegmentationConfig
from nepa.paths import resolve_fields, store_fields

SPEC_FILE = "eval.yaml"
# Fields holding file paths: stored and resolved by nepa.paths' rule (relative to eval.yaml's
# directory when inside the runs root, else absolute).
PATH_FIELDS = ("weights", "data.path", "segmentation.data_root")
Task = Literal["finetune", "linprobe", "ade20k", "imagenet-val"]
TASKS: tuple[str, ...] = ("finetune", "linprobe", "ade20k", "imagenet-val")


@dataclass(frozen=True, kw_only=True)
class EvalSpec:
    """One (weights, task, seed) evaluation."""

    task: Task = "linprobe"
    # A nepa checkpoint file, a run directory (its newest valid checkpoint, read when the job
    # starts) or a released HF-format directory.
    weights: str = ""
    # true: the architecture of `weights` at a seeded random initialisation, the baseline a
    # pretrained model must beat (its weights are never read).
    random_init: bool = False
    ema: bool = True  # evaluate the EMA weights when the checkpoint holds them
    seed: int = 0
    # "paper": the published recipe on the published data; "demo": a small stand-in (bundled
    # data, tiny size, shortened schedule). Results carry it so tables never mix the two.
    protocol: Literal["paper", "demo"] = "paper"
    data: DataConfig = field(default_factory=DataConfig)
    linprobe: LinProbeConfig = field(default_factory=LinProbeConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)

    def __post_init__(self) -> None:
        check(bool(self.weights), "weights", "name a checkpoint, run directory or release directory")
        check(self.seed >= 0, "seed", "must be >= 0")
        check(not (self.random_init and self.task == "imagenet-val"), "random_init",
              "imagenet-val evaluates given classifier weights; drop random_init")


def load_spec(eval_dir: str | Path) -> EvalSpec:
    path = Path(eval_dir) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{path}: no evaluation spec; create evaluations with nepactl eval")
    data = load_yaml(path.read_text(), str(path)) or {}
    if isinstance(data, dict):
        data = resolve_fields(data, PATH_FIELDS, path.parent)
    return from_dict(EvalSpec, data, source=str(path))


def dump_spec(spec: EvalSpec, *, holder: str | Path | None = None, runs_root: str | Path | None = None) -> str:
    """The spec as YAML; given where it will live, paths follow nepa.paths' rule."""
    data = to_dict(spec)
    if holder is not None and runs_root is not None:
        data = store_fields(data, PATH_FIELDS, holder, runs_root)
    return yaml.safe_dump(data, sort_keys=False)


def spec_from_dict(data: dict[str, Any], source: str | None = None) -> EvalSpec:
    return from_dict(EvalSpec, data, source=source)


def recipe_name(spec: EvalSpec) -> str | None:
    """The named source of a recipe the release is silent on (the probe, ADE20K), reported
    next to its numbers; None for the release's own recipes (fine-tuning, validation)."""
    if spec.task == "linprobe":
        return spec.linprobe.name
    if spec.task == "ade20k":
        seg = spec.segmentation
        if seg.data_root == GENERATED_ADE:
            return "UPerNet, demo schedule"
        if (seg.lr, seg.layer_decay) == (2e-5, 0.95):
            return "UPerNet, BEiT-L recipe"
        if seg.lr == 1e-4 and seg.layer_decay in (None, 0.65):
            return "UPerNet, MAE-B recipe"
        return "UPerNet, own lr / layer decay"
    return None
