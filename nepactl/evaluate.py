"""`nepactl eval`: plan (weights, task, seed) evaluations, render each spec, submit the new ones.

Each evaluation lives in `RUN/evals/<task>-<weights>-seed<S>/`, laid out like a run
directory (eval.yaml instead of config.yaml), and is submitted through the same path as
pretraining (`nepactl.submit.submit_job` of a `nepactl.evaljob.EvalJob`): preemptible, requeued,
resumed from its own checkpoints. Combinations whose result exists are skipped.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from nepa import rundir
from nepa.config import ConfigError, check_keys, deep_merge, from_dict, parse_names, to_dict
from nepa.evals.spec import SPEC_FILE, TASKS, EvalSpec, dump_spec
from nepa.paths import store_path
from nepactl import runs
from nepactl.cluster import ClusterConfig
from nepactl.errors import CliError
from nepactl.render import TEMPLATES, cluster_layer, parse_set, read_yaml
from nepactl.status import ACTIVE_STATES

EVALS_DIR = "evals"
DEFAULT_TASKS = ("finetune", "linprobe", "ade20k")


@dataclass(frozen=True)
class PlannedEval:
    name: str  # directory name under RUN/evals
    spec: EvalSpec
    action: str  # "submit", "resume", "redo (failed)", "skip (done)", "skip (running)"
    dependency: str | None = None  # SLURM job id the evaluation waits for (afterok)
    layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvalPlan:
    target: Path  # the run directory the evaluations belong to
    size: str
    cluster: ClusterConfig
    evals: tuple[PlannedEval, ...]


def parse_tasks(text: str) -> tuple[str, ...]:
    return parse_names(text, TASKS, flag="--tasks", kind="task", example="linprobe")


def size_of(model_cfg: Any) -> str:
    """The size registry's name for a model config ('custom' when it matches none)."""
    from nepa.model_config import SIZES, ModelConfig

    defaults = to_dict(ModelConfig())
    shape = ("dim", "depth", "num_heads", "mlp_dim", "patch_size")
    mine = to_dict(model_cfg)
    for name, overrides in SIZES.items():
        if all({**defaults, **overrides}[k] == mine[k] for k in shape):
            return name
    return "custom"


def _weights_of_run(run_dir: Path, step: int | None) -> tuple[str, str, str | None]:
    """(weights path, label, SLURM job to wait for) of a run's checkpoint."""
    from nepactl.status import collect

    (row,), _ = collect(run_dir.parent, [run_dir.name])
    if step is not None:
        path = rundir.checkpoint_dir(run_dir) / rundir.checkpoint_name(step)
        if not path.is_file():
            have = rundir.checkpoint_steps(run_dir)
            raise CliError(f"'{run_dir.name}' has no checkpoint of step {step}; steps: "
                           f"{', '.join(map(str, have)) or 'none yet'}")
        return str(path), f"step{step}", None
    if row.state in ACTIVE_STATES:  # evaluate what the run ends with, once it ends well
        if (runs.read_json(run_dir / runs.RUN_INFO) or {}).get("executor") != "slurm":
            raise CliError(f"'{run_dir.name}' is {row.state} on the local executor; "
                           "evaluate it when it has finished, or pick a saved --step")
        return str(run_dir), "final", row.job_id
    steps = rundir.checkpoint_steps(run_dir)
    if not steps:
        raise CliError(f"'{run_dir.name}' has no checkpoint to evaluate (state {row.state})")
    return str(rundir.checkpoint_dir(run_dir) / rundir.checkpoint_name(steps[-1])), f"step{steps[-1]}", None


DISTRIBUTED_TASKS = ("finetune",)  # the others run one process (one GPU if any)


def _eval_cluster(profile: str | ClusterConfig | None, sets: tuple[str, ...], templates: Path) -> ClusterConfig:
    """The cluster profile (or a resolved one) of evaluation jobs: one node."""
    if isinstance(profile, ClusterConfig):
        return profile
    layer = cluster_layer(profile, templates)[1].get("cluster") or {}
    for assignment in sets:
        layer = deep_merge(layer, parse_set(assignment).get("cluster", {}))
    return from_dict(ClusterConfig, layer, path="cluster")


def task_cluster(cluster: ClusterConfig, task: str) -> ClusterConfig:
    """Fine-tuning uses the node's processes (one per GPU, DDP); other tasks one process."""
    if task in DISTRIBUTED_TASKS:
        return cluster
    return replace(cluster, tasks_per_node=1, gpus_per_node=min(cluster.gpus_per_node, 1))


