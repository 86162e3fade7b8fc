"""Cluster profiles and data defaults: the user file, precedence, refusals, derived steps."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from nepa.config import ConfigError
from nepactl.app import app
from nepactl.cluster import ClusterConfig
from nepactl.render import TEMPLATES, derive, render

runner = CliRunner()
SITE = {"executor", "partition", "gpus_per_node", "tasks_per_node", "cpus_per_task", "mem_gb", "setup"}


def _user_file(tmp_path: Path, **sections) -> Path:
    path = Path(os.environ["XDG_CONFIG_HOME"]) / "nepactl" / "config.yaml"  # isolated by conftest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(sections))
    return path


def _folder(root: Path, per_class: int = 3) -> Path:
    for split in ("train", "val"):
        for label in ("a", "b"):
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(root / split / label / f"{i}.png")
    return root


def test_the_documented_template_states_the_code_defaults():
    documented = yaml.safe_load((TEMPLATES / "clusters" / "slurm.yaml").read_text())["cluster"]
    fields = {f.name: f for f in dataclasses.fields(ClusterConfig)}
    assert set(documented) == set(fields), "every field is documented in templates/clusters/slurm.yaml"
    defaults = dataclasses.asdict(ClusterConfig())
    for name, value in documented.items():
        if name not in SITE:
            expected = list(defaults[name]) if isinstance(defaults[name], tuple) else defaults[name]
            assert value == expected, f"cluster.{name}: template {value!r}, code {defaults[name]!r}"


def test_profile_precedence_flag_env_user_file_auto(tmp_path, monkeypatch):
    assert render(size="tiny").layers[3].endswith("clusters/auto.yaml")
    user = _user_file(tmp_path, cluster={"executor": "local", "time_min": 77})
    rendered = render(size="tiny")
    assert rendered.layers[3] == str(user) and rendered.cluster.time_min == 77
    monkeypatch.setenv("NEPA_CLUSTER", "debug")
    assert render(size="tiny").cluster.executor == "debug"
    assert render(size="tiny", cluster="local").cluster.executor == "local"


def test_gpu_sizes_on_slurm_without_gpus_are_refused_in_one_line(tmp_path, monkeypatch):
    data = str(_folder(tmp_path / "imgs"))
    with pytest.raises(ConfigError, match=r"size L needs GPUs but the cluster profile .* asks for none; "
                                          r"create one with `nepactl cluster init`"):
        render(size="L", cluster="slurm", sets=("cluster.gpus_per_node=0", "cluster.tasks_per_node=1"),
               data=data)
    on_purpose = render(size="L", cluster="slurm", data=data, nodes=8,
                        sets=("cluster.gpus_per_node=0", "cluster.tasks_per_node=1", "cluster.device=cpu"))
    assert on_purpose.cluster.device == "cpu"
    result = runner.invoke(app, ["pretrain", "--size", "L", "--nodes", "8", "--cluster", "auto",
                                 "--dry-run", "--data", data, "--runs-root", str(tmp_path / "runs")],
                           env={"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"})
    if "sbatch" in (subprocess.run(["sh", "-c", "command -v sbatch"], capture_output=True, text=True).stdout):
        assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
        assert "needs GPUs" in result.output


def test_gpu_sizes_need_real_data_tiny_keeps_digits(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match=r"size B trains on real data: pass --data PATH"):
        render(size="B", cluster="slurm")
    assert render(size="tiny", cluster="local").run.data.source == "digits"
    folder = _folder(tmp_path / "imgs")
    monkeypatch.setenv("NEPA_DATA", str(folder))
    rendered = render(size="B", cluster="slurm")
    assert (rendered.run.data.source, rendered.run.data.path) == ("imagefolder", str(folder))
    assert rendered.run.data.image_size == rendered.run.model.image_size == 224
    assert render(size="tiny", cluster="local").run.data.source == "digits"  # tiny ignores the default
    monkeypatch.delenv("NEPA_DATA")
    _user_file(tmp_path, data={"source": "hf", "path": "/data/imagenet-hf"})
    assert render(size="B", cluster="slurm").run.data.source == "hf"
    tiny = render(size="tiny", cluster="local", data=str(folder))  # --data wins, crops at the model's size
    assert tiny.run.data.source == "imagefolder" and tiny.run.data.image_size == 32


def test_workers_default_from_the_profile():
    assert render(size="B", cluster="slurm", sets=("data.source=digits",)).run.data.num_workers == 9
    assert render(size="B", cluster="slurm", sets=("data.source=digits", "cluster.cpus_per_task=4")
                  ).run.data.num_workers == 3
    assert render(size="tiny", cluster="local").run.data.num_workers == 0  # the tiny recipe says so


def test_imagenet_steps_warmup_and_wall_time_are_derived():
    rendered = render(size="L", cluster="slurm", nodes=8, sets=("data.source=digits",))
    derived = derive(rendered.run, rendered.cluster, "L", train_images=1_281_167)
    assert derived["steps_per_epoch"].startswith("312 = train images 1,281,167 // global_batch 4096")
    assert derived["total_steps"].startswith("499,200 = epochs 1600 x steps_per_epoch 312")
    assert derived["warmup_steps"].startswith("12,480 = warmup_fraction 0.025")
    assert "64 GPUs" in derived["wall_time"] and "assumed for size L" in derived["wall_time"]


def test_dry_run_counts_the_data_and_fails_as_a_submit_would(tmp_path):
    folder = _folder(tmp_path / "imgs", per_class=40)
    root = tmp_path / "runs"
    args = ["pretrain", "--size", "tiny", "--cluster", "local", "--data", str(folder), "--name", "d",
            "--runs-root", str(root), "--set", "train.max_steps=null", "--set", "train.epochs=2"]
    result = runner.invoke(app, [*args, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "steps_per_epoch: 1 = train images 80 // global_batch 64" in result.output
    assert "total_steps: 2 = epochs 2 x steps_per_epoch 1" in result.output
    assert not root.exists()
    small = runner.invoke(app, [*args, "--set", "train.global_batch=128", "--set", "train.micro_batch=128",
                                "--dry-run"])
    assert small.exit_code == 2 and "fewer than one global batch (128)" in small.output
    (root / "d").mkdir(parents=True)
    taken = runner.invoke(app, [*args, "--dry-run"])
    assert taken.exit_code == 2 and "run 'd' already exists" in taken.output


def test_job_python_follows_setup_and_container():
    from nepactl.cluster import sbatch_script

    base = ClusterConfig(executor="slurm", setup=("source ~/venvs/nepa/bin/activate",))
    script = sbatch_script(base, Path("/r/x/submitit"), nodes=1, job_name="x", code_dir=Path("/r/x/code"))
    assert "srun --unbuffered" in script and " python3 -u -m submitit.core._submit" in script
    sif = dataclasses.replace(base, container="/images/nepa.sif", gpus_per_node=8, tasks_per_node=8)
    script = sbatch_script(sif, Path("/r/x/submitit"), nodes=1, job_name="x", code_dir=Path("/r/x/code"))
    assert "apptainer exec --nv --bind /r/x /images/nepa.sif python3 -u -m submitit" in script
    pyxis = dataclasses.replace(base, container="nvcr.io#nvidia/pytorch:24.05-py3")
    script = sbatch_script(pyxis, Path("/r/x/submitit"), nodes=1, job_name="x", code_dir=Path("/r/x/code"))
    assert "--container-image=nvcr.io#nvidia/pytorch:24.05-py3' --container-mounts=/r/x python3" in script


def test_cluster_init_proposes_from_sinfo_and_writes_the_user_file(tmp_path, monkeypatch):
    from nepactl import discover

    parts = [discover.Partition("cpu", True, "up", 60, 4, 32, 64000, 0, None, ("idle",)),
             discover.Partition("gpu", False, "up", 4320, 2, 96, 1024000, 8, "h100", ("mix",))]
    monkeypatch.setattr(discover, "partitions", lambda timeout=15: parts)
    monkeypatch.setattr(discover, "associations", lambda timeout=15: (["proj"], ["normal"]))
    result = runner.invoke(app, ["cluster", "init"])
    assert result.exit_code == 0, result.output
    written = yaml.safe_load(Path(result.output.split("wrote ")[1].split(";")[0]).read_text())["cluster"]
    assert written | {"python": None} == {
        "executor": "slurm", "partition": "gpu", "account": "proj", "gpus_per_node": 8, "tasks_per_node": 8,
        "cpus_per_task": 12, "mem_gb": 900, "time_min": 2880, "python": None}
    assert render(size="tiny", sets=("train.micro_batch=8",)).cluster.partition == "gpu"  # found by all
    again = runner.invoke(app, ["cluster", "init"])
    assert again.exit_code == 2 and "--force" in again.output


def test_dry_run_and_render_import_no_torch(tmp_path):
    code = ("import sys; from typer.testing import CliRunner; from nepactl.app import app; "
            f"r = CliRunner().invoke(app, ['pretrain', '--size', 'tiny', '--cluster', 'local', '--dry-run', "
            f"'--runs-root', {str(tmp_path)!r}]); assert r.exit_code == 0, r.output; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
