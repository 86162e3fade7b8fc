"""Hugging Face `datasets` on local disk; nothing is ever downloaded.

Two layouts: a `save_to_disk` directory (`datasets.load_from_disk`), or the parquet layout
of the Hub's ILSVRC/imagenet-1k (PATH/data/<split>-*.parquet), which `load_dataset("parquet")`
converts once into Arrow files in the datasets cache (HF_DATASETS_CACHE: put it on fast
storage with room for a copy of the data).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from nepa.data.config import DataError, SplitNotFound
from nepa.data.images import ImageDataset, decode_image, keep_encoded
from nepa.data.layout import is_hf_layout, is_parquet_layout


def parquet_files(root: Path, split: str) -> list[str]:
    return sorted(str(p) for p in (root / "data").glob(f"{split}-*.parquet"))


def load_split(root: str | os.PathLike, split: str, role: str = "train"):
    """The `datasets.Dataset` of one split, or a DataError saying what is missing."""
    import datasets

    root = Path(root)
    if not root.is_dir():
        raise DataError(f"hf dataset not found: {root} is not a directory; set data.path to a "
                        "save_to_disk directory or a directory holding data/<split>-*.parquet")
    if is_parquet_layout(root):
        files = parquet_files(root, split)
        if not files:
            found = sorted({p.name.split("-")[0] for p in (root / "data").glob("*.parquet")})
            raise SplitNotFound(f"hf {role} split '{split}' not found: no "
                            f"{root}/data/{split}-*.parquet (splits there: "
                            f"{', '.join(found) or 'none'}); set data.{role}_split")
        return datasets.load_dataset("parquet", data_files={split: files}, split=split)
    if not is_hf_layout(root):
        raise DataError(f"hf dataset not found in {root}: no dataset_dict.json (save_to_disk) and "
                        "no data/*.parquet; set data.path to one of those layouts")
    loaded = datasets.load_from_disk(str(root))
    if isinstance(loaded, datasets.Dataset):
        raise DataError(f"hf dataset {root} holds a single unnamed split; save a DatasetDict "
                        f"with a '{split}' split (DatasetDict({{'{split}': ...}}).save_to_disk)")
    if split not in loaded:
        raise SplitNotFound(f"hf {role} split '{split}' not found in {root} (splits: "
                            f"{', '.join(loaded)}); set data.{role}_split")
    return loaded[split]


class HFDataset(ImageDataset):
    """One split of a local `datasets` dataset; `index` is the row number."""

    def __init__(self, root: str | os.PathLike, split: str, transform: Callable | None = None, *,
                 image_column: str = "image", label_column: str = "label", role: str = "train"):
        import datasets

        super().__init__(transform)
        table = load_split(root, split, role)
        for column, key in ((image_column, "image_column"), (label_column, "label_column")):
            if column not in table.column_names:
                raise DataError(f"hf {role} split '{split}' in {root} has no column '{column}' "
                                f"(columns: {', '.join(table.column_names)}); set data.{key}")
        if len(table) == 0:
            raise DataError(f"hf {role} split '{split}' in {root} is empty; fix data.path or "
                            f"data.{role}_split")
        table = table.select_columns([image_column, label_column])
        if isinstance(table.features[image_column], datasets.Image):
            table = table.cast_column(image_column, datasets.Image(decode=False))
        labels = np.asarray(table.with_format("numpy")[label_column])
        if labels.dtype.kind not in "iu" or labels.min() < 0:
            raise DataError(f"hf {role} split '{split}' in {root}: column '{label_column}' must "
                            "hold class ids >= 0 (unlabelled rows are -1); use a labelled split")
        feature = table.features[label_column]
        names = list(getattr(feature, "names", None) or [str(i) for i in range(labels.max() + 1)])
        self.table, self.image_column = table, image_column
        self.root, self.split = Path(root), split
        self.labels, self.classes = labels.astype(np.int64), names

    def raw(self, index: int) -> bytes | str | None:
        """The encoded image (bytes) or its file path, without decoding."""
        value = self.table[int(index)][self.image_column]
        if isinstance(value, dict):  # the Image feature: {"bytes", "path"}
            return value.get("bytes") or value.get("path")
        return value

    def load(self, index: int) -> Image.Image | None:
        return decode_image(self.raw(index) or b"", self.where(index))

    def where(self, index: int) -> str:
        return f"{self.root} [{self.split}] row {int(index)}"

    def encoded(self, index: int) -> tuple[bytes, str] | None:
        data = self.raw(index)
        if isinstance(data, str):
            try:
                data = Path(data).read_bytes()
            except OSError:
                data = b""
        return keep_encoded(data or b"", self.where(index))
