"""Every listing command takes --format table|json|csv|md from one output layer: JSON parses,
CSV has its header row, Markdown is a table, and the rich table shows the rows."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

from nepactl import runs
from nepactl.app import app
from nepactl.output import Format
from nepactl.submit import Submission

runner = CliRunner()


def _finished_run(root: Path, name: str = "base") -> None:
    """A completed pretraining run as status and results read it (no job, no torch)."""
    run = root / name
    run.mkdir(parents=True)
    runs.write_json(run / runs.RUN_INFO, {"name": name, "task": "pretrain", "size": "tiny", "nodes": 1,
                                          "procs_per_node": 1, "executor": "local", "created": time.time(),
                                          "max_steps": 4})
    runs.append_ledger(run, "submit", job_id="999999", executor="local", cause="new run")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": -0.1 * s, "time": s}) + "\n"
                                               for s in range(1, 5)))
    runs.write_json(run / "outcome.json", {"status": "COMPLETED", "step": 4, "total_steps": 4})


def _status(root):
    return ["status", "--runs-root", str(root)], "base"


def _runs(root):
    return ["runs", "--runs-root", str(root)], "base"


def _results(root):
    return ["results", "--no-plots", "--runs-root", str(root)], "base"


def _pretrain(root, monkeypatch):
    monkeypatch.setattr("nepactl.launch.launch_run",
                        lambda rendered, root, **_: Submission(root / rendered.run.name, "4242", "debug"))
    return ["pretrain", "--cluster", "debug", "--name", "p1", "--runs-root", str(root)], "4242"


def _eval(root, monkeypatch):
    planned = [SimpleNamespace(name="linprobe-step4-seed0", action="submit"),
               SimpleNamespace(name="finetune-step4-seed0", action="skip (done)")]
    monkeypatch.setattr("nepactl.evaluate.plan_evals",
                        lambda **_: SimpleNamespace(target=root / "base", evals=planned))
    monkeypatch.setattr("nepactl.evaluate.submit_evals", lambda plan: [(planned[0], "77"), (planned[1], None)])
    return ["eval", "base", "--cluster", "debug", "--runs-root", str(root)], "linprobe-step4-seed0"


def _ablate(root, monkeypatch):
    monkeypatch.setattr("nepactl.ablate.run.pretrain_members", lambda plan, **_: None)
    monkeypatch.setattr("nepactl.ablate.run.evaluate_members", lambda plan: None)
    return ["ablate", "--cluster", "debug", "--variants", "baseline,no-shift", "--seeds", "0", "--name", "o",
            "--runs-root", str(root)], "no-shift"


LISTINGS = {"status": _status, "runs": _runs, "results": _results, "pretrain": _pretrain, "eval": _eval,
            "ablate": _ablate}


@pytest.mark.parametrize("fmt", [f.value for f in Format])
@pytest.mark.parametrize("command", sorted(LISTINGS))
def test_every_listing_command_takes_every_format(command, fmt, tmp_path, monkeypatch):
    root = tmp_path / "runs"
    _finished_run(root)
    make = LISTINGS[command]
    args, expected = make(root, monkeypatch) if command in ("pretrain", "eval", "ablate") else make(root)
    result = runner.invoke(app, [*args, "--format", fmt])
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert expected in out
    if fmt == "json":
        rows = json.loads(out)
        assert isinstance(rows, list) and rows and all(isinstance(r, dict) for r in rows)
    elif fmt == "csv":
        table = list(csv.reader(io.StringIO(out)))
        assert len(table) >= 2 and all(len(r) == len(table[0]) for r in table)
        assert expected not in table[0]  # a header row of field names, then the data
    elif fmt == "md":
        lines = out.splitlines()
        assert lines[0].startswith("| ") and set(lines[1]) <= {"|", "-"}


def test_json_alias_and_bad_formats_are_refused_by_typer(tmp_path):
    root = tmp_path / "runs"
    _finished_run(root)
    alias = runner.invoke(app, ["status", "--json", "--runs-root", str(root)])
    assert alias.exit_code == 0 and json.loads(alias.stdout)[0]["state"] == "COMPLETED"
    bad = runner.invoke(app, ["runs", "--format", "xml", "--runs-root", str(root)])
    assert bad.exit_code == 2 and "'xml' is not one of" in bad.output
    short = runner.invoke(app, ["results", "-f", "md", "--runs-root", str(root)])  # -f is logs --follow only
    assert short.exit_code == 2 and "No such option" in short.output


def test_json_of_a_diverged_loss_stays_strict(tmp_path):
    root = tmp_path / "runs"
    _finished_run(root)
    with open(root / "base" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 5, "loss": float("nan"), "time": 5}) + "\n")
    result = runner.invoke(app, ["status", "--format", "json", "--runs-root", str(root)])
    assert result.exit_code == 0 and "NaN" not in result.stdout
    assert json.loads(result.stdout)[0]["loss"] is None
