"""Write WebDataset tar shards of 16 kHz mono FLAC + JSON metadata from an audio corpus.

examples:
  ssamba shards librispeech /data/LibriSpeech/train-clean-100 -o shards/ls100
  ssamba shards audioset /data/audioset/clips -o shards/as-bal \\
      --segments balanced_train_segments.csv --labels class_labels_indices.csv
  ssamba shards folder ./my_audio -o shards/mine --labels-from-dirs --max-count 500
  ssamba shards ast_json audioset_librispeech.json -o shards/mix --labels class_labels_indices.csv
  ssamba shards manifest clips.jsonl -o shards/clips --max-bytes 500M --workers 8
  ssamba shards manifest labelled.csv -o shards/esc50      # labelled: classes.json + split/fold/group per sample
  ssamba shards folder ./my_audio -o shards/mine-fbank --fbank     # precomputed float16 fbank

Each sample is ``<key>.flac`` (or ``<key>.fbank.npy`` with --fbank) plus ``<key>.json``
(source, path, duration, labels, original rate/channels, corpus extras). Shards are named
``<prefix>-000000.tar`` ... and filled in input order up to --max-count samples / --max-bytes.
Decoding runs in --workers processes; the output is byte-identical for the same inputs.
A rerun with the same inputs skips the shards already finished (progress.jsonl); so does a rerun
after a worker process died (the writer stops with a message instead of waiting). At the end,
index.json lists the shards, counts and hours, and rejects.jsonl names every input that was
skipped and why: missing (dangling symlinks too), empty, unreadable (special files too),
too_short, non_finite (NaN/Inf samples), bad_sample_rate (outside 1000..768000 Hz), too_loud
(float peak above 2.0: unscaled samples) or duplicate. Peaks in (1, 2] are clipped and counted.
Sample keys are the relative paths with '.', '/' and other unsafe characters replaced by '_';
names with spaces, non-ASCII or non-UTF-8 characters (and keys that would still collide) get a
hash of the exact name appended, so every input gets its own stable key.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ssamba.data.sources import AudioRecord

SIZE_SUFFIXES = {"K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
SOURCES = ("ast_json", "audioset", "folder", "librispeech", "manifest")


def scan_source(args: argparse.Namespace) -> list[AudioRecord]:
    """The records of ``args.input`` read as the ``args.source`` layout (one of :data:`SOURCES`)."""
    from ssamba.data.sources import ast_json, audioset, folder, librispeech, manifest

    scanners: dict[str, Callable[[], list[AudioRecord]]] = {
        "librispeech": lambda: librispeech.scan(args.input),
        "audioset": lambda: audioset.scan(args.input, args.segments or [], _require(args.labels, "audioset needs --labels class_labels_indices.csv")),
        "folder": lambda: folder.scan(args.input, labels_from_dirs=args.labels_from_dirs),
        "ast_json": lambda: ast_json.scan(args.input, args.labels),
        "manifest": lambda: manifest.scan(args.input, args.labels),
    }
    return scanners[args.source]()


def _require(value: str | None, message: str) -> str:
    if not value:
        raise ValueError(message)
    return value


def parse_size(text: str) -> int:
    """'500M', '2G', '1000000' -> bytes (decimal units)."""
    text = text.strip().upper().removesuffix("B")
    factor = SIZE_SUFFIXES.get(text[-1:], 1)
    number = text[:-1] if text[-1:] in SIZE_SUFFIXES else text
    try:
        return int(float(number) * factor)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a size like 500M or 2G, got {text!r}") from exc


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", choices=SOURCES, help="input layout")
    parser.add_argument("input", help="dataset root / clips folder / JSON datafile / manifest")
    parser.add_argument("-o", "--output", required=True, help="output folder for the shards")
    parser.add_argument("--segments", action="append", help="audioset: a segment CSV (repeat for balanced/unbalanced/eval)")
    parser.add_argument("--labels", help="class_labels_indices.csv (audioset: required; ast_json/manifest: maps mids to indices)")
    parser.add_argument("--labels-from-dirs", action="store_true", help="folder: label = first sub-folder name")
    parser.add_argument("--max-count", type=int, default=None, help="samples per shard (default 1000)")
    parser.add_argument("--max-bytes", type=parse_size, default=None, help="bytes per shard, e.g. 500M (default 1G)")
    parser.add_argument("--min-seconds", type=float, default=None, help="reject shorter clips (default 0.3)")
    parser.add_argument("--sample-rate", type=int, default=None, help="output rate in Hz (default 16000)")
    parser.add_argument("--prefix", default=None, help="shard file prefix (default shard)")
    parser.add_argument("--fbank", action="store_true", help="store precomputed float16 SSAMBA fbank instead of FLAC")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: all cores)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards written from other inputs/options")


def main(args: argparse.Namespace) -> int:
    from ssamba.audio.fbank import FeatureConfig
    from ssamba.data.shards import REJECTS_FILE, ShardOptions, write_shards
    from ssamba.data.sources import manifest

    records = scan_source(args)
    given = {"max_count": args.max_count, "max_bytes": args.max_bytes, "min_seconds": args.min_seconds, "prefix": args.prefix}
    sample_rate = ShardOptions.sample_rate if args.sample_rate is None else args.sample_rate
    options = ShardOptions(
        sample_rate=sample_rate, fbank=args.fbank, features=FeatureConfig(sample_rate=sample_rate),
        **{name: value for name, value in given.items() if value is not None},
    )
    index = write_shards(records, args.output, options, workers=args.workers, overwrite=args.overwrite)
    if args.source == "manifest" and manifest.is_labelled(args.input):
        from ssamba.data.labelled import CLASSES_FILE, read_labelled

        classes = read_labelled(args.input, class_table=args.labels).classes
        (Path(args.output) / CLASSES_FILE).write_text(json.dumps(classes, ensure_ascii=False) + "\n", encoding="utf-8")
    rejects = index["rejects"]
    clipped = f"; {index['clipped']} clips had peaks above 1 and were clipped (\"clipped\" in their metadata)" if index["clipped"] else ""
    print(
        f"{len(index['shards'])} shards, {index['count']} clips, {index['hours']:.3f} h in {args.output}; "
        f"{rejects['count']} rejected {rejects['by_reason']} (see {Path(args.output) / REJECTS_FILE}){clipped}"
    )
    return 0
