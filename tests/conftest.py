"""Shared fixtures: golden release models, fixed seeds, small thread counts for 2-core CI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden"
GOLDEN_VARIANTS = sorted(p.name for p in GOLDEN.iterdir() if p.is_dir())

os.environ.setdefault("OMP_NUM_THREADS", "2")


def pytest_addoption(parser):
    parser.addoption("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="train.precision of the ablation-findings tests, which pretrain for real; bf16 is "
                          "CPU autocast (its effect: benchmarks/README.md)")


@pytest.fixture(scope="session")
def train_precision(request) -> str:
    return request.config.getoption("--precision")


@pytest.fixture(autouse=True)
def _no_user_profile(tmp_path_factory, monkeypatch):
    """No test reads the real user's profile or data default (~/.config/nepactl, $NEPA_*)."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in ("NEPA_CLUSTER", "NEPA_DATA"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)
    yield


@pytest.fixture(params=GOLDEN_VARIANTS)
def golden_dir(request) -> Path:
    return GOLDEN / request.param
