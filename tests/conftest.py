"""Shared fixtures: golden release models, fixed seeds, small thread counts for 2-core CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
GOLDEN_VARIANTS = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(params=GOLDEN_VARIANTS)
def golden_dir(request) -> Path:
    return GOLDEN / request.param
