"""The submitit job wrapper: runs `nepa.train` in a job and implements the preemption protocol.

submitit's own handler checkpoints on rank 0 alone, inside the signal handler, and ignores
SIGTERM. Instead, our handlers (installed after submitit's) only set the engine's stop flag;
at the next step boundary all ranks agree, save together, and then:
- warning signal (USR2, time limit or manual): rank 0 hands over to submitit's requeue logic
  (it classifies timeout vs preemption and counts timeouts down), which requeues the job;
- SIGTERM (SLURM preemption with PreemptMode=REQUEUE): SLURM requeues the job itself, so every
  rank just exits after the save.
The state lives on disk (the run directory), so the pickled job is just the run directory.
"""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Any

import submitit

log = logging.getLogger("nepactl.job")
WARNING_SIGNAL = signal.SIGUSR2  # what submitit asks SLURM for (--signal=USR2@delay)


class TrainJob(submitit.helpers.Checkpointable):
    """Pretrain (or resume) the run stored in `run_dir`."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = str(run_dir)

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        # The engine already saved everything to the run directory: requeue the same job.
        return submitit.helpers.DelayedSubmission(TrainJob(self.run_dir))

    def __call__(self) -> dict[str, Any]:
        from nepa.train import EXIT_CODES, RunStatus, Trainer
        from nepa.runconfig import load_run_config

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(
                set_cuda_visible_devices=False, overwrite=True)
        submitit_handler = _submitit_handler()
        trainer = Trainer(load_run_config(self.run_dir), self.run_dir)
        received: list[int] = []

        def on_signal(signum: int, frame: Any) -> None:
            received.append(signum)
            trainer.request_stop(signal.Signals(signum).name)

        signal.signal(WARNING_SIGNAL, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        result = trainer.fit()
        outcome = {"status": result.status.value, "step": result.step, "rank": env.global_rank,
                   "reason": result.stop_reason, "save_seconds": result.save_seconds}
        if result.status is RunStatus.STOPPED:
            if received and received[0] == WARNING_SIGNAL and env.global_rank == 0:
                if submitit_handler is None:
                    raise RuntimeError("submitit's signal handler is missing: cannot requeue")
                # Checkpoints our (stateless) job, requeues it and exits the process.
                submitit_handler.checkpoint_and_try_requeue(WARNING_SIGNAL)
            log.info("stopped at step %d (%s); exiting for the requeue", result.step,
                     result.stop_reason)
        elif EXIT_CODES[result.status]:
            log.error("run ended %s at step %d", result.status.value, result.step)
            sys.exit(EXIT_CODES[result.status])
        return outcome


def _submitit_handler():
    """The SignalHandler submitit installed for its warning signal (None outside a job)."""
    installed = signal.getsignal(WARNING_SIGNAL)
    return getattr(installed, "__self__", None)