def render_spec(*, task: str, size: str, weights: str, seed: int, random_init: bool,
                run_data: dict | None, files: tuple[Path, ...] = (), sets: tuple[str, ...] = (),
                templates: Path = TEMPLATES) -> tuple[Any, list[str]]:
    """defaults < the run's data < templates/evals/TASK.yaml < TASK-SIZE.yaml < files < --set.

    Demo data (tiny size or digits) gets the fast linear probe unless a layer names a protocol.
    """
    from nepa.data.config import DataConfig
    layers: list[tuple[str, dict]] = []
    if run_data:
        layers.append(("the pretraining run's data", {"data": run_data}))
    for path in (templates / "evals" / f"{task}.yaml", templates / "evals" / f"{task}-{size}.yaml"):
        if path.is_file():
            layers.append((str(path), read_yaml(path)))
    layers += [(str(p), read_yaml(Path(p))) for p in files]
    layers += [(f"--set {a}", parse_set(a)) for a in sets if not a.startswith("cluster.")]
    layers.append(("nepactl eval", {"task": task, "weights": weights, "seed": seed,
                                    "random_init": random_init}))
    merged: dict[str, Any] = {}
    for source, layer in layers:
        layer = {k: v for k, v in layer.items() if k != "cluster"}
        check_keys(EvalSpec, layer, source=source)
        merged = deep_merge(merged, layer)
    demo = size == "tiny" or merged.get("data", {}).get("source", DataConfig.source) == "digits"
    if demo and "protocol" not in merged.get("linprobe", {}):
        merged = deep_merge(merged, {"linprobe": {"protocol": "fast"}})  # the demo's probe, unless chosen
    spec = from_dict(EvalSpec, merged)
    if task == "ade20k":
        from nepa.evals.segmentation.config import GENERATED_ADE

        root = spec.segmentation.data_root
        demo = demo or root == GENERATED_ADE
        if root != GENERATED_ADE and not (Path(root) / "images").is_dir():
            raise ConfigError(f"segmentation.data_root: {root} holds no images/ directory; point it "
                              "at ADEChallengeData2016 (or use the demo's generated:tiny-ade20k)")
        spec = replace(spec, segmentation=replace(spec.segmentation, data_root=root if root == GENERATED_ADE
                                                  else absolute(root)))
    else:
        from nepa.data import check_dataset

        check_dataset(spec.data)  # a wrong path fails here, not after hours in the queue
    if demo:
        spec = replace(spec, protocol="demo")
    return spec, [source for source, _ in layers]


def eval_name(task: str, label: str, seed: int, random_init: bool) -> str:
    return f"{task}-{'random' if random_init else label}-seed{seed}"


def _state_of(eval_dir: Path) -> str:
    from nepa.evals.results import RESULT_FILE
    from nepactl.status import collect

    if (eval_dir / RESULT_FILE).is_file():
        return "done"
    if not (eval_dir / runs.RUN_INFO).is_file():
        return "new"
    # A failed evaluation is rendered again (its spec may be what failed); a stopped one resumes.
    # Failed: its job recorded the failure and its end (its process may still be exiting).
    ledger = runs.read_ledger(eval_dir)
    ended = bool(ledger) and ledger[-1]["event"] == "end"
    if ended and (runs.read_json(eval_dir / "outcome.json") or {}).get("status") == "FAILED":
        return "failed"
    (row,), _ = collect(eval_dir.parent, [eval_dir.name])
    return "running" if row.state in ACTIVE_STATES else "resume"


def _covered_by_final(target: Path, task: str, label: str, seed: int) -> str | None:
    """'done'/'running' when the run's chained final evaluation is this checkpoint's.

    A final evaluation reads the newest checkpoint when it starts: done, its result names
    the step; running after the run completed, it is the newest step's.
    """
    from nepa.evals.results import RESULT_FILE

    final = target / EVALS_DIR / eval_name(task, "final", seed, False)
    if not label.startswith("step") or not final.is_dir():
        return None
    step = int(label[4:])
    state = _state_of(final)
    if state == "done":
        result = runs.read_json(final / RESULT_FILE) or {}
        return "done" if (result.get("checkpoint") or {}).get("step") == step else None
    if state != "running" or (runs.read_json(target / "outcome.json") or {}).get("status") != "COMPLETED":
        return None  # while the run goes on, its newest checkpoint is not its last
    newest = max(rundir.checkpoint_steps(target), default=None)
    return "running" if step == newest else None


def plan_evals(*, run: str | None, weights: str | None, root: Path, tasks: tuple[str, ...],
               step: int | None, seeds: tuple[int, ...], random_init: bool,
               cluster: str | ClusterConfig | None,
               files: tuple[Path, ...] = (), sets: tuple[str, ...] = (), name: str | None = None,
               templates: Path = TEMPLATES) -> EvalPlan:
    """What `nepactl eval` would do, without creating anything."""
    if (run is None) == (weights is None):
        raise CliError("give a run name or --weights PATH (not both)")
    dependency = None
    run_data = None
    if run is not None:
        target = runs.find_run(root, run)
        path, label, dependency = _weights_of_run(target, step)
        size = (runs.read_json(target / runs.RUN_INFO) or {}).get("size", "custom")
        from nepa.train.runconfig import load_run_config

        run_data = to_dict(load_run_config(target).data)
    else:
        source = Path(weights).expanduser().resolve()
        from nepa.pretrained import read_weights  # a file given by hand: its config is in the weights

        model_cfg, _ = read_weights(source)
        size = size_of(model_cfg)
        path, label = str(source), "weights"
        target = root / (name or f"eval-{source.stem}")
    cluster_cfg = _eval_cluster(cluster, sets, templates)
    planned = []
    combos = [(t, s, False) for t in tasks for s in seeds]
    if random_init:
        combos += [(t, s, True) for t in tasks if t != "imagenet-val" for s in seeds]
    for task, seed, random in combos:
        spec, layers = render_spec(task=task, size=size, weights=path, seed=seed, random_init=random,
                                   run_data=run_data, files=files, sets=sets, templates=templates)
        if task == "finetune":  # its batch must split over the job's processes, checked now
            from nepa.data.config import accumulation

            try:
                accumulation(spec.finetune.global_batch, spec.finetune.micro_batch,
                             cluster_cfg.tasks_per_node)
            except ConfigError as exc:
                raise ConfigError(str(exc).replace("train.", "finetune.")) from None
        dir_name = eval_name(task, label, seed, random)
        state = _state_of(target / EVALS_DIR / dir_name)
        if state == "new" and not random:
            state = _covered_by_final(target, task, label, seed) or state
        action = {"new": "submit", "resume": "resume", "failed": "redo (failed)", "done": "skip (done)",
                  "running": "skip (running)"}[state]
        planned.append(PlannedEval(dir_name, spec, action, dependency, tuple(layers)))
    return EvalPlan(target, size, cluster_cfg, tuple(planned))


