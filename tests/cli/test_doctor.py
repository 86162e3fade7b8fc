"""`nepactl doctor`: one line per check, and every check has a case where it fails."""

from __future__ import annotations

import os
import stat

from typer.testing import CliRunner

from nepactl.app import app
from nepactl.doctor import check_binaries, check_data, check_partition, check_runs_root

runner = CliRunner()


def test_all_checks_pass_locally(tmp_path):
    result = runner.invoke(app, ["doctor", "--cluster", "local", "--runs-root", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert all(line.startswith("ok") for line in lines) and any("digits" in line for line in lines)


def test_missing_slurm_binaries_fail(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    checks = check_binaries("slurm")
    assert [c.ok for c in checks] == [False] * 5
    assert "sbatch on PATH" == checks[0].name and "not found" in checks[0].detail


def test_unknown_partition_fails(monkeypatch, tmp_path):
    fake = tmp_path / "sinfo"
    fake.write_text("#!/bin/sh\nexit 0\n")  # knows no partition: empty output
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    check = check_partition("gpu", "slurm")
    assert not check.ok and "'gpu' unknown to sinfo" in check.detail


def test_unwritable_runs_root_fails(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    check = check_runs_root(blocker / "runs")  # a path below a regular file
    assert not check.ok and "not writable" in check.detail


def test_unreadable_data_fails(tmp_path):
    from nepa.data import DataConfig

    check = check_data(DataConfig(source="imagefolder", path=str(tmp_path / "missing")))
    assert not check.ok and "missing" in check.detail


def test_doctor_exits_non_zero_on_a_failed_check(tmp_path):
    result = runner.invoke(app, ["doctor", "--cluster", "local", "--runs-root", str(tmp_path / "f" / "x")])
    assert result.exit_code == 0
    (tmp_path / "g").write_text("")
    result = runner.invoke(app, ["doctor", "--cluster", "local", "--runs-root", str(tmp_path / "g" / "x")])
    assert result.exit_code == 1 and "FAIL runs root" in result.output


def test_probe_job_reports_success_and_failure(tmp_path):
    from nepactl.cluster import ClusterConfig
    from nepactl.doctor import check_probe

    ok = check_probe(ClusterConfig(executor="local", time_min=5), tmp_path)
    assert ok.ok and "torch" in ok.detail and "nepa" in ok.detail
    broken = check_probe(ClusterConfig(executor="local", time_min=5, python="/nonexistent/python"),
                         tmp_path)
    assert not broken.ok
