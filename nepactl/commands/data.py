"""`nepactl data pack|check`: convert datasets to webdataset shards and validate them.

Imports no torch at module level: the library is imported inside each command.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Literal

import typer

from nepactl import console
from nepactl.commands.options import Json
from nepactl.errors import handled
from nepactl.output import Format, emit

app = typer.Typer(help="Pack datasets into webdataset shards and check datasets before a job.",
                  no_args_is_help=True)

SourceOption = Annotated[
    Literal["auto", "digits", "imagefolder", "hf", "wds"] | None,
    typer.Option("--source", help="What PATH holds (default: detected from its layout).")]


@contextmanager
def _progress_bar(verb: str):
    """A rich progress bar on stderr, one task per split, fed by the library's callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    tasks: dict[str, int] = {}
    with Progress(TextColumn(f"{verb} {{task.description}}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console.err, transient=False) as progress:

        def update(split: str, done: int, total: int) -> None:
            if split not in tasks:
                tasks[split] = progress.add_task(split, total=total)
            progress.update(tasks[split], completed=done, total=total)

        yield update


@app.command("pack")
@handled
def pack(
    src: Annotated[str, typer.Argument(help="'digits', an image folder (SRC/train/<class>/...), "
                                            "or a local HF dataset directory.")],
    out: Annotated[Path, typer.Argument(help="New directory for the shards and index.json "
                                             "(must not exist or be empty).")],
    source: SourceOption = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1,
                                            help="Images per shard (at most).")] = 1000,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle",
                                          help="Write train in a seeded random order.")] = True,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train order.")] = 0,
    decode: Annotated[bool, typer.Option("--decode/--no-decode",
                                         help="Fully decode every image (default: header "
                                              "check only).")] = False,
) -> None:
    """Pack a dataset's train and val splits into webdataset shards + index.json.

    Example: nepactl data pack /data/imagenet /data/imagenet-wds --shard-size 1000
    """
    from nepa.data.pack import pack_shards

    with _progress_bar("packing") as progress:
        result = pack_shards(src, out, source=None if source in (None, "auto") else source,
                             shard_size=shard_size, shuffle=shuffle, seed=seed, decode=decode,
                             progress=progress)
    rows = [{"split": s.name, "images": s.images, "shards": len(s.shards),
             "skipped": len(s.skipped)} for s in result.splits]
    emit(rows, Format.table, title=f"packed {result.source} into {result.out}")
    for split in result.splits:
        if split.skipped:
            console.warn(f"{split.name}: skipped {len(split.skipped)} unreadable image(s), "
                         f"e.g. {split.skipped[0]}")
    for name in result.missing:
        console.hint(f"the source has no '{name}' split; only the splits above were packed")
    console.out.print(str(result.index))


@app.command("check")
@handled
def check(
    path: Annotated[str, typer.Argument(help="'digits', an image folder, a local HF dataset, "
                                             "or a pack directory (index.json).")],
    source: SourceOption = None,
    decode: Annotated[bool, typer.Option("--decode/--no-decode",
                                         help="Decode every image (default: a sample).")] = False,
    sample: Annotated[int, typer.Option("--sample", min=0,
                                        help="Images decoded per split without --decode.")] = 16,
    train_split: Annotated[str | None, typer.Option("--train-split",
                                                    help="Name of the train split.")] = None,
    val_split: Annotated[str | None, typer.Option("--val-split",
                                                  help="Name of the val split.")] = None,
    json_out: Json = False,
) -> None:
    """Validate a dataset: counts per split and class, unreadable images, missing splits.

    Exits 2 with one line when the data is unusable. Example: nepactl data check /data/imagenet
    """
    from nepa.data.check import check_dataset
    from nepa.data.config import DataConfig
    from nepa.data.layout import detect_source

    kind = detect_source(path) if source in (None, "auto") else source
    cfg = DataConfig(source=kind, path=None if kind == "digits" else path,
                     train_split=train_split, val_split=val_split)
    if decode:
        with _progress_bar("decoding") as progress:
            report = check_dataset(cfg, decode=True, progress=progress)
    else:
        report = check_dataset(cfg, sample=sample)
    if json_out:
        console.out.print_json(json.dumps(report.to_dict()))
    else:
        emit(report.rows(), Format.table,
             title=f"{report.source} {report.path or ''}".rstrip() + f": {len(report.classes)} classes")
    for split in report.splits:
        if split.unreadable:
            console.warn(f"{split.name}: {len(split.unreadable)} of {split.decoded} decoded "
                         f"images are unreadable (skipped in training), e.g. {split.unreadable[0]}")
