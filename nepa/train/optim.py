"""Parameter groups, AdamW and the learning-rate schedule (a pure function of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn

from nepa.train.config import OptimConfig


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """The release's exclusions: biases, norm weights (incl. QK-norm) and LayerScale.

    All of them, and nothing else, are 1-D; the (1, 1, D) CLS token is decayed, as released.
    """
    return param.ndim <= 1


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, *, peak: float, total_steps: int, warmup: int, floor: float = 0.0) -> float:
    """Linear warmup to `peak` over `warmup` steps, then cosine to `floor` at `total_steps`."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=0.0, betas=cfg.betas,
                             eps=cfg.eps)
