"""`nepactl doctor`: one line per check, and every check has a case where it fails."""

from __future__ import annotations

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


def test_unknown_or_down_partition_fails():
    from nepactl.discover import Partition

    up = Partition("gpu", True, "up", 2880, 2, 64, 512000, 8, "h100", ("idle",))
    assert check_partition("gpu", [up]).ok
    check = check_partition("cpu", [up])
    assert not check.ok and "'cpu' unknown to sinfo" in check.detail and "gpu" in check.detail
    down = Partition("gpu", True, "down", 2880, 2, 64, 512000, 8, "h100", ("idle",))
    drained = Partition("gpu", True, "up", 2880, 2, 64, 512000, 8, "h100", ("drain", "down*"))
    assert "is down" in check_partition("gpu", [down]).detail
    assert not check_partition("gpu", [drained]).ok


def test_sinfo_answers_are_parsed():
    from nepactl.discover import parse_gres, parse_time

    assert parse_gres("gpu:a100:8(S:0-1),nvme:1") == (8, "a100")
    assert parse_gres("gpu:8") == (8, None) and parse_gres("(null)") == (0, None)
    assert [parse_time(t) for t in ("infinite", "2-00:00:00", "4:00:00", "30:00", "30")] == [
        None, 2880, 240, 30, 30]


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

    checks = check_probe(ClusterConfig(executor="local", time_min=5), tmp_path, str(tmp_path))
    assert [c.name for c in checks] == ["job python", "runs root from a compute node", "data from a compute node"]
    assert all(c.ok for c in checks) and "torch" in checks[0].detail and "nepa" in checks[0].detail
    (broken,) = check_probe(ClusterConfig(executor="local", time_min=5, python="/nonexistent/python"),
                            tmp_path)
    assert not broken.ok and broken.name == "probe job"
