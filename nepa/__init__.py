"""nepa: Next-Embedding Predictive Autoregression for Vision Transformers.

The public names are imported lazily, so that torch-free parts (config, errors) can be used
by the CLI without paying for `import torch`.
"""

from importlib import import_module

__version__ = "0.1.0"

_PUBLIC = {
    "ModelConfig": "nepa.model",
    "NepaViT": "nepa.model",
    "build_model": "nepa.model",
    "nepa_loss": "nepa.objective",
    "load_pretrained": "nepa.pretrained",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'nepa' has no attribute {name!r}")
