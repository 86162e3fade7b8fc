"""Release <-> nepa conversion is strict and lossless."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

import nepa
from nepa import checkpoint
from nepa.convert import (
    RELEASE_CONFIG_KEYS,
    ConversionError,
    config_from_hf,
    read_release,
    write_release,
)
from nepa.model import build_model
from nepa.pretrained import convert
from tests.conftest import GOLDEN


def test_every_release_config_key_is_known(golden_dir):
    hf = json.loads((golden_dir / "config.json").read_text())
    assert set(hf) <= RELEASE_CONFIG_KEYS
    assert {"num_prompt_token", "hidden_act", "pos_embed_rescale"} <= RELEASE_CONFIG_KEYS


def test_release_round_trip_is_exact(golden_dir, tmp_path):
    """release -> nepa checkpoint -> release reproduces every tensor and config value."""
    convert(golden_dir, tmp_path / "model.pt")
    convert(tmp_path / "model.pt", tmp_path / "back", to_hf=True)
    original, back = load_file(str(golden_dir / "model.safetensors")), load_file(
        str(tmp_path / "back" / "model.safetensors"))
    assert original.keys() == back.keys()
    assert all(torch.equal(original[k], back[k]) for k in original)
    want = json.loads((golden_dir / "config.json").read_text())
    got = json.loads((tmp_path / "back" / "config.json").read_text())
    want.pop("transformers_version")
    assert got == want


@pytest.mark.parametrize("overrides", [{}, {"num_classes": 3, "pool": "last", "gated_mlp": True,
                                            "act": "silu", "qk_norm_affine": True}])
def test_nepa_round_trip_is_lossless(tmp_path, overrides):
    model = build_model("tiny", depth=2, **overrides)
    path = checkpoint.save(tmp_path / "m.pt", checkpoint.model_payload(model.cfg, model.state_dict()))
    convert(path, tmp_path / "hf", to_hf=True)
    convert(tmp_path / "hf", tmp_path / "again.pt")
    cfg, sd = checkpoint.read_model(checkpoint.load(tmp_path / "again.pt"))
    assert cfg == model.cfg
    assert sd.keys() == model.state_dict().keys()
    assert all(torch.equal(sd[k], v) for k, v in model.state_dict().items())


def test_release_ema_file_is_read(tmp_path):
    src = tmp_path / "release"
    shutil.copytree(GOLDEN / "pretrain_qknorm_plain", src)
    weights = load_file(str(src / "model.safetensors"))
    ema = {k: v + 1.0 for k, v in weights.items()}
    torch.save(ema, src / "pytorch_model_ema.bin")
    cfg, sd = read_release(src, ema=True)
    assert torch.equal(sd["cls_token"], ema["vit_nepa.embeddings.cls_token"])
    model = nepa.load_pretrained(src / "pytorch_model_ema.bin")
    assert torch.equal(model.cls_token, ema["vit_nepa.embeddings.cls_token"])


def test_unknown_config_key_is_one_clear_error():
    with pytest.raises(ConversionError, match=r"unknown config keys: foo_bar, hidden_sise"):
        config_from_hf({"hidden_sise": 3, "foo_bar": 1})
    with pytest.raises(ConversionError, match="pos_embed_shift=0.5 is not supported"):
        config_from_hf({"pos_embed_shift": 0.5})


def test_missing_and_unknown_weight_keys_are_listed(tmp_path, golden_dir):
    src = tmp_path / "release"
    shutil.copytree(golden_dir, src)
    weights = load_file(str(src / "model.safetensors"))
    del weights["vit_nepa.layernorm.bias"]
    weights["vit_nepa.extra.weight"] = torch.zeros(1)
    from safetensors.torch import save_file

    save_file(weights, str(src / "model.safetensors"))
    with pytest.raises(ConversionError, match=r"missing keys: vit_nepa.layernorm.bias; "
                                              r"unknown keys: vit_nepa.extra.weight"):
        read_release(src)


def test_outputs_are_never_overwritten(tmp_path, golden_dir):
    (tmp_path / "exists.pt").write_text("keep me")
    with pytest.raises(ConversionError, match="already exists"):
        convert(golden_dir, tmp_path / "exists.pt")
    assert (tmp_path / "exists.pt").read_text() == "keep me"
    model = build_model("tiny", depth=1)
    (tmp_path / "out").mkdir()
    with pytest.raises(ConversionError, match="already exists"):
        write_release(tmp_path / "out", model.cfg, model.state_dict())


def test_mask_token_cannot_go_to_the_release_format(tmp_path):
    model = build_model("tiny", depth=1, mask_ratio=0.4)
    with pytest.raises(ConversionError, match="mask_ratio"):
        write_release(tmp_path / "out", model.cfg, model.state_dict())
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []


def test_non_raster_patch_order_is_refused_by_the_release_format():
    from nepa.convert import ConversionError, config_to_hf
    from nepa.model import build_model

    with pytest.raises(ConversionError, match="patch_order"):
        config_to_hf(build_model("tiny", depth=1, patch_order="spiral").cfg)
