"""Checkpoint files: atomic, weights-only, verified on load, with fallback past corrupt ones."""

from __future__ import annotations

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
