"""Expected wall time of a 1600-epoch ImageNet-1K pretraining run on 8/32/64 GPUs (an estimate).

Per-GPU throughput is either given (`--per-gpu-img-s B=2800 L=800`, e.g. measured with
bench_train.py on the target GPU) or derived as spec peak x assumed MFU / FLOPs per image, with
FLOPs per image counted as in bench_train.py (benchmarks/flops.py). Data-parallel cost is a
ring all-reduce of the gradients every step: 2 (N-1)/N x gradient bytes / per-GPU bus
bandwidth, NVLink inside a node, InfiniBand once the job spans nodes; DDP overlaps it with
backward (taken as 2/3 of the step's compute) up to `--overlap` of that time, and only the rest
is added to the step. Not modelled: data loading, EMA updates, evaluations, checkpoints,
start-up and requeues, stragglers.

    .venv/bin/python benchmarks/scaling.py
    .venv/bin/python benchmarks/scaling.py --mfu 0.3 --grad-dtype bf16
    .venv/bin/python benchmarks/scaling.py --per-gpu-img-s B=2500 L=750
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import train_flops_per_image  # noqa: E402

from nepa.model import build_model  # noqa: E402
from nepa.model_config import model_config  # noqa: E402

IMAGENET_TRAIN = 1_281_167


def param_count(size: str) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(size).parameters())


def estimate(size: str, gpus: int, img_s: float, args: argparse.Namespace) -> dict:
    params = param_count(size)
    steps_per_epoch = args.images // args.global_batch  # full global batches only
    per_gpu_batch = args.global_batch / gpus
    compute = per_gpu_batch / img_s
    grad_bytes = params * (4 if args.grad_dtype == "fp32" else 2)
    bandwidth = (args.nvlink_gbs if gpus <= args.gpus_per_node else args.ib_gbs) * 1e9
    allreduce = 2 * (gpus - 1) / gpus * grad_bytes / bandwidth
    exposed = max(0.0, allreduce - args.overlap * compute * 2 / 3)
    step = compute + exposed
    total = args.epochs * steps_per_epoch * step
    return {"params": params, "per_gpu_batch": per_gpu_batch, "compute": compute,
            "allreduce": allreduce, "exposed": exposed, "step": step, "total": total,
            "efficiency": compute / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["B", "L"])
    parser.add_argument("--gpus", nargs="+", type=int, default=[8, 32, 64])
    parser.add_argument("--per-gpu-img-s", nargs="*", default=[], metavar="SIZE=IMG_S",
                        help="measured training images/s per GPU; default: derived from --peak-tflops x --mfu")
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 spec peak (H100/H200 SXM)")
    parser.add_argument("--mfu", type=float, default=0.4, help="assumed model FLOP utilisation")
    parser.add_argument("--global-batch", type=int, default=4096)
    parser.add_argument("--epochs", type=int, default=1600)
    parser.add_argument("--images", type=int, default=IMAGENET_TRAIN, help="training images per epoch")
    parser.add_argument("--grad-dtype", choices=["fp32", "bf16"], default="fp32",
                        help="all-reduced gradient dtype (fp32: DDP default with bf16 autocast)")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--nvlink-gbs", type=float, default=400.0, help="intra-node bus bandwidth per GPU, GB/s")
    parser.add_argument("--ib-gbs", type=float, default=50.0, help="inter-node bandwidth per GPU, GB/s")
    parser.add_argument("--overlap", type=float, default=0.8,
                        help="fraction of backward time that can hide the all-reduce")
    args = parser.parse_args()
    given = {k: float(v) for k, _, v in (item.partition("=") for item in args.per_gpu_img_s)}

    print(f"{args.epochs} epochs x {args.images:,} images, global batch {args.global_batch}, "
          f"{args.images // args.global_batch} steps/epoch; gradients {args.grad_dtype}; "
          f"NVLink {args.nvlink_gbs:g} GB/s (<= {args.gpus_per_node} GPUs), IB {args.ib_gbs:g} GB/s per GPU; "
          f"overlap {args.overlap:g} of backward")
    print()
    print("| size | GPUs | per-GPU img/s | source | per-GPU batch | compute s/step | all-reduce s/step "
          "| exposed s/step | scaling eff. | time to 1600 ep. | GPU-hours |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        flops = train_flops_per_image(model_config(size))
        if size in given:
            img_s, source = given[size], "given"
        else:
            img_s, source = args.peak_tflops * 1e12 * args.mfu / flops, f"estimate: {args.mfu:g} MFU"
        for gpus in args.gpus:
            e = estimate(size, gpus, img_s, args)
            hours = e["total"] / 3600
            print(f"| {size} | {gpus} | {img_s:.0f} | {source} | {e['per_gpu_batch']:.0f} | "
                  f"{e['compute']:.3f} | {e['allreduce']:.3f} | {e['exposed']:.3f} | "
                  f"{e['efficiency']:.0%} | {hours:.1f} h ({hours / 24:.1f} d) | {hours * gpus:,.0f} |")
    print()
    for size in args.sizes:
        flops = train_flops_per_image(model_config(size))
        print(f"{size}: {param_count(size) / 1e6:.1f}M parameters, {flops / 1e9:.1f} GFLOP per training image")


if __name__ == "__main__":
    main()
