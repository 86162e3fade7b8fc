"""`nepactl viz` end to end on a nepa checkpoint, a run directory and a release directory."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

import nepa
from nepa import checkpoint, rundir
from nepactl.commands.viz import viz
from tests.conftest import GOLDEN

runner = CliRunner()
app = typer.Typer(add_completion=False)
app.command("viz")(viz)
app.command("noop")(lambda: None)  # a second command keeps "viz" a subcommand, as in nepactl


def _invoke(*args: str):
    return runner.invoke(app, ["viz", *map(str, args)])


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    Image.fromarray((torch.rand(48, 40, 3) * 255).byte().numpy()).save(path)
    return path


@pytest.fixture
def tiny_ckpt(tmp_path):
    model = nepa.build_model("tiny")
    return checkpoint.save(tmp_path / "tiny.pt", checkpoint.model_payload(model.cfg, model.state_dict()))


def test_checkpoint_file_writes_the_chosen_maps(tmp_path, photo, tiny_ckpt, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _invoke("--weights", tiny_ckpt, "--image", photo, "--layers", "0,-1", "--heads", "1,3",
                     "--query", "10,37")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == ["viz-tiny/sheet.png", "viz-tiny/index.json"]
    out = tmp_path / "viz-tiny"  # default: ./viz-<weights name>
    index = json.loads((out / "index.json").read_text())
    assert index["layers"] == [0, 5] and index["heads"] == [1, 3] and index["queries"] == [10, 37]
    assert index["grid"] == [8, 8]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.json", "sheet.png", "q0010_similarity.png", "q0037_similarity.png",
         *(f"q{q:04d}_layer{lay:02d}_head{h:02d}.png" for q in (10, 37) for lay in (0, 5) for h in (1, 3))])
    with Image.open(out / "sheet.png") as sheet:
        assert sheet.size == nepa.viz.sheet_size(2, 4)


def test_release_directory_with_query_grid(tmp_path, photo):
    out = tmp_path / "maps"
    result = _invoke("--weights", GOLDEN / "cls_mean_bidirectional", "--image", photo,
                     "--query-grid", "2", "--out", out)
    assert result.exit_code == 0, result.output
    index = json.loads((out / "index.json").read_text())
    assert index["grid"] == [4, 4] and index["queries"] == [5, 7, 13, 15]
    assert index["layers"] == [0, 1] and index["heads"] == [0, 1]  # defaults: first/middle/last, all
    pngs = [f for f in index["files"] if f["kind"] == "attention"]
    assert len(pngs) == 4 * 2 * 2 and all((out / f["path"]).is_file() for f in index["files"])


def test_run_name_reads_the_run_and_writes_into_it(tmp_path, photo):
    run = tmp_path / "runs" / "r1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "run.json").write_text("{}")
    model = nepa.build_model("tiny")
    ckpt = checkpoint.save(run / "checkpoints" / "step_00000010.pt",
                           checkpoint.model_payload(model.cfg, model.state_dict()))
    rundir.write_pointer(run / "checkpoints", ckpt.name)
    result = _invoke("r1", "--runs-root", tmp_path / "runs", "--image", photo, "--query", "0",
                     "--layers", "3", "--heads", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == str(run / "viz" / "sheet.png")
    assert (run / "viz" / "q0000_layer03_head00.png").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["--image", "{tmp}/nope.png"], "error: {tmp}/nope.png: no such image file; check --image"),
    (["--image", "{tmp}/bad.png"], "error: {tmp}/bad.png is not a readable image "
                                   "(UnidentifiedImageError); give a PNG, JPEG or another format PIL reads"),
    (["--query", "64"], "error: query patch 64 is out of range: the 8x8 patch grid has patches "
                        "0..63 (row-major)"),
    (["--query", "ten"], "error: --query 'ten' is not a comma-separated list of integers, e.g. 0,5"),
    (["--layers", "0,6"], "error: layer 6 is out of range: the model has 6 blocks (0..5, or -1 for "
                          "the last)"),
    (["--heads", "4"], "error: head 4 is out of range: the model has 4 heads (0..3); give --heads "
                       "all or e.g. 0,1"),
    (["--query", "1", "--query-grid", "2"], "error: give either --query or --query-grid, not both"),
    (["--query-grid", "9"], "error: --query-grid 9 does not fit the 8x8 patch grid; use 1..8"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, photo, tiny_ckpt, args, message):
    (tmp_path / "bad.png").write_text("not an image")
    args = [a.format(tmp=tmp_path) for a in args]
    if "--image" not in args:
        args += ["--image", str(photo)]
    result = _invoke("--weights", tiny_ckpt, "--out", tmp_path / "out", *args)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [message.format(tmp=tmp_path)]
    assert not list((tmp_path / "out").glob("*.png"))


def test_missing_weights_or_run(tmp_path, photo):
    result = _invoke("--weights", tmp_path / "none.pt", "--image", photo)
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'none.pt'} does not exist; give a nepa checkpoint, a run directory "
        "or a release directory"]
    result = _invoke("ghost", "--runs-root", tmp_path, "--image", photo)
    assert result.exit_code == 2
    assert result.output.strip().startswith(f"error: no run 'ghost' in {tmp_path}")
    result = _invoke("--image", photo)
    assert result.exit_code == 2 and "give either a RUN name or --weights PATH" in result.output


def test_help_has_an_example_and_imports_no_torch():
    code = ("import sys, typer; from nepactl.commands.viz import viz\n"
            "app = typer.Typer(); app.command('viz')(viz); app.command('noop')(lambda: None)\n"
            "try:\n    app(['viz', '--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Example" in done.stdout and "--query-grid" in done.stdout
