"""Linear probes (fast and MAE protocols): hyper-parameters never see val; features,
heads, LARS and the MAE schedule behave."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import Dataset

from nepa.evals.config import LinProbeConfig
from nepa.evals.lars import LARS
from nepa.evals.linprobe import extract_features, linear_probe, mae_lr
from nepa.model import build_model


class Recording(Dataset):
    """Separable toy images; logs (phase, index) of every read into a shared list."""

    classes = ("dark", "bright")

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
    cfg = LinProbeConfig(protocol="fast", blocks=(0,), lr_grid=(1e-2, 1e-1), epochs=20)
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


def test_mae_protocol_trains_bn_linear_heads_with_lars_before_reading_val():
    log = []
    torch.manual_seed(0)
    model = build_model("tiny", depth=1).eval()
    # 8 steps: a larger trust ratio than MAE's 0.001 (tens of thousands of steps) to move at all.
    cfg = LinProbeConfig(blocks=(0,), epochs=4, warmup_epochs=1, global_batch=32, batch_size=12, blr=8.0,
                         trust_coefficient=0.01)
    assert cfg.protocol == "mae" and cfg.name == "MAE linear probe (LARS, BN)"
    reports = []
    results = linear_probe(model, Recording("train", 70, log), Recording("val", 32, log, 1000), cfg,
                           report=reports.append)
    first_val = log.index("val")
    assert set(log[:first_val]) == {"train"} and set(log[first_val:]) == {"val"}
    assert log.count("train") == 4 * 64  # 2 global batches of 32 per epoch, the rest dropped, 4 epochs
    assert [r["step"] for r in reports] == list(range(1, 9)) and reports[-1]["total"] == 8
    assert {r.feature for r in results} == {"mean", "last", "block0"}
    assert all(r.holdout_top1 is None and r.lr == 8.0 * 32 / 256 for r in results)
    assert all(r.top1 >= 90.0 for r in results if r.feature != "last")  # separable by brightness
    assert linear_probe(model, Recording("train", 70, []), Recording("val", 8, []), cfg, stop=lambda: True) is None


def test_mae_lr_warms_up_linearly_then_follows_a_cosine_to_zero():
    cfg = LinProbeConfig()  # MAE: 90 epochs, 10 warm-up, blr 0.1 at 16384 -> lr 6.4
    assert cfg.epochs == 90 and cfg.peak_lr == pytest.approx(6.4)
    assert mae_lr(cfg, 0.0) == 0.0 and mae_lr(cfg, 5.0) == pytest.approx(3.2)
    assert mae_lr(cfg, 10.0) == pytest.approx(6.4) and mae_lr(cfg, 50.0) == pytest.approx(3.2)
    assert mae_lr(cfg, 90.0) == pytest.approx(0.0, abs=1e-12)
    assert LinProbeConfig(protocol="fast").epochs == 100


def test_lars_scales_matrix_updates_by_the_trust_ratio_and_leaves_vectors_plain():
    weight = torch.nn.Parameter(torch.full((2, 2), 3.0))
    bias = torch.nn.Parameter(torch.ones(2))
    weight.grad, bias.grad = torch.full((2, 2), 0.5), torch.full((2,), 0.5)
    LARS([weight, bias], lr=0.1, weight_decay=0.0, momentum=0.9, trust_coefficient=0.001).step()
    trust = 0.001 * 6.0 / 1.0  # |w| = 6, |g| = 1
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), 3.0 - 0.1 * trust * 0.5))
    torch.testing.assert_close(bias.detach(), torch.full((2,), 1.0 - 0.1 * 0.5))
    assert not math.isnan(weight.sum().item())


class _OnDevice(torch.nn.Module):
    """A model whose parameters live on `meta` (a GPU's stand-in): records where its inputs are,
    then computes on the CPU copy so that features come back."""

    def __init__(self, model):
        super().__init__()
        self.cpu_model, self.blocks, self.seen = model, model.blocks, []
        self.anchor = torch.nn.Parameter(torch.empty(1, device="meta"))

    def parameters(self, recurse=True):
        yield self.anchor

    def get_intermediate_layers(self, images, indices, norm):
        self.seen.append(images.device.type)
        return self.cpu_model.get_intermediate_layers(torch.zeros(images.shape), indices, norm=norm)


def test_features_are_extracted_on_the_model_device_with_loader_workers(monkeypatch):
    import nepa.evals.linprobe as linprobe

    loaders = []
    real = linprobe.DataLoader
    monkeypatch.setattr(linprobe, "DataLoader", lambda *a, **k: loaders.append(k) or real(*a, **k))
    model = _OnDevice(build_model("tiny", depth=1).eval())
    feats, labels = extract_features(model, Recording("x", 8, []), LinProbeConfig(batch_size=4),
                                     num_workers=1)
    assert model.seen == ["meta", "meta"]  # each batch moved to the model's device
    assert loaders[0]["num_workers"] == 1 and labels.tolist() == [0, 1] * 4
    assert {t.device.type for t in feats.values()} == {"cpu"} and feats["mean"].dtype == torch.float32


def test_the_probe_job_loads_the_model_on_the_gpu_and_reads_with_the_data_workers(monkeypatch):
    import nepa.data
    import nepa.evals.linprobe as linprobe
    import nepa.pretrained
    from nepa.data import DataConfig
    from nepa.evals.common import EvalControl

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = {}
    monkeypatch.setattr(nepa.pretrained, "load_pretrained",
                        lambda weights, ema=None, device="cpu": calls.setdefault("device", device))
    monkeypatch.setattr(nepa.data, "build_dataset", lambda data, split, transform: split)
    monkeypatch.setattr(linprobe, "linear_probe",
                        lambda model, train, val, cfg, num_workers=0, **_: calls.update(workers=num_workers) or [])
    outcome = linprobe.run_linprobe("w", LinProbeConfig(), DataConfig(source="digits", num_workers=6),
                                    "work", control=EvalControl())
    assert outcome.status == "COMPLETED"
    assert calls == {"device": torch.device("cuda"), "workers": 6}
