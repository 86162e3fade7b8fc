"""A tiny ADE20K-layout dataset of real pixels: handwritten digit scans on a textured canvas.

Each image composites a few of the bundled scikit-learn digit scans (upscaled, inked in a
random colour) onto a noisy colour gradient. Labels follow ADE20K's encoding, single-channel
8-bit PNGs: 1 (ADE "wall") for the background, digit d -> d + 2, and 0 ("other", which
`reduce_zero_label` maps to the ignore index 255) on each digit's soft anti-aliased rim, so the
ignore path is exercised. Training images use the digits' train split, validation images its
val split. The output is a function of the arguments only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

BACKGROUND = 1  # ADE id of the canvas
IGNORE = 0  # ADE "other": ignored after reduce_zero_label
CORE, RIM = 0.5, 0.15  # ink opacity above CORE: the digit; between RIM and CORE: ignored
SPLITS = {"training": ("train", "train"), "validation": ("val", "val")}  # ADE dir -> (digits split, file tag)


def _canvas(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A noisy gradient between two random colours, (H, W, 3) float in [0, 255]."""
    start, end = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    t = (np.cos(angle) * xs / width + np.sin(angle) * ys / height + 1) / 2  # (H, W) in [0, 1]
    image = start + (end - start) * t[..., None]  # (H, W, 3)
    return image + rng.normal(0, 8, size=image.shape)


def _paste_digit(image: np.ndarray, label: np.ndarray, scan: np.ndarray, digit: int,
                 rng: np.random.Generator) -> None:
    """Alpha-composite one upscaled scan at a random place, labelling core and rim in place."""
    height, width = label.shape
    side = int(rng.integers(min(height, width) // 3, min(height, width) // 2 + 1))
    alpha = np.asarray(Image.fromarray(scan).resize((side, side), Image.Resampling.BILINEAR)) / 255.0
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    ink = rng.uniform(0, 255, size=3)
    window = (slice(top, top + side), slice(left, left + side))
    image[window] = image[window] * (1 - alpha[..., None]) + ink * alpha[..., None]
    label[window] = np.where(alpha >= CORE, digit + 2, np.where(alpha > RIM, IGNORE, label[window]))


def make_tiny_ade20k(root: str | Path, *, train: int = 8, val: int = 4, size: int = 96,
                     digits_per_image: int = 3, seed: int = 0) -> Path:
    """Write images/{training,validation}/ADE_*.jpg and annotations/.../ADE_*.png under `root`.

    Images are `size` wide and 3/4 of it high (not square, so resizing keeps its aspect).
    """
    from nepa.data.digits import DigitsDataset

    root = Path(root)
    height, width = round(size * 0.75), size
    for index, (ade_split, (digit_split, tag)) in enumerate(SPLITS.items()):
        digits = DigitsDataset(digit_split)
        rng = np.random.default_rng([seed, index])
        (root / "images" / ade_split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / ade_split).mkdir(parents=True, exist_ok=True)
        for n in range(train if ade_split == "training" else val):
            image = _canvas(rng, height, width)
            label = np.full((height, width), BACKGROUND, dtype=np.uint8)
            for pick in rng.choice(len(digits.labels), size=digits_per_image, replace=False):
                _paste_digit(image, label, digits.images[pick], int(digits.labels[pick]), rng)
            name = f"ADE_{tag}_{n + 1:08d}"
            rgb = Image.fromarray(np.clip(np.round(image), 0, 255).astype(np.uint8))
            rgb.save(root / "images" / ade_split / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / ade_split / f"{name}.png")
    return root
