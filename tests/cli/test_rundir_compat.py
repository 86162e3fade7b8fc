"""A run directory written before run directories were versioned (format 1, committed fixture)
is still listed, resumed (to completion, from its checkpoint) and evaluated."""

from __future__ import annotations

import json
import tarfile
import time

from typer.testing import CliRunner

from nepa import rundir
from nepactl.app import app
from tests.conftest import FIXTURES

runner = CliRunner()


def test_a_format1_run_is_listed_resumed_and_evaluated(tmp_path):
    root = tmp_path / "runs"
    with tarfile.open(FIXTURES / "rundir-format1" / "old-format.tar.gz") as archive:
        archive.extractall(root, filter="data")
    run_dir = root / "old-format"
    assert rundir.read_run_info(run_dir).format == 1

    listed = runner.invoke(app, ["status", "--json", "--runs-root", str(root)])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert (row["run"], row["state"], row["step"], row["total"]) == ("old-format", "CANCELLED", 13, 60)

    resumed = runner.invoke(app, ["resume", "old-format", "--runs-root", str(root)])
    assert resumed.exit_code == 0, resumed.output
    assert rundir.read_run_info(run_dir).format == rundir.FORMAT_VERSION
    assert (run_dir / "code.format1" / "nepactl" / "job.py").is_file()  # the old snapshot is kept
    assert (run_dir / "code" / "nepactl" / "trainjob.py").is_file()
    deadline = time.time() + 240
    while (rundir.read_json(run_dir / rundir.OUTCOME) or {}).get("status") != "COMPLETED":
        assert time.time() < deadline, "".join(p.read_text() for p in (run_dir / "submitit").glob("*.err"))[-3000:]
        time.sleep(0.5)
    steps = [r["step"] for r in rundir.read_jsonl(run_dir / rundir.METRICS)]
    assert steps == list(range(1, 61))  # from step 10's checkpoint: every step once
    starts = [e for e in rundir.read_jsonl(run_dir / rundir.LEDGER) if e["event"] == "start"]
    assert len(starts) == 2

    evaluated = runner.invoke(app, ["eval", "old-format", "--tasks", "linprobe", "--cluster", "debug",
                                    "--set", "linprobe.epochs=3", "--set", "linprobe.blocks=[0]",
                                    "--runs-root", str(root)])
    assert evaluated.exit_code == 0, evaluated.output
    result = json.loads((run_dir / "evals" / "linprobe-step60-seed0" / "result.json").read_text())
    assert result["checkpoint"]["step"] == 60
