"""CSV or JSONL manifest -> records. Required field ``path``; optional ``labels`` and ``key``.

* CSV in the labelled-data format (a ``label`` column; see :mod:`ssamba.data.labelled`): read and
  validated by :func:`ssamba.data.labelled.read_labelled`; labels stay class names (the class list
  goes to the shard folder's ``classes.json``), ``split``/``fold``/``group`` go into each sample's
  metadata, and ``start``/``end`` segments are cut when the shards are written.
* CSV with a ``labels`` column (the earlier layout): a comma-separated string (quote it). Other
  columns are kept in the metadata.
* JSONL: one object per line; ``labels`` may be a list, an int or a comma-separated string.

Relative paths are resolved against the manifest's folder. With a label table
(``class_labels_indices.csv``) string labels (mids) become class indices.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from ssamba.data.sources import AudioRecord, make_key
from ssamba.data.sources.ast_json import records_from_entries
from ssamba.data.sources.audioset import read_class_labels

SOURCE_NAME = "manifest"


def _read_rows(path: Path) -> list[dict[str, object]]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames is None or "path" not in reader.fieldnames:
                raise ValueError(f"{path}: the CSV header must contain a 'path' column, got {reader.fieldnames}")
            return [dict(row) for row in reader]
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_no}: not valid JSON: {exc}") from exc
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {row!r}")
            rows.append(row)
        return rows
    raise ValueError(f"{path}: manifest must be .csv or .jsonl")


def is_labelled(manifest_path: str | Path) -> bool:
    """True for a CSV in the labelled-data format (its header has a ``label`` column)."""
    path = Path(manifest_path)
    if path.suffix.lower() != ".csv":
        return False
    with open(path, newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), [])
    return "label" in [column.strip() for column in header]


def _labelled_records(manifest_path: Path, class_labels_csv: str | Path | None) -> list[AudioRecord]:
    from ssamba.data.labelled import read_labelled

    data = read_labelled(manifest_path, class_table=class_labels_csv)
    common = os.path.commonpath([str(clip.path.parent) for clip in data.clips])
    records = []
    for clip in data.clips:
        rel = Path(os.path.relpath(clip.path, common)).as_posix()
        key = str(Path(rel).with_suffix(""))
        extra: dict[str, object] = {name: getattr(clip, name) for name in ("split", "fold", "group") if getattr(clip, name) is not None}
        if clip.start is not None or clip.end is not None:
            extra["segment"] = [clip.start or 0.0, clip.end]
            key += f"_{clip.start or 0:g}-{'end' if clip.end is None else f'{clip.end:g}'}"
        records.append(AudioRecord(make_key(key), str(clip.path), SOURCE_NAME, rel, list(clip.labels), extra))
    return records


def scan(manifest_path: str | Path, class_labels_csv: str | Path | None = None) -> list[AudioRecord]:
    """Records in manifest order; an explicit ``key`` column overrides the path-derived key."""
    manifest_path = Path(manifest_path)
    if is_labelled(manifest_path):
        return _labelled_records(manifest_path, class_labels_csv)
    rows = _read_rows(manifest_path)
    entries = []
    for index, row in enumerate(rows):
        if not isinstance(row.get("path"), str) or not row["path"]:
            raise ValueError(f"{manifest_path}: row {index + 1} has no 'path': {row!r}")
        extra = {k: v for k, v in row.items() if k not in ("path", "labels", "key")}
        entries.append((row["path"], row.get("labels"), extra))
    label_ids = read_class_labels(class_labels_csv) if class_labels_csv else None
    records = records_from_entries(entries, manifest_path.parent, SOURCE_NAME, str(manifest_path), label_ids)
    for record, row in zip(records, rows):
        if row.get("key"):
            record.key = make_key(str(row["key"]))
    return records
