"""The paper's pictures: attention maps and next-embedding similarity maps of query patches.

Attention probabilities are recomputed from each block's real attention input (captured by a
forward hook), exactly as `nepa.model.Attention` computes them inside its fused SDPA call, so
`model.py` needs no visualisation switch. Query `j` is a patch index (row-major, 0-based);
its token sits at sequence position `1 + j`, after the CLS token.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from nepa.errors import NepaError
from nepa.model import Attention, NepaViT, apply_rope

MAP_PIXELS = 256  # side of each single-map PNG
PANEL_INCHES = 2.0  # side of one sheet panel
SHEET_HEADER_INCHES = 0.4  # room for the column titles
DPI = 100


class VizError(NepaError, ValueError):
    """A bad visualisation request: layer, head or query out of range, unreadable image."""


# ---------------------------------------------------------------------------------------------
# Computation
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _eval_mode(model: NepaViT) -> Iterator[None]:
    """Eval mode (no RoPE rescale, no dropout) for the pictures; restore the caller's mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def recompute_attention(attn: Attention, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(probabilities (B, H, N, N), values (B, H, N, hd)) of one attention call on input `x`.

    Mirrors `Attention.forward`: fused qkv, QK-norm, RoPE (identity on CLS), scale, causal
    mask; in float32 so the maps do not depend on autocast.
    """
    b, n, _ = x.shape
    qkv = attn.qkv(x).view(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)  # (B, H, N, hd) each
    q, k = attn.q_norm(q).to(v.dtype).float(), attn.k_norm(k).to(v.dtype).float()
    cos, sin = (t.float() for t in rope)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    scores = q @ k.transpose(-2, -1) * attn.head_dim**-0.5  # (B, H, N, N)
    if attn.causal:
        future = torch.ones(n, n, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(dim=-1), v


def check_layers(model: NepaViT, layers: Sequence[int]) -> list[int]:
    """Block indices (negative counts from the end), deduplicated, in the given order."""
    depth = len(model.blocks)
    out = []
    for layer in layers:
        if not -depth <= layer < depth:
            raise VizError(f"layer {layer} is out of range: the model has {depth} blocks "
                           f"(0..{depth - 1}, or -1 for the last)")
        if layer % depth not in out:
            out.append(layer % depth)
    if not out:
        raise VizError("no layers chosen; give --layers like 0,5")
    return out


def check_heads(model: NepaViT, heads: Sequence[int] | None) -> list[int]:
    """Head indices (None: all heads), deduplicated, in the given order."""
    count = model.cfg.num_heads
    if heads is None:
        return list(range(count))
    for head in heads:
        if not 0 <= head < count:
            raise VizError(f"head {head} is out of range: the model has {count} heads "
                           f"(0..{count - 1}); give --heads all or e.g. 0,1")
    return list(dict.fromkeys(heads))


def check_queries(grid: tuple[int, int], queries: Sequence[int]) -> list[int]:
    """Query patch indices, checked against the patch grid, deduplicated."""
    hp, wp = grid
    for query in queries:
        if not 0 <= query < hp * wp:
            raise VizError(f"query patch {query} is out of range: the {hp}x{wp} patch grid has "
                           f"patches 0..{hp * wp - 1} (row-major)")
    if not queries:
        raise VizError("no query patches chosen; give --query like 10,37 or --query-grid 2")
    return list(dict.fromkeys(queries))


def grid_queries(grid: tuple[int, int], per_side: int) -> list[int]:
    """An evenly spaced per_side x per_side set of query patches, row-major."""
    hp, wp = grid
    if not 1 <= per_side <= min(hp, wp):
        raise VizError(f"--query-grid {per_side} does not fit the {hp}x{wp} patch grid; "
                       f"use 1..{min(hp, wp)}")
    rows = [int((i + 0.5) * hp / per_side) for i in range(per_side)]
    cols = [int((i + 0.5) * wp / per_side) for i in range(per_side)]
    return [r * wp + c for r in rows for c in cols]


def patch_grid(model: NepaViT, images: torch.Tensor) -> tuple[int, int]:
    p = model.cfg.patch_size
    return images.shape[-2] // p, images.shape[-1] // p


def raster_positions(model: NepaViT, grid: tuple[int, int]) -> torch.Tensor:
    """Sequence position (CLS counted) of each patch in raster order, for any patch order.

    Queries are chosen and maps are drawn on the grid; a model reading the patches in
    another order (cfg.patch_order) holds raster patch j at position prefix + k, order[k] = j.
    """
    order = model.token_order(grid)
    positions = torch.empty_like(order)
    positions[order] = torch.arange(order.numel())
    return model.num_prefix_tokens + positions


def attention_probs(model: NepaViT, images: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Full attention probabilities (L, B, H, N, N) of the chosen blocks, N = 1 + patches."""
    layers = check_layers(model, layers)
    found: dict[int, torch.Tensor] = {}

    def capture(index: int) -> Callable:
        def hook(module: Attention, args: tuple, _output: torch.Tensor) -> None:
            found[index] = recompute_attention(module, *args)[0]
        return hook

    handles = [model.blocks[i].attn.register_forward_hook(capture(i)) for i in layers]
    try:
        with _eval_mode(model):
            model.forward_features(images)
    finally:
        for handle in handles:
            handle.remove()
    return torch.stack([found[i] for i in layers])  # (L, B, H, N, N)


