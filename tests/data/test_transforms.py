"""Transforms: the release's pretraining crop, eval resize/crop variants, fine-tuning, Mixup."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T

from nepa.data import (
    DataConfig,
    build_mixup,
    eval_transform,
    finetune_transform,
    pretrain_transform,
    seeded,
)


def _photo(width=500, height=375) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def test_pretrain_transform_is_the_release_recipe():
    cfg = DataConfig(source="digits", image_size=224, crop_scale=(0.3, 0.9), hflip=True)
    transform = pretrain_transform(cfg)
    crop, flip, _, norm = transform.transforms
    assert isinstance(crop, T.RandomResizedCrop) and crop.size == (224, 224)
    assert crop.scale == (0.3, 0.9) and crop.interpolation == T.InterpolationMode.BILINEAR
    assert isinstance(flip, T.RandomHorizontalFlip)
    assert list(norm.mean) == [0.5] * 3 and list(norm.std) == [0.5] * 3
    with seeded(7):
        a = transform(_photo())
    with seeded(7):
        b = transform(_photo())
    assert a.shape == (3, 224, 224) and torch.equal(a, b)
    assert a.min() >= -1.0 and a.max() <= 1.0
    no_flip = pretrain_transform(DataConfig(hflip=False))
    assert not any(isinstance(t, T.RandomHorizontalFlip) for t in no_flip.transforms)


def test_eval_transform_short_side_and_squash():
    resize = eval_transform(224).transforms[0]
    assert resize.size == 256 and resize.interpolation == T.InterpolationMode.BICUBIC
    assert eval_transform(224)(_photo()).shape == (3, 224, 224)
    squash = eval_transform(224, crop_pct=0.95, squash=True)
    assert squash.transforms[0].size == (235, 235)
    assert squash(_photo()).shape == (3, 224, 224)
    # aspect kept by default: a wide image's short side becomes 256, so the crop is central
    stripe = np.zeros((200, 400, 3), dtype=np.uint8)
    stripe[:, :100] = 255  # white left quarter: cropped away by the centre crop
    out = eval_transform(224)(Image.fromarray(stripe))
    assert out.max() < -0.99


def test_finetune_transform_and_mixup():
    transform = finetune_transform(DataConfig(image_size=64))
    names = [type(t).__name__ for t in transform.transforms]
    assert "RandAugment" in names and names[-1] == "RandomErasing"
    image = transform(_photo())
    assert image.shape == (3, 64, 64)
    mixup = build_mixup(num_classes=10)
    images, targets = mixup(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))
    assert images.shape == (4, 3, 8, 8) and targets.shape == (4, 10)
    torch.testing.assert_close(targets.sum(dim=1), torch.ones(4))
    assert targets.min() > 0  # label smoothing 0.1: no zero targets


def test_randaugment_posterize_at_zero_bits_gives_black_not_an_error():
    """rand-m9-mstd0.5-inc1 reaches posterize level 10 (keep 0 bits); Pillow refuses 0 bits."""
    import numpy as np
    import torch
    from PIL import Image

    from nepa.data import DataConfig, finetune_transform
    from nepa.data.transforms import posterize

    transform = finetune_transform(DataConfig(source="digits"))
    ops = [op for step in transform.transforms for op in getattr(step, "ops", ()) if "Posterize" in op.name]
    assert ops and all(op.aug_fn is posterize for op in ops)
    image = Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8))
    assert np.asarray(posterize(image, 0)).max() == 0
    assert np.asarray(posterize(image, 1)).max() == 128 and posterize(image, 8) is image
    (op,) = ops
    op.magnitude_std, op.magnitude, op.prob = 0, 10, 1.0  # force level 10: 4 - 4 = 0 bits kept
    assert np.asarray(op(image)).max() == 0
    torch.manual_seed(0)
    assert transform(Image.fromarray(np.full((32, 32, 3), 99, dtype=np.uint8))).shape == (3, 32, 32)


def test_pretrain_transform_draws_from_torch_only_so_seeding_skips_random_and_numpy():
    import random

    from nepa.data.sampler import RNG_SOURCES, rng_sources

    cfg = DataConfig(source="digits", image_size=32, hflip=True)
    transform = pretrain_transform(cfg)
    assert rng_sources(transform) == ("torch",)
    assert rng_sources(finetune_transform(DataConfig(image_size=32))) == RNG_SOURCES
    outputs = []
    for other in (1, 2):  # random and numpy in different states: same crops and flips
        random.seed(other)
        np.random.seed(other)
        with seeded(11, sources=rng_sources(transform)):
            outputs.append(transform(_photo(64, 48)))
    assert torch.equal(*outputs)
    random.seed(5)
    np.random.seed(5)
    expected = (random.random(), np.random.random())
    random.seed(5)
    np.random.seed(5)
    with seeded(11, sources=("torch",), restore=False):
        pass
    assert (random.random(), np.random.random()) == expected  # untouched, not re-seeded
