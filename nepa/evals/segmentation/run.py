"""The ADE20K evaluation entry point: mmengine's Runner, preemptible and resumable.

`run_segmentation` renders the mmseg config, lets the Runner train (validating every
`val_interval` and at the end, checkpointing into `work_dir`) and returns mIoU and aAcc.
A hook reports progress after every iteration and, once `control.should_stop()`, saves a
checkpoint and ends training: the outcome is STOPPED and the next call resumes from
`work_dir/last_checkpoint` (mmengine's resume: iteration counter, optimizer, schedulers).

Checkpoints are mmengine's format (meta, state_dict, message_hub, optimizer, schedulers), not
`nepa.checkpoint`'s; the mmengine fork loads them with `weights_only=True` under its own safe
globals. A resume restores the saved lr schedule over the config, so a longer `iters` would
not extend it (the lr would stay 0): the schedule fields are pinned per work_dir and a
changed value is refused.
"""

from __future__ import annotations

import json
import math
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.dist import all_reduce, get_world_size, is_main_process
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmseg.utils import register_all_modules

import nepa.evals.segmentation.backbone  # noqa: F401  (registers NepaBackbone & co.)
from nepa.config import ConfigError, to_dict
from nepa.evals.common import EvalControl, EvalOutcome, Metric
from nepa.evals.segmentation.config import SegmentationConfig, build_mmseg_config
from nepa.pretrained import read_weights
from nepa.rundir import atomic_write, read_jsonl

RECIPE_FILE = "nepa_segmentation.json"  # the schedule a work_dir was started with
CURVE_FILE = "val_curve.jsonl"  # one line per validation: step, aAcc, mIoU, mAcc, per-class IoU
POINTER = "last_checkpoint"  # mmengine's pointer to the newest checkpoint
SCHEDULE_FIELDS = ("iters", "warmup_iters", "lr", "weight_decay", "layer_decay", "batch_size")


class ControlHook(Hook):
    """Progress to `control`, a checkpoint and the end of training on a stop request, and
    each validation appended to the work_dir's curve file."""

    priority = "LOWEST"  # after CheckpointHook: an interval save on this iteration comes first

    def __init__(self, control: EvalControl, work_dir: Path):
        self.control, self.work_dir = control, work_dir

    def after_train_iter(self, runner, batch_idx: int, data_batch: Any = None, outputs: Any = None) -> None:
        step = runner.iter + 1  # the counter advances after the hooks
        loss = outputs.get("loss", math.nan) if outputs else math.nan
        loss = float(loss.detach() if hasattr(loss, "detach") else loss)  # log vars keep their graph
        self.control.report({"step": step, "total": runner.max_iters, "loss": loss})
        if self._stop_everywhere() and step < runner.max_iters:
            name = f"iter_{step}.pth"
            if not (self.work_dir / name).is_file():
                runner.save_checkpoint(str(self.work_dir), name, by_epoch=False)
            if is_main_process():
                atomic_write(self.work_dir / POINTER, lambda f: f.write(str(self.work_dir / name).encode()))
            runner.logger.info(f"stop requested ({self.control.stop_reason}): saved {name}, ending training")
            runner.train_loop.stop_training = True

    def _stop_everywhere(self) -> bool:
        """The stop request of any process, so that all of them stop at the same iteration."""
        flag = torch.tensor([float(self.control.should_stop())])
        if get_world_size() > 1:
            all_reduce(flag, op="max")
        return bool(flag.item())

    def after_val_epoch(self, runner, metrics: dict[str, float] | None = None) -> None:
        if not is_main_process():
            return
        # mmseg rounds to 2 decimals in float32: round again so 1.27 does not read 1.2699999
        record = {"step": runner.iter, **{k: round(float(v), 4) for k, v in (metrics or {}).items()}}
        record["per_class_iou"] = dict(getattr(runner.val_evaluator.metrics[0], "per_class_iou", {}))
        with open(self.work_dir / CURVE_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


def read_curve(work_dir: str | Path) -> list[dict[str, Any]]:
    """Validations of a work_dir by step (the latest record per step)."""
    by_step = {r["step"]: r for r in read_jsonl(Path(work_dir) / CURVE_FILE) if "step" in r}
    return [by_step[s] for s in sorted(by_step)]


def _pin_schedule(cfg: SegmentationConfig, work_dir: Path) -> None:
    """Refuse to resume a work_dir with another schedule (mmengine would keep the old one)."""
    path, current = work_dir / RECIPE_FILE, {k: getattr(cfg, k) for k in SCHEDULE_FIELDS}
    if (work_dir / POINTER).is_file() and path.is_file():
        saved = json.loads(path.read_text())
        for key in SCHEDULE_FIELDS:
            if saved.get(key) != current[key]:
                raise ConfigError(
                    f"segmentation.{key}: {work_dir} holds a run started with {key}={saved.get(key)!r}, "
                    f"not {current[key]!r}; a resume restores the saved schedule, so use the same "
                    "value or a new work directory")
    elif is_main_process():
        atomic_write(path, lambda f: f.write(json.dumps(current, indent=1).encode()))


def _build_runner(weights: str | Path, cfg: SegmentationConfig, work_dir: Path) -> Runner:
    model_cfg, _ = read_weights(weights, ema=cfg.ema)  # the architecture; the backbone loads the weights
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    mm = build_mmseg_config(model_cfg, cfg, str(Path(weights).resolve()), str(work_dir), world_size=world_size)
    mm["launcher"] = "pytorch" if world_size > 1 else "none"
    mm["experiment_name"] = f"nepa_segmentation_{uuid.uuid4().hex[:8]}"  # per-process singletons
    register_all_modules(init_default_scope=False)
    return Runner.from_cfg(Config(mm))


def _outcome(cfg: SegmentationConfig, step: int, curve: list[dict[str, Any]]) -> EvalOutcome:
    points = [{k: v for k, v in r.items() if k != "per_class_iou"} for r in curve]
    if step < cfg.iters:
        return EvalOutcome(status="STOPPED", step=step, total_steps=cfg.iters, curves={"val": points})
    final = curve[-1]
    detail = {"per_class_iou": final["per_class_iou"], "mAcc": final.get("mAcc"), "iters": cfg.iters,
              "crop_size": cfg.crop_size, "config": to_dict(cfg)}
    metrics = (Metric("mIoU", final["mIoU"], weights="raw", split="val", detail=detail),
               Metric("aAcc", final["aAcc"], weights="raw", split="val"))
    return EvalOutcome(status="COMPLETED", step=step, total_steps=cfg.iters, metrics=metrics,
                       curves={"val": points})


def run_segmentation(weights: str | Path, cfg: SegmentationConfig, work_dir: str | Path, *,
                     control: EvalControl) -> EvalOutcome:
    """Fine-tune UPerNet on the NEPA backbone on ADE20K (`cfg.data_root`); resumes work_dir.

    mIoU and aAcc are percent on the validation split after `cfg.iters` iterations, measured
    with the fine-tuned ("raw") weights; per-class IoU is in the mIoU metric's detail.
    """
    work_dir = Path(work_dir).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    _pin_schedule(cfg, work_dir)
    runner = _build_runner(weights, cfg, work_dir)
    runner.register_hook(ControlHook(control, work_dir))
    runner.train()
    step = runner.iter
    curve = read_curve(work_dir)
    if step >= cfg.iters and (not curve or curve[-1]["step"] != step):
        runner.val()  # resumed at the end (the final validation was lost): measure again
        curve = read_curve(work_dir)
    return _outcome(cfg, step, curve)
