"""ResumableSampler: global steps independent of the world size, exact resume; EvalSampler."""

from __future__ import annotations

import pytest
import torch

from nepa.config import ConfigError
from nepa.data import EvalSampler, ResumableSampler, build_train_loader, collate
from nepa.data.config import DataConfig
from nepa.data.sampler import epoch_permutation


def _steps(num_samples, *, world_size, micro_batch, global_batch=12, seed=5, epoch=0,
           start_step=0) -> list[set[int]]:
    """Per global step: the set of indices all ranks take together."""
    samplers = [ResumableSampler(num_samples, global_batch=global_batch, micro_batch=micro_batch,
                                 rank=r, world_size=world_size, seed=seed)
                for r in range(world_size)]
    per_rank = []
    for sampler in samplers:
        sampler.set_epoch(epoch, start_step)
        indices = list(sampler)
        assert len(indices) == len(sampler)
        per_step = global_batch // world_size
        per_rank.append([indices[i:i + per_step] for i in range(0, len(indices), per_step)])
    return [set().union(*step) for step in zip(*per_rank, strict=True)]


def test_global_steps_do_not_depend_on_world_size():
    one = _steps(50, world_size=1, micro_batch=3)  # accumulation 4
    two = _steps(50, world_size=2, micro_batch=3)  # accumulation 2
    four = _steps(50, world_size=4, micro_batch=3)  # accumulation 1
    assert len(one) == 4 and one == two == four
    assert all(len(step) == 12 for step in one)
    perm = epoch_permutation(50, 5, 0).tolist()
    assert one[1] == set(perm[12:24])  # step s = positions [s*G, (s+1)*G)


def test_rank_micro_step_layout():
    sampler = ResumableSampler(24, global_batch=12, micro_batch=2, rank=1, world_size=2, seed=0,
                               shuffle=False)
    # step 0: micro-step a of rank 1 = positions (a*2 + 1)*2 + [0, 2)
    assert list(sampler)[:6] == [2, 3, 6, 7, 10, 11]
    assert sampler.steps_per_epoch == 2 and len(sampler) == 12


def test_resume_mid_epoch_repeats_and_skips_nothing():
    full = _steps(61, world_size=2, micro_batch=2, global_batch=8)  # 7 steps, tail 5 dropped
    first = full[:3]
    resumed = _steps(61, world_size=1, micro_batch=4, global_batch=8, start_step=3)
    assert first + resumed == full
    seen = [i for step in first + resumed for i in step]
    assert len(seen) == len(set(seen)) == 56


def test_epochs_differ_and_repeat_per_seed():
    a = _steps(40, world_size=1, micro_batch=4, epoch=0)
    assert a == _steps(40, world_size=1, micro_batch=4, epoch=0)
    assert a != _steps(40, world_size=1, micro_batch=4, epoch=1)
    assert a != _steps(40, world_size=1, micro_batch=4, epoch=0, seed=6)


def test_state_dict_round_trip():
    sampler = ResumableSampler(100, global_batch=10, micro_batch=5, rank=0, world_size=1, seed=1)
    assert sampler.position(23) == {"epoch": 2, "step_in_epoch": 3}
    sampler.load_state_dict(sampler.position(23))
    assert sampler.state_dict() == {"epoch": 2, "step_in_epoch": 3}
    assert all(isinstance(v, int) for v in sampler.state_dict().values())
    assert len(sampler) == 70


def test_indivisible_batch_is_an_error():
    with pytest.raises(ConfigError, match="global batch 12 is not divisible by world size 5 x "
                                          "micro batch 2"):
        ResumableSampler(100, global_batch=12, micro_batch=2, rank=0, world_size=5, seed=0)


@pytest.mark.parametrize("num_samples,world_size", [(50_000, 3), (50_000, 7), (10, 4), (3, 5)])
def test_eval_sampler_counts_every_index_once(num_samples, world_size):
    parts = [list(EvalSampler(num_samples, rank=r, world_size=world_size))
             for r in range(world_size)]
    assert sorted(i for part in parts for i in part) == list(range(num_samples))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(part == sorted(part) for part in parts)


class _Ids(torch.utils.data.Dataset):
    def __len__(self):
        return 48

    def __getitem__(self, index):
        return {"image": torch.full((1, 2, 2), float(index)), "label": index % 3, "index": index}


def test_train_loader_batches_are_the_micro_steps():
    """Two workers, two simulated ranks: each batch is one micro-step, in order."""
    cfg = DataConfig(num_workers=2)
    for rank in range(2):
        sampler = ResumableSampler(48, global_batch=16, micro_batch=4, rank=rank, world_size=2,
                                   seed=3)
        sampler.set_epoch(1, start_step=1)
        loader = build_train_loader(cfg, _Ids(), sampler, 4, seed=3)
        batches = list(loader)
        want = list(sampler)
        assert [b["index"].tolist() for b in batches] == [want[i:i + 4]
                                                          for i in range(0, len(want), 4)]
        assert all(b["skipped"] == 0 for b in batches)
        assert loader.collate_fn is collate and loader.persistent_workers
