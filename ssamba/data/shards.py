"""Write WebDataset tar shards of 16 kHz mono FLAC + JSON metadata from an audio corpus.

The `ssamba shards` command (its options and examples) is :mod:`ssamba.commands.shards`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ssamba.audio.fbank import FeatureConfig
from ssamba.audio.io import AudioDecodeError, decode_file, encode_flac, resample
from ssamba.data.parallel import WorkerDiedError, ordered_map
from ssamba.data.sources import KEY_HASH_CHARS, MAX_KEY_LENGTH, AudioRecord, display_path, key_hash

INDEX_FORMAT = "ssamba-shards/1"
INDEX_FILE = "index.json"
REJECTS_FILE = "rejects.jsonl"
PROGRESS_FILE = "progress.jsonl"
PLAN_FILE = "plan.json"
TAR_BLOCK = 512
TAR_END_BYTES = 2 * TAR_BLOCK  # two zero blocks close a tar
DETERMINISTIC_MTIME = 0
SECONDS_PER_HOUR = 3600.0
REJECT_REASONS = ("missing", "empty", "unreadable", "too_short", "non_finite", "bad_sample_rate", "too_loud", "duplicate")


@dataclass(frozen=True)
class ShardOptions:
    """How records become shards. ``fbank=True`` stores float16 Kaldi fbank instead of FLAC."""

    sample_rate: int = 16000
    max_count: int = 1000
    max_bytes: int = 1_000_000_000
    min_seconds: float = 0.3
    prefix: str = "shard"
    fbank: bool = False
    features: FeatureConfig = field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        if self.max_count < 1 or self.max_bytes < 1:
            raise ValueError(f"max_count and max_bytes must be >= 1, got {self.max_count}, {self.max_bytes}")
        if self.fbank and self.features.sample_rate != self.sample_rate:
            raise ValueError(f"fbank shards need features.sample_rate == sample_rate ({self.sample_rate})")

    def fingerprint_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["features"] = self.features.kaldi_options if self.fbank else None
        return out


@dataclass
class Encoded:
    """A record ready for the tar: its members (extension -> bytes) and its metadata."""

    index: int
    key: str
    members: dict[str, bytes]
    meta: dict[str, object]


@dataclass
class Reject:
    """A record the writer skipped, and why (one of :data:`REJECT_REASONS`)."""

    index: int
    path: str
    source: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "source": self.source, "reason": self.reason, "detail": self.detail}


def _tar_member_size(data: bytes) -> int:
    return TAR_BLOCK + -(-len(data) // TAR_BLOCK) * TAR_BLOCK


def _tar_file_size(content_bytes: int) -> int:
    """Size of a tar holding members of ``content_bytes`` (headers included): end blocks + record padding."""
    return -(-(content_bytes + TAR_END_BYTES) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def encode_record(index: int, record: AudioRecord, options: ShardOptions) -> Encoded | Reject:
    """Decode, check and encode one record (runs in a worker process)."""

    def reject(reason: str, detail: str) -> Reject:
        return Reject(index, record.rel_path, record.source, reason, display_path(detail))

    if record.problem:
        reason, _, detail = record.problem.partition(": ")
        return reject(reason if reason in REJECT_REASONS else "unreadable", detail or record.problem)
    try:
        audio, rate, channels = decode_file(record.path)
    except AudioDecodeError as exc:
        return reject(exc.reason if exc.reason in REJECT_REASONS else "unreadable", str(exc).removeprefix(f"{record.path}: "))
    except OSError as exc:
        return reject("unreadable", str(exc))
    segment = record.extra.get("segment")
    if segment is not None:  # labelled manifests: [start, end] seconds (end None: to the end of the file)
        start, end = segment
        audio = audio[round(start * rate) : None if end is None else round(end * rate)]
    if audio.size == 0:
        return reject("empty", "no audio samples" if segment is None else f"segment {segment} holds no samples")
    clipped = bool(np.abs(audio).max() > 1.0)
    audio = resample(audio, rate, options.sample_rate)
    duration = audio.size / options.sample_rate
    if duration < options.min_seconds:
        return reject("too_short", f"{duration:.3f} s < min_seconds {options.min_seconds}")
    meta: dict[str, object] = {
        **record.extra,
        "key": record.key,
        "source": record.source,
        "path": record.rel_path,
        "duration": round(duration, 6),
        "sample_rate": options.sample_rate,
        "original_sample_rate": rate,
        "original_channels": channels,
        "labels": record.labels,
    }
    if clipped:
        meta["clipped"] = True
    members: dict[str, bytes] = {}
    if options.fbank:
        raw = options.features.raw_fbank(torch.from_numpy(np.clip(audio, -1.0, 1.0)))
        buffer = io.BytesIO()
        np.save(buffer, raw.numpy().astype(np.float16))
        members["fbank.npy"] = buffer.getvalue()
        meta["fbank"] = options.features.kaldi_options
    else:
        members["flac"] = encode_flac(audio, options.sample_rate)
    members["json"] = json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return Encoded(index, record.key, members, meta)


def _init_worker() -> None:
    torch.set_num_threads(1)


def _encode_task(task: tuple[int, AudioRecord, ShardOptions]) -> Encoded | Reject:
    return encode_record(*task)


class _TarShard:
    """A shard being written to ``<name>.tmp``; renamed to ``<name>`` on close (atomic)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.USTAR_FORMAT)
        self.count = 0
        self.seconds = 0.0
        self.content_bytes = 0
        self.clipped = 0
        self.sources: Counter[str] = Counter()

    def add(self, sample: Encoded) -> None:
        for ext, data in sample.members.items():
            info = tarfile.TarInfo(f"{sample.key}.{ext}")
            info.size, info.mtime, info.mode = len(data), DETERMINISTIC_MTIME, 0o644
            self.tar.addfile(info, io.BytesIO(data))
            self.content_bytes += _tar_member_size(data)
        self.count += 1
        self.seconds += float(sample.meta["duration"])
        self.clipped += int(bool(sample.meta.get("clipped")))
        self.sources[str(sample.meta["source"])] += 1

    def close(self) -> int:
        self.tar.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size


