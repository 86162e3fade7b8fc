"""`ModelConfig` and the size table: the architecture as data, torch-free.

The CLI renders, validates and prints model configs without importing torch; `nepa.model`
builds the network from them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nepa.config import ConfigError, check, from_dict, suggest
from nepa.patch_order import PatchOrder

Activation = Literal["gelu", "gelu_tanh", "silu", "relu"]


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Architecture of one NEPA ViT. Defaults are the released Base pretraining model."""

    image_size: int = 224  # training/eval resolution; any multiple of patch_size also runs
    patch_size: int = 14
    in_chans: int = 3
    dim: int = 768  # hidden size
    depth: int = 12
    num_heads: int = 12
    mlp_dim: int = 3072  # hidden width of the MLP (of each branch when gated)
    act: Activation = "gelu"  # exact GELU as released; "silu" + gated_mlp is the paper's SwiGLU
    gated_mlp: bool = False  # act(gate(x)) * up(x)
    qkv_bias: bool = True
    qk_norm: bool = True  # LayerNorm over head_dim on q and k, before RoPE
    qk_norm_affine: bool = False  # B pretrain: no weight; L pretrain and fine-tuned: weight
    qk_norm_bias: bool = False
    layerscale_init: float = 1e-5  # initial value of LayerScale on both residual branches
    rope_theta: float = 100.0
    rope_rescale: float | None = 2.0  # train-time log-uniform coordinate scale in [1/r, r]; None: off
    causal: bool = True  # causal attention (pretraining); False: bidirectional
    drop_path: float = 0.0  # stochastic depth at the last block, linear from 0 over depth
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    norm_eps: float = 1e-12
    mask_ratio: float = 0.0  # fraction of patch inputs replaced by a learned mask token (training)
    init_std: float = 0.02
    num_classes: int = 0  # 0: pretraining model (no head)
    pool: Literal["mean", "last"] = "mean"  # mean of patch tokens -> fc_norm, or last token
    labels: tuple[str, ...] = ()  # class names of a classifier, index order
    # Autoregressive order of the patch tokens (nepa.patch_order): "raster" (the release),
    # "hilbert", "spiral" or "random". Positions (RoPE) stay those of the 2-D grid.
    patch_order: PatchOrder = "raster"
    patch_order_seed: int = 0  # the fixed permutation of patch_order "random"

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "in_chans", "dim", "depth", "num_heads", "mlp_dim"):
            check(getattr(self, name) > 0, f"model.{name}", "must be a positive integer")
        check(self.dim % self.num_heads == 0, "model.num_heads",
              f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        check(self.head_dim % 4 == 0, "model.num_heads",
              f"2-D RoPE needs head_dim divisible by 4, got {self.head_dim}")
        check(self.image_size % self.patch_size == 0, "model.image_size",
              f"{self.image_size} is not a multiple of patch_size {self.patch_size}")
        check(self.rope_rescale is None or self.rope_rescale >= 1.0, "model.rope_rescale",
              "must be >= 1 (factor range [1/r, r]) or null to turn it off")
        for name in ("drop_path", "attn_drop", "proj_drop", "mask_ratio"):
            check(0.0 <= getattr(self, name) < 1.0, f"model.{name}", "must be in [0, 1)")
        patches = (self.image_size // self.patch_size) ** 2
        # A ratio that masks no patch leaves mask_token without a gradient: DDP then fails.
        check(self.mask_ratio == 0 or round(self.mask_ratio * patches) >= 1, "model.mask_ratio",
              f"{self.mask_ratio} masks no patch of {patches}; use 0 (no masking) or at least "
              f"{1 / patches:.4g}")
        check(self.num_classes >= 0, "model.num_classes", "must be >= 0")
        check(not self.labels or len(self.labels) == self.num_classes, "model.labels",
              f"has {len(self.labels)} names for {self.num_classes} classes")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


SIZES: dict[str, dict] = {
    # 32x32 images with 4x4 patches (64 tokens): tests and the CPU demo.
    "tiny": dict(image_size=32, patch_size=4, dim=128, depth=6, num_heads=4, mlp_dim=512),
    "S": dict(dim=384, depth=12, num_heads=6, mlp_dim=1536),
    "B": dict(dim=768, depth=12, num_heads=12, mlp_dim=3072),  # nepa-base-patch14-224
    "L": dict(dim=1024, depth=24, num_heads=16, mlp_dim=4096, qk_norm_affine=True),  # large
    "H": dict(dim=1280, depth=32, num_heads=16, mlp_dim=5120, qk_norm_affine=True),
}
_ALIASES = {
    "t": "tiny", "tiny": "tiny", "s": "S", "small": "S", "b": "B", "base": "B",
    "l": "L", "large": "L", "h": "H", "huge": "H",
}


def resolve_size(name: str) -> str:
    """Canonical size name; unknown names get the list of sizes and aliases."""
    key = name.strip().lower().removeprefix("vit-").removeprefix("vit_")
    if key in _ALIASES:
        return _ALIASES[key]
    raise ConfigError(
        f"unknown model size '{name}'{suggest(key, _ALIASES)}; sizes: {', '.join(SIZES)} "
        f"(aliases: {', '.join(sorted(_ALIASES))})"
    )


def model_config(size: str, **overrides) -> ModelConfig:
    """The size preset with `overrides` applied, validated strictly."""
    return from_dict(ModelConfig, {**SIZES[resolve_size(size)], **overrides}, path="model")
