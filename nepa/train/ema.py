"""EMA of the weights in float32: the release's constant decay, or a warm-up of the decay."""

from __future__ import annotations

import weakref

import torch
from torch import nn

from nepa.train.config import EMAConfig


class EMA:
    """Shadow copy of a model's floating-point state; `state_dict()` has the model's keys."""

    def __init__(self, model: nn.Module, cfg: EMAConfig):
        self.cfg = cfg
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()
                       if v.dtype.is_floating_point}
        self._sources: tuple[weakref.ref, list[torch.Tensor]] | None = None  # (model, its tensors)

    def decay_at(self, step: int) -> float:
        if self.cfg.warmup_steps == 0:
            return self.cfg.decay  # constant from the first step (the release)
        return min(self.cfg.decay, (1 + step) / (self.cfg.warmup_steps + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """Blend in the model's current weights after optimizer step `step`."""
        weight = 1.0 - self.decay_at(step)
        torch._foreach_lerp_(list(self.shadow.values()), self._model_tensors(model), weight)

    def _model_tensors(self, model: nn.Module) -> list[torch.Tensor]:
        """The model's tensors in shadow order, collected once: `state_dict()` walks every module
        and builds a new dict, on every step. The tensors share storage with the parameters,
        which the optimizer and `load_state_dict` update in place (moving the model to another
        device after its first update is not supported)."""
        if self._sources is None or self._sources[0]() is not model:
            state = model.state_dict()
            self._sources = (weakref.ref(model), [state[k] for k in self.shadow])
        return [t if t.dtype == torch.float32 else t.float() for t in self._sources[1]]

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
