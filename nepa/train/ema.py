"""EMA of the weights in float32: the release's constant decay, or a warm-up of the decay."""

from __future__ import annotations

import torch
from torch import nn

from nepa.train.config import EMAConfig


class EMA:
    """Shadow copy of a model's floating-point state; `state_dict()` has the model's keys."""

    def __init__(self, model: nn.Module, cfg: EMAConfig):
        self.cfg = cfg
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}

    def decay_at(self, step: int) -> float:
        if self.cfg.warmup_steps == 0:
            return self.cfg.decay  # constant from the first step (the release)
        return min(self.cfg.decay, (1 + step) / (self.cfg.warmup_steps + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend in the model's current weights after optimizer step `step`."""
        weight = 1.0 - self.decay_at(step)
        state = model.state_dict()
        keys = list(self.shadow)
        torch._foreach_lerp_([self.shadow[k] for k in keys], [state[k].float() for k in keys], weight)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Copy a saved EMA into the shadows, which stay on the model's device (checkpoints load
        on the CPU; a CPU shadow would fail the first update of a CUDA model)."""
        missing = set(self.shadow) ^ set(state)
        if missing:
            raise KeyError(f"EMA state keys differ from the model's: {sorted(missing)[:5]}")
        for key, value in state.items():
            self.shadow[key].copy_(value)
