"""EPIC-SOUNDS: labelled sound events in EPIC-KITCHENS-100 audio, 44 classes, segments by time.

Expected input (SOURCE_DIR):

  epic_sounds/
    epic-sounds-annotations/EPIC_Sounds_train.csv        (https://github.com/epic-kitchens/epic-sounds-annotations)
    epic-sounds-annotations/EPIC_Sounds_validation.csv
    audio/...   the untrimmed audio of every video, one file per video_id, any nesting:
                <video_id>.wav (e.g. from ffmpeg -vn -acodec pcm_s16le -ac 1 -ar 24000, as the owners'
                baseline extracts it) or the EPIC-KITCHENS-100 videos themselves (P01/videos/P01_01.MP4,
                from https://github.com/epic-kitchens/epic-kitchens-download-scripts; needs PyAV)

Annotation columns: annotation_id,participant_id,video_id,start_timestamp,stop_timestamp,
start_sample,stop_sample,description,class,class_id (timestamps HH:MM:SS.mmm). The recognition
test labels are hidden (challenge server), so, as the published numbers, the validation
annotations (8,035 segments) are the test split here. CC BY-NC 4.0.

Manifest: path = the video's 16 kHz FLAC (audio/<video_id>.flac), start/end = the segment in
seconds, label = class (the owners' name), split = train / test (validation annotations),
group = video_id. Videos without audio are counted; a missing training video is an error unless --partial.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ssamba.audio.io import AUDIO_EXTENSIONS
from ssamba.data.prepare import (Checks, Item, PrepareError, Recipe, groups_or_blank, index_files, read_csv_rows, require_dir,
                                 require_file, run_recipe)

COLUMNS = ("annotation_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "class", "class_id")
FILES = {"EPIC_Sounds_train.csv": "train", "EPIC_Sounds_validation.csv": "test"}
EXPECTED_VALIDATION, EXPECTED_CLASSES = 8035, 44


def timestamp_seconds(text: str, where: str) -> float:
    """``HH:MM:SS.mmm`` -> seconds."""
    try:
        hours, minutes, seconds = text.split(":")
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    except ValueError as exc:
        raise PrepareError(f"{where}: expected a HH:MM:SS.mmm timestamp, got {text!r}") from exc


def collect(source: Path, checks: Checks) -> list[Item]:
    annotations = source / "epic-sounds-annotations"
    audio = index_files(require_dir(source / "audio", "per-video audio folder audio/"), AUDIO_EXTENSIONS)
    items, missing_videos = [], set()
    for name, split in FILES.items():
        path = require_file(annotations / name, f"EPIC-SOUNDS annotations {name}")
        rows = read_csv_rows(path, COLUMNS)
        if split == "test":
            checks.count(f"{name} segments", len(rows), EXPECTED_VALIDATION)
        for line_no, row in enumerate(rows, 2):
            where = f"{path}:{line_no}"
            video = row["video_id"]
            if video not in audio:
                missing_videos.add(video)
                continue
            start, end = timestamp_seconds(row["start_timestamp"], where), timestamp_seconds(row["stop_timestamp"], where)
            if end <= start:
                raise PrepareError(f"{where}: stop {row['stop_timestamp']} is not after start {row['start_timestamp']}")
            items.append(Item(audio[video], f"audio/{video}.flac", (row["class"],), split=split, group=video, start=start, end=end))
    checks.missing("videos named by the annotations have no audio", sorted(missing_videos),
                   len(missing_videos) + len({i.group for i in items}))
    checks.count("classes", len({i.labels[0] for i in items}), EXPECTED_CLASSES)
    return groups_or_blank(items, checks, "video")


RECIPE = Recipe(name="epic_sounds", description=__doc__, collect=collect, target_length=1024)

if __name__ == "__main__":
    sys.exit(run_recipe(RECIPE))
