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

import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Sequence
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
from nepa.evals.config import FinetuneConfig
from nepa.evals.layer_decay import LayerDecaySchedule, param_groups
from nepa.model import NepaViT
from nepa.train import distributed, engine
from nepa.train.checkpoints import CheckpointManager
from nepa.train.config import CheckpointConfig
from nepa.train.ema import EMA

log = logging.getLogger("nepa.evals.finetune")
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.pt"


def build_classifier(weights: str | Path, cfg: FinetuneConfig, num_classes: int,
                     labels: Sequence[str] = ()) -> NepaViT:
    """The pretrained backbone with the fine-tuning attention, drop path and QK-norm gain, a
    zero-initialised head (as the release) and the patch embedding frozen when `freeze_embed`."""
    from nepa.pretrained import read_weights

    model_cfg, state = read_weights(weights, ema=cfg.pretrained_ema)
    affine = model_cfg.qk_norm_affine if cfg.qk_norm_affine is None else cfg.qk_norm_affine
    check(affine or not model_cfg.qk_norm_affine, "finetune.qk_norm_affine",
          "the pretrained model has a learned QK-norm gain; set true or null to keep it")
    model = NepaViT(dataclasses.replace(model_cfg, causal=cfg.causal, drop_path=cfg.drop_path,
                                        qk_norm_affine=affine))
    missing, unexpected = model.load_state_dict(state, strict=False)
    added = [k for k in missing if k.endswith(("q_norm.weight", "k_norm.weight"))]
    if unexpected or len(added) != len(missing) or (added and model_cfg.qk_norm_affine):
        raise KeyError(f"weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    # A gain added to a plain QK norm starts at 1 (nn.LayerNorm's init): the same function.
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
        self.ddp = engine.wrap_ddp(self.model, env)
        groups = param_groups(self.model, lr=cfg.peak_lr, head_lr=cfg.head_lr,
                              weight_decay=cfg.weight_decay, depth=self.model.cfg.depth)
        self.optimizer = torch.optim.AdamW(groups, lr=0.0, betas=cfg.betas, eps=cfg.eps)
        self.engine = engine.StepEngine(
            self.model, self.optimizer, env, accumulation=self.accumulation,
            image_shape=(self.model.cfg.in_chans, data.image_size, data.image_size),
            ddp=self.ddp, clip_grad=cfg.clip_grad)
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
        self.autocast, precision = engine.autocast(cfg.precision, env.device)
        self.ckpt = CheckpointManager(self.work_dir, CheckpointConfig(keep_last=cfg.keep_checkpoints))
        self.step, self.records, self.best = 0, [], None
        self.loss_sum, self.loss_count = 0.0, 0  # training loss since the last evaluation
        if env.is_main:
            log.info("derived: lr=%.3g (blr %.3g x %d/256) head_lr=%.3g world_size=%d "
                     "accumulation=%d steps/epoch=%d total_steps=%d warmup=%d precision=%s",
                     cfg.peak_lr, cfg.blr, cfg.global_batch, cfg.head_lr, env.world_size,
                     self.accumulation, self.steps_per_epoch, self.total_steps,
                     self.schedule.warmup, precision)

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
            **self.engine.state_dict(),  # model, optimizer
            "ema": self.ema.state_dict() if self.ema else None,
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
        restored = engine.restore_latest(self.ckpt, self.env, warn=log.warning)
        if restored is None:
            return False
        path, payload = restored
        if int(payload["total_steps"]) != self.total_steps:
            raise ConfigError(
                f"finetune: {path} belongs to a run of {payload['total_steps']} steps, this one "
                f"has {self.total_steps}; keep the recipe or use a new work directory")
        self.engine.load_state_dict(payload)
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

    def _pairs(self, batch: dict) -> dict:
        """With Mixup/CutMix, drop the last image of an odd batch: timm's mixing needs pairs."""
        if self.mixup is None or len(batch["label"]) % 2 == 0:
            return batch  # an unreadable image makes a batch odd
        return {**batch, "image": batch["image"][:-1], "label": batch["label"][:-1]}

    def _forward(self, batch: dict, micro: int) -> tuple[torch.Tensor, None]:
        """The engine's forward: the classifier loss of one micro-batch (mixed if configured)."""
        images = batch["image"].to(self.env.device, non_blocking=True)
        targets = batch["label"].to(self.env.device, non_blocking=True)
        if self.mixup is not None:
            with nepa_data.seeded(mix_seed(self.cfg.seed, "mixup", self.step, micro, self.env.rank)):
                images, targets = self.mixup(images, targets)  # targets: (B, classes), soft
        with self.autocast:
            logits = (self.model if self.ddp is None else self.ddp)(images)  # (B, classes)
        return self.criterion(logits.float(), targets), None

    def _train_step(self, batches: Iterator[dict]) -> dict[str, float]:
        torch.manual_seed(mix_seed(self.cfg.seed, "step", self.step, self.env.rank))
        lrs = self.schedule.lrs(self.step, self.optimizer.param_groups)
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        result = self.engine.step(map(self._pairs, batches), self._forward, step=self.step)
        if not result.skipped:
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            self.loss_sum, self.loss_count = self.loss_sum + result.loss, self.loss_count + 1
        self.step += 1
        return {"loss": result.loss, "lr": max(lrs)}

    def _end_epoch(self) -> None:
        """Evaluate raw and EMA weights, log the epoch, keep the best, save a checkpoint."""
        models = {"raw": self.model}
        if self.ema is not None:
            self.ema_model.load_state_dict(self.ema.state_dict())
            models["ema"] = self.ema_model
        results = evaluate_classifiers(models, self.val, batch_size=self.cfg.eval_batch,
                                       env=self.env, data=self.data)
        since = self.step - (self.records[-1]["step"] if self.records else 0)
        record: dict[str, Any] = {"epoch": -(-self.step // self.steps_per_epoch), "step": self.step,
                                  "train_loss": self.loss_sum / max(1, self.loss_count),
                                  "skipped_steps": since - self.loss_count}  # non-finite
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