def attention_maps(model: NepaViT, images: torch.Tensor, layers: Sequence[int],
                   queries: Sequence[int]) -> torch.Tensor:
    """Attention of each query patch to every patch key, (L, B, H, Q, Hp, Wp).

    The CLS key's share is left out, so a map sums to 1 minus the attention paid to CLS.
    """
    grid = patch_grid(model, images)
    queries = check_queries(grid, queries)
    probs = attention_probs(model, images, layers)  # (L, B, H, N, N), the model's order
    positions = raster_positions(model, grid).to(probs.device)
    rows = probs[..., positions[queries], :][..., positions]  # (L, B, H, Q, T), raster keys
    return rows.reshape(*rows.shape[:-1], *grid)  # (L, B, H, Q, Hp, Wp)


def next_embedding_similarity(model: NepaViT, images: torch.Tensor,
                              queries: Sequence[int]) -> torch.Tensor:
    """Cosine of the prediction o_t at each query with every patch embedding z_j, (B, Q, Hp, Wp).

    o_t is the final-normalised output that NEPA trains to match z_{t+1}; z_j are the patch
    embeddings fed to the first block (the objective's targets), as in `nepa.objective`.
    """
    grid = patch_grid(model, images)
    queries = check_queries(grid, queries)
    with _eval_mode(model):
        inputs, outputs = model.forward_pretrain(images)  # (B, N, D) each
    positions = raster_positions(model, grid).to(outputs.device)
    predictions = outputs[:, positions[queries]].float()  # (B, Q, D)
    targets = inputs[:, positions].float()  # (B, T, D), raster order
    cosine = F.cosine_similarity(predictions[:, :, None], targets[:, None], dim=-1)  # (B, Q, T)
    return cosine.reshape(*cosine.shape[:2], *grid)  # (B, Q, Hp, Wp)


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _draw(ax, image: torch.Tensor, heat: torch.Tensor | None, query: int | None,
          patch: int, *, signed: bool = False) -> None:
    """Image (3, S, S) in [0, 1], optional heat map (Hp, Wp) overlaid, query patch outlined."""
    from matplotlib.patches import Rectangle

    side = image.shape[-1]
    ax.imshow(image.permute(1, 2, 0).clamp(0, 1).numpy(), extent=(0, side, side, 0))
    if heat is not None:
        top = float(heat.abs().max()) or 1.0
        ax.imshow(heat.numpy(), extent=(0, side, side, 0), interpolation="bilinear", alpha=0.6,
                  cmap="RdBu_r" if signed else "inferno", vmin=-1 if signed else 0,
                  vmax=1 if signed else top)
    if query is not None:
        wp = side // patch
        row, col = divmod(query, wp)
        ax.add_patch(Rectangle((col * patch, row * patch), patch, patch, fill=False,
                               edgecolor="lime", linewidth=2))
    ax.set_xlim(0, side)
    ax.set_ylim(side, 0)
    ax.set_axis_off()


def render_map(path: Path, image: torch.Tensor, heat: torch.Tensor | None, query: int,
               patch: int, *, signed: bool = False) -> Path:
    """One MAP_PIXELS-square PNG: the image with one heat map and the query outlined."""
    plt = _pyplot()
    fig = plt.figure(figsize=(MAP_PIXELS / DPI, MAP_PIXELS / DPI), dpi=DPI)
    try:
        _draw(fig.add_axes((0, 0, 1, 1)), image, heat, query, patch, signed=signed)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


