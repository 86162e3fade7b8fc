"""Linear probe: frozen backbone, standardised features (BatchNorm without affine, as in MAE's
protocol), a multinomial linear classifier; hyper-parameters chosen on a held-out part of
train, never on val.

At demo scale the classifier is scikit-learn's LogisticRegression on cached features (exact,
fast on CPU); features are extracted once per kind.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from nepa.config import check
from nepa.model import NepaViT


@dataclass(frozen=True, kw_only=True)
class LinProbeConfig:
    features: tuple[str, ...] = ("mean", "last")  # mean of patch tokens, last token
    blocks: tuple[int, ...] = ()  # also probe these blocks' outputs (mean of patch tokens)
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)  # inverse L2 strength, chosen on held-out
    holdout_fraction: float = 0.2  # of train, for choosing C
    batch_size: int = 256
    seed: int = 0

    def __post_init__(self) -> None:
        check(0 < self.holdout_fraction < 1, "linprobe.holdout_fraction", "must be in (0, 1)")
        check(all(f in ("mean", "last") for f in self.features), "linprobe.features",
              "each must be 'mean' or 'last'")


@dataclass(frozen=True)
class ProbeResult:
    feature: str  # "mean", "last" or "block{i}"
    top1: float  # on val, percent
    holdout_top1: float  # on the held-out part of train at the chosen C
    c: float


def _feature_names(cfg: LinProbeConfig) -> list[str]:
    return list(cfg.features) + [f"block{i}" for i in cfg.blocks]


@torch.no_grad()
def extract_features(model: NepaViT, dataset: Dataset, cfg: LinProbeConfig
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """{feature name: (N, D)} and labels (N,), from the frozen model in eval mode."""
    from nepa.data import collate

    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=False, collate_fn=collate)
    names = _feature_names(cfg)
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    labels = []
    for batch in loader:
        images = batch["image"]
        blocks = list(cfg.blocks)
        outs = model.get_intermediate_layers(images, blocks + [len(model.blocks) - 1], norm=True)
        final = outs[-1]  # (B, 1+T, D), final-normalised
        if "mean" in names:
            parts["mean"].append(final[:, 1:].mean(dim=1))
        if "last" in names:
            parts["last"].append(final[:, -1])
        for i, out in zip(blocks, outs[:-1]):
            parts[f"block{i}"].append(out[:, 1:].mean(dim=1))
        labels.append(batch["label"])
    return ({n: torch.cat(p).float().numpy() for n, p in parts.items()},
            torch.cat(labels).numpy())


def _fit(x: np.ndarray, y: np.ndarray, c: float, seed: int):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000, random_state=seed))
    return probe.fit(x, y)


def linear_probe(model: NepaViT, train: Dataset, val: Dataset,
                 cfg: LinProbeConfig = LinProbeConfig()) -> list[ProbeResult]:
    """Probe each feature kind; C chosen on held-out train, reported on val."""
    train_x, train_y = extract_features(model, train, cfg)
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train_y))
    n_hold = max(1, int(len(order) * cfg.holdout_fraction))
    hold, fit = order[:n_hold], order[n_hold:]
    chosen = {}
    for name, x in train_x.items():
        scores = [(_fit(x[fit], train_y[fit], c, cfg.seed).score(x[hold], train_y[hold]), c)
                  for c in cfg.c_grid]
        chosen[name] = max(scores)  # (held-out accuracy, C); ties -> larger C
    val_x, val_y = extract_features(model, val, cfg)  # val is read only after C is chosen
    results = []
    for name, (hold_acc, c) in chosen.items():
        probe = _fit(train_x[name], train_y, c, cfg.seed)
        results.append(ProbeResult(name, 100.0 * probe.score(val_x[name], val_y),
                                   100.0 * hold_acc, c))
    return results


def probe_table(rows: Sequence[tuple[str, list[ProbeResult]]]) -> list[dict]:
    """Flat rows (model, feature, top1, holdout, C) for tables."""
    return [{"model": m, "feature": r.feature, "top1": r.top1, "holdout_top1": r.holdout_top1,
             "C": r.c} for m, results in rows for r in results]
