"""Attention and next-embedding similarity maps: faithful to the model, and rendered to PNGs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import nepa
from nepa import viz
from nepa.objective import nepa_loss
from tests.conftest import GOLDEN, GOLDEN_VARIANTS


def _tiny(causal: bool, **overrides) -> nepa.NepaViT:
    model = nepa.build_model("tiny", causal=causal, qk_norm_affine=True, **overrides)
    with torch.no_grad():  # move norms and LayerScale away from their init so every part matters
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(".gamma"):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _model(name: str) -> nepa.NepaViT:
    """A tiny random model, or a golden release directory (the released code's weights)."""
    if name.startswith("tiny-"):
        return _tiny(name == "tiny-causal")
    return nepa.load_pretrained(GOLDEN / name)


def _images(model: nepa.NepaViT, batch: int = 2) -> torch.Tensor:
    side = model.cfg.image_size
    return torch.randn(batch, 3, side, side)


@pytest.mark.parametrize("name", ["tiny-causal", "tiny-bidirectional", *GOLDEN_VARIANTS])
def test_recomputed_attention_rebuilds_the_modules_real_output(name):
    model = _model(name)
    calls = []
    handles = [block.attn.register_forward_hook(lambda m, args, out: calls.append((m, args, out)))
               for block in model.blocks]
    with torch.no_grad():
        model.forward_features(_images(model))
    for h in handles:
        h.remove()
    assert len(calls) == len(model.blocks)
    for attn, (x, rope), real in calls:
        probs, v = viz.recompute_attention(attn, x, rope)
        b, n, d = x.shape
        rebuilt = attn.proj((probs @ v).transpose(1, 2).reshape(b, n, d))  # (B, N, D)
        torch.testing.assert_close(rebuilt, real, atol=1e-5, rtol=1e-4)
        assert attn.causal == model.cfg.causal


@pytest.mark.parametrize("causal", [True, False])
def test_rows_sum_to_one_and_causal_queries_never_see_later_patches(causal):
    model = _tiny(causal)
    images = _images(model)
    probs = viz.attention_probs(model, images, [0, -1])  # (L, B, H, N, N)
    assert probs.shape == (2, 2, 4, 65, 65)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 4, 65))
    queries = [0, 10, 37, 63]
    maps = viz.attention_maps(model, images, [0, -1], queries)  # (L, B, H, Q, Hp, Wp)
    assert maps.shape == (2, 2, 4, 4, 8, 8)
    flat = maps.flatten(-2)  # (L, B, H, Q, T)
    torch.testing.assert_close(flat.sum(-1) + probs[..., [1 + q for q in queries], 0],
                               torch.ones(2, 2, 4, 4))  # patch keys + the CLS key
    for qi, q in enumerate(queries):
        if causal:
            assert torch.all(flat[..., qi, q + 1:] == 0)
            assert torch.all(flat[..., qi, :q + 1] > 0)
        else:
            assert torch.all(flat[..., qi, :] > 0)


