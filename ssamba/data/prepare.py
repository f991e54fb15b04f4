"""Shared steps of the downstream recipes' ``finetune/<dataset>/prepare.sh SOURCE_DIR OUT_DIR``.

A recipe (``finetune/<dataset>/prepare.py``) only knows its dataset: it reads the owners'
metadata files from SOURCE_DIR, checks them and the file counts, and returns one :class:`Item`
per clip (where the audio is, the owners' class name, the official split or fold, the leakage
group, an optional segment). :func:`run_recipe` does the rest, in resumable stages:

0. ``verify``   the recipe's ``collect``: metadata present, counts as published (``--partial``
                turns count mismatches and missing clips into warnings for partial downloads);
1. ``audio``    every clip that is not already 16 kHz mono FLAC/WAV is decoded, downmixed,
                resampled (soxr) and written as 16 kHz mono FLAC under ``OUT_DIR/audio/``
                (one temporary file + rename per clip, so a killed run never leaves a truncated
                file and a rerun skips what exists); 16 kHz mono WAV/FLAC sources are used in
                place unless ``--copy-audio``; unreadable clips are skipped and listed in
                ``OUT_DIR/rejects.csv``;
2. ``manifest`` ``OUT_DIR/manifest.csv`` (``path,label[,split][,fold][,group][,start,end]``, the
                fine-tuning manifest) and ``OUT_DIR/classes.txt`` (the class order);
3. ``stats``    log-mel mean/std of the training clips (SSAMBA fbank, padded to the recipe's
                input length as the published statistics were) -> ``OUT_DIR/stats.json``.

Everything is written atomically; ``OUT_DIR/prepare.json`` records what the last run did.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import math
import multiprocessing
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import soundfile
import torch

from ssamba.audio.fbank import FeatureConfig
from ssamba.audio.io import AudioDecodeError, decode_file, encode_flac, resample
from ssamba.data.stats import mean_std, waveform_frames

TARGET_SAMPLE_RATE = 16000
MANIFEST_COLUMNS = ("path", "label", "split", "fold", "group", "start", "end")
SPLITS = ("train", "valid", "test")
LABEL_SEPARATOR = ";"
STAGES = ("verify", "audio", "manifest", "stats")
IN_PLACE_FORMATS = frozenset({"WAV", "FLAC"})
DEFAULT_STATS_CLIPS = 5000


class PrepareError(ValueError):
    """The input tree is not what the recipe expects; the message names the file and the problem."""


@dataclass(frozen=True)
class Item:
    """One manifest row before the audio stage.

    ``source`` is the owners' file; ``target`` the path under OUT_DIR its 16 kHz FLAC copy gets
    (several items may share one source and target: segments of one long recording). ``labels``
    are the owners' class names (several for multi-label sets; for per-second sets one per second,
    in time order). ``make_audio`` (a picklable zero-argument callable returning a 16 kHz mono
    float32 waveform) replaces ``source`` for recipes that build their clips, such as the Urban8k
    concatenations; it runs in the audio stage's worker processes.
    """

    source: Path | None
    target: str
    labels: tuple[str, ...]
    split: str = ""
    fold: str = ""
    group: str = ""
    start: float | None = None
    end: float | None = None
    make_audio: Callable[[], np.ndarray] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Recipe:
    """A dataset's prepare recipe: how to read and check SOURCE_DIR, and its input length for stats."""

    name: str
    description: str
    """``--help`` text: the expected input tree exactly as distributed, and where to get it."""
    collect: Callable[[Path, "Checks"], list[Item]]
    target_length: int
    """Frames the statistics pad/cut each clip to (the recipe's fine-tuning input length)."""
    stats_splits: tuple[str, ...] = ("train", "")
    """Rows whose ``split`` is one of these enter the statistics ("" = rows without a split)."""
    whole_file_stats: bool = False
    """Statistics over whole files (once per file) instead of the rows' segments (per-second sets)."""
    extra_audio: Callable[[Path, Path], None] | None = None
    """Called with (SOURCE_DIR, OUT_DIR) in the audio stage for files that are not manifest rows
    (e.g. Speech Commands' background noise, written with :func:`write_flac_copy`)."""


