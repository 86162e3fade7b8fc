"""Configs of the pretraining engine: optimizer, EMA, checkpoints, the loop itself."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from nepa.config import check


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    """AdamW with cosine decay; defaults are the release's pretraining recipe."""

    blr: float = 3e-4  # base lr per 256 images: lr = blr * global_batch / 256
    lr: float | None = None  # absolute lr; when set, blr scaling is not applied
    min_lr: float = 0.0  # cosine floor
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    weight_decay: float = 0.05  # not on biases, LayerNorm/QK-norm weights, LayerScale (CLS is decayed)
    warmup_fraction: float = 0.025  # of total steps
    warmup_steps: int | None = None  # explicit warmup; overrides warmup_fraction
    clip_grad: float | None = 1.0  # global grad-norm clip; null: off

    def __post_init__(self) -> None:
        check(self.blr > 0, "optim.blr", "must be > 0")
        check(self.lr is None or self.lr > 0, "optim.lr", "must be > 0 or null")
        check(0 <= self.warmup_fraction < 1, "optim.warmup_fraction", "must be in [0, 1)")
        check(all(0 <= b < 1 for b in self.betas), "optim.betas", "each must be in [0, 1)")
        check(self.clip_grad is None or self.clip_grad > 0, "optim.clip_grad", "must be > 0 or null")


@dataclass(frozen=True, kw_only=True)
class EMAConfig:
    """Float32 exponential moving average of the weights, updated every optimizer step."""

    enabled: bool = True
    decay: float = 0.9999
    # Warm-up of the decay: decay_t = min(decay, (1 + t) / (warmup_steps + t)), so short runs
    # do not evaluate weights still near their initialisation. 0: the constant decay from the
    # first step, as the release (the S/B/L/H recipes); the tiny demo recipes warm up over 10.
    warmup_steps: int = 0

    def __post_init__(self) -> None:
        check(0.0 <= self.decay < 1.0, "ema.decay", "must be in [0, 1)")
        check(self.warmup_steps >= 0, "ema.warmup_steps", "must be >= 0 (0: constant decay)")


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    """When checkpoints are written and which are kept."""

    every_steps: int = 1000  # also written on stop requests and at the end
    keep_last: int = 2  # newest K regular checkpoints
    milestone_every: int | None = None  # steps; milestones are never deleted
    keep_steps: tuple[int, ...] = ()  # also written at these steps and never deleted (evaluations)
    min_free_factor: float = 1.5  # refuse to write unless free disk >= factor x checkpoint size

    def __post_init__(self) -> None:
        check(self.every_steps >= 1, "checkpoint.every_steps", "must be >= 1")
        check(self.keep_last >= 1, "checkpoint.keep_last", "must keep at least 1")
        check(self.milestone_every is None or self.milestone_every >= 1,
              "checkpoint.milestone_every", "must be >= 1 or null")
        check(all(step >= 1 for step in self.keep_steps), "checkpoint.keep_steps",
              "steps must be >= 1")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """The loop: batch geometry, length, precision, fault handling, launch geometry."""

    global_batch: int = 4096
    micro_batch: int = 128  # per device; accumulation = global_batch / (world_size * micro_batch)
    epochs: int = 1600
    max_steps: int | None = None  # overrides epochs (demo and tests)
    seed: int = 1337
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPUs with native bf16 (A100+), else fp32
    compile: bool = False  # torch.compile the model
    grad_checkpointing: bool = False  # recompute activations: less memory, ~30% more compute
    nodes: int = 1
    procs_per_node: int = 1  # GPUs per node (processes per node on CPU)
    dist_timeout_s: int = 1800  # collective timeout
    max_bad_steps: int = 3  # consecutive non-finite steps skipped before a rollback
    max_rollbacks: int = 1  # rollbacks to the last good checkpoint before DIVERGED
    collapse_spread: float = 0.05  # warn when the embedding spread falls below this
    monitor_every: int = 10  # steps between collapse checks
    tensorboard: bool = False

    def __post_init__(self) -> None:
        check(self.global_batch >= 1, "train.global_batch", "must be >= 1")
        check(self.micro_batch >= 1, "train.micro_batch", "must be >= 1")
        check(self.global_batch % (self.world_size * self.micro_batch) == 0, "train.global_batch",
              f"{self.global_batch} is not divisible by world size {self.world_size} x "
              f"micro_batch {self.micro_batch}; {self._batch_fix()}")
        check(self.epochs >= 1, "train.epochs", "must be >= 1")
        check(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1 or null")
        check(self.nodes >= 1 and self.procs_per_node >= 1, "train.nodes", "nodes and procs_per_node must be >= 1")
        check(self.max_bad_steps >= 0, "train.max_bad_steps", "must be >= 0")

    def _batch_fix(self) -> str:
        per_rank, rest = divmod(self.global_batch, self.world_size)
        if rest or per_rank == 0:
            return (f"set train.global_batch to a multiple of {self.world_size * self.micro_batch}"
                    " or change the number of processes")
        fitting = max(d for d in range(1, min(per_rank, self.micro_batch) + 1) if per_rank % d == 0)
        return f"set train.micro_batch to {fitting} (or change train.global_batch)"

    @property
    def world_size(self) -> int:
        return self.nodes * self.procs_per_node

    @property
    def accumulation(self) -> int:
        return self.global_batch // (self.world_size * self.micro_batch)


def base_lr(cfg: OptimConfig, global_batch: int) -> float:
    """lr = blr x global_batch / 256, unless an absolute lr is given."""
    return cfg.lr if cfg.lr is not None else cfg.blr * global_batch / 256


def warmup_steps(cfg: OptimConfig, total_steps: int) -> int:
    return cfg.warmup_steps if cfg.warmup_steps is not None else int(cfg.warmup_fraction * total_steps)
