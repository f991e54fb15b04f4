"""Streaming loader over WebDataset tar shards: mixing, node/worker splitting, skip-and-count.

Typical use (pretraining, 2 sources mixed 70/30)::

    from ssamba.audio.fbank import FeatureConfig
    from ssamba.data.stream import make_loader

    loader = make_loader(
        {"shards/audioset": 0.7, "shards/librispeech": 0.3},   # folders, globs, brace patterns, lists
        FeatureConfig(crop="random"), batch_size=24, num_workers=4, seed=0, epoch_length=5000,
    )
    for epoch in range(10):                 # each full pass advances loader.epoch (reshuffles)
        for batch in loader:
            fbank = batch["fbank"]          # (B, target_length, num_mel_bins) float32, normalised
            labels = batch["labels"]        # (B, num_classes) float if num_classes, else list of lists
        print(loader.skipped)               # corrupt samples skipped in that pass (all workers)
    state = loader.state_dict()             # {"seed", "epoch", "batches_in_epoch", ...} for resume

Each batch is a dict: ``fbank``, ``labels``, ``keys``, ``sources`` (source name per sample).

Splitting. Ranks come from ``rank``/``world_size``, else torch.distributed when initialised, else
the ``RANK``/``WORLD_SIZE`` environment. Every (rank, worker) pair is one *slot*.

* ``resampled=False`` (default): each epoch the shard list of every source is shuffled with a seed
  shared by all ranks, and slot ``s`` of ``n`` owns shards ``s, s+n, ...``: slots see disjoint
  samples. Needs at least ``world_size * max(1, num_workers)`` shards per source. With
  ``epoch_length`` a slot cycles over its own shards until its share of the epoch is done (so all
  ranks yield exactly ``epoch_length`` batches and DDP never hangs on uneven shards); without it,
  one pass (single process only), ending when any source runs out.
* ``resampled=True``: every slot draws shards with replacement from its own seeded stream; needs
  ``epoch_length``. Use when shards are few or very uneven.

``epoch_length`` counts batches *per rank* per epoch (split across that rank's workers).

Mixing: for each sample a slot picks a source with probability proportional to its weight.

Shuffling: shard order per epoch, then a buffer of ``shuffle_buffer`` *undecoded* samples per
source and slot (memory: buffer x compressed clip size).

Seeds: every random choice derives from ``(seed, epoch, rank, worker, resume offset)`` and is
logged at INFO level, so a resumed run (``load_state_dict``) reshuffles deterministically. Resume
is exact at epoch boundaries; mid-epoch, the remaining ``epoch_length - batches_in_epoch``
batches come from a fresh deterministic draw.

Errors: a sample that cannot be decoded (or gives non-finite features) is skipped, counted in
``loader.skipped`` and logged (first few per worker); an unreadable shard is skipped likewise, and
so is every sample lost to a damaged tar header or cut off a shard (counted exactly when the
shard's folder has the index.json that ``ssamba shards`` writes). Configuration errors (feature
options that do not match precomputed fbank shards, labels outside ``num_classes``) stop the
loader, and so does :class:`NoReadableSamplesError`: raised when the loader is built if no shard
of a source has a readable first member (0-byte, empty or non-tar files), and when a whole pass
gives no batch, so a training loop never spins on unreadable data.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import io
import itertools
import json
import logging
import os
import random
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import braceexpand
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ssamba.audio.augment import AugmentConfig, add_noise_and_roll, mixup_batch, mixup_waveforms, spec_augment
from ssamba.audio.fbank import FeatureConfig, normalize, pad_or_crop
from ssamba.audio.io import decode_bytes
from ssamba.errors import UserError

logger = logging.getLogger(__name__)

AUDIO_MEMBER_EXTENSIONS = ("flac", "wav", "ogg", "mp3")
FBANK_MEMBER = "fbank.npy"
DEFAULT_SHUFFLE_BUFFER = 512
MIXUP_POOL_SIZE = 32  # recent decoded clips that waveform mixup draws partners from
LOGGED_SKIPS_PER_WORKER = 5
INDEX_FILE = "index.json"
DAMAGE_KEY = "__damage__"
LOST_KEY = "__lost__"
_PRIVATE_KEYS = ("_worker", "_skipped")


class LoaderConfigError(UserError, RuntimeError):
    """The data do not fit the loader's configuration; fatal (not a skippable corrupt sample)."""


