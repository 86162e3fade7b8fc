"""nepa.paths: one rule for paths in run and evaluation files, never the reader's cwd."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nepa.evals.segmentation.config import SegmentationConfig
from nepa.evals.spec import EvalSpec, dump_spec, load_spec
from nepa.paths import resolve_stored, store_path
from nepa.train.runconfig import RunConfig, load_run_config, write_run_config


def test_inside_the_runs_root_relative_to_the_holder_outside_absolute(tmp_path):
    root = tmp_path / "runs"
    holder = root / "r" / "evals" / "linprobe-step5-seed0"
    checkpoint = root / "r" / "checkpoints" / "step_00000005.pt"
    assert store_path(checkpoint, holder, root) == os.path.join("..", "..", "checkpoints", "step_00000005.pt")
    assert store_path(root / "r", holder, root) == os.path.join("..", "..")
    outside = tmp_path / "data" / "imagenet"
    assert store_path(outside, holder, root) == str(outside)
    # a prefix of the root's name is not inside it
    assert store_path(tmp_path / "runs2" / "x", holder, root) == str(tmp_path / "runs2" / "x")
    assert resolve_stored("../../checkpoints/a.pt", holder) == str(root / "r" / "checkpoints" / "a.pt")
    assert resolve_stored(str(outside), holder) == str(outside)


def test_a_relative_input_means_the_cwd_once_then_never_again(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root, holder = Path("runs"), Path("runs/r/evals/e")
    assert store_path("runs/r/checkpoints/a.pt", holder, root) == os.path.join("..", "..", "checkpoints", "a.pt")
    assert store_path("data/x", holder, root) == str(tmp_path / "data" / "x")


def test_specs_keep_working_after_the_runs_root_moves_and_from_any_cwd(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    eval_dir = root / "r" / "evals" / "e"
    eval_dir.mkdir(parents=True)
    spec = EvalSpec(task="ade20k", weights=str(root / "r" / "checkpoints" / "step_00000005.pt"),
                    segmentation=SegmentationConfig(data_root="generated:tiny-ade20k"))
    text = dump_spec(spec, holder=eval_dir, runs_root=root)
    assert "weights: ../../checkpoints/step_00000005.pt" in text
    (eval_dir / "eval.yaml").write_text(text)
    moved = tmp_path / "elsewhere" / "runs"
    shutil.move(str(root), str(moved))
    monkeypatch.chdir(tmp_path / "elsewhere")
    loaded = load_spec(moved / "r" / "evals" / "e")
    assert loaded.weights == str(moved / "r" / "checkpoints" / "step_00000005.pt")
    assert loaded.segmentation.data_root == "generated:tiny-ade20k"  # a name, not a path


def test_run_config_data_path_is_absolute_outside_the_root(tmp_path, monkeypatch):
    from nepa.data.config import DataConfig

    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    cfg = RunConfig(data=DataConfig(source="imagefolder", path="data/imagenet"))
    write_run_config(run_dir, cfg, runs_root=tmp_path / "runs")
    assert f"path: {tmp_path / 'data' / 'imagenet'}" in (run_dir / "config.yaml").read_text()
    monkeypatch.chdir("/")
    assert load_run_config(run_dir).data.path == str(tmp_path / "data" / "imagenet")
