"""Run one `EvalSpec`: resolve its weights, dispatch to the task, write the result file."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from nepa.evals.common import EvalControl, EvalOutcome
from nepa.evals.segmentation.config import GENERATED_ADE
from nepa.evals.spec import EvalSpec

RANDOM_INIT_FILE = "random_init.pt"


@dataclass(frozen=True)
class ResolvedWeights:
    """The exact file an evaluation read, so its result names the checkpoint step and hash."""

    path: str  # checkpoint file or release directory
    step: int | None  # pretraining step of a nepa checkpoint
    sha256: str
    random_init: bool = False


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(spec: EvalSpec, work_dir: Path) -> ResolvedWeights:
    """A run directory becomes its newest valid checkpoint; random init is written once."""
    from nepa import checkpoint
    from nepa.convert import EMA_FILE, WEIGHTS_FILE, is_release_dir

    source = Path(spec.weights)
    if is_release_dir(source):
        name = WEIGHTS_FILE if (source / WEIGHTS_FILE).is_file() else EMA_FILE
        return ResolvedWeights(str(source), None, file_sha256(source / name))
    if source.is_dir():
        found = checkpoint.load_newest_valid(source)
        if found is None:
            raise checkpoint.CheckpointError(f"{source} has no checkpoint to evaluate yet")
        source = found[0]
    step = None
    if source.is_file() and source.suffix == ".pt":
        step = checkpoint.load(source).get("step")
    if not spec.random_init:
        return ResolvedWeights(str(source), step, file_sha256(source))
    target = work_dir / RANDOM_INIT_FILE
    if not target.is_file():
        _write_random_init(source, target, spec.seed)
    return ResolvedWeights(str(target), 0, file_sha256(target), random_init=True)


def _write_random_init(source: Path, target: Path, seed: int) -> None:
    import torch

    from nepa import checkpoint
    from nepa.model import NepaViT
    from nepa.pretrained import read_weights

    cfg, _ = read_weights(source)
    torch.manual_seed(seed)
    model = NepaViT(cfg)
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.save(target, checkpoint.model_payload(cfg, model.state_dict(), step=0))


def run_eval(spec: EvalSpec, work_dir: str | Path, control: EvalControl | None = None
             ) -> tuple[EvalOutcome, ResolvedWeights]:
    """Run (or resume) the evaluation in `work_dir`; STOPPED outcomes are saved and resumable."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    control = control or EvalControl()
    weights = resolve_weights(spec, work_dir)
    if spec.task == "linprobe":
        from nepa.evals.linprobe import run_linprobe

        outcome = run_linprobe(weights.path, spec.linprobe, spec.data, work_dir, control=control,
                               ema=spec.ema, seed=spec.seed)
    elif spec.task == "finetune":
        from dataclasses import replace

        from nepa.evals.finetune import run_finetune

        cfg = replace(spec.finetune, seed=spec.seed, pretrained_ema=None if spec.ema else False)
        outcome = run_finetune(weights.path, cfg, spec.data, work_dir, control=control)
    elif spec.task == "imagenet-val":
        from nepa.evals.classify import run_imagenet_val

        outcome = run_imagenet_val(weights.path, spec.classify, spec.data, work_dir, control=control)
    else:
        from dataclasses import replace

        from nepa.evals.segmentation import run_segmentation

        cfg = replace(spec.segmentation, seed=spec.seed, ema=None if spec.ema else False)
        if cfg.data_root == GENERATED_ADE:
            from nepa.evals.segmentation import make_tiny_ade20k

            cfg = replace(cfg, data_root=str(make_tiny_ade20k(work_dir / "tiny_ade20k", train=64, val=16, seed=0)))
        outcome = run_segmentation(weights.path, cfg, work_dir, control=control)
    return outcome, weights
