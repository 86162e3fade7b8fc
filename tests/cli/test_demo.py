"""`nepactl demo` and the README's first command: the bf16 demo is its own run, trained under CPU
bf16 autocast; `make demo` runs in a fresh copy exactly as a user runs it (at --quick scale; the
full demo takes minutes: README and benchmarks/README.md)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from nepa.train.runconfig import load_run_config
from nepactl.demo import demo_name, pretrain_demo
from nepactl.runs import read_json

REPO = Path(__file__).resolve().parents[2]


def test_bf16_demo_is_its_own_run_and_pretrains_under_autocast(tmp_path):
    assert demo_name("fp32") == "demo" and demo_name("bf16") == "demo-bf16"
    run_dir = pretrain_demo(tmp_path, steps=2, fresh=False, precision="bf16")
    assert run_dir == tmp_path / "demo-bf16" and not (tmp_path / "demo").exists()
    assert load_run_config(run_dir).train.precision == "bf16"
    assert read_json(run_dir / "outcome.json")["status"] == "COMPLETED"
    logs = "".join(p.read_text() for p in (run_dir / "submitit").glob("*_log.err"))
    assert "precision=bf16" in logs, logs[-2000:]


DEMO_ROWS = ("probe, mean of patches", "probe, block 3 mean", "probe, last token", "fine-tune top-1 (EMA)",
             "ADE20K mIoU")


def _readme_first_command() -> list[str]:
    readme = (REPO / "README.md").read_text()
    block = readme.split("```bash\n", 1)[1].split("```", 1)[0]
    return shlex.split(block.splitlines()[0].split("#", 1)[0])


def _checkout_copy(destination: Path) -> None:
    """The project's files as a fresh clone has them (plus uncommitted work), nothing ignored."""
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
                            capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)  # mtimes kept: make sees the venv as up to date


def test_readme_first_command_in_a_fresh_copy_of_the_checkout(tmp_path):
    """The README's first command, as a user runs it: a fresh copy as the working directory, the
    default relative runs root, no NEPA_* variables; the existing venv and --quick through make."""
    assert sys.prefix != sys.base_prefix, "run the suite from the project's venv (make test)"
    command = _readme_first_command()
    assert command == ["make", "demo"], command
    project = tmp_path / "project"
    _checkout_copy(project)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEPA_", "OMP_", "PYTEST_"))}
    done = subprocess.run([*command, f"VENV={sys.prefix}", "DEMO_ARGS=--quick"], cwd=project, env=env,
                          capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "pip install" not in done.stdout  # the venv was reused, not rebuilt for the copy
    for label in DEMO_ROWS:  # each row: NEPA and random-init numbers, then the gap
        row = next((line for line in done.stdout.splitlines() if line.strip().startswith(label)), None)
        assert row is not None, done.stdout
        numbers = re.findall(r"[-+]?\d+\.\d", row[row.index(label) + len(label):])
        assert len(numbers) >= 3, row
    run_dir = project / "runs" / "demo-quick"
    assert (run_dir / "outcome.json").is_file()
    specs = sorted((run_dir / "evals").glob("*/eval.yaml"))
    assert len(specs) == 6
    weights = {yaml.safe_load(p.read_text())["weights"] for p in specs}
    assert weights == {"../../checkpoints/step_00000040.pt"}, weights