class NoReadableSamplesError(LoaderConfigError, ValueError):
    """No shard of a source can be read, or a whole pass over the shards gave no batch."""


def expand_shards(spec: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    """Shard paths from a list, a brace pattern (``a-{000..009}.tar``), a glob, a shard folder
    (its index.json, else its ``*.tar``), an index.json file, or a single tar."""
    if not isinstance(spec, (str, os.PathLike)):
        return [path for item in spec for path in expand_shards(item)]
    text = os.fspath(spec)
    path = Path(text)
    if path.is_dir():
        index = path / INDEX_FILE
        if index.exists():
            return expand_shards(index)
        found = sorted(str(p) for p in path.glob("*.tar"))
    elif path.suffix == ".json" and path.is_file():
        content = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(content, dict) or "shards" not in content:
            raise ValueError(f"{path}: not a shard index (no 'shards' list)")
        found = [str(path.parent / shard["name"]) for shard in content["shards"]]
    elif path.is_file():
        found = [text]
    else:
        found = []
        for pattern in braceexpand.braceexpand(text):
            matches = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
            found.extend(match for match in matches if os.path.isfile(match))
    if not found:
        raise FileNotFoundError(f"no shards found for {text!r}")
    return found


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values (stable across processes and Python runs)."""
    digest = hashlib.sha256(repr(parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def resolve_rank(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size) from the arguments, torch.distributed, or RANK/WORLD_SIZE; default (0, 1)."""
    if rank is not None and world_size is not None:
        resolved = (rank, world_size)
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        resolved = (torch.distributed.get_rank(), torch.distributed.get_world_size())
    else:
        resolved = (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))
    if not 0 <= resolved[0] < resolved[1]:
        raise ValueError(f"need 0 <= rank < world_size, got rank={resolved[0]}, world_size={resolved[1]}")
    return resolved


