"""webdataset shards: exact coverage across ranks x workers, determinism, exact resume,
resume with a new geometry, bad samples and shards, indexing foreign shards."""

from __future__ import annotations

import json
import shutil

import pytest
from torchvision import transforms as T

from nepa.data import DataConfig, DataError, build_dataset, build_eval_loader, build_train_loader
from nepa.data.tarfiles import iter_samples
from nepa.data.wds import buffer_shuffle, build_train_stream, read_index, write_index

N = 60  # train samples in the `packed` fixture (4 shards of 16, 16, 16, 12)


def _cfg(path, workers=2, buffer=8):
    return DataConfig(source="wds", path=str(path), num_workers=workers, shuffle_buffer=buffer)


def _stream(path, *, rank, world_size, micro_batch, workers=2, global_batch=12, seed=1):
    return build_train_stream(_cfg(path, workers), "train", T.PILToTensor(),
                              global_batch=global_batch, micro_batch=micro_batch, rank=rank,
                              world_size=world_size, seed=seed)


def _batches(stream, epoch, start_step=0, state=None, workers=2):
    """Index lists of the micro-batches a rank's loader yields (a fresh loader each call)."""
    if state is not None:
        stream.load_state_dict(state)
    stream.set_epoch(epoch, start_step)
    loader = build_train_loader(_cfg("unused", workers), stream, None, stream.micro_batch, seed=1)
    return [batch["index"].tolist() for batch in loader]


def test_two_ranks_two_workers_cover_each_sample_once_per_epoch(packed):
    streams = [_stream(packed, rank=r, world_size=2, micro_batch=2) for r in range(2)]
    assert streams[0].steps_per_epoch == 5 and len(streams[0]) == 30
    orders = []
    for epoch in (0, 1):
        per_rank = [_batches(s, epoch) for s in streams]
        assert [len(b) for b in per_rank] == [15, 15]  # 5 steps x accumulation 3
        assert all(len(batch) == 2 for b in per_rank for batch in b)
        seen = [i for b in per_rank for batch in b for i in batch]
        assert sorted(seen) == list(range(N))
        orders.append(per_rank)
    assert orders[0] != orders[1]
    again = _stream(packed, rank=1, world_size=2, micro_batch=2)
    assert _batches(again, 1) == orders[1][1]  # a function of (seed, epoch)


def test_resume_with_the_same_geometry_is_exact(packed):
    full = [_batches(_stream(packed, rank=r, world_size=2, micro_batch=2), 3) for r in range(2)]
    for step in (1, 4):  # accumulation 3 with 2 workers: step 1 starts at worker 1's turn
        for rank in range(2):
            saved = _stream(packed, rank=rank, world_size=2, micro_batch=2).position(3 * 5 + step)
            assert saved["epoch"] == 3 and saved["step_in_epoch"] == step
            resumed = _stream(packed, rank=rank, world_size=2, micro_batch=2)
            assert _batches(resumed, 3, step, state=saved) == full[rank][3 * step:]


def test_resume_with_another_geometry_repeats_and_skips_nothing(packed):
    old = [_stream(packed, rank=r, world_size=2, micro_batch=2) for r in range(2)]
    consumed = [i for s in old for batch in _batches(s, 2)[:3 * 2] for i in batch]  # 2 steps
    saved = old[0].position(5 * 2 + 2)
    new = _stream(packed, rank=0, world_size=1, micro_batch=4, workers=0)  # accumulation 3
    rest = _batches(new, 2, 2, state=saved, workers=0)
    assert len(rest) == 3 * 3 and all(len(batch) == 4 for batch in rest)
    remaining = [i for batch in rest for i in batch]
    assert sorted(consumed + remaining) == list(range(N))
    # the next epoch follows the new geometry from its start
    assert sorted(i for b in _batches(new, 3, workers=0) for i in b) == list(range(N))


def test_resume_refuses_another_global_batch(packed):
    saved = _stream(packed, rank=0, world_size=1, micro_batch=2, workers=0).position(3)
    other = _stream(packed, rank=0, world_size=1, micro_batch=2, workers=0, global_batch=6)
    with pytest.raises(DataError, match="saved with 12; keep train.global_batch"):
        other.load_state_dict(saved)


