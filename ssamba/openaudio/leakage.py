"""Leakage guard between the pretraining corpus and the probe tasks.

Two checks, both must pass before the corpus is sharded:

1. **Sources**: every corpus clip's ``origin`` is on the allow-list
   (:data:`ssamba.openaudio.sources.CORPUS_ORIGINS`) and matches no probe reservation
   (:data:`ssamba.openaudio.sources.PROBE_RESERVED`: the csound bank, festival, flite, 0 A.D. Foley).
2. **Clips**: no corpus clip has the fingerprint of a probe clip. A fingerprint is the SHA-1 of the
   first second of 16 kHz int16 samples after leading zeros, so a probe clip copied into the corpus,
   or a corpus segment that starts where a probe crop starts, is caught.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile

from ssamba.openaudio.render import SAMPLE_RATE, quantize, read_mono
from ssamba.openaudio.sources import CORPUS_ORIGINS, PROBE_RESERVED

FINGERPRINT_SAMPLES = SAMPLE_RATE


class LeakageError(RuntimeError):
    """A probe source or clip reached the pretraining corpus."""


def fingerprint(pcm: np.ndarray) -> str:
    """SHA-1 of the first :data:`FINGERPRINT_SAMPLES` int16 samples after the leading zeros."""
    pcm = np.asarray(pcm, np.int16)
    nonzero = np.flatnonzero(pcm)
    start = int(nonzero[0]) if nonzero.size else 0
    return hashlib.sha1(pcm[start : start + FINGERPRINT_SAMPLES].tobytes()).hexdigest()


def file_fingerprint(path: Path) -> str:
    """Fingerprint of an audio file: 16-bit 16 kHz files exactly as stored, others decoded and resampled."""
    info = soundfile.info(str(path))
    if info.samplerate == SAMPLE_RATE and info.subtype == "PCM_16":
        pcm = soundfile.read(str(path), dtype="int16", always_2d=True)[0]
        if pcm.shape[1] == 1:
            return fingerprint(pcm[:, 0])
    return fingerprint(quantize(read_mono(path)))


@dataclass(frozen=True)
class CorpusRow:
    """One corpus clip as the corpus manifest lists it."""

    path: str
    origin: str
    source_path: str
    fingerprint: str


def read_corpus_manifest(path: Path) -> list[CorpusRow]:
    """Rows of a corpus manifest (columns path, origin, source_path, fingerprint, ...)."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        need = {"path", "origin", "source_path", "fingerprint"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise ValueError(f"{path}: corpus manifest needs columns {sorted(need)}, got {reader.fieldnames}")
        return [CorpusRow(r["path"], r["origin"], r["source_path"], r["fingerprint"]) for r in reader]


def probe_fingerprints(manifests: Iterable[Path]) -> dict[str, str]:
    """Fingerprint -> ``manifest:path`` of every clip listed in the probe manifests (CSV, column ``path``)."""
    out: dict[str, str] = {}
    for manifest in manifests:
        with open(manifest, newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                clip = (manifest.parent / row["path"]).resolve()
                out[file_fingerprint(clip)] = f"{manifest}:{row['path']}"
    return out


def check_corpus(rows: Iterable[CorpusRow], probe_prints: dict[str, str], *, max_listed: int = 10) -> int:
    """Raise :class:`LeakageError` listing the offending clips; returns the number of clips checked."""
    problems: list[str] = []
    count = 0
    for row in rows:
        count += 1
        if row.origin not in CORPUS_ORIGINS:
            problems.append(f"{row.path}: origin {row.origin!r} is not on the corpus allow-list")
        for reservation in PROBE_RESERVED:
            if reservation.matches(row.origin, row.source_path):
                problems.append(f"{row.path}: {row.origin}:{row.source_path} is {reservation.why}")
        if row.fingerprint in probe_prints:
            problems.append(f"{row.path}: same audio as probe clip {probe_prints[row.fingerprint]}")
    if problems:
        shown = "\n  ".join(problems[:max_listed])
        more = f"\n  ... and {len(problems) - max_listed} more" if len(problems) > max_listed else ""
        raise LeakageError(f"{len(problems)} corpus clips leak probe sources:\n  {shown}{more}")
    return count
