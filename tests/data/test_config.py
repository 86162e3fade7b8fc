"""DataConfig: per-source defaults resolved once, strict loading, cross-field checks."""

from __future__ import annotations

import pytest

from nepa.config import ConfigError, from_dict, to_dict
from nepa.data.config import DataConfig


def test_defaults_are_resolved_from_the_source():
    digits = DataConfig()
    assert (digits.image_size, digits.train_split, digits.val_split) == (32, "train", "val")
    hf = DataConfig(source="hf", path="/data/in1k")
    assert (hf.image_size, hf.val_split, hf.image_column, hf.label_column) == (
        224, "validation", "image", "label")
    wds = DataConfig(source="wds", path="/data/wds", image_size=192)
    assert (wds.image_size, wds.image_column, wds.label_column) == (192, "jpg;jpeg;png;webp", "cls")
    assert from_dict(DataConfig, to_dict(hf)) == hf  # the resolved values round-trip


def test_strict_loading_and_cross_field_checks():
    with pytest.raises(ConfigError, match="data.shuffle_bufer: unknown key \\(did you mean "
                                          "'shuffle_buffer'\\?\\)"):
        from_dict(DataConfig, {"shuffle_bufer": 10}, path="data")
    with pytest.raises(ConfigError, match="data.source: 'parquet' is not one of"):
        from_dict(DataConfig, {"source": "parquet"}, path="data")
    with pytest.raises(ConfigError, match="^data.path: source 'imagefolder' needs a path; set "
                                          "data.path \\(or use source: digits\\)$"):
        DataConfig(source="imagefolder")
    with pytest.raises(ConfigError, match="data.crop_scale: \\[0.5, 0.2\\] must satisfy"):
        DataConfig(crop_scale=(0.5, 0.2))
    with pytest.raises(ConfigError, match="data.val_split: equals data.train_split 'train'"):
        DataConfig(val_split="train")
    with pytest.raises(ConfigError, match="data.num_workers: must be >= 0"):
        DataConfig(num_workers=-1)
