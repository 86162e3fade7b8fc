"""CLI latency: `nepactl --help`, the L/8-node dry run and `nepactl status` over N runs, medians.

Targets: --help < 0.25 s; `pretrain --size L --nodes 8 --dry-run` on a generated ImageFolder
< 1.0 s; status over 1,000 runs < 0.5 s, growing no worse than linearly. Each measurement is a
fresh process of the installed `nepactl` entry point (what a user waits for), repeated.

    .venv/bin/python benchmarks/bench_cli.py --repeats 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NEPACTL = [str(Path(sys.executable).parent / "nepactl")]  # the installed entry point


def make_runs(root: Path, count: int, running_pid: int) -> None:
    """A mix as a cluster user has it: a third COMPLETED local runs, a third RUNNING local runs
    (their controller alive: `running_pid`), a third RUNNING SLURM runs (answered by the stub
    squeue on PATH: the scheduler's own latency is left out)."""
    for i in range(count):
        d = root / f"run-{i:05d}"
        (d / "heartbeats").mkdir(parents=True)
        kind = ("completed", "local", "slurm")[i % 3]
        job_id = str(running_pid) if kind == "local" else str(10**7 + i)
        executor = "slurm" if kind == "slurm" else "local"
        (d / "run.json").write_text(json.dumps({"name": d.name, "task": "pretrain", "size": "B",
                                                "nodes": 1, "procs_per_node": 8, "executor": executor,
                                                "created": time.time(), "max_steps": 1000, "format": 2}))
        (d / "ledger.jsonl").write_text(json.dumps({"event": "submit", "job_id": job_id,
                                                    "executor": executor, "time": time.time()}) + "\n")
        with open(d / "metrics.jsonl", "w") as f:
            for step in range(1, 201):
                f.write(json.dumps({"step": step, "loss": -0.5, "time": time.time()}) + "\n")
        if kind == "completed":
            (d / "outcome.json").write_text(json.dumps({"status": "COMPLETED", "step": 1000, "total_steps": 1000}))
        else:
            for rank in range(8):
                (d / "heartbeats" / f"rank{rank}.json").write_text(json.dumps({"time": time.time(), "step": 200}))


STUB_SQUEUE = """#!/bin/sh
# squeue -h -r -o "%i %T" -j ID,ID,...: every asked id is RUNNING
while [ $# -gt 0 ]; do [ "$1" = "-j" ] && echo "$2" | tr ',' '\\n' | sed 's/$/ RUNNING/'; shift; done
"""


def stub_scheduler(directory: Path) -> dict[str, str]:
    """An environment whose PATH finds the stub squeue (and a sacct that is never needed)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in (("squeue", STUB_SQUEUE), ("sacct", "#!/bin/sh\nexit 0\n")):
        (directory / name).write_text(text)
        (directory / name).chmod(0o755)
    return {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


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


def timed(args: list[str], repeats: int, env: dict[str, str] | None = None) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(NEPACTL + args, capture_output=True, check=True, env=env)
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
    # A live process whose command line names submitit: what status takes for a local controller.
    controller = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)", "submitit"])
    try:
        for count in (10, 100, 1000):
            with tempfile.TemporaryDirectory() as tmp:
                make_runs(Path(tmp) / "runs", count, controller.pid)
                env = stub_scheduler(Path(tmp) / "bin")
                rows.append((f"status --json, {count} runs (1/3 done, 1/3 local, 1/3 SLURM running)",
                             timed(["status", "--json", "--runs-root", str(Path(tmp) / "runs")], args.repeats, env)))
    finally:
        controller.kill()
    print("| command | median s | min-max s |")
    print("|---|---|---|")
    for label, times in rows:
        print(f"| {label} | {statistics.median(times):.3f} | {min(times):.3f}-{max(times):.3f} |")
    s10, s1000 = statistics.median(rows[3][1]), statistics.median(rows[5][1])
    print(f"status growth 10 -> 1000 runs: +{s1000 - s10:.3f} s "
          f"({(s1000 - s10) / 990 * 1000:.2f} ms per run)")


if __name__ == "__main__":
    main()
