"""`nepactl results`: gather evaluation results into typed rows (torch-free).

One row per (run, task, metric, weights, protocol, random init), the mean and standard
deviation over seeds, explicit cells for evaluations that are missing, running or failed,
and the paper's numbers as reference rows. Tables, Markdown, CSV and JSON share these rows.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from nepa import rundir
from nepactl import runs
from nepactl.output import Column

# The paper's headline numbers (arXiv 2512.16922) and the released fine-tuned weights' top-1.
PAPER = (
    ("B", "finetune", "top1", 83.8), ("L", "finetune", "top1", 85.3),
    ("B", "ade20k", "mIoU", 48.3), ("L", "ade20k", "mIoU", 54.0),
    ("B", "linprobe", "probe_top1 (last)", 11.3), ("B", "linprobe", "probe_top1 (mean)", 14.1),
    ("B", "imagenet-val", "top1", 83.75), ("L", "imagenet-val", "top1", 85.40),
)
DEFAULT_TASKS = ("finetune", "linprobe", "ade20k")


@dataclass
class ResultRow:
    run: str
    size: str
    task: str
    metric: str
    weights: str  # "raw", "ema", "frozen", "random init", "paper"
    protocol: str  # "paper", "demo" (+ ": recipe name", e.g. "demo: fast probe ..."), "reference"
    value: float | None  # mean over seeds
    std: float | None
    seeds: int
    step: int | None  # pretraining checkpoint step
    state: str  # "done", "RUNNING", "FAILED", "missing", ...
    plot: str = ""
    reason: str = ""  # why a FAILED evaluation failed (its job's one-line error)

    def cell(self) -> str:
        if self.value is None:
            return self.state.lower() + (f": {self.reason}" if self.reason else "")
        return f"{self.value:.2f} ± {self.std:.2f}" if self.std is not None else f"{self.value:.2f}"


def metric_label(metric: dict) -> str:
    detail = metric.get("detail") or {}
    tags = [str(detail[k]) for k in ("feature", "selected") if k in detail]
    return f"{metric['metric']} ({', '.join(tags)})" if tags else metric["metric"]


def protocol_label(doc: dict, metric: dict) -> str:
    """'paper' or 'demo', with the named recipe where the release has none (probe, ADE20K)."""
    recipe = doc.get("recipe") or (metric.get("detail") or {}).get("protocol")
    return f"{doc['protocol']}: {recipe}" if recipe else doc["protocol"]


def _eval_states(run_dir: Path) -> dict[str, str]:
    """State of each evaluation directory without a result (RUNNING, FAILED, ...)."""
    from nepactl.status import collect

    directory = run_dir / "evals"
    if not directory.is_dir():
        return {}
    rows, _ = collect(directory)
    return {row.run: row.state for row in rows}


def _done_rows(run_dir: Path, info: dict, results: list[dict]) -> list[ResultRow]:
    groups: dict[tuple, list[tuple[float, dict]]] = {}
    for doc in results:
        random = bool(doc["checkpoint"].get("random_init"))
        for metric in doc["metrics"]:
            weights = metric["weights"]
            if random:  # raw and EMA of a random-init fine-tune stay apart
                weights = "random init" + ("" if weights == "frozen" else f" ({weights})")
            key = (doc["task"], metric_label(metric), weights, protocol_label(doc, metric))
            groups.setdefault(key, []).append((float(metric["value"]), doc))
    rows = []
    for (task, label, weights, protocol), values in sorted(groups.items()):
        numbers = [v for v, _ in values]
        step = values[0][1]["checkpoint"].get("step")
        rows.append(ResultRow(
            run=run_dir.name, size=info.get("size", "?"), task=task, metric=label, weights=weights,
            protocol=protocol, value=statistics.fmean(numbers),
            std=statistics.stdev(numbers) if len(numbers) > 1 else None, seeds=len(numbers),
            step=None if random_weights(weights) else step, state="done"))
    return rows


def gather(root: Path, names: list[str] | None = None, *, reference: bool = True) -> list[ResultRow]:
    """Rows for the named runs (default: every run with evaluations, or a pretraining run)."""
    from nepa.evals.results import RESULT_FILE, ResultError, read_result

    dirs = [runs.find_run(root, n) for n in names] if names else runs.list_runs(root)
    rows: list[ResultRow] = []
    sizes = set()
    for run_dir in dirs:
        info = runs.read_json(run_dir / runs.RUN_INFO) or {}
        sizes.add(info.get("size"))
        results, pending = [], {}
        for eval_dir in runs.list_runs(run_dir / "evals"):
            try:
                results.append(read_result(eval_dir / RESULT_FILE))
            except ResultError:
                pending[eval_dir.name] = eval_dir
        rows += _done_rows(run_dir, info, results)
        states = _eval_states(run_dir) if pending else {}
        for name in sorted(pending):
            eval_info = runs.read_json(pending[name] / runs.RUN_INFO) or {}
            state = states.get(name, "FAILED")
            reason = _failure(pending[name]) if state == "FAILED" else ""
            rows.append(ResultRow(run_dir.name, info.get("size", "?"), eval_info.get("task", name), name,
                                  "", "", None, None, 0, None, state, reason=reason))
        seen = {r.task for r in rows if r.run == run_dir.name}
        if info.get("task") == "pretrain":
            rows += [ResultRow(run_dir.name, info.get("size", "?"), task, "", "", "", None, None, 0,
                               None, "missing") for task in DEFAULT_TASKS if task not in seen]
    if reference:
        rows += [ResultRow("paper", size, task, metric, "paper", "reference", value, None, 0, None, "done")
                 for size, task, metric, value in PAPER if not sizes or size in sizes or "tiny" in sizes]
    return rows


def _failure(eval_dir: Path) -> str:
    from nepactl.status import failure_reason

    return failure_reason(runs.read_json(eval_dir / "outcome.json"), runs.read_ledger(eval_dir))


def random_weights(weights: str) -> bool:
    return weights.startswith("random init")


# The number each evaluation is known by: (task, metric label, weights of the pretrained row).
HEADLINES = (("linprobe", "probe_top1 (mean)", "frozen"), ("linprobe", "probe_top1 (block", "frozen"),
             ("linprobe", "probe_top1 (last)", "frozen"), ("finetune", "top1 (best_ema)", "ema"),
             ("ade20k", "mIoU", "raw"))


@dataclass
class SummaryRow:
    run: str
    task: str
    metric: str
    nepa: ResultRow | None
    random: ResultRow | None
    paper: dict[str, float]  # size -> the paper's value

    @property
    def gap(self) -> float | None:
        if self.nepa is None or self.random is None or None in (self.nepa.value, self.random.value):
            return None
        return self.nepa.value - self.random.value


def summarize(rows: list[ResultRow]) -> list[SummaryRow]:
    """Pretrained vs random init vs the paper, one line per headline metric of each run."""
    out = []
    for run in dict.fromkeys(r.run for r in rows if r.protocol != "reference"):
        mine = [r for r in rows if r.run == run and r.value is not None]
        for task, label, weights in HEADLINES:
            for metric in sorted({r.metric for r in mine if r.task == task and r.metric.startswith(label)}):
                by_weights = {r.weights: r for r in mine if r.task == task and r.metric == metric}
                random_label = "random init" + ("" if weights == "frozen" else f" ({weights})")
                base = metric.split(" (")[0] if task != "linprobe" else metric
                paper = {size: value for size, t, m, value in PAPER if t == task and m == base}
                out.append(SummaryRow(run, task, metric, by_weights.get(weights), by_weights.get(random_label),
                                      paper))
    return out


def summary_table(rows: list[ResultRow], title: str):
    """The summary as a narrow rich table (fits 80 columns: the demo's last word)."""
    from rich import box

    from nepactl.output import rich_table

    lines = summarize(rows)
    several = len({line.run for line in lines}) > 1

    def paper(line: SummaryRow) -> str:
        cells = " / ".join(f"{line.paper[s]:.1f}" if s in line.paper else "-" for s in ("B", "L"))
        return cells if line.paper else ""

    columns = (Column("run", table=several), Column("task", "evaluation", cell=lambda r: describe(r.task, r.metric)),
               Column("nepa", "NEPA", cell=lambda r: _seeded(r.nepa), right=True),
               Column("random", "random init", cell=lambda r: _seeded(r.random), right=True),
               Column("gap", cell=lambda r: "" if r.gap is None else f"{r.gap:+.1f}", right=True),
               Column("paper", "paper B / L", cell=paper, right=True))
    probes = sorted({r.protocol.partition(": ")[2] for line in lines for r in (line.nepa, line.random)
                     if r is not None and r.task == "linprobe" and ": " in r.protocol})
    return rich_table(lines, columns, title, box=box.SIMPLE_HEAD, caption="mean ± std over seeds (n); "
                      "paper: ViT-B / ViT-L on ImageNet-1K and ADE20K"
                      + "".join(f"; probe: {name}" for name in probes))


def describe(task: str, metric: str) -> str:
    """'linprobe', 'probe_top1 (block2)' -> 'probe, block 3 mean' (blocks counted from 1)."""
    if task == "linprobe":
        feature = metric.split("(")[-1].rstrip(")")
        if feature.startswith("block"):
            return f"probe, block {int(feature[5:]) + 1} mean"
        return {"mean": "probe, mean of patches", "last": "probe, last token"}.get(feature, metric)
    if task == "finetune":
        return "fine-tune top-1 (EMA)" if "best_ema" in metric else f"fine-tune {metric}"
    return {"ade20k": f"ADE20K {metric}"}.get(task, f"{task} {metric}")


def _seeded(row: ResultRow | None) -> str:
    if row is None or row.value is None:
        return "missing"
    spread = f"±{row.std:.1f}" if row.std is not None else ""
    return f"{row.value:.1f}{spread}" + (f" ({row.seeds})" if row.seeds > 1 else "")


COLUMNS = (Column("run"), Column("size"), Column("task"), Column("metric"), Column("weights"),
           Column("protocol"), Column("value", cell=ResultRow.cell, right=True),
           Column("seeds", cell=lambda r: str(r.seeds or ""), right=True), Column("step", right=True),
           Column("plot", link=True))
TITLE = "NEPA evaluation results"


def row_style(row: ResultRow) -> str | None:
    """Reference rows dimmed, rows without a value (missing, failed, running) in yellow."""
    return "dim" if row.protocol == "reference" else ("yellow" if row.value is None else None)


def make_plots(root: Path, rows: list[ResultRow]) -> list[Path]:
    """Pretraining loss and fine-tune accuracy curves as PNGs under RUN/plots/, linked from rows."""
    from nepa.evals.results import RESULT_FILE, ResultError, read_result

    written = []
    for run in sorted({r.run for r in rows if r.protocol != "reference"}):
        run_dir = root / run
        loss = _plot_loss(run_dir)
        if loss:
            written.append(loss)
        for eval_dir in runs.list_runs(run_dir / "evals"):
            try:
                doc = read_result(eval_dir / RESULT_FILE)
            except ResultError:
                continue
            curve = doc.get("curves", {}).get("val")
            if doc["task"] == "finetune" and curve:
                path = _plot_curve(run_dir / "plots" / f"{eval_dir.name}.png", curve,
                                   f"{run}: {eval_dir.name}")
                written.append(path)
                for row in rows:
                    if row.run == run and row.task == "finetune" and not row.plot:
                        row.plot = str(path)
    for row in rows:
        if row.run != "paper" and not row.plot and (root / row.run / "plots" / "pretrain_loss.png").is_file():
            row.plot = str(root / row.run / "plots" / "pretrain_loss.png") if row.task == "linprobe" else ""
    return written


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_loss(run_dir: Path) -> Path | None:
    records = [r for r in rundir.read_jsonl(run_dir / rundir.METRICS) if "loss" in r]
    if not records:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], lw=1)
    ax.set(xlabel="step", ylabel="NEPA loss (-cosine)", title=f"{run_dir.name}: pretraining loss")
    ax.grid(alpha=0.3)
    out = run_dir / "plots" / "pretrain_loss.png"
    out.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _plot_curve(out: Path, curve: list[dict], title: str) -> Path:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x_key = "epoch" if "epoch" in curve[0] else "step"
    for key in sorted({k for point in curve for k in point if k.startswith(("top1", "ema_top1", "raw_top1"))}):
        points = [(p[x_key], p[key]) for p in curve if key in p]
        ax.plot([a for a, _ in points], [b for _, b in points], marker="o", lw=1, label=key)
    ax.set(xlabel=x_key, ylabel="val accuracy %", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    out.parent.mkdir(exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
