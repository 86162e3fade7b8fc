"""NEPA inside mmseg: the `NepaBackbone` model and a layer-decay optimizer constructor.

Importing this module registers both in mmseg's registries (the rendered config lists it in
`custom_imports`). It imports mmseg at the top, so only the segmentation evaluation imports it.

The backbone wraps a `NepaViT` built bidirectional (attention `is_causal=False`), loads nepa
weights with `nepa.pretrained.read_weights` in `init_weights()` (where mmengine's Runner
initialises models; nothing is downloaded), and returns 4 tapped blocks as NCHW maps at
stride = patch size. mmseg's `Feature2Pyramid` neck turns them into the 4-level pyramid
(deconv x4, deconv x2, identity, max-pool). RoPE coordinates are normalised, so any grid
(37 x 37 for 518 crops) runs without interpolating positions. Patch 14: the data
preprocessor pads 512 crops to 518 and test images to a multiple of 14 (see `config`); the
backbone itself never resizes and refuses other sizes (`NepaViT.embed` raises).

mmseg's own `LearningRateDecayOptimizerConstructor` picks its rule from the backbone's class
name (only ConvNeXt/BEiT/MAE) and decays `backbone.pos_embed`; hence our constructor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from mmengine.model import BaseModule
from mmengine.optim import DefaultOptimWrapperConstructor
from mmseg.evaluation import IoUMetric
from mmseg.registry import METRICS, MODELS, OPTIM_WRAPPER_CONSTRUCTORS
from torch import nn

from nepa.config import from_dict
from nepa.model import NepaViT
from nepa.model_config import ModelConfig

EMBEDDING_PARAMS = ("patch_embed.", "cls_token", "mask_token")  # layer 0 of the lr decay
NO_DECAY_TOKENS = ("cls_token", "mask_token")  # besides every 1-D tensor (norms, biases, LayerScale)


@MODELS.register_module()
class NepaBackbone(BaseModule):
    """Bidirectional NepaViT returning the outputs of `out_indices` as (B, D, H/p, W/p) maps."""

    def __init__(self, model: dict[str, Any], weights: str | None = None, ema: bool | None = None,
                 out_indices: Sequence[int] = (3, 5, 7, 11), feature_norm: bool = False,
                 init_cfg: dict | None = None):
        super().__init__(init_cfg=init_cfg)
        cfg = from_dict(ModelConfig, {**model, "causal": False}, path="model.backbone.model")
        self.vit = NepaViT(cfg)
        self.weights, self.ema = weights, ema
        self.out_indices = tuple(out_indices)
        self.feature_norm = feature_norm
        # Untapped, the final norm gets no gradient: frozen, so DDP finds no unused parameter.
        self.vit.norm.requires_grad_(feature_norm)

    def init_weights(self) -> None:
        """Load the nepa weights (strict; a classifier head or mask token is dropped)."""
        if self.weights is None:
            return
        from nepa.pretrained import read_weights

        _, state = read_weights(self.weights, ema=self.ema)
        own = self.vit.state_dict()
        unused = ("head.", "fc_norm.", "mask_token")  # a classifier's head, a masked pretraining
        state = {k: v for k, v in state.items() if k in own or not k.startswith(unused)}
        self.vit.load_state_dict(state, strict=True)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.vit.get_intermediate_layers(images, self.out_indices, norm=self.feature_norm,
                                                reshape=True)  # 4 x (B, D, Hp, Wp)


def layer_id(name: str, num_layers: int) -> int:
    """Lr-decay layer of a parameter: 0 embeddings, i + 1 block i, num_layers + 1 the rest."""
    name = name.removeprefix("module.")  # DDP
    if not name.startswith("backbone.vit."):
        return num_layers + 1  # neck, heads
    inner = name.removeprefix("backbone.vit.")
    if inner.startswith(EMBEDDING_PARAMS):
        return 0
    if inner.startswith("blocks."):
        return int(inner.split(".")[1]) + 1
    return num_layers + 1  # final norm


def decays(name: str, param: nn.Parameter) -> bool:
    """Weight decay on matrices and kernels only: not norms, biases, LayerScale, tokens."""
    return param.ndim > 1 and not name.endswith(NO_DECAY_TOKENS)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class NepaLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Param groups per (layer, decay): lr x rate^(num_layers + 1 - layer).

    paramwise_cfg: num_layers (backbone depth), layer_decay_rate. The schedulers scale every
    group's lr in proportion, so the decay holds through warm-up and poly decay.
    """

    def add_params(self, params: list[dict], module: nn.Module, **kwargs) -> None:
        num_layers = self.paramwise_cfg["num_layers"]
        rate = self.paramwise_cfg["layer_decay_rate"]
        groups: dict[str, dict] = {}
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            layer, decay = layer_id(name, num_layers), decays(name, param)
            key = f"layer_{layer}_{'decay' if decay else 'no_decay'}"
            scale = rate ** (num_layers + 1 - layer)
            group = groups.setdefault(key, dict(
                params=[], param_names=[], group_name=key, lr_scale=scale, lr=scale * self.base_lr,
                weight_decay=self.base_wd if decay else 0.0))
            group["params"].append(param)
            group["param_names"].append(name)
        params.extend(groups[k] for k in sorted(groups))


@METRICS.register_module()
class NepaIoUMetric(IoUMetric):
    """mmseg's IoUMetric that also keeps the last per-class IoU (percent) for the report.

    Only classes present in the labels or predictions are kept (ADE has 150).
    """

    per_class_iou: dict[str, float] = {}

    def compute_metrics(self, results: list) -> dict[str, float]:
        metrics = super().compute_metrics(results)
        intersect, union = (sum(part) for part in tuple(zip(*results))[:2])
        names = self.dataset_meta["classes"]
        self.per_class_iou = {names[i]: round(100.0 * float(intersect[i]) / float(union[i]), 2)
                              for i in range(len(names)) if union[i] > 0}
        return metrics
