"""Classifier accuracy on a validation split: top-1 / top-5, every image counted exactly once.

Images are split over ranks by `EvalSampler` (contiguous, no padding) and the integer counts
of correct predictions are summed across ranks, so a distributed evaluation of ImageNet val
counts exactly 50,000 images (a padded DistributedSampler would count some twice).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nepa.data.config import DataConfig
from nepa.errors import NepaError
from nepa.evals.common import EvalControl, EvalOutcome, Metric, Weights
from nepa.evals.config import ClassifyConfig
from nepa.train.distributed import DistEnv

TOPK = (1, 5)


class NotAClassifier(NepaError):
    """The weights given to a classification evaluation have no classifier head."""


def eval_loader(dataset: Dataset, *, batch_size: int, env: DistEnv | None = None,
                data: DataConfig | None = None) -> DataLoader:
    """This rank's contiguous shard of `dataset` (workers from `data`, else the main process)."""
    rank, world = (env.rank, env.world_size) if env is not None else (0, 1)
    from nepa.data import build_eval_loader

    return build_eval_loader(data or DataConfig(num_workers=0), dataset, batch_size,
                             rank=rank, world_size=world)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def count_correct(models: Mapping[str, nn.Module], batches: Iterable[dict], *,
                  device: torch.device, should_stop: Callable[[], bool] | None = None,
                  env: DistEnv | None = None) -> dict[str, torch.Tensor] | None:
    """{name: int64 [top-1 correct, top-5 correct, images]} of this rank; None when stopped.

    Integer counts (not timm's per-batch percentages) so that ranks can be summed exactly.
    `should_stop` is checked between batches of a single-process evaluation only: ranks hold
    different numbers of batches, so a per-batch collective could not be matched.
    """
    counts = {name: torch.zeros(3, dtype=torch.long, device=device) for name in models}
    modes = {name: model.training for name, model in models.items()}
    distributed = env is not None and env.enabled
    for model in models.values():
        model.eval()
    try:
        for batch in batches:
            if should_stop is not None and not distributed and should_stop():
                return None
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"].to(device, non_blocking=True)
            if images.shape[0] == 0:  # every image of the batch unreadable
                continue
            for name, model in models.items():
                with _autocast(device):
                    logits = model(images)  # (B, classes)
                k = min(max(TOPK), logits.shape[1])
                top = logits.float().topk(k, dim=1).indices  # (B, k)
                hit = top == labels[:, None]  # (B, k)
                counts[name] += torch.stack([hit[:, :1].any(1).sum(), hit.any(1).sum(),
                                             torch.tensor(len(labels), device=device)])
    finally:
        for name, model in models.items():
            model.train(modes[name])
    return counts


def summarise(counts: dict[str, torch.Tensor], env: DistEnv | None = None) -> dict[str, dict]:
    """Sum the counts over ranks; {name: {"top1", "top5" (percent), "images"}}."""
    results = {}
    for name, local in counts.items():
        total = local.clone()
        if env is not None and env.enabled:
            dist.all_reduce(total, op=dist.ReduceOp.SUM)
        top1, top5, images = total.tolist()
        results[name] = {"top1": 100.0 * top1 / max(images, 1),
                         "top5": 100.0 * top5 / max(images, 1), "images": int(images)}
    return results


def evaluate_classifiers(models: Mapping[str, nn.Module], dataset: Dataset, *, batch_size: int,
                         env: DistEnv | None = None, data: DataConfig | None = None,
                         should_stop: Callable[[], bool] | None = None) -> dict[str, dict] | None:
    """Several classifiers (e.g. raw and EMA weights) in one pass over the images."""
    device = next(next(iter(models.values())).parameters()).device
    loader = eval_loader(dataset, batch_size=batch_size, env=env, data=data)
    counts = count_correct(models, loader, device=device, should_stop=should_stop, env=env)
    return None if counts is None else summarise(counts, env)


def evaluate_classifier(model: nn.Module, dataset: Dataset, *, batch_size: int,
                        env: DistEnv | None = None, data: DataConfig | None = None,
                        should_stop: Callable[[], bool] | None = None) -> dict | None:
    """{"top1", "top5" (percent), "images"} of `model` on `dataset`; None when stopped."""
    results = evaluate_classifiers({"model": model}, dataset, batch_size=batch_size, env=env,
                                   data=data, should_stop=should_stop)
    return None if results is None else results["model"]


def _weights_label(path: Path, ema: bool | None) -> Weights:
    """'ema' when the evaluated weights are an EMA, as `read_weights` chooses them."""
    from nepa import checkpoint
    from nepa.convert import EMA_FILE, is_release_dir

    if ema is not None:
        return "ema" if ema else "frozen"
    if path.is_file() and path.name == EMA_FILE:
        return "ema"
    if is_release_dir(path):
        return "frozen"
    found = checkpoint.load_newest_valid(path) if path.is_dir() else (path, checkpoint.load(path))
    return "ema" if found is not None and found[1].get("ema") is not None else "frozen"


def load_classifier(weights: str | Path, *, ema: bool | None = None,
                    device: str | torch.device = "cpu") -> nn.Module:
    """A classifier from a nepa checkpoint, run/fine-tune directory or released -sft directory."""
    from nepa.pretrained import load_pretrained

    model = load_pretrained(weights, ema=ema, device=device)
    if model.head is None:
        raise NotAClassifier(
            f"{weights} is a pretraining model without a classifier head; fine-tune it first "
            "(nepa.evals.finetune.run_finetune) or give a classifier (a released -sft directory "
            "or a fine-tuning directory)")
    return model


def run_imagenet_val(weights: str | Path, cfg: ClassifyConfig, data: DataConfig,
                     work_dir: str | Path, *, control: EvalControl) -> EvalOutcome:
    """Top-1 / top-5 of a classifier on `data`'s val split, in one process on the GPU when there
    is one (no training: nothing to resume; a stop request between batches returns STOPPED)."""
    from nepa.data import build_dataset, eval_transform

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_classifier(weights, ema=cfg.ema, device=device)
    label = _weights_label(Path(weights), cfg.ema)
    dataset = build_dataset(data, "val", eval_transform(data.image_size, cfg.crop_pct, cfg.squash))
    Path(work_dir).mkdir(parents=True, exist_ok=True)
    result = evaluate_classifier(model, dataset, batch_size=cfg.batch_size, data=data,
                                 should_stop=control.should_stop)
    if result is None:
        return EvalOutcome(status="STOPPED", step=0, total_steps=1)
    control.report({"step": 1, "total": 1, **result})
    detail = {"images": result["images"], "crop_pct": cfg.crop_pct, "squash": cfg.squash}
    metrics = tuple(Metric(name, result[name], weights=label, split=data.val_split or "val",
                           detail=detail) for name in ("top1", "top5"))
    return EvalOutcome(status="COMPLETED", step=1, total_steps=1, metrics=metrics)
