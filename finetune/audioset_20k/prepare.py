"""AudioSet-20K: the balanced train segments (22,160) and the eval segments (20,371), 527 classes.

Expected input (SOURCE_DIR): Google publishes only metadata; the clips are downloaded from YouTube
by the user (e.g. with a downloader such as yt-dlp), so SOURCE_DIR holds the owners' CSVs and a
folder of clips named after their YouTube id:

  audioset/
    balanced_train_segments.csv   # Segments csv created ... / # num_ytids=22160, num_segs=22160, ...
    eval_segments.csv             # ... num_segs=20371 ...
    class_labels_indices.csv      index,mid,display_name (527 rows)
    audio/...                     one clip per segment, any nesting and format: <YTID>.flac,
                                  <YTID>_<start>.wav, Y<YTID>_<start>_<end>.m4a, ... (cut to the segment)

The CSVs come from http://storage.googleapis.com/us_audioset/youtube_corpus/v1/csv/ (segments:
`YTID, start_seconds, end_seconds, "mid1,mid2"` after three # header lines). Many videos are no
longer online: missing clips are counted and reported, never fatal (report the count you used).

Manifest: label = the segment's MIDs joined with ';' (class order: sorted MIDs, display names in
class_labels_indices.csv), split = train (balanced) / test (eval), group = YouTube id. m4a/webm
clips need PyAV (pip install 'ssamba[decode]').
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ssamba.data.prepare import Checks, Item, PrepareError, Recipe, flac_target, require_dir, require_file, run_recipe
from ssamba.data.sources.audioset import scan

SEGMENT_FILES = {"balanced_train_segments": ("train", 22_160), "eval_segments": ("test", 20_371)}
EXPECTED_CLASSES = 527
HEADER_COUNT = re.compile(r"num_segs=(\d+)")


def declared_segments(path: Path) -> int:
    """The ``num_segs=`` count of a segment CSV's header."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            match = HEADER_COUNT.search(line)
            if match:
                return int(match.group(1))
    raise PrepareError(f"{path}: no '# num_segs=N' header line (is this an AudioSet segment CSV?)")


def collect(source: Path, checks: Checks) -> list[Item]:
    csvs = [require_file(source / f"{stem}.csv", f"AudioSet segment list {stem}.csv") for stem in SEGMENT_FILES]
    labels = require_file(source / "class_labels_indices.csv", "class_labels_indices.csv")
    clips = require_dir(source / "audio", "folder of downloaded clips audio/")
    records = scan(clips, csvs, labels)
    for path in csvs:
        split, published = SEGMENT_FILES[path.stem]
        rows = sum(r.extra["split"] == path.stem for r in records)
        if rows != declared_segments(path):
            raise PrepareError(f"{path}: {rows} segment rows but the header declares {declared_segments(path)} (truncated file?)")
        checks.count(f"{path.name} segments", rows, published)
    items, missing = [], []
    for record in records:
        ytid = record.extra["ytid"]
        if record.problem:
            missing.append(ytid)
            continue
        split = SEGMENT_FILES[record.extra["split"]][0]
        target = flac_target(Path(split) / ytid)
        items.append(Item(Path(record.path), target, tuple(record.extra["mids"]), split=split, group=ytid))
    checks.missing("segments' clips (videos no longer online are expected)", missing, len(records), fatal=False)
    with open(labels, encoding="utf-8") as handle:
        checks.count(f"{labels.name} classes", sum(1 for _ in handle) - 1, EXPECTED_CLASSES)
    return items


RECIPE = Recipe(name="audioset_20k", description=__doc__, collect=collect, target_length=1024)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
