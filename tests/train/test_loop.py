"""The engine: exact resume after SIGKILL, fallback, stop requests, NaN handling, world-size change."""

from __future__ import annotations

import json
import math
import signal
import socket
import time

import pytest
import torch
from torch.utils.data import Dataset

from nepa.train import RunStatus, Trainer
from nepa.train.metrics import read_metrics
from nepa.train.runconfig import load_run_config, write_run_config
from tests.train.runs import StopAt, final_weights, launch, make_run, subprocess_env, tiny_config


def _wait_for_step(run_dir, step, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if any(r["step"] >= step for r in read_metrics(run_dir)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended early:\n{proc.stdout.read()}")
        time.sleep(0.01)
    raise AssertionError(f"step {step} not reached in {timeout} s")


def _assert_same_weights(a, b):
    assert a["step"] == b["step"]
    for part in ("model", "ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}.{key} differs"


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_exact(tmp_path):
    reference = make_run(tmp_path / "reference", train={"max_steps": 10})
    assert launch(reference).wait(timeout=300) == 0

    killed = make_run(tmp_path / "killed", train={"max_steps": 10})
    proc = launch(killed)
    _wait_for_step(killed, 5, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "outcome.json").exists(), "the run finished before it was killed"
    resumed = launch(killed)
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()

    _assert_same_weights(final_weights(reference), final_weights(killed))
    ref, got = read_metrics(reference), read_metrics(killed)
    assert [r["step"] for r in got] == list(range(1, 11))  # each step exactly once
    assert [r["loss"] for r in got] == [r["loss"] for r in ref]  # identical losses


def test_truncated_newest_checkpoint_resumes_from_the_previous(tmp_path, caplog):
    run = make_run(tmp_path / "run", train={"max_steps": 4})
    assert Trainer(load_run_config(run), run).fit().status is RunStatus.COMPLETED
    newest = run / "checkpoints" / "step_00000004.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    cfg = tiny_config(train={"max_steps": 6})
    write_run_config(run, cfg)
    trainer = Trainer(cfg, run)
    result = trainer.fit()
    assert result.status is RunStatus.COMPLETED and result.step == 6
    assert "skipping corrupt checkpoint" in caplog.text
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]


def test_outcome_records_the_final_embedding_spread(tmp_path):
    """`nepactl ablate` reads its collapse column from here: the CLI never runs the model."""
    run = make_run(tmp_path / "run", train={"max_steps": 4})  # monitor_every (10) never reached
    assert Trainer(load_run_config(run), run).fit().status is RunStatus.COMPLETED
    outcome, last = json.loads((run / "outcome.json").read_text()), read_metrics(run)[-1]
    assert last["step"] == 4 and outcome["spread"] == last["spread"] > 0.1


def test_stop_request_saves_at_the_next_step_and_resumes(tmp_path):
    run = make_run(tmp_path / "run")
    cfg = load_run_config(run)

    result = Trainer(cfg, run, callbacks=[StopAt(3, "SIGUSR2")]).fit()
    assert result.status is RunStatus.STOPPED and result.step == 3
    assert result.checkpoint.name == "step_00000003.pt" and result.save_seconds >= 0
    assert json.loads((run / "outcome.json").read_text())["status"] == "STOPPED"
    result = Trainer(cfg, run).fit()
    assert result.status is RunStatus.COMPLETED and result.step == 8


def test_transient_nan_is_skipped(tmp_path):
    run = make_run(tmp_path / "run", train={"max_steps": 6})
    hook = lambda step, loss: loss * math.nan if step == 2 else loss  # noqa: E731
    result = Trainer(load_run_config(run), run, loss_hook=hook).fit()
    assert result.status is RunStatus.COMPLETED
    records = read_metrics(run)
    assert [r["skipped_step"] for r in records] == [False, False, True, False, False, False]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records if not r["skipped_step"])


def test_a_non_finite_gradient_with_a_finite_loss_is_skipped(tmp_path):
    run = make_run(tmp_path / "run", train={"max_steps": 3})

    def inf_gradient(step, loss):  # the loss stays finite, its gradient does not
        if step == 1:
            loss.register_hook(lambda grad: grad * math.inf)
        return loss

    result = Trainer(load_run_config(run), run, loss_hook=inf_gradient).fit()
    assert result.status is RunStatus.COMPLETED
    records = read_metrics(run)
    assert [r["skipped_step"] for r in records] == [False, True, False]
    assert math.isfinite(records[1]["loss"]) and not math.isfinite(records[1]["grad_norm"])


def test_persistent_nan_rolls_back_then_recovers_or_diverges(tmp_path):
    # Bad steps 3..6 exceed max_bad_steps=3 -> rollback to step 2; the fault was transient.
    run = make_run(tmp_path / "recovers", train={"max_steps": 8})
    calls = {"n": 0}

    def flaky(step, loss):
        calls["n"] += 1
        return loss * math.nan if 2 <= step <= 5 and calls["n"] <= 6 * 4 else loss

    result = Trainer(load_run_config(run), run, loss_hook=flaky).fit()
    assert result.status is RunStatus.COMPLETED and result.step == 8
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 9))

    run = make_run(tmp_path / "diverges", train={"max_steps": 8})
    result = Trainer(load_run_config(run), run,
                     loss_hook=lambda step, loss: loss * math.nan if step >= 2 else loss).fit()
    assert result.status is RunStatus.DIVERGED
    assert json.loads((run / "outcome.json").read_text())["status"] == "DIVERGED"


