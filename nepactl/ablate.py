"""`nepactl ablate`: the paper's ablations at demo scale, as ordinary runs and evaluations.

Every (variant, seed) is a pretraining run `PREFIX-VARIANT-sSEED`, rendered from the tiny
recipe plus the variant's overrides (templates/ablations.yaml), so all variants share one
budget. Each is evaluated through `nepactl.evaluate` (linear probe, fine-tune; the baseline
also at random initialisation). Locally the jobs run one after the other; on SLURM the
pretraining runs are one job array and the evaluations wait for their run (afterok).
Whatever is done is skipped, so a re-run only gathers the table into RUNS/PREFIX-ablation/.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nepa import rundir
from nepa.config import ConfigError, from_dict, parse_names, suggest
from nepa.train.runconfig import RunConfig
from nepactl import console, runs
from nepactl.errors import CliError
from nepactl.render import TEMPLATES, Rendered, parse_set, read_yaml, render
from nepactl.status import ACTIVE_STATES

ABLATIONS_FILE = "ablations.yaml"
EVAL_SECTIONS = ("linprobe", "finetune")  # --set keys of the evaluations, not of pretraining
TASKS = ("linprobe", "finetune")
BASELINE = "baseline"
RETRYABLE = ("FAILED", "CANCELLED")
ARRAY_EXECUTORS = ("slurm",)  # executors whose pretraining runs go out as one job array


@dataclass(frozen=True, kw_only=True)
class Variant:
    """One ablation: what it changes, as --set overrides of the pretraining run config."""

    description: str  # one line, shown in the table
    sets: tuple[str, ...] = ()  # KEY=VALUE, applied after the user's --set


def load_variants(templates: Path = TEMPLATES) -> dict[str, Variant]:
    """The variant table, strictly checked (keys, types, and every override's dotted key)."""
    from nepactl.render import _check_layer

    path = templates / ABLATIONS_FILE
    data = read_yaml(path)
    check_keys_of(data, {"variants"}, str(path))
    table = {}
    for name, body in (data.get("variants") or {}).items():
        variant = from_dict(Variant, body or {}, path=f"variants.{name}", source=str(path))
        for assignment in variant.sets:
            _check_layer(parse_set(assignment), f"{path} (variants.{name})")
        table[str(name)] = variant
    if BASELINE not in table:
        raise ConfigError(f"{path}: variants must include '{BASELINE}' (the row the others compare to)")
    return table


def check_keys_of(data: dict, allowed: set[str], source: str) -> None:
    for key in data:
        if key not in allowed:
            raise ConfigError(f"{key} (in {source}): unknown key{suggest(str(key), allowed)}; "
                              f"known keys: {', '.join(sorted(allowed))}")


def select_variants(text: str, table: dict[str, Variant]) -> tuple[str, ...]:
    """'all' or a comma-separated list of known variant names, in the given order."""
    if text.strip() == "all":
        return tuple(table)
    return parse_names(text, tuple(table), flag="--variants", kind="variant",
                       example="baseline,no-stopgrad", extra=" (or all)")


def split_sets(sets: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(pretraining overrides, evaluation overrides); cluster.* goes to both."""
    run_sets, eval_sets = [], []
    for assignment in sets:
        section = assignment.split("=", 1)[0].strip().split(".", 1)[0]
        if section in EVAL_SECTIONS or section == "cluster":
            eval_sets.append(assignment)
        if section not in EVAL_SECTIONS:
            run_sets.append(assignment)
    return tuple(run_sets), tuple(eval_sets)


@dataclass(frozen=True)
class Member:
    """One pretraining run of the ablation."""

    variant: str
    seed: int
    rendered: Rendered
    state: str  # "new" or a status state (COMPLETED, FAILED, RUNNING, ...)

    @property
    def name(self) -> str:
        return self.rendered.run.name


@dataclass(frozen=True)
class AblationPlan:
    prefix: str
    root: Path
    cluster: str  # the profile, as given
    executor: str  # what it resolves to: slurm, local or debug
    tasks: tuple[str, ...]
    eval_sets: tuple[str, ...]
    variants: dict[str, Variant]
    members: tuple[Member, ...]

    @property
    def summary_dir(self) -> Path:
        return self.root / f"{self.prefix}-ablation"


def member_name(prefix: str, variant: str, seed: int) -> str:
    return f"{prefix}-{variant}-s{seed}"


def _member_state(root: Path, rendered: Rendered) -> str:
    """'new', or the existing run's state; an existing run must have the same config."""
    from nepa.train.runconfig import load_run_config
    from nepactl.status import collect

    run_dir = root / rendered.run.name
    if not (run_dir / runs.RUN_INFO).is_file():
        return "new"
    if _comparable(load_run_config(run_dir)) != _comparable(rendered.run):
        raise CliError(f"run '{rendered.run.name}' exists with another config (other --steps or "
                       "--set than before); use them again, or choose another --name")
    (row,), _ = collect(root, [rendered.run.name])
    return row.state


def _comparable(run: RunConfig) -> dict:
    """A run config as a dict whose data path is absolute, however it was written."""
    from nepa.config import to_dict

    data = to_dict(run)
    if data["data"].get("path"):
        data["data"]["path"] = os.path.realpath(data["data"]["path"])
    return data


def plan_ablation(*, prefix: str, root: Path, variants: str, seeds: tuple[int, ...],
                  steps: int | None, cluster: str, sets: tuple[str, ...] = (),
                  tasks: tuple[str, ...] = TASKS, templates: Path = TEMPLATES) -> AblationPlan:
    """Every (variant, seed) run rendered and checked, with its state; creates nothing.

    Precedence per run: tiny recipe < the user's --set < the variant's overrides < the seed
    and --steps, so a variant's switch always holds and every variant gets the same budget.
    """
    runs.check_name(prefix)
    table = load_variants(templates)
    chosen = select_variants(variants, table)
    for task in tasks:
        if task not in TASKS:
            raise ConfigError(f"--tasks: unknown task '{task}'{suggest(task, TASKS)}; tasks: {', '.join(TASKS)}")
    run_sets, eval_sets = split_sets(sets)
    members = []
    for variant in chosen:
        for seed in seeds:
            own = (*run_sets, *table[variant].sets, f"train.seed={seed}",
                   *((f"train.max_steps={steps}",) if steps else ()))
            rendered = render(size="tiny", cluster=cluster, sets=own, templates=templates,
                              name=member_name(prefix, variant, seed))
            members.append(Member(variant, seed, rendered, _member_state(root, rendered)))
    executor = members[0].rendered.cluster.resolved_executor()
    return AblationPlan(prefix, root, cluster, executor, tasks, eval_sets,
                        {v: table[v] for v in chosen}, tuple(members))


# -- pretraining ---------------------------------------------------------------------------------


def pretrain_members(plan: AblationPlan, *, retry_failed: bool) -> None:
    """Submit new runs and (with retry_failed) resume FAILED/CANCELLED ones; skip the rest."""
    new = [m for m in plan.members if m.state == "new"]
    failed = [m for m in plan.members if m.state in RETRYABLE]
    if failed and not retry_failed:
        console.warn(f"{len(failed)} run(s) ended {'/'.join(sorted({m.state for m in failed}))}: "
                     f"{', '.join(m.name for m in failed)}; resume them with --retry-failed")
    retry = failed if retry_failed else []
    if plan.executor in ARRAY_EXECUTORS:
        if new or retry:
            submit_array(plan, new, retry)
        return
    from nepactl.launch import job_for, launch_run
    from nepactl.submit import submit_job

    for member in plan.members:
        run_dir = plan.root / member.name
        if member in new:
            launch_run(member.rendered, plan.root, task="pretrain", size="tiny")
        elif member in retry:
            submit_job(run_dir, job_for(run_dir), attempt_cause="retry-failed")
        elif member.state not in ACTIVE_STATES:
            continue  # done, or failed and not retried
        if plan.executor == "local":
            from nepactl.follow import follow_run

            outcome = follow_run(run_dir, member.rendered.run.train.max_steps, f"{member.name:<28}")
            if not outcome or outcome["status"] != "COMPLETED":
                console.warn(f"{member.name} did not complete; see nepactl logs {member.name}")


def fresh_array_dir(parent: Path) -> Path:
    """A new directory per submitted array: a retry can follow its array within the same second."""
    stamp, attempt = time.strftime("%Y%m%d-%H%M%S"), 0
    while True:
        path = parent / (stamp if attempt == 0 else f"{stamp}-{attempt}")
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            attempt += 1


def submit_array(plan: AblationPlan, new: list[Member], retry: list[Member]) -> list[str]:
    """New and retried runs as ONE submitit job array; each run's ledger gets its task id."""
    from nepactl.cluster import make_executor
    from nepactl.launch import check_data
    from nepactl.submit import fill_run_dir
    from nepactl.trainjob import TrainJob

    dirs = []
    for member in new:
        check_data(member.rendered)
        dirs.append(runs.create_run(plan.root, member.name,
                                    lambda d, m=member: fill_run_dir(d, m.rendered, "pretrain", "tiny")))
    dirs += [plan.root / m.name for m in retry]
    array_dir = fresh_array_dir(plan.summary_dir / "arrays")
    runs.snapshot_code(array_dir / "code")  # what every task of the array (and its requeues) runs
    first = (new or retry)[0].rendered
    executor = make_executor(first.cluster, array_dir / "submitit", nodes=first.run.train.nodes,
                             job_name=f"{plan.prefix}-ablation", code_dir=array_dir / "code")
    try:
        with executor.batch():
            jobs = [executor.submit(TrainJob(d.resolve())) for d in dirs]
    except Exception as exc:
        for member in new:  # nothing half-submitted is left behind
            import shutil

            shutil.rmtree(plan.root / member.name, ignore_errors=True)
        raise CliError(f"{plan.executor} refused the job array: {str(exc).strip().splitlines()[-1:]}; "
                       "check the cluster profile with nepactl doctor") from None
    from nepactl.chain import rechain

    retried = {plan.root / m.name for m in retry}
    for run_dir, job in zip(dirs, jobs):
        runs.append_ledger(run_dir, "submit", job_id=str(job.job_id), executor=plan.executor,
                           cause="retry-failed" if run_dir in retried else "new run", array=str(array_dir))
        if run_dir in retried:  # its evaluations waited for the failed job: now for this one
            rechain(run_dir, str(job.job_id))
    console.hint(f"submitted {len(jobs)} pretraining run(s) as one job array ({jobs[0].job_id.split('_')[0]})")
    return [str(j.job_id) for j in jobs]


# -- evaluations ---------------------------------------------------------------------------------


def evaluate_members(plan: AblationPlan) -> None:
    """Linear probe and fine-tune of every finished run (SLURM: of queued ones too, afterok)."""
    from dataclasses import replace

    from nepactl.evaluate import plan_evals, submit_evals
    from nepactl.status import collect

    names = [m.name for m in plan.members if (plan.root / m.name / runs.RUN_INFO).is_file()]
    states = {row.run: row.state for row in collect(plan.root, names)[0]} if names else {}
    for member in plan.members:
        state = states.get(member.name, "new")
        if state != "COMPLETED" and not (plan.executor in ARRAY_EXECUTORS and state in ACTIVE_STATES):
            continue
        sets = plan.eval_sets
        if not any(s.startswith("linprobe.blocks") for s in sets):  # an intermediate block too
            sets += (f"linprobe.blocks=[{max(0, member.rendered.run.model.depth // 2 - 1)}]",)
        evals = plan_evals(run=member.name, weights=None, root=plan.root, tasks=plan.tasks, step=None,
                           seeds=(member.seed,), random_init=member.variant == BASELINE,
                           cluster=plan.cluster, sets=sets)
        if plan.executor in ARRAY_EXECUTORS:
            submit_evals(evals)
            continue
        for planned in evals.evals:
            if planned.action.startswith("skip"):
                continue
            ((_, job_id),) = submit_evals(replace(evals, evals=(planned,)))
            if plan.executor == "local":
                from nepactl.follow import follow_eval

                outcome = follow_eval(evals.target / "evals" / planned.name, job_id,
                                      f"{member.name} {planned.name}")
                if outcome.get("status") != "COMPLETED":
                    console.warn(f"{member.name} {planned.name} failed: {outcome.get('error', 'no result')}")


# -- the summary -----------------------------------------------------------------------------------

LOSS_WINDOW = 10  # "final loss": mean of the last steps, one batch is noisy
SPREAD_IMAGES = 256  # the fixed val batch: the first images of the val split


@dataclass
class AblationRow:
    """One line of the ablation table: means and standard deviations over seeds."""

    variant: str
    description: str
    runs: str  # "3/3" completed (of planned)
    loss: list[float] = field(default_factory=list)
    spread: list[float] = field(default_factory=list)
    probe_mean: list[float] = field(default_factory=list)
    probe_block: list[float] = field(default_factory=list)
    finetune: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"variant": self.variant, "description": self.description, "runs": self.runs}
        for key in ("loss", "spread", "probe_mean", "probe_block", "finetune"):
            values = getattr(self, key)
            out[key] = statistics.fmean(values) if values else None
            out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else None
            out[f"{key}_n"] = len(values)
        return out


def final_loss(run_dir: Path) -> float | None:
    lines = rundir.tail_jsonl(run_dir / rundir.METRICS, LOSS_WINDOW)
    return statistics.fmean(r["loss"] for r in lines) if lines else None


def ema_spread(run_dir: Path) -> float:
    """`embedding_spread` of the run's final-normalised EMA outputs on the fixed val batch."""
    import torch

    from nepa.data import build_dataset, eval_transform
    from nepa.objective import embedding_spread
    from nepa.pretrained import load_pretrained
    from nepa.train.runconfig import load_run_config

    data = load_run_config(run_dir).data
    val = build_dataset(data, "val", eval_transform(data.image_size, crop_pct=1.0))
    images = torch.stack([val[i]["image"] for i in range(min(SPREAD_IMAGES, len(val)))])  # (N, C, H, W)
    model = load_pretrained(run_dir)  # EMA weights when the checkpoint holds them
    with torch.no_grad():
        return float(embedding_spread(model.forward_features(images)))


def _eval_metrics(run_dir: Path) -> list[tuple[dict, bool]]:
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
            loss = final_loss(run_dir)
            if loss is not None:
                row.loss.append(loss)
            row.spread.append(ema_spread(run_dir))
            evals = _eval_metrics(run_dir)
            _add_evals(row, [d for d, r in evals if not r])
            if variant == BASELINE:
                _add_evals(random, [d for d, r in evals if r])
        rows.append(row)
    if BASELINE in plan.variants:
        random.runs = str(len(random.probe_mean) or len(random.finetune))
        rows.append(random)
    return rows


def plot_losses(plan: AblationPlan, out: Path) -> Path | None:
    """Loss curves of all runs, one colour per variant, from each run's metrics.jsonl."""
    from nepactl.results import _pyplot

    curves = []
    for member in plan.members:
        records = [r for r in rundir.read_jsonl(plan.root / member.name / rundir.METRICS) if "loss" in r]
        if records:
            curves.append((member.variant, [r["step"] for r in records], [r["loss"] for r in records]))
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    colours = {v: f"C{i % 10}" for i, v in enumerate(plan.variants)}
    seen = set()
    for variant, steps, losses in curves:
        ax.plot(steps, losses, lw=1, color=colours[variant], alpha=0.8,
                label=None if variant in seen else variant)
        seen.add(variant)
    ax.set(xlabel="step", ylabel="NEPA loss (-cosine)", title=f"{plan.prefix}: pretraining loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_summary(plan: AblationPlan, rows: list[AblationRow]) -> tuple[Path, Path | None]:
    """summary.json and loss_curves.png in RUNS/PREFIX-ablation/."""
    directory = plan.summary_dir
    directory.mkdir(parents=True, exist_ok=True)
    plot = plot_losses(plan, directory / "loss_curves.png")
    doc = {"prefix": plan.prefix, "time": time.time(), "tasks": list(plan.tasks),
           "steps": plan.members[0].rendered.run.train.max_steps,
           "members": [{"variant": m.variant, "seed": m.seed, "run": m.name} for m in plan.members],
           "rows": [r.stats() for r in rows], "plot": str(plot) if plot else None,
           "raw": [asdict(r) for r in rows]}
    runs.write_json(directory / "summary.json", doc)
    return directory / "summary.json", plot


# -- output ----------------------------------------------------------------------------------------

COLUMNS = (("variant", "variant"), ("runs", "runs"), ("loss", "final loss"), ("spread", "spread"),
           ("probe_mean", "probe mean %"), ("probe_block", "probe block %"), ("finetune", "fine-tune %"))


def _cell(stats: dict, key: str) -> str:
    value, std = stats.get(key), stats.get(f"{key}_std")
    if key in ("variant", "runs", "description"):
        return str(stats[key])
    if value is None:
        return "-"
    digits = 3 if key in ("loss", "spread") else 1
    return f"{value:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{value:.{digits}f}"


def to_table(rows: list[AblationRow], title: str):
    from rich.table import Table

    table = Table(title=title)  # descriptions live in the md/csv/json outputs
    for key, header in COLUMNS:
        table.add_column(header, justify="left" if key == "variant" else "right", no_wrap=key == "variant")
    for row in rows:
        stats = row.stats()
        table.add_row(*(_cell(stats, key) for key, _ in COLUMNS),
                      style="dim" if row.variant == "random-init" else None)
    return table


def to_markdown(rows: list[AblationRow]) -> str:
    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " | what it changes |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    lines += ["| " + " | ".join(_cell(r.stats(), k) for k, _ in COLUMNS) + f" | {r.description} |" for r in rows]
    return "\n".join(lines) + "\n"


def to_csv(rows: list[AblationRow]) -> str:
    import csv
    import io

    buffer = io.StringIO()
    stats = [r.stats() for r in rows]
    writer = csv.DictWriter(buffer, fieldnames=list(stats[0]) if stats else ["variant"])
    writer.writeheader()
    writer.writerows(stats)
    return buffer.getvalue()


def to_json(rows: list[AblationRow]) -> str:
    return json.dumps([r.stats() for r in rows], indent=1, allow_nan=False)


FORMATS = {"table": None, "md": to_markdown, "csv": to_csv, "json": to_json}
