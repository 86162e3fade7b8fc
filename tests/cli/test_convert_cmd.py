"""`nepactl convert` end to end, and the CLI's import-time promise."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from typer.testing import CliRunner

import nepa
from nepactl.app import app
from tests.conftest import GOLDEN

runner = CliRunner()


def test_convert_both_ways(tmp_path):
    src = GOLDEN / "cls_mean_bidirectional"
    result = runner.invoke(app, ["convert", str(src), str(tmp_path / "m.pt")])
    assert result.exit_code == 0, result.output
    model = nepa.load_pretrained(tmp_path / "m.pt")
    assert model(torch.zeros(1, 3, 56, 56)).shape == (1, 7)
    result = runner.invoke(app, ["convert", str(tmp_path / "m.pt"), str(tmp_path / "hf"), "--to-hf"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["architectures"] == [
        "ViTNepaForImageClassification"]


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    result = runner.invoke(app, ["convert", str(tmp_path / "missing"), str(tmp_path / "m.pt")])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: {tmp_path / 'missing'} does not exist; give a release directory"]
    assert not (tmp_path / "m.pt").exists()


def test_help_does_not_import_torch():
    code = ("import sys; from nepactl.app import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "convert" in done.stdout
