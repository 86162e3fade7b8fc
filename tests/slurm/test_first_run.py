"""A new user's first real run on the loopback SLURM cluster with fake GPUs (gpu:8 in GRES):
cluster init, doctor (a DOWN partition, an unreachable controller, CUDA not visible), the dry run
and the submission of a tiny run on 2 "GPUs" with cluster.device: cpu, on a generated ImageFolder.

The CLI runs in-process after ``cluster.activate(monkeypatch)``; HOME and XDG_CONFIG_HOME are
temporary (tests/conftest.py), so `cluster init` writes a throwaway user profile.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from nepactl.app import app
from tests.slurm.cluster import _free_port_block, wait_for

pytestmark = pytest.mark.slow

runner = CliRunner()
SMALL = ["--set", "model.depth=2", "--set", "train.global_batch=16", "--set", "train.micro_batch=8"]


def _user_profile() -> Path:
    return Path(os.environ["XDG_CONFIG_HOME"]) / "nepactl" / "config.yaml"


def _folder(root: Path, per_class: int = 12) -> Path:
    for split in ("train", "val"):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (36, 36), (i * 20, 100 if label == "cat" else 0, 0)).save(
                    root / split / label / f"{i}.png")
    return root


def _init(partition: str = "low") -> dict:
    result = runner.invoke(app, ["cluster", "init", "--partition", partition])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(_user_profile().read_text())


def _doctor(*args: str) -> tuple[int, dict[str, str]]:
    result = runner.invoke(app, ["doctor", *args])
    lines = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(ok|FAIL)\s+([^:]+): (.*)", line)
        if match:
            lines[match.group(2)] = f"{match.group(1)} {match.group(3)}"
    lines["_output"] = result.output
    return result.exit_code, lines


def test_init_finds_the_gpus_and_doctor_reports_cuda_not_visible(slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    profile = _init()["cluster"]
    assert (profile["executor"], profile["partition"], profile["gpus_per_node"]) == ("slurm", "low", 8)
    assert profile["tasks_per_node"] == 8 and profile["cpus_per_task"] == 1  # 4 CPUs, one per task
    code, checks = _doctor("--gpus-per-node", "2", "--runs-root", str(tmp_path / "runs"), "--probe", *SMALL)
    assert code == 1, checks
    assert checks["scheduler"].startswith("ok") and checks["partition"].startswith("ok low: up")
    assert checks["GPUs per node"] == "ok 2 of gpu:8" and checks["accounting"].startswith("ok")
    assert checks.get("job python", "").startswith("ok") and "torch" in checks["job python"], checks["_output"]
    assert checks["CUDA"].startswith("FAIL CUDA not visible: the job was given 2 GPU(s)"), checks
    assert checks["runs root from a compute node"].startswith("ok")
    code, checks = _doctor("--gpus-per-node", "16", "--runs-root", str(tmp_path / "runs"), *SMALL)
    assert checks["GPUs per node"].startswith("FAIL the profile asks 16, nodes of 'low' have gpu:8")


def test_doctor_fails_on_a_down_partition_and_an_unreachable_controller(slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    down = tmp_path / "down.yaml"
    down.write_text(yaml.safe_dump({"cluster": {"executor": "slurm", "partition": "down"}}))
    code, checks = _doctor("--cluster", str(down), "--runs-root", str(tmp_path / "runs"))
    assert code == 1 and checks["partition"].startswith("FAIL 'down' is down"), checks

    dead = tmp_path / "etc" / "slurm.conf"  # the same cluster, its controller on a closed port
    dead.parent.mkdir()
    port = _free_port_block(1)
    dead.write_text(re.sub(r"SlurmctldPort=\d+", f"SlurmctldPort={port}", slurm_cluster.conf.read_text()))
    (dead.parent / "gres.conf").write_text((slurm_cluster.conf.parent / "gres.conf").read_text())
    monkeypatch.setenv("SLURM_CONF", str(dead))
    t0 = time.monotonic()
    code, checks = _doctor("--cluster", str(down), "--runs-root", str(tmp_path / "runs"))
    assert code == 1 and checks["scheduler"].startswith("FAIL `sinfo"), checks
    assert "Unable to contact slurm controller" in checks["scheduler"] or "did not answer" in checks["scheduler"]
    assert "partition" not in checks and time.monotonic() - t0 < 60


def test_first_run_init_dry_run_submit_on_two_fake_gpus_on_cpus(slurm_cluster, monkeypatch, tmp_path):
    slurm_cluster.activate(monkeypatch)
    data = _folder(tmp_path / "imagefolder")
    doc = _init()
    doc["cluster"]["device"] = "cpu"  # the fake GPUs cannot run CUDA: CPUs on purpose
    _user_profile().write_text(yaml.safe_dump(doc))
    root = tmp_path / "runs"
    args = ["pretrain", "--size", "tiny", "--gpus-per-node", "2", "--data", str(data), "--name", "first",
            "--runs-root", str(root), *SMALL, "--set", "train.max_steps=null", "--set", "train.epochs=3",
            "--set", "checkpoint.every_steps=2"]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "steps_per_epoch: 1 = train images 24 // global_batch 16" in dry.stdout
    assert "total_steps: 3 = epochs 3 x steps_per_epoch 1" in dry.stdout
    assert "#SBATCH --gpus-per-node=2" in dry.stdout and "#SBATCH --ntasks-per-node=2" in dry.stdout
    assert "source: imagefolder" in dry.stdout and "image_size: 32" in dry.stdout
    assert not root.exists()

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    run = root / "first"
    job_id = json.loads((run / "ledger.jsonl").read_text().splitlines()[0])["job_id"]
    assert "gres/gpu=2" in slurm_cluster.scontrol_show_job(job_id).get("TRES", "") or \
        "gpu:2" in json.dumps(slurm_cluster.scontrol_show_job(job_id))

    def completed():
        status = runner.invoke(app, ["status", "first", "--json", "--runs-root", str(root)])
        row = json.loads(status.stdout)[0]
        assert row["state"] not in ("FAILED", "CANCELLED"), (row, _logs(run))
        return row if row["state"] == "COMPLETED" else None
    row = wait_for(completed, 150, lambda: f"not COMPLETED; log:\n{_logs(run)[-3000:]}", interval=1)
    assert row["step"] == 3 and row["geometry"] == "1x2"
    assert "world_size=2" in _logs(run) or "world 2" in _logs(run) or row["step"] == 3


def _logs(run: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((run / "submitit").glob("*_0_log.*")))
