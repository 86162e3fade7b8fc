"""Training-step throughput of NEPA against timm's VisionTransformer doing the same work.

One training step, as nepa's loop does it: forward of the model + NEPA loss (nepa's own
`_Pretrainer` step module for NEPA), backward, gradient-norm clipping (the loop always computes
the norm), AdamW step (`build_optimizer`), zero_grad. The reference is timm's
`VisionTransformer` with the same width, depth, heads, MLP width, qkv bias, qk_norm=True,
LayerScale init 1e-5, a class token and `pos_embed='none'` (NEPA has no absolute position
embedding), run causally (`is_causal=True`) and trained with the same loss against its own
input sequence: same token count (CLS + patches), same matmuls, same attention. What differs
is what NEPA adds: 2-D RoPE on q and k, and the random RoPE rescale per step.

Arms alternate in one process (NEPA, timm, [bf16 NEPA, bf16 timm,] GEMM, with the starting arm
rotated each repeat), so a busy machine slows all alike. Ratios are per repeat (paired), then
median (min-max). FLOPs per image are analytic (benchmarks/flops.py), the same number for both
models; `--check-flops` compares them with torch's FlopCounterMode. The GEMM arm is a large
square `torch.mm` (fp32, or bf16 for bf16 arms) timed the same way: this machine's practical
peak. On CUDA, MFU is also given against the GPU's dense spec peak.

    .venv/bin/python benchmarks/bench_train.py --sizes tiny B --repeats 5          # CPU, ~8 min
    .venv/bin/python benchmarks/bench_train.py --sizes tiny B --repeats 5 --bf16
    python benchmarks/bench_train.py --device cuda --sizes B L --bf16 --compile-sizes B L
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from timm.layers import use_fused_attn
from timm.models.vision_transformer import VisionTransformer
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from flops import tokens, train_flops_per_image  # noqa: E402

from nepa.model import build_model  # noqa: E402
from nepa.model_config import (
    ModelConfig,
    model_config,  # noqa: E402
)
from nepa.objective import nepa_loss  # noqa: E402
from nepa.train.config import OptimConfig  # noqa: E402
from nepa.train.loop import _Pretrainer  # noqa: E402  (the loop's own step module)
from nepa.train.optim import build_optimizer  # noqa: E402

DEFAULT_BATCH = {"tiny": 32, "S": 8, "B": 4, "L": 2, "H": 1}
DEFAULT_STEPS = {"tiny": 2, "S": 1, "B": 1, "L": 1, "H": 1}  # training steps per arm per repeat
GPU_BATCH = {"tiny": 256, "S": 128, "B": 64, "L": 32, "H": 16}
# Dense (no sparsity) spec peaks in TFLOP/s by device-name substring: (bf16, fp32 non-tensor).
GPU_SPEC_TFLOPS = {"H200": (989.0, 67.0), "H100": (989.0, 67.0), "A100": (312.0, 19.5),
                   "B200": (2250.0, 80.0), "L40S": (362.0, 91.6)}


# ---------------------------------------------------------------------------------------------
# Models and steps
# ---------------------------------------------------------------------------------------------


def timm_reference(cfg: ModelConfig) -> VisionTransformer:
    """timm ViT with NEPA's shape: same width/depth/heads/MLP, QK-norm, LayerScale, CLS, no pos."""
    return VisionTransformer(
        img_size=cfg.image_size, patch_size=cfg.patch_size, in_chans=cfg.in_chans,
        num_classes=0, global_pool="", embed_dim=cfg.dim, depth=cfg.depth,
        num_heads=cfg.num_heads, mlp_ratio=cfg.mlp_dim / cfg.dim, qkv_bias=cfg.qkv_bias,
        qk_norm=cfg.qk_norm, init_values=cfg.layerscale_init, class_token=True,
        pos_embed="none")


class TimmPretrainer(nn.Module):
    """timm's forward_features, causal, exposing its input sequence as the NEPA targets."""

    def __init__(self, model: VisionTransformer):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.model
        inputs = m._pos_embed(m.patch_embed(images))  # (B, 1+T, D): CLS + patches
        x = m.norm_pre(inputs)
        for blk in m.blocks:
            x = blk(x, is_causal=True)
        outputs = m.norm(x)
        return nepa_loss(inputs, outputs), outputs.detach()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Arm:
    """One alternated contender: `run()` does `steps` steps and returns work units per second."""

    name: str
    run: Callable[[], float]
    unit: str  # "img/s" or "FLOP/s"
    values: list[float] = field(default_factory=list)  # per wall second
    cpu_values: list[float] = field(default_factory=list)  # per CPU second of this process
    first_s: float = 0.0  # duration of the first warm-up call (includes compilation)


