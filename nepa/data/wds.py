"""webdataset tar shards: the index, exact sample-level splitting, resumable training streams.

A split is a list of shards with known sample counts (index.json, written by
`nepactl data pack` or `write_index`). Each epoch concatenates the split's shards in an order
drawn from (seed, epoch); sample *positions* 0..N-1 refer to that concatenation.

Training (`ShardStream`): the first steps_per_epoch * global_batch positions are cut into
contiguous ranges, one per reader (a DataLoader worker of a rank), sized exactly to the
micro-batches the DataLoader will ask that worker for. A reader reads its range sequentially
and mixes it through a shuffle buffer whose decisions depend only on (seed, epoch, reader),
never on the data, so a reader's output order can be recomputed without reading anything.

Resume guarantee (position = epoch + global steps done in it, saved in the checkpoint):
  * same world size, DataLoader worker count, micro and global batch: exact. The resumed
    run yields the very micro-batches, in the same order, that the uninterrupted run would
    have; samples already consumed are not decoded (and not even read when their shard's
    data can be skipped).
  * a different world size, worker count or micro batch (same global batch): the rest of the
    interrupted epoch covers exactly the samples not yet consumed, each once (nothing repeated,
    nothing skipped); their order is new. Later epochs follow the new geometry's order.
  * a different global batch, or shards/index changed since the save: refused (DataError).
Unlike the map-style sampler, the samples of a global step depend on the world size and the
worker count (each rank reads its own shards); what is exact is the coverage.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch.utils.data import IterableDataset, get_worker_info

from nepa.data.config import INDEX_FILE, DataConfig, DataError, SplitNotFound, accumulation
from nepa.data.images import decode_image
from nepa.data.sampler import item_seed, mix_seed, rng_sources, seeded
from nepa.data.tarfiles import iter_samples

log = logging.getLogger("nepa.data")
FORMAT = "nepa-wds/1"
SOURCE_INDEX_KEYS = "source-index"  # keys are the decimal index of the sample in its source
T = TypeVar("T")


# -- the index -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    url: str  # local path, file:, pipe: or http(s) URL; resolved against the index's directory
    count: int  # samples


@dataclass(frozen=True)
class SplitShards:
    name: str
    shards: tuple[Shard, ...]
    per_class: dict[str, int]  # may be empty when unknown

    @property
    def count(self) -> int:
        return sum(s.count for s in self.shards)


@dataclass(frozen=True)
class ShardIndex:
    path: Path  # the index.json
    classes: list[str]
    splits: dict[str, SplitShards]
    keys: str = ""  # SOURCE_INDEX_KEYS when sample keys are source indices

    def split(self, name: str, role: str = "train") -> SplitShards:
        if name not in self.splits:
            raise SplitNotFound(f"wds {role} split '{name}' not found in {self.path} (splits: "
                            f"{', '.join(self.splits) or 'none'}); set data.{role}_split")
        split = self.splits[name]
        if split.count == 0:
            raise DataError(f"wds {role} split '{name}' in {self.path} has no samples; "
                            "pack the data again or fix the index")
        return split


def _resolve(url: str, base: Path) -> str:
    if url.startswith(("pipe:", "file:")) or "://" in url or os.path.isabs(url):
        return url
    return str(base / url)


def index_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path / INDEX_FILE if path.suffix != ".json" else path


def read_index(path: str | os.PathLike) -> ShardIndex:
    """The index of a pack directory (or an index.json file)."""
    file = index_path(path)
    if not file.is_file():
        hint = ("an interrupted pack? delete it and pack again" if Path(path).is_dir()
                else "check data.path")
        raise DataError(f"wds index not found: {file} does not exist ({hint}); create shards with "
                        "`nepactl data pack SRC OUT`, or index existing shards with "
                        "nepa.data.wds.write_index")
    try:
        raw = json.loads(file.read_text())
        splits = {
            name: SplitShards(name, tuple(Shard(_resolve(s["url"], file.parent), int(s["count"]))
                                          for s in split["shards"]),
                              {str(k): int(v) for k, v in split.get("per_class", {}).items()})
            for name, split in raw["splits"].items()}
        return ShardIndex(file, [str(c) for c in raw.get("classes", [])], splits,
                          str(raw.get("keys", "")))
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"wds index {file} is malformed ({exc!r}); write it again with "
                        "`nepactl data pack` or nepa.data.wds.write_index") from None


def index_document(classes: Sequence[str], splits: dict[str, dict[str, Any]], *,
                   keys: str = "", source: str = "") -> dict[str, Any]:
    """The JSON document of index.json (splits: name -> {shards: [{url, count}], per_class})."""
    return {"format": FORMAT, "source": source, "keys": keys, "classes": list(classes),
            "splits": {name: {"count": sum(s["count"] for s in split["shards"]), **split}
                       for name, split in splits.items()}}


def write_index_file(out: str | os.PathLike, document: dict[str, Any]) -> Path:
    """out/index.json, atomically (temporary file, fsync, rename), readable as umask allows."""
    from nepa.rundir import atomic_write_path

    text = json.dumps(document, indent=1)

    def write(tmp: Path) -> None:
        tmp.write_text(text)
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o666 & ~umask)  # mkstemp made it 0600; others read the shards too

    return atomic_write_path(Path(out) / INDEX_FILE, write)


def write_index(out: str | os.PathLike, splits: dict[str, str | Sequence[str]],
                classes: Sequence[str] | None = None, label_key: str = "cls") -> Path:
    """Index existing shards: count samples (and labels) of every shard, write out/index.json.

    `splits` maps a split name to a brace pattern ("train-{000000..000146}.tar"), a pipe:
    URL or a list of those; relative paths are relative to `out`. Every shard is read once.
    """
    from webdataset.shardlists import expand_urls

    out = Path(out)
    document, max_label = {}, -1
    for name, urls in splits.items():
        expanded = [u for pattern in ([urls] if isinstance(urls, str) else urls)
                    for u in expand_urls(pattern)]
        shards, labels = [], {}
        for url in expanded:
            count = 0
            for _, _, members in iter_samples(_resolve(url, out), lambda _: True,
                                              suffixes={label_key}):
                count += 1
                if members and label_key in members:
                    label = int(members[label_key])
                    labels[label] = labels.get(label, 0) + 1
                    max_label = max(max_label, label)
            shards.append({"url": url, "count": count})
        document[name] = {"shards": shards, "labels": labels}
    names = list(classes) if classes is not None else [str(i) for i in range(max_label + 1)]
    splits_doc = {name: {"shards": d["shards"],
                         "per_class": {names[k]: v for k, v in sorted(d["labels"].items())}}
                  for name, d in document.items()}
    return write_index_file(out, index_document(names, splits_doc))


# -- reading shards ------------------------------------------------------------------------------

def buffer_shuffle(items: Iterable[T], size: int, seed: int) -> Iterator[T]:
    """Shuffle through a buffer of `size` items; the choices depend only on (seed, count).

    Only `random.Random.random()` is used, whose sequence Python guarantees across versions.
    """
    import random

    rng = random.Random(seed)
    buffer: list[T] = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = int(rng.random() * size)
        out, buffer[slot] = buffer[slot], item
        yield out
    for i in range(len(buffer) - 1, 0, -1):  # Fisher-Yates drain
        j = int(rng.random() * (i + 1))
        buffer[i], buffer[j] = buffer[j], buffer[i]
    yield from buffer


@dataclass(frozen=True)
class _Layout:
    """Where each position of an epoch lives: shards in epoch order with cumulative starts."""

    order: tuple[int, ...]  # shard indices in epoch order
    starts: tuple[int, ...]  # position of each ordered shard's first sample

    def locate(self, position: int) -> tuple[int, int]:
        """(index into `order`, offset in that shard)."""
        k = bisect.bisect_right(self.starts, position) - 1
        return k, position - self.starts[k]


class ShardReader:
    """Fetch samples of a split by position and turn them into items (or None)."""

    def __init__(self, split: SplitShards, transform: Callable | None, *, image_keys: Sequence[str],
                 label_key: str, keys_are_indices: bool):
        self.split, self.transform = split, transform
        self.rng_sources = rng_sources(transform)
        self.image_keys, self.label_key = tuple(image_keys), label_key
        self.keys_are_indices = keys_are_indices
        counts = [s.count for s in split.shards]
        self.canonical_starts = [sum(counts[:i]) for i in range(len(counts))]

    def layout(self, order: Sequence[int]) -> _Layout:
        starts, total = [], 0
        for k in order:
            starts.append(total)
            total += self.split.shards[k].count
        return _Layout(tuple(order), tuple(starts))

    def fetch(self, layout: _Layout, order: Sequence[int]
              ) -> Iterator[tuple[int, int, str, dict | None]]:
        """(position, canonical index, key, members or None) in `order` (a permutation of a set
        of positions that is read in ascending order; memory: read-ahead samples only)."""
        needed = sorted(order)
        held: dict[int, tuple[int, str, dict | None]] = {}
        out = 0
        for shard_k, offsets in self._by_shard(layout, needed):
            shard_index = layout.order[shard_k]
            shard = self.split.shards[shard_index]
            start = layout.starts[shard_k]
            wanted, got = set(offsets), set()
            suffixes = {*self.image_keys, self.label_key}
            try:
                for offset, key, members in iter_samples(shard.url, wanted.__contains__, suffixes):
                    if members is None:
                        if offset > offsets[-1]:
                            break
                        continue
                    got.add(offset)
                    index = self.canonical_starts[shard_index] + offset
                    held[start + offset] = (index, key, members)
                    while out < len(order) and order[out] in held:
                        yield (order[out], *held.pop(order[out]))
                        out += 1
            except (OSError, tarfile.TarError, EOFError) as exc:
                log.error("shard %s unreadable after %d samples (%s): its other %d samples are "
                          "skipped", shard.url, len(got), exc, len(wanted - got))
            else:
                if wanted - got:
                    log.error("shard %s has fewer samples than its index says: %d skipped",
                              shard.url, len(wanted - got))
            for offset in wanted - got:  # keep the positions: batches stay aligned
                held[start + offset] = (self.canonical_starts[shard_index] + offset, "", None)
            while out < len(order) and order[out] in held:
                yield (order[out], *held.pop(order[out]))
                out += 1

    @staticmethod
    def _by_shard(layout: _Layout, positions: Sequence[int]) -> Iterator[tuple[int, list[int]]]:
        current, offsets = None, []
        for p in positions:
            k, offset = layout.locate(p)
            if k != current:
                if current is not None:
                    yield current, offsets
                current, offsets = k, []
            offsets.append(offset)
        if current is not None:
            yield current, offsets

    def item(self, index: int, key: str, members: dict | None, seed: int | None) -> dict | None:
        """Decode + transform one sample (augmentation seeded by `seed` when given)."""
        if members is None:
            return None
        if self.keys_are_indices and key.isdigit():
            index = int(key)
        where = f"{key or index} in {self.split.name}"
        data = next((members[k] for k in self.image_keys if k in members), None)
        try:
            label = int(members[self.label_key])
        except (KeyError, ValueError):
            log.warning("skipping sample %s: no integer '%s' label", where, self.label_key)
            return None
        if data is None:
            log.warning("skipping sample %s: no image under keys %s", where,
                        ", ".join(self.image_keys))
            return None
        image = decode_image(data, where)
        if image is None:
            return None
        if self.transform is not None:
            if seed is None:
                image = self.transform(image)
            else:
                with seeded(seed, sources=self.rng_sources):
                    image = self.transform(image)
        return {"image": image, "label": label, "index": index}


def reader_for(cfg: DataConfig, split: str, transform: Callable | None
               ) -> tuple[ShardReader, ShardIndex]:
    index = read_index(cfg.path)
    role = "train" if split == "train" else "val"
    shards = index.split(cfg.split_name(split), role)
    reader = ShardReader(shards, transform, image_keys=cfg.image_column.split(";"),
                         label_key=cfg.label_column,
                         keys_are_indices=index.keys == SOURCE_INDEX_KEYS)
    return reader, index


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# -- evaluation: every sample once, in order ---------------------------------------------------

class ShardDataset(IterableDataset):
    """A split's samples, each exactly once, in shard order: contiguous parts per rank (as
    EvalSampler) and per DataLoader worker. For evaluation and inspection."""

    def __init__(self, reader: ShardReader, classes: list[str], *, rank: int = 0,
                 world_size: int = 1):
        self.reader, self.classes = reader, classes
        n = reader.split.count
        self.start, self.stop = rank * n // world_size, (rank + 1) * n // world_size

    def shard(self, rank: int, world_size: int) -> ShardDataset:
        """The part of rank `rank` of `world_size`."""
        return ShardDataset(self.reader, self.classes, rank=rank, world_size=world_size)

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[dict | None]:
        worker, workers = _worker()
        n = self.stop - self.start
        lo, hi = self.start + worker * n // workers, self.start + (worker + 1) * n // workers
        layout = self.reader.layout(range(len(self.reader.split.shards)))
        for _, index, key, members in self.reader.fetch(layout, range(lo, hi)):
            yield self.reader.item(index, key, members, seed=None)


# -- training: resumable, exactly-once streams ---------------------------------------------------

_GEOMETRY = ("world_size", "num_workers", "micro_batch", "global_batch")


@dataclass(frozen=True)
class _Plan:
    layout: _Layout
    order: list[int]  # positions in output order (already-consumed ones removed)


class ShardStream(IterableDataset):
    """This rank's training items from shards, micro-batch-aligned per DataLoader worker.

    The sampler-like surface (set_epoch, steps_per_epoch, position, state_dict,
    load_state_dict, len) matches ResumableSampler, so the engine drives both the same way.
    Batch it with `build_train_loader(cfg, stream, None, micro_batch, seed)`; the loader must
    have exactly `num_workers` workers (cfg.num_workers). See the module docstring for the
    resume guarantee.
    """

    def __init__(self, reader: ShardReader, classes: list[str], *, global_batch: int,
                 micro_batch: int, rank: int, world_size: int, num_workers: int, seed: int,
                 shuffle: bool = True, shuffle_buffer: int = 1000):
        self.accumulation = accumulation(global_batch, micro_batch, world_size)
        self.reader, self.classes = reader, classes
        self.num_samples = reader.split.count
        # num_workers 0 and 1 both mean one reader per rank
        self.geometry = {"world_size": world_size, "num_workers": max(1, num_workers),
                         "micro_batch": micro_batch, "global_batch": global_batch}
        self.rank, self.workers = rank, max(1, num_workers)
        self.global_batch, self.micro_batch, self.world_size = global_batch, micro_batch, world_size
        self.seed, self.shuffle, self.shuffle_buffer = seed, shuffle, shuffle_buffer
        # [epoch, start_step, resume_epoch, resume_step, *saved geometry]: shared memory, so
        # persistent DataLoader workers see set_epoch/load_state_dict made in the main process.
        self._state = torch.full((4 + len(_GEOMETRY),), -1, dtype=torch.long).share_memory_()
        self._state[:2] = 0

    @property
    def steps_per_epoch(self) -> int:
        return self.num_samples // self.global_batch

    @property
    def epoch(self) -> int:
        return int(self._state[0])

    @property
    def start_step(self) -> int:
        return int(self._state[1])

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        if not 0 <= start_step <= self.steps_per_epoch:
            raise ValueError(f"start_step {start_step} outside [0, {self.steps_per_epoch}]")
        self._state[0], self._state[1] = epoch, start_step

    def position(self, global_step: int) -> dict[str, int]:
        """Resume position after `global_step` completed steps, with this stream's geometry."""
        epoch, in_epoch = divmod(global_step, max(1, self.steps_per_epoch))
        return {"epoch": epoch, "step_in_epoch": in_epoch, "num_samples": self.num_samples,
                **self.geometry}

    def state_dict(self) -> dict[str, int]:
        """The position given to the last `set_epoch`, with this stream's geometry."""
        return {"epoch": self.epoch, "step_in_epoch": self.start_step,
                "num_samples": self.num_samples, **self.geometry}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a saved position; geometry keys missing from `state` mean "unchanged"."""
        saved = {k: int(state.get(k, v)) for k, v in self.geometry.items()}
        saved["num_workers"] = max(1, saved["num_workers"])
        if saved["global_batch"] != self.global_batch:
            raise DataError(f"cannot resume the wds stream with global batch {self.global_batch}: "
                            f"it was saved with {saved['global_batch']}; keep train.global_batch")
        if int(state.get("num_samples", self.num_samples)) != self.num_samples:
            raise DataError(f"cannot resume: the wds split now has {self.num_samples} samples, "
                            f"{state['num_samples']} when saved; restore the original shards")
        epoch, step = int(state["epoch"]), int(state["step_in_epoch"])
        self.set_epoch(epoch, step)
        self._state[2:] = -1
        if saved != self.geometry and step > 0:
            self._state[2], self._state[3] = epoch, step
            self._state[4:] = torch.tensor([saved[k] for k in _GEOMETRY])

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.accumulation * self.micro_batch

    # -- plans ---------------------------------------------------------------------------------

    def _layout(self, epoch: int) -> _Layout:
        n = len(self.reader.split.shards)
        if not self.shuffle:
            return self.reader.layout(range(n))
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, "shards"))
        return self.reader.layout(torch.randperm(n, generator=generator).tolist())

    def _ranges(self, geometry: dict[str, int]) -> list[tuple[int, int]]:
        """Per reader (rank-major, then worker): the positions [start, stop) of a full epoch."""
        ws, micro = geometry["world_size"], geometry["micro_batch"]
        workers = max(1, geometry["num_workers"])
        per_rank = self.steps_per_epoch * accumulation(self.global_batch, micro, ws)  # micro-steps
        ranges, start = [], 0
        for _ in range(ws):
            for w in range(workers):
                size = len(range(w, per_rank, workers)) * micro
                ranges.append((start, start + size))
                start += size
        return ranges

    def _order(self, positions: Sequence[int], epoch: int, tag: tuple) -> list[int]:
        if not self.shuffle or self.shuffle_buffer <= 1:
            return list(positions)
        seed = mix_seed(self.seed, epoch, *tag)
        return list(buffer_shuffle(positions, self.shuffle_buffer, seed))

    def _consumed(self, geometry: dict[str, int], epoch: int, step: int) -> list[int]:
        """Per reader of `geometry`: output items consumed after `step` steps of `epoch`."""
        workers, micro = max(1, geometry["num_workers"]), geometry["micro_batch"]
        done = step * accumulation(self.global_batch, micro, geometry["world_size"])
        return [len(range(w, done, workers)) * micro
                for _ in range(geometry["world_size"]) for w in range(workers)]

    def _plan(self, worker: int) -> _Plan:
        epoch, step = self.epoch, self.start_step
        layout = self._layout(epoch)
        resume = [int(v) for v in self._state[2:]]
        if resume[0] == epoch and resume[1] == step:
            saved = dict(zip(_GEOMETRY, resume[2:], strict=True))
            return _Plan(layout, self._remapped(saved, epoch, step, worker))
        # Worker `worker` continues the logical reader whose turn comes first after the
        # micro-batches already done, so the DataLoader's round robin keeps the order.
        done = step * self.accumulation
        logical = (worker + done) % self.workers
        reader = self.rank * self.workers + logical
        start, stop = self._ranges(self.geometry)[reader]
        tag = ("reader", *self.geometry.values(), reader)
        skip = self._consumed(self.geometry, epoch, step)[reader]
        return _Plan(layout, self._order(range(start, stop), epoch, tag)[skip:])

    def _remapped(self, saved: dict[str, int], epoch: int, step: int, worker: int) -> list[int]:
        """After a geometry change: the epoch's unconsumed positions, split over the new readers."""
        consumed = set()
        ranges, used_counts = self._ranges(saved), self._consumed(saved, epoch, step)
        for reader, ((start, stop), used) in enumerate(zip(ranges, used_counts, strict=True)):
            if used:
                tag = ("reader", *saved.values(), reader)
                consumed.update(self._order(range(start, stop), epoch, tag)[:used])
        used_total = self.steps_per_epoch * self.global_batch
        remaining = [p for p in range(used_total) if p not in consumed]
        left = (self.steps_per_epoch - step) * self.accumulation  # micro-batches per rank
        sizes = [len(range(w, left, self.workers)) * self.micro_batch
                 for _ in range(self.world_size) for w in range(self.workers)]
        reader = self.rank * self.workers + worker
        start = sum(sizes[:reader])
        tag = ("resumed", step, *self.geometry.values(), reader)
        return self._order(remaining[start:start + sizes[reader]], epoch, tag)

    def __iter__(self) -> Iterator[dict | None]:
        worker, workers = _worker()
        if workers != self.workers:
            raise DataError(f"the wds stream was built for {self.workers} DataLoader worker(s), "
                            f"the loader has {workers}; build both from data.num_workers")
        epoch = self.epoch
        plan = self._plan(worker)
        for _, index, key, members in self.reader.fetch(plan.layout, plan.order):
            yield self.reader.item(index, key, members, seed=item_seed(self.seed, epoch, index))


def build_train_stream(cfg: DataConfig, split: str, transform: Callable, *, global_batch: int,
                       micro_batch: int, rank: int, world_size: int, seed: int,
                       shuffle: bool = True) -> ShardStream:
    """The training stream of a wds split for one rank (see ShardStream)."""
    reader, index = reader_for(cfg, split, transform)
    return ShardStream(reader, index.classes, global_batch=global_batch, micro_batch=micro_batch,
                       rank=rank, world_size=world_size, num_workers=cfg.num_workers, seed=seed,
                       shuffle=shuffle, shuffle_buffer=cfg.shuffle_buffer)

