"""Decoding images without crashing a run, and the map-style dataset every source builds on.

An image that cannot be decoded becomes `None`; `collate` drops it and counts it, so the
engine can log how many images each step skipped.
"""

from __future__ import annotations

import abc
import io
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from PIL import Image

log = logging.getLogger("nepa.data")

# What PIL raises for truncated, corrupt or non-image data (SyntaxError: broken PNG chunks).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError, EOFError)


def decode_image(data: bytes | str | os.PathLike, where: str) -> Image.Image | None:
    """RGB image from bytes or a file; None (and a warning naming `where`) when unreadable."""
    try:
        source = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
        with Image.open(source) as image:
            return image.convert("RGB")  # convert() loads: truncation is caught here
    except DECODE_ERRORS as exc:
        log.warning("skipping unreadable image %s: %s", where, exc)
        return None


_KEPT_FORMATS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


def keep_encoded(data: bytes, where: str) -> tuple[bytes, str] | None:
    """(bytes, extension) of an encoded image: kept as-is when JPEG/PNG/WebP, else re-encoded
    as PNG; None when it is not an image (only the header is parsed for kept formats)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            extension = _KEPT_FORMATS.get(image.format or "")
            if extension:
                return data, extension
    except DECODE_ERRORS as exc:
        log.warning("skipping unreadable image %s: %s", where, exc)
        return None
    image = decode_image(data, where)
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), "png"


class ImageDataset(abc.ABC):
    """Items `{"image", "label", "index"}` (or None when the image is unreadable).

    A map-style dataset (`len` and indexing: all torch's DataLoader needs) that imports no
    torch, so the login node lists and counts a data set without it.

    Subclasses provide `classes`, `labels` (one int per item) and `load(index)`; `where(index)`
    names an item in messages. Without a transform the image stays a PIL image.
    """

    classes: list[str]
    labels: Sequence[int]

    def __init__(self, transform: Callable | None):
        self.transform = transform

    @abc.abstractmethod
    def load(self, index: int) -> Image.Image | None:
        """The decoded image, or None when it cannot be read (every source implements this)."""

    def where(self, index: int) -> str:
        return f"#{index}"

    def encoded(self, index: int) -> tuple[bytes, str] | None:
        """(file bytes, extension) to store this image in a shard; None when unreadable.

        The default re-encodes losslessly as PNG; sources holding JPEG/PNG/WebP files keep
        their bytes (see `keep_encoded`)."""
        image = self.load(index)
        if image is None:
            return None
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue(), "png"

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any] | None:
        image = self.load(index)
        if image is None:
            return None
        return {"image": self.transform(image) if self.transform else image,
                "label": int(self.labels[index]), "index": int(index)}
