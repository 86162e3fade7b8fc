"""The distributed optimizer step shared by pretraining (`nepa.train.loop`) and fine-tuning
(`nepa.evals.finetune`): gradient accumulation, the dummy batch, non-finite skipping, clipping,
and the collective restore.

A user supplies only its forward: `forward(batch, micro) -> (loss, outputs)`. Everything that
keeps the ranks in step and a run resumable bit for bit lives here, once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import clip_grad_norm_, get_total_norm

from nepa import checkpoint
from nepa.train import distributed
from nepa.train.checkpoints import CheckpointManager

log = logging.getLogger("nepa.train.engine")
# A zero-weighted stand-in for a micro-batch without one readable image. Two images, not one:
# Mixup/CutMix pair the images of a batch, so the fine-tuner needs an even count.
DUMMY_IMAGES = 2

Forward = Callable[[dict, int], tuple[torch.Tensor, Any]]


@dataclass(frozen=True)
class StepResult:
    loss: float  # mean over ranks and readable micro-batches; NaN when no rank read an image
    grad_norm: float  # global gradient norm before clipping
    skipped: bool  # non-finite loss or gradient norm: the optimizer did not step
    data_time_s: float  # waiting for the loader
    skipped_images: int  # unreadable images dropped by the loader on this rank
    outputs: Any  # the last readable micro-batch's second forward value (None if none)


class StepEngine:
    """One optimizer step over `accumulation` micro-batches, identical on every rank.

    `model` is the unwrapped module (its parameters are clipped); `ddp` its DistributedDataParallel
    wrapper when distributed (gradients are synchronised on the last micro-batch only).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 env: distributed.DistEnv, *, accumulation: int,
                 image_shape: tuple[int, int, int], ddp: nn.Module | None = None,
                 clip_grad: float | None = None):
        self.model, self.optimizer, self.env, self.ddp = model, optimizer, env, ddp
        self.accumulation, self.image_shape, self.clip_grad = accumulation, image_shape, clip_grad
        self.skipped_steps = 0  # non-finite steps since this engine was built (not checkpointed)

    def step(self, batches: Iterator[dict], forward: Forward, *, step: int) -> StepResult:
        """Accumulate, all-reduce the loss, then clip and step unless anything is non-finite.

        Collective: every rank calls it once per step. `step` (0-based) only labels the log.
        """
        local, outputs, data_time, skipped_images = self._accumulate(batches, forward)
        loss_t = distributed.all_reduce_mean(local, self.env)  # the same on every rank
        norm_t = self._grad_norm().to(loss_t.device)
        # One device-to-host transfer for both (each .item() would wait for the GPU on its own).
        loss, grad_norm = torch.stack([loss_t.float().reshape(()), norm_t.float()]).tolist()
        skipped = not (math.isfinite(loss) and math.isfinite(grad_norm))
        if skipped:
            self.skipped_steps += 1
            log.warning("non-finite loss (%s) or gradient norm (%s) at step %d: optimizer step "
                        "skipped (%d so far)", loss, grad_norm, step + 1, self.skipped_steps)
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, grad_norm, skipped, data_time, skipped_images, outputs)

    def _grad_norm(self) -> torch.Tensor:
        """Global gradient norm (a tensor on the gradients' device), clipped to `clip_grad` if set.

        Without clipping the gradients are only measured, never rescaled. With clipping, a
        non-finite norm scales them to NaN, which is harmless: that step is skipped and zeroed.
        """
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.clip_grad:
            return clip_grad_norm_(params, self.clip_grad)
        return get_total_norm([p.grad for p in params])

    def _accumulate(self, batches: Iterator[dict], forward: Forward
                    ) -> tuple[torch.Tensor, Any, float, int]:
        """Backward over the micro-batches; (local mean loss, outputs, data time, skipped)."""
        losses, outputs, data_time, skipped_images = [], None, 0.0, 0
        for micro in range(self.accumulation):
            t0 = time.perf_counter()
            batch = next(batches)
            data_time += time.perf_counter() - t0
            skipped_images += int(batch.get("skipped", 0))
            weight = 1.0
            if len(batch["image"]) == 0:  # nothing readable: the dummy keeps DDP's collectives
                weight, batch = 0.0, self.dummy_batch()  # in step with the other ranks
            with self._sync(micro):
                loss, out = forward(batch, micro)
                (loss * (weight / self.accumulation)).backward()
            if weight:
                losses.append(loss.detach().float())
                outputs = out
        # A step without one readable image has no loss: NaN, so it is skipped like a bad step.
        local = (torch.stack(losses).mean() if losses
                 else torch.full((), math.nan, device=self.env.device))
        return local, outputs, data_time, skipped_images

    def _sync(self, micro: int) -> contextlib.AbstractContextManager:
        """DDP all-reduces gradients on the last micro-batch only."""
        if self.ddp is not None and micro < self.accumulation - 1:
            return self.ddp.no_sync()
        return contextlib.nullcontext()

    def dummy_batch(self) -> dict[str, Any]:
        """Zero images with label 0, on the CPU like a loader's batch."""
        return {"image": torch.zeros(DUMMY_IMAGES, *self.image_shape),
                "label": torch.zeros(DUMMY_IMAGES, dtype=torch.long), "skipped": 0}

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, payload: dict[str, Any]) -> None:
        """Model and optimizer from a checkpoint payload (other keys are the caller's)."""
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])


def wrap_ddp(module: nn.Module, env: distributed.DistEnv) -> nn.Module | None:
    """`module` in DistributedDataParallel when distributed, else None.

    The device is the one `distributed.setup` bound (not the local rank: with one GPU per task
    it is cuda:0 on every rank). The model's buffers (RoPE frequencies, the QK-norm ones) are
    constants, so they are not re-broadcast before every forward; gradients are views into
    DDP's buckets (no second copy of them).
    """
    if not env.enabled:
        return None
    ids = [env.device] if env.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False,
                                               gradient_as_bucket_view=True)


def native_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 tensor cores (compute capability 8.0+: A100, H100, L40S, ...).

    `torch.cuda.is_bf16_supported()` is also true on V100/T4, where bf16 is emulated and slower
    than fp32.
    """
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)


def autocast(precision: str, device: torch.device) -> tuple[contextlib.AbstractContextManager, str]:
    """(context, "bf16" or "fp32"); "auto" is bf16 on a GPU with native bf16, else fp32.

    On CUDA it also lets fp32 matmuls and convolutions use TF32 tensor cores (Ampere and
    later): the fp32 parts of a bf16 step, and every matmul of an fp32 run, which would
    otherwise run at a fraction of the GPU's speed.
    """
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    bf16 = precision == "bf16" or (precision == "auto" and native_bf16(device))
    if precision == "bf16" and device.type == "cuda" and not native_bf16(device):
        log.warning("precision bf16 on %s: this GPU emulates bf16 (slower than fp32); use "
                    "precision auto or fp32", torch.cuda.get_device_name(device))
    if bf16:
        return torch.autocast(device.type, dtype=torch.bfloat16), "bf16"
    return contextlib.nullcontext(), "fp32"


def restore_latest(ckpt: CheckpointManager, env: distributed.DistEnv,
                   warn: Callable[[str], None] = log.warning) -> tuple[str, dict[str, Any]] | None:
    """Collective: rank 0 picks the newest checkpoint that loads, every rank reads that one.

    (path, payload), or None when there is none (then no rank resumes).
    """
    found = ckpt.resume(warn=warn) if env.is_main else None
    path = distributed.broadcast_object(str(found[0]) if found else None, env)
    if path is None:
        return None
    return path, (found[1] if found else checkpoint.load(path))