def _fingerprint(records: list[AudioRecord], options: ShardOptions) -> str:
    digest = hashlib.sha256(json.dumps(options.fingerprint_dict(), sort_keys=True, default=str).encode())
    for record in records:
        item = [record.key, record.rel_path, record.labels, record.extra, record.problem, record.source]
        digest.update(json.dumps(item, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def unique_keys(records: list[AudioRecord]) -> list[AudioRecord]:
    """Records with distinct keys: inputs that share a key get ``<key>-<hash of rel_path>`` (all of
    them, so the result does not depend on input order); a second record of the same file is
    marked ``duplicate`` (listed in rejects.jsonl)."""
    by_key: dict[str, list[int]] = defaultdict(list)
    for index, record in enumerate(records):
        by_key[record.key].append(index)
    out = list(records)
    first_of_path: dict[str, int] = {}
    for key, indices in by_key.items():
        if len(indices) == 1:
            continue
        for index in indices:
            record = records[index]
            earlier = first_of_path.setdefault(os.path.normpath(record.path), index)
            problem = record.problem
            if earlier != index and problem is None:
                problem = f"duplicate: the same file as input {earlier} ({records[earlier].rel_path})"
            out[index] = replace(record, key=f"{key[: MAX_KEY_LENGTH - KEY_HASH_CHARS - 1]}-{key_hash(record.rel_path)}", problem=problem)
    seen: dict[str, str] = {}
    for record in out:
        if record.problem is None and record.key in seen:
            raise ValueError(f"two inputs map to the sample key {record.key!r}: {seen[record.key]} and {record.rel_path}; rename one")
        seen[record.key] = record.rel_path
    return out


def _load_progress(out_dir: Path) -> list[dict[str, object]]:
    """Finished spans from an earlier run, up to the first one whose shard is missing or damaged."""
    progress_path = out_dir / PROGRESS_FILE
    if not progress_path.exists():
        return []
    done: list[dict[str, object]] = []
    for line in progress_path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            break
        shard = entry.get("shard")
        if shard is not None:
            path = out_dir / str(shard["name"])
            if not path.exists() or path.stat().st_size != shard["bytes"]:
                break
        done.append(entry)
    return done


def _prepare_output(out_dir: Path, prefix: str, fingerprint: str, n_records: int, overwrite: bool) -> list[dict[str, object]]:
    """Create/validate the output folder; return the finished spans to skip.

    Only files this writer owns are removed: ``<prefix>-*.tar(.tmp)`` and its bookkeeping files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ours = [*out_dir.glob(f"{prefix}-*.tar"), *out_dir.glob(f"{prefix}-*.tar.tmp")]
    plan_path = out_dir / PLAN_FILE
    if plan_path.exists() and not overwrite:
        plan = json.loads(plan_path.read_text(encoding="utf-8"))
        if plan.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{out_dir} holds shards written from other inputs or options ({plan_path}); "
                "choose another output folder or pass --overwrite"
            )
        done = _load_progress(out_dir)
    else:
        for name in (PROGRESS_FILE, INDEX_FILE, REJECTS_FILE):
            (out_dir / name).unlink(missing_ok=True)
        plan_path.write_text(json.dumps({"fingerprint": fingerprint, "records": n_records}) + "\n", encoding="utf-8")
        done = []
    # Rewrite progress to the valid prefix, and drop shards that belong to later (redone) spans.
    keep = {str(entry["shard"]["name"]) for entry in done if entry.get("shard")}
    for path in ours:
        if path.name not in keep:
            path.unlink()
    (out_dir / PROGRESS_FILE).write_text("".join(json.dumps(entry) + "\n" for entry in done), encoding="utf-8")
    return done


def _brace_pattern(names: list[str], prefix: str) -> str | None:
    if not names:
        return None
    first, last = names[0][len(prefix) + 1 : -4], names[-1][len(prefix) + 1 : -4]
    return f"{prefix}-{{{first}..{last}}}.tar" if first != last else names[0]


def write_shards(
    records: list[AudioRecord],
    out_dir: str | Path,
    options: ShardOptions = ShardOptions(),
    workers: int = 1,
    overwrite: bool = False,
    log: Callable[[str], None] = lambda message: print(message, file=sys.stderr),
) -> dict[str, object]:
    """Encode ``records`` into shards under ``out_dir``; returns the index (also saved as index.json).

    Raises :class:`~ssamba.data.parallel.WorkerDiedError` if a worker process dies; the finished
    shards are kept and the same call resumes after them."""
    out_dir = Path(out_dir)
    records = unique_keys(records)
    fingerprint = _fingerprint(records, options)
    done = _prepare_output(out_dir, options.prefix, fingerprint, len(records), overwrite)
    start = int(done[-1]["end"]) if done else 0
    if done:
        log(f"resuming at input {start} of {len(records)} ({sum(1 for e in done if e.get('shard'))} shards done)")
    shard_number = sum(1 for entry in done if entry.get("shard"))
    progress_file = open(out_dir / PROGRESS_FILE, "a", encoding="utf-8")

    current: _TarShard | None = None
    pending_rejects: list[Reject] = []
    span_start = start

    def finish(end: int) -> None:
        nonlocal current, pending_rejects, span_start, shard_number
        entry: dict[str, object] = {"start": span_start, "end": end, "shard": None}
        if current is not None:
            size = current.close()
            entry["shard"] = {
                "name": current.path.name, "count": current.count, "seconds": round(current.seconds, 6),
                "bytes": size, "sources": dict(current.sources), "clipped": current.clipped,
            }
            log(f"{current.path.name}: {current.count} clips, {current.seconds / SECONDS_PER_HOUR:.3f} h, {size / 1e6:.1f} MB")
            shard_number += 1
            current = None
        entry["rejects"] = [r.to_dict() for r in pending_rejects]
        progress_file.write(json.dumps(entry) + "\n")
        progress_file.flush()
        os.fsync(progress_file.fileno())
        done.append(entry)
        pending_rejects, span_start = [], end

    tasks = ((i, records[i], options) for i in range(start, len(records)))
    results = ordered_map(_encode_task, tasks, workers, _init_worker if workers > 1 else None, "decoding audio")
    try:
        for result in results:
            if isinstance(result, Reject):
                pending_rejects.append(result)
                continue
            size = sum(_tar_member_size(data) for data in result.members.values())
            if current is not None and (current.count >= options.max_count or _tar_file_size(current.content_bytes + size) > options.max_bytes):
                finish(result.index)
            if current is None:
                current = _TarShard(out_dir / f"{options.prefix}-{shard_number:06d}.tar")
            current.add(result)
        if current is not None or pending_rejects:
            finish(len(records))
    except WorkerDiedError as exc:
        raise WorkerDiedError(f"{exc}; the {shard_number} shards finished so far are kept: rerun the same command to resume") from exc
    finally:
        results.close()
        progress_file.close()
        if current is not None:
            current.tar.close()
            current.tmp.unlink(missing_ok=True)
    return _write_index(out_dir, done, options, len(records))


def _write_index(out_dir: Path, done: list[dict[str, object]], options: ShardOptions, n_records: int) -> dict[str, object]:
    shards = [entry["shard"] for entry in done if entry.get("shard")]
    rejects = [reject for entry in done for reject in entry["rejects"]]
    with open(out_dir / REJECTS_FILE, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(reject, ensure_ascii=False) + "\n" for reject in rejects)
    per_source: Counter[str] = Counter()
    for shard in shards:
        per_source.update(shard["sources"])
    names = [str(shard["name"]) for shard in shards]
    index: dict[str, object] = {
        "format": INDEX_FORMAT,
        "content": "fbank" if options.fbank else "flac",
        "sample_rate": options.sample_rate,
        "inputs": n_records,
        "count": sum(int(shard["count"]) for shard in shards),
        "seconds": round(sum(float(shard["seconds"]) for shard in shards), 3),
        "hours": round(sum(float(shard["seconds"]) for shard in shards) / SECONDS_PER_HOUR, 6),
        "bytes": sum(int(shard["bytes"]) for shard in shards),
        "sources": dict(sorted(per_source.items())),
        "clipped": sum(int(shard.get("clipped", 0)) for shard in shards),
        "pattern": _brace_pattern(names, options.prefix),
        "shards": shards,
        "rejects": {"count": len(rejects), "by_reason": dict(Counter(r["reason"] for r in rejects)), "file": REJECTS_FILE},
        "options": {k: v for k, v in options.fingerprint_dict().items() if k != "features"},
    }
    if options.fbank:
        index["fbank"] = options.features.kaldi_options
    (out_dir / INDEX_FILE).write_text(json.dumps(index, indent=1) + "\n", encoding="utf-8")
    return index
