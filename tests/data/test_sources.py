"""Every source yields the same items; digits are fixed; bad images and splits are handled."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from nepa.data import DataConfig, DataError, SplitNotFound, build_dataset, collate
from nepa.data.digits import DigitsDataset, split_indices
from tests.data.conftest import CLASSES, expected


def test_digits_split_is_fixed_and_stratified():
    train, val = split_indices("train"), split_indices("val")
    assert (len(train), len(val)) == (1497, 300)
    assert not set(train) & set(val) and len(set(train) | set(val)) == 1797
    # Pinned: a changed split would silently change every demo number.
    assert val[:10].tolist() == [4, 6, 15, 17, 20, 26, 27, 31, 32, 44]
    assert int(val.sum()) == 251744
    data = DigitsDataset("val")
    assert np.bincount(data.labels).tolist() == [30] * 10
    item = build_dataset(DataConfig(), "val", None)[0]
    assert item["image"].size == (32, 32) and item["image"].mode == "RGB"
    assert (item["label"], item["index"]) == (4, 0)


def _items(dataset):
    return [(np.asarray(item["image"]), item["label"], item["index"]) for item in dataset]


@pytest.mark.parametrize("layout", ["imagefolder", "hf_disk", "hf_parquet", "wds"])
def test_each_source_yields_the_same_items(layout, folder, hf_disk, hf_parquet, packed):
    path = {"imagefolder": folder, "hf_disk": hf_disk, "hf_parquet": hf_parquet,
            "wds": packed}[layout]
    cfg = DataConfig(source=layout.split("_")[0], path=str(path))
    for split in ("train", "val"):
        dataset = build_dataset(cfg, split, None)
        want = expected(split)
        assert len(dataset) == len(want)
        assert list(dataset.classes) == CLASSES
        got = sorted(_items(dataset), key=lambda t: t[2])  # wds: shard order, index = source's
        assert [i for _, _, i in got] == list(range(len(want)))
        for (pixels, label, _), (want_pixels, want_label) in zip(got, want, strict=True):
            assert label == want_label
            np.testing.assert_array_equal(pixels, want_pixels)


def test_transform_is_applied(folder):
    cfg = DataConfig(source="imagefolder", path=str(folder), image_size=16)
    from nepa.data import eval_transform

    item = build_dataset(cfg, "val", eval_transform(16, crop_pct=1.0))[3]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert -1.0 <= item["image"].min() and item["image"].max() <= 1.0


def _corrupt(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])  # truncated


def test_corrupt_images_are_skipped_and_counted(tmp_path, folder, caplog):
    root = tmp_path / "f"
    shutil.copytree(folder, root)
    bad = sorted((root / "val" / "3").iterdir())[0]
    _corrupt(bad)
    (root / "val" / "5" / "0000-not-an-image.png").write_bytes(b"hello")
    dataset = build_dataset(DataConfig(source="imagefolder", path=str(root)), "val", pil_to_tensor)
    items = [dataset[i] for i in range(len(dataset))]
    assert len(items) == 21 and sum(item is None for item in items) == 2
    batch = collate(items)
    assert batch["skipped"] == 2 and batch["image"].shape[0] == 19
    assert batch["label"].dtype == torch.long and batch["index"].tolist() == [
        i for i, item in enumerate(items) if item is not None]
    assert str(bad) in caplog.text


def test_collate_of_only_bad_images():
    batch = collate([None, None])
    assert batch["skipped"] == 2 and batch["image"].numel() == 0 and batch["label"].shape == (0,)


def test_missing_and_empty_splits_are_one_line_errors(tmp_path, folder):
    root = tmp_path / "f"
    shutil.copytree(folder, root)
    shutil.rmtree(root / "val")
    cfg = DataConfig(source="imagefolder", path=str(root))
    with pytest.raises(SplitNotFound) as missing:
        build_dataset(cfg, "val", None)
    assert str(missing.value) == (
        f"imagefolder val split not found: {root / 'val'} is not a directory; create "
        f"{root / 'val'}/<class>/<image> or set data.path / data.val_split")
    (root / "val" / "0").mkdir(parents=True)
    with pytest.raises(DataError) as empty:
        build_dataset(cfg, "val", None)
    assert str(empty.value).startswith("imagefolder val split is empty: no image files (")
    assert "\n" not in str(empty.value)
    (root / "val" / "zebra").mkdir()
    (root / "val" / "zebra" / "a.png").write_bytes((root / "train" / "0").iterdir().__next__()
                                                   .read_bytes())
    with pytest.raises(DataError, match="val split has classes not in 'train' \\(zebra\\)"):
        build_dataset(cfg, "val", None)


def test_hf_missing_split_and_column(hf_disk, hf_parquet):
    with pytest.raises(SplitNotFound, match="hf val split 'dev' not found in .* \\(splits: "
                                            "train, validation\\); set data.val_split"):
        build_dataset(DataConfig(source="hf", path=str(hf_disk), val_split="dev"), "val", None)
    with pytest.raises(SplitNotFound, match="splits there: train, validation"):
        build_dataset(DataConfig(source="hf", path=str(hf_parquet), train_split="test"),
                      "train", None)
    with pytest.raises(DataError, match="has no column 'img' \\(columns: image, label\\); set "
                                        "data.image_column"):
        build_dataset(DataConfig(source="hf", path=str(hf_disk), image_column="img"), "train", None)


def test_wds_missing_index_and_split(tmp_path, packed):
    with pytest.raises(DataError, match="wds index not found: .*index.json does not exist"):
        build_dataset(DataConfig(source="wds", path=str(tmp_path)), "train", None)
    with pytest.raises(SplitNotFound, match="wds val split 'test' not found"):
        build_dataset(DataConfig(source="wds", path=str(packed), val_split="test"), "val", None)


def test_imagefolder_index_equals_torchvisions_and_counting_needs_no_torch(tmp_path):
    """The torch-free scan gives torchvision's classes, order and extensions; the login-node check
    (check_dataset) of an ImageFolder and of the digits never imports torch."""
    import subprocess
    import sys

    from PIL import Image
    from torchvision.datasets.folder import IMG_EXTENSIONS as TV_EXTENSIONS
    from torchvision.datasets.folder import make_dataset as tv_make_dataset

    from nepa.data.imagefolder import IMG_EXTENSIONS, ImageFolderDataset

    for split, classes in (("train", ("b", "a", "c")), ("val", ("a", "b"))):
        for name in classes:
            nested = tmp_path / split / name / "sub"
            nested.mkdir(parents=True)
            for i, ext in enumerate((".png", ".JPG", ".webp")):  # names out of order, any case
                Image.new("RGB", (4, 4)).save(nested.parent / f"{3 - i}{ext}", format="PNG")
            (nested.parent / "notes.txt").write_text("not an image")
            Image.new("RGB", (4, 4)).save(nested / "z.png")
    assert IMG_EXTENSIONS == TV_EXTENSIONS
    for split in ("train", "val"):
        mine = ImageFolderDataset(tmp_path, split, role=split)
        theirs = tv_make_dataset(str(tmp_path / split), {c: i for i, c in enumerate(["a", "b", "c"])},
                                 extensions=TV_EXTENSIONS, allow_empty=True)
        assert list(zip(mine.paths, mine.labels)) == theirs
    code = ("import sys; from nepa.data import DataConfig, check_dataset\n"
            f"check_dataset(DataConfig(source='imagefolder', path={str(tmp_path)!r}))\n"
            "check_dataset(DataConfig())\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
