"""Classifier validation: exact top-1/top-5 counts, each image once across ranks, the
ImageNet-val entry point on real digits, helpful errors."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from nepa import checkpoint
from nepa.config import ConfigError
from nepa.data.config import DataConfig
from nepa.evals.classify import (
    NotAClassifier,
    count_correct,
    eval_loader,
    evaluate_classifier,
    run_imagenet_val,
)
from nepa.evals.common import EvalControl
from nepa.evals.config import ClassifyConfig
from nepa.model import build_model
from nepa.train.distributed import DistEnv

CLASSES = 10


class Ranked(Dataset):
    """Item i has label i % 10; its image tells the oracle to rank the true class at i % 7."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        image = torch.tensor([float(i % CLASSES), float(i % 7)])
        return {"image": image, "label": i % CLASSES, "index": i}


class Oracle(nn.Module):
    """Logits that put the true class at the rank written in the image."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))  # gives the model a device

    def forward(self, x):
        label, rank = x[:, 0].long(), x[:, 1].long()
        logits = torch.zeros(len(x), CLASSES)
        for row, (y, r) in enumerate(zip(label.tolist(), rank.tolist())):
            others = [c for c in range(CLASSES) if c != y]
            order = others[:r] + [y] + others[r:]
            logits[row, order] = torch.arange(CLASSES, 0, -1, dtype=torch.float)
        return logits


def _expected(n: int) -> tuple[float, float]:
    top1 = sum(i % 7 == 0 for i in range(n))
    top5 = sum(i % 7 < 5 for i in range(n))
    return 100.0 * top1 / n, 100.0 * top5 / n


def test_top1_top5_are_exact_and_every_image_counted_once():
    result = evaluate_classifier(Oracle(), Ranked(103), batch_size=16)
    top1, top5 = _expected(103)
    assert result == {"top1": pytest.approx(top1), "top5": pytest.approx(top5), "images": 103}
    assert result["top5"] > result["top1"] > 0


def test_rank_shards_cover_every_image_exactly_once():
    dataset, world = Ranked(103), 3
    totals, indices = torch.zeros(3, dtype=torch.long), []
    for rank in range(world):
        env = DistEnv(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
        loader = eval_loader(dataset, batch_size=8, env=env)
        indices += [i for batch in loader for i in batch["index"].tolist()]
        totals += count_correct({"m": Oracle()}, loader, device=torch.device("cpu"))["m"]
    assert sorted(indices) == list(range(103))
    full = count_correct({"m": Oracle()}, eval_loader(dataset, batch_size=8), device=torch.device("cpu"))
    assert totals.tolist() == full["m"].tolist() == [15, 75, 103]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    env = DistEnv(rank=rank, local_rank=rank, world_size=world, device=torch.device("cpu"))
    result = evaluate_classifier(Oracle(), Ranked(103), batch_size=8, env=env)
    torch.save(result, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_two_process_gloo_evaluation_counts_each_image_once(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # fork: the children need no fresh import of torch (spawn costs ~30 s on a loaded 2-core box)
    mp.start_processes(_worker, args=(2, port, str(tmp_path / "r")), nprocs=2, join=True,
                       start_method="fork")
    top1, top5 = _expected(103)
    for rank in range(2):
        result = torch.load(tmp_path / f"r.{rank}", weights_only=True)
        assert result == {"top1": pytest.approx(top1), "top5": pytest.approx(top5), "images": 103}


def test_stop_request_interrupts_a_single_process_evaluation():
    asked = []
    result = evaluate_classifier(Oracle(), Ranked(40), batch_size=8,
                                 should_stop=lambda: asked.append(1) or len(asked) > 2)
    assert result is None and len(asked) == 3


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    model = build_model("tiny", depth=1, num_classes=CLASSES, labels=tuple("0123456789"))
    # An EMA that always answers class 3 (zero head weights, bias one-hot): its top-1 is the share
    # of 3s in val, which the raw weights do not give; so a result shows which weights were used.
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    ema["head.weight"].zero_()
    ema["head.bias"].zero_()
    ema["head.bias"][3] = 10.0
    checkpoint.save(root / "cls.pt", checkpoint.model_payload(model.cfg, model.state_dict()))
    checkpoint.save(root / "cls_ema.pt", checkpoint.model_payload(model.cfg, model.state_dict(), ema=ema))
    pre = build_model("tiny", depth=1)
    checkpoint.save(root / "pre.pt", checkpoint.model_payload(pre.cfg, pre.state_dict()))
    return root, model


def test_run_imagenet_val_on_real_digits(classifier_files, tmp_path):
    root, model = classifier_files
    data = DataConfig(num_workers=0)
    outcome = run_imagenet_val(root / "cls.pt", ClassifyConfig(batch_size=128), data, tmp_path,
                               control=EvalControl())
    assert outcome.status == "COMPLETED" and outcome.step == outcome.total_steps == 1
    metrics = {m.name: m for m in outcome.metrics}
    assert set(metrics) == {"top1", "top5"}
    assert all(m.weights == "frozen" and m.split == "val" for m in outcome.metrics)
    assert metrics["top1"].detail["images"] == 300  # the whole fixed val split, once
    from nepa.data import build_dataset, eval_transform

    direct = evaluate_classifier(model.eval(), build_dataset(data, "val", eval_transform(32)),
                                 batch_size=300)
    assert metrics["top1"].value == pytest.approx(direct["top1"])
    assert metrics["top5"].value == pytest.approx(direct["top5"]) and direct["top5"] >= direct["top1"]

    ema = run_imagenet_val(root / "cls_ema.pt", ClassifyConfig(crop_pct=0.95, squash=True), data,
                           tmp_path, control=EvalControl())
    assert {m.weights for m in ema.metrics} == {"ema"}
    threes = sum(1 for label in build_dataset(data, "val", None).labels if label == 3)
    ema_top1 = next(m for m in ema.metrics if m.name == "top1")
    assert ema_top1.detail["squash"] is True
    assert ema_top1.value == pytest.approx(100 * threes / 300)  # the EMA weights, not the raw ones
    assert metrics["top1"].value != pytest.approx(ema_top1.value)


def test_pretraining_weights_are_refused_with_the_fix(classifier_files, tmp_path):
    root, _ = classifier_files
    with pytest.raises(NotAClassifier, match="pretraining model without a classifier head; fine-tune it"):
        run_imagenet_val(root / "pre.pt", ClassifyConfig(), DataConfig(num_workers=0), tmp_path,
                         control=EvalControl())


def test_a_stop_before_the_first_batch_returns_stopped(classifier_files, tmp_path):
    root, _ = classifier_files
    control = EvalControl()
    control.request_stop("preempted")
    outcome = run_imagenet_val(root / "cls.pt", ClassifyConfig(), DataConfig(num_workers=0), tmp_path,
                               control=control)
    assert outcome.status == "STOPPED" and outcome.metrics == ()


def test_config_checks_name_the_field():
    with pytest.raises(ConfigError, match=r"classify\.crop_pct"):
        ClassifyConfig(crop_pct=0.0)
    with pytest.raises(ConfigError, match=r"classify\.batch_size"):
        ClassifyConfig(batch_size=0)
