"""Analytic training FLOPs per image of a NEPA ViT (shared by bench_train.py and scaling.py).

Counted, as is usual for MFU, over the matrix multiplications only:
  * every linear layer of the blocks (qkv, proj, fc1, fc2; both branches of a gated MLP):
    2 x params x tokens forward, twice that backward (input and weight gradients): 6 x params
    x tokens for a training step;
  * the patch embedding (a matmul over the T patch tokens): forward + weight gradient only,
    4 x params x T, since the images need no gradient;
  * attention scores and the weighted sum: 4 x N^2 x D per layer forward, 12 x N^2 x D per
    training step, counted in full (the usual convention) although causal attention needs only
    about half of it.
Norms, RoPE, GELU, the loss and the optimizer are elementwise and left out. The same count is
used for NEPA and for the timm reference, so the two are compared by achieved FLOP/s.
"""

from __future__ import annotations

from nepa.model_config import ModelConfig


def tokens(cfg: ModelConfig) -> int:
    """Sequence length N: CLS + patches."""
    return 1 + (cfg.image_size // cfg.patch_size) ** 2


def block_matmul_params(cfg: ModelConfig) -> int:
    d, m = cfg.dim, cfg.mlp_dim
    mlp = (3 if cfg.gated_mlp else 2) * d * m
    return cfg.depth * (3 * d * d + d * d + mlp)


def train_flops_per_image(cfg: ModelConfig) -> float:
    """Forward + backward FLOPs of one image (see the module docstring)."""
    n, t = tokens(cfg), tokens(cfg) - 1
    patch_params = cfg.patch_size**2 * cfg.in_chans * cfg.dim
    linear = 6 * block_matmul_params(cfg) * n + 4 * patch_params * t
    attention = 12 * cfg.depth * n * n * cfg.dim
    return float(linear + attention)
