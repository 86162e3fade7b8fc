"""The pretraining loop: exact resume, collective stop-and-save, non-finite loss handling.

Launchers (nepactl's job wrapper, torchrun scripts, tests) create a `Trainer`, may call
`request_stop()` from a signal handler, and get a `RunResult` back. Nothing here knows about
SLURM or submitit.
"""

from __future__ import annotations

import enum
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import nepa
from nepa import data as nepa_data
from nepa.checkpoint import NonFiniteError
from nepa.config import to_dict
from nepa.model import NepaViT
from nepa.objective import embedding_spread, nepa_loss
from nepa.rundir import atomic_write
from nepa.train import distributed, engine
from nepa.train.checkpoints import CheckpointManager
from nepa.train.config import base_lr, warmup_steps
from nepa.train.ema import EMA
from nepa.train.metrics import Heartbeat, MetricsLog
from nepa.train.optim import build_optimizer, lr_at
from nepa.train.runconfig import RunConfig, dump_yaml

log = logging.getLogger("nepa.train")
OUTCOME_FILE = "outcome.json"


class RunStatus(str, enum.Enum):
    COMPLETED = "COMPLETED"
    STOPPED = "STOPPED"  # saved on request (preemption, time limit); resumable
    DIVERGED = "DIVERGED"  # non-finite loss survived skips and rollbacks


EXIT_CODES = {RunStatus.COMPLETED: 0, RunStatus.STOPPED: 0, RunStatus.DIVERGED: 3}


@dataclass(frozen=True)
class RunResult:
    status: RunStatus
    step: int
    total_steps: int
    stop_reason: str | None = None
    checkpoint: Path | None = None
    save_seconds: float | None = None  # stop request -> checkpoint on disk


class Callback:
    """Progress hooks for launchers; every method is optional (rank 0 only)."""

    def on_start(self, trainer: Trainer) -> None: ...
    def on_step_end(self, trainer: Trainer, record: dict[str, Any]) -> None: ...
    def on_checkpoint(self, trainer: Trainer, step: int, path: Path) -> None: ...
    def on_end(self, trainer: Trainer, result: RunResult) -> None: ...


class _Pretrainer(nn.Module):
    """Model + objective in one forward, so DDP and torch.compile see the whole step."""

    def __init__(self, model: NepaViT, shift: bool, stop_grad: bool):
        super().__init__()
        self.model, self.shift, self.stop_grad = model, shift, stop_grad

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, outputs = self.model.forward_pretrain(images)
        return nepa_loss(inputs, outputs, shift=self.shift, stop_grad=self.stop_grad), outputs.detach()