@contextlib.contextmanager
def compiled_rope():
    """NEPA with only `apply_rope` compiled (one fused kernel instead of ~6 elementwise ops)."""
    import nepa.model as nepa_model

    eager = nepa_model.apply_rope
    nepa_model.apply_rope = COMPILED_ROPE.setdefault("fn", torch.compile(eager, dynamic=False))
    try:
        yield
    finally:
        nepa_model.apply_rope = eager


COMPILED_ROPE: dict[str, Callable] = {}


def train_arm(name: str, module: nn.Module, model: nn.Module, images: torch.Tensor, steps: int,
              bf16: bool, device: torch.device, patch=contextlib.nullcontext) -> Arm:
    optimizer = build_optimizer(model, OptimConfig())
    for group in optimizer.param_groups:
        group["lr"] = 1e-4
    params = [p for p in model.parameters() if p.requires_grad]
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext

    def run() -> tuple[float, float]:
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(steps):
            with autocast(), patch():
                loss, _ = module(images)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, math.inf)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        sync(device)
        work = steps * images.shape[0]
        return work / (time.perf_counter() - start), work / (time.process_time() - cpu)

    return Arm(name, run, "img/s")


def gemm_arm(name: str, n: int, dtype: torch.dtype, device: torch.device, seconds: float) -> Arm:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up, then size the repeat count to ~`seconds`
    sync(device)
    start = time.perf_counter()
    torch.mm(a, b, out=out)
    sync(device)
    iters = max(1, round(seconds / max(time.perf_counter() - start, 1e-6)))

    def run() -> tuple[float, float]:
        sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        for _ in range(iters):
            torch.mm(a, b, out=out)
        sync(device)
        work = iters * 2 * n**3
        return work / (time.perf_counter() - start), work / (time.process_time() - cpu)

    return Arm(name, run, "FLOP/s")


