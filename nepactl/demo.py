"""The main job on the embedded default: tiny NEPA pretrained on the bundled digits through
the local executor (the same render -> submit path as `nepactl pretrain`), then evaluated."""

from __future__ import annotations

import time
from pathlib import Path

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from nepactl import console, runs
from nepactl.errors import CliError

DEMO_NAME = "demo"


def _follow(run_dir: Path, total: int) -> dict:
    """Progress bar over metrics.jsonl until the local job's outcome is written."""
    from nepactl.status import _local_alive

    job_id = next(e["job_id"] for e in reversed(runs.read_ledger(run_dir)) if e.get("job_id"))
    columns = (TextColumn("pretraining"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
               TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console.err) as progress:
        task = progress.add_task("pretrain", total=total, loss="-")
        while True:
            last = runs.last_line(run_dir / "metrics.jsonl") or {}
            if last:
                progress.update(task, completed=last["step"], loss=f"{last['loss']:.4f}")
            outcome = runs.read_json(run_dir / "outcome.json")
            if outcome and outcome["status"] != "STOPPED" and outcome["step"] >= last.get("step", 0):
                return outcome
            if not _local_alive(job_id):
                time.sleep(1.0)  # the outcome file may land just after the process ends
                outcome = runs.read_json(run_dir / "outcome.json")
                if outcome and outcome["status"] != "STOPPED":
                    return outcome
                raise CliError(f"the demo job ended without finishing; see nepactl logs {DEMO_NAME} "
                               f"--runs-root {run_dir.parent}")
            time.sleep(0.5)


def pretrain_demo(root: Path, *, steps: int | None, fresh: bool) -> Path:
    from nepactl.render import render
    from nepactl.submit import submit_job, submit_new

    run_dir = root / DEMO_NAME
    if fresh and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    sets = (f"train.max_steps={steps}",) if steps else ()
    rendered = render(size="tiny", cluster="local", name=DEMO_NAME, sets=sets)
    outcome = runs.read_json(run_dir / "outcome.json")
    if not (run_dir / runs.RUN_INFO).is_file():
        submit_new(rendered, root, task="pretrain", size="tiny")
    elif outcome and outcome["status"] == "COMPLETED":
        console.hint(f"reusing the completed demo run in {run_dir} (--fresh starts over)")
        return run_dir
    else:
        submit_job(run_dir, attempt_cause="resume")
    outcome = _follow(run_dir, rendered.run.train.max_steps)
    if outcome["status"] != "COMPLETED":
        raise CliError(f"demo pretraining ended {outcome['status']}; see nepactl logs {DEMO_NAME}")
    return run_dir


def evaluate_demo(run_dir: Path) -> list[dict]:
    """Linear probe of the EMA weights and of the same architecture at random init."""
    import torch

    from nepa import data as nepa_data
    from nepa.evals.linprobe import LinProbeConfig, linear_probe
    from nepa.model import NepaViT
    from nepa.runconfig import load_run_config

    cfg = load_run_config(run_dir)
    transform = nepa_data.eval_transform(cfg.data.image_size, crop_pct=1.0)
    train = nepa_data.build_dataset(cfg.data, "train", transform)
    val = nepa_data.build_dataset(cfg.data, "val", transform)
    probe_cfg = LinProbeConfig(blocks=(cfg.model.depth // 2 - 1,))
    torch.manual_seed(cfg.train.seed)
    from nepa.pretrained import load_pretrained

    models = {"NEPA (EMA)": load_pretrained(run_dir), "random init": NepaViT(cfg.model).eval()}
    rows = []
    with console.err.status("linear probe: features, lr chosen on held-out train, scored on val"):
        for name, model in models.items():
            for result in linear_probe(model, train, val, probe_cfg):
                rows.append({"weights": name, "feature": result.feature,
                             "val top-1 %": result.top1, "held-out top-1 %": result.holdout_top1,
                             "probe lr": result.lr})
    return rows
