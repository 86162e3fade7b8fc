"""benchmarks/gpu_check.py, the prepared GPU check, run end to end on the CPU with tiny sizes."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.train.runs import REPO, subprocess_env


@pytest.mark.slow
def test_gpu_check_runs_every_check_on_the_cpu(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--cpu", "--sizes", "tiny",
         "--modes", "eager", "--steps", "1", "--repeats", "1", "--warmup", "0",
         "--work-dir", str(tmp_path)],
        env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in proc.stdout.splitlines()
            if line.startswith("| ") and " | " in line}
    for check in ("pretrain step", "save / kill / resume", "fine-tune", "probe features"):
        assert "| PASS |" in rows[check], proc.stdout
    assert "timm baseline" in rows["pretrain step"] and "MFU" in rows["pretrain step"]
    assert "resumed at 4, completed 8" in rows["save / kill / resume"]
    assert "model and EMA on cpu" in rows["save / kill / resume"]
    assert "| SKIP |" in rows["2 processes (NCCL)"]  # no GPU here: said, not hidden
