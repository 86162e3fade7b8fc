"""Peak training-step memory per image, with and without gradient checkpointing.

Each configuration runs in a fresh subprocess, which
  1. builds the model, nepa's step module and AdamW (`build_optimizer`), materialises the
     gradients and the AdamW moments (they stay allocated: `zero_grad(set_to_none=False)`), so
     the resting training state is in memory;
  2. records that state's size and resets the peak: on CUDA `torch.cuda.reset_peak_memory_stats`
     after reading `memory_allocated`; on CPU the current RSS, then the kernel's peak-RSS
     counter is reset (`echo 5 > /proc/self/clear_refs`, which resets VmHWM);
  3. runs training steps (forward + NEPA loss, backward, AdamW) and reads the peak
     (`max_memory_allocated`, or VmHWM).
The step's memory is peak minus resting state: activations kept for backward plus transients.
On CPU glibc's malloc is told to return every large block to the kernel at once
(MALLOC_MMAP_THRESHOLD_ fixed at 128 KiB), so RSS follows live tensors.

    .venv/bin/python benchmarks/bench_memory.py --sizes B L --batch 4
    python benchmarks/bench_memory.py --device cuda --sizes B L --batch 32 --bf16
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

MIB = 2**20


def rss_bytes() -> int:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args: argparse.Namespace) -> None:
    from nepa.model import build_model
    from nepa.train.config import OptimConfig
    from nepa.train.loop import _Pretrainer
    from nepa.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(args.size).to(device).train()
    model.set_grad_checkpointing(args.ckpt)
    step_module = _Pretrainer(model, shift=True, stop_grad=True)
    optimizer = build_optimizer(model, OptimConfig())
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # materialise the AdamW moments
    optimizer.zero_grad(set_to_none=False)
    size = model.cfg.image_size
    images = torch.randn(args.batch, model.cfg.in_chans, size, size, device=device)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        state = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        state = rss_bytes()
        if not reset_peak_rss():
            raise SystemExit("cannot reset the peak RSS (/proc/self/clear_refs); needs Linux")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)
    start = time.perf_counter()
    for _ in range(args.steps):
        with autocast:
            loss, _ = step_module(images)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = peak_rss_bytes()
    print(json.dumps({"state": state, "peak": peak, "seconds": time.perf_counter() - start,
                      "params": sum(p.numel() for p in model.parameters())}))


def run_child(args: argparse.Namespace, size: str, ckpt: bool) -> dict:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    cmd = [sys.executable, __file__, "--child", "--sizes", size, "--batch", str(args.batch),
           "--steps", str(args.steps), "--device", args.device, "--threads", str(args.threads)]
    cmd += ["--ckpt"] if ckpt else []
    cmd += ["--bf16"] if args.bf16 else []
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["B", "L"])
    parser.add_argument("--batch", type=int, default=4, help="images per step")
    parser.add_argument("--steps", type=int, default=1, help="training steps per configuration")
    parser.add_argument("--repeats", type=int, default=1, help="subprocesses per configuration")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.size = args.sizes[0]
        child(args)
        return

    where = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"CPU, {args.threads} threads"
    how = "max_memory_allocated" if args.device.startswith("cuda") else "peak RSS (VmHWM) of a fresh process"
    print(f"{where}, torch {torch.__version__}, {'bf16 autocast' if args.bf16 else 'fp32'}, "
          f"batch {args.batch}, {args.steps} step(s); memory: {how}")
    print()
    print("| size | grad checkpointing | training state MiB | step peak over state MiB "
          "| per image MiB | saving vs off | step s |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        per_image = {}
        for ckpt in (False, True):
            runs = [run_child(args, size, ckpt) for _ in range(args.repeats)]
            extra = min(r["peak"] - r["state"] for r in runs)
            per_image[ckpt] = extra / args.batch / MIB
            saving = "-" if not ckpt else f"{1 - per_image[True] / per_image[False]:.0%}"
            seconds = min(r["seconds"] for r in runs) / args.steps
            print(f"| {size} | {'on' if ckpt else 'off'} | {runs[0]['state'] / MIB:.0f} | "
                  f"{extra / MIB:.0f} | {per_image[ckpt]:.0f} | {saving} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
