"""Which sample goes where: a resumable training sampler whose global batches do not depend
on the world size, an exact evaluation sharder, and the seeding helpers both rely on."""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

from nepa.config import ConfigError
from nepa.data.config import accumulation


def mix_seed(*parts: object) -> int:
    """A 31-bit seed from any parts, e.g. (seed, epoch, index); stable across versions."""
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample in one epoch (what it is, not where it runs)."""
    return mix_seed(seed, epoch, index)


RNG_SOURCES = ("torch", "random", "numpy")


def rng_sources(transform: object) -> tuple[str, ...]:
    """The generators `transform` draws from: its `rng_sources` attribute when it declares one
    (nepa's pretraining transform: torch only), else all three."""
    return tuple(getattr(transform, "rng_sources", RNG_SOURCES))


@contextlib.contextmanager
def seeded(seed: int, restore: bool | None = None,
           sources: tuple[str, ...] = RNG_SOURCES) -> Iterator[None]:
    """Seed torch's CPU generator, random and numpy (or only `sources`) for the block, then
    restore their states.

    restore=None restores except in DataLoader workers, where every item is seeded anyway
    (saving numpy's state alone costs ~85 us, a fifth of a small image's decode). Only the
    CPU generator is seeded: `torch.manual_seed` also queues lazy CUDA/XPU/MTIA seeding,
    capturing a stack trace each time. Seeding random and numpy costs ~10 us per item, 3 % of
    a small image: `sources` skips them for transforms that never draw from them.
    """
    import numpy as np

    if restore is None:
        restore = torch.utils.data.get_worker_info() is None
    generator = torch.default_generator
    use_torch, use_random, use_numpy = (name in sources for name in RNG_SOURCES)
    states = (generator.get_state() if use_torch else None,
              random.getstate() if use_random else None,
              np.random.get_state() if use_numpy else None) if restore else None
    if use_torch:
        generator.manual_seed(seed)
    if use_random:
        random.seed(seed)
    if use_numpy:
        np.random.seed(seed)
    try:
        yield
    finally:
        if states is not None:
            if use_torch:
                generator.set_state(states[0])
            if use_random:
                random.setstate(states[1])
            if use_numpy:
                np.random.set_state(states[2])


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The sample order of one epoch: a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(mix_seed(seed, epoch))
    return torch.randperm(num_samples, generator=generator)


class ResumableSampler(Sampler[int]):
    """This rank's sample indices, micro-batch by micro-batch, for training.

    Epoch e uses `perm = epoch_permutation(num_samples, seed, e)` (arange without shuffle).
    Global step s takes positions [s*G, (s+1)*G) of perm, G = global_batch; rank r's
    micro-step a (of A = G // (world_size * micro_batch)) gets positions
    s*G + (a*world_size + r)*micro_batch + [0, micro_batch). So the samples of each global
    step do not depend on the world size, and a resume with more or fewer processes continues
    the same order. The tail (num_samples % G) is dropped each epoch.
    """

    def __init__(self, num_samples: int, *, global_batch: int, micro_batch: int, rank: int,
                 world_size: int, seed: int, shuffle: bool = True):
        self.accumulation = accumulation(global_batch, micro_batch, world_size)
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.global_batch, self.micro_batch = global_batch, micro_batch
        self.rank, self.world_size = rank, world_size
        self.epoch, self.start_step = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Iterate epoch `epoch` from global step `start_step` (steps already done, on resume)."""
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
        self.epoch, self.start_step = epoch, start_step

    def position(self, global_step: int) -> dict[str, int]:
        """The resume position after `global_step` completed steps (what a checkpoint saves)."""
        epoch, in_epoch = divmod(global_step, max(1, self.steps_per_epoch))
        return {"epoch": epoch, "step_in_epoch": in_epoch}

    def state_dict(self) -> dict[str, int]:
        """The position given to the last `set_epoch` (the engine saves `position(step)`)."""
        return {"epoch": self.epoch, "step_in_epoch": self.start_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(int(state["epoch"]), int(state["step_in_epoch"]))

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            order = epoch_permutation(self.num_samples, self.seed, self.epoch)
        else:
            order = torch.arange(self.num_samples)
        steps = order[: self.steps_per_epoch * self.global_batch].view(
            self.steps_per_epoch, self.accumulation, self.world_size, self.micro_batch)
        # (steps, A, world_size, micro): position s*G + (a*world_size + r)*micro + i
        mine = steps[self.start_step:, :, self.rank]  # (steps left, A, micro)
        return iter(mine.reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulation * self.micro_batch


class EvalSampler(Sampler[int]):
    """Contiguous, unpadded shards: every index exactly once across ranks (sizes differ by
    at most one), so a distributed evaluation counts each image once."""

    def __init__(self, num_samples: int, *, rank: int, world_size: int):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is outside world size {world_size}")
        self.start = rank * num_samples // world_size
        self.stop = (rank + 1) * num_samples // world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.stop - self.start


class EpochTagged(Sampler):
    """Yields (epoch, index) so each item's augmentation can be seeded by what it is."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.epoch = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.epoch
        return ((epoch, i) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededItems(Dataset):
    """Augmentation randomness as a pure function of (seed, epoch, index).

    Resume, worker count and world size then cannot change what an image looks like.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed
        self.sources = rng_sources(getattr(dataset, "transform", None))

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        with seeded(item_seed(self.seed, epoch, index), sources=self.sources):
            return self.dataset[index]
