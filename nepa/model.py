"""The NEPA Vision Transformer, numerically equal to the released `vit_nepa` models.

Reads top to bottom: parts (2-D RoPE, attention, block), the model, the builder. Its config and
size table are data, in `nepa.model_config` (torch-free).
Deviations from the release are extensions only (any image size divisible by the patch size,
input masking with a mask token, a fused q/k/v projection that the converter splits/joins,
non-raster autoregressive patch orders).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from timm.layers import DropPath, LayerScale, Mlp, PatchEmbed, SwiGLU, trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from nepa.model_config import ModelConfig, model_config
from nepa.patch_order import patch_order

_ACTIVATIONS = {
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "relu": nn.ReLU,
}


# ---------------------------------------------------------------------------------------------
# Parts
# ---------------------------------------------------------------------------------------------


class Rope2d(nn.Module):
    """2-D rotary position embedding of patch centres in [-1, 1] (no absolute positions).

    Returns (cos, sin) of shape (prefix + Hp*Wp, head_dim); prefix rows are the identity
    rotation (cos 1, sin 0), so the CLS token is not rotated without slicing the sequence.
    """

    def __init__(self, head_dim: int, theta: float, rescale: float | None):
        super().__init__()
        exponent = torch.arange(head_dim // 4, dtype=torch.float32) * 4 / head_dim
        self.register_buffer("inv_freq", 1.0 / theta**exponent, persistent=False)
        self.rescale = rescale

    def forward(self, grid: tuple[int, int], num_prefix: int) -> tuple[torch.Tensor, torch.Tensor]:
        hp, wp = grid
        device = self.inv_freq.device
        ys = (torch.arange(hp, device=device, dtype=torch.float32) + 0.5) / hp * 2 - 1
        xs = (torch.arange(wp, device=device, dtype=torch.float32) + 0.5) / wp * 2 - 1
        coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)  # (T, 2)
        if self.training and self.rescale is not None and self.rescale > 1.0:
            log_r = math.log(self.rescale)
            coords = coords * torch.empty(1, device=device).uniform_(-log_r, log_r).exp()
        angles = 2 * math.pi * coords[:, :, None] * self.inv_freq[None, None, :]  # (T, 2, hd/4)
        angles = angles.flatten(1)  # (T, hd/2): y-frequencies then x-frequencies
        angles = torch.cat([angles, angles], dim=-1)  # (T, hd)
        prefix = angles.new_zeros(num_prefix, angles.shape[-1])
        angles = torch.cat([prefix, angles], dim=0)  # (P + T, hd)
        return angles.cos(), angles.sin()


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """(a, b) halves -> (a cos - b sin, b cos + a sin), written straight into the output.

    Four elementwise passes over half-tensors instead of the textbook
    `x * cos + cat(-b, a) * sin` (neg, cat, two muls and an add over full tensors).
    """
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    out = torch.empty_like(x)
    first, second = out[..., :half], out[..., half:]
    torch.mul(a, cos, out=first)
    first.addcmul_(b, sin, value=-1)
    torch.mul(b, cos, out=second)
    second.addcmul_(a, sin)
    return out


class _Rope(torch.autograd.Function):
    """RoPE with a hand-written backward: the inverse rotation of the gradient. It keeps only
    the (N, hd/2) tables for backward, not the activations the textbook form saves."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        cos, sin = ctx.saved_tensors
        return _rotate(grad.contiguous(), cos, -sin), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, N, hd) by (N, hd) tables, rotate-half convention.

    The tables repeat across the two halves of hd (as `Rope2d` builds them): only the first
    half is read. Equal to `x * cos + cat(-b, a) * sin` (tests/test_model.py).
    """
    if torch.compiler.is_compiling():  # inductor fuses the textbook form into one kernel
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        a, b = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-b, a], dim=-1) * sin
    half = x.shape[-1] // 2
    cos, sin = cos[..., :half].to(x.dtype), sin[..., :half].to(x.dtype)
    return _Rope.apply(x, cos, sin)


class _PlainLayerNorm(nn.Module):
    """LayerNorm without learned parameters (B's QK-norm), through the affine kernel.

    On the CPU, torch's no-weight LayerNorm of a strided (B, H, N, hd) view (q and k out of
    the fused qkv) is about 1.6x slower than the same call with a weight of ones; the ones
    are a non-persistent buffer, so the state dict holds no parameter, as the release's.
    """

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.register_buffer("ones", torch.ones(dim), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.ones.shape, self.ones, None, self.eps)


class Attention(nn.Module):
    """Multi-head attention with QK-Norm before RoPE, through fused SDPA kernels."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads, self.head_dim, self.causal = cfg.num_heads, cfg.head_dim, cfg.causal
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=cfg.qkv_bias)  # fused query|key|value
        norm = (
            (lambda: nn.LayerNorm(cfg.head_dim, eps=cfg.norm_eps, bias=cfg.qk_norm_bias))
            if cfg.qk_norm and cfg.qk_norm_affine
            else (lambda: _PlainLayerNorm(cfg.head_dim, eps=cfg.norm_eps)) if cfg.qk_norm else nn.Identity
        )
        self.q_norm, self.k_norm = norm(), norm()
        self.attn_drop = cfg.attn_drop
        self.proj = nn.Linear(cfg.dim, cfg.dim)
        self.proj_drop = nn.Dropout(cfg.proj_drop)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, H, N, hd) each
        # LayerNorm runs in float32 under autocast: cast back so SDPA sees one dtype.
        q, k = self.q_norm(q).to(v.dtype), self.k_norm(k).to(v.dtype)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        x = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.attn_drop if self.training else 0.0
        )  # (B, H, N, hd)
        x = x.transpose(1, 2).reshape(b, n, d)  # (B, N, D)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-norm transformer block with LayerScale and drop path on both branches."""

    def __init__(self, cfg: ModelConfig, drop_path: float):
        super().__init__()
        act = _ACTIVATIONS[cfg.act]
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ls1 = LayerScale(cfg.dim, init_values=cfg.layerscale_init)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        if cfg.gated_mlp:
            self.mlp = SwiGLU(cfg.dim, cfg.mlp_dim, act_layer=act, drop=cfg.proj_drop)
        else:
            self.mlp = Mlp(cfg.dim, cfg.mlp_dim, act_layer=act, drop=cfg.proj_drop)
        self.ls2 = LayerScale(cfg.dim, init_values=cfg.layerscale_init)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x), rope)))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------


