"""Pack a dataset (the digits, an image folder, a local HF dataset) into webdataset shards.

OUT/<split>-000000.tar, ... hold samples {key}.{jpg|png|webp} + {key}.cls, key = the
sample's index in its source split (8 digits). JPEG/PNG/WebP bytes are copied unchanged
(pixels identical), other formats are re-encoded as PNG. OUT/index.json (classes, per split:
count, per-class counts, shards with their counts) is written last, atomically: a pack that
crashed has no index and is refused by every reader.
"""

from __future__ import annotations

import io
import os
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from nepa.data.config import DataConfig, DataError, Source, SplitNotFound
from nepa.data.images import ImageDataset, decode_image
from nepa.data.layout import detect_source
from nepa.data.sampler import mix_seed
from nepa.data.wds import INDEX_FILE, SOURCE_INDEX_KEYS, index_document, write_index_file

Progress = Callable[[str, int, int], None]  # (split, images done, images in split)


@dataclass(frozen=True)
class PackedSplit:
    name: str
    images: int  # written
    skipped: tuple[str, ...]  # unreadable source images (where)
    shards: tuple[str, ...]  # file names in OUT
    counts: tuple[int, ...]  # images per shard
    per_class: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PackResult:
    out: Path
    source: str
    classes: list[str]
    splits: tuple[PackedSplit, ...]
    missing: tuple[str, ...]  # splits the source does not have

    @property
    def index(self) -> Path:
        return self.out / INDEX_FILE


class _ShardWriter:
    """OUT/<split>-NNNNNN.tar, `shard_size` samples each; each shard is written under a
    hidden .partial name, fsynced and renamed when complete."""

    def __init__(self, out: Path, split: str, shard_size: int):
        self.out, self.split, self.shard_size = out, split, shard_size
        self.names: list[str] = []
        self.counts: list[int] = []
        self._tar: tarfile.TarFile | None = None
        self._handle = None

    def write(self, key: str, files: dict[str, bytes]) -> None:
        if self._tar is None or self.counts[-1] == self.shard_size:
            self.close()
            self.names.append(f"{self.split}-{len(self.names):06d}.tar")
            self.counts.append(0)
            self._handle = open(self._partial, "wb")  # noqa: SIM115 - closed in close()
            self._tar = tarfile.open(fileobj=self._handle, mode="w", format=tarfile.USTAR_FORMAT)
        for extension, data in files.items():
            info = tarfile.TarInfo(f"{key}.{extension}")
            info.size, info.mode, info.uname, info.gname = len(data), 0o444, "nepa", "nepa"
            self._tar.addfile(info, io.BytesIO(data))
        self.counts[-1] += 1

    @property
    def _partial(self) -> Path:
        return self.out / f".{self.names[-1]}.partial"

    def close(self) -> None:
        if self._tar is None:
            return
        self._tar.close()
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self._handle.close()
        os.replace(self._partial, self.out / self.names[-1])
        self._tar = self._handle = None


def _pack_split(dataset: ImageDataset, split: str, out: Path, *, shard_size: int, shuffle: bool,
                seed: int, decode: bool, progress: Progress | None) -> PackedSplit:
    n = len(dataset)
    if shuffle:  # shards of one class each would starve the readers' shuffle buffers
        order = torch.randperm(n, generator=torch.Generator().manual_seed(mix_seed(seed, split)))
    else:
        order = torch.arange(n)
    writer = _ShardWriter(out, split, shard_size)
    skipped: list[str] = []
    per_class = {c: 0 for c in dataset.classes}
    every = max(1, n // 200)
    for done, index in enumerate(order.tolist(), 1):
        encoded = dataset.encoded(index)
        where = dataset.where(index)
        if encoded is not None and decode and decode_image(encoded[0], where) is None:
            encoded = None
        if encoded is None:
            skipped.append(where)
        else:
            label = int(dataset.labels[index])
            data, extension = encoded
            writer.write(f"{index:08d}", {"cls": str(label).encode(), extension: data})
            per_class[dataset.classes[label]] += 1
        if progress is not None and (done % every == 0 or done == n):
            progress(split, done, n)
    writer.close()
    if not writer.names:
        raise DataError(f"split '{split}' of the source has no readable image ({len(skipped)} "
                        "unreadable); fix the source data")
    return PackedSplit(split, sum(writer.counts), tuple(skipped), tuple(writer.names),
                       tuple(writer.counts), per_class)


def pack_shards(src: str, out: str | os.PathLike, *, source: Source | None = None,
                shard_size: int = 1000, shuffle: bool = True, seed: int = 0, decode: bool = False,
                progress: Progress | None = None) -> PackResult:
    """Write the train and val splits of `src` as shards + index.json into the new dir `out`.

    `src` is 'digits' or a directory (`source` detected when None). Train is written in a
    seeded random order (`shuffle`), val in source order. Unreadable images (header check;
    a full decode with `decode`) are skipped and listed. `out` must not exist or be empty.
    """
    from nepa.data.sources import build_dataset

    if shard_size < 1:
        raise DataError(f"shard size {shard_size} must be >= 1 image per shard")
    source = source or detect_source(src)
    if source == "wds":
        raise DataError(f"{src} already holds webdataset shards; nothing to pack")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out} exists and is not empty; pack into a new directory "
                        "(nothing is overwritten)")
    cfg = DataConfig(source=source, path=None if source == "digits" else str(src))
    datasets, missing = {}, []
    for role in ("train", "val"):
        try:
            datasets[role] = build_dataset(cfg, role, None)
        except SplitNotFound:
            if role == "train":
                raise
            missing.append(cfg.split_name(role))
    classes = list(datasets["train"].classes)
    out.mkdir(parents=True, exist_ok=True)
    packed, documents = [], {}
    for role, dataset in datasets.items():
        split = cfg.split_name(role)
        result = _pack_split(dataset, split, out, shard_size=shard_size,
                             shuffle=shuffle and role == "train", seed=seed, decode=decode,
                             progress=progress)
        packed.append(result)
        documents[split] = {"shards": [{"url": s, "count": c}
                                       for s, c in zip(result.shards, result.counts, strict=True)],
                            "per_class": result.per_class, "skipped": len(result.skipped)}
    document = index_document(classes, documents, keys=SOURCE_INDEX_KEYS,
                              source=f"{source}:{src}")
    write_index_file(out, document)
    return PackResult(out, source, classes, tuple(packed), tuple(missing))
