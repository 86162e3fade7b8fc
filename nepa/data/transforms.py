"""Image transforms: the release's pretraining augmentation, MAE's linear-probe augmentation,
timm's fine-tuning recipe, evaluation resize + centre crop, and timm's Mixup/CutMix. All
normalise with mean = std = 0.5 per channel (pixels to [-1, 1]), as the release does."""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms as T

from nepa.data.config import DataConfig

MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


class _TorchRandomCompose(T.Compose):
    """torchvision steps, which draw from torch's generator only: per-item seeding
    (nepa.data.sampler.seeded) then skips random and numpy."""

    rng_sources = ("torch",)


def pretrain_transform(cfg: DataConfig) -> Callable:
    """RandomResizedCrop (scale `crop_scale`, default (0.08, 1.0); bilinear, as the release) +
    optional flip, to a normalised tensor."""
    steps = [T.RandomResizedCrop(cfg.image_size, scale=tuple(cfg.crop_scale),
                                 interpolation=T.InterpolationMode.BILINEAR)]
    if cfg.hflip:
        steps.append(T.RandomHorizontalFlip())
    return _TorchRandomCompose([*steps, T.ToTensor(), T.Normalize(MEAN, STD)])


def probe_transform(image_size: int, scale: tuple[float, float] = (0.08, 1.0)) -> Callable:
    """MAE's linear-probe training augmentation: RandomResizedCrop (bicubic) + flip."""
    return _TorchRandomCompose([
        T.RandomResizedCrop(image_size, scale=tuple(scale), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])


def finetune_transform(cfg: DataConfig, *, auto_augment: str | None = "rand-m9-mstd0.5-inc1",
                       re_prob: float = 0.25, interpolation: str = "bicubic",
                       scale: tuple[float, float] = (0.08, 1.0), hflip: float = 0.5) -> Callable:
    """timm's fine-tuning recipe: random resized crop + flip, RandAugment, random erasing."""
    from timm.data import create_transform

    transform = create_transform(cfg.image_size, is_training=True, auto_augment=auto_augment,
                                 interpolation=interpolation, re_prob=re_prob, re_mode="pixel",
                                 re_count=1, mean=MEAN, std=STD, scale=scale, hflip=hflip)
    _allow_zero_bit_posterize(transform)
    return transform


def posterize(img, bits_to_keep: int, **_):
    """timm's posterize, also for 0 bits: what its recipe asks for at the top magnitudes
    (rand-m9-mstd0.5-inc1 reaches level 10, "keep 0 MSB", a black image). Pillow >= 12
    refuses 0 bits with ValueError, which would crash a fine-tuning run at random."""
    from PIL import Image, ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every bit masked off
    return ImageOps.posterize(img, bits_to_keep)


def _allow_zero_bit_posterize(transform) -> None:
    from timm.data import auto_augment

    for step in getattr(transform, "transforms", ()):
        for op in getattr(step, "ops", ()):
            if op.aug_fn is auto_augment.posterize:
                op.aug_fn = posterize


def eval_transform(image_size: int, crop_pct: float = 0.875, squash: bool = False) -> Callable:
    """Resize to int(image_size / crop_pct) (bicubic), centre crop image_size.

    Default: the short side is resized, keeping the aspect ratio (224 at 0.875: 256 -> 224).
    squash=True resizes to a square first, the release's Large evaluation (224 at 0.95:
    235x235 -> 224).
    """
    from timm.data import create_transform

    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    return create_transform(image_size, is_training=False, crop_pct=crop_pct,
                            crop_mode="squash" if squash else "center", interpolation="bicubic",
                            mean=MEAN, std=STD)


def build_mixup(num_classes: int, mixup: float = 0.8, cutmix: float = 1.0, switch_prob: float = 0.5,
                label_smoothing: float = 0.1):
    """timm's batch-wise Mixup/CutMix with label smoothing (targets become soft labels)."""
    from timm.data import Mixup

    return Mixup(mixup_alpha=mixup, cutmix_alpha=cutmix, switch_prob=switch_prob, prob=1.0,
                 mode="batch", label_smoothing=label_smoothing, num_classes=num_classes)
