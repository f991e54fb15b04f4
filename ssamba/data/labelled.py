"""The labelled-data format every downstream path reads (fine-tuning, the linear probe, predict).

One format, three spellings:

* **CSV manifest** (the native one): a header row and the columns ``path,label`` plus optional
  ``split`` (``train``/``valid``/``test``), ``fold`` and/or ``group`` (cross-validation; clips of one
  group never land on both sides of a split), ``start``,``end`` (seconds, a segment of a long file).
  ``label`` is one class name, or several separated by ``;`` for multi-label sets. Relative paths
  resolve against the manifest's folder. Other columns are ignored. Example::

      path,label,split,group
      dog/001.wav,dog,train,speaker3
      birds/017.flac,bird;wind,test,speaker8

  Manifests written for ``ssamba shards manifest`` before this format (a ``labels`` column with
  comma-separated labels) are read too.
* **SSAST/AuM JSON data lists**: ``{"data": [{"wav": PATH, "labels": "mid1,mid2"}, ...]}`` with the
  class table ``class_labels_indices.csv`` (``index,mid,display_name``); the class list is the
  table's mids in index order. One file per split (``split=`` names it).
* **Labelled WebDataset shards** written by ``ssamba shards manifest MANIFEST.csv -o DIR``: the
  folder's ``classes.json`` holds the class list; each sample's JSON its labels, split, fold, group.

:func:`read_labelled` returns a :class:`LabelledSet` and validates it before anything trains: a
label not in the class list, a bad or missing split, a group in two splits or two folds, a
duplicated clip, a bad segment, each is a ``ValueError`` naming the file and row.
:class:`LabelledAudioDataset` decodes clips for training; unreadable or silent clips are skipped and
counted, never relabelled.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tarfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ssamba.audio.fbank import FeatureConfig
from ssamba.data.sources.ast_json import read_datafile

SPLITS = ("train", "valid", "test")
LABEL_SEPARATOR = ";"
LEGACY_LABEL_SEPARATOR = ","
CLASSES_FILE = "classes.json"
SHARD_INDEX_FILE = "index.json"
SILENCE_PEAK = 2.0**-15
"""A clip whose peak amplitude is below one 16-bit step is silent (skipped, not trained on)."""
MAX_LOGGED_SKIPS = 10

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabelledClip:
    """One labelled clip (or segment of a file)."""

    path: Path
    """Absolute path of the audio file (for shards: the tar file; ``key`` names the sample)."""
    labels: tuple[str, ...]
    split: str | None = None
    fold: str | None = None
    group: str | None = None
    start: float | None = None
    end: float | None = None
    row: int = 0
    """1-based data row in the source file (error messages)."""
    key: str | None = None
    """WebDataset sample key when the clip lives in a shard."""

    @property
    def name(self) -> str:
        """How messages name the clip: the path, plus the segment or shard sample."""
        where = f"{self.path}#{self.key}" if self.key else str(self.path)
        if self.start is not None or self.end is not None:
            where += f"[{self.start or 0:g}-{'' if self.end is None else f'{self.end:g}'}s]"
        return where


@dataclass
class LabelledSet:
    """Clips with an ordered class list (the list written into every checkpoint and export)."""

    clips: list[LabelledClip]
    classes: list[str]
    multilabel: bool
    source: Path
    display_names: list[str] | None = None
    """Human-readable class names when the class table has them (AudioSet mids -> names)."""

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def splits(self) -> list[str]:
        """The splits present, in train/valid/test order."""
        present = {clip.split for clip in self.clips}
        return [split for split in SPLITS if split in present]

    def fold_ids(self) -> list[str]:
        """Fold ids present, sorted (numerically when they are numbers)."""
        folds = {clip.fold for clip in self.clips if clip.fold is not None}
        return sorted(folds, key=lambda f: (0, int(f), f) if f.lstrip("-").isdigit() else (1, 0, f))

    def subset(
        self, *, split: str | None = None, folds: Iterable[str] | None = None, exclude_folds: Iterable[str] | None = None
    ) -> LabelledSet:
        """The clips of one split and/or some folds (same class list)."""
        keep, drop = (set(folds) if folds is not None else None), set(exclude_folds or ())
        clips = [
            c for c in self.clips
            if (split is None or c.split == split) and (keep is None or c.fold in keep) and c.fold not in drop
        ]
        return replace(self, clips=clips)

    def select(self, indices: Sequence[int]) -> LabelledSet:
        """The clips at ``indices`` (same class list)."""
        return replace(self, clips=[self.clips[i] for i in indices])

    def targets(self) -> np.ndarray:
        """(N, C) float32 multi-hot targets (one-hot for single-label sets)."""
        index = {name: i for i, name in enumerate(self.classes)}
        out = np.zeros((len(self.clips), len(self.classes)), np.float32)
        for row, clip in enumerate(self.clips):
            out[row, [index[label] for label in clip.labels]] = 1.0
        return out

    def label_indices(self) -> np.ndarray:
        """(N,) int64 class indices of a single-label set."""
        if self.multilabel:
            raise ValueError(f"{self.source}: label_indices() needs a single-label set; this one is multi-label")
        index = {name: i for i, name in enumerate(self.classes)}
        return np.array([index[clip.labels[0]] for clip in self.clips], np.int64)

    def check_folds(self, folds: Sequence[str]) -> None:
        """Raise naming the first of ``folds`` that holds no clip."""
        present = {clip.fold for clip in self.clips}
        for fold in folds:
            if fold not in present:
                raise ValueError(f"{self.source}: fold {fold!r} is empty (folds present: {', '.join(self.fold_ids()) or 'none'})")

    def groups(self) -> list[str]:
        """Group of each clip; a clip without one is its own group (its file and segment)."""
        return [clip.group if clip.group is not None else f"\0{clip.name}" for clip in self.clips]


# ----------------------------------------------------------------------------------------- reading


def read_labelled(
    path: str | os.PathLike[str],
    *,
    classes: Sequence[str] | None = None,
    class_table: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> LabelledSet:
    """Read a CSV manifest, an SSAST/AuM JSON data list or a labelled shard folder, and validate it.

    ``classes`` fixes the class list (e.g. a checkpoint's); ``class_table`` reads it from
    ``class_labels_indices.csv``. Without either it is the sorted set of labels found.
    ``split`` assigns a split to every clip without one (one JSON file per split).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"labelled data not found: {path}")
    if split is not None:
        _check_split(split, f"{path}: split=")
    table_names: list[str] | None = None
    if class_table is not None:
        if classes is not None:
            raise ValueError("pass classes or class_table, not both")
        classes, table_names = read_class_table(class_table)
    if path.is_dir():
        clips, stored = _read_shard_folder(path)
        if classes is None:
            classes = stored
    elif path.suffix.lower() == ".json":
        clips = _read_json_list(path)
    elif path.suffix.lower() == ".csv":
        clips = _read_csv(path)
    else:
        raise ValueError(f"{path}: expected a .csv manifest, a .json data list or a shard folder")
    if not clips:
        raise ValueError(f"{path}: no clips")
    if split is not None:
        clips = [clip if clip.split else replace(clip, split=split) for clip in clips]
    multilabel = any(len(clip.labels) != 1 for clip in clips)
    if classes is None:
        classes = sorted({label for clip in clips for label in clip.labels})
    data = LabelledSet(clips, list(classes), multilabel, path, table_names)
    validate(data)
    return data


