"""`DataConfig`: where the images come from and how they are read. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nepa.config import ConfigError, check
from nepa.errors import NepaError

Source = Literal["digits", "imagefolder", "hf", "wds"]

# Per-source defaults for the fields left null (resolved once, in __post_init__, so the
# config written into a run directory states the value actually used).
_SPLITS = {"digits": ("train", "val"), "imagefolder": ("train", "val"),
           "hf": ("train", "validation"), "wds": ("train", "val")}
INDEX_FILE = "index.json"  # the shard index written by `nepactl data pack`
_COLUMNS = {"hf": ("image", "label"), "wds": ("jpg;jpeg;png;webp", "cls")}


class DataError(NepaError):
    """A dataset cannot be used as configured: the message says what, where and the fix."""


class SplitNotFound(DataError):
    """The requested split does not exist in the dataset."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    """The training and evaluation data. Null fields are filled from `source` when built."""

    # digits: scikit-learn's 1,797 real 8x8 scans upscaled to 32x32 (bundled, no download);
    # imagefolder: PATH/<split>/<class>/<image>; hf: a `datasets` save_to_disk directory or
    # the parquet layout PATH/data/<split>-*.parquet; wds: webdataset shards + index.json.
    source: Source = "digits"
    # imagefolder: the root holding the split directories; hf: the dataset directory;
    # wds: the directory written by `nepactl data pack` (or its index.json). Unused by digits.
    path: str | None = None
    train_split: str | None = None  # null: "train"
    val_split: str | None = None  # null: "validation" for hf, else "val"
    # hf: the image column; wds: the image's key (extension) in a sample, ';'-separated
    # alternatives tried in order. Null: "image" (hf), "jpg;jpeg;png;webp" (wds).
    image_column: str | None = None
    label_column: str | None = None  # hf: label column; wds: label key. Null: "label" / "cls"
    image_size: int | None = None  # crop size in pixels; null: 32 for digits, else 224
    # Pretraining RandomResizedCrop area range; torchvision's default, as the release's
    # RandomResizedCrop(224) (the tiny demo keeps [0.2, 1.0]: templates/sizes/tiny.yaml).
    crop_scale: tuple[float, float] = (0.08, 1.0)
    hflip: bool = True  # pretraining: random horizontal flip
    num_workers: int = 8  # DataLoader worker processes per rank; 0: load in the main process
    shuffle_buffer: int = 1000  # wds: samples held per reader for shuffling; 0: shard order only

    def __post_init__(self) -> None:
        check(self.source == "digits" or bool(self.path), "data.path",
              f"source '{self.source}' needs a path; set data.path (or use source: digits)")
        train, val = _SPLITS[self.source]
        self._fill("train_split", train)
        self._fill("val_split", val)
        image, label = _COLUMNS.get(self.source, (None, None))
        self._fill("image_column", image)
        self._fill("label_column", label)
        self._fill("image_size", 32 if self.source == "digits" else 224)
        check(self.image_size >= 1, "data.image_size", "must be a positive number of pixels")
        low, high = self.crop_scale
        check(0 < low <= high <= 1, "data.crop_scale",
              f"{list(self.crop_scale)} must satisfy 0 < low <= high <= 1, e.g. [0.08, 1.0]")
        check(self.num_workers >= 0, "data.num_workers", "must be >= 0 (0: main process)")
        check(self.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0 (0: no buffer)")
        check(self.train_split != self.val_split, "data.val_split",
              f"equals data.train_split '{self.train_split}'; name the held-out split")

    def _fill(self, name: str, default) -> None:
        if getattr(self, name) is None:
            object.__setattr__(self, name, default)  # frozen: the one place defaults are resolved

    def split_name(self, split: Literal["train", "val"]) -> str:
        """The source's name of the train or val split."""
        check(split in ("train", "val"), "split", f"{split!r} is not 'train' or 'val'")
        return self.train_split if split == "train" else self.val_split  # type: ignore[return-value]


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Micro-steps per optimizer step; global_batch must split exactly over ranks."""
    if min(global_batch, micro_batch, world_size) < 1 or global_batch % (world_size * micro_batch):
        raise ConfigError(
            f"global batch {global_batch} is not divisible by world size {world_size} x "
            f"micro batch {micro_batch}; change train.micro_batch or train.global_batch")
    return global_batch // (world_size * micro_batch)
