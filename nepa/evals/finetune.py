"""End-to-end fine-tuning of a pretrained NEPA model as a classifier (the release's ImageNet-1K
protocol), evaluated on val with the raw and the EMA weights after every epoch.

Defaults are the release's B recipe. Its L recipe differs in: `blr: 1e-3`, `layer_decay: 0.75`,
`drop_path: 0.2`, `warmup_fraction: 0.3`, and evaluation at `eval_crop_pct: 0.95` with
`eval_squash: true` (235x235 -> 224). Size presets come from the YAML templates.

Preemptible and exactly resumable: the stop request is checked at every optimizer step; the
lr schedule is a pure function of the step; the data order is a function of (seed, epoch),
each image's augmentation of (seed, epoch, index), and the global RNG (drop path, RoPE
rescale) and Mixup's numpy RNG are reseeded from (seed, step, rank) at every step. So a run
stopped and resumed ends with the same weights, bit for bit, as one never interrupted.

Outputs in `work_dir`: `checkpoints/step_*.pt` (nepa checkpoints: `nepa.load_pretrained(work_dir)`
gives the fine-tuned classifier, EMA weights), `best.pt` (the weights of the best epoch by EMA
top-1) and `metrics.jsonl` (one line per epoch, each epoch exactly once across resumes).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

import nepa
from nepa import checkpoint, rundir
from nepa import data as nepa_data
from nepa.config import ConfigError, check, to_dict
from nepa.data.config import DataConfig, accumulation
from nepa.data.sampler import mix_seed
from nepa.evals.classify import evaluate_classifiers
from nepa.evals.common import EvalControl, EvalOutcome, Metric
from nepa.evals.layer_decay import LayerDecaySchedule, Ramp, Schedule, param_groups
from nepa.model import NepaViT
from nepa.train import distributed
from nepa.train.checkpoints import CheckpointManager
from nepa.train.config import CheckpointConfig, EMAConfig
from nepa.train.ema import EMA

log = logging.getLogger("nepa.evals.finetune")
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.pt"


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Fine-tuning recipe; defaults are the release's B recipe (see the module docstring for L)."""

    epochs: int = 100
    global_batch: int = 1024  # images per optimizer step over all ranks
    micro_batch: int = 128  # per device; accumulation = global_batch / (world_size * micro_batch)
    blr: float = 1.5e-3  # base lr per 256 images: lr = blr * global_batch / 256 (L: 1e-3)
    lr: float | None = None  # absolute lr; when set, blr scaling is not applied
    head_lr: float = 1e-3  # classifier and final LayerNorm; absolute, not scaled by the batch
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05  # not on biases, norms, LayerScale
    warmup_fraction: float = 0.2  # of total steps (L: 0.3)
    clip_grad: float | None = None  # global grad-norm clip; null: off (as released)
    layer_decay: float = 0.65  # lr factor per layer below the top (L: 0.75)
    # release: fixed decay, per-group warmup; dynamic: the paper's decay ramp 0.35 -> 1.0
    layer_decay_schedule: Schedule = "release"
    dynamic_ramp: Ramp = "linear"  # dynamic: linear (the paper) or cosine (the release code)
    dynamic_decay_start: float = 0.35
    dynamic_decay_end: float = 1.0
    drop_path: float = 0.1  # stochastic depth at the last block (L: 0.2)
    causal: bool = False  # attention during fine-tuning: bidirectional (the release) or causal
    freeze_embed: bool = True  # keep the patch embedding frozen (LayerScale otherwise hurts)
    pool: Literal["mean", "last"] = "mean"  # mean of patch tokens -> fc_norm, or the last token
    pretrained_ema: bool | None = None  # null: the EMA weights of a nepa run when it holds them
    label_smoothing: float = 0.1
    mixup: float = 0.8  # Mixup alpha; 0 with cutmix 0: no mixing (label-smoothed CE)
    cutmix: float = 1.0  # CutMix alpha
    mixup_switch_prob: float = 0.5  # chance of CutMix instead of Mixup for a batch
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment; null: off
    re_prob: float = 0.25  # random erasing probability (pixel mode)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (timm's default)
    hflip: float = 0.5  # horizontal flip probability (0 for data where a mirror changes the class)
    ema: EMAConfig = field(default_factory=EMAConfig)  # best epoch chosen by EMA top-1
    eval_batch: int = 256  # per device
    eval_crop_pct: float = 0.875  # L: 0.95
    eval_squash: bool = False  # L: true (square resize, as the release)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU
    grad_checkpointing: bool = False
    seed: int = 0
    max_steps: int | None = None  # overrides epochs (demo and tests)
    epoch_steps: int | None = None  # cap on steps per epoch (demo and tests: evaluate more often)
    keep_checkpoints: int = 2  # newest K step checkpoints (>= 2: a corrupt newest falls back)
    dist_timeout_s: int = 1800

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "finetune.epochs", "must be >= 1")
        check(self.global_batch >= 1 and self.micro_batch >= 1, "finetune.global_batch",
              "global_batch and micro_batch must be >= 1")
        check(self.global_batch % self.micro_batch == 0, "finetune.micro_batch",
              f"{self.micro_batch} does not divide global_batch {self.global_batch}")
        check(not self.mixing or self.micro_batch % 2 == 0, "finetune.micro_batch",
              f"Mixup/CutMix pair images within a batch: make {self.micro_batch} even "
              "(or set finetune.mixup and finetune.cutmix to 0)")
        for name in ("blr", "head_lr", "eps"):
            check(getattr(self, name) > 0, f"finetune.{name}", "must be > 0")
        check(self.lr is None or self.lr > 0, "finetune.lr", "must be > 0 or null")
        check(all(0 <= b < 1 for b in self.betas), "finetune.betas", "each must be in [0, 1)")
        for name in ("warmup_fraction", "drop_path", "label_smoothing"):
            check(0 <= getattr(self, name) < 1, f"finetune.{name}", "must be in [0, 1)")
        for name in ("layer_decay", "dynamic_decay_start", "dynamic_decay_end", "eval_crop_pct"):
            check(0 < getattr(self, name) <= 1, f"finetune.{name}", "must be in (0, 1]")
        check(self.mixup >= 0 and self.cutmix >= 0, "finetune.mixup", "alphas must be >= 0")
        check(0 <= self.mixup_switch_prob <= 1, "finetune.mixup_switch_prob", "must be in [0, 1]")
        check(0 <= self.re_prob <= 1, "finetune.re_prob", "must be in [0, 1]")
        check(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "finetune.crop_scale",
              "expected [low, high] with 0 < low <= high <= 1")
        check(0 <= self.hflip <= 1, "finetune.hflip", "must be in [0, 1]")
        check(self.clip_grad is None or self.clip_grad > 0, "finetune.clip_grad", "must be > 0 or null")
        for name in ("max_steps", "epoch_steps"):
            check(getattr(self, name) is None or getattr(self, name) >= 1, f"finetune.{name}",
                  "must be >= 1 or null")
        check(self.eval_batch >= 1, "finetune.eval_batch", "must be >= 1")
        check(self.keep_checkpoints >= 1, "finetune.keep_checkpoints", "must keep at least 1")

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def peak_lr(self) -> float:
        """The base lr of the backbone: blr x global_batch / 256 unless `lr` is given."""
        return self.lr if self.lr is not None else self.blr * self.global_batch / 256


