"""The ADE20K recipe as one frozen config, and its rendering into a self-contained mmseg config.

Torch- and mmseg-free, so the CLI and the evaluation spec can validate and print the recipe
cheaply. The rendered dict is what mmengine's Runner gets; its default for size B is pinned
by a golden file (tests/evals/golden/segmentation_B.json), so recipe changes are deliberate.

Defaults are the MAE/BEiT ADE20K UPerNet recipe (mmseg `mae-base_upernet_8xb2-amp-160k`):
160k iterations at a global batch of 16, AdamW lr 1e-4, weight decay 0.05, layer decay 0.65,
drop path 0.1, linear warm-up for 1,500 iterations then poly decay (power 1) to 0, 512x512
crops, slide inference with 2/3 overlap, tapped blocks without an extra norm. For L the only
published large-ViT recipe of this kind is BEiT-L's (templates/evals/ade20k-L.yaml): lr 2e-5,
layer decay 0.95, drop path 0.2, taps 7, 11, 15, 23.

Patch 14: 512 is not a multiple of 14. Crops stay 512 (the recipe's augmentation and the
published protocol), and the data preprocessor pads each crop at the bottom/right to the next
multiple of the patch size (518 = 37 x 14) with the mean pixel and ignored labels (255).
At test time it pads each resized image to a multiple of the patch size (`size_divisor`),
slide windows are 518 wide, and mmseg crops the padding off the logits before scoring. So
every pixel is scored at its real position; nothing is resized to fit the patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from nepa.config import check, to_dict

ADE_CLASSES = 150
MEAN_PIXEL = [127.5, 127.5, 127.5]  # the release normalises with mean = std = 0.5 (of 255)
BACKBONE_MODULE = "nepa.evals.segmentation.backbone"  # registers NepaBackbone and the constructor


GENERATED_ADE = "generated:tiny-ade20k"  # data_root of the demo protocol: made by the job


@dataclass(frozen=True, kw_only=True)
class SegmentationConfig:
    """ADE20K semantic segmentation: UPerNet on a NEPA backbone, fine-tuned end to end."""

    # ADEChallengeData2016 layout: images/{training,validation}/*.jpg, annotations/.../*.png
    data_root: str = "data/ade/ADEChallengeData2016"
    crop_size: int = 512  # training crop (pixels); padded to a multiple of the patch size
    iters: int = 160_000  # optimizer steps (MAE/BEiT: 160k)
    batch_size: int = 16  # global batch (split over processes)
    lr: float = 1e-4  # AdamW base lr (the neck, heads and final norm get it unscaled)
    weight_decay: float = 0.05  # not applied to norms, biases, LayerScale, cls/mask tokens
    # lr x decay^(depth - i) for block i; None: 0.65 (<= 12 blocks, MAE-B), 0.95 (BEiT-L)
    layer_decay: float | None = None
    warmup_iters: int = 1500  # linear warm-up from 1e-6 x lr, then poly (power 1) to 0
    feature_blocks: tuple[int, ...] | None = None  # 4 blocks to tap; None: depth/3-1, /2-1, 2/3-1, -1
    # Apply the (trainable) final LayerNorm to every tapped block; the MAE/BEiT backbones the
    # protocol comes from tap the raw block outputs (false).
    feature_norm: bool = False
    drop_path: float | None = None  # stochastic depth of the last block; None: 0.1 (<= 12 blocks), 0.2
    decode_channels: int | None = None  # UPerHead width; None: the model width (MAE: 768 for B)
    aux_channels: int = 256  # FCN auxiliary head width (loss weight 0.4)
    sync_bn: bool = True  # SyncBN in neck/heads (plain batch norm in a single process)
    val_interval: int = 16_000  # iterations between validations (and always at the end)
    checkpoint_interval: int = 16_000  # iterations between mmengine checkpoints in work_dir
    keep_checkpoints: int = 2  # newest interval checkpoints kept (preemption saves are extra)
    log_interval: int = 50  # iterations between log lines
    num_workers: int = 4  # dataloader workers per process (0: load in the main process)
    ema: bool | None = None  # which pretrained weights: None EMA when present, True/False insist
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("crop_size", "iters", "batch_size", "val_interval", "checkpoint_interval",
                     "log_interval", "aux_channels"):
            check(getattr(self, name) > 0, f"segmentation.{name}", "must be a positive integer")
        check(self.lr > 0, "segmentation.lr", "must be > 0")
        check(self.weight_decay >= 0, "segmentation.weight_decay", "must be >= 0")
        check(self.layer_decay is None or 0 < self.layer_decay <= 1, "segmentation.layer_decay",
              "must be in (0, 1] (1: no decay) or null for the size default")
        check(0 <= self.warmup_iters < self.iters, "segmentation.warmup_iters",
              f"must be in [0, iters={self.iters})")
        check(self.drop_path is None or 0 <= self.drop_path < 1, "segmentation.drop_path",
              "must be in [0, 1) or null for the size default")
        check(self.decode_channels is None or self.decode_channels > 0,
              "segmentation.decode_channels", "must be positive or null for the model width")
        check(self.keep_checkpoints >= 1, "segmentation.keep_checkpoints", "must be >= 1")
        check(self.num_workers >= 0, "segmentation.num_workers", "must be >= 0")
        check(self.seed >= 0, "segmentation.seed", "must be >= 0")
        fb = self.feature_blocks
        check(fb is None or (len(fb) == 4 and list(fb) == sorted(set(fb)) and fb[0] >= 0),
              "segmentation.feature_blocks", "must be 4 increasing block indices or null")


# ---------------------------------------------------------------------------------------------
# Values derived from the model depth
# ---------------------------------------------------------------------------------------------


def feature_blocks(cfg: SegmentationConfig, depth: int) -> tuple[int, ...]:
    """The 4 tapped blocks: B (12) 3,5,7,11; L (24) 7,11,15,23; tiny (6) 1,2,3,5."""
    if cfg.feature_blocks is None:
        check(depth >= 4, "segmentation.feature_blocks", f"a depth-{depth} model has fewer than 4 blocks")
        return tuple(max(round(depth * f) - 1, 0) for f in (1 / 3, 1 / 2, 2 / 3, 1))
    check(cfg.feature_blocks[-1] < depth, "segmentation.feature_blocks",
          f"block {cfg.feature_blocks[-1]} is out of range for depth {depth}")
    return cfg.feature_blocks


def layer_decay(cfg: SegmentationConfig, depth: int) -> float:
    """MAE-B's 0.65 up to 12 blocks, BEiT-L's 0.95 for deeper models."""
    if cfg.layer_decay is not None:
        return cfg.layer_decay
    return 0.65 if depth <= 12 else 0.95


def drop_path(cfg: SegmentationConfig, depth: int) -> float:
    """The release's fine-tuning values: 0.1 for B, 0.2 for L."""
    if cfg.drop_path is not None:
        return cfg.drop_path
    return 0.1 if depth <= 12 else 0.2