class NepaViT(nn.Module):
    """NEPA backbone; with `num_classes > 0` also the classifier (call returns logits).

    Sequence layout everywhere: (B, 1 + T, D), CLS first, then the patches in the model's
    order (`cfg.patch_order`; raster by default). Outputs stay in that order; `to_raster`
    maps a sequence back to row-major patches.
    """

    num_prefix_tokens = 1

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg.image_size, cfg.patch_size, cfg.in_chans, cfg.dim,
                                      strict_img_size=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.dim)) if cfg.mask_ratio > 0 else None
        self.rope = Rope2d(cfg.head_dim, cfg.rope_theta, cfg.rope_rescale)
        rates = [cfg.drop_path * i / max(cfg.depth - 1, 1) for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(Block(cfg, rate) for rate in rates)
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.grad_checkpointing = False
        self._orders: dict[tuple[int, int, str], torch.Tensor] = {}  # cache, not state
        self._build_head()
        self.apply(self._init_weights)
        trunc_normal_(self.cls_token, std=cfg.init_std)

    def _build_head(self) -> None:
        cfg = self.cfg
        pooled = cfg.num_classes > 0 and cfg.pool == "mean"
        self.fc_norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps) if pooled else None
        self.head = nn.Linear(cfg.dim, cfg.num_classes) if cfg.num_classes > 0 else None

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            trunc_normal_(module.weight, std=self.cfg.init_std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    def reset_classifier(self, num_classes: int, pool: str | None = None,
                         labels: Sequence[str] = ()) -> None:
        """Attach a zero-initialised head (as the release does when fine-tuning starts)."""
        self.cfg = dataclasses.replace(self.cfg, num_classes=num_classes,
                                       pool=pool or self.cfg.pool, labels=tuple(labels))
        self._build_head()
        if self.head is not None:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        device = self.cls_token.device
        self.to(device)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute block activations in backward: less memory for large sizes."""
        self.grad_checkpointing = enable

    # -- forward pieces ---------------------------------------------------------------------

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Input sequence [cls, z_1..z_T] (B, 1+T, D) and the patch grid (Hp, Wp)."""
        h, w = images.shape[-2:]
        p = self.cfg.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} is not a multiple of the patch size {p}")
        patches = self.patch_embed(images)  # (B, T, D), raster
        grid = (h // p, w // p)
        if self.cfg.patch_order != "raster":
            patches = patches[:, self.token_order(grid, patches.device)]  # (B, T, D), model order
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1), grid

    def token_order(self, grid: tuple[int, int], device: torch.device | None = None) -> torch.Tensor:
        """(T,) raster index of the patch at each sequence position (cached per grid)."""
        key = (*grid, str(device))
        if key not in self._orders:
            order = patch_order(self.cfg.patch_order, *grid, seed=self.cfg.patch_order_seed)
            self._orders[key] = torch.tensor(order, dtype=torch.long, device=device)
        return self._orders[key]

    def to_raster(self, sequence: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """A (B, P+T, ...) sequence in the model's order -> the same with raster patches."""
        if self.cfg.patch_order == "raster":
            return sequence
        p = self.num_prefix_tokens
        raster = torch.empty_like(sequence)
        raster[:, :p] = sequence[:, :p]
        raster[:, p + self.token_order(grid, sequence.device)] = sequence[:, p:]
        return raster

    def random_mask(self, tokens: torch.Tensor) -> torch.Tensor:
        """Replace a `mask_ratio` fraction of patch inputs per sample by the mask token."""
        b, n, _ = tokens.shape
        num_patches = n - self.num_prefix_tokens
        num_masked = int(round(self.cfg.mask_ratio * num_patches))
        if self.mask_token is None or num_masked == 0:
            return tokens
        order = torch.rand(b, num_patches, device=tokens.device).argsort(dim=1)
        masked = torch.zeros(b, num_patches, dtype=torch.bool, device=tokens.device)
        masked.scatter_(1, order[:, :num_masked], True)
        masked = F.pad(masked, (self.num_prefix_tokens, 0), value=False)[..., None]  # (B, N, 1)
        return torch.where(masked, self.mask_token.to(tokens.dtype), tokens)

    def run_blocks(self, tokens: torch.Tensor, grid: tuple[int, int],
                   collect: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """All blocks; returns the last hidden state (not normalised) and those in `collect`."""
        rope = self.rope(grid, self.num_prefix_tokens)  # (P + T, hd) each, raster
        if self.cfg.patch_order != "raster":  # each token keeps the rotation of its grid position
            p = self.num_prefix_tokens
            order = self.token_order(grid, rope[0].device)
            rope = tuple(torch.cat([t[:p], t[p:][order]]) for t in rope)
        collected = []
        x = tokens
        for i, block in enumerate(self.blocks):
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, rope, use_reentrant=False)
            else:
                x = block(x, rope)
            if i in collect:
                collected.append(x)
        return x, collected

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """Final-normalised sequence (B, 1+T, D), CLS first, patches in the model's order."""
        tokens, grid = self.embed(images)
        x, _ = self.run_blocks(tokens, grid)
        return self.norm(x)

    def forward_pretrain(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, outputs): the clean input sequence (the targets) and the normalised outputs.

        Masking, when configured, applies to the transformer's input only (training mode).
        """
        inputs, grid = self.embed(images)
        fed = self.random_mask(inputs) if self.training else inputs
        x, _ = self.run_blocks(fed, grid)
        return inputs, self.norm(x)

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the final-normalised sequence: mean of patches -> fc_norm, or last token."""
        if self.head is None:
            raise RuntimeError("this model has no classifier head: build it with num_classes > 0")
        if self.cfg.pool == "mean":
            pooled = self.fc_norm(features[:, self.num_prefix_tokens:].mean(dim=1))  # (B, D)
        else:
            pooled = features[:, -1]  # (B, D)
        return self.head(pooled)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(images)
        return self.forward_head(features) if self.head is not None else features

    def get_intermediate_layers(self, images: torch.Tensor, indices: int | Sequence[int] = 1, *,
                                norm: bool = True, reshape: bool = False) -> tuple[torch.Tensor, ...]:
        """Outputs of the given blocks (an int n: the last n), for probing and segmentation.

        Each is (B, 1+T, D) in the model's token order, final-normalised when `norm`; with
        `reshape` the patch tokens become a (B, D, Hp, Wp) map (spatial, so raster-ordered).
        """
        depth = len(self.blocks)
        wanted = list(range(depth - indices, depth)) if isinstance(indices, int) else list(indices)
        for i in wanted:
            if not -depth <= i < depth:
                raise ValueError(f"block index {i} out of range for depth {depth}")
        wanted = [i % depth for i in wanted]
        tokens, grid = self.embed(images)
        _, collected = self.run_blocks(tokens, grid, collect=sorted(set(wanted)))
        by_index = dict(zip(sorted(set(wanted)), collected))
        outputs = []
        for i in wanted:
            x = self.norm(by_index[i]) if norm else by_index[i]
            if reshape:
                patches = self.to_raster(x, grid)[:, self.num_prefix_tokens:]  # (B, T, D)
                x = patches.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, D, Hp, Wp)
            outputs.append(x)
        return tuple(outputs)


# ---------------------------------------------------------------------------------------------
# Sizes (the table itself: nepa.model_config.SIZES)
# ---------------------------------------------------------------------------------------------


def build_model(size: str | ModelConfig, **overrides) -> NepaViT:
    """A freshly initialised NEPA model of a registered size (or from a full config)."""
    if isinstance(size, ModelConfig):
        cfg = dataclasses.replace(size, **overrides) if overrides else size
    else:
        cfg = model_config(size, **overrides)
    return NepaViT(cfg)
