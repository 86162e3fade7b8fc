"""Patch orders: permutations of the grid, neighbours stay adjacent, the model reads them
causally in that order while RoPE keeps each patch's 2-D position."""

from __future__ import annotations

import pytest
import torch

from nepa.model import build_model
from nepa.patch_order import ORDERS, inverse, patch_order

GRIDS = [(4, 4), (8, 8), (5, 7), (16, 16)]


def _steps(order: list[int], wp: int) -> list[int]:
    """Manhattan distance on the grid between consecutive patches."""
    return [abs(a // wp - b // wp) + abs(a % wp - b % wp) for a, b in zip(order, order[1:])]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", ORDERS)
def test_every_order_is_a_permutation(name, grid):
    order = patch_order(name, *grid)
    assert sorted(order) == list(range(grid[0] * grid[1]))
    assert [order[i] for i in inverse(order)] == list(range(len(order)))


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("name", ["hilbert", "spiral"])
def test_consecutive_patches_are_grid_neighbours(name, grid):
    order = patch_order(name, *grid)
    assert order[0] == 0  # both start in the top-left corner
    assert set(_steps(order, grid[1])) == {1}


def test_shapes_of_the_orders():
    assert patch_order("raster", 5, 7) == list(range(35))
    assert patch_order("spiral", 3, 4) == [0, 1, 2, 3, 7, 11, 10, 9, 8, 4, 5, 6]
    assert patch_order("hilbert", 2, 2) == [0, 2, 3, 1]
    assert patch_order("random", 4, 4, seed=3) == patch_order("random", 4, 4, seed=3)
    assert patch_order("random", 4, 4, seed=3) != patch_order("random", 4, 4, seed=4)
    # gilbert's one known compromise: a single diagonal step on e.g. 4x5
    assert sorted(_steps(patch_order("hilbert", 4, 5), 5))[-2:] == [1, 2]
    with pytest.raises(ValueError, match="unknown patch order 'zigzag'"):
        patch_order("zigzag", 4, 4)


def test_raster_is_bitwise_the_model_without_the_field():
    images = torch.randn(2, 3, 32, 32)
    torch.manual_seed(1)
    plain = build_model("tiny", depth=2).eval()
    torch.manual_seed(1)
    raster = build_model("tiny", depth=2, patch_order="raster").eval()
    assert set(plain.state_dict()) == set(raster.state_dict())  # the order is not state
    with torch.no_grad():
        assert torch.equal(plain(images), raster(images))
        assert torch.equal(plain.forward_pretrain(images)[1], raster.forward_pretrain(images)[1])


@pytest.mark.parametrize("name", ["hilbert", "spiral", "random"])
def test_causal_output_depends_only_on_earlier_patches_in_the_order(name):
    model = build_model("tiny", depth=2, patch_order=name, patch_order_seed=5).eval()
    images = torch.randn(1, 3, 32, 32)
    order = model.token_order((8, 8))
    k = 20
    row, col = divmod(int(order[k + 1]), 8)  # the patch read right after position k
    perturbed = images.clone()
    perturbed[..., 4 * row:4 * row + 4, 4 * col:4 * col + 4] += 1.0
    with torch.no_grad():
        a, b = model.forward_features(images), model.forward_features(perturbed)
    # positions 0..k+1 of the sequence are CLS + patches order[0..k]
    assert torch.equal(a[:, :k + 2], b[:, :k + 2])
    assert not torch.allclose(a[:, k + 2], b[:, k + 2])
    inputs, _ = model.forward_pretrain(images)
    plain = build_model(model.cfg, patch_order="raster")
    plain.load_state_dict(model.state_dict())
    assert torch.equal(inputs[:, 1:], plain.embed(images)[0][:, 1:][:, order])  # targets follow


@pytest.mark.parametrize("name", ["hilbert", "spiral", "random"])
def test_bidirectional_model_is_permutation_equivariant(name):
    """Bidirectional attention + RoPE gathered with the tokens: same per-patch outputs."""
    torch.manual_seed(2)
    ordered = build_model("tiny", depth=2, causal=False, patch_order=name).eval()
    raster = build_model(ordered.cfg, patch_order="raster").eval()
    raster.load_state_dict(ordered.state_dict())
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        got = ordered.to_raster(ordered.forward_features(images), (8, 8))
        want = raster.forward_features(images)
        maps = ordered.get_intermediate_layers(images, 1, reshape=True)[0]
        raster_maps = raster.get_intermediate_layers(images, 1, reshape=True)[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(maps, raster_maps, atol=1e-5, rtol=1e-5)  # spatial maps stay spatial
    assert not torch.allclose(ordered.forward_features(images), want, atol=1e-3)  # order did change
