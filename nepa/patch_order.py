"""Autoregressive orders of the patch grid, as pure functions of (Hp, Wp).

An order is a permutation `order` of range(Hp * Wp): sequence position k holds the patch
whose row-major (raster) index is `order[k]`. Only the order in which the causal model reads
the patches changes; each patch keeps its 2-D position (its RoPE coordinates).

- raster: row by row, the release's order (the identity).
- hilbert: the generalized Hilbert curve ("gilbert", J. Červený) on the Hp x Wp rectangle
  itself, so non-power-of-two grids need no padding; consecutive patches are grid neighbours
  (one diagonal step is unavoidable only when the longer side is even and the shorter odd).
- spiral: clockwise from the top-left corner inwards.
- random: one fixed permutation drawn from `seed` (Python's Mersenne Twister, independent
  of torch's RNG state and version).
"""

from __future__ import annotations

import random as _random
from collections.abc import Iterator
from typing import Literal

PatchOrder = Literal["raster", "hilbert", "spiral", "random"]
ORDERS: tuple[str, ...] = ("raster", "hilbert", "spiral", "random")


def raster(hp: int, wp: int) -> list[int]:
    return list(range(hp * wp))


def _sign(v: int) -> int:
    return (v > 0) - (v < 0)


def _gilbert(x: int, y: int, ax: int, ay: int, bx: int, by: int) -> Iterator[tuple[int, int]]:
    """(x, y) cells of the rectangle spanned from (x, y) by the major axis a and minor axis b."""
    w, h = abs(ax + ay), abs(bx + by)
    dax, day, dbx, dby = _sign(ax), _sign(ay), _sign(bx), _sign(by)
    if h == 1:  # a single row along a
        for i in range(w):
            yield x + i * dax, y + i * day
        return
    if w == 1:  # a single column along b
        for i in range(h):
            yield x + i * dbx, y + i * dby
        return
    ax2, ay2, bx2, by2 = ax // 2, ay // 2, bx // 2, by // 2
    w2, h2 = abs(ax2 + ay2), abs(bx2 + by2)
    if 2 * w > 3 * h:  # long rectangle: two halves along a
        if w2 % 2 and w > 2:  # prefer even halves
            ax2, ay2 = ax2 + dax, ay2 + day
        yield from _gilbert(x, y, ax2, ay2, bx, by)
        yield from _gilbert(x + ax2, y + ay2, ax - ax2, ay - ay2, bx, by)
        return
    if h2 % 2 and h > 2:
        bx2, by2 = bx2 + dbx, by2 + dby
    # up along b, across along a, back down along -b
    yield from _gilbert(x, y, bx2, by2, ax2, ay2)
    yield from _gilbert(x + bx2, y + by2, ax, ay, bx - bx2, by - by2)
    yield from _gilbert(x + (ax - dax) + (bx2 - dbx), y + (ay - day) + (by2 - dby),
                        -bx2, -by2, -(ax - ax2), -(ay - ay2))


def hilbert(hp: int, wp: int) -> list[int]:
    """Generalized Hilbert curve from the top-left patch, along the longer side first."""
    cells = _gilbert(0, 0, wp, 0, 0, hp) if wp >= hp else _gilbert(0, 0, 0, hp, wp, 0)
    return [y * wp + x for x, y in cells]


def spiral(hp: int, wp: int) -> list[int]:
    """Clockwise from the top-left corner: top row, right column, bottom row, left column, in."""
    top, bottom, left, right = 0, hp - 1, 0, wp - 1
    out: list[int] = []
    while top <= bottom and left <= right:
        out += [top * wp + j for j in range(left, right + 1)]
        out += [i * wp + right for i in range(top + 1, bottom + 1)]
        if top < bottom:
            out += [bottom * wp + j for j in range(right - 1, left - 1, -1)]
        if left < right:
            out += [i * wp + left for i in range(bottom - 1, top, -1)]
        top, bottom, left, right = top + 1, bottom - 1, left + 1, right - 1
    return out


def random_order(hp: int, wp: int, seed: int = 0) -> list[int]:
    order = list(range(hp * wp))
    _random.Random(seed).shuffle(order)
    return order


def patch_order(name: str, hp: int, wp: int, seed: int = 0) -> list[int]:
    """The permutation for order `name` on an Hp x Wp grid: position k reads patch order[k]."""
    if name == "raster":
        return raster(hp, wp)
    if name == "hilbert":
        return hilbert(hp, wp)
    if name == "spiral":
        return spiral(hp, wp)
    if name == "random":
        return random_order(hp, wp, seed)
    raise ValueError(f"unknown patch order '{name}'; orders: {', '.join(ORDERS)}")


def inverse(order: list[int]) -> list[int]:
    """The permutation that maps sequence positions back to raster order."""
    out = [0] * len(order)
    for position, patch in enumerate(order):
        out[patch] = position
    return out
