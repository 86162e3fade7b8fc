"""`ObjectiveConfig`: the objective's switches as data, torch-free (the loss: nepa.objective)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class ObjectiveConfig:
    """Switches for the paper's ablations; defaults are the method as released."""

    shift: bool = True  # o_t predicts z_{t+1}; False: position-wise match (the identity ablation)
    stop_grad: bool = True  # targets detached; False: the collapse ablation
