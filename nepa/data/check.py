"""`check_dataset`: is a configured dataset usable? Counts per split and class, a decode test.

Fast by default (structure, counts, a few decoded images per split; the parquet layout is read
with pyarrow, not converted), so the CLI runs it before every submission; `decode=True` decodes
every image. Unusable data (a missing or empty split, nothing decodable, a broken shard index)
raises DataError; unreadable images that training would skip are reported, not fatal.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nepa.data.config import DataConfig, DataError

Progress = Callable[[str, int, int], None]  # (split, images checked, images to check)


@dataclass(frozen=True)
class SplitReport:
    role: str  # "train" or "val"
    name: str  # the split's name in the source
    images: int
    per_class: dict[str, int]
    decoded: int  # images decoded by the check
    unreadable: tuple[str, ...]  # which of those failed (where)

    def row(self) -> dict[str, object]:
        counts = list(self.per_class.values()) or [0]
        return {"split": self.name, "images": self.images, "classes": len(self.per_class),
                "min/class": min(counts), "max/class": max(counts), "decoded": self.decoded,
                "unreadable": len(self.unreadable)}


@dataclass(frozen=True)
class DataReport:
    source: str
    path: str | None
    classes: list[str]
    splits: tuple[SplitReport, ...]

    @property
    def unreadable(self) -> int:
        return sum(len(s.unreadable) for s in self.splits)

    @property
    def summary(self) -> str:
        parts = ", ".join(f"{s.name} {s.images:,}" for s in self.splits)
        checked = sum(s.decoded for s in self.splits)
        return (f"{self.source} {self.path or ''}".rstrip() + f": {parts} images, "
                f"{len(self.classes)} classes; {checked} decoded, {self.unreadable} unreadable")

    def rows(self) -> list[dict[str, object]]:
        return [s.row() for s in self.splits]

    def to_dict(self) -> dict[str, object]:
        return {"source": self.source, "path": self.path, "classes": self.classes,
                "splits": [{**s.row(), "per_class": s.per_class, "unreadable": list(s.unreadable)}
                           for s in self.splits]}


def _spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all when k >= n)."""
    return list(range(n)) if k >= n else sorted({int(i) for i in np.linspace(0, n - 1, k)})


def _check_map(dataset, role: str, name: str, decode: bool, sample: int,
               progress: Progress | None) -> SplitReport:
    labels = np.asarray(dataset.labels)
    counts = np.bincount(labels, minlength=len(dataset.classes))
    indices = range(len(dataset)) if decode else _spread(len(dataset), sample)
    unreadable = []
    for done, i in enumerate(indices, 1):
        if dataset.load(i) is None:
            unreadable.append(dataset.where(i))
        if progress is not None:
            progress(name, done, len(indices))
    return SplitReport(role, name, len(dataset), dict(zip(dataset.classes, counts.tolist(),
                                                          strict=True)),
                       len(indices), tuple(unreadable))


def _check_shards(cfg: DataConfig, role: str, decode: bool, sample: int,
                  progress: Progress | None) -> tuple[SplitReport, list[str]]:
    from nepa.data.tarfiles import iter_samples, local_path
    from nepa.data.wds import reader_for

    reader, index = reader_for(cfg, role, None)
    split = reader.split
    for shard in split.shards:
        local = local_path(shard.url)
        if local is not None and not Path(local).is_file():
            raise DataError(f"wds {role} split '{split.name}': shard {local} is missing; restore "
                            f"it or pack the data again")
    to_check = split.count if decode else min(sample, split.count)
    unreadable, done = [], 0
    for shard_index, shard in enumerate(split.shards):
        if done >= to_check:
            break
        seen = 0
        for offset, key, members in iter_samples(shard.url, lambda _: True):
            seen += 1
            if done < to_check:
                canonical = reader.canonical_starts[shard_index] + offset
                item = reader.item(canonical, key, members, seed=None)
                if item is None:
                    unreadable.append(f"{shard.url} sample {key}")
                done += 1
                if progress is not None:
                    progress(split.name, done, to_check)
            elif not decode:
                break
        if decode and seen != shard.count:
            raise DataError(f"wds shard {shard.url} holds {seen} samples, its index says "
                            f"{shard.count}; pack the data again")
    return SplitReport(role, split.name, split.count, split.per_class, done,
                       tuple(unreadable)), index.classes


