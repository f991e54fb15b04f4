"""LibriSpeech tree -> records: ``<split>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac``.

``root`` may be the ``LibriSpeech`` folder (all splits) or one split folder. The transcript of
each utterance (from ``<speaker>-<chapter>.trans.txt``) is kept in the metadata as ``text``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ssamba.data.sources import AudioRecord

SOURCE_NAME = "librispeech"
_UTTERANCE = re.compile(r"^(\d+)-(\d+)-(\d+)$")


def _transcripts(chapter_dir: Path) -> dict[str, str]:
    texts: dict[str, str] = {}
    for trans in sorted(chapter_dir.glob("*.trans.txt")):
        for line_no, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt, _, text = line.partition(" ")
            if not _UTTERANCE.match(utt):
                raise ValueError(f"{trans}:{line_no}: expected '<speaker>-<chapter>-<utt> TEXT', got {line!r}")
            texts[utt] = text.strip()
    return texts


def scan(root: str | Path) -> list[AudioRecord]:
    """All utterances under ``root``, sorted by path."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"LibriSpeech root {root} is not a directory")
    records: list[AudioRecord] = []
    texts_by_dir: dict[Path, dict[str, str]] = {}
    for path in sorted(root.rglob("*.flac")):
        match = _UTTERANCE.match(path.stem)
        if match is None:
            continue
        if path.parent not in texts_by_dir:
            texts_by_dir[path.parent] = _transcripts(path.parent)
        rel = path.relative_to(root)
        split = rel.parts[0] if len(rel.parts) == 4 else root.name
        extra: dict[str, object] = {"speaker": int(match[1]), "chapter": int(match[2]), "split": split}
        text = texts_by_dir[path.parent].get(path.stem)
        if text is not None:
            extra["text"] = text
        records.append(AudioRecord(key=path.stem, path=str(path), source=SOURCE_NAME, rel_path=rel.as_posix(), extra=extra))
    if not records:
        raise ValueError(f"no LibriSpeech utterances ('<speaker>-<chapter>-<utt>.flac') under {root}")
    return records
