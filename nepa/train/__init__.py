"""The pretraining engine: loop, optimizer/schedule, EMA, checkpoints, metrics, distributed."""

from nepa.lazy import lazy_exports

_PUBLIC = dict.fromkeys(("EXIT_CODES", "Callback", "RunResult", "RunStatus", "Trainer", "train"), "nepa.train.loop")
__getattr__, __all__ = lazy_exports(__name__, _PUBLIC)
