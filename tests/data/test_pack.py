"""pack: sources -> shards + index.json; read back equals the source; nothing overwritten."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from nepa.data import DataConfig, DataError, build_dataset
from nepa.data.layout import detect_source
from nepa.data.pack import pack_shards
from nepa.data.tarfiles import iter_samples
from nepa.data.wds import read_index
from tests.data.conftest import CLASSES, expected


def _read_back(out, split):
    """{key: (pixels, label, extension)} from the shard files themselves."""
    samples = {}
    for shard in read_index(out).splits[split].shards:
        for _, key, members in iter_samples(shard.url, lambda _: True):
            (extension,) = set(members) - {"cls"}
            pixels = np.asarray(Image.open(io.BytesIO(members[extension])).convert("RGB"))
            samples[key] = (pixels, int(members["cls"]), extension)
    return samples


def test_pack_image_folder_reads_back_equal(tmp_path, folder):
    calls = []
    result = pack_shards(str(folder), tmp_path / "out", shard_size=16,
                         progress=lambda *a: calls.append(a))
    assert result.source == "imagefolder" and result.classes == CLASSES and not result.missing
    train, val = result.splits
    assert (train.images, val.images) == (60, 20)
    assert train.shards == tuple(f"train-{i:06d}.tar" for i in range(4))
    assert train.counts == (16, 16, 16, 12) and val.counts == (16, 4)
    assert calls[-1] == ("val", 20, 20)
    index = json.loads(result.index.read_text())
    assert index["splits"]["train"]["per_class"] == {c: 6 for c in CLASSES}
    assert index["keys"] == "source-index" and index["classes"] == CLASSES
    for split in ("train", "val"):
        samples = _read_back(tmp_path / "out", split)
        want = expected(split)
        assert sorted(samples) == [f"{i:08d}" for i in range(len(want))]
        for i, (pixels, label) in enumerate(want):
            got_pixels, got_label, extension = samples[f"{i:08d}"]
            assert (got_label, extension) == (label, "png")
            np.testing.assert_array_equal(got_pixels, pixels)  # PNG bytes copied: exact
    keys = [key for shard in read_index(tmp_path / "out").splits["train"].shards
            for _, key, _ in iter_samples(shard.url, lambda _: False)]
    assert keys != sorted(keys)  # train is shuffled at pack time
    assert not list((tmp_path / "out").glob(".*"))  # no partial files left


def test_pack_digits_and_hf(tmp_path, hf_disk):
    digits = pack_shards("digits", tmp_path / "digits", shard_size=1000)
    assert [s.images for s in digits.splits] == [1497, 300]
    assert [len(s.shards) for s in digits.splits] == [2, 1]
    hf = pack_shards(str(hf_disk), tmp_path / "hf", shard_size=50, shuffle=False)
    assert hf.source == "hf" and [s.images for s in hf.splits] == [60, 20]
    assert [s.name for s in hf.splits] == ["train", "validation"]
    items = build_dataset(DataConfig(source="wds", path=str(tmp_path / "hf"),
                                     val_split="validation"), "val", None)
    got = sorted((item["index"], item["label"]) for item in items)
    assert got == [(i, label) for i, (_, label) in enumerate(expected("val"))]


def test_pack_refuses_a_non_empty_output_and_skips_unreadable_images(tmp_path, folder):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(DataError, match="exists and is not empty; pack into a new directory"):
        pack_shards(str(folder), out)
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1

    root = tmp_path / "src"
    shutil.copytree(folder, root)
    shutil.rmtree(root / "val")
    (root / "train" / "4" / "junk.png").write_bytes(b"not an image")
    result = pack_shards(str(root), tmp_path / "out2")
    assert result.missing == ("val",) and len(result.splits) == 1
    assert result.splits[0].images == 60 and result.splits[0].skipped == (
        str(root / "train" / "4" / "junk.png"),)
    assert json.loads(result.index.read_text())["splits"]["train"]["skipped"] == 1


def test_interrupted_pack_has_no_index(tmp_path, folder, monkeypatch):
    import nepa.data.pack as pack

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pack, "write_index_file", crash)
    with pytest.raises(KeyboardInterrupt):
        pack_shards(str(folder), tmp_path / "out")
    assert not (tmp_path / "out" / "index.json").exists()
    with pytest.raises(DataError, match="an interrupted pack\\? delete it and pack again"):
        build_dataset(DataConfig(source="wds", path=str(tmp_path / "out")), "train", None)


def test_detect_source(tmp_path, folder, hf_disk, hf_parquet, packed):
    assert [detect_source(p) for p in ("digits", str(folder), str(hf_disk), str(hf_parquet),
                                       str(packed))] == ["digits", "imagefolder", "hf", "hf",
                                                         "wds"]
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="cannot tell what .* holds"):
        detect_source(str(tmp_path))