def build_classifier(weights: str | Path, cfg: FinetuneConfig, num_classes: int,
                     labels: Sequence[str] = ()) -> NepaViT:
    """The pretrained backbone with the fine-tuning attention and drop path, a zero-initialised
    head (as the release) and the patch embedding frozen when `freeze_embed`."""
    from nepa.pretrained import read_weights

    model_cfg, state = read_weights(weights, ema=cfg.pretrained_ema)
    model = NepaViT(dataclasses.replace(model_cfg, causal=cfg.causal, drop_path=cfg.drop_path))
    model.load_state_dict(state, strict=True)
    model.reset_classifier(num_classes, cfg.pool, labels)
    model.patch_embed.requires_grad_(not cfg.freeze_embed)
    if model.mask_token is not None:  # pretraining input masking: unused by classification
        model.mask_token.requires_grad_(False)
    return model


def _record_metrics(record: dict, selected: str, split: str) -> tuple[Metric, ...]:
    detail = {"epoch": record["epoch"], "selected": selected}
    return tuple(Metric(name, record[f"{weights}_{name}"], weights=weights, split=split,
                        detail=detail)
                 for weights in ("raw", "ema") if f"{weights}_top1" in record
                 for name in ("top1", "top5"))


class _Finetune:
    """One process's view of a fine-tuning run in `work_dir`."""

    def __init__(self, weights: str | Path, cfg: FinetuneConfig, data: DataConfig,
                 work_dir: str | Path, control: EvalControl, env: distributed.DistEnv):
        self.cfg, self.data, self.control, self.env = cfg, data, control, env
        self.work_dir = Path(work_dir)
        torch.manual_seed(cfg.seed)
        classes = self._build_data()
        self.model = build_classifier(weights, cfg, len(classes), [str(c) for c in classes])
        self.model.to(env.device).set_grad_checkpointing(cfg.grad_checkpointing)
        check(data.image_size % self.model.cfg.patch_size == 0, "data.image_size",
              f"{data.image_size} is not a multiple of the model's patch size "
              f"{self.model.cfg.patch_size}")
        self.ema = EMA(self.model, cfg.ema) if cfg.ema.enabled else None
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False) if self.ema else None
        self.ddp = None
        if env.enabled:
            ids = [env.local_rank] if env.device.type == "cuda" else None
            self.ddp = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        groups = param_groups(self.model, lr=cfg.peak_lr, head_lr=cfg.head_lr,
                              weight_decay=cfg.weight_decay, depth=self.model.cfg.depth)
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps)
        self.schedule = LayerDecaySchedule(
            decay=cfg.layer_decay, total_steps=self.total_steps,
            warmup=int(cfg.warmup_fraction * self.total_steps), schedule=cfg.layer_decay_schedule,
            ramp=cfg.dynamic_ramp, start=cfg.dynamic_decay_start, end=cfg.dynamic_decay_end)
        self.mixup = (nepa_data.build_mixup(len(classes), cfg.mixup, cfg.cutmix,
                                            cfg.mixup_switch_prob, cfg.label_smoothing)
                      if cfg.mixing else None)
        if self.mixup is not None:
            from timm.loss import SoftTargetCrossEntropy

            self.criterion: nn.Module = SoftTargetCrossEntropy()
        else:
            self.criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and env.device.type == "cuda")
        self.autocast = (torch.autocast(env.device.type, dtype=torch.bfloat16) if use_bf16
                         else contextlib.nullcontext())
        self.ckpt = CheckpointManager(self.work_dir, CheckpointConfig(keep_last=cfg.keep_checkpoints))
        self.step, self.records, self.best = 0, [], None
        self.loss_sum, self.loss_count = 0.0, 0  # training loss since the last evaluation
        if env.is_main:
            log.info("derived: lr=%.3g (blr %.3g x %d/256) head_lr=%.3g world_size=%d "
                     "accumulation=%d steps/epoch=%d total_steps=%d warmup=%d precision=%s",
                     cfg.peak_lr, cfg.blr, cfg.global_batch, cfg.head_lr, env.world_size,
                     self.accumulation, self.steps_per_epoch, self.total_steps,
                     self.schedule.warmup, "bf16" if use_bf16 else "fp32")

    def _build_data(self) -> list:
        """Train loader (map-style: seeded items in a resumable order; wds: the shard stream),
        val dataset; returns the class names."""

        cfg, data, env = self.cfg, self.data, self.env
        transform = nepa_data.finetune_transform(data, auto_augment=cfg.auto_augment, re_prob=cfg.re_prob,
                                                 scale=cfg.crop_scale, hflip=cfg.hflip)
        self.accumulation = accumulation(cfg.global_batch, cfg.micro_batch, env.world_size)
        geometry = dict(global_batch=cfg.global_batch, micro_batch=cfg.micro_batch,
                        rank=env.rank, world_size=env.world_size, seed=cfg.seed)
        if data.source == "wds":
            self.sampler = nepa_data.build_train_stream(data, "train", transform, **geometry)
            self.tagged, items, classes = None, self.sampler, self.sampler.classes
        else:
            train = nepa_data.build_dataset(data, "train", transform)
            self.sampler = nepa_data.ResumableSampler(len(train), **geometry)
            self.tagged, items = nepa_data.EpochTagged(self.sampler), nepa_data.SeededItems(train, cfg.seed)
            classes = train.classes
        self.loader = nepa_data.build_train_loader(data, items, self.tagged, cfg.micro_batch, cfg.seed)
        self.steps_per_epoch = min(self.sampler.steps_per_epoch, cfg.epoch_steps or math.inf)
        if self.steps_per_epoch < 1:
            raise nepa_data.DataError(
                f"the training split has fewer images than one global batch ({cfg.global_batch}); "
                "lower finetune.global_batch")
        self.total_steps = cfg.max_steps or cfg.epochs * self.steps_per_epoch
        self.val = nepa_data.build_dataset(data, "val", nepa_data.eval_transform(
            data.image_size, cfg.eval_crop_pct, cfg.eval_squash))
        return list(classes)

    # -- checkpoints ----------------------------------------------------------------------------

    def _payload(self) -> dict[str, Any]:
        return {
            "model_config": to_dict(self.model.cfg),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "total_steps": self.total_steps,
            "epoch": self.step // self.steps_per_epoch,
            "rng": {"torch": torch.get_rng_state()},  # reseeded every step; kept for inspection
            "metrics": list(self.records),
            "best": self.best,
            "loss_sum": self.loss_sum,
            "loss_count": self.loss_count,
            "finetune_config": to_dict(self.cfg),
            "world_size": self.env.world_size,
            "code_version": nepa.__version__,
        }

    def _save(self) -> None:
        """Collective: rank 0 writes (atomically, `latest` pointer, retention), all wait."""
        if self.env.is_main:
            self.ckpt.save(self.step, self._payload())
        distributed.barrier(self.env)

    def _restore(self) -> bool:
        """Resume from the newest checkpoint that loads (rank 0 chooses). False: none."""
        found = self.ckpt.resume(warn=log.warning) if self.env.is_main else None
        path = distributed.broadcast_object(str(found[0]) if found else None, self.env)
        if path is None:
            return False
        payload = found[1] if found else checkpoint.load(path)
        if int(payload["total_steps"]) != self.total_steps:
            raise ConfigError(
                f"finetune: {path} belongs to a run of {payload['total_steps']} steps, this one "
                f"has {self.total_steps}; keep the recipe or use a new work directory")
        self.model.load_state_dict(payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(payload["ema"])
        self.step = int(payload["step"])
        self.records, self.best = list(payload["metrics"]), payload["best"]
        self.loss_sum, self.loss_count = float(payload["loss_sum"]), int(payload["loss_count"])
        torch.set_rng_state(payload["rng"]["torch"])
        if self.env.is_main:
            log.info("resumed from %s at step %d of %d", path, self.step, self.total_steps)
        return True

    def _write_metrics(self) -> None:
        """metrics.jsonl = the checkpoint's epochs, so a resume never logs an epoch twice."""
        text = "".join(json.dumps(r) + "\n" for r in self.records)
        rundir.atomic_write(self.work_dir / METRICS_FILE, lambda f: f.write(text.encode()))

    # -- training -------------------------------------------------------------------------------

    def _micro_batch(self, batch: dict, micro: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(images, targets, weight) on the device; mixed by Mixup/CutMix when configured."""
        images, labels = batch["image"], batch["label"]
        if self.mixup is not None and len(labels) % 2:  # an unreadable image made it odd:
            images, labels = images[:-1], labels[:-1]  # timm's batch mixing needs pairs
        weight = 1.0
        if len(labels) == 0:  # nothing readable: a zero-weighted dummy keeps DDP in step
            weight, size = 0.0, self.data.image_size
            images = torch.zeros(2, self.model.cfg.in_chans, size, size)
            labels = torch.zeros(2, dtype=torch.long)
        images = images.to(self.env.device, non_blocking=True)
        labels = labels.to(self.env.device, non_blocking=True)
        if self.mixup is None:
            return images, labels, weight
        with nepa_data.seeded(mix_seed(self.cfg.seed, "mixup", self.step, micro, self.env.rank)):
            images, targets = self.mixup(images, labels)  # targets: (B, classes), soft
        return images, targets, weight

    def _train_step(self, batches: Iterator[dict]) -> dict[str, float]:
        torch.manual_seed(mix_seed(self.cfg.seed, "step", self.step, self.env.rank))
        lrs = self.schedule.lrs(self.step, self.optimizer.param_groups)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        forward = self.ddp if self.ddp is not None else self.model
        losses = []
        for micro in range(self.accumulation):
            images, targets, weight = self._micro_batch(next(batches), micro)
            sync = contextlib.nullcontext()
            if self.ddp is not None and micro < self.accumulation - 1:
                sync = self.ddp.no_sync()
            with sync:
                with self.autocast:
                    logits = forward(images)  # (B, classes)
                loss = self.criterion(logits.float(), targets)
                (loss * (weight / self.accumulation)).backward()
            if weight:
                losses.append(loss.detach())
        local = torch.stack(losses).mean() if losses else torch.full((), math.nan, device=self.env.device)
        loss = distributed.all_reduce_mean(local, self.env).item()  # the same on every rank
        if math.isfinite(loss):
            if self.cfg.clip_grad is not None:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_grad)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            self.loss_sum, self.loss_count = self.loss_sum + loss, self.loss_count + 1
        else:
            log.warning("non-finite loss at step %d: step skipped", self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"loss": loss, "lr": max(lrs)}

    def _end_epoch(self) -> None:
        """Evaluate raw and EMA weights, log the epoch, keep the best, save a checkpoint."""
        models = {"raw": self.model}
        if self.ema is not None:
            self.ema_model.load_state_dict(self.ema.state_dict())
            models["ema"] = self.ema_model
        results = evaluate_classifiers(models, self.val, batch_size=self.cfg.eval_batch,
                                       env=self.env, data=self.data)
        record: dict[str, Any] = {"epoch": -(-self.step // self.steps_per_epoch), "step": self.step,
                                  "train_loss": self.loss_sum / max(1, self.loss_count)}
        for name, result in results.items():
            record.update({f"{name}_top1": result["top1"], f"{name}_top5": result["top5"]})
        record["images"] = results["raw"]["images"]
        self.records.append(record)
        self.loss_sum, self.loss_count = 0.0, 0
        key = "ema_top1" if self.ema is not None else "raw_top1"
        improved = self.best is None or record[key] > self.best[key]
        if improved:
            self.best = record
        if self.env.is_main:
            with open(self.work_dir / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            if improved:
                weights = self.ema.state_dict() if self.ema is not None else self.model.state_dict()
                checkpoint.save(self.work_dir / BEST_FILE, checkpoint.model_payload(
                    self.model.cfg, weights, epoch=record["epoch"], step=self.step))
            log.info("epoch %d (step %d): %s", record["epoch"], self.step,
                     " ".join(f"{k}={v:.2f}" for k, v in record.items() if k.endswith("top1")))
        self._save()

    def _outcome(self, status: Literal["COMPLETED", "STOPPED"]) -> EvalOutcome:
        metrics: tuple[Metric, ...] = ()
        if status == "COMPLETED" and self.records:
            split = self.data.val_split or "val"
            selected = "best_ema" if self.ema is not None else "best_raw"
            metrics = (_record_metrics(self.records[-1], "final", split)
                       + _record_metrics(self.best, selected, split))
        return EvalOutcome(status=status, step=self.step, total_steps=self.total_steps,
                           metrics=metrics, curves={"val": list(self.records)})

    def run(self) -> EvalOutcome:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._restore()
        if self.env.is_main:
            self._write_metrics()
        spe = self.steps_per_epoch
        while self.step < self.total_steps:
            epoch, in_epoch = divmod(self.step, spe)
            self.sampler.set_epoch(epoch, start_step=in_epoch)
            if self.tagged is not None:
                self.tagged.epoch = epoch
            batches = iter(self.loader)
            for _ in range(in_epoch, spe):
                if distributed.any_rank(self.control.should_stop(), self.env):
                    self._save()
                    return self._outcome("STOPPED")
                record = self._train_step(batches)
                if self.env.is_main:
                    self.control.report({"step": self.step, "total": self.total_steps,
                                         "epoch": epoch + 1, **record})
                if self.step % spe == 0 or self.step == self.total_steps:
                    self._end_epoch()
                if self.step >= self.total_steps:
                    break
        return self._outcome("COMPLETED")


def run_finetune(weights: str | Path, cfg: FinetuneConfig, data: DataConfig, work_dir: str | Path,
                 *, control: EvalControl) -> EvalOutcome:
    """Fine-tune `weights` (nepa checkpoint, run directory: EMA by default, or release) on
    `data`, resuming from `work_dir`; STOPPED (saved) when `control` asks, else COMPLETED with
    top-1/top-5 of the raw and EMA weights at the final and the best-EMA epoch.

    Distributed when launched with RANK/WORLD_SIZE (torchrun, SLURM): one process per device.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    owns_group = world > 1 and not torch.distributed.is_initialized()
    env = distributed.setup(world, cfg.dist_timeout_s)
    try:
        return _Finetune(weights, cfg, data, work_dir, control, env).run()
    finally:
        if owns_group:
            distributed.teardown()
