"""Checkpoint files: atomic, weights-only, verified on load, with fallback past corrupt ones."""

from __future__ import annotations

import math

import pytest
import torch

from nepa import checkpoint, rundir
from nepa.checkpoint import CheckpointError


def _save_step(run, step, value):
    directory = run / "checkpoints"
    path = checkpoint.save(directory / f"step_{step:08d}.pt", {"step": step, "w": torch.full((4,), value)})
    rundir.write_pointer(directory, path.name)
    return path


def test_save_leaves_no_temporary_files_and_loads_weights_only(tmp_path):
    path = checkpoint.save(tmp_path / "a.pt", {"w": torch.ones(3), "meta": {"step": 3, "name": "x"}})
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    payload = checkpoint.load(path)
    assert payload["meta"] == {"step": 3, "name": "x"} and torch.equal(payload["w"], torch.ones(3))


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = checkpoint.save(tmp_path / "a.pt", {"w": torch.ones(3)})

    def explode(f):
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        rundir.atomic_write(path, explode)
    assert torch.equal(checkpoint.load(path)["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="unreadable"):
        checkpoint.load(path)


def test_not_a_checkpoint_and_newer_format(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "plain.pt")
    with pytest.raises(CheckpointError, match="not a nepa checkpoint"):
        checkpoint.load(tmp_path / "plain.pt")
    torch.save({"format": checkpoint.FORMAT, "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="upgrade nepa"):
        checkpoint.load(tmp_path / "new.pt")


def test_newest_valid_falls_back_past_a_truncated_checkpoint(tmp_path):
    _save_step(tmp_path, 10, 1.0)
    newest = _save_step(tmp_path, 20, 2.0)
    newest.write_bytes(newest.read_bytes()[:100])  # truncated mid-write by a crash
    warnings = []
    path, payload = checkpoint.load_newest_valid(tmp_path, warn=warnings.append)
    assert payload["step"] == 10 and path.name == "step_00000010.pt"
    assert len(warnings) == 1 and "step_00000020.pt" in warnings[0]


def test_no_loadable_checkpoint_fails_loudly(tmp_path):
    for step in (1, 2):
        _save_step(tmp_path, step, 0.0).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no checkpoint of .* loads"):
        checkpoint.load_newest_valid(tmp_path)
    assert checkpoint.load_newest_valid(tmp_path / "empty") is None


def test_sigkill_while_writing_leaves_the_previous_checkpoint_loadable(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    directory = tmp_path / "checkpoints"
    good = checkpoint.save(directory / "step_00000001.pt", {"step": 1, "w": torch.ones(4)})
    rundir.write_pointer(directory, good.name)
    # A writer that is slow enough (~0.5 GiB) to be killed in the middle of torch.save.
    code = (
        "import sys, torch; from pathlib import Path; from nepa import checkpoint, rundir\n"
        "d = Path(sys.argv[1]); print('writing', flush=True)\n"
        "p = checkpoint.save(d / 'step_00000002.pt', {'step': 2, 'w': torch.zeros(128, 2**20)})\n"
        "rundir.write_pointer(d, p.name)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(directory)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    deadline = time.time() + 60
    while not list(directory.glob(".step_00000002.pt.*")) and time.time() < deadline:
        time.sleep(0.005)  # wait until the temporary file exists: the write is under way
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (directory / "step_00000002.pt").exists()  # never under the final name
    path, payload = checkpoint.load_newest_valid(tmp_path)
    assert path == good and payload["step"] == 1


@pytest.fixture
def small_disk(tmp_path):
    """An 8 MiB tmpfs: a disk that fills up for real (root mounts it; unmounted afterwards)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_random_bytes_in_the_middle_are_caught_by_the_checksums(tmp_path):
    _save_step(tmp_path, 10, 1.0)
    newest = checkpoint.save(tmp_path / "checkpoints" / "step_00000020.pt",
                             {"step": 20, "w": torch.full((2**18,), 2.0)})
    rundir.write_pointer(tmp_path / "checkpoints", newest.name)
    data = bytearray(newest.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = torch.randint(0, 256, (64,), dtype=torch.uint8).numpy().tobytes()
    newest.write_bytes(bytes(data))
    assert checkpoint.load(newest, verify=False)["step"] == 20  # the structure alone looks fine
    with pytest.raises(CheckpointError, match=r"corrupt: checksum mismatch in w"):
        checkpoint.load(newest)
    warnings = []
    path, payload = checkpoint.load_newest_valid(tmp_path, warn=warnings.append)
    assert payload["step"] == 10 and len(warnings) == 1 and "checksum mismatch" in warnings[0]


def test_changed_metadata_is_caught_too(tmp_path):
    path = checkpoint.save(tmp_path / "a.pt", {"step": 1234567, "w": torch.ones(4)})
    data = path.read_bytes()
    assert data.count((1234567).to_bytes(4, "little")) == 1  # the pickled int, in data.pkl
    path.write_bytes(data.replace((1234567).to_bytes(4, "little"), (7654321).to_bytes(4, "little")))
    with pytest.raises(CheckpointError, match=r"checksum mismatch in <meta>"):
        checkpoint.load(path)


def test_checkpoints_written_before_checksums_still_load(tmp_path):
    """The committed format-1 run directory holds checkpoints of format version 1."""
    import tarfile

    from tests.conftest import FIXTURES

    with tarfile.open(FIXTURES / "rundir-format1" / "old-format.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    path, payload = checkpoint.load_newest_valid(tmp_path / "old-format")
    assert payload["format_version"] == 1 and "checksums" not in payload and payload["step"] == 10
    resaved = checkpoint.load(checkpoint.save(tmp_path / "new.pt", payload))
    assert resaved["format_version"] == checkpoint.FORMAT_VERSION == 2 and "checksums" in resaved


def test_non_finite_checkpoints_are_skipped_when_finite_ones_are_required(tmp_path):
    _save_step(tmp_path, 10, 1.0)
    directory = tmp_path / "checkpoints"
    bad = checkpoint.save(directory / "step_00000020.pt", {"step": 20, "model": {"w": torch.tensor([1.0, math.nan])}})
    rundir.write_pointer(directory, bad.name)
    warnings = []
    _, payload = checkpoint.load_newest_valid(tmp_path, warn=warnings.append, finite=True)
    assert payload["step"] == 10 and "non-finite values in model.w" in warnings[0]
    assert checkpoint.nonfinite({"optimizer": {"state": {0: {"exp_avg": torch.tensor([math.inf])}}}}) == [
        "optimizer.state.0.exp_avg"]


def test_a_full_disk_during_the_write_is_one_line_and_keeps_the_previous(small_disk):
    good = checkpoint.save(small_disk / "step_00000001.pt", {"w": torch.ones(2**19)})  # 2 MiB
    with pytest.raises(CheckpointError) as caught:
        checkpoint.save(small_disk / "step_00000002.pt", {"w": torch.ones(2**21)})  # 8 MiB
    message = str(caught.value)
    assert "\n" not in message and str(small_disk / "step_00000002.pt") in message
    assert "(disk full)" in message and "enforce fail" not in message and "iostream" not in message
    assert "needs about 0.01 GiB" in message and "GiB free" in message and "free disk space" in message
    assert sorted(p.name for p in small_disk.iterdir()) == [good.name]  # no temporary file left
    assert torch.equal(checkpoint.load(good)["w"], torch.ones(2**19))
