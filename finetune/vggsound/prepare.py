"""VGGSound: about 200k 10-second YouTube clips, 309 classes, the owners' train/test split.

Expected input (SOURCE_DIR): the owners distribute only YouTube ids (vggsound.csv from
https://github.com/hche11/VGGSound, data/vggsound.csv; CC BY 4.0, videos stay their owners'); the
clips are downloaded by the user, so SOURCE_DIR holds the CSV and a folder of clips:

  vggsound/
    vggsound.csv         no header: YouTube ID, start seconds, label, train|test
                         e.g. ---g-f_I2yQ,1,people marching,test   (labels with commas are quoted)
    video/...            (or audio/...) one file per row, named <ytid>_<start, 6 digits>.<ext>,
                         e.g. glLQrEijrKg_000300.mp4 or OxPnZzn1_L8_000883.wav, any nesting

Videos disappear from YouTube over time: missing clips are counted and reported, never fatal.
Manifest: label = the owners' label string, split = train/test, group = YouTube id (dropped with a
warning if an id is in both splits). mp4 decoding needs PyAV (pip install 'ssamba[decode]').
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from ssamba.audio.io import AUDIO_EXTENSIONS
from ssamba.data.prepare import Checks, Item, PrepareError, Recipe, flac_target, groups_or_blank, index_files, require_file, run_recipe

EXPECTED_CLASSES = 309


def collect(source: Path, checks: Checks) -> list[Item]:
    table = require_file(source / "vggsound.csv", "vggsound.csv")
    folders = [d for d in (source / "video", source / "audio") if d.is_dir()]
    if not folders:
        raise PrepareError(f"{source}: no video/ or audio/ folder of downloaded clips (see --help)")
    files: dict[str, Path] = {}
    for folder in folders:
        for stem, path in index_files(folder, AUDIO_EXTENSIONS).items():
            files.setdefault(stem, path)
    items, missing, rows = [], [], 0
    with open(table, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle), 1):
            if not row:
                continue
            if len(row) != 4 or row[3] not in ("train", "test") or not row[1].isdigit():
                raise PrepareError(f"{table}:{line_no}: expected 'ytid,start,label,train|test', got {row}")
            rows += 1
            ytid, start, label, split = row[0], int(row[1]), row[2], row[3]
            stem = f"{ytid}_{start:06d}"
            if stem not in files:
                missing.append(stem)
                continue
            items.append(Item(files[stem], flac_target(Path(split) / stem), (label,), split=split, group=ytid))
    checks.missing("clips (videos no longer online are expected)", missing, rows, fatal=False)
    checks.count("vggsound.csv classes", len({i.labels[0] for i in items}), EXPECTED_CLASSES)
    return groups_or_blank(items, checks, "video")


RECIPE = Recipe(name="vggsound", description=__doc__, collect=collect, target_length=1024)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