class LoggedIds(Dataset):
    """A toy dataset that records every sample id it serves, per process."""

    def __init__(self, log_path):
        self.log_path = log_path

    def __len__(self):
        return 96

    def __getitem__(self, index):
        with open(self.log_path, "a") as f:
            f.write(f"{index}\n")
        generator = torch.Generator().manual_seed(index)
        return {"image": torch.randn(3, 32, 32, generator=generator), "label": index % 10,
                "index": index}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_save_one_process_resumes_same_sample_order(tmp_path):
    import subprocess
    import sys

    run = make_run(tmp_path / "run", train={"max_steps": 6, "procs_per_node": 2},
                   checkpoint={"every_steps": 100})
    logs = tmp_path / "ids"
    logs.mkdir()
    port = str(_free_port())
    procs = [subprocess.Popen(
        [sys.executable, "-m", "tests.train.two_ranks", str(run), str(logs), "2"],
        env=subprocess_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                           MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert all("STOPPED at step 2" in out for out in outputs), outputs

    cfg = load_run_config(run)  # same global batch on one process: accumulation 2 -> 4
    import dataclasses

    write_run_config(run, dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, procs_per_node=1)))
    one = subprocess.run([sys.executable, "-m", "tests.train.two_ranks", str(run), str(logs), "0"],
                         env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0 and "COMPLETED at step 6" in one.stdout, one.stdout + one.stderr

    served = [int(line) for f in sorted(logs.iterdir()) for line in f.read_text().split()]
    # 96 samples, global batch 32 -> 3 steps per epoch; 6 steps = 2 epochs, each sample once each.
    assert sorted(served) == sorted(list(range(96)) * 2)
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 7))


class MostlyUnreadable(Dataset):
    """56 of 64 images unreadable: many micro-batches of 8 have no readable image at all."""

    def __len__(self):
        return 64

    def __getitem__(self, index):
        if index < 56:
            return None  # unreadable: collate drops and counts it
        return {"image": torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(index)),
                "label": 0, "index": index}


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    run = make_run(tmp_path / "run", train={"max_steps": 4, "global_batch": 32, "micro_batch": 8},
                   data={"num_workers": 0})
    result = Trainer(load_run_config(run), run, dataset=MostlyUnreadable()).fit()
    assert result.status is RunStatus.COMPLETED
    records = read_metrics(run)
    assert sum(r["skipped_images"] for r in records) == 2 * 56  # 2 epochs, counted per step
    assert all(math.isfinite(r["loss"]) and not r["skipped_step"] for r in records)


@pytest.mark.slow
def test_training_on_webdataset_shards_stops_and_resumes(tmp_path):
    from nepa.data import pack_shards

    shards = tmp_path / "shards"
    pack_shards("digits", shards, shard_size=400)
    run = make_run(tmp_path / "run", train={"max_steps": 6},
                   data={"source": "wds", "path": str(shards), "num_workers": 0})
    cfg = load_run_config(run)

    assert Trainer(cfg, run, callbacks=[StopAt(2)]).fit().status is RunStatus.STOPPED
    result = Trainer(cfg, run).fit()
    assert result.status is RunStatus.COMPLETED and result.step == 6
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6]
