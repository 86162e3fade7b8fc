"""What a data path holds (an HF dataset, webdataset shards or an image folder), by its layout
on disk. Torch-free: the CLI detects `--data PATH` on the login node."""

from __future__ import annotations

from pathlib import Path

from nepa.data.config import INDEX_FILE, DataError, Source


def is_parquet_layout(root: Path) -> bool:
    """PATH/data/<split>-*.parquet (and not a save_to_disk directory)."""
    return (root / "data").is_dir() and not (root / "dataset_dict.json").is_file()


def is_hf_layout(root: Path) -> bool:
    """A save_to_disk directory or the parquet layout."""
    return ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file()
            or any((root / "data").glob("*.parquet")))


def detect_source(path: str) -> Source:
    """What `path` holds: 'digits', an HF dataset, wds shards (index.json) or an image folder."""
    if path == "digits":
        return "digits"
    root = Path(path)
    if not root.exists():
        raise DataError(f"{root} does not exist; give a dataset directory or 'digits'")
    if root.suffix == ".json" or (root / INDEX_FILE).is_file():
        return "wds"
    if is_hf_layout(root):
        return "hf"
    if root.is_dir() and any(p.is_dir() for p in root.iterdir()):
        return "imagefolder"
    raise DataError(f"cannot tell what {root} holds (no train/ folder, HF dataset or index.json); "
                    "give --source")
