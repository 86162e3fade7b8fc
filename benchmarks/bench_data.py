"""Decode + augment throughput per DataLoader worker: torchvision ImageFolder vs nepa's
webdataset shards, on the same images.

Generates JPEGs at ImageNet-like sizes (~500x375, crops of scikit-learn's sample photos with
random content mixed in), packs them with nepa's packer, then times full epochs of
  * torchvision.datasets.ImageFolder + DataLoader(shuffle=True)
  * nepa ShardStream (shuffle buffer, per-sample seeded augmentation) + build_train_loader
with the same pretraining transform (RandomResizedCrop 224, flip, normalise), the same batch
size and worker count, persistent workers, after one warm-up epoch each. The two alternate
within one process (order swapped every repeat), so a busy shared machine slows both alike.
A second case uses many small files (64x48 JPEGs, 32-pixel crops), where per-file costs show.

Page cache: "warm" times epochs over files already in memory (a dataset that fits in RAM,
read before); "cold" drops every file of both loaders from the page cache before each epoch
(posix_fadvise DONTNEED, no root needed), so each epoch reads from the disk, as with a
dataset larger than memory or on first read from a network filesystem.

    .venv/bin/python benchmarks/bench_data.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from nepa.data import (
    DataConfig,
    build_train_loader,
    build_train_stream,
    item_seed,
    pretrain_transform,
    seeded,
)
from nepa.data.pack import pack_shards

BATCH = 20


def make_images(root: Path, count: int, size: tuple[int, int], classes: int = 10) -> None:
    """`count` JPEGs (quality 90) in root/train/<class>/ (and a small val split)."""
    from sklearn.datasets import load_sample_images

    photos = [np.asarray(p) for p in load_sample_images().images]  # 2 x (427, 640, 3)
    rng = np.random.default_rng(0)
    width, height = size
    for split, n in (("train", count), ("val", classes)):
        for i in range(n):
            photo = photos[i % len(photos)]
            scale = rng.uniform(0.5, 1.0)
            h, w = int(photo.shape[0] * scale), int(photo.shape[1] * scale)
            y, x = rng.integers(0, photo.shape[0] - h + 1), rng.integers(0, photo.shape[1] - w + 1)
            crop = Image.fromarray(photo[y:y + h, x:x + w]).resize((width, height), Image.BILINEAR)
            pixels = np.asarray(crop).astype(np.int16)
            noise = rng.integers(-40, 41, (-(-height // 8), -(-width // 8), 3))  # blocky content
            pixels += np.kron(noise, np.ones((8, 8, 1), dtype=np.int64))[:height, :width]
            directory = root / split / f"c{i % classes:02d}"
            directory.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
                directory / f"{i:05d}.jpg", quality=90)


class SeededFolder(torch.utils.data.Dataset):
    """ImageFolder with each sample's augmentation seeded by (seed, epoch, index), as nepa's
    engine reads map-style data (and as the shard stream does internally)."""

    def __init__(self, folder: ImageFolder):
        self.folder, self.epoch = folder, 0

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int):
        with seeded(item_seed(0, self.epoch, index)):
            return self.folder[index]


def evict(paths: list[Path]) -> None:
    """Drop the files' pages from the page cache (they are clean: written and synced once)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def loaders(root: Path, shards: Path, image_size: int, workers: int) -> dict:
    """name -> (loader, object whose set_epoch starts an epoch, or None)."""
    cfg = DataConfig(source="wds", path=str(shards), image_size=image_size, num_workers=workers,
                     shuffle_buffer=100)
    transform = pretrain_transform(cfg)

    def plain(dataset):
        return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers,
                          persistent_workers=workers > 0,
                          generator=torch.Generator().manual_seed(0))

    stream = build_train_stream(cfg, "train", transform, global_batch=BATCH, micro_batch=BATCH,
                                rank=0, world_size=1, seed=0)
    return {"ImageFolder": (plain(ImageFolder(str(root / "train"), transform=transform)), None),
            "ImageFolder, seeded per sample": (
                plain(SeededFolder(ImageFolder(str(root / "train"), transform=transform))), None),
            "nepa shards": (build_train_loader(cfg, stream, None, BATCH, seed=0), stream)}


