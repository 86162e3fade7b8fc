"""Linear probe: hyper-parameters never see val; features and heads behave."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from nepa.evals.config import LinProbeConfig
from nepa.evals.linprobe import extract_features, linear_probe
from nepa.model import build_model


class Recording(Dataset):
    """Separable toy images; logs (phase, index) of every read into a shared list."""

    def __init__(self, name, n, log, offset=0):
        self.name, self.n, self.log, self.offset = name, n, log, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.log.append(self.name)
        label = (i + self.offset) % 2
        image = torch.full((3, 32, 32), -0.5 if label == 0 else 0.5)
        image += 0.05 * torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i + self.offset))
        return {"image": image, "label": label, "index": i}


def test_val_is_read_only_after_the_hyperparameters_are_chosen():
    log = []
    model = build_model("tiny", depth=1).eval()
    cfg = LinProbeConfig(blocks=(0,), lr_grid=(1e-2, 1e-1), epochs=20)
    results = linear_probe(model, Recording("train", 64, log), Recording("val", 32, log, 1000), cfg)
    first_val = log.index("val")
    assert set(log[:first_val]) == {"train"} and set(log[first_val:]) == {"val"}
    assert len(log) == 64 + 32  # each set read once: features are cached
    assert {r.feature for r in results} == {"mean", "last", "block0"}
    assert all(r.top1 >= 90.0 for r in results if r.feature != "last")  # separable by brightness
    assert all(r.lr in (1e-2, 1e-1) for r in results)


def test_features_are_the_final_normalised_tokens():
    model = build_model("tiny", depth=2).eval()
    log = []
    feats, labels = extract_features(model, Recording("x", 8, log), LinProbeConfig(blocks=(0,)))
    images = torch.stack([Recording("y", 8, [])[i]["image"] for i in range(8)])
    with torch.no_grad():
        final = model.forward_features(images)
    assert torch.allclose(feats["mean"], final[:, 1:].mean(dim=1), atol=1e-5)
    assert torch.allclose(feats["last"], final[:, -1], atol=1e-5)
    assert feats["block0"].shape == (8, 128) and labels.tolist() == [0, 1] * 4
