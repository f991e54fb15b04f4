"""AudioSet clips + official segment CSVs -> records with class-index labels.

Inputs:
  * the segment CSVs (``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``,
    ``eval_segments.csv``): comment lines starting with ``#``, then
    ``YTID, start_seconds, end_seconds, "mid1,mid2,..."``;
  * ``class_labels_indices.csv`` (``index,mid,display_name``) to turn mids into indices;
  * a folder of downloaded clips. A file belongs to a segment when its name starts with the
    11-character YouTube ID, optionally after a ``Y`` (``<YTID>.m4a``, ``<YTID>_30000.wav``,
    ``Y<YTID>_30.000_40.000.wav`` ...). Segments without a file are reported as ``missing``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ssamba.audio.io import AUDIO_EXTENSIONS
from ssamba.data.sources import AudioRecord, make_key

SOURCE_NAME = "audioset"
YTID_LENGTH = 11
CLASS_TABLE_COLUMNS = ("index", "mid", "display_name")


def read_class_labels(path: str | Path) -> dict[str, int]:
    """``class_labels_indices.csv`` -> {mid: index}."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not set(CLASS_TABLE_COLUMNS[:2]) <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with columns {','.join(CLASS_TABLE_COLUMNS)}, got {reader.fieldnames}")
        table: dict[str, int] = {}
        for line_no, row in enumerate(reader, 2):
            try:
                table[row["mid"].strip()] = int(row["index"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line_no}: bad row {row}: {exc}") from exc
    if not table:
        raise ValueError(f"{path}: no class labels")
    return table


def read_segments(path: str | Path) -> list[tuple[str, float, float, list[str]]]:
    """An official segment CSV -> [(ytid, start, end, [mids])] in file order."""
    segments = []
    with open(path, newline="", encoding="utf-8") as handle:
        for line_no, row in enumerate(csv.reader(handle, skipinitialspace=True), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 4:
                raise ValueError(f"{path}:{line_no}: expected 'YTID, start, end, \"labels\"', got {row}")
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError as exc:
                raise ValueError(f"{path}:{line_no}: bad start/end seconds in {row}") from exc
            segments.append((row[0].strip(), start, end, [mid.strip() for mid in row[3].split(",") if mid.strip()]))
    return segments


def _index_clips(clips_dir: Path, wanted: set[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in sorted(clips_dir.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        stem = path.stem
        for ytid in (stem[:YTID_LENGTH], stem[1 : YTID_LENGTH + 1] if stem.startswith("Y") else None):
            if ytid in wanted and ytid not in found:
                found[ytid] = path
                break
    return found


def scan(clips_dir: str | Path, segment_csvs: list[str | Path], class_labels_csv: str | Path) -> list[AudioRecord]:
    """One record per segment row of ``segment_csvs`` (in the given order); missing files get ``problem``."""
    clips_dir = Path(clips_dir)
    if not clips_dir.is_dir():
        raise FileNotFoundError(f"AudioSet clips folder {clips_dir} is not a directory")
    if not segment_csvs:
        raise ValueError("AudioSet needs at least one segment CSV (balanced/unbalanced/eval)")
    label_ids = read_class_labels(class_labels_csv)
    rows = [(Path(csv_path).stem, segment) for csv_path in segment_csvs for segment in read_segments(csv_path)]
    clips = _index_clips(clips_dir, {segment[0] for _, segment in rows})
    records: list[AudioRecord] = []
    seen: set[str] = set()
    for split, (ytid, start, end, mids) in rows:
        unknown = [mid for mid in mids if mid not in label_ids]
        if unknown:
            raise ValueError(f"segment {ytid} in {split}.csv has labels {unknown} not in {class_labels_csv}")
        if ytid in seen:
            raise ValueError(f"segment {ytid} appears twice in the segment CSVs ({split}.csv)")
        seen.add(ytid)
        path = clips.get(ytid)
        records.append(
            AudioRecord(
                key=make_key(ytid),
                path=str(path) if path else "",
                source=SOURCE_NAME,
                rel_path=path.relative_to(clips_dir).as_posix() if path else ytid,
                labels=[label_ids[mid] for mid in mids],
                extra={"ytid": ytid, "start": start, "end": end, "split": split, "mids": mids},
                problem=None if path else f"missing: no clip named after YouTube ID {ytid} under {clips_dir}",
            )
        )
    return records