class Checks:
    """Count checks that fail, or with ``--partial`` only warn; warnings are kept for the report."""

    def __init__(self, partial: bool) -> None:
        self.partial = partial
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        print(f"warning: {message}", file=sys.stderr)

    def count(self, what: str, found: int, expected: int) -> None:
        """``found`` must equal ``expected`` unless ``--partial``."""
        if found == expected:
            return
        message = f"{what}: found {found}, expected {expected}"
        if not self.partial:
            raise PrepareError(f"{message} (an incomplete download? use --partial to prepare what is there)")
        self.warn(message)

    def missing(self, what: str, missing: Sequence[str], total: int, *, fatal: bool = True) -> None:
        """Clips named by the metadata but absent: an error (``fatal`` and not ``--partial``) or counted."""
        if not missing:
            return
        examples = ", ".join(missing[:3])
        message = f"{len(missing)} of {total} {what} are missing (e.g. {examples})"
        if fatal and not self.partial:
            raise PrepareError(f"{message}; use --partial to prepare the rest")
        self.warn(message)


# ------------------------------------------------------------------------------- metadata helpers


def require_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a PrepareError saying what it should be."""
    if not path.is_file():
        raise PrepareError(f"missing {what}: {path} (see --help for the expected tree)")
    return path


def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise PrepareError(f"missing {what}: {path} (see --help for the expected tree)")
    return path


def read_csv_rows(path: Path, columns: Sequence[str], *, delimiter: str = ",") -> list[dict[str, str]]:
    """Rows of a headed CSV/TSV; PrepareError naming the file if a column is missing or a row is short."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        header = reader.fieldnames or []
        absent = [c for c in columns if c not in header]
        if absent:
            raise PrepareError(f"{path}: expected columns {', '.join(columns)} in the header, missing {', '.join(absent)} (header: {header})")
        rows = []
        for line_no, row in enumerate(reader, 2):
            if any(row.get(c) is None for c in columns):
                raise PrepareError(f"{path}:{line_no}: row has fewer fields than the header: {row}")
            rows.append(row)
    return rows


def flac_target(relative: str | Path) -> str:
    """The OUT_DIR-relative FLAC path for a source path relative to SOURCE_DIR."""
    return (Path("audio") / Path(relative)).with_suffix(".flac").as_posix()


def index_files(root: Path, extensions: Iterable[str]) -> dict[str, Path]:
    """Files under ``root`` by stem (first in sorted order wins)."""
    wanted = {e.lower() for e in extensions}
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() in wanted and path.is_file():
            found.setdefault(path.stem, path)
    return found


# ------------------------------------------------------------------------------------ audio stage


def _in_place(path: Path) -> bool:
    try:
        info = soundfile.info(str(path))
    except Exception:  # unreadable header: convert (and reject) in the audio stage
        return False
    return info.samplerate == TARGET_SAMPLE_RATE and info.channels == 1 and info.format in IN_PLACE_FORMATS


def _write_atomic_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _convert(job: tuple[str | None, str, Callable[[], np.ndarray] | None]) -> tuple[str, str | None]:
    """Write one 16 kHz mono FLAC; returns (target, error or None)."""
    source, target, make_audio = job
    try:
        if make_audio is not None:
            audio = make_audio()
        else:
            samples, rate, _ = decode_file(source)
            audio = resample(samples, rate, TARGET_SAMPLE_RATE)
        if audio.size == 0:
            raise AudioDecodeError(f"{source}: no samples")
        _write_atomic_bytes(Path(target), encode_flac(audio, TARGET_SAMPLE_RATE))
        return target, None
    except Exception as exc:  # noqa: BLE001 - every decode failure is a reject, never a crash
        return target, f"{type(exc).__name__}: {exc}"


def write_flac_copy(source: Path, target: Path) -> None:
    """``source`` as 16 kHz mono FLAC at ``target`` (atomic; skipped when it exists)."""
    if target.is_file():
        return
    _, error = _convert((str(source), str(target), None))
    if error is not None:
        raise PrepareError(f"{source}: {error}")


def prepare_audio(items: list[Item], out_dir: Path, *, copy_audio: bool, workers: int) -> tuple[dict[str, str], dict[str, str]]:
    """Run the audio stage. Returns ({target: manifest path}, {target: error}) for every target."""
    from tqdm import tqdm

    resolved: dict[str, str] = {}
    jobs: list[tuple[str | None, str, Callable[[], np.ndarray] | None]] = []
    seen: set[str] = set()
    for item in items:
        if item.target in seen:
            continue
        seen.add(item.target)
        destination = out_dir / item.target
        if item.make_audio is None and not copy_audio and item.source is not None and _in_place(item.source):
            resolved[item.target] = str(item.source.resolve())
        elif destination.is_file():
            resolved[item.target] = item.target
        else:
            jobs.append((None if item.source is None else str(item.source), str(destination), item.make_audio))
    errors: dict[str, str] = {}
    if jobs:
        pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
        try:
            results = pool.imap_unordered(_convert, jobs, chunksize=8) if pool else map(_convert, jobs)
            for target, error in tqdm(results, total=len(jobs), unit="clip", desc="16 kHz FLAC", mininterval=2.0):
                relative = Path(target).relative_to(out_dir).as_posix()
                if error is None:
                    resolved[relative] = relative
                else:
                    errors[relative] = error
        finally:
            if pool is not None:
                pool.terminate()
    return resolved, errors


