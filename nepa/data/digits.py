"""The bundled demo data: scikit-learn's 1,797 real 8x8 handwritten digit scans, as 32x32 RGB.

The train/val split is fixed forever: per class, the 30 scans whose index has the smallest
blake2b digest go to val (300 images, stratified), the other 1,497 to train. It uses no
random generator, so no library upgrade can change it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import cache

import numpy as np
from PIL import Image

from nepa.data.images import ImageDataset

SIZE = 32  # pixels: 8x8 scans upscaled (bilinear), the tiny model's input size
VAL_PER_CLASS = 30
CLASSES = [str(d) for d in range(10)]


def _rank_key(index: int) -> bytes:
    return hashlib.blake2b(f"nepa-digits/{index}".encode(), digest_size=8).digest()


@cache
def _load() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(images (N, 32, 32) uint8, labels (N,), {"train": indices, "val": indices})."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    scans = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (N, 8, 8), 0..16 -> 0..255
    bilinear = Image.Resampling.BILINEAR
    images = np.stack([np.asarray(Image.fromarray(s).resize((SIZE, SIZE), bilinear))
                       for s in scans])  # (N, 32, 32)
    labels = digits.target.astype(np.int64)
    val = sorted(i for c in range(10)
                 for i in sorted(np.flatnonzero(labels == c), key=_rank_key)[:VAL_PER_CLASS])
    train = np.setdiff1d(np.arange(len(labels)), val)
    return images, labels, {"train": train, "val": np.asarray(val, dtype=np.int64)}


def split_indices(split: str) -> np.ndarray:
    """Indices into `load_digits()` of the fixed 'train' (1,497) or 'val' (300) split."""
    return _load()[2][split]


class DigitsDataset(ImageDataset):
    """One split of the bundled digits; `index` is the position within the split."""

    classes = CLASSES

    def __init__(self, split: str, transform: Callable | None = None):
        super().__init__(transform)
        images, labels, splits = _load()
        self.source_indices = splits[split]
        self.images = images[self.source_indices]
        self.labels = labels[self.source_indices]

    def load(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index]).convert("RGB")

    def where(self, index: int) -> str:
        return f"digits #{int(self.source_indices[index])}"