def test_eval_dataset_reads_each_sample_once(packed):
    dataset = build_dataset(_cfg(packed), "train", T.PILToTensor())
    seen = []
    for rank in range(2):
        loader = build_eval_loader(_cfg(packed), dataset, 7, rank=rank, world_size=2)
        seen += [i for batch in loader for i in batch["index"].tolist()]
    assert sorted(seen) == list(range(N))


def test_bad_samples_and_a_missing_shard_are_skipped_and_counted(tmp_path, folder, caplog):
    from nepa.data.pack import pack_shards

    root = tmp_path / "src"
    shutil.copytree(folder, root)
    victim = sorted((root / "train" / "7").iterdir())[2]
    victim.write_bytes(victim.read_bytes()[:60])  # header intact, pixels truncated
    pack_shards(str(root), tmp_path / "wds", shard_size=16)
    lost = read_index(tmp_path / "wds").splits["train"].shards[3]
    (tmp_path / "wds" / "train-000003.tar").unlink()
    stream = _stream(tmp_path / "wds", rank=0, world_size=1, micro_batch=4, workers=0)
    batches = [b for b in build_train_loader(_cfg(tmp_path, workers=0), stream, None, 4, seed=1)]
    assert len(batches) == 15  # positions are kept: the step structure does not change
    assert sum(b["skipped"] for b in batches) == 1 + lost.count
    assert sum(len(b["index"]) for b in batches) == N - 1 - lost.count
    assert f"shard {lost.url} unreadable after 0 samples" in caplog.text
    assert "skipping unreadable image" in caplog.text


def test_buffer_shuffle_is_a_seeded_permutation():
    a = list(buffer_shuffle(range(100), 10, seed=3))
    assert sorted(a) == list(range(100)) and a != list(range(100))
    assert a == list(buffer_shuffle(range(100), 10, seed=3))
    assert a != list(buffer_shuffle(range(100), 10, seed=4))
    # a buffer of 10 moves nothing earlier than 10 places before its input position
    assert all(a.index(i) >= i - 10 for i in range(100))


def test_write_index_for_foreign_shards_with_braces_and_pipes(tmp_path, packed):
    shards = tmp_path / "shards"
    shards.mkdir()
    for tar in packed.glob("*.tar"):
        shutil.copy(tar, shards / tar.name)
    pipe = f"pipe:cat {shards}/val-000000.tar"
    write_index(shards, {"train": "train-{000000..000003}.tar", "val": [pipe, "val-000001.tar"]},
                classes=[str(d) for d in range(10)])
    ours, theirs = read_index(packed), read_index(shards)
    assert theirs.splits["train"].count == ours.splits["train"].count == N
    assert theirs.splits["train"].per_class == ours.splits["train"].per_class
    assert theirs.splits["val"].shards[0].url == pipe
    items = list(build_dataset(_cfg(shards), "val", None))
    assert len(items) == 20 and all(item is not None for item in items)
    assert sorted(item["index"] for item in items) == list(range(20))  # positions: no key ids


def test_iter_samples_groups_files_by_key(packed):
    first = next(iter(sorted(packed.glob("val-*.tar"))))
    samples = list(iter_samples(str(first), lambda offset: offset % 2 == 0))
    assert [offset for offset, _, _ in samples] == list(range(16))
    assert all(set(members) == {"cls", "png"} for o, _, members in samples if o % 2 == 0)
    assert all(members is None for o, _, members in samples if o % 2)
    assert json.loads((packed / "index.json").read_text())["splits"]["val"]["count"] == 20


def test_persistent_workers_follow_set_epoch_and_resume(packed):
    """One loader for the whole run, as the engine keeps it: workers read the shared position."""
    stream = _stream(packed, rank=1, world_size=2, micro_batch=2)
    loader = build_train_loader(_cfg(packed), stream, None, 2, seed=1)
    got = []
    for epoch, start in ((0, 0), (1, 3), (1, 0)):
        stream.set_epoch(epoch, start)
        got.append([b["index"].tolist() for b in loader])
    fresh = _stream(packed, rank=1, world_size=2, micro_batch=2)
    assert got == [_batches(fresh, 0), _batches(fresh, 1)[9:], _batches(fresh, 1)]
