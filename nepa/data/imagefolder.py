"""ROOT/<split>/<class>/<image> directories (the ImageNet layout), indexed as torchvision does.

Class ids come from the train split's class directories (sorted), so val uses the same ids
even when some val class directory is missing. The scan is torchvision's `find_classes` and
`make_dataset` (same order, same extensions; a test compares them) written without torch, so
that the login node counts a data set in a process that never imports it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from nepa.data.config import DataError, SplitNotFound
from nepa.data.images import ImageDataset, decode_image, keep_encoded, log

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def find_classes(directory: Path) -> list[str]:
    """Sorted class directory names (torchvision.datasets.folder.find_classes)."""
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(f"Couldn't find any class folder in {directory}.")
    return classes


def make_dataset(directory: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    """(path, class id) of every image, in torchvision's order (its make_dataset)."""
    samples = []
    for name in sorted(class_to_idx):
        if not (directory / name).is_dir():  # a class this split lacks
            continue
        for root, _, files in sorted(os.walk(directory / name, followlinks=True)):
            samples += [(os.path.join(root, f), class_to_idx[name]) for f in sorted(files)
                        if f.lower().endswith(IMG_EXTENSIONS)]
    return samples


def _class_dirs(directory: Path, role: str) -> list[str]:
    if not directory.is_dir():
        raise SplitNotFound(f"imagefolder {role} split not found: {directory} is not a directory; "
                        f"create {directory}/<class>/<image> or set data.path / data.{role}_split")
    try:
        return find_classes(directory)
    except FileNotFoundError:
        raise DataError(f"imagefolder {role} split is empty: {directory} has no class "
                        f"directories; put images in {directory}/<class>/") from None


class ImageFolderDataset(ImageDataset):
    """One split of an image folder; `index` is the position in torchvision's sorted order."""

    def __init__(self, root: str | os.PathLike, split_dir: str, transform: Callable | None = None,
                 *, train_dir: str = "train", role: str = "train"):
        super().__init__(transform)
        root = Path(root)
        directory, reference = root / split_dir, root / train_dir
        own = _class_dirs(directory, role)
        classes = _class_dirs(reference, "train") if reference.is_dir() else own
        unknown = sorted(set(own) - set(classes))
        if unknown:
            raise DataError(f"imagefolder {role} split has classes not in '{train_dir}' "
                            f"({', '.join(unknown[:3])}{' ...' if len(unknown) > 3 else ''}) under "
                            f"{root}; use the same class directory names in both splits")
        self.classes = classes
        self.root = directory
        samples = make_dataset(directory, {c: i for i, c in enumerate(classes)})
        if not samples:
            raise DataError(f"imagefolder {role} split is empty: no image files "
                            f"({', '.join(IMG_EXTENSIONS)}) under {directory}/<class>/; "
                            "add images or fix data.path")
        self.paths = [path for path, _ in samples]
        self.labels = [label for _, label in samples]

    def load(self, index: int) -> Image.Image | None:
        return decode_image(self.paths[index], self.paths[index])

    def where(self, index: int) -> str:
        return self.paths[index]

    def encoded(self, index: int) -> tuple[bytes, str] | None:
        try:
            data = Path(self.paths[index]).read_bytes()
        except OSError as exc:
            log.warning("skipping unreadable image %s: %s", self.paths[index], exc)
            return None
        return keep_encoded(data, self.paths[index])
