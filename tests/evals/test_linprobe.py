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
                        lambda model, train, val, cfg, num_workers=0: calls.update(workers=num_workers) or [])
    outcome = linprobe.run_linprobe("w", LinProbeConfig(), DataConfig(source="digits", num_workers=6),
                                    "work", control=EvalControl())
    assert outcome.status == "COMPLETED"
    assert calls == {"device": torch.device("cuda"), "workers": 6}
