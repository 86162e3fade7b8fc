"""Small real datasets built in temporary directories from the bundled digits.

The same 60 train / 20 val scans appear in every layout (image folder of PNGs, HF
save_to_disk, HF parquet, webdataset shards), in the same order, so items can be compared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from nepa.data.digits import DigitsDataset

TRAIN_PER_CLASS, VAL_PER_CLASS = 6, 2
CLASSES = [str(d) for d in range(10)]


def pick(split: str, per_class: int) -> list[tuple[int, int]]:
    """(index in the digits split, label), class-major: the image folder's sorted order."""
    labels = DigitsDataset(split).labels
    return [(int(i), c) for c in range(10) for i in np.flatnonzero(labels == c)[:per_class]]


def expected(split: str) -> list[tuple[np.ndarray, int]]:
    """(pixels (32, 32, 3) uint8, label) of the picked scans, in order."""
    data = DigitsDataset(split)
    per_class = TRAIN_PER_CLASS if split == "train" else VAL_PER_CLASS
    return [(np.asarray(data.load(i)), label) for i, label in pick(split, per_class)]


def write_folder(root: Path, fmt: str = "png") -> Path:
    for split, per_class in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
        data = DigitsDataset(split)
        for i, label in pick(split, per_class):
            directory = root / split / str(label)
            directory.mkdir(parents=True, exist_ok=True)
            data.load(i).save(directory / f"{i:04d}.{fmt}")
    return root


@pytest.fixture(scope="session")
def folder(tmp_path_factory) -> Path:
    """ROOT/{train,val}/<digit>/NNNN.png: 60 train and 20 val real scans."""
    return write_folder(tmp_path_factory.mktemp("folder"))


def _hf_dict():
    import datasets

    features = datasets.Features({"image": datasets.Image(),
                                  "label": datasets.ClassLabel(names=CLASSES)})
    splits = {}
    for split, name in (("train", "train"), ("val", "validation")):
        data = DigitsDataset(split)
        per_class = TRAIN_PER_CLASS if split == "train" else VAL_PER_CLASS
        rows = pick(split, per_class)
        splits[name] = datasets.Dataset.from_dict(
            {"image": [data.load(i) for i, _ in rows], "label": [c for _, c in rows]},
            features=features)
    return datasets.DatasetDict(splits)


@pytest.fixture(scope="session")
def hf_disk(tmp_path_factory) -> Path:
    """A save_to_disk DatasetDict with 'train' and 'validation'."""
    root = tmp_path_factory.mktemp("hf_disk")
    _hf_dict().save_to_disk(str(root / "ds"))
    return root / "ds"


@pytest.fixture(scope="session")
def hf_parquet(tmp_path_factory) -> Path:
    """The Hub's ILSVRC/imagenet-1k layout: data/<split>-NNNNN-of-NNNNN.parquet."""
    root = tmp_path_factory.mktemp("hf_parquet")
    (root / "data").mkdir()
    for name, split in _hf_dict().items():
        half = len(split) // 2
        split.select(range(half)).to_parquet(str(root / "data" / f"{name}-00000-of-00002.parquet"))
        split.select(range(half, len(split))).to_parquet(
            str(root / "data" / f"{name}-00001-of-00002.parquet"))
    return root


@pytest.fixture(autouse=True)
def _hf_cache(tmp_path_factory, monkeypatch):
    """Arrow caches of parquet loads go to a temporary directory, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE",
                        str(tmp_path_factory.getbasetemp() / "hf_cache"))


@pytest.fixture(scope="session")
def packed(tmp_path_factory, folder) -> Path:
    """The image folder packed into shards of 16 (train shuffled)."""
    from nepa.data.pack import pack_shards

    out = tmp_path_factory.mktemp("packed") / "wds"
    pack_shards(str(folder), out, shard_size=16)
    return out
