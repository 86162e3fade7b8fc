"""The pretraining engine: loop, optimizer/schedule, EMA, checkpoints, metrics, distributed."""

from importlib import import_module

_PUBLIC = ("EXIT_CODES", "Callback", "RunResult", "RunStatus", "Trainer", "train")
__all__ = list(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module("nepa.train.loop"), name)
    raise AttributeError(f"module 'nepa.train' has no attribute {name!r}")