# -------------------------------------------------------------------------------- manifest stage


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.3f}"


def groups_or_blank(items: list[Item], checks: Checks, unit: str) -> list[Item]:
    """``items`` unchanged if no group crosses a split; otherwise groups blanked, with a warning.

    For datasets whose owners do not promise that ``unit`` stays inside one split."""
    homes: dict[str, str] = {}
    crossing = [i.group for i in items if i.group and homes.setdefault(i.group, i.split) != i.split]
    if not crossing:
        return items
    checks.warn(f"{len(set(crossing))} {unit}s appear in more than one split (e.g. {crossing[0]}); "
                "the manifest gets no group column")
    return [replace(item, group="") for item in items]


def check_groups(items: Sequence[Item]) -> None:
    """A group must not appear in two splits or two folds (it is the leakage unit)."""
    homes: dict[str, tuple[str, str]] = {}
    for item in items:
        if not item.group:
            continue
        home = (item.split, item.fold)
        previous = homes.setdefault(item.group, home)
        if previous != home:
            raise PrepareError(
                f"group {item.group!r} (clip {item.target}) is in split/fold {home} and also {previous}: "
                "the recipe's leakage unit crosses a split"
            )


def write_text_atomic(path: Path, text: str) -> None:
    _write_atomic_bytes(path, text.encode("utf-8"))


def write_manifest(items: Sequence[Item], paths: dict[str, str], out_dir: Path, classes: Sequence[str]) -> Path:
    """``OUT_DIR/manifest.csv`` with the columns the data uses, and ``OUT_DIR/classes.txt``."""
    for name in classes:
        if LABEL_SEPARATOR in name or "\n" in name:
            raise PrepareError(f"class name {name!r} contains {LABEL_SEPARATOR!r} or a newline")
    check_groups(items)
    used = {"path", "label"}
    for item in items:
        used |= {c for c in ("split", "fold", "group") if getattr(item, c)}
        if item.start is not None or item.end is not None:
            used |= {"start", "end"}
    columns = [c for c in MANIFEST_COLUMNS if c in used]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for item in items:
        values = {
            "path": paths[item.target], "label": LABEL_SEPARATOR.join(item.labels), "split": item.split,
            "fold": item.fold, "group": item.group, "start": _seconds(item.start), "end": _seconds(item.end),
        }
        writer.writerow([values[c] for c in columns])
    manifest = out_dir / "manifest.csv"
    write_text_atomic(manifest, buffer.getvalue())
    write_text_atomic(out_dir / "classes.txt", "".join(f"{name}\n" for name in classes))
    return manifest


# ----------------------------------------------------------------------------------- stats stage


def _read_segment(path: Path, start: float | None, end: float | None) -> torch.Tensor:
    if start is None and end is None:
        samples, rate, _ = decode_file(path)
    else:
        info = soundfile.info(str(path))
        first = int(round((start or 0.0) * info.samplerate))
        last = None if end is None else int(round(end * info.samplerate))
        audio, rate = soundfile.read(str(path), start=first, stop=last, dtype="float32", always_2d=True)
        samples = audio.mean(axis=1)
    return torch.from_numpy(resample(np.ascontiguousarray(samples, dtype=np.float32), rate, TARGET_SAMPLE_RATE))


def manifest_stats(
    items: Sequence[Item], paths: dict[str, str], out_dir: Path, features: FeatureConfig, max_clips: int
) -> dict[str, object]:
    """Mean/std of the padded log-mel over up to ``max_clips`` items (evenly spaced, deterministic)."""
    from tqdm import tqdm

    if not items:
        raise PrepareError("no training clips to compute statistics on")
    step = max(1, math.ceil(len(items) / max_clips))
    chosen = list(items)[::step][:max_clips]
    total, total_sq, count, skipped = 0.0, 0.0, 0, 0
    for item in tqdm(chosen, unit="clip", desc="statistics", mininterval=2.0):
        path = Path(paths[item.target])
        path = path if path.is_absolute() else out_dir / path
        try:
            frames = waveform_frames(_read_segment(path, item.start, item.end), features).double()
        except Exception as exc:  # noqa: BLE001 - counted, as everywhere else
            print(f"statistics: skipping {path}: {exc}", file=sys.stderr)
            skipped += 1
            continue
        total, total_sq, count = total + float(frames.sum()), total_sq + float(frames.pow(2).sum()), count + frames.numel()
    if count == 0:
        raise PrepareError("statistics: no readable training clip")
    mean, std = mean_std(total, total_sq, count)
    return {"mean": mean, "std": std, "clips": len(chosen) - skipped, "skipped": skipped,
            "target_length": features.target_length, "include_padding": True}


