"""The GPU path's contracts, checked on the CPU: device binding, DDP options, precision choice,
host transfers per step, and state that follows the model's device after a resume (the `meta`
device stands in for a GPU in placement checks)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from nepa.config import ConfigError
from nepa.model_config import model_config
from nepa.train import distributed, engine
from nepa.train.config import EMAConfig
from nepa.train.distributed import DistEnv, LaunchError, cuda_index
from nepa.train.ema import EMA
from nepa.train.engine import StepEngine

CPU = DistEnv(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))


@pytest.fixture
def fake_gpus(monkeypatch):
    """A CUDA machine with `count` visible GPUs of compute capability `capability`."""
    calls: dict = {"set_device": [], "init": []}

    def install(count: int, capability: tuple[int, int] = (9, 0)) -> dict:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "set_device", calls["set_device"].append)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100")
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # emulation counts
        monkeypatch.setattr(distributed.dist, "init_process_group",
                            lambda **kwargs: calls["init"].append(kwargs))
        return calls

    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield install
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32  # global switches


def test_cuda_index_serves_both_gpu_layouts():
    assert [cuda_index(r, 8) for r in (0, 3, 7)] == [0, 3, 7]  # every task sees the node's GPUs
    assert [cuda_index(r, 1) for r in (0, 3, 7)] == [0, 0, 0]  # --gpu-bind: one GPU per task
    with pytest.raises(LaunchError, match="local rank 5 but only 4 GPUs"):
        cuda_index(5, 4)


@pytest.mark.parametrize(("visible", "expected"), [(8, 3), (1, 0)])
def test_setup_binds_the_visible_gpu_and_gives_it_to_the_process_group(
        fake_gpus, monkeypatch, visible, expected):
    calls = fake_gpus(visible)
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("RANK", "11")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    monkeypatch.setenv("MASTER_PORT", "29500")
    env = distributed.setup(16, 60)
    assert env.device == torch.device("cuda", expected)
    assert calls["set_device"] == [torch.device("cuda", expected)]
    (init,) = calls["init"]
    assert init["backend"] == "nccl" and init["device_id"] == torch.device("cuda", expected)
    assert (init["rank"], init["world_size"]) == (11, 16)


def test_ddp_uses_the_bound_device_no_buffer_broadcast_and_bucket_view_gradients(monkeypatch):
    seen = {}
    monkeypatch.setattr(nn.parallel, "DistributedDataParallel",
                        lambda module, **kwargs: seen.update(kwargs) or module)
    env = DistEnv(rank=3, local_rank=3, world_size=8, device=torch.device("cuda", 0))
    engine.wrap_ddp(nn.Linear(2, 2), env)
    assert seen == {"device_ids": [torch.device("cuda", 0)], "broadcast_buffers": False,
                    "gradient_as_bucket_view": True}
    assert engine.wrap_ddp(nn.Linear(2, 2), CPU) is None


@pytest.mark.parametrize(("capability", "precision", "expected"), [
    ((9, 0), "auto", "bf16"), ((8, 0), "auto", "bf16"), ((7, 0), "auto", "fp32"),
    ((7, 5), "auto", "fp32"), ((7, 0), "fp32", "fp32"), ((7, 0), "bf16", "bf16")])
def test_auto_precision_is_bf16_only_where_bf16_is_native_and_fp32_uses_tf32(
        fake_gpus, capability, precision, expected, caplog):
    fake_gpus(1, capability)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the context is only built
        _, chosen = engine.autocast(precision, torch.device("cuda", 0))
    assert chosen == expected
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert ("emulates bf16" in caplog.text) == (precision == "bf16" and capability < (8, 0))


def test_cpu_precision_is_unchanged():
    assert engine.autocast("auto", torch.device("cpu"))[1] == "fp32"
    assert engine.autocast("bf16", torch.device("cpu"))[1] == "bf16"


def _step(clip_grad: float | None) -> tuple[StepEngine, dict]:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    eng = StepEngine(model, optimizer, CPU, accumulation=1, image_shape=(4,), clip_grad=clip_grad)
    batch = {"image": torch.randn(6, 4), "label": torch.randint(0, 3, (6,))}
    return eng, batch


def _ce(model):
    return lambda batch, micro: (nn.functional.cross_entropy(model(batch["image"]), batch["label"]), None)


def test_a_step_makes_one_host_transfer_and_without_clipping_only_measures(monkeypatch):
    eng, batch = _step(clip_grad=None)

    def forbidden(*args, **kwargs):
        raise AssertionError("gradients rescaled without clipping")

    monkeypatch.setattr(engine, "clip_grad_norm_", forbidden)
    items = []
    original = torch.Tensor.item
    monkeypatch.setattr(torch.Tensor, "item", lambda t: items.append(t) or original(t))
    expected = torch.cat([g.flatten() for g in torch.autograd.grad(
        _ce(eng.model)(batch, 0)[0], list(eng.model.parameters()))]).norm().item()
    items.clear()
    result = eng.step(iter([batch]), _ce(eng.model), step=0)
    assert items == []  # loss and norm come back together (.tolist()), no per-value sync
    assert result.grad_norm == pytest.approx(expected, rel=1e-5) and not result.skipped


def test_clipping_still_clips():
    eng, batch = _step(clip_grad=1e-3)
    before = [p.detach().clone() for p in eng.model.parameters()]
    eng.step(iter([batch]), _ce(eng.model), step=0)
    moved = torch.cat([(p - b).flatten() for p, b in zip(eng.model.parameters(), before)]).norm()
    assert moved.item() == pytest.approx(0.1 * 1e-3, rel=1e-3)  # lr x clipped norm


def test_ema_collects_the_model_tensors_once_and_tracks_in_place_updates(monkeypatch):
    model = nn.Linear(3, 3)
    ema = EMA(model, EMAConfig(decay=0.5, warmup_steps=1))
    calls = []
    original = nn.Module.state_dict
    monkeypatch.setattr(nn.Linear, "state_dict", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    for step in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)  # as the optimizer does: in place
        expected = {k: torch.lerp(v, model.state_dict()[k], 1 - ema.decay_at(step))
                    for k, v in ema.shadow.items()}
        calls.clear()
        ema.update(model, step)
        assert all(torch.allclose(ema.shadow[k], v) for k, v in expected.items())
        assert len(calls) == (1 if step == 0 else 0)  # collected at the first update only


@pytest.mark.filterwarnings("ignore:.*non-meta parameter:UserWarning")
def test_a_resumed_engine_keeps_model_optimizer_and_ema_state_on_the_model_device():
    """Checkpoints load on the CPU (fine-tune resume, pretraining rollback): the engine and the EMA
    must put everything on the model's device (`meta` stands in for CUDA)."""
    torch.manual_seed(0)
    cpu_model = nn.Linear(4, 3)
    cpu_opt = torch.optim.AdamW(cpu_model.parameters(), lr=0.1)
    cpu_model(torch.randn(2, 4)).sum().backward()
    cpu_opt.step()
    payload = {"model": cpu_model.state_dict(), "optimizer": cpu_opt.state_dict(),
               "ema": EMA(cpu_model, EMAConfig()).state_dict()}

    model = nn.Linear(4, 3, device="meta")
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    eng = StepEngine(model, optimizer, CPU, accumulation=1, image_shape=(4,))
    ema = EMA(model, EMAConfig())
    eng.load_state_dict(payload)
    ema.load_state_dict(payload["ema"])
    state = [t for s in optimizer.state.values() for k, t in s.items() if k != "step"]
    assert len(state) == 4  # exp_avg, exp_avg_sq of weight and bias
    assert {t.device.type for t in [*model.parameters(), *state, *ema.shadow.values()]} == {"meta"}


def test_a_mask_ratio_that_masks_no_patch_is_refused():
    """No masked patch leaves mask_token without a gradient, which DDP reports as an error."""
    with pytest.raises(ConfigError, match=r"model.mask_ratio: 0.005 masks no patch of 64"):
        model_config("tiny", mask_ratio=0.005)  # 32 px / 4 px: 64 patches
    assert model_config("tiny", mask_ratio=1 / 64).mask_ratio == 1 / 64
