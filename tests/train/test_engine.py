"""The shared step engine on a tiny linear model: accumulation, the dummy batch, non-finite skips."""

from __future__ import annotations

import math

import torch
from torch import nn

from nepa.train.distributed import DistEnv
from nepa.train.engine import DUMMY_IMAGES, StepEngine

ENV = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
SHAPE = (1, 2, 2)  # (C, H, W)


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _engine(model: nn.Module, accumulation: int, clip_grad: float | None = None) -> StepEngine:
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)  # new weights = old - gradient
    return StepEngine(model, optimizer, ENV, accumulation=accumulation, image_shape=SHAPE,
                      clip_grad=clip_grad)


def _data(n: int) -> dict:
    generator = torch.Generator().manual_seed(1)
    return {"image": torch.randn(n, *SHAPE, generator=generator),
            "label": torch.randint(0, 3, (n,), generator=generator)}


def _split(batch: dict, k: int) -> list[dict]:
    return [{"image": i, "label": lab}
            for i, lab in zip(batch["image"].chunk(k), batch["label"].chunk(k))]


def _cross_entropy(model: nn.Module, seen: list | None = None):
    def forward(batch: dict, micro: int):
        if seen is not None:
            seen.append(batch["image"].clone())
        logits = model(batch["image"])
        return nn.functional.cross_entropy(logits, batch["label"]), logits.detach()
    return forward


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def test_accumulating_k_micro_batches_equals_one_batch():
    batch = _data(8)
    whole, parts = _model(), _model()
    one = _engine(whole, 1).step(iter([batch]), _cross_entropy(whole), step=0)
    four = _engine(parts, 4).step(iter(_split(batch, 4)), _cross_entropy(parts), step=0)
    assert not one.skipped and not four.skipped
    assert math.isclose(four.loss, one.loss, rel_tol=1e-6)
    assert math.isclose(four.grad_norm, one.grad_norm, rel_tol=1e-5)
    for a, b in zip(_weights(whole), _weights(parts)):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_an_empty_micro_batch_is_a_zero_weighted_dummy():
    real = _data(4)
    empty = {"image": torch.empty(0), "label": torch.empty(0, dtype=torch.long), "skipped": 4}
    model, reference = _model(), _model()
    seen: list[torch.Tensor] = []
    result = _engine(model, 2).step(iter([real, empty]), _cross_entropy(model, seen), step=0)
    # The dummy is forwarded (DDP's collectives stay in step) but adds no gradient: the step
    # equals the real micro-batch alone, weighted 1/2 as one of two micro-batches.
    assert len(seen) == 2 and torch.equal(seen[1], torch.zeros(DUMMY_IMAGES, *SHAPE))
    expected = nn.functional.cross_entropy(reference(real["image"]), real["label"])
    (expected / 2).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= p.grad
    for a, b in zip(_weights(model), _weights(reference)):
        torch.testing.assert_close(a, b)
    assert math.isclose(result.loss, expected.item(), rel_tol=1e-6)  # the dummy's loss is not counted
    assert result.skipped_images == 4 and result.outputs.shape == (4, 3)  # outputs: the real batch


def test_a_step_without_any_readable_image_is_skipped():
    model = _model()
    before = _weights(model)
    empty = {"image": torch.empty(0), "label": torch.empty(0, dtype=torch.long)}
    engine = _engine(model, 2)
    result = engine.step(iter([empty, empty]), _cross_entropy(model), step=0)
    assert result.skipped and math.isnan(result.loss) and engine.skipped_steps == 1
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))


def test_a_non_finite_gradient_norm_with_a_finite_loss_skips_the_step():
    model = _model()
    engine = _engine(model, 1, clip_grad=1.0)
    before = _weights(model)
    hook = model[1].weight.register_hook(lambda grad: grad * math.inf)
    result = engine.step(iter([_data(4)]), _cross_entropy(model), step=0)
    assert result.skipped and math.isfinite(result.loss) and not math.isfinite(result.grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(model)))
    assert all(p.grad is None for p in model.parameters())  # nothing leaks into the next step
    hook.remove()
    result = engine.step(iter([_data(4)]), _cross_entropy(model), step=1)
    assert not result.skipped and engine.skipped_steps == 1
    assert not torch.equal(before[0], _weights(model)[0])


def test_clipping_bounds_the_update():
    model = _model()
    before = _weights(model)
    result = _engine(model, 1, clip_grad=1e-3).step(iter([_data(4)]), _cross_entropy(model), step=0)
    assert result.grad_norm > 1e-3  # reported before clipping
    update = torch.cat([(a - b).flatten() for a, b in zip(before, _weights(model))])
    assert math.isclose(update.norm().item(), 1e-3, rel_tol=1e-3)  # SGD lr 1: the clipped gradient
