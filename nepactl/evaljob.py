"""The evaluation job: runs one `eval.yaml` (nepa.evals.runner) under the preemption protocol."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nepa.paths import store_path
from nepactl import runs
from nepactl.preempt import Ending, PreemptibleJob


class EvalJob(PreemptibleJob):
    """Run (or resume) the evaluation stored in a directory (see nepactl.evaluate)."""

    def start(self, directory: Path, env: Any):
        from nepa.evals.common import EvalControl
        from nepa.evals.spec import load_spec

        self._spec = load_spec(directory)
        self._control = EvalControl(progress=_ProgressFile(directory / PROGRESS_FILE) if env.global_rank == 0
                                    else None)
        self._rank = env.global_rank
        return self._control.request_stop

    def work(self) -> Ending:
        from nepa.evals.runner import run_eval

        directory = Path(self.directory)
        started = time.time()
        outcome, weights = run_eval(self._spec, directory, self._control)
        record = {"status": outcome.status, "step": outcome.step, "total_steps": outcome.total_steps}
        if outcome.status == "STOPPED" and self._rank == 0:
            runs.write_json(directory / "outcome.json", record)
        self._result = (outcome, weights, time.time() - started)
        return Ending(outcome.status, outcome.step, reason=self._control.stop_reason, record=record)

    def finished(self, directory: Path, env: Any, ending: Ending) -> None:
        outcome, weights, seconds = self._result
        write_eval_result(directory, self._spec, outcome, weights, seconds=seconds)
        runs.write_json(directory / "outcome.json", ending.record)


PROGRESS_FILE = "progress.json"


class _ProgressFile:
    """Writes the newest progress record at most once a second (status reads it)."""

    def __init__(self, path: Path):
        self.path, self.last = path, 0.0

    def __call__(self, record: dict[str, Any]) -> None:
        now = time.time()
        if now - self.last >= 1.0 or record.get("step") == record.get("total"):
            self.last = now
            runs.write_json(self.path, {**record, "time": now})


def write_eval_result(eval_dir: Path, spec: Any, outcome: Any, weights: Any, *, seconds: float) -> Path:
    """result.json of a finished evaluation (schema in nepa.evals.results)."""
    from dataclasses import asdict

    from nepa.evals.results import RESULT_FILE, make_result, write_result
    from nepa.evals.spec import recipe_name

    info = runs.read_json(eval_dir / runs.RUN_INFO) or {}
    metrics = [{"metric": m.name, "value": float(m.value), "weights": m.weights, "split": m.split,
                "detail": m.detail} for m in outcome.metrics]
    checkpoint = asdict(weights)  # its path by nepa.paths' rule: the runs root holds RUN/evals/NAME
    checkpoint["path"] = store_path(checkpoint["path"], eval_dir, eval_dir.resolve().parents[2])
    doc = make_result(run=info.get("run", eval_dir.parent.parent.name), task=spec.task, seed=spec.seed,
                      protocol=spec.protocol, checkpoint=checkpoint, metrics=metrics,
                      curves=outcome.curves, extra={"size": info.get("size"), "seconds": seconds,
                                                    "steps": outcome.step, "recipe": recipe_name(spec)})
    return write_result(eval_dir / RESULT_FILE, doc)
