"""CSV or JSONL manifest -> records. Required field ``path``; optional ``labels`` and ``key``.

* CSV: header row; ``labels`` is a comma-separated string (quote it). Other columns are kept
  in the metadata.
* JSONL: one object per line; ``labels`` may be a list, an int or a comma-separated string.

Relative paths are resolved against the manifest's folder. With a label table
(``class_labels_indices.csv``) string labels (mids) become class indices.
"""

from __future__ import annotations

import csv
import json
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


def scan(manifest_path: str | Path, class_labels_csv: str | Path | None = None) -> list[AudioRecord]:
    """Records in manifest order; an explicit ``key`` column overrides the path-derived key."""
    manifest_path = Path(manifest_path)
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
