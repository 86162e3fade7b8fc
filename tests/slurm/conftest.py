"""Fixtures for tests against a real loopback SLURM cluster (see cluster.py).

    from tests.slurm.cluster import wait_submitit

    def test_something(slurm_cluster, monkeypatch, tmp_path):
        slurm_cluster.activate(monkeypatch)        # SLURM_CONF for submitit and the CLI
        ex = slurm_cluster.submitit_executor(tmp_path / "jobs")
        job = ex.submit(fn, ...)                   # fn importable, or pickled by value
        assert wait_submitit(job, timeout=60) == ...
        slurm_cluster.wait_state(job.job_id, ["COMPLETED"], source="sacct")

Subprocesses get the cluster with ``env=slurm_cluster.env``. Every test in this folder is
marked ``slurm``. The clusters start once per session, on first use; jobs a test leaves
queued or running are cancelled after it. A session fails (never skips) when the SLURM
packages are missing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.slurm.cluster import ClusterSpec, SlurmCluster, missing_binaries

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.slurm)


@pytest.fixture(autouse=True)
def _empty_queue_after_each_test(request):
    """A test leaves no job behind for the next one on the shared session cluster."""
    yield
    for name in ("slurm_cluster", "slurm_cluster_no_sacct"):
        if name in request.fixturenames:
            request.getfixturevalue(name).cancel_all()


def _cluster(tmp_path_factory, name: str, spec: ClusterSpec) -> Iterator[SlurmCluster]:
    missing = missing_binaries(spec.accounting)
    if missing:
        pytest.fail(
            f"the SLURM test cluster needs {', '.join(missing)}, which are not installed: "
            "run `bash .ci/install-system-deps` as root (or `make system-deps`)",
            pytrace=False,
        )
    cluster = SlurmCluster(tmp_path_factory.mktemp(name), spec).start()
    try:
        yield cluster
    finally:
        left = cluster.stop()
    assert not left, f"SLURM test cluster {cluster.base}: processes left behind: {left}"


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    """A cluster with accounting (sacct works): partitions ``low`` (default) and ``high``."""
    yield from _cluster(tmp_path_factory, "slurm", ClusterSpec())


@pytest.fixture(scope="session")
def slurm_cluster_no_sacct(tmp_path_factory) -> Iterator[SlurmCluster]:
    """The same cluster without slurmdbd: ``sacct`` fails, squeue/scontrol work."""
    yield from _cluster(tmp_path_factory, "slurm-nosacct", ClusterSpec(accounting=False))
