"""SSAST/AST JSON datafile -> records: ``{"data": [{"wav": <path>, "labels": "<mid>,<mid>"}, ...]}``.

Relative ``wav`` paths are resolved against the JSON file's folder. With a label table
(``class_labels_indices.csv``) mids become class indices; without one they stay strings.
Keys are the paths relative to the entries' common folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ssamba.data.sources import AudioRecord, make_key, map_labels, parse_label_field
from ssamba.data.sources.audioset import read_class_labels

SOURCE_NAME = "ast_json"


def records_from_entries(
    entries: list[tuple[str, object, dict[str, object]]], base_dir: Path, source_name: str, where: str,
    label_ids: dict[str, int] | None,
) -> list[AudioRecord]:
    """(path, labels, extra) triples -> records keyed by path relative to their common folder."""
    if not entries:
        raise ValueError(f"{where}: no entries")
    resolved = [os.path.normpath(base_dir / path) for path, _, _ in entries]
    common = os.path.commonpath([os.path.dirname(p) for p in resolved])
    records = []
    for index, ((_, labels, extra), path) in enumerate(zip(entries, resolved)):
        item = f"{where} entry {index}"
        rel = Path(os.path.relpath(path, common)).as_posix()
        records.append(
            AudioRecord(
                key=make_key(str(Path(rel).with_suffix(""))),
                path=path,
                source=source_name,
                rel_path=rel,
                labels=map_labels(parse_label_field(labels, item), label_ids, item),
                extra=extra,
            )
        )
    return records


def read_datafile(json_path: Path) -> list[dict]:
    """The entries of an SSAST/AuM data list (``{"data": [{"wav": ..., "labels": ...}, ...]}``), in file
    order, each checked to have a ``wav`` path; errors name the file and the 0-based entry."""
    try:
        content = json.loads(json_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path}: not valid JSON: {exc}") from exc
    if not isinstance(content, dict) or not isinstance(content.get("data"), list):
        raise ValueError(f'{json_path}: expected {{"data": [{{"wav": ..., "labels": ...}}, ...]}}')
    for index, entry in enumerate(content["data"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("wav"), str) or not entry["wav"]:
            raise ValueError(f'{json_path}: entry {index} has no "wav" path: {entry!r}')
    return content["data"]


def scan(json_path: str | Path, class_labels_csv: str | Path | None = None) -> list[AudioRecord]:
    """Records in datafile order."""
    json_path = Path(json_path)
    entries = []
    for entry in read_datafile(json_path):
        extra = {k: v for k, v in entry.items() if k not in ("wav", "labels")}
        entries.append((entry["wav"], entry.get("labels"), extra))
    label_ids = read_class_labels(class_labels_csv) if class_labels_csv else None
    return records_from_entries(entries, json_path.parent, SOURCE_NAME, str(json_path), label_ids)
