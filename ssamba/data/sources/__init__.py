"""Corpus readers for the shard writer: each turns a dataset layout into uniform :class:`AudioRecord` s.

Sources (one module each): ``librispeech`` (LibriSpeech tree), ``audioset`` (clips + official
segment CSVs), ``folder`` (any folder of audio), ``ast_json`` (SSAST/AST ``{"data": [...]}``
datafiles) and ``manifest`` (CSV or JSONL with a ``path`` column). Every ``scan`` function returns
its records in a deterministic order.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

_KEY_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# Names made only of these characters keep their historical key (the name with '.' and '/' -> '_').
_KEY_PLAIN = re.compile(r"[A-Za-z0-9_./-]+")
MAX_KEY_LENGTH = 80
"""Longer keys are cut and hashed (a tar member name holds 100 characters, extensions included)."""
KEY_HASH_CHARS = 8


@dataclass
class AudioRecord:
    """One input clip for the shard writer.

    ``path`` is where to read it; ``rel_path`` is what goes into the shard metadata (relative to
    the dataset root, so shards do not leak machine paths). ``problem`` (``"<reason>: <detail>"``,
    e.g. ``"missing: no clip named after ..."``) is set when the source already knows the clip is
    unusable; the writer then reports it in the rejects file without reading anything.
    """

    key: str
    path: str
    source: str
    rel_path: str
    labels: list[int | str] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    problem: str | None = None


def key_hash(text: str) -> str:
    """Short stable hash of any name (file names that are not valid UTF-8 included)."""
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:KEY_HASH_CHARS]


def make_key(text: str) -> str:
    """A WebDataset-safe sample key (letters, digits, '_' and '-'; no dots, no slashes), stable for any name.

    Names made of ASCII letters, digits and ``_ - . /`` become the name with ``.`` and ``/`` replaced
    by ``_`` (``dog/001.wav`` -> ``dog_001_wav``). Any other character (spaces, non-ASCII, bytes that
    are not UTF-8) is replaced too and a hash of the exact name is appended (``a b.wav`` ->
    ``a_b_wav-<8 hex>``), so such names never collide; keys over :data:`MAX_KEY_LENGTH` characters
    are cut and hashed the same way.
    """
    key = _KEY_UNSAFE.sub("_", text)
    if not _KEY_PLAIN.fullmatch(text) or not key.strip("_") or len(key) > MAX_KEY_LENGTH:
        key = f"{key[: MAX_KEY_LENGTH - KEY_HASH_CHARS - 1]}-{key_hash(text)}"
    return key


def display_path(text: str) -> str:
    """A path as valid Unicode text for metadata: bytes that are not UTF-8 are written as ``\\xNN``."""
    return os.fsencode(text).decode("utf-8", "backslashreplace")


def parse_label_field(value: object, where: str) -> list[int | str]:
    """Labels given as a list, an int, or a comma-separated string -> list (numeric strings -> int)."""
    if value is None or value == "":
        return []
    if isinstance(value, bool):
        raise ValueError(f"{where}: labels must be ints, strings or a list of them, got {value!r}")
    if isinstance(value, int):
        return [value]
    if isinstance(value, str):
        items: list[object] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise ValueError(f"{where}: labels must be ints, strings or a list of them, got {value!r}")
    labels: list[int | str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool):
            labels.append(item)
        elif isinstance(item, str):
            labels.append(int(item) if item.lstrip("-").isdigit() else item)
        else:
            raise ValueError(f"{where}: label {item!r} is neither an int nor a string")
    return labels


def map_labels(labels: list[int | str], label_ids: dict[str, int] | None, where: str) -> list[int | str]:
    """Map string labels (e.g. AudioSet mids) to class indices when a label table is given."""
    if label_ids is None:
        return labels
    mapped: list[int | str] = []
    for label in labels:
        if isinstance(label, int):
            mapped.append(label)
        elif label in label_ids:
            mapped.append(label_ids[label])
        else:
            raise ValueError(f"{where}: label {label!r} is not in the class label table")
    return mapped
