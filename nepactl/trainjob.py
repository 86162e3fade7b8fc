"""The pretraining job: runs `nepa.train`'s Trainer under the preemption protocol, and submits
the evaluations its run chains (milestones; at completion when not on SLURM)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nepactl import runs
from nepactl.preempt import Ending, PreemptibleJob


class TrainJob(PreemptibleJob):
    """Pretrain (or resume) the run stored in a run directory."""

    def start(self, directory: Path, env: Any):
        from nepa.train import Trainer
        from nepa.train.runconfig import load_run_config
        from nepactl.chain import milestone_callback
        from nepactl.specs import read_chain

        self._chain = read_chain(directory)
        # On SLURM the final evaluations were submitted with the run (afterok); elsewhere the
        # job submits them when it completes.
        self._on_slurm = (runs.read_json(directory / runs.RUN_INFO) or {}).get("executor") == "slurm"
        chain = self._chain
        callbacks = [milestone_callback(directory, chain, final_chained=chain.on_complete and self._on_slurm)] \
            if chain and chain.at_steps else []
        self._trainer = Trainer(load_run_config(directory), directory, callbacks=callbacks)
        self._rank = env.global_rank
        return self._trainer.request_stop

    def work(self) -> Ending:
        from nepa.train import EXIT_CODES

        result = self._trainer.fit()
        record = {"status": result.status.value, "step": result.step, "rank": self._rank,
                  "reason": result.stop_reason, "save_seconds": result.save_seconds}
        reason = result.stop_reason
        if result.status.value == "DIVERGED":
            reason = (f"non-finite loss persisted through train.max_rollbacks rollbacks at step "
                      f"{result.step}; lower the learning rate (optim.blr) or raise train.max_bad_steps")
        return Ending(result.status.value, result.step, exit_code=EXIT_CODES[result.status],
                      reason=reason, record=record, save_seconds=result.save_seconds)

    def finished(self, directory: Path, env: Any, ending: Ending) -> None:
        from nepactl.chain import submit_from_job

        chain = self._chain
        if chain and chain.on_complete and not self._on_slurm and ending.status == "COMPLETED":
            submit_from_job(directory, chain, ending.step, why="on completion")