def padded_crop(cfg: SegmentationConfig, patch_size: int) -> int:
    """The crop padded to the next multiple of the patch size (512 -> 518 at patch 14)."""
    return math.ceil(cfg.crop_size / patch_size) * patch_size


# ---------------------------------------------------------------------------------------------
# The mmseg config
# ---------------------------------------------------------------------------------------------


def _pipelines(cfg: SegmentationConfig) -> tuple[list[dict], list[dict]]:
    """mmseg's ADE20K train and test pipelines at the configured crop (2048x512 at 512)."""
    scale = (4 * cfg.crop_size, cfg.crop_size)
    train = [
        dict(type="LoadImageFromFile"),
        dict(type="LoadAnnotations", reduce_zero_label=True),
        dict(type="RandomResize", scale=scale, ratio_range=(0.5, 2.0), keep_ratio=True),
        dict(type="RandomCrop", crop_size=(cfg.crop_size, cfg.crop_size), cat_max_ratio=0.75),
        dict(type="RandomFlip", prob=0.5),
        dict(type="PhotoMetricDistortion"),
        dict(type="PackSegInputs"),
    ]
    test = [
        dict(type="LoadImageFromFile"),
        dict(type="Resize", scale=scale, keep_ratio=True),
        dict(type="LoadAnnotations", reduce_zero_label=True),  # after Resize: scored at full size
        dict(type="PackSegInputs"),
    ]
    return train, test


