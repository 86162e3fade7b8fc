"""nepactl.submit.submit_array: several run directories as one job array, ledgers as submit_job writes them.
(On the loopback SLURM cluster: tests/slurm/test_nepactl.py -k ablate.)"""

from __future__ import annotations

import functools
from pathlib import Path

from nepactl import runs
from nepactl.render import render
from nepactl.submit import fill_run_dir, submit_array


def _touch(path: Path) -> str:
    path.write_text("ran")
    return str(path)


def test_one_array_submits_every_run_and_writes_each_ledger(tmp_path):
    root = tmp_path / "runs"
    dirs = [runs.create_run(root, name, lambda d, n=name: fill_run_dir(
        d, render(size="tiny", cluster="debug", name=n), "pretrain", "tiny")) for name in ("a", "b")]
    jobs = [functools.partial(_touch, d.resolve() / "ran") for d in dirs]
    submitted = submit_array(dirs, jobs, causes=["new run", "retry-failed"], parent=tmp_path / "arrays",
                             job_name="t")
    assert [s.run_dir for s in submitted] == [d.resolve() for d in dirs]
    assert all((d / "ran").is_file() for d in dirs)  # the debug executor ran each task
    (array_dir,) = (tmp_path / "arrays").iterdir()
    assert (array_dir / "code" / "nepactl" / "submit.py").is_file()  # one snapshot for the array
    for run_dir, submission, cause in zip(dirs, submitted, ["new run", "retry-failed"], strict=True):
        (event,) = runs.read_ledger(run_dir)
        assert set(event) == {"time", "event", "job_id", "executor", "cause"}  # as submit_job writes it
        assert (event["event"], event["job_id"], event["executor"], event["cause"]) == (
            "submit", submission.job_id, "debug", cause)