def _ensure_target(plan: EvalPlan, weights: str) -> None:
    """A --weights evaluation gets a run directory of its own, holding only its evals."""
    if (plan.target / runs.RUN_INFO).is_file():
        return
    runs.create_run(plan.target.parent, plan.target.name, lambda d: rundir.write_run_info(d, rundir.RunInfo(
        name=plan.target.name, task="eval", size=plan.size, procs_per_node=plan.cluster.tasks_per_node,
        gpus_per_node=plan.cluster.gpus_per_node, executor=plan.cluster.resolved_executor(), created=time.time(),
        weights=store_path(weights, plan.target, plan.target.parent))))


def _fill_eval(staging: Path, plan: EvalPlan, planned: PlannedEval) -> None:
    (staging / SPEC_FILE).write_text(dump_spec(planned.spec, holder=plan.target / EVALS_DIR / planned.name,
                                               runs_root=plan.target.parent))
    cluster = task_cluster(plan.cluster, planned.spec.task)
    (staging / "cluster.yaml").write_text(yaml.safe_dump(to_dict(cluster), sort_keys=False))
    rundir.write_run_info(staging, rundir.RunInfo(
        name=planned.name, run=plan.target.name, task=planned.spec.task, size=plan.size, kind="eval",
        procs_per_node=cluster.tasks_per_node, gpus_per_node=cluster.gpus_per_node,
        executor=cluster.resolved_executor(), created=time.time(), seed=planned.spec.seed, layers=planned.layers))
    runs.snapshot_code(staging / "code")


def submit_evals(plan: EvalPlan) -> list[tuple[PlannedEval, str | None]]:
    """Create and submit the planned evaluations; (planned, job id or None when skipped)."""
    import shutil

    from nepactl.evaljob import EvalJob
    from nepactl.submit import submit_job

    todo = [p for p in plan.evals if not p.action.startswith("skip")]
    if todo:
        _ensure_target(plan, todo[0].spec.weights)
    _protect_checkpoints(plan)
    out = []
    for planned in plan.evals:
        eval_dir = plan.target / EVALS_DIR / planned.name
        if planned.action == "redo (failed)":  # kept for its logs, out of every listing
            eval_dir.rename(eval_dir.with_name(f".{planned.name}.failed-{time.strftime('%Y%m%d-%H%M%S')}"
                                               f"-{os.getpid()}"))
        if planned.action in ("submit", "redo (failed)"):
            (plan.target / EVALS_DIR).mkdir(exist_ok=True)
            runs.create_run(plan.target / EVALS_DIR, planned.name, lambda d, p=planned: _fill_eval(d, plan, p))
            try:
                submission = submit_job(eval_dir, EvalJob(eval_dir.resolve()), attempt_cause="new evaluation",
                                        dependency=planned.dependency)
            except BaseException:
                shutil.rmtree(eval_dir, ignore_errors=True)
                raise
        elif planned.action == "resume":
            submission = submit_job(eval_dir, EvalJob(eval_dir.resolve()), attempt_cause="resume",
                                    dependency=planned.dependency)
        else:
            out.append((planned, None))
            continue
        runs.append_ledger(plan.target, "eval_submit", job_id=submission.job_id,
                           executor=submission.executor, eval=planned.name)
        out.append((planned, submission.job_id))
    return out


def _protect_checkpoints(plan: EvalPlan) -> None:
    """Retention never deletes a checkpoint an evaluation still has to read."""
    for planned in plan.evals:
        path = Path(planned.spec.weights)
        step = rundir.checkpoint_step(path)
        new = planned.action in ("submit", "redo (failed)")
        if new and step is not None and path.parent.name == rundir.CHECKPOINTS:
            rundir.protect_step(path.parent.parent, step)


def eval_dirs(run_dir: Path) -> list[Path]:
    return runs.list_runs(run_dir / EVALS_DIR)


def absolute(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
