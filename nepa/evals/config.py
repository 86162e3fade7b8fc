"""The evaluation recipes, one frozen dataclass each: linear probe, fine-tuning, classifier
validation. Torch-free, so the CLI can build and check them without importing torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from nepa.config import check
from nepa.train.config import EMAConfig

# Fine-tuning layer decay (see nepa.evals.layer_decay). release: fixed decay, per-group warmup;
# dynamic: the decay itself ramps over the run.
Schedule = Literal["release", "dynamic"]
Ramp = Literal["linear", "cosine"]


ProbeProtocol = Literal["mae", "fast"]
# The name every probe number is reported with (result files, `nepactl results`).
PROBE_PROTOCOLS = {"mae": "MAE linear probe (LARS, BN)", "fast": "fast probe (AdamW, standardised)"}


@dataclass(frozen=True, kw_only=True)
class LinProbeConfig:
    """Linear probe on frozen features (see nepa.evals.linprobe). The release ships none.

    protocol "mae": the MAE protocol (main_linprobe.py), the paper-scale default: final-normalised
    features -> BatchNorm1d without affine -> Linear, LARS at blr 0.1 x batch/256 (batch 16384),
    10 warm-up epochs then cosine, 90 epochs, RandomResizedCrop + flip, evaluated 256 -> 224.
    protocol "fast": cached features of the eval transform, standardised, an AdamW head whose lr
    is chosen on held-out train (the demo's probe: seconds on a CPU).
    """

    protocol: ProbeProtocol = "mae"
    features: tuple[str, ...] = ("mean", "last")  # mean of patch tokens, last token
    blocks: tuple[int, ...] = ()  # also probe these blocks' outputs (mean of patch tokens)
    epochs: int | None = None  # null: 90 (mae, MAE's B recipe) or 100 (fast, over cached features)
    weight_decay: float = 0.0  # MAE: 0
    batch_size: int = 256  # images per forward of the frozen backbone
    seed: int = 0
    crop_pct: float = 0.875  # eval transform: resize to size / crop_pct, centre crop (256 -> 224)
    # mae: LARS on the head, one step per global batch (features of batch_size forwards).
    global_batch: int = 16384  # images per LARS step (MAE: 16384)
    blr: float = 0.1  # lr = blr x global_batch / 256
    warmup_epochs: int = 10  # linear warm-up, then cosine to 0
    momentum: float = 0.9  # LARS
    trust_coefficient: float = 0.001  # LARS; weight decay and trust ratio skip 1-D parameters
    train_crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop (bicubic) + flip
    # fast: AdamW on cached standardised features, lr chosen on held-out train.
    lr_grid: tuple[float, ...] = (3e-3, 1e-2, 3e-2, 1e-1)  # AdamW lr, chosen on held-out train
    holdout_fraction: float = 0.2  # of train, for choosing the lr
    head_batch: int = 1024  # probe training on cached features

    def __post_init__(self) -> None:
        if self.epochs is None:  # resolved once: the written spec states the value used
            object.__setattr__(self, "epochs", 90 if self.protocol == "mae" else 100)
        check(self.epochs >= 1, "linprobe.epochs", "must be >= 1")
        check(0 < self.crop_pct <= 1, "linprobe.crop_pct", "must be in (0, 1]")
        check(0 < self.holdout_fraction < 1, "linprobe.holdout_fraction", "must be in (0, 1)")
        check(all(f in ("mean", "last") for f in self.features), "linprobe.features",
              "each must be 'mean' or 'last'")
        for name in ("batch_size", "global_batch", "head_batch"):
            check(getattr(self, name) >= 1, f"linprobe.{name}", "must be >= 1")
        check(self.blr > 0, "linprobe.blr", "must be > 0")
        check(0 <= self.warmup_epochs < self.epochs or self.protocol == "fast",
              "linprobe.warmup_epochs", f"must be in [0, epochs={self.epochs})")
        check(0 < self.train_crop_scale[0] <= self.train_crop_scale[1] <= 1,
              "linprobe.train_crop_scale", "expected [low, high] with 0 < low <= high <= 1")

    @property
    def name(self) -> str:
        return PROBE_PROTOCOLS[self.protocol]

    @property
    def peak_lr(self) -> float:
        """mae: blr x global_batch / 256."""
        return self.blr * self.global_batch / 256


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Fine-tuning recipe; defaults are the release's B recipe (nepa.evals.finetune's docstring
    gives the L recipe)."""

    epochs: int = 100
    global_batch: int = 1024  # images per optimizer step over all ranks
    micro_batch: int = 128  # per device; accumulation = global_batch / (world_size * micro_batch)
    blr: float = 1.5e-3  # base lr per 256 images: lr = blr * global_batch / 256 (L: 1e-3)
    lr: float | None = None  # absolute lr; when set, blr scaling is not applied
    head_lr: float = 1e-3  # classifier and final LayerNorm; absolute, not scaled by the batch
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.05  # not on biases, norms, LayerScale
    warmup_fraction: float = 0.2  # of total steps (L: 0.3)
    clip_grad: float | None = 1.0  # global grad-norm clip (the release's trainer default); null: off
    layer_decay: float = 0.65  # lr factor per layer below the top (L: 0.75)
    # release: fixed decay, per-group warmup; dynamic: the paper's decay ramp 0.35 -> 1.0
    layer_decay_schedule: Schedule = "release"
    dynamic_ramp: Ramp = "linear"  # dynamic: linear (the paper) or cosine (the release code)
    dynamic_decay_start: float = 0.35
    dynamic_decay_end: float = 1.0
    drop_path: float = 0.1  # stochastic depth at the last block (L: 0.2)
    causal: bool = False  # attention during fine-tuning: bidirectional (the release) or causal
    freeze_embed: bool = True  # keep the patch embedding frozen (LayerScale otherwise hurts)
    # QK-norm gain: true (the release's B and L fine-tune configs) adds a learnable gain,
    # initialised to 1, where the pretrained model has none (B); null keeps the pretrained
    # model's QK norm as it is.
    qk_norm_affine: bool | None = True
    pool: Literal["mean", "last"] = "mean"  # mean of patch tokens -> fc_norm, or the last token
    pretrained_ema: bool | None = None  # null: the EMA weights of a nepa run when it holds them
    label_smoothing: float = 0.1
    mixup: float = 0.8  # Mixup alpha; 0 with cutmix 0: no mixing (label-smoothed CE)
    cutmix: float = 1.0  # CutMix alpha
    mixup_switch_prob: float = 0.5  # chance of CutMix instead of Mixup for a batch
    auto_augment: str | None = "rand-m9-mstd0.5-inc1"  # timm RandAugment; null: off
    re_prob: float = 0.25  # random erasing probability (pixel mode)
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range (timm's default)
    hflip: float = 0.5  # horizontal flip probability (0 for data where a mirror changes the class)
    ema: EMAConfig = field(default_factory=EMAConfig)  # 0.9999, constant; best epoch by EMA top-1
    eval_batch: int = 256  # per device
    eval_crop_pct: float = 0.875  # L: 0.95
    eval_squash: bool = False  # L: true (square resize, as the release)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPUs with native bf16 (A100+), else fp32
    grad_checkpointing: bool = False
    seed: int = 0
    max_steps: int | None = None  # overrides epochs (demo and tests)
    epoch_steps: int | None = None  # cap on steps per epoch (demo and tests: evaluate more often)
    keep_checkpoints: int = 2  # newest K step checkpoints (>= 2: a corrupt newest falls back)
    dist_timeout_s: int = 1800

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "finetune.epochs", "must be >= 1")
        check(self.global_batch >= 1 and self.micro_batch >= 1, "finetune.global_batch",
              "global_batch and micro_batch must be >= 1")
        check(self.global_batch % self.micro_batch == 0, "finetune.micro_batch",
              f"{self.micro_batch} does not divide global_batch {self.global_batch}")
        check(not self.mixing or self.micro_batch % 2 == 0, "finetune.micro_batch",
              f"Mixup/CutMix pair images within a batch: make {self.micro_batch} even "
              "(or set finetune.mixup and finetune.cutmix to 0)")
        for name in ("blr", "head_lr", "eps"):
            check(getattr(self, name) > 0, f"finetune.{name}", "must be > 0")
        check(self.lr is None or self.lr > 0, "finetune.lr", "must be > 0 or null")
        check(all(0 <= b < 1 for b in self.betas), "finetune.betas", "each must be in [0, 1)")
        for name in ("warmup_fraction", "drop_path", "label_smoothing"):
            check(0 <= getattr(self, name) < 1, f"finetune.{name}", "must be in [0, 1)")
        for name in ("layer_decay", "dynamic_decay_start", "dynamic_decay_end", "eval_crop_pct"):
            check(0 < getattr(self, name) <= 1, f"finetune.{name}", "must be in (0, 1]")
        check(self.mixup >= 0 and self.cutmix >= 0, "finetune.mixup", "alphas must be >= 0")
        check(0 <= self.mixup_switch_prob <= 1, "finetune.mixup_switch_prob", "must be in [0, 1]")
        check(0 <= self.re_prob <= 1, "finetune.re_prob", "must be in [0, 1]")
        check(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "finetune.crop_scale",
              "expected [low, high] with 0 < low <= high <= 1")
        check(0 <= self.hflip <= 1, "finetune.hflip", "must be in [0, 1]")
        check(self.clip_grad is None or self.clip_grad > 0, "finetune.clip_grad", "must be > 0 or null")
        for name in ("max_steps", "epoch_steps"):
            check(getattr(self, name) is None or getattr(self, name) >= 1, f"finetune.{name}",
                  "must be >= 1 or null")
        check(self.eval_batch >= 1, "finetune.eval_batch", "must be >= 1")
        check(self.keep_checkpoints >= 1, "finetune.keep_checkpoints", "must keep at least 1")

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0

    @property
    def peak_lr(self) -> float:
        """The base lr of the backbone: blr x global_batch / 256 unless `lr` is given."""
        return self.lr if self.lr is not None else self.blr * self.global_batch / 256


@dataclass(frozen=True, kw_only=True)
class ClassifyConfig:
    """Validation of a classifier. Defaults are the release's B evaluation (256 -> 224).

    The release's L evaluation is `crop_pct: 0.95, squash: true` (235x235 -> 224).
    """

    batch_size: int = 256  # per rank
    crop_pct: float = 0.875  # resize to image_size / crop_pct, centre crop image_size
    squash: bool = False  # resize to a square first (aspect ratio not kept), as the release's L
    ema: bool | None = None  # nepa checkpoints: null uses the EMA weights when present

    def __post_init__(self) -> None:
        check(self.batch_size >= 1, "classify.batch_size", "must be >= 1")
        check(0 < self.crop_pct <= 1, "classify.crop_pct", "must be in (0, 1], e.g. 0.875")