class Trainer:
    """One process's view of a pretraining run stored in `run_dir`."""

    def __init__(self, cfg: RunConfig, run_dir: str | Path, *, callbacks: Sequence[Callback] = (),
                 dataset: Dataset | None = None,
                 loss_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.callbacks = list(callbacks)
        self._dataset = dataset
        self._loss_hook = loss_hook  # fault injection for tests: (step, loss) -> loss
        self._stop_reason: str | None = None
        self._stop_time: float | None = None
        self.step = 0
        self.total_steps = 0
        self.spread: float | None = None  # embedding spread at the last monitored step

    # -- stop-request API (safe to call from a signal handler) ----------------------------------

    def request_stop(self, reason: str) -> None:
        """Ask the loop to save and return at the next step boundary (all ranks agree)."""
        if self._stop_reason is None:
            self._stop_reason, self._stop_time = reason, time.time()

    # -- set-up ---------------------------------------------------------------------------------

    def _setup(self) -> None:
        cfg = self.cfg
        self.env = distributed.setup(cfg.train.world_size, cfg.train.dist_timeout_s)
        torch.manual_seed(cfg.train.seed + self.env.rank)
        self.model = NepaViT(cfg.model).to(self.env.device)
        self.model.set_grad_checkpointing(cfg.train.grad_checkpointing)
        pretrainer = _Pretrainer(self.model, cfg.objective.shift, cfg.objective.stop_grad)
        ddp = engine.wrap_ddp(pretrainer, self.env)
        step_module = pretrainer if ddp is None else ddp
        self.step_module = torch.compile(step_module) if cfg.train.compile else step_module
        self.optimizer = build_optimizer(self.model, cfg.optim)
        self.engine = engine.StepEngine(
            self.model, self.optimizer, self.env, accumulation=cfg.train.accumulation,
            image_shape=(cfg.model.in_chans, cfg.model.image_size, cfg.model.image_size),
            ddp=ddp, clip_grad=cfg.optim.clip_grad)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema.enabled else None
        self.ckpt = CheckpointManager(self.run_dir, cfg.checkpoint)

        self._build_data()
        self.steps_per_epoch = self.sampler.steps_per_epoch
        if self.steps_per_epoch < 1:
            raise nepa_data.DataError(
                f"the training split has {len(self.sampler)} images, fewer than one global "
                f"batch ({cfg.train.global_batch}); lower train.global_batch")
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch
        self.peak_lr = base_lr(cfg.optim, cfg.train.global_batch)
        self.warmup = warmup_steps(cfg.optim, self.total_steps)
        self.autocast, precision = engine.autocast(cfg.train.precision, self.env.device)
        if self.env.is_main:
            log.info(
                "derived: world_size=%d (nodes %d x %d) micro_batch=%d accumulation=%d "
                "global_batch=%d lr=%.3g (blr %.3g x %d/256) steps/epoch=%d total_steps=%d "
                "warmup=%d precision=%s", self.env.world_size, cfg.train.nodes,
                cfg.train.procs_per_node, cfg.train.micro_batch, cfg.train.accumulation,
                cfg.train.global_batch, self.peak_lr, cfg.optim.blr, cfg.train.global_batch,
                self.steps_per_epoch, self.total_steps, self.warmup, precision)

    def _build_data(self) -> None:
        """Map-style sources: a ResumableSampler over (epoch, index)-seeded items. Shards: the
        data layer's ShardStream, which splits, orders and seeds items itself."""
        cfg, env = self.cfg, self.env
        transform = nepa_data.pretrain_transform(cfg.data)
        if self._dataset is None and cfg.data.source == "wds":
            self.sampler = nepa_data.build_train_stream(
                cfg.data, "train", transform, global_batch=cfg.train.global_batch,
                micro_batch=cfg.train.micro_batch, rank=env.rank, world_size=env.world_size,
                seed=cfg.train.seed)
            self.tagged = None
            self.loader = nepa_data.build_train_loader(cfg.data, self.sampler, None,
                                                       cfg.train.micro_batch, cfg.train.seed)
            return
        dataset = self._dataset if self._dataset is not None else nepa_data.build_dataset(
            cfg.data, "train", transform)
        self.sampler = nepa_data.ResumableSampler(
            len(dataset), global_batch=cfg.train.global_batch, micro_batch=cfg.train.micro_batch,
            rank=env.rank, world_size=env.world_size, seed=cfg.train.seed)
        self.tagged = nepa_data.EpochTagged(self.sampler)
        self.loader = nepa_data.build_train_loader(
            cfg.data, nepa_data.SeededItems(dataset, cfg.train.seed), self.tagged,
            cfg.train.micro_batch, cfg.train.seed)

    # -- checkpoint state -----------------------------------------------------------------------

    def _rng_state(self) -> dict[str, Any]:
        state = {"torch": torch.get_rng_state()}
        if self.env.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.env.device)
        return state

    def _payload(self, rng_states: list[dict]) -> dict[str, Any]:
        return {
            "model_config": to_dict(self.cfg.model),
            **self.engine.state_dict(),  # model, optimizer
            "ema": self.ema.state_dict() if self.ema else None,
            "scaler": None,  # bf16/fp32 need no loss scaling
            "step": self.step,
            "epoch": self.step // self.steps_per_epoch,
            "sampler": self.sampler.position(self.step),
            "rng": rng_states,
            "config_yaml": dump_yaml(self.cfg),
            "code_version": nepa.__version__,
            "world_size": self.env.world_size,
            "saved_at": time.time(),
        }

    def save(self) -> Path | None:
        """Collective: every rank contributes its RNG state, rank 0 writes."""
        rng_states = distributed.gather_objects(self._rng_state(), self.env)
        path = None
        if self.env.is_main:
            try:
                path = self.ckpt.save(self.step, self._payload(rng_states))
            except NonFiniteError as exc:  # the last finite checkpoint stays the rollback target
                log.warning("checkpoint skipped: %s", exc)
            for cb in self.callbacks if path is not None else ():
                cb.on_checkpoint(self, self.step, path)
        distributed.barrier(self.env)
        return path

    def _restore(self) -> bool:
        """Load the newest valid checkpoint (rank 0 picks it). False when there is none."""
        restored = engine.restore_latest(self.ckpt, self.env, warn=log.warning)
        if restored is None:
            return False
        path, payload = restored
        self.engine.load_state_dict(payload)
        if self.ema is not None and payload.get("ema") is not None:
            self.ema.load_state_dict(payload["ema"])
        self.step = int(payload["step"])
        if payload.get("sampler"):
            self.sampler.load_state_dict(payload["sampler"])  # checks the data still fits
        rng = payload.get("rng") or []
        if self.env.rank < len(rng):
            torch.set_rng_state(rng[self.env.rank]["torch"])
            if "cuda" in rng[self.env.rank] and self.env.device.type == "cuda":
                torch.cuda.set_rng_state(rng[self.env.rank]["cuda"], self.env.device)
        else:  # more ranks than when saved: a fresh, reproducible stream for the new rank
            torch.manual_seed(self.cfg.train.seed + 1000 * self.step + self.env.rank)
        if self.env.is_main:
            log.info("resumed from %s at step %d (saved by %s processes)", path, self.step,
                     payload.get("world_size"))
        return True

    # -- the loop -------------------------------------------------------------------------------

    def fit(self) -> RunResult:
        self._setup()
        try:
            return self._fit()
        finally:
            distributed.teardown()

    def _fit(self) -> RunResult:
        resumed = self._restore()
        if not resumed:
            self.save()  # step 0: a rollback target and the run's identity on disk
        self.metrics = MetricsLog(self.run_dir, resume_step=self.step,
                                  tensorboard=self.cfg.train.tensorboard) if self.env.is_main else None
        self.heartbeat = Heartbeat(self.run_dir, self.env.rank)
        if self.env.is_main:
            for cb in self.callbacks:
                cb.on_start(self)
        rollbacks = 0
        try:
            while True:
                outcome = self._run_until_done()
                if outcome != "rollback":
                    break
                rollbacks += 1
                if rollbacks > self.cfg.train.max_rollbacks:
                    outcome = "diverged"
                    break
                log.warning("rolling back to the last good checkpoint (rollback %d of %d)",
                            rollbacks, self.cfg.train.max_rollbacks)
                self._restore()
                if self.metrics is not None:
                    self.metrics.rewind(self.step)
        finally:
            if self.metrics is not None:
                self.metrics.close()
        return self._finish(outcome)

    def _finish(self, outcome: str) -> RunResult:
        saved, seconds = None, None
        if outcome == "stop":
            saved = self.save()
            seconds = time.time() - self._stop_time if self._stop_time else None
            status = RunStatus.STOPPED
            if self.env.is_main:
                log.info("stop requested (%s): saved step %d in %.2f s after the request",
                         self._stop_reason, self.step, seconds or 0.0)
        elif outcome == "diverged":
            status = RunStatus.DIVERGED
            log.error("non-finite loss persisted after %d rollback(s): run DIVERGED at step %d",
                      self.cfg.train.max_rollbacks, self.step)
        else:
            # Rank 0 decides: `save` is collective, so every rank must take the same branch.
            if distributed.broadcast_object(self.env.is_main and self.step not in self.ckpt.steps(),
                                            self.env):
                saved = self.save()
            status = RunStatus.COMPLETED
        result = RunResult(status, self.step, self.total_steps, self._stop_reason, saved, seconds)
        self.heartbeat.beat(self.step, force=True)
        if self.env.is_main:
            outcome_record = {"status": status.value, "step": self.step,
                              "total_steps": self.total_steps, "reason": self._stop_reason,
                              "spread": self.spread, "time": time.time()}
            atomic_write(self.run_dir / OUTCOME_FILE,
                         lambda f: f.write(json.dumps(outcome_record).encode()))
            for cb in self.callbacks:
                cb.on_end(self, result)
        return result

    def _run_until_done(self) -> str:
        """Steps until the end ('done'), a stop request ('stop') or too many bad steps."""
        bad_streak, save_due = 0, False
        while self.step < self.total_steps:
            epoch, in_epoch = divmod(self.step, self.steps_per_epoch)
            self.sampler.set_epoch(epoch, start_step=in_epoch)
            if self.tagged is not None:
                self.tagged.epoch = epoch
            batches = iter(self.loader)
            for _ in range(in_epoch, self.steps_per_epoch):
                if distributed.any_rank(self._stop_reason is not None, self.env):
                    self._stop_reason = self._stop_reason or "stop requested on another rank"
                    return "stop"
                record = self._train_step(batches, epoch)
                bad_streak = bad_streak + 1 if record["skipped_step"] else 0
                if bad_streak > self.cfg.train.max_bad_steps:
                    return "rollback"
                if self.step >= self.total_steps:
                    return "done"
                save_due = save_due or self.ckpt.due(self.step)
                if save_due and not bad_streak:  # never in the middle of a run of skipped steps
                    self.save()
                    save_due = False
        return "done"

    def _forward(self, batch: dict, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The engine's forward: (objective loss, output embeddings) of one micro-batch."""
        images = batch["image"].to(self.env.device, non_blocking=True)
        with self.autocast:
            loss, outputs = self.step_module(images)
        if self._loss_hook is not None:
            loss = self._loss_hook(self.step, loss)
        return loss, outputs

    def _train_step(self, batches: Iterator[dict], epoch: int) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        start = time.perf_counter()
        lr = lr_at(self.step, peak=self.peak_lr, total_steps=self.total_steps,
                   warmup=self.warmup, floor=cfg.optim.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        result = self.engine.step(batches, self._forward, step=self.step)
        if self.ema is not None and not result.skipped:
            self.ema.update(self.model, self.step)
        self.step += 1
        step_time = time.perf_counter() - start
        record = {
            "step": self.step, "epoch": epoch, "loss": result.loss, "lr": lr,
            "grad_norm": result.grad_norm, "images_per_s": cfg.train.global_batch / step_time,
            "step_time_s": step_time, "data_time_s": result.data_time_s,
            "mem_mb": _memory_mb(env.device), "skipped_images": result.skipped_images,
            "skipped_step": result.skipped, "time": time.time(),
        }
        final = self.step == self.total_steps  # always monitored: outcome.json records it
        if (self.step % cfg.train.monitor_every == 0 or final) and result.outputs is not None:
            spread = self.spread = embedding_spread(result.outputs).item()
            record["spread"] = spread
            if env.is_main and (spread < cfg.train.collapse_spread or result.loss < -0.99):
                log.warning("possible representation collapse at step %d: embedding spread %.4f, "
                            "loss %.4f", self.step, spread, result.loss)
        self.heartbeat.beat(self.step)
        if env.is_main:
            self.metrics.write(record)
            for cb in self.callbacks:
                cb.on_step_end(self, record)
        return record


def _memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(run_dir: str | Path, **kwargs) -> RunResult:
    """Run (or resume) the pretraining stored in `run_dir` (its config.yaml)."""
    from nepa.train.runconfig import load_run_config

    return Trainer(load_run_config(run_dir), run_dir, **kwargs).fit()
