"""Strict conversion between released `vit_nepa` directories (HF format) and nepa models.

A release directory holds `config.json` and `model.safetensors` (or the release's EMA file
`pytorch_model_ema.bin`). Every config key of the release is known here and every weight key
is mapped; anything unknown or missing is one error that lists the keys.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from nepa.config import ConfigError
from nepa.errors import NepaError
from nepa.model_config import ModelConfig

PREFIX = "vit_nepa."
EMA_FILE = "pytorch_model_ema.bin"
WEIGHTS_FILE = "model.safetensors"
PRETRAIN_ARCH, CLASSIFIER_ARCH = "ViTNepaForPreTraining", "ViTNepaForImageClassification"

# config.json key -> ModelConfig field (or None: checked/derived elsewhere).
_CONFIG_FIELDS = {
    "hidden_size": "dim", "num_hidden_layers": "depth", "num_attention_heads": "num_heads",
    "intermediate_size": "mlp_dim", "patch_size": "patch_size", "image_size": "image_size",
    "num_channels": "in_chans", "qkv_bias": "qkv_bias", "qk_norm": "qk_norm",
    "qk_norm_affine": "qk_norm_affine", "qk_norm_bias": "qk_norm_bias",
    "layerscale_value": "layerscale_init", "rope_theta": "rope_theta",
    "pos_embed_rescale": "rope_rescale", "use_gated_mlp": "gated_mlp", "is_causal": "causal",
    "drop_path_prob": "drop_path", "layer_norm_eps": "norm_eps",
    "hidden_dropout_prob": "proj_drop", "attention_probs_dropout_prob": "attn_drop",
    "initializer_range": "init_std",
}
_OTHER_KEYS = {
    "hidden_act", "add_pooling_layer", "pos_embed_shift", "pos_embed_jitter", "num_prompt_token",
    "model_type", "architectures", "dtype", "torch_dtype", "transformers_version", "id2label",
    "label2id", "finetuning_task",
}
RELEASE_CONFIG_KEYS = frozenset(_CONFIG_FIELDS) | frozenset(_OTHER_KEYS)
_ACT_FROM_HF = {"gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
                "silu": "silu", "swish": "silu", "relu": "relu"}
_ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "silu": "silu", "relu": "relu"}


class ConversionError(NepaError, ValueError):
    """A release directory or checkpoint cannot be converted; the message lists the keys."""


def _placeholder_labels(n: int) -> tuple[str, ...]:
    return tuple(f"LABEL_{i}" for i in range(n))


# -- config -----------------------------------------------------------------------------------


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """ModelConfig of a release config.json (strict: unknown keys and unsupported values fail)."""
    unknown = sorted(set(hf) - RELEASE_CONFIG_KEYS)
    if unknown:
        raise ConversionError(f"{source}: unknown config keys: {', '.join(unknown)}")
    if hf.get("model_type", "vit_nepa") != "vit_nepa":
        raise ConversionError(f"{source}: model_type is {hf['model_type']!r}, expected 'vit_nepa'")
    for key in ("pos_embed_shift", "pos_embed_jitter"):
        if hf.get(key) not in (None, 0, 0.0):
            raise ConversionError(f"{source}: {key}={hf[key]!r} is not supported (the release "
                                  "trains with it off); set it to null")
    if hf.get("num_prompt_token", 0) != 0:
        raise ConversionError(f"{source}: num_prompt_token={hf['num_prompt_token']} is not "
                              "supported (the release uses 0)")
    act = hf.get("hidden_act", "gelu")
    if act not in _ACT_FROM_HF:
        raise ConversionError(f"{source}: hidden_act {act!r} is not one of {', '.join(_ACT_FROM_HF)}")
    fields = {field: hf[key] for key, field in _CONFIG_FIELDS.items() if key in hf}
    fields["act"] = _ACT_FROM_HF[act]
    fields["pool"] = "mean" if hf.get("add_pooling_layer", True) else "last"
    architectures = hf.get("architectures") or [PRETRAIN_ARCH]
    if architectures[0] not in (PRETRAIN_ARCH, CLASSIFIER_ARCH):
        raise ConversionError(f"{source}: architecture {architectures[0]!r} is not one of "
                              f"{PRETRAIN_ARCH}, {CLASSIFIER_ARCH}")
    if architectures[0] == CLASSIFIER_ARCH:
        id2label = hf.get("id2label") or {}
        if not id2label:
            raise ConversionError(f"{source}: a classifier config needs id2label")
        labels = tuple(id2label[str(i)] if str(i) in id2label else id2label[i]
                       for i in range(len(id2label)))
        fields["num_classes"] = len(labels)
        # HF's placeholder names mean "no names": keep them implicit so round trips are exact.
        fields["labels"] = () if labels == _placeholder_labels(len(labels)) else labels
    try:
        return ModelConfig(**fields)
    except (ConfigError, TypeError) as exc:
        raise ConversionError(f"{source}: {exc}") from None


def config_to_hf(cfg: ModelConfig) -> dict[str, Any]:
    """config.json of the release for `cfg` (refuses features the release cannot express)."""
    if cfg.mask_ratio > 0:
        raise ConversionError("model.mask_ratio > 0 has a mask token the release format cannot "
                              "hold; export the weights with mask_ratio 0 (it is unused at inference)")
    if cfg.patch_order != "raster":
        raise ConversionError(f"model.patch_order '{cfg.patch_order}' has no key in the release format "
                              "(it reads patches in raster order); only raster-order models can be exported")
    hf: dict[str, Any] = {key: getattr(cfg, field) for key, field in _CONFIG_FIELDS.items()}
    hf.update(
        hidden_act=_ACT_TO_HF[cfg.act], add_pooling_layer=cfg.pool == "mean",
        pos_embed_shift=None, pos_embed_jitter=None, model_type="vit_nepa",
        architectures=[CLASSIFIER_ARCH if cfg.num_classes else PRETRAIN_ARCH], dtype="float32",
    )
    if cfg.num_classes:
        labels = cfg.labels or _placeholder_labels(cfg.num_classes)
        hf["id2label"] = {str(i): name for i, name in enumerate(labels)}
        hf["label2id"] = {name: i for i, name in enumerate(labels)}
    return dict(sorted(hf.items()))


# -- weights ----------------------------------------------------------------------------------

# (release name, nepa name) templates; {i} is the layer index. q/k/v are joined separately.
_LAYER = PREFIX + "encoder.layer.{i}."
_KEY_PAIRS = [
    (PREFIX + "embeddings.cls_token", "cls_token"),
    (PREFIX + "embeddings.patch_embeddings.projection.weight", "patch_embed.proj.weight"),
    (PREFIX + "embeddings.patch_embeddings.projection.bias", "patch_embed.proj.bias"),
    (PREFIX + "layernorm.weight", "norm.weight"),
    (PREFIX + "layernorm.bias", "norm.bias"),
    ("fc_norm.weight", "fc_norm.weight"),
    ("fc_norm.bias", "fc_norm.bias"),
    ("classifier.weight", "head.weight"),
    ("classifier.bias", "head.bias"),
    (_LAYER + "attention.attention.q_norm.weight", "blocks.{i}.attn.q_norm.weight"),
    (_LAYER + "attention.attention.q_norm.bias", "blocks.{i}.attn.q_norm.bias"),
    (_LAYER + "attention.attention.k_norm.weight", "blocks.{i}.attn.k_norm.weight"),
    (_LAYER + "attention.attention.k_norm.bias", "blocks.{i}.attn.k_norm.bias"),
    (_LAYER + "attention.output.dense.weight", "blocks.{i}.attn.proj.weight"),
    (_LAYER + "attention.output.dense.bias", "blocks.{i}.attn.proj.bias"),
    (_LAYER + "layer_scale.lambda1", "blocks.{i}.ls1.gamma"),
    (_LAYER + "output.layer_scale.lambda1", "blocks.{i}.ls2.gamma"),
    (_LAYER + "layernorm_before.weight", "blocks.{i}.norm1.weight"),
    (_LAYER + "layernorm_before.bias", "blocks.{i}.norm1.bias"),
    (_LAYER + "layernorm_after.weight", "blocks.{i}.norm2.weight"),
    (_LAYER + "layernorm_after.bias", "blocks.{i}.norm2.bias"),
    (_LAYER + "output.dense.weight", "blocks.{i}.mlp.fc2.weight"),
    (_LAYER + "output.dense.bias", "blocks.{i}.mlp.fc2.bias"),
]
_UP = {False: "blocks.{i}.mlp.fc1.", True: "blocks.{i}.mlp.fc1_x."}
_GATE = "blocks.{i}.mlp.fc1_g."
_QKV = ("query", "key", "value")


def _pairs(cfg: ModelConfig) -> list[tuple[str, str]]:
    """Every (release key, nepa key) of a model with this config, q/k/v excluded."""
    pairs = []
    templates = list(_KEY_PAIRS)
    for kind in ("weight", "bias"):
        templates.append((_LAYER + f"intermediate.up_proj.{kind}", _UP[cfg.gated_mlp] + kind))
        if cfg.gated_mlp:
            templates.append((_LAYER + f"intermediate.gate_proj.{kind}", _GATE + kind))
    for hf_t, nepa_t in templates:
        if "{i}" in hf_t:
            pairs += [(hf_t.format(i=i), nepa_t.format(i=i)) for i in range(cfg.depth)]
        else:
            pairs.append((hf_t, nepa_t))
    return pairs


def _check_keys(have: set[str], want: set[str], what: str) -> None:
    missing, unknown = sorted(want - have), sorted(have - want)
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unknown:
            parts.append(f"unknown keys: {', '.join(unknown)}")
        raise ConversionError(f"{what}: " + "; ".join(parts))


def _expected_nepa_keys(cfg: ModelConfig) -> set[str]:
    from nepa.model import NepaViT

    with torch.device("meta"):
        return set(NepaViT(cfg).state_dict())


def state_dict_from_hf(hf: dict[str, torch.Tensor], cfg: ModelConfig,
                       what: str = "release weights") -> dict[str, torch.Tensor]:
    """Release state dict -> nepa state dict (q/k/v joined into the fused projection)."""
    hf = {k.removeprefix("module."): v for k, v in hf.items()}
    want_nepa = _expected_nepa_keys(cfg)
    pairs = [(h, n) for h, n in _pairs(cfg) if n in want_nepa]
    qkv = {f"{_LAYER.format(i=i)}attention.attention.{p}.{kind}"
           for i in range(cfg.depth) for p in _QKV for kind in ("weight", "bias")
           if kind == "weight" or cfg.qkv_bias}
    _check_keys(set(hf), {h for h, _ in pairs} | qkv, what)
    out = {n: hf[h] for h, n in pairs}
    for i in range(cfg.depth):
        for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            parts = [hf[f"{_LAYER.format(i=i)}attention.attention.{p}.{kind}"] for p in _QKV]
            out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts, dim=0)
    _check_keys(set(out), want_nepa, what)
    return out


def state_dict_to_hf(sd: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """nepa state dict -> release state dict (fused q/k/v split again)."""
    want = _expected_nepa_keys(cfg)
    _check_keys(set(sd), want, "nepa weights")
    out = {h: sd[n] for h, n in _pairs(cfg) if n in want}
    for i in range(cfg.depth):
        for kind in ("weight", "bias") if cfg.qkv_bias else ("weight",):
            for name, part in zip(_QKV, sd[f"blocks.{i}.attn.qkv.{kind}"].chunk(3, dim=0)):
                out[f"{_LAYER.format(i=i)}attention.attention.{name}.{kind}"] = part
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


# -- directories and files ---------------------------------------------------------------------


def is_release_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_release(directory: str | Path, *, ema: bool = False) -> tuple[ModelConfig, dict]:
    """(config, nepa state dict) of a release directory; `ema` reads pytorch_model_ema.bin."""
    directory = Path(directory)
    config_path = directory / "config.json"
    try:
        hf_config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConversionError(f"{config_path}: cannot read config ({exc})") from None
    cfg = config_from_hf(hf_config, source=str(config_path))
    weights = directory / (EMA_FILE if ema else WEIGHTS_FILE)
    if not ema and not weights.is_file() and (directory / EMA_FILE).is_file():
        weights = directory / EMA_FILE
    if not weights.is_file():
        raise ConversionError(f"{directory}: neither {WEIGHTS_FILE} nor {EMA_FILE} found")
    if weights.suffix == ".safetensors":
        hf_state = load_file(str(weights))
    else:
        hf_state = torch.load(weights, map_location="cpu", weights_only=True)
    return cfg, state_dict_from_hf(hf_state, cfg, what=str(weights))


def write_release(directory: str | Path, cfg: ModelConfig, sd: dict[str, torch.Tensor]) -> Path:
    """Write a release directory (config.json + model.safetensors); refuses to overwrite."""
    directory = Path(directory)
    if directory.exists():
        raise ConversionError(f"{directory} already exists; choose a new output path")
    hf_config, hf_state = config_to_hf(cfg), state_dict_to_hf(sd, cfg)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        (staging / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(hf_state, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        staging.rename(directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
