"""`python -m nepa.train RUN_DIR`: run a prepared run directory in this process.

Works under torchrun (one process per device). SIGTERM and SIGUSR2 request a collective
save at the next step boundary; the process then exits 0 and can be relaunched to resume.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from nepa.train.loop import EXIT_CODES, Trainer
from nepa.train.runconfig import load_run_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nepa.train", description=__doc__)
    parser.add_argument("run_dir", help="run directory holding config.yaml")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    trainer = Trainer(load_run_config(args.run_dir), args.run_dir)
    for signum in (signal.SIGTERM, signal.SIGUSR2):
        signal.signal(signum, lambda s, _: trainer.request_stop(signal.Signals(s).name))
    return EXIT_CODES[trainer.fit().status]


if __name__ == "__main__":
    sys.exit(main())
