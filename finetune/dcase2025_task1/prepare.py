"""DCASE2025 Task 1: TAU Urban Acoustic Scenes 2022 Mobile (development), the 25 % training split.

Expected input (SOURCE_DIR = the unpacked development set, Zenodo record 6337421: the archives
TAU-urban-acoustic-scenes-2022-mobile-development.{audio.1..16,meta,doc}.zip unzipped in one folder;
Tampere University licence, academic non-commercial use), plus the challenge's split files:

  TAU-urban-acoustic-scenes-2022-mobile-development/
    audio/<scene>-<city>-<location>-<segment>-<k>-<device>.wav   230,350 one-second WAVs, 44.1 kHz
    meta.csv                          tab-separated: filename scene_label identifier source_label
    evaluation_setup/fold1_train.csv  fold1_evaluate.csv  fold1_test.csv
    split_setup/split25.csv  test.csv  the DCASE2025 splits (tab-separated, column filename), from the
                                       GitHub release "files" of CPJKU/dcase2024_task1_baseline

DCASE2025 allows training only on split25.csv; test.csv (the development test split) is for
evaluation only. Manifest: label = scene_label, split = train (split25) / test (test.csv),
group = identifier (<city>-<location>: the split is location-disjoint, so the validation set the
fine-tuning holds out of split25 is too); the recording device is the file name's last field
(a, b, c real; s1-s6 simulated; s4-s6 only in test). Only the clips of the two splits are
converted to 16 kHz mono FLAC.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ssamba.data.prepare import Checks, Item, PrepareError, Recipe, flac_target, read_csv_rows, require_file, run_recipe

EXPECTED_META_ROWS, EXPECTED_SCENES = 230_350, 10
SPLIT_FILES = {"split25.csv": "train", "test.csv": "test"}


def device_of(path: str) -> str:
    """The recording device of a TAU22 file name (its last '-' field): a, b, c, s1 ... s6."""
    return Path(path).stem.rsplit("-", 1)[-1]


def collect(source: Path, checks: Checks) -> list[Item]:
    meta_path = require_file(source / "meta.csv", "meta.csv (from the .meta.zip archive)")
    meta = {row["filename"]: row for row in read_csv_rows(meta_path, ("filename", "scene_label", "identifier", "source_label"), delimiter="\t")}
    checks.count(f"{meta_path.name} rows", len(meta), EXPECTED_META_ROWS)
    checks.count("scenes", len({r["scene_label"] for r in meta.values()}), EXPECTED_SCENES)
    items, missing = [], []
    for name, split in SPLIT_FILES.items():
        path = require_file(source / "split_setup" / name, f"DCASE2025 split file split_setup/{name} (CPJKU/dcase2024_task1_baseline release 'files')")
        rows = read_csv_rows(path, ("filename",), delimiter="\t")
        for line_no, row in enumerate(rows, 2):
            record = meta.get(row["filename"])
            if record is None:
                raise PrepareError(f"{path}:{line_no}: {row['filename']} is not in meta.csv (split file of another edition?)")
            audio = source / row["filename"]
            if not audio.is_file():
                missing.append(row["filename"])
                continue
            if device_of(row["filename"]) != record["source_label"]:
                raise PrepareError(f"{path}:{line_no}: device in the name of {row['filename']} differs from meta.csv's {record['source_label']}")
            items.append(Item(audio, flac_target(Path(row["filename"]).name), (record["scene_label"],), split=split, group=record["identifier"]))
    checks.missing("clips of split25.csv/test.csv", missing, len(items) + len(missing))
    return items


RECIPE = Recipe(name="dcase2025_task1", description=__doc__, collect=collect, target_length=100)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
