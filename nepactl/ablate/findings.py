"""The ablation table: one row per variant, from what the jobs recorded (no model runs here).

Final loss from metrics.jsonl, the final embedding spread (collapse monitor) from the run's
outcome.json, probe and fine-tune accuracies from the evaluations' result files.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from nepa import rundir
from nepactl import runs
from nepactl.ablate.plan import AblationPlan
from nepactl.ablate.variants import BASELINE
from nepactl.output import Column

LOSS_WINDOW = 10  # "final loss": mean of the last steps, one batch is noisy
MEASURES = ("loss", "spread", "probe_mean", "probe_block", "finetune")


@dataclass
class AblationRow:
    """One variant's measurements, one value per completed run (seed)."""

    variant: str
    description: str
    runs: str  # "3/3" completed (of planned)
    loss: list[float] = field(default_factory=list)
    spread: list[float] = field(default_factory=list)
    probe_mean: list[float] = field(default_factory=list)
    probe_block: list[float] = field(default_factory=list)
    finetune: list[float] = field(default_factory=list)

    def stats(self) -> AblationStats:
        out: dict = {"variant": self.variant, "description": self.description, "runs": self.runs}
        for key in MEASURES:
            values = getattr(self, key)
            out[key] = statistics.fmean(values) if values else None
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
            out[f"{key}_n"] = len(values)
        return AblationStats(**out)


@dataclass
class AblationStats:
    """One line of the ablation table: means and standard deviations over seeds."""

    variant: str
    description: str
    runs: str
    loss: float | None
    loss_std: float | None
    loss_n: int
    spread: float | None
    spread_std: float | None
    spread_n: int
    probe_mean: float | None
    probe_mean_std: float | None
    probe_mean_n: int
    probe_block: float | None
    probe_block_std: float | None
    probe_block_n: int
    finetune: float | None
    finetune_std: float | None
    finetune_n: int


def _mean_std(key: str, digits: int):
    def cell(row: AblationStats) -> str:
        value, std = getattr(row, key), getattr(row, f"{key}_std")
        if value is None:
            return "-"
        return f"{value:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{value:.{digits}f}"

    return cell


COLUMNS = (Column("variant"), Column("runs", right=True),
           Column("loss", "final loss", cell=_mean_std("loss", 3), right=True),
           Column("spread", cell=_mean_std("spread", 3), right=True),
           Column("probe_mean", "probe mean %", cell=_mean_std("probe_mean", 1), right=True),
           Column("probe_block", "probe block %", cell=_mean_std("probe_block", 1), right=True),
           Column("finetune", "fine-tune %", cell=_mean_std("finetune", 1), right=True),
           Column("description", "what it changes", table=False))  # too wide for the terminal


def row_style(row: AblationStats) -> str | None:
    return "dim" if row.variant == "random-init" else None


def final_loss(run_dir: Path) -> float | None:
    lines = [r for r in rundir.tail_jsonl(run_dir / rundir.METRICS, LOSS_WINDOW) if "loss" in r]
    return statistics.fmean(r["loss"] for r in lines) if lines else None


def final_spread(run_dir: Path) -> float | None:
    """The embedding spread the job recorded at its last step (outcome.json; older runs: the
    last monitored value in metrics.jsonl)."""
    spread = (runs.read_json(run_dir / "outcome.json") or {}).get("spread")
    if spread is None:
        records = [r for r in rundir.tail_jsonl(run_dir / rundir.METRICS, 100) if r.get("spread") is not None]
        spread = records[-1]["spread"] if records else None
    return spread


def _eval_results(run_dir: Path) -> list[tuple[dict, bool]]:
    """(result document, random init) of every finished evaluation of a run."""
    from nepa.evals.results import RESULT_FILE, ResultError, read_result

    out = []
    for eval_dir in runs.list_runs(run_dir / "evals"):
        try:
            doc = read_result(eval_dir / RESULT_FILE)
        except ResultError:
            continue
        out.append((doc, bool(doc["checkpoint"].get("random_init"))))
    return out


def _add_evals(row: AblationRow, docs: list[dict]) -> None:
    for doc in docs:
        metrics = doc["metrics"]
        if doc["task"] == "linprobe":
            for m in metrics:
                feature = (m.get("detail") or {}).get("feature", "")
                if feature == "mean":
                    row.probe_mean.append(m["value"])
                elif feature.startswith("block"):
                    row.probe_block.append(m["value"])
        elif doc["task"] == "finetune":
            top1 = {m["weights"]: m["value"] for m in metrics if m["metric"] == "top1"}
            if top1:
                row.finetune.append(top1.get("ema", next(iter(top1.values()))))


def gather_rows(plan: AblationPlan) -> list[AblationRow]:
    """One row per variant (completed runs only) plus the random-init row of the baseline."""
    rows = []
    random = AblationRow("random-init", "the baseline's architecture, untrained (seeded init)", "")
    for variant, spec in plan.variants.items():
        members = [m for m in plan.members if m.variant == variant]
        done = [m for m in members if (runs.read_json(plan.root / m.name / "outcome.json") or {})
                .get("status") == "COMPLETED"]
        row = AblationRow(variant, spec.description, f"{len(done)}/{len(members)}")
        for member in done:
            run_dir = plan.root / member.name
            for key, value in (("loss", final_loss(run_dir)), ("spread", final_spread(run_dir))):
                if value is not None:
                    getattr(row, key).append(value)
            evals = _eval_results(run_dir)
            _add_evals(row, [d for d, r in evals if not r])
            if variant == BASELINE:
                _add_evals(random, [d for d, r in evals if r])
        rows.append(row)
    if BASELINE in plan.variants:
        random.runs = str(len(random.probe_mean) or len(random.finetune))
        rows.append(random)
    return rows


def write_summary(plan: AblationPlan, rows: list[AblationRow]) -> tuple[Path, Path | None]:
    """summary.json and loss_curves.png in RUNS/PREFIX-ablation/."""
    from nepactl.ablate.plots import plot_losses

    directory = plan.summary_dir
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_losses(plan, directory / "loss_curves.png")
    doc = {"prefix": plan.prefix, "time": time.time(), "tasks": list(plan.tasks),
           "steps": plan.members[0].rendered.run.train.max_steps,
           "members": [{"variant": m.variant, "seed": m.seed, "run": m.name} for m in plan.members],
           "rows": [asdict(r.stats()) for r in rows], "plot": str(plot) if plot else None,
           "raw": [asdict(r) for r in rows]}
    runs.write_json(directory / "summary.json", doc)
    return directory / "summary.json", plot