def read_class_table(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """``class_labels_indices.csv`` (``index,mid,display_name``) -> (mids, display names) in index order."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"index", "mid"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: expected a header with columns index,mid,display_name, got {reader.fieldnames}")
        rows: dict[int, tuple[str, str]] = {}
        for line_no, row in enumerate(reader, 2):
            try:
                index = int(row["index"])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{line_no}: index {row['index']!r} is not an integer") from exc
            if index in rows:
                raise ValueError(f"{path}:{line_no}: index {index} appears twice")
            mid = (row["mid"] or "").strip()
            rows[index] = (mid, (row.get("display_name") or mid).strip())
    if sorted(rows) != list(range(len(rows))):
        raise ValueError(f"{path}: indices must be 0..{len(rows) - 1} without gaps")
    if not rows:
        raise ValueError(f"{path}: no classes")
    return [rows[i][0] for i in range(len(rows))], [rows[i][1] for i in range(len(rows))]


def _check_split(value: str, where: str) -> str:
    if value not in SPLITS:
        raise ValueError(f"{where} split {value!r} is not one of {', '.join(SPLITS)}")
    return value


def _float_field(value: str, where: str, name: str) -> float | None:
    if value is None or not value.strip():
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{where}: {name} {value!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{where}: {name} {value!r} must be a finite number of seconds >= 0")
    return number


def _split_labels(text: str, separator: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(separator) if part.strip())


def _read_csv(path: Path) -> list[LabelledClip]:
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = columns
        if "path" not in columns:
            raise ValueError(f"{path}: the header must have a 'path' column (path,label[,split][,fold][,group][,start,end]), got {columns}")
        if "label" in columns:
            label_column, separator = "label", LABEL_SEPARATOR
        elif "labels" in columns:  # manifests written before this format: comma-separated
            label_column, separator = "labels", LEGACY_LABEL_SEPARATOR
        else:
            raise ValueError(f"{path}: the header must have a 'label' column, got {columns}")
        if ("start" in columns) != ("end" in columns):
            raise ValueError(f"{path}: segments need both 'start' and 'end' columns, got {columns}")
        clips = []
        for row_no, row in enumerate(reader, 1):
            where = f"{path} row {row_no}"
            if None in row:
                raise ValueError(f"{where}: more fields than header columns: {row[None]}")
            file = (row["path"] or "").strip()
            if not file:
                raise ValueError(f"{where}: empty path")
            split = None
            if "split" in columns:
                value = (row["split"] or "").strip()
                if not value:
                    raise ValueError(f"{where}: missing split (every row needs one of {', '.join(SPLITS)})")
                split = _check_split(value, where + ":")
            fold = (row.get("fold") or "").strip() or None
            if "fold" in columns and fold is None:
                raise ValueError(f"{where}: missing fold")
            group = (row.get("group") or "").strip() or None
            clips.append(
                LabelledClip(
                    path=Path(os.path.normpath(path.parent / file)),
                    labels=_split_labels(row[label_column] or "", separator),
                    split=split, fold=fold, group=group,
                    start=_float_field(row.get("start"), where, "start"),
                    end=_float_field(row.get("end"), where, "end"),
                    row=row_no,
                )
            )
    return clips


def _read_json_list(path: Path) -> list[LabelledClip]:
    clips = []
    for row_no, entry in enumerate(read_datafile(path), 1):
        where = f"{path} entry {row_no}"
        labels = entry.get("labels", "")
        if isinstance(labels, list):
            labels = LEGACY_LABEL_SEPARATOR.join(map(str, labels))
        if not isinstance(labels, str):
            raise ValueError(f'{where}: "labels" must be a comma-separated string, got {labels!r}')
        clips.append(
            LabelledClip(Path(os.path.normpath(path.parent / entry["wav"])), _split_labels(labels, LEGACY_LABEL_SEPARATOR), row=row_no)
        )
    return clips


def _read_shard_folder(folder: Path) -> tuple[list[LabelledClip], list[str] | None]:
    """Clips of labelled shards (``ssamba shards manifest``): one per sample, in shard order."""
    index_path = folder / SHARD_INDEX_FILE
    if not index_path.is_file():
        raise ValueError(f"{folder}: not a shard folder (no {SHARD_INDEX_FILE})")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    classes_path = folder / CLASSES_FILE
    classes = json.loads(classes_path.read_text(encoding="utf-8")) if classes_path.is_file() else None
    clips = []
    for shard in index.get("shards", []):
        tar_path = folder / str(shard["name"])
        with tarfile.open(tar_path) as tar:
            for member in tar:
                if not member.name.endswith(".json"):
                    continue
                meta = json.loads(tar.extractfile(member).read())
                where = f"{tar_path} sample {meta.get('key')}"
                labels = meta.get("labels", [])
                if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
                    raise ValueError(f"{where}: labels must be a list of class names, got {labels!r}")
                split = meta.get("split")
                clips.append(
                    LabelledClip(
                        path=tar_path, labels=tuple(labels),
                        split=None if split is None else _check_split(str(split), where + ":"),
                        fold=None if meta.get("fold") is None else str(meta["fold"]),
                        group=None if meta.get("group") is None else str(meta["group"]),
                        row=len(clips) + 1, key=str(meta["key"]),
                    )
                )
    return clips, classes


# -------------------------------------------------------------------------------------- validation


def validate(data: LabelledSet) -> None:
    """Raise ``ValueError`` naming the file and row of the first problem found."""
    known = set(data.classes)
    if len(known) != len(data.classes):
        raise ValueError(f"{data.source}: the class list repeats a class: {data.classes}")
    seen: dict[tuple[Path, str | None, float | None, float | None], LabelledClip] = {}
    for clip in data.clips:
        where = f"{data.source} row {clip.row}"
        if not clip.labels:
            raise ValueError(f"{where}: no label")
        if len(set(clip.labels)) != len(clip.labels):
            raise ValueError(f"{where}: a label is repeated: {';'.join(clip.labels)}")
        for label in clip.labels:
            if label not in known:
                shown = ", ".join(data.classes[:10]) + (" ..." if len(data.classes) > 10 else "")
                raise ValueError(f"{where}: label {label!r} is not in the class list ({shown})")
        if clip.start is not None and clip.end is not None and clip.end <= clip.start:
            raise ValueError(f"{where}: segment end {clip.end:g} s is not after start {clip.start:g} s")
        identity = (clip.path, clip.key, clip.start, clip.end)
        if identity in seen:
            raise ValueError(f"{where}: the same clip as row {seen[identity].row} ({clip.name})")
        seen[identity] = clip
    if any(clip.split is not None for clip in data.clips) and any(clip.split is None for clip in data.clips):
        missing = next(clip for clip in data.clips if clip.split is None)
        raise ValueError(f"{data.source} row {missing.row}: missing split")
    check_groups(data)


def check_groups(data: LabelledSet) -> None:
    """A group may not appear in two splits or two folds (its clips would leak into evaluation)."""
    for attribute in ("split", "fold"):
        first: dict[str, LabelledClip] = {}
        for clip in data.clips:
            if clip.group is None or getattr(clip, attribute) is None:
                continue
            other = first.setdefault(clip.group, clip)
            if getattr(other, attribute) != getattr(clip, attribute):
                raise ValueError(
                    f"{data.source} row {clip.row}: group {clip.group!r} is in {attribute} {getattr(clip, attribute)!r} "
                    f"and in {attribute} {getattr(other, attribute)!r} (row {other.row}); a group must stay on one side"
                )


# ----------------------------------------------------------------------------------------- decoding


class SkippedClip(Exception):
    """A clip that cannot be used (unreadable, silent, empty segment); the message says why."""


class _ShardReader:
    """Random access to samples in tar shards (member offsets indexed once per tar)."""

    def __init__(self) -> None:
        self.offsets: dict[Path, dict[str, tuple[int, int]]] = {}

    def read(self, tar_path: Path, name: str) -> bytes:
        if tar_path not in self.offsets:
            with tarfile.open(tar_path) as tar:
                self.offsets[tar_path] = {m.name: (m.offset_data, m.size) for m in tar if m.isfile()}
        if name not in self.offsets[tar_path]:
            raise SkippedClip(f"{tar_path}: no member {name}")
        offset, size = self.offsets[tar_path][name]
        with open(tar_path, "rb") as handle:
            handle.seek(offset)
            return handle.read(size)


def load_clip_waveform(clip: LabelledClip, sample_rate: int, shards: _ShardReader | None = None) -> torch.Tensor:
    """Mono float32 waveform of a clip (its segment only) at ``sample_rate``; raises :class:`SkippedClip`."""
    from ssamba.audio.io import AudioDecodeError, decode_file, resample, to_mono

    try:
        if clip.key is not None:
            import soundfile

            data = (shards or _ShardReader()).read(clip.path, f"{clip.key}.flac")
            audio, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
            audio = to_mono(audio)
        else:
            audio, rate, _ = decode_file(clip.path)
    except (OSError, AudioDecodeError, RuntimeError, tarfile.TarError) as exc:
        raise SkippedClip(f"unreadable: {exc}") from exc
    if clip.start is not None or clip.end is not None:
        first = round((clip.start or 0.0) * rate)
        last = audio.shape[0] if clip.end is None else round(clip.end * rate)
        if first >= audio.shape[0]:
            raise SkippedClip(f"segment starts at {clip.start:g} s, after the end of the {audio.shape[0] / rate:.3f} s file")
        audio = audio[first:last]
    if audio.size == 0:
        raise SkippedClip("empty: no samples")
    if not np.isfinite(audio).all():
        raise SkippedClip("non_finite: NaN or infinite samples")
    if float(np.abs(audio).max()) < SILENCE_PEAK:
        raise SkippedClip("silent: peak below one 16-bit step")
    return torch.from_numpy(resample(audio, rate, sample_rate))


class LabelledAudioDataset(torch.utils.data.Dataset):
    """Decodes clip ``i`` (its segment), resamples to the feature rate, returns
    ``{"fbank": (T, F) float32, "target": (C,) float32, "index": int}``.

    Unreadable or silent clips give ``None``: :func:`collate_labelled` drops them and reports the
    number in ``batch["skipped"]``; the dataset counts them in ``skipped`` (per process) and logs
    the first few with the reason. Labels are never changed.

    ``seconds_per_label`` switches to per-second targets: one item per file (first appearance
    order), the whole file as input, ``target`` (S, C) with S = input seconds / ``seconds_per_label``;
    second ``s`` gets the labels of the manifest rows whose ``[start, end)`` segment contains its
    centre, and ``target_mask`` (S,) marks the seconds that some row labels.

    ``wave_transform(waveform, i)`` (training augmentation, e.g. background noise) changes item ``i``'s
    waveform before the fbank; it gets the item index so that its draws can be seeded per item.
    """

    def __init__(
        self,
        data: LabelledSet,
        features: FeatureConfig,
        *,
        wave_transform: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
        seconds_per_label: float | None = None,
    ) -> None:
        self.data = data
        self.features = features
        self.wave_transform = wave_transform
        self.seconds_per_label = seconds_per_label
        self.skipped = 0
        self._targets = torch.from_numpy(data.targets())
        self._shards = _ShardReader()
        if seconds_per_label is not None:
            if seconds_per_label <= 0:
                raise ValueError(f"seconds_per_label must be positive, got {seconds_per_label}")
            rows: dict[tuple[Path, str | None], list[int]] = defaultdict(list)
            for i, clip in enumerate(data.clips):
                rows[(clip.path, clip.key)].append(i)
            self._files = list(rows.values())
            input_seconds = features.target_length * features.frame_shift_ms / 1000.0
            self.num_seconds = math.floor(input_seconds / seconds_per_label + 1e-9)

    def __len__(self) -> int:
        return len(self.data.clips) if self.seconds_per_label is None else len(self._files)

    def clip(self, i: int) -> LabelledClip:
        """The manifest row of item ``i`` (per-second targets: the first row of its file)."""
        return self.data.clips[i if self.seconds_per_label is None else self._files[i][0]]

    def _skip(self, clip: LabelledClip, problem: SkippedClip) -> None:
        self.skipped += 1
        if self.skipped <= MAX_LOGGED_SKIPS:
            log.warning("skipping %s (row %d): %s", clip.name, clip.row, problem)

    def __getitem__(self, i: int) -> dict[str, object] | None:
        if self.seconds_per_label is not None:
            return self._per_second_item(i)
        clip = self.data.clips[i]
        try:
            wave = load_clip_waveform(clip, self.features.sample_rate, self._shards)
        except SkippedClip as problem:
            self._skip(clip, problem)
            return None
        if self.wave_transform is not None:
            wave = self.wave_transform(wave, i)
        return {"fbank": self.features.features(wave), "target": self._targets[i], "index": i}

    def _per_second_item(self, i: int) -> dict[str, object] | None:
        rows = self._files[i]
        first = self.data.clips[rows[0]]
        whole = replace(first, start=None, end=None)
        try:
            wave = load_clip_waveform(whole, self.features.sample_rate, self._shards)
        except SkippedClip as problem:
            self._skip(whole, problem)
            return None
        if self.wave_transform is not None:
            wave = self.wave_transform(wave, i)
        target = torch.zeros(self.num_seconds, len(self.data.classes))
        mask = torch.zeros(self.num_seconds, dtype=torch.bool)
        centres = (torch.arange(self.num_seconds, dtype=torch.float64) + 0.5) * self.seconds_per_label
        for row in rows:
            clip = self.data.clips[row]
            start = clip.start or 0.0
            end = math.inf if clip.end is None else clip.end
            inside = (centres >= start) & (centres < end)
            target[inside] = torch.maximum(target[inside], self._targets[row])
            mask |= inside
        return {"fbank": self.features.features(wave), "target": target, "target_mask": mask, "index": i}


def collate_labelled(items: Sequence[dict[str, object] | None]) -> dict[str, object] | None:
    """Stack the usable items of a batch; ``skipped`` counts the dropped ones. None if none is usable."""
    kept = [item for item in items if item is not None]
    if not kept:
        return None
    batch: dict[str, object] = {
        key: torch.stack([item[key] for item in kept]) for key in kept[0] if key != "index"
    }
    batch["index"] = torch.tensor([item["index"] for item in kept], dtype=torch.long)
    batch["skipped"] = len(items) - len(kept)
    return batch
