"""The main job on the embedded default: local-executor pretraining, then a linear probe."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nepactl import console


def _render_config(template: Path, steps: int | None):
    import dataclasses

    from nepa.runconfig import load_yaml_text

    cfg = load_yaml_text(template.read_text(), str(template))
    if steps is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))
    return cfg


def _pretrain(run_dir: Path, total: int) -> None:
    """Submit through submitit's local executor and follow metrics.jsonl with a progress bar."""
    import submitit

    from nepa.train.metrics import read_metrics
    from nepactl.job import TrainJob

    executor = submitit.LocalExecutor(folder=run_dir / "submitit")
    executor.update_parameters(timeout_min=120)  # explicit: the local default (2 min) is too short
    job = executor.submit(TrainJob(run_dir))
    console.hint(f"submitted local job {job.job_id}; logs in {run_dir / 'submitit'}")
    columns = (TextColumn("pretraining"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console.err) as progress:
        task = progress.add_task("pretrain", total=total, loss="-")
        while not job.done():
            records = read_metrics(run_dir)
            if records:
                progress.update(task, completed=records[-1]["step"], loss=f"{records[-1]['loss']:.4f}")
            time.sleep(0.5)
        records = read_metrics(run_dir)
        if records:
            progress.update(task, completed=records[-1]["step"], loss=f"{records[-1]['loss']:.4f}")
    outcome = job.result()
    if outcome["status"] != "COMPLETED":
        raise RuntimeError(f"pretraining ended {outcome['status']}; see {run_dir / 'submitit'}")


def run_demo(template: Path, run_dir: Path, *, steps: int | None, fresh: bool) -> list[dict]:
    from nepa import data as nepa_data
    from nepa.evals.linprobe import LinProbeConfig, linear_probe
    from nepa.model import NepaViT
    from nepa.pretrained import load_pretrained
    from nepa.runconfig import write_run_config
    from nepa.train.metrics import read_metrics

    cfg = _render_config(template, steps)
    if fresh and run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_run_config(run_dir, cfg)
    _pretrain(run_dir, cfg.train.max_steps)

    transform = nepa_data.eval_transform(cfg.data.image_size, crop_pct=1.0)
    train = nepa_data.build_dataset(cfg.data, "train", transform)
    val = nepa_data.build_dataset(cfg.data, "val", transform)
    probe_cfg = LinProbeConfig(blocks=(cfg.model.depth // 2 - 1,))
    console.hint("linear probe: extracting features and choosing C on held-out train ...")
    import torch

    torch.manual_seed(cfg.train.seed)
    models = {"NEPA (EMA)": load_pretrained(run_dir), "random init": NepaViT(cfg.model).eval()}
    final = read_metrics(run_dir)[-1]
    rows = []
    for name, model in models.items():
        for result in linear_probe(model, train, val, probe_cfg):
            rows.append({"weights": name, "feature": result.feature, "val top-1 %": result.top1,
                         "held-out top-1 %": result.holdout_top1, "C": result.c})
    console.hint(f"pretraining: {final['step']} steps, final loss {final['loss']:.4f}; "
                 f"run directory {run_dir}")
    return rows