# ---------------------------------------------------------------------------------------- driver


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def build_parser(recipe: Recipe) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"finetune/{recipe.name}/prepare.sh",
        description=recipe.description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "stages: 0 verify, 1 audio (16 kHz mono FLAC), 2 manifest, 3 stats; a rerun skips finished work.\n"
            f"example: finetune/{recipe.name}/prepare.sh /data/{recipe.name}_download data/{recipe.name}"
        ),
    )
    parser.add_argument("source_dir", type=Path, help="the owners' unpacked tree (see above)")
    parser.add_argument("out_dir", type=Path, help="where audio/, manifest.csv, classes.txt and stats.json go")
    parser.add_argument("--partial", action="store_true", help="allow missing clips and count mismatches (warn)")
    parser.add_argument("--stage", type=int, default=0, help="first stage to run (default 0)")
    parser.add_argument("--stop-stage", type=int, default=len(STAGES) - 1, help="last stage to run (default 3)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes (default: all cores)")
    parser.add_argument("--copy-audio", action="store_true", help="convert 16 kHz mono sources too (default: use them in place)")
    parser.add_argument("--stats-clips", type=int, default=DEFAULT_STATS_CLIPS, help="training clips for the statistics (default %(default)s)")
    return parser


def run_recipe(recipe: Recipe, argv: Sequence[str] | None = None) -> int:
    """The ``prepare.sh`` entry point: parse arguments, run the stages, print a summary."""
    args = build_parser(recipe).parse_args(argv)
    try:
        return _run(recipe, args)
    except PrepareError as error:
        print(f"{recipe.name}/prepare: error: {error}", file=sys.stderr)
        return 1