def sheet_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of rows x columns panels."""
    return (round(columns * PANEL_INCHES * DPI),
            round((rows * PANEL_INCHES + SHEET_HEADER_INCHES) * DPI))


def render_sheet(path: Path, image: torch.Tensor, queries: Sequence[int], similarity: torch.Tensor,
                 attention: torch.Tensor, layers: Sequence[int], patch: int) -> Path:
    """Grid sheet: one row per query; columns = image, similarity, attention of each layer.

    `similarity` is (Q, Hp, Wp), `attention` (L, Q, Hp, Wp) (already averaged over heads).
    """
    plt = _pyplot()
    titles = ["query", "next-embedding cos", *(f"attention L{layer}" for layer in layers)]
    width, height = sheet_size(len(queries), len(titles))
    fig = plt.figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    top = 1 - SHEET_HEADER_INCHES * DPI / height
    axes = fig.subplots(len(queries), len(titles), squeeze=False,
                        gridspec_kw=dict(left=0.01, right=0.99, bottom=0.01, top=top,
                                         wspace=0.04, hspace=0.04))
    try:
        for r, query in enumerate(queries):
            heats = [None, similarity[r], *attention[:, r]]
            for c, heat in enumerate(heats):
                _draw(axes[r, c], image, heat, query, patch, signed=c == 1)
            axes[r, 0].text(1, 1, f"patch {query}", color="white", fontsize=8, va="top",
                            bbox=dict(facecolor="black", alpha=0.6, pad=1, linewidth=0))
        for c, title in enumerate(titles):
            axes[0, c].set_title(title, fontsize=9)
        fig.savefig(path, dpi=DPI)
    finally:
        plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------


def load_image(path: str | Path, image_size: int) -> torch.Tensor:
    """One normalised image (1, 3, S, S) through the evaluation resize + centre crop."""
    from PIL import Image, UnidentifiedImageError

    from nepa.data.transforms import eval_transform

    path = Path(path)
    if not path.is_file():
        raise VizError(f"{path}: no such image file; check the path")
    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")  # grey, palette and RGBA files all become RGB
    except (UnidentifiedImageError, OSError) as exc:
        raise VizError(f"{path} is not a readable image ({type(exc).__name__}); "
                       "give a PNG, JPEG or another format PIL reads") from None
    return eval_transform(image_size)(rgb)[None]  # (1, 3, S, S)


def visualize(weights: str | Path, image_path: str | Path, out_dir: str | Path, *,
              layers: Sequence[int] | None = None, heads: Sequence[int] | None = None,
              queries: Sequence[int] | None = None, query_grid: int | None = None,
              progress: Callable[[str], None] | None = None) -> list[Path]:
    """Write per-(query, layer, head) attention PNGs, per-query similarity PNGs, one sheet and
    index.json to `out_dir`; returns the written paths, sheet and index last.

    Defaults: the first, middle and last block, all heads, a 2x2 grid of query patches.
    The sheet's attention columns average the chosen heads.
    """
    from nepa.pretrained import load_pretrained

    say = progress or (lambda _msg: None)
    say(f"loading {weights}")
    model = load_pretrained(weights)
    if model.cfg.in_chans != 3:
        raise VizError(f"{weights} takes {model.cfg.in_chans}-channel images; viz needs RGB models")
    depth = len(model.blocks)
    layers = check_layers(model, layers if layers is not None else [0, depth // 2, depth - 1])
    heads = check_heads(model, heads)
    images = load_image(image_path, model.cfg.image_size)
    grid = patch_grid(model, images)
    if queries is not None and query_grid is not None:
        raise VizError("give either query patches or a query grid, not both")
    queries = check_queries(grid, queries if queries is not None else grid_queries(grid, query_grid or 2))
    say("computing attention and similarity maps")
    attention = attention_maps(model, images, layers, queries)[:, 0, heads]  # (L, H', Q, Hp, Wp)
    similarity = next_embedding_similarity(model, images, queries)[0]  # (Q, Hp, Wp)
    say("rendering")
    return _write_all(Path(out_dir), images[0] * 0.5 + 0.5, model.cfg.patch_size, grid,
                      layers, heads, queries, attention, similarity,
                      dict(weights=str(weights), image=str(image_path)))


def _write_all(out: Path, image: torch.Tensor, patch: int, grid: tuple[int, int],
               layers: list[int], heads: list[int], queries: list[int], attention: torch.Tensor,
               similarity: torch.Tensor, source: dict) -> list[Path]:
    """The PNGs, the sheet and index.json; `image` is (3, S, S) in [0, 1]."""
    out.mkdir(parents=True, exist_ok=True)
    files: list[dict] = []

    def add(path: Path, **what) -> None:
        files.append({"path": path.name, **what})

    for qi, query in enumerate(queries):
        add(render_map(out / f"q{query:04d}_similarity.png", image, similarity[qi], query, patch,
                       signed=True), kind="similarity", query=query)
        for li, layer in enumerate(layers):
            for hi, head in enumerate(heads):
                path = out / f"q{query:04d}_layer{layer:02d}_head{head:02d}.png"
                add(render_map(path, image, attention[li, hi, qi], query, patch),
                    kind="attention", query=query, layer=layer, head=head)
    sheet = render_sheet(out / "sheet.png", image, queries, similarity, attention.mean(dim=1),
                         layers, patch)
    add(sheet, kind="sheet")
    index = out / "index.json"
    index.write_text(json.dumps({**source, "grid": list(grid), "layers": layers, "heads": heads,
                                 "queries": queries, "files": files}, indent=1))
    return [out / f["path"] for f in files] + [index]
