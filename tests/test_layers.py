"""The architecture's contracts (.importlinter): layers inside nepactl, nepa below nepactl and
free of the CLI stack, torch-free config modules, no cycles in nepa."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(root / ".importlinter"), "--no-cache"], cwd=root,
                          capture_output=True, text=True, timeout=300, env={"PATH": "/usr/bin:/bin"} | {
                              "PYTHONPATH": str(root)})


def test_the_project_keeps_every_contract():
    done = _lint(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 5 kept, 0 broken." in done.stdout


def test_an_upward_import_inside_a_function_breaks_the_layers(tmp_path):
    for part in ("nepa", "nepactl", ".importlinter"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / part)
    with open(tmp_path / "nepactl" / "runs.py", "a") as f:
        f.write("\n\ndef _upward():\n    from nepactl.launch import launch_run\n\n    return launch_run\n")
    with open(tmp_path / "nepa" / "rundir.py", "a") as f:
        f.write("\n\ndef _heavy():\n    import torch\n\n    return torch\n")
    done = _lint(tmp_path)
    assert done.returncode != 0
    assert "nepactl.runs -> nepactl.launch" in done.stdout, done.stdout[-3000:]
    assert "nepa.rundir -> torch" in done.stdout, done.stdout[-3000:]