def _check_parquet(cfg: DataConfig, role: str, decode: bool, sample: int,
                   progress: Progress | None) -> tuple[SplitReport, list[str]]:
    """The hf parquet layout read with pyarrow: no conversion to Arrow files (minutes for
    ImageNet), only the label column and the images that are decoded."""
    import json

    import pyarrow.parquet as pq

    from nepa.data.hf import parquet_files
    from nepa.data.images import decode_image

    name, root = cfg.split_name(role), Path(cfg.path)
    files = parquet_files(root, name)
    if not files:  # the same errors as the training path
        from nepa.data.hf import load_split

        load_split(root, name, role)
    first = pq.ParquetFile(files[0])
    columns = first.schema_arrow.names
    for column, key in ((cfg.image_column, "image_column"), (cfg.label_column, "label_column")):
        if column not in columns:
            raise DataError(f"hf {role} split '{name}' in {root} has no column '{column}' "
                            f"(columns: {', '.join(columns)}); set data.{key}")
    labels = pq.read_table(files, columns=[cfg.label_column]).column(0).to_numpy()
    if len(labels) == 0 or labels.min() < 0:
        raise DataError(f"hf {role} split '{name}' in {root} is empty or unlabelled (-1); "
                        f"fix data.path or data.{role}_split")
    meta = json.loads((first.schema_arrow.metadata or {}).get(b"huggingface", b"{}"))
    feature = meta.get("info", {}).get("features", {}).get(cfg.label_column, {})
    classes = list(feature.get("names") or [str(i) for i in range(int(labels.max()) + 1)])
    counts = np.bincount(labels, minlength=len(classes))
    unreadable, done, total = [], 0, len(labels) if decode else min(sample, len(labels))
    for path in files:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            if done >= total:
                break
            images = parquet.read_row_group(group, columns=[cfg.image_column]).column(0)
            for row, value in enumerate(images.to_pylist()[: total - done]):
                data = value.get("bytes") if isinstance(value, dict) else value
                if decode_image(data or b"", f"{path} row group {group} row {row}") is None:
                    unreadable.append(f"{path} row group {group} row {row}")
                done += 1
                if progress is not None:
                    progress(name, done, total)
    per_class = dict(zip(classes, counts.tolist(), strict=True))
    return SplitReport(role, name, len(labels), per_class, done, tuple(unreadable)), classes


def check_dataset(cfg: DataConfig, *, decode: bool = False, sample: int = 16,
                  progress: Progress | None = None) -> DataReport:
    """Check the train and val splits of `cfg`; DataError (one line) when unusable."""
    from nepa.data.layout import is_parquet_layout
    from nepa.data.sources import build_dataset

    reports, classes = [], []
    for role in ("train", "val"):
        if cfg.source == "wds":
            report, classes = _check_shards(cfg, role, decode, sample, progress)
        elif cfg.source == "hf" and is_parquet_layout(Path(cfg.path)):
            report, classes = _check_parquet(cfg, role, decode, sample, progress)
        else:
            dataset = build_dataset(cfg, role, None)
            classes = list(dataset.classes)
            report = _check_map(dataset, role, cfg.split_name(role), decode, sample, progress)
        if report.decoded and len(report.unreadable) == report.decoded:
            raise DataError(f"{cfg.source} {role} split '{report.name}': none of the "
                            f"{report.decoded} images checked could be decoded (first: "
                            f"{report.unreadable[0]}); check the files or data.image_column")
        reports.append(report)
    return DataReport(cfg.source, cfg.path, classes, tuple(reports))