@functools.lru_cache(maxsize=64)
def _index_counts(index_path: str, mtime_ns: int) -> dict[str, int]:
    try:
        content = json.loads(Path(index_path).read_text(encoding="utf-8"))
        return {str(shard["name"]): int(shard["count"]) for shard in content["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def indexed_count(path: str) -> int | None:
    """Samples the index.json beside shard ``path`` lists for it (None without an index entry)."""
    index = Path(path).parent / INDEX_FILE
    try:
        mtime = index.stat().st_mtime_ns
    except OSError:
        return None
    return _index_counts(str(index), mtime).get(Path(path).name)


def _damage(path: str, key: str, message: str, lost: int = 1) -> dict[str, object]:
    return {"__key__": key, "__shard__": path, DAMAGE_KEY: message, LOST_KEY: lost}


def _complete(sample: dict[str, object]) -> bool:
    return "json" in sample and any(ext in sample for ext in (*AUDIO_MEMBER_EXTENSIONS, FBANK_MEMBER))


def _is_zeros(path: str, start: int, end: int) -> bool:
    with open(path, "rb") as handle:
        handle.seek(start)
        data = handle.read(end - start)
    return len(data) == end - start and not data.strip(b"\0")


def iter_tar_samples(path: str) -> Iterator[dict[str, object]]:
    """Samples of one tar: consecutive members with the same key (basename up to its first dot)
    are grouped into ``{"__key__", "__shard__", <extension>: bytes}``.

    Damage never ends a shard silently. Reading continues after a damaged member header (a sample
    next to the damage that lost its json or audio/fbank member is dropped); a shard that cannot
    be opened or breaks off, and any shortfall against the count in the index.json beside the
    shard, are reported too. Each loss comes as ``{"__key__", "__shard__", "__damage__": message,
    "__lost__": samples}`` among the samples, for the caller to count as skipped (:func:`is_damage`).
    """
    expected = indexed_count(path)
    delivered = lost = 0
    current: dict[str, object] | None = None
    suspect = False  # ``current`` borders damaged data: keep it only if complete
    gap: tuple[int, int] | None = None  # damaged byte range not yet explained by a dropped sample

    def finish() -> Iterator[dict[str, object]]:
        nonlocal delivered, lost, suspect, gap
        if current is not None and suspect and not _complete(current):
            lost += 1
            gap = None
            members = ", ".join(sorted(k for k in current if not k.startswith("__")))
            yield _damage(path, str(current["__key__"]), f"{path}: sample {current['__key__']} lost a member to damaged tar data (has only: {members})")
        elif current is not None:
            delivered += 1
            yield current
            if suspect and gap is not None:
                lost += 1
                yield _damage(path, "<damaged>", f"{path}: damaged tar data at bytes {gap[0]}..{gap[1]} (a sample is lost)")
                gap = None
        suspect = False

    try:
        tar = tarfile.open(path, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield _damage(path, "<shard>", f"{path}: not a readable tar ({exc})", expected or 1)
        return
    with tar:
        tar.ignore_zeros = True  # past the first header: step over a damaged header instead of stopping there
        uncompressed = getattr(tar.fileobj, "comptype", "tar") == "tar"
        next_offset = 0
        try:
            for member in tar:
                if member.offset != next_offset and not (uncompressed and _is_zeros(path, next_offset, member.offset)):
                    lost_before, suspect = lost, True
                    yield from finish()  # drops the sample before the damage if it lost a member
                    current = None
                    gap = (next_offset, member.offset) if lost == lost_before else None
                    suspect = True
                next_offset = member.offset_data + -(-member.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
                if not member.isfile():
                    continue
                directory, _, base = member.name.rpartition("/")
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                key = f"{directory}/{stem}" if directory else stem
                handle = tar.extractfile(member)
                data = handle.read() if handle else b""
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield from finish()
                    current = {"__key__": key, "__shard__": path}
                current[ext] = data
        except (tarfile.TarError, OSError, EOFError) as exc:
            current = None  # its members may be incomplete
            missing = max(1, expected - delivered - lost) if expected is not None else 1
            lost += missing
            yield _damage(path, "<rest of shard>", f"{path}: the rest of the shard is unreadable ({exc})", missing)
            return
    size = os.path.getsize(path)
    if uncompressed and not _is_zeros(path, next_offset, min(next_offset + tarfile.BLOCKSIZE, size)):
        gap, suspect = (next_offset, size), True  # the header after the last member read is damaged
    yield from finish()
    if gap is not None:
        lost += 1
        yield _damage(path, "<damaged>", f"{path}: damaged tar data at bytes {gap[0]}..{gap[1]} (a sample is lost)")
    if expected is not None and delivered + lost < expected:
        missing = expected - delivered - lost
        yield _damage(path, "<shard>", f"{path}: read {delivered} of the {expected} samples its {INDEX_FILE} lists; {missing} lost", missing)


def is_damage(sample: dict[str, object]) -> bool:
    """True for the loss reports :func:`iter_tar_samples` yields among the samples."""
    return DAMAGE_KEY in sample


@dataclass(frozen=True)
class _Source:
    name: str
    shards: tuple[str, ...]
    weight: float


class _SkipCounter:
    def __init__(self, worker: int) -> None:
        self.worker = worker
        self.count = 0
        self.logged = 0

    def skip(self, what: str, error: BaseException, count: int = 1) -> None:
        self.count += count
        self.logged += 1
        if self.logged <= LOGGED_SKIPS_PER_WORKER:
            logger.warning("worker %d: skipping %s: %s", self.worker, what, error)
        elif self.logged == LOGGED_SKIPS_PER_WORKER + 1:
            logger.warning("worker %d: further skips are only counted", self.worker)


def _shuffled(samples: Iterator[dict[str, object]], size: int, rng: random.Random) -> Iterator[dict[str, object]]:
    """Reservoir-style shuffle buffer of ``size`` samples (no-op when size <= 1)."""
    if size <= 1:
        yield from samples
        return
    buffer: list[dict[str, object]] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        index = rng.randrange(size)
        buffer[index], sample = sample, buffer[index]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


class ShardStream(IterableDataset):
    """The per-worker sample pipeline behind :func:`make_loader` (yields finished batches)."""

    def __init__(
        self,
        sources: Sequence[_Source],
        features: FeatureConfig,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        rank: int,
        world_size: int,
        batches_per_rank: int | None,
        resampled: bool,
        augment: AugmentConfig | None,
        shuffle_buffer: int,
        num_classes: int | None,
        drop_last: bool,
        resume_offset: int = 0,
    ) -> None:
        super().__init__()
        self.sources = tuple(sources)
        self.features = features
        self.batch_size = batch_size
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.batches_per_rank = batches_per_rank
        self.resampled = resampled
        self.augment = augment or AugmentConfig()
        self.shuffle_buffer = shuffle_buffer
        self.num_classes = num_classes
        self.drop_last = drop_last
        self.resume_offset = resume_offset

    # -- shard selection ---------------------------------------------------------------------
    def _shard_cycles(self, source_index: int, slot: int, slots: int, rng: random.Random) -> Iterator[Iterator[str]]:
        """Shard sequences, one per pass over this slot's shards (a single endless one if resampled)."""
        shards = list(self.sources[source_index].shards)
        if self.resampled:
            yield (rng.choice(shards) for _ in itertools.count())
            return
        random.Random(derive_seed(self.seed, self.epoch, "shards", source_index)).shuffle(shards)
        own = shards[slot::slots]
        if not own:
            raise LoaderConfigError(
                f"source {self.sources[source_index].name!r} has {len(shards)} shards, fewer than "
                f"world_size x workers = {slots}; write more (smaller) shards or use resampled=True"
            )
        while True:
            rng.shuffle(own)
            yield iter(list(own))
            if self.batches_per_rank is None:
                return

    def _source_samples(
        self, source_index: int, slot: int, slots: int, rng: random.Random, skips: _SkipCounter
    ) -> Iterator[dict[str, object]]:
        """Undecoded samples of one source for this slot, shuffled within each pass over its shards
        (so a pass never repeats a sample), until the source is exhausted."""
        name = self.sources[source_index].name
        # Give up after this many shards in a row without a single sample (all corrupt).
        give_up_after = len(self.sources[source_index].shards) * (3 if self.resampled else 1)
        empty_in_a_row = 0

        def read(shards: Iterator[str]) -> Iterator[dict[str, object]]:
            nonlocal empty_in_a_row
            for shard in shards:
                got_any = False
                try:
                    for sample in iter_tar_samples(shard):
                        sample["__source__"] = name
                        got_any = got_any or not is_damage(sample)
                        yield sample
                except Exception as exc:  # an unexpected reading error: skip the rest of the shard
                    skips.skip(f"shard {shard}", exc)
                empty_in_a_row = 0 if got_any else empty_in_a_row + 1
                if empty_in_a_row >= give_up_after:
                    return

        for shards in self._shard_cycles(source_index, slot, slots, rng):
            yield from _shuffled(read(shards), self.shuffle_buffer, rng)
            if empty_in_a_row >= give_up_after:
                return

    # -- per-sample work -----------------------------------------------------------------------
    def _labels(self, meta: dict[str, object], key: str) -> torch.Tensor | list[object]:
        labels = meta.get("labels", [])
        if not isinstance(labels, list):
            labels = [labels]
        if self.num_classes is None:
            return labels
        target = torch.zeros(self.num_classes)
        for label in labels:
            if not isinstance(label, int) or not 0 <= label < self.num_classes:
                raise LoaderConfigError(f"sample {key}: label {label!r} is not a class index < num_classes={self.num_classes}")
            target[label] = 1.0
        return target

    def _check_fbank_options(self, meta: dict[str, object], key: str) -> None:
        stored = meta.get("fbank")
        wanted = json.loads(json.dumps(self.features.kaldi_options))
        if stored != wanted:
            raise LoaderConfigError(f"sample {key}: precomputed fbank options {stored} differ from the loader's {wanted}")

    def _process(
        self, sample: dict[str, object], rng: random.Random, generator: torch.Generator,
        pool: list[tuple[torch.Tensor, object]],
    ) -> tuple[torch.Tensor, object]:
        key = str(sample["__key__"])
        meta = json.loads(sample["json"]) if "json" in sample else {}
        labels = self._labels(meta, key)
        features, augment = self.features, self.augment
        if FBANK_MEMBER in sample:
            self._check_fbank_options(meta, key)
            if augment.mixup > 0 and augment.mixup_level == "waveform":
                raise LoaderConfigError("waveform mixup needs audio shards; these hold precomputed fbank (use mixup_level='fbank')")
            raw = torch.from_numpy(np.load(io.BytesIO(sample[FBANK_MEMBER]))).float()
            frames = pad_or_crop(raw, features.target_length, features.crop, generator)
        else:
            ext = next((e for e in AUDIO_MEMBER_EXTENSIONS if e in sample), None)
            if ext is None:
                raise ValueError(f"no audio ({'/'.join(AUDIO_MEMBER_EXTENSIONS)}) or {FBANK_MEMBER} member")
            wave = decode_bytes(sample[ext], features.sample_rate, f"{sample['__shard__']}:{key}.{ext}")
            if wave.numel() == 0:
                raise ValueError("empty audio")
            wave = features.crop_waveform(wave, generator)
            if augment.mixup > 0 and augment.mixup_level == "waveform":
                pool.append((wave, labels))
                if len(pool) > MIXUP_POOL_SIZE:
                    pool.pop(0)
                if len(pool) > 1 and rng.random() < augment.mixup:
                    partner_wave, partner_labels = pool[rng.randrange(len(pool) - 1)]
                    lam = rng.betavariate(augment.mixup_alpha, augment.mixup_alpha)
                    wave = mixup_waveforms(wave, partner_wave, lam)
                    labels = lam * labels + (1.0 - lam) * partner_labels
            frames = pad_or_crop(features.raw_fbank(wave), features.target_length, "start")
        if augment.freq_mask or augment.time_mask:
            frames = spec_augment(frames, augment.freq_mask, augment.time_mask, generator)
        out = normalize(frames, features.mean, features.std)
        if augment.noise:
            out = add_noise_and_roll(out, rng, generator)
        if not torch.isfinite(out).all():
            raise ValueError("non-finite features")
        return out, labels

    def _collate(self, items: list[tuple[torch.Tensor, object, str, str]], rng: random.Random) -> dict[str, object]:
        fbank = torch.stack([item[0] for item in items])
        labels: object = [item[1] for item in items]
        if self.num_classes is not None:
            labels = torch.stack(labels)
            if self.augment.mixup > 0 and self.augment.mixup_level == "fbank":
                fbank, labels = mixup_batch(fbank, labels, self.augment.mixup, self.augment.mixup_alpha, rng)
        return {"fbank": fbank, "labels": labels, "keys": [item[2] for item in items], "sources": [item[3] for item in items]}

    def __iter__(self) -> Iterator[dict[str, object]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        slot, slots = self.rank * workers + worker, self.world_size * workers
        seed = derive_seed(self.seed, self.epoch, self.rank, worker, self.resume_offset)
        logger.info(
            "data stream: seed=%d epoch=%d rank=%d/%d worker=%d/%d resume_offset=%d -> stream seed %d",
            self.seed, self.epoch, self.rank, self.world_size, worker, workers, self.resume_offset, seed,
        )
        rng = random.Random(seed)
        generator = torch.Generator().manual_seed(seed)
        skips = _SkipCounter(worker)
        quota = None
        if self.batches_per_rank is not None:
            quota = self.batches_per_rank // workers + int(worker < self.batches_per_rank % workers)
        streams = [self._source_samples(i, slot, slots, random.Random(derive_seed(seed, i)), skips) for i in range(len(self.sources))]
        weights = [source.weight for source in self.sources]
        pool: list[tuple[torch.Tensor, object]] = []
        items: list[tuple[torch.Tensor, object, str, str]] = []
        produced = 0
        while quota is None or produced < quota:
            source_index = rng.choices(range(len(streams)), weights)[0] if len(streams) > 1 else 0
            sample = next(streams[source_index], None)
            if sample is None:
                if self.batches_per_rank is not None:
                    raise NoReadableSamplesError(f"source {self.sources[source_index].name!r} yielded no readable samples")
                break
            if is_damage(sample):
                skips.skip(f"{sample[LOST_KEY]} sample(s)", ValueError(sample[DAMAGE_KEY]), int(sample[LOST_KEY]))
                continue
            try:
                fbank, labels = self._process(sample, rng, generator, pool)
            except LoaderConfigError:
                raise
            except Exception as exc:
                skips.skip(f"sample {sample.get('__key__')} in {sample.get('__shard__')}", exc)
                continue
            items.append((fbank, labels, str(sample["__key__"]), str(sample["__source__"])))
            if len(items) == self.batch_size:
                yield {**self._collate(items, rng), "_worker": worker, "_skipped": skips.count}
                items, produced = [], produced + 1
        if items and not self.drop_last:
            yield {**self._collate(items, rng), "_worker": worker, "_skipped": skips.count}
        yield {"_worker": worker, "_skipped": skips.count}  # final count (no batch), read by AudioLoader


def first_member_problem(path: str) -> str | None:
    """Why shard ``path`` cannot give a sample (0-byte file, not a tar, no members), or None when
    its first member header reads. Cheap: opens the file and reads one header."""
    try:
        with tarfile.open(path, mode="r|*") as tar:
            member = tar.next()
    except (tarfile.TarError, OSError, EOFError) as exc:
        return f"not a readable tar ({exc})"
    return None if member is not None else "an empty tar (no members)"


def check_shards(name: str, paths: Sequence[str]) -> None:
    """Before any work: raise :class:`NoReadableSamplesError` when none of ``paths`` has a readable
    first member; warn once (naming a few) when only some cannot be read (they are skipped)."""
    problems = [(path, problem) for path in paths if (problem := first_member_problem(path)) is not None]
    if not problems:
        return
    listed = "; ".join(f"{path}: {problem}" for path, problem in problems[:3]) + ("; ..." if len(problems) > 3 else "")
    if len(problems) == len(paths):
        raise NoReadableSamplesError(f"no readable samples in source {name!r}: none of its {len(paths)} shards can be read ({listed})")
    logger.warning("%d of the %d shards of source %r cannot be read and will be skipped: %s", len(problems), len(paths), name, listed)


def _parse_sources(shards: object) -> list[_Source]:
    if isinstance(shards, Mapping):
        if not shards:
            raise ValueError("the shard mapping is empty")
        sources = []
        for name, weight in shards.items():
            if not isinstance(weight, (int, float)) or weight <= 0:
                raise ValueError(f"mixing weight of {name!r} must be a positive number, got {weight!r}")
            sources.append(_Source(str(name), tuple(expand_shards(name)), float(weight)))
        return sources
    return [_Source("data", tuple(expand_shards(shards)), 1.0)]


class AudioLoader:
    """Iterable of batches over shards; see the module docstring. Built by :func:`make_loader`."""

    def __init__(
        self,
        shards: object,
        features: FeatureConfig,
        batch_size: int,
        *,
        num_workers: int = 0,
        seed: int = 0,
        epoch_length: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        augment: AugmentConfig | None = None,
        resampled: bool = False,
        shuffle_buffer: int = DEFAULT_SHUFFLE_BUFFER,
        num_classes: int | None = None,
        drop_last: bool | None = None,
        pin_memory: bool = False,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if epoch_length is not None and epoch_length < 1:
            raise ValueError(f"epoch_length must be >= 1 batches, got {epoch_length}")
        self.sources = _parse_sources(shards)
        for source in self.sources:
            check_shards(source.name, source.shards)
        self.features = features
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.epoch_length = epoch_length
        self.rank, self.world_size = resolve_rank(rank, world_size)
        self.augment = augment
        self.resampled = resampled
        self.shuffle_buffer = shuffle_buffer
        self.num_classes = num_classes
        self.drop_last = epoch_length is not None if drop_last is None else drop_last
        self.pin_memory = pin_memory
        if epoch_length is None and (resampled or self.world_size > 1):
            raise ValueError(
                "epoch_length (batches per rank) is required with resampled=True or more than one rank, "
                "so that every rank yields the same number of batches"
            )
        if augment is not None and augment.mixup > 0 and num_classes is None:
            raise ValueError("mixup mixes label vectors: pass num_classes")
        self.epoch = 0
        self.batches_in_epoch = 0
        self.skipped = 0
        self.skipped_total = 0
        logger.info(
            "data loader: seed=%d rank=%d/%d workers=%d sources=%s resampled=%s epoch_length=%s",
            seed, self.rank, self.world_size, num_workers,
            {s.name: (len(s.shards), s.weight) for s in self.sources}, resampled, epoch_length,
        )

    def set_epoch(self, epoch: int) -> None:
        """Start the next pass at ``epoch`` (the shuffle depends on it)."""
        self.epoch, self.batches_in_epoch = epoch, 0

    def __len__(self) -> int:
        if self.epoch_length is None:
            raise TypeError("a one-pass loader has no known length; pass epoch_length")
        return self.epoch_length

    def state_dict(self) -> dict[str, int]:
        """Data position for checkpoints: seed, epoch, batches already consumed in it, skip count."""
        return {"seed": self.seed, "epoch": self.epoch, "batches_in_epoch": self.batches_in_epoch, "skipped_total": self.skipped_total}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Resume from :meth:`state_dict` (the seed must match the one this loader was built with)."""
        if int(state["seed"]) != self.seed:
            raise ValueError(f"loader state has seed {state['seed']}, this loader uses seed {self.seed}")
        self.epoch = int(state["epoch"])
        self.batches_in_epoch = int(state["batches_in_epoch"])
        self.skipped_total = int(state.get("skipped_total", 0))

    def __iter__(self) -> Iterator[dict[str, object]]:
        offset = self.batches_in_epoch
        remaining = None if self.epoch_length is None else self.epoch_length - offset
        dataset = ShardStream(
            self.sources, self.features, self.batch_size, seed=self.seed, epoch=self.epoch, rank=self.rank,
            world_size=self.world_size, batches_per_rank=remaining, resampled=self.resampled, augment=self.augment,
            shuffle_buffer=self.shuffle_buffer, num_classes=self.num_classes, drop_last=self.drop_last,
            resume_offset=offset,
        )
        loader = DataLoader(dataset, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
        per_worker: dict[int, int] = {}
        self.skipped = 0
        batches = 0
        for batch in loader:
            per_worker[int(batch["_worker"])] = int(batch["_skipped"])
            new_total = sum(per_worker.values())
            self.skipped_total += new_total - self.skipped
            self.skipped = new_total
            if "fbank" not in batch:  # a worker's final skip count
                continue
            self.batches_in_epoch += 1
            batches += 1
            yield {k: v for k, v in batch.items() if k not in _PRIVATE_KEYS}
        if batches == 0 and (remaining is None or remaining > 0):
            raise NoReadableSamplesError(
                f"a whole pass over the shards of {', '.join(repr(s.name) for s in self.sources)} gave no batch of "
                f"{self.batch_size} ({self.skipped} samples skipped as unreadable; see the warnings above)"
            )
        self.epoch, self.batches_in_epoch = self.epoch + 1, 0


def make_loader(
    shards: str | Sequence[str] | Mapping[str, float],
    features: FeatureConfig | None = None,
    batch_size: int = 8,
    num_workers: int = 0,
    seed: int = 0,
    epoch_length: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    augment: AugmentConfig | None = None,
    **options: object,
) -> AudioLoader:
    """Build an :class:`AudioLoader`. ``shards``: a pattern/folder/list, or ``{pattern: weight}``
    to mix sources. Further options: ``resampled``, ``shuffle_buffer``, ``num_classes``,
    ``drop_last``, ``pin_memory`` (see the module docstring)."""
    return AudioLoader(
        shards, features or FeatureConfig(), batch_size, num_workers=num_workers, seed=seed,
        epoch_length=epoch_length, rank=rank, world_size=world_size, augment=augment, **options,
    )
