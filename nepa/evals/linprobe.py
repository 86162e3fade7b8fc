"""Linear probes on a frozen backbone, one head per feature kind, reported on val.

Two protocols (`LinProbeConfig.protocol`), each result named by `LinProbeConfig.name`:
- "mae", the MAE protocol (the paper-scale default): augmented train images (RandomResizedCrop
  + flip) through the frozen backbone every epoch, BatchNorm without affine + a linear head,
  LARS at one fixed lr with warm-up and cosine; the val number of the last epoch.
- "fast" (the demo's): features of the eval transform extracted once and cached in memory,
  standardised (BatchNorm without affine, frozen) + an AdamW head whose lr is chosen on a
  held-out part of train (never on val).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nepa.config import ConfigError
from nepa.evals.common import EvalControl, EvalOutcome, Metric
from nepa.evals.config import LinProbeConfig
from nepa.evals.lars import LARS
from nepa.model import NepaViT


@dataclass(frozen=True)
class ProbeResult:
    feature: str  # "mean", "last" or "block{i}"
    top1: float  # on val, percent
    holdout_top1: float | None  # fast: on the held-out part of train at the chosen lr
    lr: float  # fast: the chosen lr; mae: the peak lr


def _feature_names(cfg: LinProbeConfig) -> list[str]:
    return list(cfg.features) + [f"block{i}" for i in cfg.blocks]


def probe_device() -> torch.device:
    """The job's device: its (current) GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _batch_features(model: NepaViT, images: torch.Tensor, cfg: LinProbeConfig) -> dict[str, torch.Tensor]:
    """{feature name: (B, D)} float32 of one batch on the model's device (bf16 autocast on GPUs
    with native bf16): final-normalised mean / last token, block means, reduced on the device."""
    from nepa.train.engine import autocast

    names = _feature_names(cfg)
    blocks = list(cfg.blocks)
    precision, _ = autocast("auto", images.device)
    with precision:
        outs = model.get_intermediate_layers(images, blocks + [len(model.blocks) - 1], norm=True)
    final = outs[-1].float()  # (B, 1+T, D), final-normalised
    features = {}
    if "mean" in names:
        features["mean"] = final[:, 1:].mean(dim=1)
    if "last" in names:
        features["last"] = final[:, -1]
    for i, out in zip(blocks, outs[:-1]):
        features[f"block{i}"] = out[:, 1:].float().mean(dim=1)
    return features


