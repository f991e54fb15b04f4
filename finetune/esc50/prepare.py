"""ESC-50: 2,000 five-second clips, 50 classes, 5 official folds (CV by fold).

Expected input (SOURCE_DIR = the unpacked archive's top folder, ESC-50-master/):

  ESC-50-master/
    audio/{FOLD}-{CLIP_ID}-{TAKE}-{TARGET}.wav   2,000 WAV files, 5 s, 44.1 kHz mono
    meta/esc50.csv                              filename,fold,target,category,esc10,src_file,take

Get it from the owners' repository, https://github.com/karolpiczak/ESC-50 (download the master
archive, about 600 MB, and unzip it). Licence CC BY-NC 3.0 (ESC-10 subset CC BY).

Labels and folds come from meta/esc50.csv only (never from file names: some copies rename the
files). Manifest: label = category, fold = fold (1-5), group = src_file (the Freesound recording;
the owners keep all clips of one recording in one fold). Audio -> 16 kHz mono FLAC.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ssamba.data.prepare import Checks, Item, PrepareError, Recipe, flac_target, read_csv_rows, require_dir, require_file, run_recipe

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
EXPECTED_CLIPS, EXPECTED_CLASSES, FOLDS = 2000, 50, ("1", "2", "3", "4", "5")


def collect(source: Path, checks: Checks) -> list[Item]:
    meta = require_file(source / "meta" / "esc50.csv", "ESC-50 metadata meta/esc50.csv")
    audio = require_dir(source / "audio", "ESC-50 audio folder audio/")
    rows = read_csv_rows(meta, COLUMNS)
    checks.count(f"{meta} rows", len(rows), EXPECTED_CLIPS)
    checks.count(f"{meta} classes", len({r["category"] for r in rows}), EXPECTED_CLASSES)
    items, missing = [], []
    for line_no, row in enumerate(rows, 2):
        if row["fold"] not in FOLDS:
            raise PrepareError(f"{meta}:{line_no}: fold must be one of 1-5, got {row['fold']!r}")
        path = audio / row["filename"]
        if not path.is_file():
            missing.append(row["filename"])
            continue
        items.append(Item(path, flac_target(row["filename"]), (row["category"],), fold=row["fold"], group=row["src_file"]))
    checks.missing("clips listed in meta/esc50.csv", missing, len(rows))
    return items


RECIPE = Recipe(name="esc50", description=__doc__, collect=collect, target_length=512)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
