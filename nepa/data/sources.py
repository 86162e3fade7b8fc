"""`build_dataset`: one split of the configured source, as items {"image", "label", "index"}."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from nepa.data.config import DataConfig

Split = Literal["train", "val"]


def build_dataset(cfg: DataConfig, split: Split, transform: Callable | None) -> Any:
    """The `split` ("train" or "val") of `cfg.source`, with `transform` applied to each image.

    digits, imagefolder and hf give map-style datasets; wds gives a ShardDataset (iterable,
    every sample once, in shard order; use `build_train_stream` to train on shards). All have
    `len()` and `classes`. Missing or empty splits raise DataError.
    """
    name = cfg.split_name(split)
    if cfg.source == "digits":
        from nepa.data.digits import DigitsDataset

        return DigitsDataset(name, transform)
    if cfg.source == "imagefolder":
        from nepa.data.imagefolder import ImageFolderDataset

        return ImageFolderDataset(cfg.path, name, transform, train_dir=cfg.train_split, role=split)
    if cfg.source == "hf":
        from nepa.data.hf import HFDataset

        return HFDataset(cfg.path, name, transform, image_column=cfg.image_column,
                         label_column=cfg.label_column, role=split)
    from nepa.data.wds import ShardDataset, reader_for

    reader, index = reader_for(cfg, split, transform)
    return ShardDataset(reader, index.classes)
