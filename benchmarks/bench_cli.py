"""CLI latency: `nepactl --help`, the L/8-node dry run and `nepactl status` over N runs, medians.

Targets: --help < 0.25 s; `pretrain --size L --nodes 8 --dry-run` on a generated ImageFolder
< 1.0 s; status over 1,000 runs < 0.5 s, growing no worse than linearly. Each measurement is a
fresh process of the installed `nepactl` entry point (what a user waits for), repeated.

    .venv/bin/python benchmarks/bench_cli.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEPACTL = [str(Path(sys.executable).parent / "nepactl")]  # the installed entry point


def make_runs(root: Path, count: int) -> None:
    for i in range(count):
        d = root / f"run-{i:05d}"
        (d / "heartbeats").mkdir(parents=True)
        (d / "run.json").write_text(json.dumps({"name": d.name, "task": "pretrain", "size": "B",
                                                "nodes": 1, "procs_per_node": 8, "executor": "local",
                                                "created": time.time(), "max_steps": 1000}))
        (d / "ledger.jsonl").write_text(json.dumps({"event": "submit", "job_id": str(10**7 + i),
                                                    "executor": "local", "time": time.time()}) + "\n")
        with open(d / "metrics.jsonl", "w") as f:
            for step in range(1, 201):
                f.write(json.dumps({"step": step, "loss": -0.5, "time": time.time()}) + "\n")
        (d / "outcome.json").write_text(json.dumps({"status": "COMPLETED", "step": 1000, "total_steps": 1000}))


def make_imagefolder(root: Path, classes: int = 10, per_class: int = 20) -> Path:
    """A small ImageFolder (train and val) of 8x8 PNGs."""
    from PIL import Image

    for split in ("train", "val"):
        for c in range(classes):
            directory = root / split / f"class{c:03d}"
            directory.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (8, 8), (c * 20, i, 0)).save(directory / f"{i}.png")
    return root


def timed(args: list[str], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(NEPACTL + args, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rows = [("--help", timed(["--help"], args.repeats))]
    python_only = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_only.append(time.perf_counter() - start)
    rows.insert(0, ("python -c pass (floor)", python_only))
    with tempfile.TemporaryDirectory() as tmp:
        data = make_imagefolder(Path(tmp) / "imagefolder")
        rows.append(("pretrain --size L --nodes 8 --dry-run (ImageFolder)", timed(
            ["pretrain", "--size", "L", "--nodes", "8", "--cluster", "slurm", "--dry-run", "--data", str(data),
             "--set", "train.global_batch=128", "--set", "train.micro_batch=2",  # 200 images
             "--runs-root", str(Path(tmp) / "runs")], args.repeats)))
    for count in (10, 100, 1000):
        with tempfile.TemporaryDirectory() as tmp:
            make_runs(Path(tmp), count)
            rows.append((f"status --json, {count} runs",
                         timed(["status", "--json", "--runs-root", tmp], args.repeats)))
    print("| command | median s | min-max s |")
    print("|---|---|---|")
    for label, times in rows:
        print(f"| {label} | {statistics.median(times):.3f} | {min(times):.3f}-{max(times):.3f} |")
    s10, s1000 = statistics.median(rows[3][1]), statistics.median(rows[5][1])
    print(f"status growth 10 -> 1000 runs: +{s1000 - s10:.3f} s "
          f"({(s1000 - s10) / 990 * 1000:.2f} ms per run)")


if __name__ == "__main__":
    main()
