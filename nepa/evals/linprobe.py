"""Linear probe (MAE protocol): frozen backbone, BatchNorm without affine + a linear head,
a small lr sweep chosen on a held-out part of train (never on val), reported on val.

Features are extracted once per kind and cached in memory; the head trains on them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from nepa.evals.common import EvalControl, EvalOutcome, Metric
from nepa.evals.config import LinProbeConfig
from nepa.model import NepaViT


@dataclass(frozen=True)
class ProbeResult:
    feature: str  # "mean", "last" or "block{i}"
    top1: float  # on val, percent
    holdout_top1: float  # on the held-out part of train at the chosen C
    lr: float


def _feature_names(cfg: LinProbeConfig) -> list[str]:
    return list(cfg.features) + [f"block{i}" for i in cfg.blocks]


def probe_device() -> torch.device:
    """The job's device: its (current) GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


@torch.no_grad()
def extract_features(model: NepaViT, dataset: Dataset, cfg: LinProbeConfig, *, num_workers: int = 0
                     ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{feature name: (N, D)} float32 and labels (N,) on the CPU, from the frozen model in eval
    mode, on the model's device (bf16 autocast on GPUs with native bf16), read by
    `num_workers` loader processes."""
    from nepa.data import collate
    from nepa.train.engine import autocast

    model.eval()
    device = next(model.parameters()).device
    precision, _ = autocast("auto", device)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate,
                        num_workers=num_workers, pin_memory=device.type == "cuda",
                        persistent_workers=False)
    names = _feature_names(cfg)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    labels = []
    for batch in loader:
        images = batch["image"].to(device, non_blocking=True)
        blocks = list(cfg.blocks)
        with precision:
            outs = model.get_intermediate_layers(images, blocks + [len(model.blocks) - 1], norm=True)
        final = outs[-1].float()  # (B, 1+T, D), final-normalised
        if "mean" in names:  # reduced on the device: only (B, D) per feature comes back
            parts["mean"].append(final[:, 1:].mean(dim=1).cpu())
        if "last" in names:
            parts["last"].append(final[:, -1].cpu())
        for i, out in zip(blocks, outs[:-1]):
            parts[f"block{i}"].append(out[:, 1:].float().mean(dim=1).cpu())
        labels.append(batch["label"])
    return {n: torch.cat(p) for n, p in parts.items()}, torch.cat(labels)


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
    device = head.mean.device
    return (head(x.to(device)).argmax(dim=1) == y.to(device)).float().mean().item()


def linear_probe(model: NepaViT, train: Dataset, val: Dataset,
                 cfg: LinProbeConfig | None = None, *, num_workers: int = 0) -> list[ProbeResult]:
    """Probe each feature kind; lr chosen on held-out train, reported on val (default recipe
    when `cfg` is None)."""
    cfg = cfg or LinProbeConfig()
    device = next(model.parameters()).device  # the heads train where the backbone runs
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


def probe_table(rows: Sequence[tuple[str, list[ProbeResult]]]) -> list[dict]:
    """Flat rows (model, feature, top1, holdout, C) for tables."""
    return [{"model": m, "feature": r.feature, "top1": r.top1, "holdout_top1": r.holdout_top1,
             "lr": r.lr} for m, results in rows for r in results]


def run_linprobe(weights: str, cfg: LinProbeConfig, data, work_dir, *, control: EvalControl,
                 ema: bool = True, seed: int | None = None) -> EvalOutcome:
    """The evaluation-contract entry point: one metric per feature kind, on val.

    Features are cached in memory and the whole probe is short next to pretraining, so it
    is not split into resumable steps: a stop request before it starts returns STOPPED.
    """
    from dataclasses import replace

    from nepa.data import build_dataset, eval_transform
    from nepa.pretrained import load_pretrained

    if control.should_stop():
        return EvalOutcome(status="STOPPED", step=0, total_steps=1)
    cfg = replace(cfg, seed=cfg.seed if seed is None else seed)
    model = load_pretrained(weights, ema=None if ema else False, device=probe_device())
    transform = eval_transform(data.image_size, crop_pct=cfg.crop_pct)
    train, val = build_dataset(data, "train", transform), build_dataset(data, "val", transform)
    control.report({"step": 0, "total": 1, "phase": "features"})
    results = linear_probe(model, train, val, cfg, num_workers=data.num_workers)
    control.report({"step": 1, "total": 1, "phase": "done"})
    metrics = tuple(Metric("probe_top1", r.top1, weights="frozen", split="val",
                           detail={"feature": r.feature, "lr": r.lr, "holdout_top1": r.holdout_top1})
                    for r in results)
    return EvalOutcome(status="COMPLETED", step=1, total_steps=1, metrics=metrics)
