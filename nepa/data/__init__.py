"""The data layer: the only way the engine and the evaluations read images.

Sources (`DataConfig.source`): the bundled digits, image folders, local Hugging Face datasets,
webdataset shards. Items are {"image", "label", "index"} (None when unreadable); `collate`
drops and counts unreadable ones. See docs/data.md.

Names are imported lazily so that `nepa.data.config` stays torch-free.
"""

from nepa.lazy import lazy_exports

_PUBLIC = {
    "DataConfig": "nepa.data.config",
    "DataError": "nepa.data.config",
    "SplitNotFound": "nepa.data.config",
    "build_dataset": "nepa.data.sources",
    "ResumableSampler": "nepa.data.sampler",
    "EvalSampler": "nepa.data.sampler",
    "item_seed": "nepa.data.sampler",
    "seeded": "nepa.data.sampler",
    "EpochTagged": "nepa.data.sampler",
    "SeededItems": "nepa.data.sampler",
    "collate": "nepa.data.loader",
    "build_train_loader": "nepa.data.loader",
    "build_eval_loader": "nepa.data.loader",
    "ShardDataset": "nepa.data.wds",
    "ShardStream": "nepa.data.wds",
    "build_train_stream": "nepa.data.wds",
    "pretrain_transform": "nepa.data.transforms",
    "probe_transform": "nepa.data.transforms",
    "finetune_transform": "nepa.data.transforms",
    "eval_transform": "nepa.data.transforms",
    "build_mixup": "nepa.data.transforms",
    "pack_shards": "nepa.data.pack",
    "check_dataset": "nepa.data.check",
}
__getattr__, __all__ = lazy_exports(__name__, _PUBLIC)
