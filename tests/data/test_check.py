"""check_dataset and the `nepactl data check|pack` commands: tables, one-line errors, exits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from nepa.data import DataConfig, DataError, check_dataset
from nepactl.app import app

runner = CliRunner()


@pytest.mark.parametrize("layout", ["digits", "imagefolder", "hf_disk", "hf_parquet", "wds"])
def test_check_every_source(layout, folder, hf_disk, hf_parquet, packed):
    path = {"imagefolder": folder, "hf_disk": hf_disk, "hf_parquet": hf_parquet,
            "wds": packed}.get(layout)
    cfg = DataConfig(source=layout.split("_")[0], path=str(path) if path else None)
    report = check_dataset(cfg, sample=5)
    sizes = [1497, 300] if layout == "digits" else [60, 20]
    assert [s.images for s in report.splits] == sizes
    assert [s.decoded for s in report.splits] == [5, 5] and report.unreadable == 0
    assert len(report.classes) == 10 and sum(report.splits[0].per_class.values()) == sizes[0]
    full = check_dataset(cfg, decode=True) if layout != "digits" else report
    assert layout == "digits" or [s.decoded for s in full.splits] == sizes
    assert "unreadable" in report.summary


def test_check_reports_unreadable_and_fails_on_unusable(tmp_path, folder):
    root = tmp_path / "f"
    shutil.copytree(folder, root)
    bad = sorted((root / "val" / "1").iterdir())[0]
    bad.write_bytes(b"garbage")
    report = check_dataset(DataConfig(source="imagefolder", path=str(root)), decode=True)
    assert report.splits[1].unreadable == (str(bad),)
    for image in (root / "val").rglob("*.png"):
        image.write_bytes(b"garbage")
    with pytest.raises(DataError, match="imagefolder val split 'val': none of the 20 images "
                                        "checked could be decoded"):
        check_dataset(DataConfig(source="imagefolder", path=str(root)), decode=True)


def test_check_finds_a_missing_or_short_shard(tmp_path, packed):
    out = tmp_path / "wds"
    shutil.copytree(packed, out)
    (out / "val-000001.tar").unlink()
    with pytest.raises(DataError, match="shard .*val-000001.tar is missing; restore it"):
        check_dataset(DataConfig(source="wds", path=str(out)))
    shutil.copy(out / "val-000000.tar", out / "val-000001.tar")  # 16 samples, index says 4
    with pytest.raises(DataError, match="holds 16 samples, its index says 4; pack the data again"):
        check_dataset(DataConfig(source="wds", path=str(out)), decode=True)


def test_cli_check_table_json_and_exit_codes(tmp_path, folder):
    result = runner.invoke(app, ["data", "check", str(folder)])
    assert result.exit_code == 0, result.output
    assert "imagefolder" in result.output and "train" in result.output and " 60 " in result.output
    result = runner.invoke(app, ["data", "check", str(folder), "--json", "--sample", "2"])
    document = json.loads(result.stdout)
    assert [s["images"] for s in document["splits"]] == [60, 20]
    assert document["splits"][0]["per_class"]["3"] == 6
    result = runner.invoke(app, ["data", "check", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'nope'} does not exist; give a dataset directory or 'digits'"]
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    result = runner.invoke(app, ["data", "check", str(empty), "--source", "imagefolder"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1
    assert result.output.startswith("error: imagefolder train split is empty: no image files")


def test_cli_pack_then_check(tmp_path, folder):
    out = tmp_path / "wds"
    result = runner.invoke(app, ["data", "pack", str(folder), str(out), "--shard-size", "25"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out / "index.json")
    assert sorted(p.name for p in out.iterdir()) == [
        "index.json", "train-000000.tar", "train-000001.tar", "train-000002.tar",
        "val-000000.tar"]
    result = runner.invoke(app, ["data", "check", str(out), "--decode"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["data", "pack", str(folder), str(out)])
    assert result.exit_code == 2 and "exists and is not empty" in result.output


def test_data_help_does_not_import_torch():
    code = ("import sys; from nepactl.app import app\n"
            "for cmd in ([], ['pack'], ['check']):\n"
            "    args = ['data', *cmd, '--help']\n"
            "    try:\n        app(args)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "--shard-size" in done.stdout and "--decode" in done.stdout


def test_check_reads_parquet_without_converting_it(tmp_path, hf_parquet, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    report = check_dataset(DataConfig(source="hf", path=str(hf_parquet)), decode=True)
    assert [s.decoded for s in report.splits] == [60, 20] and report.classes[3] == "3"
    assert not (tmp_path / "cache").exists()  # the ImageNet parquet would take minutes
    with pytest.raises(DataError, match="hf val split 'test' not found"):
        check_dataset(DataConfig(source="hf", path=str(hf_parquet), val_split="test"))