def alternate(arms: list[Arm], repeats: int, warmup: int) -> None:
    for arm in arms:
        for i in range(warmup):
            start = time.perf_counter()
            arm.run()
            if i == 0:
                arm.first_s = time.perf_counter() - start
    for r in range(repeats):
        for k in range(len(arms)):
            arm = arms[(r + k) % len(arms)]  # rotate the starting arm each repeat
            wall, cpu = arm.run()
            arm.values.append(wall)
            arm.cpu_values.append(cpu)
        print(f"#   repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)


def count_flops(module: nn.Module, images: torch.Tensor) -> float:
    """FlopCounterMode's count of one forward + backward, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = module(images)
        loss.backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / images.shape[0]


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------


def spread(values: list[float], digits: int = 1) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def paired(a: list[float], b: list[float]) -> list[float]:
    return [x / y for x, y in zip(a, b, strict=True)]


def machine_line(device: torch.device) -> str:
    torch_v = torch.__version__
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch_v}, CUDA {torch.version.cuda}"
    model = "unknown CPU"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    bf16 = [f for f in ("avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    native = "native bf16: " + (", ".join(bf16) if bf16 else "NONE (bf16 is emulated)")
    return (f"{model}, {torch.get_num_threads()} threads, torch {torch_v}, "
            f"ISA {torch.backends.cpu.get_cpu_capability()}, mkldnn bf16 "
            f"{torch.ops.mkldnn._is_mkldnn_bf16_supported()}, {native}")


def spec_peak(device: torch.device, bf16: bool, override: float | None) -> float | None:
    if override is not None:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, (p_bf16, p_fp32) in GPU_SPEC_TFLOPS.items():
        if key in name:
            return (p_bf16 if bf16 else p_fp32) * 1e12
    return None


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def parse_batches(items: list[str], device: torch.device) -> dict[str, int]:
    batches = dict(GPU_BATCH if device.type == "cuda" else DEFAULT_BATCH)
    for item in items:
        key, _, value = item.partition("=")
        batches[key] = int(value)
    return batches


def run_config(size: str, mode: str, args: argparse.Namespace, device: torch.device,
               batch: int) -> list[str]:
    """Build NEPA + timm of `size`, alternate all arms, return the markdown rows."""
    geometry = {k: v for k, v in (("image_size", args.image_size), ("patch_size", args.patch_size))
                if v is not None}
    cfg = model_config(size, **geometry)
    label = f"{size} at {cfg.image_size}/{cfg.patch_size}" if geometry else size
    torch.manual_seed(0)
    nepa = build_model(cfg).to(device).train()
    ref = timm_reference(cfg).to(device).train()
    n_nepa = sum(p.numel() for p in nepa.parameters())
    n_ref = sum(p.numel() for p in ref.parameters())
    nepa_step: nn.Module = _Pretrainer(nepa, shift=True, stop_grad=True)
    ref_step: nn.Module = TimmPretrainer(ref)
    if mode == "compile":
        nepa_step, ref_step = torch.compile(nepa_step), torch.compile(ref_step)
    images = torch.randn(batch, cfg.in_chans, cfg.image_size, cfg.image_size, device=device)
    flops = train_flops_per_image(cfg)
    steps = args.steps or DEFAULT_STEPS[size]
    print(f"# {size} {mode}: batch {batch}, steps/arm {steps}, tokens {tokens(cfg)}, "
          f"params NEPA {n_nepa / 1e6:.2f}M "
          f"timm {n_ref / 1e6:.2f}M, analytic {flops / 1e9:.2f} GFLOP/img (fwd+bwd)", file=sys.stderr)
    if args.check_flops and mode == "eager":
        one = images[:1]
        print(f"#   FlopCounterMode per image: NEPA {count_flops(nepa_step, one) / 1e9:.2f} GFLOP, "
              f"timm {count_flops(ref_step, one) / 1e9:.2f} GFLOP", file=sys.stderr)

    n = args.gemm_size or (8192 if device.type == "cuda" else 2048)
    names = ["NEPA", "timm"] + (["NEPA cRoPE"] if args.rope_compiled and mode == "eager" else [])
    precisions = ["fp32", "bf16"] if args.bf16 else ["fp32"]
    if device.type == "cuda" and args.bf16 and not args.fp32_on_gpu:
        precisions = ["bf16"]  # the production configuration
    elif mode == "compile" and device.type == "cpu":
        precisions = ["fp32"]  # each autocast state is another slow compilation on CPU
    arms: dict[tuple[str, str], Arm] = {}
    for prec in precisions:
        for name, module, model in (("NEPA", nepa_step, nepa), ("timm", ref_step, ref)):
            arms[(name, prec)] = train_arm(name, module, model, images, steps, prec == "bf16", device)
        if "NEPA cRoPE" in names:
            arms[("NEPA cRoPE", prec)] = train_arm("NEPA cRoPE", nepa_step, nepa, images, steps,
                                                   prec == "bf16", device, compiled_rope)
        dtype = torch.bfloat16 if prec == "bf16" else torch.float32
        arms[("GEMM", prec)] = gemm_arm("GEMM", n, dtype, device, args.gemm_seconds)
    start = time.perf_counter()
    alternate(list(arms.values()), args.repeats, args.warmup)
    elapsed = time.perf_counter() - start
    first = ", ".join(f"{n} {p} {a.first_s:.1f}s" for (n, p), a in arms.items() if n != "GEMM")
    print(f"#   done in {elapsed:.0f}s; first warm-up step call: {first}", file=sys.stderr)

    rows = []
    for prec in precisions:
        gemm, gemm_cpu = arms[("GEMM", prec)].values, arms[("GEMM", prec)].cpu_values
        peak = spec_peak(device, prec == "bf16", args.peak_tflops)
        mfu = "" if peak is None else f"{statistics.median(gemm) / peak:.2f}"
        rows.append(f"| {label} | {mode} | {prec} | GEMM {n}x{n} | - | - | "
                    f"{spread([v / 1e12 for v in gemm], 3)} | 1 | {mfu} | - | - | - |")
        base, base_cpu = arms[("timm", prec)].values, arms[("timm", prec)].cpu_values
        for name in names:
            vals, cpu = arms[(name, prec)].values, arms[(name, prec)].cpu_values
            achieved = [v * flops / 1e12 for v in vals]
            of_gemm = paired([v * flops for v in vals], gemm)
            mfu = "" if peak is None else f"{statistics.median(achieved) * 1e12 / peak:.3f}"
            ratio = "1" if name == "timm" else spread(paired(vals, base), 2)
            ratio_cpu = "1" if name == "timm" else spread(paired(cpu, base_cpu), 2)
            of_gemm_cpu = spread(paired([v * flops for v in cpu], gemm_cpu), 2)
            rows.append(f"| {label} | {mode} | {prec} | {name} | {batch} | {spread(vals, 2)} | "
                        f"{spread(achieved, 3)} | {spread(of_gemm, 2)} | {mfu} | {ratio} | "
                        f"{of_gemm_cpu} | {ratio_cpu} |")
    if len(precisions) == 2:
        for name in names:
            a, b = arms[(name, "bf16")], arms[(name, "fp32")]
            rows.append(f"| {label} | {mode} | bf16/fp32 | {name} | {batch} | speed-up "
                        f"{spread(paired(a.values, b.values), 2)} | | | | | | speed-up "
                        f"{spread(paired(a.cpu_values, b.cpu_values), 2)} |")
    del nepa, ref, nepa_step, ref_step, arms
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "B"])
    parser.add_argument("--size", dest="sizes", nargs="+", help="alias of --sizes")
    parser.add_argument("--modes", nargs="+", default=["eager", "compile"], choices=["eager", "compile"])
    parser.add_argument("--compile-sizes", nargs="*", default=["tiny"],
                        help="sizes that also run compiled (compiling on 2 CPU cores is slow)")
    parser.add_argument("--compile", action="store_true",
                        help="compile every size given in --sizes (overrides --compile-sizes)")
    parser.add_argument("--batch", nargs="*", default=[], metavar="SIZE=N",
                        help=f"per-size batch (CPU defaults {DEFAULT_BATCH}, CUDA {GPU_BATCH})")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"training steps per arm per repeat (default {DEFAULT_STEPS})")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each arm first")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16", action="store_true", help="also run bf16 autocast arms")
    parser.add_argument("--fp32-on-gpu", action="store_true", help="with --bf16 on CUDA, keep fp32 arms")
    parser.add_argument("--rope-compiled", action="store_true",
                        help="eager mode: add an arm with only nepa.model.apply_rope compiled")
    parser.add_argument("--image-size", type=int, default=None,
                        help="override every size's resolution (tiny: 32 by default, others 224)")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="override every size's patch (tiny: 4 by default, others 14)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--gemm-size", type=int, default=None, help="square GEMM side (CPU 2048, CUDA 8192)")
    parser.add_argument("--gemm-seconds", type=float, default=1.0, help="target duration of one GEMM arm call")
    parser.add_argument("--peak-tflops", type=float, default=None, help="spec peak for MFU (default: by GPU name)")
    parser.add_argument("--check-flops", action=argparse.BooleanOptionalAction, default=True,
                        help="compare the analytic FLOPs with FlopCounterMode (eager, batch 1)")
    parser.add_argument("--max-minutes", type=float, default=10.0,
                        help="skip configurations that would start after this much wall time")
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 arms are true fp32 (spec peak above)
        torch.backends.cudnn.allow_tf32 = False
    batches = parse_batches(args.batch, device)
    compile_sizes = args.sizes if args.compile else args.compile_sizes
    print(f"machine: {machine_line(device)}")
    print(f"timm fused attention: {use_fused_attn()}; steps/arm/repeat {args.steps or DEFAULT_STEPS}, "
          f"repeats {args.repeats}, warm-up {args.warmup}")
    print()
    print("| size | mode | precision | arm | batch | img/s median (min-max) | achieved TFLOP/s "
          "| of GEMM | MFU (spec) | NEPA/timm (paired) | of GEMM (CPU time) | NEPA/timm (CPU time) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    skipped = []
    for mode in args.modes:
        for size in args.sizes:
            if mode == "compile" and size not in compile_sizes:
                continue
            if (time.perf_counter() - start) / 60 > args.max_minutes:
                skipped.append(f"{size} {mode}")
                continue
            for row in run_config(size, mode, args, device, batches[size]):
                print(row, flush=True)
    print()
    print(f"total {time.perf_counter() - start:.0f}s" + (f"; skipped (time cap): {', '.join(skipped)}"
                                                          if skipped else ""))


if __name__ == "__main__":
    main()
