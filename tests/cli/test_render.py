"""Rendering: precedence, strictness, derived values, golden configs and sbatch scripts."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from nepa.config import ConfigError
from nepactl.app import app
from nepactl.render import render
from nepactl.submit import dry_run_script

GOLDEN = Path(__file__).parent / "golden"
IMAGENET = ("data.source=imagefolder", "data.path=/data/imagenet")  # rendered only, never read
runner = CliRunner()


@pytest.mark.parametrize(("size", "nodes"), [("B", 1), ("B", 4), ("L", 4), ("L", 8)])
def test_golden_rendered_config_and_sbatch_script(size, nodes):
    rendered = render(size=size, cluster="slurm", nodes=nodes, name=f"golden-{size}-{nodes}",
                      sets=("cluster.python=python3", *IMAGENET))
    text = yaml.safe_dump(rendered.spec(), sort_keys=False)
    script = dry_run_script(rendered, Path("/runs"))
    golden_config = GOLDEN / f"pretrain-{size}-{nodes}n.yaml"
    golden_script = GOLDEN / f"pretrain-{size}-{nodes}n.sbatch"
    if os.environ.get("NEPA_UPDATE_GOLDEN"):
        golden_config.write_text(text)
        golden_script.write_text(script)
    assert text == golden_config.read_text()
    assert script == golden_script.read_text()
    assert f"#SBATCH --nodes={nodes}" in script and "#SBATCH --signal=USR2@120" in script
    assert "srun --unbuffered" in script and "--kill-on-bad-exit=1" in script  # a failed rank ends all
    assert rendered.run.train.world_size == nodes * 8


def test_precedence_size_task_cluster_file_set(tmp_path):
    user = tmp_path / "user.yaml"
    user.write_text("train:\n  max_steps: 77\n  seed: 5\noptim:\n  blr: 0.002\n")
    rendered = render(size="tiny", cluster="local", files=(user,), sets=("train.seed=9",))
    assert rendered.run.model.dim == 128  # size preset
    assert rendered.run.ema.decay == 0.995  # size template
    assert rendered.run.objective.shift  # task template
    assert rendered.cluster.executor == "local"  # cluster profile
    assert rendered.run.train.max_steps == 77 and rendered.run.optim.blr == 0.002  # user file
    assert rendered.run.train.seed == 9  # --set wins
    assert rendered.layers[-1] == "--set train.seed=9"


def test_derived_values_are_computed_from_their_inputs():
    rendered = render(size="B", cluster="slurm", nodes=2, gpus_per_node=8, sets=IMAGENET)
    assert rendered.run.train.accumulation == 2  # 4096 / (16 x 128)
    assert rendered.derived["accumulation"].startswith("2 = global_batch 4096 / (world_size 16 x")
    assert rendered.derived["lr"] == "0.0048 = blr 0.0003 x global_batch 4096 / 256"


@pytest.mark.parametrize(("content", "message"), [
    ("train:\n  max_stepz: 3\n", r"train.max_stepz \(in .*bad.yaml\): unknown key \(did you mean 'max_steps'\?\)"),
    ("trian:\n  max_steps: 3\n", r"trian \(in .*bad.yaml\): unknown key \(did you mean 'train'\?\)"),
    ("train:\n  max_steps: many\n", r"train.max_steps: expected an integer, got 'many'"),
    ("train: [1, 2\n", r"bad.yaml: line 2 is not valid YAML"),
    ("- a\n- b\n", r"bad.yaml: expected a mapping"),
    ("cluster:\n  partiton: gpu\n", r"cluster.partiton \(in .*\): unknown key \(did you mean 'partition'\?\)"),
    ("train:\n  global_batch: 100\n", r"train.global_batch: 100 is not divisible"),
])
def test_bad_user_files_are_one_clear_error(tmp_path, content, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    with pytest.raises(ConfigError, match=message):
        render(size="tiny", cluster="local", files=(bad,))


def test_unknown_names_list_the_choices():
    with pytest.raises(ConfigError, match=r"unknown cluster profile 'lcoal' \(did you mean 'local'\?\)"):
        render(size="tiny", cluster="lcoal")
    with pytest.raises(ConfigError, match="unknown model size 'XL'"):
        render(size="XL", cluster="local")
    with pytest.raises(ConfigError, match=r"trian \(in --set trian.max_steps=3\): unknown key"):
        render(size="tiny", cluster="local", sets=("trian.max_steps=3",))


def test_dry_run_prints_everything_and_creates_nothing(tmp_path):
    result = runner.invoke(app, ["pretrain", "--size", "B", "--nodes", "2", "--cluster", "slurm",
                                 "--name", "dry", "--dry-run", "--runs-root", str(tmp_path / "runs"),
                                 "--set", "data.source=digits", "--set", "train.global_batch=1024",
                                 "--set", "train.micro_batch=8"])
    assert result.exit_code == 0, result.output
    assert "#SBATCH --nodes=2" in result.output and "accumulation: 8 = global_batch 1024" in result.output
    assert "steps_per_epoch: 1 = train images 1,497 // global_batch 1024" in result.output
    assert "dim: 768" in result.output
    assert not (tmp_path / "runs").exists()


def test_impossible_batch_geometry_suggests_a_micro_batch():
    with pytest.raises(ConfigError, match=r"train.global_batch: 4096 is not divisible by world size "
                                          r"256 x micro_batch 64; set train.micro_batch to 16"):
        render(size="L", cluster="slurm", nodes=32)


def test_cli_errors_are_one_line_without_traceback(tmp_path):
    result = runner.invoke(app, ["pretrain", "--size", "tiny", "--cluster", "local",
                                 "--set", "train.max_stepz=3", "--runs-root", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: train.max_stepz (in --set")
    assert list(tmp_path.iterdir()) == []


def test_local_executor_asks_submitit_for_the_profile_gpus(tmp_path, monkeypatch):
    """Without gpus_per_node submitit's local executor exports CUDA_VISIBLE_DEVICES='' and a
    workstation's GPUs are hidden from the job."""
    from nepactl.cluster import ClusterConfig, make_executor

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    executor = make_executor(ClusterConfig(executor="local", gpus_per_node=2, tasks_per_node=2), tmp_path,
                             nodes=1, job_name="x", code_dir=None)
    assert executor.parameters["gpus_per_node"] == 2 and executor.parameters["visible_gpus"] == ()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    executor = make_executor(ClusterConfig(executor="local", gpus_per_node=2, tasks_per_node=2), tmp_path,
                             nodes=1, job_name="x", code_dir=None)
    assert executor.parameters["visible_gpus"] == (3, 5)  # the user's restriction is kept


