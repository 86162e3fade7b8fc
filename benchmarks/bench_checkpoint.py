"""Checkpoint save speed vs the disk's sequential write speed (dd with fsync), same size; and
what the per-tensor checksums cost.

Builds the full training state of a NEPA size (model + float32 EMA + AdamW moments), saves it
through nepa's atomic checkpoint writer, and alternates with `dd conv=fsync` of the same number
of bytes in the same directory. Prints medians, spreads and the ratio (target >= 0.5).

`--checksums` instead times save and load with checksums on and off in paired, interleaved
runs (the order flips every pair, so drift and caches hit both alike) and prints the median of
the per-pair ratios (target: at most 1.10 for each).

    .venv/bin/python benchmarks/bench_checkpoint.py --size B --repeats 5
    .venv/bin/python benchmarks/bench_checkpoint.py --size B --repeats 7 --checksums
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from nepa.model import build_model
from nepa.train.checkpoints import CheckpointManager
from nepa.train.config import CheckpointConfig, EMAConfig, OptimConfig
from nepa.train.ema import EMA
from nepa.train.optim import build_optimizer


def training_state(size: str) -> dict:
    model = build_model(size)
    optimizer = build_optimizer(model, OptimConfig())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # materialise the AdamW moments
    return {"model": model.state_dict(), "ema": EMA(model, EMAConfig()).state_dict(),
            "optimizer": optimizer.state_dict(), "step": 1}


def time_dd(directory: Path, nbytes: int) -> float:
    target = directory / "dd.bin"
    block = 16 * 2**20
    start = time.perf_counter()
    subprocess.run(["dd", "if=/dev/zero", f"of={target}", f"bs={block}",
                    f"count={max(1, nbytes // block)}", "conv=fsync", "status=none"], check=True)
    elapsed = time.perf_counter() - start
    target.unlink()
    return elapsed


def time_checksums(directory: Path, state: dict, repeats: int) -> dict[str, list[float]]:
    """Seconds per save and load, checksums on and off, in pairs whose order alternates."""
    from nepa import checkpoint

    times: dict[str, list[float]] = {k: [] for k in ("save_on", "save_off", "load_on", "load_off")}
    checkpoint.load(checkpoint.save(directory / "warm.pt", state))  # warm-up: allocator, threads
    for i in range(repeats):
        for on in ((True, False) if i % 2 == 0 else (False, True)):
            tag = "on" if on else "off"
            path = directory / f"{tag}.pt"
            start = time.perf_counter()
            checkpoint.save(path, state, checksum=on)
            times[f"save_{tag}"].append(time.perf_counter() - start)
            start = time.perf_counter()
            checkpoint.load(path, verify=on)
            times[f"load_{tag}"].append(time.perf_counter() - start)
    return times


def report_checksums(size: str, times: dict[str, list[float]], nbytes: int) -> None:
    print(f"size {size}: checkpoint {nbytes / 2**30:.2f} GiB, {len(times['save_on'])} pairs, "
          f"cores {os.cpu_count()}")
    print("| step | checksums off, median s | on, median s | median of paired ratios | max ratio |")
    print("|---|---|---|---|---|")
    for step in ("save", "load"):
        on, off = times[f"{step}_on"], times[f"{step}_off"]
        ratios = [a / b for a, b in zip(on, off, strict=True)]
        print(f"| {step} | {statistics.median(off):.3f} | {statistics.median(on):.3f} | "
              f"{statistics.median(ratios):.3f} | {max(ratios):.3f} |")
    print("target: median paired ratio <= 1.10 for save and load")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="B")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="directory on the disk to measure (default: a temp dir under ./)")
    parser.add_argument("--checksums", action="store_true", help="time checksums on vs off instead of dd")
    args = parser.parse_args()
    state = training_state(args.size)
    if args.checksums:
        with tempfile.TemporaryDirectory(dir=args.dir or ".") as tmp:
            times = time_checksums(Path(tmp), state, args.repeats)
            nbytes = (Path(tmp) / "on.pt").stat().st_size
        report_checksums(args.size, times, nbytes)
        return
    with tempfile.TemporaryDirectory(dir=args.dir or ".") as tmp:
        directory = Path(tmp)
        manager = CheckpointManager(directory, CheckpointConfig(keep_last=1))
        path = manager.save(0, state)  # warm-up; also gives the byte count
        nbytes = path.stat().st_size
        ours, dd = [], []
        for i in range(args.repeats):
            start = time.perf_counter()
            manager.save(i + 1, state)
            ours.append(time.perf_counter() - start)
            dd.append(time_dd(directory, nbytes))
    gib = nbytes / 2**30
    mo, md = statistics.median(ours), statistics.median(dd)
    print(f"size {args.size}: checkpoint {gib:.2f} GiB, {args.repeats} repeats, cores {os.cpu_count()}")
    print("| writer | median s | min-max s | GiB/s |")
    print("|---|---|---|---|")
    print(f"| nepa checkpoint (atomic, fsync) | {mo:.2f} | {min(ours):.2f}-{max(ours):.2f} | {gib / mo:.2f} |")
    print(f"| dd conv=fsync (same bytes) | {md:.2f} | {min(dd):.2f}-{max(dd):.2f} | {gib / md:.2f} |")
    print(f"ratio (checkpoint speed / dd speed): {md / mo:.2f}  (target >= 0.5)")


if __name__ == "__main__":
    main()
