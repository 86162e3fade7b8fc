"""Batches: `collate` (drops and counts unreadable images) and the DataLoaders built on it."""

from __future__ import annotations

import random
from functools import partial
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, default_collate

from nepa.data.config import DataConfig
from nepa.data.sampler import EvalSampler


def collate(batch: list[dict[str, Any] | None]) -> dict[str, Any]:
    """{"image": (B, C, H, W), "label": (B,), "index": (B,), "skipped": int}; None items are
    unreadable images: dropped and counted (B can be 0 when a whole micro-batch was bad)."""
    items = [item for item in batch if item is not None]
    if items:  # in a DataLoader worker, default_collate stacks straight into shared memory
        images = default_collate([item["image"] for item in items])  # (B, C, H, W)
    else:
        images = torch.empty(0)
    # label and index: two rows of one tensor, so a worker ships one shared-memory block
    ints = torch.tensor([[item["label"] for item in items], [item["index"] for item in items]],
                        dtype=torch.long).reshape(2, len(items))
    return {"image": images, "label": ints[0], "index": ints[1], "skipped": len(batch) - len(items)}


def _seed_worker(seed: int, worker_id: int) -> None:
    """Seed python and numpy in each worker from torch's per-worker seed (itself seeded)."""
    import numpy as np

    worker_seed = (torch.initial_seed() + seed) % 2**32
    random.seed(worker_seed)
    np.random.seed(worker_seed)


def _loader(cfg: DataConfig, dataset: Dataset, batch_size: int, seed: int,
            sampler: Sampler | None) -> DataLoader:
    workers = cfg.num_workers
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False,
                      collate_fn=collate, num_workers=workers, drop_last=False,
                      worker_init_fn=partial(_seed_worker, seed),
                      generator=torch.Generator().manual_seed(seed),
                      persistent_workers=workers > 0,
                      pin_memory=torch.cuda.is_available())


def build_train_loader(cfg: DataConfig, dataset: Dataset, sampler: Sampler | None,
                       micro_batch: int, seed: int) -> DataLoader:
    """Micro-batches of `sampler`'s indices (a ResumableSampler), or of a ShardStream (then
    `sampler` is None: the stream splits the data itself)."""
    if isinstance(dataset, IterableDataset) and sampler is not None:
        raise ValueError("an iterable dataset (wds stream) takes no sampler; pass sampler=None")
    return _loader(cfg, dataset, micro_batch, seed, sampler)


def build_eval_loader(cfg: DataConfig, dataset: Dataset, batch_size: int, *, rank: int = 0,
                      world_size: int = 1) -> DataLoader:
    """Every image of `dataset` exactly once across ranks (EvalSampler; a ShardDataset is
    split the same way), in order within a rank."""
    if isinstance(dataset, IterableDataset):
        dataset = dataset.shard(rank, world_size)  # ShardDataset
        return _loader(cfg, dataset, batch_size, 0, None)
    return _loader(cfg, dataset, batch_size, 0,
                   EvalSampler(len(dataset), rank=rank, world_size=world_size))
