"""UrbanSound8K per-second labelling: 60 s concatenations of the official folds, one label per second.

Expected input (SOURCE_DIR = UrbanSound8K/, the unpacked UrbanSound8K.tar.gz from Zenodo record
1203745, https://urbansounddataset.weebly.com/urbansound8k.html; CC BY-NC 3.0):

  UrbanSound8K/
    audio/fold1 ... fold10/[fsID]-[classID]-[occurrenceID]-[sliceID].wav   8,732 clips <= 4 s,
                                                  each at its own rate, bit depth and channel count
    metadata/UrbanSound8K.csv   slice_file_name,fsID,start,end,salience,fold,classID,class

The task is SSAMBA's "dynamic audio scene labelling": inside each fold the clips are shuffled
(seeded, the same recordings on every run), converted to 16 kHz mono, zero-padded to a whole number of seconds
and concatenated into 60 s recordings; every second is labelled with the class of the clip it
belongs to. A clip that does not fit into what is left of a recording is cut at a whole second
(its rest is dropped); a fold's last recording may be shorter than 60 s (its missing seconds are
unlabelled). Folds are never mixed, so the official 10-fold cross-validation still holds.

Manifest: path = audio/fold<k>/concat_<i>.flac, one row per source clip with its start/end second
inside the recording, label = class, fold = k, group = the recording (the per-second engine
labels second s with the row whose [start, end) holds its centre).
"""

from __future__ import annotations

import functools
import math
import random
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ssamba.audio.io import decode_file, resample
from ssamba.data.prepare import TARGET_SAMPLE_RATE, Checks, Item, PrepareError, Recipe, read_csv_rows, require_file, run_recipe

COLUMNS = ("slice_file_name", "fsID", "fold", "classID", "class")
EXPECTED_CLIPS, FOLDS, RECORDING_SECONDS = 8732, 10, 60
SEED = 0


def padded_seconds(path: Path) -> int:
    """Whole seconds a clip occupies once zero-padded (at least 1)."""
    import soundfile

    info = soundfile.info(str(path))
    return max(1, math.ceil(info.frames / info.samplerate - 1e-9))


def build_recording(parts: tuple[tuple[str, int], ...]) -> np.ndarray:
    """Concatenate (clip, seconds) parts: each clip at 16 kHz mono, zero-padded or cut to its seconds."""
    pieces = []
    for path, seconds in parts:
        samples, rate, _ = decode_file(path)
        wave = resample(samples, rate, TARGET_SAMPLE_RATE)[: seconds * TARGET_SAMPLE_RATE]
        pieces.append(np.pad(wave, (0, seconds * TARGET_SAMPLE_RATE - wave.size)))
    return np.concatenate(pieces).astype(np.float32)


def plan_fold(fold: str, clips: list[tuple[Path, str]], seed: int) -> list[Item]:
    """Shuffle one fold's clips and lay them out into <= 60 s recordings (one Item per placed clip)."""
    order = list(clips)
    random.Random(f"{seed}-{fold}").shuffle(order)
    recordings: list[list[tuple[Path, str, int]]] = [[]]
    used = 0
    for path, label in order:
        # a clip that does not fit is cut at a whole second; its rest is dropped, never moved on
        take = min(padded_seconds(path), RECORDING_SECONDS - used)
        recordings[-1].append((path, label, take))
        used += take
        if used == RECORDING_SECONDS:
            recordings.append([])
            used = 0
    items = []
    for index, parts in enumerate(r for r in recordings if r):
        target = f"audio/fold{fold}/concat_{index:03d}.flac"
        make = functools.partial(build_recording, tuple((str(p), s) for p, _, s in parts))
        start = 0
        for path, label, seconds in parts:
            items.append(Item(path, target, (label,), fold=fold, group=f"fold{fold}-{index:03d}",
                              start=float(start), end=float(start + seconds), make_audio=make))
            start += seconds
    return items


def collect(source: Path, checks: Checks) -> list[Item]:
    meta = require_file(source / "metadata" / "UrbanSound8K.csv", "metadata/UrbanSound8K.csv")
    rows = read_csv_rows(meta, COLUMNS)
    checks.count(f"{meta.name} rows", len(rows), EXPECTED_CLIPS)
    by_fold: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    missing = []
    for line_no, row in enumerate(rows, 2):
        if row["fold"] not in {str(k) for k in range(1, FOLDS + 1)}:
            raise PrepareError(f"{meta}:{line_no}: fold must be 1-10, got {row['fold']!r}")
        path = source / "audio" / f"fold{row['fold']}" / row["slice_file_name"]
        if not path.is_file():
            missing.append(f"fold{row['fold']}/{row['slice_file_name']}")
            continue
        by_fold[row["fold"]].append((path, row["class"]))
    checks.missing("clips listed in UrbanSound8K.csv", missing, len(rows))
    checks.count("folds", len(by_fold), FOLDS)
    return [item for fold in sorted(by_fold, key=int) for item in plan_fold(fold, sorted(by_fold[fold]), SEED)]


RECIPE = Recipe(name="urban8k_per_second", description=__doc__, collect=collect, target_length=6144, whole_file_stats=True)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
