"""The NEPA objective: predict the embedding of patch t+1 from the outputs at positions <= t."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nepa_loss(inputs: torch.Tensor, outputs: torch.Tensor, *, shift: bool = True,
              stop_grad: bool = True) -> torch.Tensor:
    """Negative cosine similarity between predictions and next input embeddings.

    `inputs` is the sequence fed to the first block (CLS + patch embeddings, unmasked) and
    `outputs` the final-normalised transformer output, both (B, 1+T, D). Computed in float32.
    """
    targets = inputs.detach() if stop_grad else inputs
    if shift:
        predictions, targets = outputs[:, :-1], targets[:, 1:]  # (B, T, D) each
    else:
        predictions = outputs
    cosine = F.cosine_similarity(predictions.float(), targets.float(), dim=-1)  # (B, T)
    return -cosine.mean()


def embedding_spread(outputs: torch.Tensor) -> torch.Tensor:
    """Spread of L2-normalised outputs across the batch, scaled so random vectors give ~1.

    Collapse (every image mapped to the same embeddings) drives it to 0.
    """
    unit = F.normalize(outputs.float(), dim=-1)  # (B, N, D)
    return unit.std(dim=0).mean() * unit.shape[-1] ** 0.5
