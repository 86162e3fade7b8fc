"""Load ready models from anything a user points at (checkpoint, run directory or release), and
convert between the release format and nepa checkpoints."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from nepa import checkpoint
from nepa.convert import EMA_FILE, ConversionError, is_release_dir, read_release, write_release
from nepa.model import NepaViT
from nepa.model_config import ModelConfig


def read_weights(path: str | Path, *, ema: bool | None = None) -> tuple[ModelConfig, dict]:
    """(config, nepa state dict) from a nepa checkpoint file, a run directory or a release.

    `ema=None` picks the usual weights: EMA for nepa checkpoints and runs when they hold it,
    model.safetensors for a release. True insists on EMA weights, False on the raw ones.
    """
    path = Path(path)
    if not path.exists():
        raise checkpoint.CheckpointError(
            f"{path} does not exist; give a nepa checkpoint, a run directory or a release directory")
    if path.is_file() and path.name == EMA_FILE:
        return read_release(path.parent, ema=True)
    if is_release_dir(path):
        return read_release(path, ema=bool(ema))
    if path.is_dir():
        found = checkpoint.load_newest_valid(path, warn=lambda msg: warnings.warn(msg, stacklevel=3))
        if found is None:
            raise checkpoint.CheckpointError(
                f"{path} is neither a run directory with checkpoints nor a release directory "
                "(config.json + model.safetensors)"
            )
        payload = found[1]
    else:
        payload = checkpoint.load(path)
    if ema and payload.get("ema") is None:
        raise checkpoint.CheckpointError(f"{path} holds no EMA weights")
    return checkpoint.read_model(payload, ema=ema is not False)


def load_pretrained(path: str | Path, *, ema: bool | None = None,
                    device: str | torch.device = "cpu") -> NepaViT:
    """A ready model in eval mode; a classifier's call on images returns logits."""
    cfg, state_dict = read_weights(path, ema=ema)
    model = NepaViT(cfg)
    model.load_state_dict(state_dict, strict=True)
    return model.to(device).eval()


def convert(src: str | Path, out: str | Path, *, to_hf: bool = False, ema: bool = False) -> Path:
    """Release directory -> nepa checkpoint file (`nepactl convert`), or (`to_hf`) nepa weights -> release directory.

    From a release, `ema` reads its pytorch_model_ema.bin. With `to_hf`, `src` is a nepa
    checkpoint or a run directory, and its EMA weights are exported when it has them.
    """
    src, out = Path(src), Path(out)
    if to_hf:
        cfg, sd = read_weights(src)
        return write_release(out, cfg, sd)
    if not src.exists():
        raise ConversionError(f"{src} does not exist; give a release directory")
    if not is_release_dir(src):
        raise ConversionError(f"{src} is not a release directory (no config.json)")
    if out.exists():
        raise ConversionError(f"{out} already exists; choose a new output path")
    cfg, sd = read_release(src, ema=ema)
    return checkpoint.save(out, checkpoint.model_payload(cfg, sd, source=str(src.resolve())))
