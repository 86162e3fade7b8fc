"""ADE20K semantic segmentation through mmsegmentation (UPerNet on a NEPA backbone).

mmseg/mmcv/mmengine (the `seg` extra) are imported only when a run starts or the backbone is
built: importing this package, `config` or `tiny_ade` stays light.

- `config`: `SegmentationConfig` (the recipe) and `build_mmseg_config` (torch-free)
- `backbone`: `NepaBackbone`, `NepaLayerDecayOptimizerConstructor`, `NepaIoUMetric` (mmseg registries)
- `tiny_ade`: `make_tiny_ade20k`, a small ADE20K-layout dataset of real digit scans
- `run`: `run_segmentation`, the preemptible, resumable entry point
"""

from nepa.lazy import lazy_exports

_PUBLIC = {
    "SegmentationConfig": "nepa.evals.segmentation.config",
    "build_mmseg_config": "nepa.evals.segmentation.config",
    "make_tiny_ade20k": "nepa.evals.segmentation.tiny_ade",
    "run_segmentation": "nepa.evals.segmentation.run",
}
__getattr__, __all__ = lazy_exports(__name__, _PUBLIC)