def _dataloaders(cfg: SegmentationConfig, world_size: int) -> dict[str, Any]:
    train_pipeline, test_pipeline = _pipelines(cfg)

    def dataset(split: str, pipeline: list[dict]) -> dict:
        return dict(type="ADE20KDataset", data_root=cfg.data_root, pipeline=pipeline,
                    data_prefix=dict(img_path=f"images/{split}", seg_map_path=f"annotations/{split}"))

    common = dict(num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    val = dict(batch_size=1, **common, sampler=dict(type="DefaultSampler", shuffle=False),
               dataset=dataset("validation", test_pipeline))
    return dict(
        train_dataloader=dict(batch_size=cfg.batch_size // world_size, **common,
                              sampler=dict(type="InfiniteSampler", shuffle=True),
                              dataset=dataset("training", train_pipeline)),
        val_dataloader=val, test_dataloader=val,
        val_evaluator=dict(type="NepaIoUMetric", iou_metrics=["mIoU"]),
        test_evaluator=dict(type="NepaIoUMetric", iou_metrics=["mIoU"]),
    )


def _model(model_cfg: Any, cfg: SegmentationConfig, weights: str | None) -> dict[str, Any]:
    """EncoderDecoder: NepaBackbone -> Feature2Pyramid -> UPerHead + FCN auxiliary head."""
    depth, dim, patch = model_cfg.depth, model_cfg.dim, model_cfg.patch_size
    norm = dict(type="SyncBN" if cfg.sync_bn else "BN", requires_grad=True)
    # Built bidirectional, without a classifier or mask token, with fine-tuning drop path.
    vit = {**to_dict(model_cfg), "causal": False, "drop_path": drop_path(cfg, depth),
           "mask_ratio": 0.0, "num_classes": 0, "labels": []}
    crop = padded_crop(cfg, patch)
    channels = cfg.decode_channels or dim
    ce = dict(type="CrossEntropyLoss", use_sigmoid=False)
    return dict(
        type="EncoderDecoder",
        data_preprocessor=dict(
            type="SegDataPreProcessor", mean=MEAN_PIXEL, std=MEAN_PIXEL, bgr_to_rgb=True,
            pad_val=0, seg_pad_val=255, size=(crop, crop), test_cfg=dict(size_divisor=patch)),
        pretrained=None,
        backbone=dict(type="NepaBackbone", model=vit, weights=weights, ema=cfg.ema,
                      out_indices=list(feature_blocks(cfg, depth)), feature_norm=cfg.feature_norm),
        neck=dict(type="Feature2Pyramid", embed_dim=dim, rescales=[4, 2, 1, 0.5], norm_cfg=norm),
        decode_head=dict(
            type="UPerHead", in_channels=[dim] * 4, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6),
            channels=channels, dropout_ratio=0.1, num_classes=ADE_CLASSES, norm_cfg=norm,
            align_corners=False, loss_decode=dict(**ce, loss_weight=1.0)),
        auxiliary_head=dict(
            type="FCNHead", in_channels=dim, in_index=2, channels=cfg.aux_channels, num_convs=1,
            concat_input=False, dropout_ratio=0.1, num_classes=ADE_CLASSES, norm_cfg=norm,
            align_corners=False, loss_decode=dict(**ce, loss_weight=0.4)),
        train_cfg=dict(),
        test_cfg=dict(mode="slide", crop_size=(crop, crop), stride=(crop * 2 // 3, crop * 2 // 3)),
    )


def _schedule(model_cfg: Any, cfg: SegmentationConfig) -> dict[str, Any]:
    """AdamW with layer-wise lr decay; linear warm-up, then poly decay to 0."""
    schedulers = [dict(type="PolyLR", eta_min=0.0, power=1.0, begin=cfg.warmup_iters, end=cfg.iters,
                       by_epoch=False)]
    if cfg.warmup_iters > 0:
        schedulers.insert(0, dict(type="LinearLR", start_factor=1e-6, by_epoch=False, begin=0,
                                  end=cfg.warmup_iters))
    return dict(
        optim_wrapper=dict(
            type="OptimWrapper",
            optimizer=dict(type="AdamW", lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay),
            paramwise_cfg=dict(num_layers=model_cfg.depth,
                               layer_decay_rate=layer_decay(cfg, model_cfg.depth)),
            constructor="NepaLayerDecayOptimizerConstructor"),
        param_scheduler=schedulers,
        train_cfg=dict(type="IterBasedTrainLoop", max_iters=cfg.iters, val_interval=cfg.val_interval),
        val_cfg=dict(type="ValLoop"),
        test_cfg=dict(type="TestLoop"),
    )


def _runtime(cfg: SegmentationConfig, work_dir: str) -> dict[str, Any]:
    """mmseg's default runtime; resume=True picks up work_dir's last checkpoint, if any."""
    return dict(
        default_scope="mmseg",
        custom_imports=dict(imports=[BACKBONE_MODULE], allow_failed_imports=False),
        work_dir=work_dir,
        env_cfg=dict(cudnn_benchmark=True, mp_cfg=dict(mp_start_method="fork", opencv_num_threads=0),
                     dist_cfg=dict(backend="nccl")),
        randomness=dict(seed=cfg.seed),
        default_hooks=dict(
            timer=dict(type="IterTimerHook"),
            logger=dict(type="LoggerHook", interval=cfg.log_interval, log_metric_by_epoch=False),
            param_scheduler=dict(type="ParamSchedulerHook"),
            checkpoint=dict(type="CheckpointHook", by_epoch=False, interval=cfg.checkpoint_interval,
                            max_keep_ckpts=cfg.keep_checkpoints, save_last=True),
            sampler_seed=dict(type="DistSamplerSeedHook"),
            visualization=dict(type="SegVisualizationHook")),
        vis_backends=[dict(type="LocalVisBackend")],
        # No fixed name: mmengine keeps one visualizer per name per process, so a second run
        # would write into the first one's directory; the Runner names it after the experiment.
        visualizer=dict(type="SegLocalVisualizer", vis_backends=[dict(type="LocalVisBackend")]),
        log_processor=dict(by_epoch=False),
        log_level="INFO",
        load_from=None,
        resume=True,
    )


def build_mmseg_config(model_cfg: Any, cfg: SegmentationConfig, weights: str | None, work_dir: str,
                       *, world_size: int = 1) -> dict[str, Any]:
    """The full mmseg config dict (plain values only) for `mmengine.Config(...)`.

    `model_cfg` is the backbone's `nepa.model.ModelConfig`; `weights` a nepa checkpoint, run
    directory or release directory read by the backbone (None: random initialisation).
    """
    check(cfg.batch_size % world_size == 0, "segmentation.batch_size",
          f"global batch {cfg.batch_size} is not divisible by {world_size} processes")
    return {
        **_runtime(cfg, work_dir),
        "crop_size": (cfg.crop_size, cfg.crop_size),
        "model": _model(model_cfg, cfg, weights),
        **_dataloaders(cfg, world_size),
        **_schedule(model_cfg, cfg),
    }