def _run(recipe: Recipe, args: argparse.Namespace) -> int:
    if not 0 <= args.stage <= args.stop_stage < len(STAGES):
        raise PrepareError(f"--stage/--stop-stage must satisfy 0 <= stage <= stop-stage <= {len(STAGES) - 1}")
    source, out_dir = args.source_dir, args.out_dir
    require_dir(source, f"{recipe.name} source folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    checks = Checks(args.partial)
    print(f"stage 0 verify: reading {source}")
    items = recipe.collect(source, checks)
    if not items:
        raise PrepareError(f"{source}: no clips found for {recipe.name}")
    classes = sorted({label for item in items for label in item.labels})
    print(f"  {len(items)} clips, {len(classes)} classes" + "".join(
        f", {name or 'no split'}: {n}" for name, n in sorted(Counter(i.split for i in items).items())))
    report: dict[str, object] = {"dataset": recipe.name, "clips_listed": len(items), "classes": len(classes),
                                 "warnings": checks.warnings}
    if args.stop_stage < 1:
        return 0
    paths: dict[str, str] = {}
    if args.stage <= 1:
        print(f"stage 1 audio: 16 kHz mono FLAC under {out_dir / 'audio'}")
        paths, errors = prepare_audio(items, out_dir, copy_audio=args.copy_audio, workers=max(1, args.workers))
        if recipe.extra_audio is not None:
            recipe.extra_audio(source, out_dir)
        rows = "".join(f"{target},{json.dumps(error)}\n" for target, error in sorted(errors.items()))
        write_text_atomic(out_dir / "rejects.csv", "target,error\n" + rows)
        if errors:
            checks.warn(f"{len(errors)} unreadable clips skipped (listed in {out_dir / 'rejects.csv'})")
        report["rejected"] = len(errors)
    else:
        paths = _existing_paths(items, out_dir)
    kept = [item for item in items if item.target in paths]
    report["clips"] = len(kept)
    if args.stop_stage < 2:
        return _finish(out_dir, report)
    if args.stage <= 2:
        manifest = write_manifest(kept, paths, out_dir, classes)
        print(f"stage 2 manifest: {manifest} ({len(kept)} rows)")
    if args.stop_stage < 3:
        return _finish(out_dir, report)
    manifest_text = (out_dir / "manifest.csv").read_text(encoding="utf-8")
    stats_path = out_dir / "stats.json"
    digest = _digest(manifest_text)
    previous = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else {}
    if previous.get("manifest_digest") == digest and previous.get("target_length") == recipe.target_length:
        print(f"stage 3 stats: {stats_path} is up to date (mean {previous['mean']:.4f}, std {previous['std']:.4f})")
    else:
        train = [item for item in kept if item.split in recipe.stats_splits]
        if recipe.whole_file_stats:
            train = [replace(item, start=None, end=None) for item in {i.target: i for i in train}.values()]
        features = replace(FeatureConfig(), target_length=recipe.target_length)
        stats = manifest_stats(train, paths, out_dir, features, args.stats_clips)
        stats["manifest_digest"] = digest
        write_text_atomic(stats_path, json.dumps(stats, indent=1) + "\n")
        print(f"stage 3 stats: mean {stats['mean']:.4f}, std {stats['std']:.4f} over {stats['clips']} clips -> {stats_path}")
    return _finish(out_dir, report)


def _existing_paths(items: Sequence[Item], out_dir: Path) -> dict[str, str]:
    """Stage 1 skipped: reuse what a previous audio stage produced."""
    paths: dict[str, str] = {}
    for item in items:
        if (out_dir / item.target).is_file():
            paths[item.target] = item.target
        elif item.source is not None and item.make_audio is None and _in_place(item.source):
            paths[item.target] = str(item.source.resolve())
    if not paths:
        raise PrepareError(f"{out_dir}: no prepared audio; run stage 1 first")
    return paths


def _finish(out_dir: Path, report: dict[str, object]) -> int:
    write_text_atomic(out_dir / "prepare.json", json.dumps(report, indent=1) + "\n")
    warnings = report.get("warnings") or []
    print(f"done: {report.get('clips', report['clips_listed'])} clips in {out_dir}" + (f" ({len(warnings)} warnings)" if warnings else ""))
    return 0


# ------------------------------------------------------------------ readers shared by two recipes


SPEECH_COMMANDS_NOISE = "_background_noise_"


def read_list_file(path: Path) -> list[str]:
    """A Speech Commands list file: one ``word/file.wav`` per line."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def speech_commands_items(
    source: Path, checks: Checks, *, total: int, classes: int, valid: int | None, test: int | None
) -> list[Item]:
    """Speech Commands (v0.01 or v0.02 main archive, extracted): the official list-file split.

    valid = ``validation_list.txt``, test = ``testing_list.txt`` (test wins if a file is in both,
    with a warning), train = every other WAV in a word folder (``_background_noise_`` excluded);
    label = the word folder, group = the speaker hash before ``_nohash_``.
    """
    valid_list = read_list_file(require_file(source / "validation_list.txt", "validation_list.txt"))
    test_list = read_list_file(require_file(source / "testing_list.txt", "testing_list.txt"))
    both = sorted(set(valid_list) & set(test_list))
    if both:
        checks.warn(f"{len(both)} files are in both validation_list.txt and testing_list.txt (e.g. {both[0]}); they go to test")
    words = sorted(d.name for d in source.iterdir() if d.is_dir() and not d.name.startswith("_"))
    if not words:
        raise PrepareError(f"{source}: no word folders (expected e.g. yes/, no/, ... next to validation_list.txt)")
    files = sorted(p.relative_to(source).as_posix() for word in words for p in (source / word).glob("*.wav"))
    checks.count(f"{source}: WAV files in word folders", len(files), total)
    checks.count(f"{source}: word folders", len(words), classes)
    present = set(files)
    for name, listed, expected in (("validation_list.txt", valid_list, valid), ("testing_list.txt", test_list, test)):
        if expected is not None:
            checks.count(f"{name} entries", len(listed), expected)
        checks.missing(f"files listed in {name}", [r for r in listed if r not in present], len(listed))
    split_of = {**{r: "valid" for r in valid_list}, **{r: "test" for r in test_list}}
    items = []
    for rel in files:
        word, name = rel.split("/", 1)
        speaker = name.split("_nohash_")[0]
        items.append(Item(source / rel, flac_target(rel), (word,), split=split_of.get(rel, "train"), group=speaker))
    return items


def copy_speech_commands_noise(source: Path, out_dir: Path) -> None:
    """``_background_noise_/*.wav`` -> ``OUT_DIR/background_noise/*.flac`` (for noise augmentation)."""
    noise_dir = source / SPEECH_COMMANDS_NOISE
    files = sorted(noise_dir.glob("*.wav")) if noise_dir.is_dir() else []
    if not files:
        print(f"warning: no {SPEECH_COMMANDS_NOISE}/*.wav in {source}; background-noise augmentation will be off", file=sys.stderr)
        return
    for path in files:
        write_flac_copy(path, out_dir / "background_noise" / f"{path.stem}.flac")
    print(f"  {len(files)} background-noise recordings -> {out_dir / 'background_noise'}")
