"""The prepared GPU check: the GPU path end to end in one command, one table out (docs/gpu.md).

Rows, in order (each check runs even when an earlier one fails; exit status 1 if any fails):
  * pretraining steps in bf16, eager and compiled, for each size (default B and L): img/s and
    MFU against the GPU's dense bf16 spec peak (benchmarks/bench_train.py's table), next to a
    timm ViT doing the same work (bench_train.py's baseline: same shape, causal, same loss,
    same optimizer). The released implementation is not importable here, so the baseline is
    that timm model, not the release;
  * save / kill / resume: a tiny run is SIGKILLed right after its step-4 checkpoint, resumed in
    this process; checks the EMA shadows and the model share the GPU and training completes;
  * a short fine-tune of that run (evaluation included) on the GPU;
  * linear-probe feature extraction on the GPU (the model's device, bf16 autocast, workers);
  * with 2+ GPUs: the tiny run in 2 processes over NCCL (skipped, and said so, with one GPU).

    python benchmarks/gpu_check.py                      # one GPU: ~5 minutes (budget 8)
    python benchmarks/gpu_check.py --cpu --sizes tiny --modes eager --steps 1   # the CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

HANG_MARK = "gpu_check: checkpoint written, waiting to be killed"
KILL_AT = 4  # the step whose checkpoint the killed run has written
RUN_STEPS = 8


@dataclass
class Row:
    check: str
    config: str
    status: str  # PASS, FAIL or SKIP
    value: str = ""
    detail: str = ""


ROWS: list[Row] = []


@contextlib.contextmanager
def check(name: str, config: str):
    """Run one check; an exception becomes a FAIL row with its message, never the end of the run."""
    start = time.perf_counter()
    print(f"# {name} ({config}) ...", file=sys.stderr, flush=True)
    try:
        yield
    except Exception as exc:  # noqa: BLE001  (every failure is reported in the table)
        traceback.print_exc(file=sys.stderr)
        ROWS.append(Row(name, config, "FAIL", "", f"{type(exc).__name__}: {exc}"[:200]))
    print(f"#   {time.perf_counter() - start:.1f}s", file=sys.stderr, flush=True)


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


# ---------------------------------------------------------------------------------------------
# Pretraining throughput (bf16, eager and compiled) next to the timm baseline
# ---------------------------------------------------------------------------------------------


def throughput(size: str, mode: str, device, args) -> None:
    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_train import GPU_BATCH, TimmPretrainer, alternate, spec_peak, timm_reference, train_arm
    from flops import train_flops_per_image

    from nepa.model import build_model
    from nepa.model_config import model_config
    from nepa.train.loop import _Pretrainer

    cfg = model_config(size)
    batch = args.batch or (GPU_BATCH[size] if device.type == "cuda" else 4)
    torch.manual_seed(0)
    nepa, ref = build_model(cfg).to(device).train(), timm_reference(cfg).to(device).train()
    nepa_step, ref_step = _Pretrainer(nepa, shift=True, stop_grad=True), TimmPretrainer(ref)
    if mode == "compile":
        nepa_step, ref_step = torch.compile(nepa_step), torch.compile(ref_step)
    images = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    arms = [train_arm(name, module, model, images, args.steps, True, device)
            for name, module, model in (("NEPA", nepa_step, nepa), ("timm", ref_step, ref))]
    alternate(arms, args.repeats, warmup=args.warmup)
    nepa_ips, timm_ips = (statistics.median(a.values) for a in arms)
    expect(all(math.isfinite(v) and v > 0 for v in (nepa_ips, timm_ips)), "no throughput measured")
    peak = spec_peak(device, True, None)
    flops = train_flops_per_image(cfg)
    mfu = (lambda ips: f"{ips * flops / peak:.1%}") if peak else (lambda ips: "n/a (no spec peak)")
    ROWS.append(Row("pretrain step", f"{size} bf16 {mode}, batch {batch}", "PASS",
                    f"{nepa_ips:.0f} img/s, MFU {mfu(nepa_ips)}",
                    f"timm baseline {timm_ips:.0f} img/s, MFU {mfu(timm_ips)}; "
                    f"NEPA/timm {nepa_ips / timm_ips:.2f}"))
    del nepa, ref, nepa_step, ref_step, arms
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Save / kill / resume, fine-tune, probe features, 2 processes
# ---------------------------------------------------------------------------------------------


def tiny_run(run_dir: Path, *, procs: int = 1, workers: int = 0) -> Path:
    from nepa.data import DataConfig
    from nepa.model_config import model_config
    from nepa.train.config import CheckpointConfig, EMAConfig, OptimConfig, TrainConfig
    from nepa.train.runconfig import RunConfig, write_run_config

    cfg = RunConfig(
        name="gpu-check", model=model_config("tiny", depth=2),
        data=DataConfig(source="digits", num_workers=workers),
        optim=OptimConfig(blr=1e-3, warmup_steps=2), ema=EMAConfig(decay=0.99),
        checkpoint=CheckpointConfig(every_steps=KILL_AT, keep_last=3),
        train=TrainConfig(global_batch=32, micro_batch=16 // procs, max_steps=RUN_STEPS, seed=7,
                          procs_per_node=procs))
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)
    return run_dir


def child_train(run_dir: str, hang_at: int) -> None:
    """The child process: train the run; with `hang_at`, stop moving once that step is saved."""
    from nepa.train import Callback, Trainer
    from nepa.train.runconfig import load_run_config

    class HangAt(Callback):
        def on_checkpoint(self, trainer, step, path):
            if step == hang_at:
                print(HANG_MARK, flush=True)
                time.sleep(600)

    result = Trainer(load_run_config(run_dir), run_dir, callbacks=[HangAt()]).fit()
    print(f"rank {os.environ.get('RANK', '0')}: {result.status.value} at step {result.step}", flush=True)


def _child(run_dir: Path, hang_at: int, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, __file__, "--child-train", str(run_dir), "--hang-at", str(hang_at)],
        env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def kill_and_resume(work: Path, device, workers: int) -> None:
    from nepa.train import Callback, Trainer
    from nepa.train.metrics import read_metrics
    from nepa.train.runconfig import load_run_config

    run = tiny_run(work / "pretrain", workers=workers)
    proc = _child(run, KILL_AT)
    deadline = time.monotonic() + 300
    for line in proc.stdout:  # the child's log, until it has saved step KILL_AT
        if HANG_MARK in line or time.monotonic() > deadline:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    expect(not (run / "outcome.json").exists(), "the run ended before it was killed")

    class Seen(Callback):
        def on_start(self, trainer):
            self.step = trainer.step
            self.devices = ({str(next(trainer.model.parameters()).device)}
                            | {str(t.device) for t in trainer.ema.shadow.values()})

    seen = Seen()
    result = Trainer(load_run_config(run), run, callbacks=[seen]).fit()
    expect(seen.step == KILL_AT, f"resumed at step {seen.step}, expected {KILL_AT}")
    expect(seen.devices == {str(device)}, f"model and EMA devices {sorted(seen.devices)}, "
                                          f"expected {device}")
    expect(result.status.value == "COMPLETED" and result.step == RUN_STEPS,
           f"{result.status.value} at step {result.step}")
    losses = [r["loss"] for r in read_metrics(run)]
    expect(len(losses) == RUN_STEPS and all(map(math.isfinite, losses)), f"losses {losses}")
    ROWS.append(Row("save / kill / resume", f"tiny, SIGKILL after step {KILL_AT}", "PASS",
                    f"resumed at {seen.step}, completed {result.step}",
                    f"model and EMA on {device}; last loss {losses[-1]:.4f}"))


def finetune(work: Path, device, workers: int) -> None:
    from nepa.data import DataConfig
    from nepa.evals.common import EvalControl
    from nepa.evals.config import FinetuneConfig
    from nepa.evals.finetune import run_finetune

    cfg = FinetuneConfig(max_steps=4, epoch_steps=2, global_batch=32, micro_batch=16, eval_batch=256)
    start = time.perf_counter()
    outcome = run_finetune(work / "pretrain", cfg, DataConfig(source="digits", num_workers=workers),
                           work / "finetune", control=EvalControl())
    seconds = time.perf_counter() - start
    top1 = {(m.weights, m.detail["selected"]): m.value for m in outcome.metrics if m.name == "top1"}
    expect(outcome.status == "COMPLETED" and outcome.step == 4, f"{outcome.status} at {outcome.step}")
    expect(("ema", "final") in top1, f"metrics {sorted(top1)}")
    ROWS.append(Row("fine-tune", "tiny, 4 steps, 2 evaluations", "PASS",
                    f"top-1 raw {top1[('raw', 'final')]:.1f}, EMA {top1[('ema', 'final')]:.1f}",
                    f"{seconds:.1f}s on {device}"))


def probe_features(work: Path, device, workers: int) -> None:
    import torch

    from nepa.data import DataConfig, build_dataset, eval_transform
    from nepa.evals.config import LinProbeConfig
    from nepa.evals.linprobe import extract_features, probe_device
    from nepa.pretrained import load_pretrained

    model = load_pretrained(work / "pretrain", device=probe_device())
    on = next(model.parameters()).device
    expect(on.type == device.type, f"probe model on {on}, expected {device}")
    data = DataConfig(source="digits", num_workers=workers)
    val = build_dataset(data, "val", eval_transform(data.image_size, crop_pct=0.875))
    start = time.perf_counter()
    feats, labels = extract_features(model, val, LinProbeConfig(batch_size=128), num_workers=workers)
    seconds = time.perf_counter() - start
    expect(all(torch.isfinite(f).all() for f in feats.values()), "non-finite features")
    expect(len(labels) == len(val), f"{len(labels)} labels for {len(val)} images")
    ROWS.append(Row("probe features", f"tiny, {len(val)} val images, {workers} workers", "PASS",
                    f"{len(val) / seconds:.0f} img/s on {on}",
                    f"kinds {sorted(feats)}; incl. worker start-up"))


def two_processes(work: Path, device, force: bool) -> None:
    import torch

    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    if gpus < 2 and not force:
        ROWS.append(Row("2 processes (NCCL)", "tiny, 2 ranks", "SKIP", "",
                        f"{gpus} GPU(s) visible; needs 2"))
        return
    run = tiny_run(work / "two-procs", procs=2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [_child(run, -1, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                    MASTER_ADDR="127.0.0.1", MASTER_PORT=port) for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    codes = [p.returncode for p in procs]
    expect(codes == [0, 0], f"exit codes {codes}: {logs[0][-300:]}")
    expect(all(f"COMPLETED at step {RUN_STEPS}" in log for log in logs), "a rank did not complete")
    backend = "nccl" if device.type == "cuda" else "gloo"
    ROWS.append(Row(f"2 processes ({backend})", "tiny, 2 ranks, accumulation 2", "PASS",
                    f"both COMPLETED at step {RUN_STEPS}", ""))


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="run on the CPU (hides every GPU)")
    parser.add_argument("--sizes", nargs="*", default=["B", "L"], help="none: skip the throughput rows")
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--batch", type=int, default=None, help="per-step batch (CUDA default: B 64, L 32)")
    parser.add_argument("--steps", type=int, default=10, help="training steps per timed call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per arm")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per arm first")
    parser.add_argument("--budget-min", type=float, default=7.0,
                        help="throughput rows that would start past budget - 2 minutes are skipped")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (GPU 4, CPU 0)")
    parser.add_argument("--two-procs", action="store_true", help="run the 2-process check even "
                        "without 2 GPUs (gloo on the CPU)")
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary directory")
    parser.add_argument("--child-train", help=argparse.SUPPRESS)
    parser.add_argument("--hang-at", type=int, default=-1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch initialises CUDA; children inherit
    if args.child_train:
        child_train(args.child_train, args.hang_at)
        return 0

    import torch

    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cpu" and not args.cpu:
        parser.error("no GPU visible: pass --cpu for the CPU run")
    workers = args.workers if args.workers is not None else (4 if device.type == "cuda" else 0)
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        work = args.work_dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gpu-check-")))
        for size in args.sizes:
            for mode in args.modes:
                if (time.perf_counter() - start) / 60 > args.budget_min - 2:  # keep 2 min for the rest
                    ROWS.append(Row("pretrain step", f"{size} bf16 {mode}", "SKIP", "",
                                    f"time budget ({args.budget_min} min) reached"))
                    continue
                with check("pretrain step", f"{size} {mode}"):
                    throughput(size, mode, device, args)
        with check("save / kill / resume", "tiny"):
            kill_and_resume(work, device, workers)
        with check("fine-tune", "tiny"):
            finetune(work, device, workers)
        with check("probe features", "tiny"):
            probe_features(work, device, workers)
        with check("2 processes", "tiny"):
            two_processes(work, device, args.two_procs)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"gpu_check on {name} ({torch.__version__}), {time.perf_counter() - start:.0f}s; "
          "pretraining baseline: timm ViT of the same shape (benchmarks/bench_train.py), the "
          "released implementation is not importable here")
    print()
    print("| check | config | status | result | detail |")
    print("|---|---|---|---|---|")
    for row in ROWS:
        print(f"| {row.check} | {row.config} | {row.status} | {row.value} | {row.detail} |")
    return 1 if any(row.status == "FAIL" for row in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