def cpu_seconds(loader) -> float:
    """CPU time of this process and the loader's (persistent) workers so far."""
    import psutil

    pids = [os.getpid()] + [w.pid for w in getattr(loader._iterator, "_workers", [])]
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def epoch(loader, stream=None, number: int = 0, cold: list[Path] = ()) -> tuple[int, float, float]:
    """(images, wall seconds, CPU seconds of the main process + workers) of one epoch;
    the files in `cold` are dropped from the page cache first."""
    if stream is not None:
        stream.set_epoch(number)
    evict(list(cold))
    iterator = iter(loader)  # persistent workers: already started, not counted
    cpu, start = cpu_seconds(loader), time.perf_counter()
    images = sum(len(batch["image"] if isinstance(batch, dict) else batch[0]) for batch in iterator)
    return images, time.perf_counter() - start, cpu_seconds(loader) - cpu


def measure(root: Path, shards: Path, image_size: int, workers: int, repeats: int,
            cold: bool) -> dict[str, dict[str, list[float]]]:
    """name -> {"wall": images/s per worker, "cpu": images per CPU-second} per repeat."""
    runs = loaders(root, shards, image_size, workers)
    for loader, stream in runs.values():
        epoch(loader, stream)  # warm-up: workers up, page cache warm
    files = sorted((root / "train").rglob("*.jpg")) + sorted(shards.glob("*.tar")) if cold else []
    rates = {name: {"wall": [], "cpu": []} for name in runs}
    for r in range(repeats):
        names = list(runs) if r % 2 == 0 else list(runs)[::-1]  # alternate the order
        for name in names:
            images, seconds, cpu = epoch(*runs[name], r + 1, cold=files)
            rates[name]["wall"].append(images / seconds / workers)
            rates[name]["cpu"].append(images / cpu)
    return rates


def spread(values: list[float], digits: int = 0) -> str:
    return (f"{statistics.median(values):.{digits}f} "
            f"({min(values):.{digits}f}-{max(values):.{digits}f})")


def rows(case: str, cache: str, workers: int, rates: dict[str, dict[str, list[float]]]
         ) -> list[str]:
    base = rates["ImageFolder"]
    lines = []
    for name, r in rates.items():
        cells = [case, cache, str(workers), name]
        for kind in ("wall", "cpu"):
            ratios = [b / a for a, b in zip(base[kind], r[kind], strict=True)]  # paired repeats
            cells += [spread(r[kind]), spread(ratios, 2) if r is not base else "1"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=400, help="ImageNet-sized images")
    parser.add_argument("--small", type=int, default=4000, help="small images (many-files case)")
    parser.add_argument("--cache", nargs="+", choices=["warm", "cold"], default=["warm", "cold"],
                        help="page-cache state of the files at the start of each epoch")
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = [("ImageNet-like ~500x375 JPEG, 224 crops", args.images, (500, 375), 224),
             ("many small files, 64x48 JPEG, 32 crops", args.small, (64, 48), 32)]
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (case, count, size, crop) in enumerate(cases):
            root, shards = Path(tmp) / f"folder{k}", Path(tmp) / f"shards{k}"
            make_images(root, count, size)
            pack_shards(str(root), shards, shard_size=100)
            os.sync()  # clean pages, so that eviction can drop them
            kib = sum(p.stat().st_size for p in (root / "train").rglob("*.jpg")) / count / 1024
            for cache in args.cache:
                for workers in args.workers:
                    rates = measure(root, shards, crop, workers, args.repeats, cache == "cold")
                    lines += rows(f"{case} ({count} files, {kib:.0f} KiB)", cache, workers, rates)
    print(f"{args.repeats} repeats (epochs) each, batch {BATCH}, cores {os.cpu_count()}, "
          f"torch {torch.__version__}; median (min-max)")
    print("| case | page cache | workers | loader | img/s per worker | vs ImageFolder | "
          "img per CPU-s | vs ImageFolder (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