@torch.no_grad()
def extract_features(model: NepaViT, dataset: Dataset, cfg: LinProbeConfig, *, num_workers: int = 0
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{feature name: (N, D)} float32 and labels (N,) on the CPU, from the frozen model in eval
    mode on its own device, read by `num_workers` loader processes."""
    from nepa.data import collate

    model.eval()
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in _feature_names(cfg)}
    labels = []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        for name, feature in _batch_features(model, images, cfg).items():
            parts[name].append(feature.cpu())  # only (B, D) per feature comes back
        labels.append(batch["label"])
    return {n: torch.cat(p) for n, p in parts.items()}, torch.cat(labels)


# -- the fast probe ----------------------------------------------------------------------------


class _Probe(nn.Module):
    """BatchNorm without affine, frozen at the fit features' statistics, then a linear head.

    With frozen features this is exactly feature standardisation, so it is computed once.
    """

    def __init__(self, x: torch.Tensor, num_classes: int, eps: float = 1e-6):
        super().__init__()
        self.register_buffer("mean", x.mean(dim=0))
        self.register_buffer("inv_std", (x.var(dim=0, unbiased=False) + eps).rsqrt())
        self.linear = nn.Linear(x.shape[1], num_classes)

    def standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.standardise(x))


def _fit(x: torch.Tensor, y: torch.Tensor, num_classes: int, lr: float,
         cfg: LinProbeConfig, device: torch.device | None = None) -> nn.Module:
    """Linear head on standardised cached features, AdamW with a cosine schedule, trained on
    `device` (default: the features' own)."""
    generator = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    x, y = x.to(device or x.device), y.to(device or x.device)  # one feature kind at a time
    probe = _Probe(x, num_classes).to(x.device)
    z = probe.standardise(x)
    optimizer = torch.optim.AdamW(probe.linear.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, -(-len(x) // cfg.head_batch))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs * steps_per_epoch)
    for _ in range(cfg.epochs):
        for batch in torch.randperm(len(x), generator=generator).split(cfg.head_batch):
            loss = nn.functional.cross_entropy(probe.linear(z[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return probe.eval()


@torch.no_grad()
def _accuracy(head: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    device = next(head.parameters()).device
    return (head(x.to(device)).argmax(dim=1) == y.to(device)).float().mean().item()


def fast_probe(model: NepaViT, train: Dataset, val: Dataset, cfg: LinProbeConfig, *,
               num_workers: int = 0) -> list[ProbeResult]:
    """Probe each feature kind on cached features; lr chosen on held-out train, reported on val.
    The heads train where the backbone runs."""
    device = next(model.parameters()).device
    train_x, train_y = extract_features(model, train, cfg, num_workers=num_workers)
    num_classes = int(train_y.max()) + 1
    order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(cfg.seed))
    n_hold = max(1, int(len(order) * cfg.holdout_fraction))
    hold, fit = order[:n_hold], order[n_hold:]
    chosen = {}
    for name, x in train_x.items():
        scores = [(_accuracy(_fit(x[fit], train_y[fit], num_classes, lr, cfg, device), x[hold],
                             train_y[hold]), lr) for lr in cfg.lr_grid]
        chosen[name] = max(scores)  # (held-out accuracy, lr); ties -> larger lr
    val_x, val_y = extract_features(model, val, cfg, num_workers=num_workers)  # read after choosing
    results = []
    for name, (hold_acc, lr) in chosen.items():
        head = _fit(train_x[name], train_y, num_classes, lr, cfg, device)
        results.append(ProbeResult(name, 100.0 * _accuracy(head, val_x[name], val_y),
                                   100.0 * hold_acc, lr))
    return results


# -- the MAE protocol ---------------------------------------------------------------------------


def _mae_head(dim: int, num_classes: int) -> nn.Sequential:
    """MAE's probe head: BatchNorm1d without affine (batch statistics in training), then a
    Linear with trunc-normal (std 0.01) weights and zero bias."""
    linear = nn.Linear(dim, num_classes)
    nn.init.trunc_normal_(linear.weight, std=0.01)
    nn.init.zeros_(linear.bias)
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False, eps=1e-6), linear)


def mae_lr(cfg: LinProbeConfig, epoch: float) -> float:
    """MAE's per-iteration schedule at a fractional epoch: linear warm-up, then cosine to 0."""
    if epoch < cfg.warmup_epochs:
        return cfg.peak_lr * epoch / cfg.warmup_epochs
    progress = (epoch - cfg.warmup_epochs) / (cfg.epochs - cfg.warmup_epochs)
    return cfg.peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _global_batches(model: NepaViT, train: Dataset, cfg: LinProbeConfig, epoch: int, steps: int,
                    num_workers: int) -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
    """`steps` global batches of (features, labels) for one epoch: a seeded permutation of train
    (the remainder dropped, as MAE's loader), read in forwards of `batch_size` images."""
    from nepa.data import collate

    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    order = torch.randperm(len(train), generator=generator)[:steps * cfg.global_batch].tolist()
    loader = DataLoader(train, batch_size=cfg.batch_size, sampler=order, collate_fn=collate,
                        num_workers=num_workers, generator=generator, pin_memory=device.type == "cuda")
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in _feature_names(cfg)}
    labels: list[torch.Tensor] = []
    held = 0
    for batch in loader:
        with torch.no_grad():
            features = _batch_features(model, batch["image"].to(device, non_blocking=True), cfg)
        for name, feature in features.items():
            parts[name].append(feature.float())
        labels.append(batch["label"].to(device))
        held += len(batch["label"])
        while held >= cfg.global_batch:  # a step's worth: split it off, keep the rest
            cat = {n: torch.cat(p) for n, p in parts.items()}
            y = torch.cat(labels)
            yield {n: x[:cfg.global_batch] for n, x in cat.items()}, y[:cfg.global_batch]
            parts = {n: [x[cfg.global_batch:]] for n, x in cat.items()}
            labels, held = [y[cfg.global_batch:]], held - cfg.global_batch


def mae_probe(model: NepaViT, train: Dataset, val: Dataset, cfg: LinProbeConfig, *,
              num_classes: int, num_workers: int = 0,
              stop: Callable[[], bool] = lambda: False,
              report: Callable[[dict], None] = lambda record: None) -> list[ProbeResult] | None:
    """The MAE protocol: one head per feature kind, trained together on the same augmented
    batches (LARS, fixed lr schedule, no selection), reported on val after the last epoch.
    `train` carries the training augmentation, `val` the eval transform. None when `stop()`."""
    model.eval()  # frozen backbone: no RoPE rescale, no drop path
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    names = _feature_names(cfg)
    heads = nn.ModuleDict({n: _mae_head(model.cfg.dim, num_classes) for n in names}).to(device)
    optimizer = LARS(heads.parameters(), weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                     trust_coefficient=cfg.trust_coefficient)
    steps = len(train) // cfg.global_batch
    if steps < 1:
        raise ConfigError(f"linprobe.global_batch: {cfg.global_batch} exceeds the {len(train)} "
                          "training images; lower it")
    total = cfg.epochs * steps
    for epoch in range(cfg.epochs):
        batches = _global_batches(model, train, cfg, epoch, steps, num_workers)
        for i, (features, y) in enumerate(batches):
            if stop():
                return None
            for group in optimizer.param_groups:
                group["lr"] = mae_lr(cfg, epoch + i / steps)
            heads.train()
            loss = sum(nn.functional.cross_entropy(heads[n](features[n]), y) for n in names)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            report({"step": epoch * steps + i + 1, "total": total, "epoch": epoch + 1,
                    "loss": loss.item() / len(names)})
    heads.eval()
    val_x, val_y = extract_features(model, val, cfg, num_workers=num_workers)
    return [ProbeResult(n, 100.0 * _accuracy(heads[n], val_x[n].to(device), val_y.to(device)), None,
                        cfg.peak_lr) for n in names]


def linear_probe(model: NepaViT, train: Dataset, val: Dataset, cfg: LinProbeConfig, *,
                 num_workers: int = 0, stop: Callable[[], bool] = lambda: False,
                 report: Callable[[dict], None] = lambda record: None) -> list[ProbeResult] | None:
    """The probe of `cfg.protocol`: `train` transformed for it (mae: augmented; fast: as val).
    The MAE probe, long, reports each step and returns None when `stop()`."""
    if cfg.protocol == "mae":
        return mae_probe(model, train, val, cfg, num_classes=len(train.classes),
                         num_workers=num_workers, stop=stop, report=report)
    return fast_probe(model, train, val, cfg, num_workers=num_workers)


def probe_table(rows: Sequence[tuple[str, list[ProbeResult]]]) -> list[dict]:
    """Flat rows (model, feature, top1, holdout, C) for tables."""
    return [{"model": m, "feature": r.feature, "top1": r.top1, "holdout_top1": r.holdout_top1,
             "lr": r.lr} for m, results in rows for r in results]


def run_linprobe(weights: str, cfg: LinProbeConfig, data, work_dir, *, control: EvalControl,
                 ema: bool = True, seed: int | None = None) -> EvalOutcome:
    """The evaluation-contract entry point: one metric per feature kind, on val, named by the
    protocol (`cfg.name`).

    Not split into resumable steps (the fast probe is short; the MAE probe trains only heads):
    a stop request returns STOPPED, and a requeue starts the probe again.
    """
    from dataclasses import replace

    from nepa.data import build_dataset, eval_transform, probe_transform
    from nepa.pretrained import load_pretrained

    if control.should_stop():
        return EvalOutcome(status="STOPPED", step=0, total_steps=1)
    cfg = replace(cfg, seed=cfg.seed if seed is None else seed)
    model = load_pretrained(weights, ema=None if ema else False, device=probe_device())
    transform = eval_transform(data.image_size, crop_pct=cfg.crop_pct)
    train_transform = (probe_transform(data.image_size, cfg.train_crop_scale) if cfg.protocol == "mae"
                       else transform)
    train, val = build_dataset(data, "train", train_transform), build_dataset(data, "val", transform)
    control.report({"step": 0, "total": 1, "phase": "features"})
    results = linear_probe(model, train, val, cfg, num_workers=data.num_workers,
                           stop=control.should_stop, report=control.report)
    if results is None:
        return EvalOutcome(status="STOPPED", step=0, total_steps=1)
    control.report({"step": 1, "total": 1, "phase": "done"})
    metrics = tuple(Metric("probe_top1", r.top1, weights="frozen", split="val",
                           detail={"feature": r.feature, "lr": r.lr, "protocol": cfg.name,
                                   **({} if r.holdout_top1 is None else {"holdout_top1": r.holdout_top1})})
                    for r in results)
    return EvalOutcome(status="COMPLETED", step=1, total_steps=1, metrics=metrics)
