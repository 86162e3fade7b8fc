"""Entry point for the multi-process engine test: a Trainer on a sample-id-logging dataset.

Usage: python -m tests.train.two_ranks RUN_DIR LOG_DIR STOP_AT_STEP  (rank from RANK/WORLD_SIZE)
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from nepa.train import Trainer
from nepa.train.runconfig import load_run_config
from tests.train.runs import StopAt
from tests.train.test_loop import LoggedIds


def main() -> None:
    run_dir, log_dir, stop_at = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    rank = int(os.environ.get("RANK", "0"))
    dataset = LoggedIds(log_dir / f"rank{rank}-pid{os.getpid()}.txt")
    result = Trainer(load_run_config(run_dir), run_dir, dataset=dataset,
                     callbacks=[StopAt(stop_at)]).fit()
    print(f"rank {rank}: {result.status.value} at step {result.step}", flush=True)


if __name__ == "__main__":
    main()