@pytest.mark.parametrize("order", ["hilbert", "spiral", "random"])
def test_maps_of_other_patch_orders_are_drawn_on_the_grid(order):
    from nepa.patch_order import patch_order

    model = _tiny(True, patch_order=order, patch_order_seed=3)
    images = _images(model)
    read = patch_order(order, 8, 8, seed=3)  # read[k]: the raster patch read k-th
    queries = [read[0], read[20], read[63]]
    flat = viz.attention_maps(model, images, [-1], queries).flatten(-2)  # (1, B, H, Q, 64)
    for qi, q in enumerate(queries):
        seen = read[:read.index(q) + 1]  # a causal query attends to what was read up to it
        unseen = sorted(set(range(64)) - set(seen))
        assert torch.all(flat[..., qi, seen] > 0) and torch.all(flat[..., qi, unseen] == 0)
    # a bidirectional model sees every patch whatever the order: the same maps as in raster
    # order (RoPE follows the grid), only the query is looked up by grid position
    twisted = _tiny(False, patch_order=order, patch_order_seed=3)
    plain = _tiny(False)
    plain.load_state_dict(twisted.state_dict())
    torch.testing.assert_close(viz.attention_maps(twisted, images, [0, -1], queries),
                               viz.attention_maps(plain, images, [0, -1], queries), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(viz.next_embedding_similarity(twisted, images, queries),
                               viz.next_embedding_similarity(plain, images, queries), atol=1e-5, rtol=1e-4)


def test_maps_use_eval_mode_and_restore_the_callers_mode():
    model = _tiny(True)  # rope_rescale 2.0: training mode would rescale coordinates at random
    images = _images(model)
    expected = viz.attention_maps(model, images, [2], [5])
    model.train()
    assert torch.equal(viz.attention_maps(model, images, [2], [5]), expected)
    assert model.training


def test_similarity_is_the_cosine_the_objective_scores():
    model = _tiny(True)
    images = _images(model)
    t = 64
    sim = viz.next_embedding_similarity(model, images, range(t))  # (B, Q, Hp, Wp)
    assert sim.shape == (2, t, 8, 8)
    inputs, outputs = model.forward_pretrain(images)  # (B, 1+T, D) each
    direct = F.cosine_similarity(outputs[:, 1:, None], inputs[:, None, 1:], dim=-1)  # (B, T, T)
    torch.testing.assert_close(sim.flatten(-2), direct)
    # o_t predicts z_{t+1}: the objective is the mean of the CLS term and each query's cosine
    # with the next patch, i.e. the first off-diagonal of the maps.
    shifted = sim.flatten(-2).diagonal(offset=1, dim1=1, dim2=2)  # (B, T-1)
    cls_term = F.cosine_similarity(outputs[:, 0], inputs[:, 1], dim=-1)[:, None]  # (B, 1)
    torch.testing.assert_close(-torch.cat([cls_term, shifted], 1).mean(), nepa_loss(inputs, outputs))
    assert sim.min() >= -1 - 1e-6 and sim.max() <= 1 + 1e-6


def test_bad_indices_name_the_valid_range():
    model = _tiny(True)
    images = _images(model, 1)
    with pytest.raises(viz.VizError, match=r"query patch 64 is out of range: the 8x8 patch grid "
                                           r"has patches 0\.\.63 \(row-major\)"):
        viz.next_embedding_similarity(model, images, [3, 64])
    with pytest.raises(viz.VizError, match="query patch -1 is out of range"):
        viz.attention_maps(model, images, [0], [-1])
    with pytest.raises(viz.VizError, match=r"layer 6 is out of range: the model has 6 blocks \(0\.\.5"):
        viz.attention_maps(model, images, [6], [0])
    with pytest.raises(viz.VizError, match=r"head 4 is out of range: the model has 4 heads \(0\.\.3\)"):
        viz.check_heads(model, [0, 4])
    assert viz.check_layers(model, [-1, 5, 0]) == [5, 0]
    assert viz.grid_queries((8, 8), 2) == [18, 22, 50, 54]
    with pytest.raises(viz.VizError, match="--query-grid 9 does not fit the 8x8 patch grid"):
        viz.grid_queries((8, 8), 9)


def _pixels(path) -> torch.Tensor:
    with Image.open(path) as img:
        return torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32))  # (H, W, 3)


def test_visualize_writes_valid_pngs_sheet_and_index(tmp_path):
    weights = GOLDEN / "pretrain_qknorm_plain"  # a release directory: 56x56, patch 14, 2 heads
    image = tmp_path / "photo.jpg"
    Image.fromarray((torch.rand(80, 120, 3) * 255).byte().numpy()).save(image)
    written = viz.visualize(weights, image, tmp_path / "out", layers=[0, 1], queries=[0, 5])
    names = sorted(p.name for p in written)
    assert names == sorted(["index.json", "sheet.png", "q0000_similarity.png", "q0005_similarity.png",
                            *(f"q{q:04d}_layer{lay:02d}_head{h:02d}.png"
                              for q in (0, 5) for lay in (0, 1) for h in (0, 1))])
    for path in written[:-1]:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:
            assert img.format == "PNG"
            expected = viz.sheet_size(2, 4) if path.name == "sheet.png" else (256, 256)
            assert img.size == expected, path.name
    for kind in ("similarity", "layer01_head00"):
        a, b = _pixels(tmp_path / "out" / f"q0000_{kind}.png"), _pixels(tmp_path / "out" / f"q0005_{kind}.png")
        assert (a - b).abs().mean() > 1.0, kind  # different queries, visibly different pictures
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert index["grid"] == [4, 4] and index["layers"] == [0, 1] and index["heads"] == [0, 1]
    assert index["queries"] == [0, 5] and len(index["files"]) == 11
    assert {f["kind"] for f in index["files"]} == {"attention", "similarity", "sheet"}
    assert all((tmp_path / "out" / f["path"]).is_file() for f in index["files"])


def test_load_image_takes_grey_files_and_refuses_non_images(tmp_path):
    Image.fromarray((torch.rand(40, 50) * 255).byte().numpy()).save(tmp_path / "g.png")
    x = viz.load_image(tmp_path / "g.png", 32)
    assert x.shape == (1, 3, 32, 32) and -1 <= x.min() and x.max() <= 1
    torch.testing.assert_close(x[:, 0], x[:, 2])  # grey: equal channels
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(viz.VizError, match="bad.png is not a readable image"):
        viz.load_image(tmp_path / "bad.png", 32)
    with pytest.raises(viz.VizError, match="missing.png: no such image file"):
        viz.load_image(tmp_path / "missing.png", 32)
