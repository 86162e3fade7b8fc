"""Layer-wise learning-rate decay for fine-tuning, as the release does it.

Every trainable parameter gets a *scale* (its distance from the top of the network) and a
learning rate `peak x decay**scale`:

| parameters | scale | peak lr |
|---|---|---|
| classifier `head`, final LayerNorm `norm` | 0 | `head_lr` (not scaled by the batch) |
| `fc_norm` | 0 | the base lr |
| block i of N | N - 1 - i | the base lr |
| embeddings (`patch_embed`, `cls_token`, `mask_token`) | N | the base lr |

Weight decay is 0 for 1-D parameters (biases, norms, LayerScale), as in pretraining.

Two schedules, both pure functions of the step (a resume changes no value):
- `release` (default, used by both release fine-tune scripts): each group warms up over
  `W - round(W * min(factor, 1))` steps (at least 1), so the head and the top block reach
  their peak almost at once and the lowest layers over almost all of W; then cosine to 0.
- `dynamic` (the paper's best, 83.8 vs 83.0 top-1 for B): the decay itself moves from 0.35 to
  1.00 over the run, with one global warmup then cosine. `ramp="linear"` (default) is what the
  paper describes; `ramp="cosine"` is the shape of the release code's (unwired) version.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from nepa.evals.config import Ramp, Schedule
from nepa.train.optim import lr_at, no_weight_decay

HEAD_PREFIXES = ("head.", "norm.")  # classifier and final LayerNorm: their own head_lr
EMBED_PREFIXES = ("patch_embed.", "cls_token", "mask_token")


def layer_scale(name: str, depth: int) -> tuple[int, bool]:
    """(scale, uses head_lr) of a NepaViT parameter name."""
    if name.startswith(HEAD_PREFIXES):
        return 0, True
    if name.startswith("fc_norm."):
        return 0, False
    if name.startswith("blocks."):
        return depth - 1 - int(name.split(".")[1]), False
    if name.startswith(EMBED_PREFIXES):
        return depth, False
    raise ValueError(f"no layer-decay rule for parameter '{name}'")


def param_groups(model: nn.Module, *, lr: float, head_lr: float, weight_decay: float,
                 depth: int) -> list[dict]:
    """AdamW groups of the trainable parameters, one per (scale, lr kind, decay or not).

    Each group carries its `scale` and `peak` (before the decay factor) for the schedule.
    The order is deterministic (first appearance in the model), so optimizer state resumes.
    """
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale, head = layer_scale(name, depth)
        decayed = not no_weight_decay(name, param)
        key = (scale, head, decayed)
        if key not in groups:
            groups[key] = {"params": [], "param_names": [], "scale": scale,
                           "peak": head_lr if head else lr, "lr": 0.0,
                           "weight_decay": weight_decay if decayed else 0.0}
        groups[key]["params"].append(param)
        groups[key]["param_names"].append(name)  # torch's key: kept in the state dict
    return list(groups.values())


@dataclass(frozen=True, kw_only=True)
class LayerDecaySchedule:
    """The lr of every group at any step; holds no state, so it needs no checkpointing."""

    decay: float  # fixed decay of the release schedule
    total_steps: int
    warmup: int  # W: global warmup steps
    schedule: Schedule = "release"
    ramp: Ramp = "linear"  # dynamic only
    start: float = 0.35  # dynamic: decay at step 0
    end: float = 1.0  # dynamic: decay at the last step

    def group_warmup(self, scale: int) -> int:
        """Warmup steps of a group of this scale (release schedule)."""
        factor = min(self.decay**scale, 1.0)
        return max(1, self.warmup - round(self.warmup * factor))

    def decay_at(self, step: int) -> float:
        """The decay in effect at `step`: fixed (release) or ramped from start to end (dynamic)."""
        if self.schedule == "release":
            return self.decay
        progress = min(1.0, step / max(1, self.total_steps - 1))
        if self.ramp == "cosine":
            progress = 0.5 * (1.0 - math.cos(math.pi * progress))
        return self.start + (self.end - self.start) * progress

    def lr(self, step: int, *, peak: float, scale: int) -> float:
        factor = self.decay_at(step) ** scale
        if self.schedule == "release":
            warmup = self.group_warmup(scale)
        else:
            warmup = max(1, self.warmup)
        return factor * lr_at(step, peak=peak, total_steps=self.total_steps, warmup=warmup)

    def lrs(self, step: int, groups: list[dict]) -> list[float]:
        """One lr per group (dicts with `peak` and `scale`, e.g. the optimizer's param_groups)."""
        return [self.lr(step, peak=g["peak"], scale=g["scale"]) for g in groups]
