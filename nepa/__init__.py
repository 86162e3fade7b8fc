"""nepa: Next-Embedding Predictive Autoregression for Vision Transformers.

The public names are imported lazily, so that torch-free parts (config, errors) can be used
by the CLI without paying for `import torch`.
"""

from nepa.lazy import lazy_exports

__version__ = "0.1.0"

_PUBLIC = {
    "ModelConfig": "nepa.model_config",
    "NepaViT": "nepa.model",
    "build_model": "nepa.model",
    "nepa_loss": "nepa.objective",
    "load_pretrained": "nepa.pretrained",
}
__getattr__, __all__ = lazy_exports(__name__, _PUBLIC)