def test_dry_runs_and_render_never_import_torch(tmp_path):
    """Rendering, validating and planning are torch-free: pretrain --dry-run of L on 8 nodes with
    an ImageFolder (its data checked and counted), render, and eval --dry-run of a run."""
    import subprocess
    import sys
    import tarfile

    from PIL import Image

    from tests.conftest import FIXTURES

    for split in ("train", "val"):
        for c in range(2):
            (tmp_path / "data" / split / f"c{c}").mkdir(parents=True)
            for i in range(40):  # 80 images: more than one global batch of 64
                Image.new("RGB", (8, 8)).save(tmp_path / "data" / split / f"c{c}" / f"{i}.png")
    root = tmp_path / "runs"
    with tarfile.open(FIXTURES / "rundir-format1" / "old-format.tar.gz") as archive:
        archive.extractall(root, filter="data")
    data = ["--set", "data.source=imagefolder", "--set", f"data.path={tmp_path / 'data'}"]
    commands = [["pretrain", "--size", "L", "--nodes", "8", "--gpus-per-node", "8", "--cluster", "slurm",
                 "--dry-run", *data, "--set", "train.global_batch=64", "--set", "train.micro_batch=1",
                 "--set", "train.max_steps=10", "--runs-root", str(root)],
                ["render", "--size", "B", "--nodes", "4", "--gpus-per-node", "8", "--cluster", "slurm", *data],
                ["eval", "old-format", "--tasks", "linprobe,finetune", "--dry-run", "--cluster", "local",
                 "--runs-root", str(root)]]
    for args in commands:
        code = ("import sys\nfrom nepactl.app import app\n"
                f"try:\n    app({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
                "assert 'torch' not in sys.modules, 'torch imported'\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (args[0], done.stdout[-1500:], done.stderr[-1500:])
        assert "resolved config" in done.stdout or "# linprobe-step10-seed0: submit" in done.stdout
