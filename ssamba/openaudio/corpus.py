"""Build the open real-audio pretraining corpus from Debian `main` packages (one step per sub-command).

examples:
  python -m ssamba.openaudio.corpus fetch   --data data/open_audio --variant lean
  python -m ssamba.openaudio.corpus unpack  --data data/open_audio --variant lean
  python -m ssamba.openaudio.corpus convert --data data/open_audio --variant lean --workers 2
  python -m ssamba.openaudio.corpus topup   --data data/open_audio --variant lean --tts-hours 2 --music-hours 2
  python -m ssamba.openaudio.corpus check   --data data/open_audio --variant lean --probes data/open_audio/probes
  python -m ssamba.openaudio.corpus report  --data data/open_audio --variant lean

Layout under --data: ``debs/`` (apt-get download), ``raw/<package>/`` (dpkg -x, plus ``_archives/`` for
zip files inside packages), ``<variant>/clips/<origin>/...flac`` (16 kHz mono 16-bit FLAC, files longer
than 10 s cut into 10 s segments, digital silence and clips under 0.3 s dropped), ``<variant>/parts/
<origin>.csv`` (one per finished source: reruns skip it), ``<variant>/train-<kind>.csv`` + ``eval.csv``
(the manifests for ``ssamba shards manifest``, one per kind so the pretraining can weight the mix; columns path, origin, kind, source_path, duration,
fingerprint) and ``<variant>/report.json`` (hours per source and kind).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssamba.audio.io import AUDIO_EXTENSIONS, AudioDecodeError
from ssamba.openaudio import leakage, render
from ssamba.openaudio.sources import (ALLOWED_BANK_FILES, BANK_PACKAGES, EXCLUDE, KINDS, LONG_FILE_MUSIC_PACKAGES,
                                      LONG_FILE_MUSIC_SECONDS, MUSIC, SPEECH, TASK_A_VALID_PROGRAMS, TEXT_DIR,
                                      TEXT_PACKAGE, TTS_ESPEAK, Package, packages_for)

SEGMENT_SECONDS = 10.0
MIN_SECONDS = 0.3
SILENCE_PEAK = 1e-4  # peak |x| below this (-80 dBFS) is digital silence
EVAL_PERCENT = 2  # source files (all their segments) hashed into the evaluation split
MANIFEST_FIELDS = ("path", "origin", "kind", "source_path", "duration", "fingerprint")
ARCHIVE_DIR = "_archives"
TINY_MAX_FILES = 60


# ---------------------------------------------------------------- fetch and unpack


def fetch(data: Path, packages: Iterable[str]) -> None:
    """``apt-get download`` the packages neither in ``data/debs`` nor unpacked yet (no installation)."""
    debs = data / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    have = {p.name.split("_", 1)[0] for p in debs.glob("*.deb")}
    missing = [name for name in packages if name not in have and not (data / "raw" / name / ".unpacked").exists()]
    if not missing:
        print(f"fetch: all packages already in {debs} or unpacked")
        return
    render.require_tools(["apt-get"])
    print(f"fetch: apt-get download {' '.join(missing)}")
    done = subprocess.run(["apt-get", "download", *missing], cwd=debs, check=False, timeout=3600)
    if done.returncode != 0:
        raise render.ToolError(f"apt-get download failed ({done.returncode}); run `apt-get update` first?")


def deb_path(data: Path, package: str) -> Path:
    """The downloaded .deb of ``package`` (the newest when several)."""
    found = sorted((data / "debs").glob(f"{package}_*.deb"))
    if not found:
        raise FileNotFoundError(f"{data / 'debs'}: no .deb for {package} (run the fetch stage)")
    return found[-1]


def unpack(data: Path, package: Package | str, archives: Iterable[tuple[str, tuple[str, ...]]] = ()) -> Path:
    """``dpkg -x`` the package into ``data/raw/<name>`` and extract audio members of its archives."""
    name = package if isinstance(package, str) else package.name
    archives = tuple(archives) if isinstance(package, str) else package.archives
    raw = data / "raw" / name
    stamp = raw / ".unpacked"
    if stamp.exists():
        return raw
    render.require_tools(["dpkg"])
    raw.mkdir(parents=True, exist_ok=True)
    render.run_tool(["dpkg", "-x", str(deb_path(data, name)), str(raw)], timeout=3600)
    for archive, prefixes in archives:
        target = raw / ARCHIVE_DIR / Path(archive).stem
        with zipfile.ZipFile(raw / archive) as zf:
            for member in zf.namelist():
                if member.startswith(prefixes) and Path(member).suffix.lower() in AUDIO_EXTENSIONS:
                    destination = (target / member).resolve()
                    if not destination.is_relative_to(target.resolve()):
                        raise ValueError(f"{raw / archive}: member {member!r} escapes the target folder")
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    destination.write_bytes(zf.read(member))
        (raw / archive).unlink()  # the audio is out; the archive (GBs for 0 A.D.) is not needed again
    stamp.write_text("ok\n")
    return raw


def package_files(raw: Path) -> list[tuple[Path, str]]:
    """(file, path inside the package or archive) of every audio file under an unpacked package."""
    out = []
    for path in sorted(raw.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in AUDIO_EXTENSIONS:
            continue
        rel = path.relative_to(raw)
        if rel.parts[0] == ARCHIVE_DIR:
            rel = Path(*rel.parts[2:])
        out.append((path, rel.as_posix()))
    return out


# ---------------------------------------------------------------- convert


def segments(audio: np.ndarray, sample_rate: int = render.SAMPLE_RATE) -> list[tuple[int, np.ndarray]]:
    """Cut into consecutive :data:`SEGMENT_SECONDS` pieces; drop digital silence and pieces under 0.3 s."""
    step = int(SEGMENT_SECONDS * sample_rate)
    out = []
    for index, start in enumerate(range(0, max(len(audio), 1), step)):
        piece = audio[start : start + step]
        if len(piece) < MIN_SECONDS * sample_rate or float(np.max(np.abs(piece), initial=0.0)) < SILENCE_PEAK:
            continue
        out.append((index, piece))
    return out


def _convert_task(task: tuple[str, str, str, str, str]) -> tuple[list[dict[str, object]], str | None]:
    path, rel, origin, kind, clips = task
    try:
        audio = render.read_mono(Path(path))
    except (AudioDecodeError, OSError, RuntimeError) as exc:
        return [], f"{path}: {exc}"
    if origin in LONG_FILE_MUSIC_PACKAGES and len(audio) >= LONG_FILE_MUSIC_SECONDS * render.SAMPLE_RATE:
        kind = MUSIC
    rows = []
    for index, piece in segments(audio):  # the source's extension stays in the name: a.ogg and a.wav both exist
        pcm = render.quantize(piece)
        out = Path(clips) / origin / f"{rel}_{index:03d}.flac"
        render.write_clip(out, pcm)
        rows.append({"path": out.relative_to(Path(clips).parent).as_posix(), "origin": origin, "kind": kind,
                     "source_path": rel, "duration": round(len(pcm) / render.SAMPLE_RATE, 4),
                     "fingerprint": leakage.fingerprint(pcm)})
    return rows, None


def _write_rows(path: Path, rows: list[dict[str, object]], fields: tuple[str, ...] = MANIFEST_FIELDS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def convert(data: Path, variant: str, workers: int, only: Iterable[str] | None = None) -> None:
    """Convert every package of ``variant`` (or those named in ``only``; resumable per package:
    ``parts/<package>.csv``)."""
    out = data / variant
    chosen = packages_for(variant)
    if only:
        unknown = set(only) - {p.name for p in chosen}
        if unknown:
            raise ValueError(f"packages not in the {variant} corpus: {', '.join(sorted(unknown))}")
        chosen = tuple(p for p in chosen if p.name in set(only))
    for package in chosen:
        part = out / "parts" / f"{package.name}.csv"
        if part.exists():
            continue
        raw = unpack(data, package)
        files = [(p, rel) for p, rel in package_files(raw) if package.kind_of(rel) != EXCLUDE]
        if variant == "tiny":
            files = files[:TINY_MAX_FILES]
        tasks = [(str(p), rel, package.name, package.kind_of(rel), str(out / "clips")) for p, rel in files]
        rows, failures = _run_tasks(tasks, workers, desc=package.name)
        for failure in failures:
            print(f"  skipped unreadable: {failure}", file=sys.stderr)
        _write_rows(part, rows)
        hours = sum(float(r["duration"]) for r in rows) / 3600
        print(f"convert: {package.name}: {len(files)} files -> {len(rows)} clips, {hours:.2f} h, {len(failures)} skipped")


def _run_tasks(tasks: list, workers: int, desc: str) -> tuple[list[dict[str, object]], list[str]]:
    rows: list[dict[str, object]] = []
    failures: list[str] = []
    if workers > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = list(tqdm(pool.imap(_convert_task, tasks, chunksize=4), total=len(tasks), desc=desc, leave=False))
    else:
        results = [_convert_task(t) for t in tqdm(tasks, desc=desc, leave=False)]
    for task_rows, failure in results:
        rows.extend(task_rows)
        if failure:
            failures.append(failure)
    return rows, failures


# ---------------------------------------------------------------- synthetic top-up

ESPEAK_LANGUAGES = ("af", "bg", "ca", "cs", "cy", "da", "de", "el", "en", "en-us", "en-gb-scotland", "en-029",
                    "eo", "es", "es-419", "et", "fi", "fr", "ga", "hi", "hr", "hu", "id", "is", "it", "ka",
                    "lt", "lv", "mk", "ms", "nl", "pl", "pt", "pt-br", "ro", "ru", "sk", "sr", "sv", "sw",
                    "ta", "tr", "uk", "vi")
ESPEAK_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5",
                   "+klatt", "+croak")
SCALE_STEPS = (0, 2, 4, 5, 7, 9, 11)
# Melodic GM programs (0-103, no sound effects) minus task A's validation programs.
TOPUP_PROGRAMS = tuple(p for p in range(104) if p not in TASK_A_VALID_PROGRAMS)


def _sentences(data: Path) -> list[str]:
    unpack(data, TEXT_PACKAGE)
    text_dir = data / "raw" / TEXT_PACKAGE / TEXT_DIR
    sentences = []
    for path in sorted(text_dir.iterdir()):
        if path.suffix or path.is_symlink() or not path.is_file():
            continue
        for block in path.read_text(encoding="utf-8", errors="replace").split("\n%\n"):
            block = " ".join(block.split())
            if 10 <= len(block) <= 300:
                sentences.append(block)
    if not sentences:
        raise ValueError(f"{text_dir}: no text found")
    return sentences


def _topup_request(hours: float, seed: int) -> dict[str, object]:
    """What a top-up part records beside it (``<part>.json``): the hours and seed it was made with."""
    return {"hours": float(hours), "seed": seed}


def _topup_done(part: Path, hours: float, seed: int) -> bool:
    """True when ``part`` holds this top-up already or none is asked for; raises when it holds another one
    (a corpus never mixes top-ups made with other hours or seeds, silently or otherwise)."""
    if not part.exists():
        return hours <= 0
    record = part.with_suffix(".json")
    found = json.loads(record.read_text(encoding="utf-8")) if record.exists() else "an unknown request"
    request = _topup_request(hours, seed)
    if found != request:
        raise ValueError(f"{part}: holds a top-up made with {found}, not {request}; "
                         f"use another data folder, or delete {part.name} and its clips to rebuild it")
    return True


def _write_topup(part: Path, rows: list[dict[str, object]], hours: float, seed: int) -> None:
    """The record first, then the part: a run killed between the two leaves no part, so it is redone."""
    part.parent.mkdir(parents=True, exist_ok=True)
    part.with_suffix(".json").write_text(json.dumps(_topup_request(hours, seed)) + "\n", encoding="utf-8")
    _write_rows(part, rows)


def topup_tts(data: Path, variant: str, hours: float, seed: int = 0) -> None:
    """espeak-ng speech in many languages, voices, speeds and pitches (the only TTS allowed in the corpus)."""
    part = data / variant / "parts" / "topup-tts.csv"
    if _topup_done(part, hours, seed):
        return
    sentences = _sentences(data)
    rng = random.Random(seed)
    clips = data / variant / "clips"
    rows: list[dict[str, object]] = []
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=round(hours * 3600), desc="tts", unit="s") as bar:
        while total < hours * 3600:
            voice = rng.choice(ESPEAK_LANGUAGES) + rng.choice(ESPEAK_VARIANTS)
            audio = render.tts("espeak-ng", rng.choice(sentences), Path(tmp) / "x.wav", voice=voice,
                               speed=rng.randint(120, 200), pitch=rng.randint(20, 80))
            for index, piece in segments(audio):
                pcm = render.quantize(piece * (0.7 / max(float(np.abs(piece).max()), 1e-6)))
                name = f"tts/espeak_{len(rows):06d}_{index:02d}.flac"
                render.write_clip(clips / name, pcm)
                seconds = len(pcm) / render.SAMPLE_RATE
                rows.append({"path": f"clips/{name}", "origin": TTS_ESPEAK, "kind": SPEECH,
                             "source_path": voice, "duration": round(seconds, 4),
                             "fingerprint": leakage.fingerprint(pcm)})
                total += seconds
                bar.update(round(seconds))
    _write_topup(part, rows, hours, seed)


def bank_origin(soundfont: Path) -> str:
    """The corpus origin of a sound bank; raises for any bank not allowed in pretraining."""
    origin = ALLOWED_BANK_FILES.get(soundfont.name)
    if origin is None:
        raise ValueError(f"{soundfont}: sound bank not allowed for pretraining music "
                         f"(allowed: {', '.join(sorted(ALLOWED_BANK_FILES))})")
    return origin


def random_music(rng: random.Random, seconds: float) -> tuple[list[render.Note], list[tuple[float, int, int]]]:
    """Melody + chords + optional drums in a random key and tempo, one program of :data:`TOPUP_PROGRAMS`
    per part per 10 s."""
    notes: list[render.Note] = []
    programs: list[tuple[float, int, int]] = []
    start = 0.0
    while start < seconds:
        root = rng.randint(36, 60)
        beat = 60.0 / rng.randint(70, 160)
        scale = [root + 12 * octave + step for octave in range(3) for step in SCALE_STEPS]
        programs += [(start, 0, rng.choice(TOPUP_PROGRAMS)), (start, 1, rng.choice(TOPUP_PROGRAMS))]
        t = start
        while t < start + SEGMENT_SECONDS - beat:
            length = beat * rng.choice((0.5, 1, 1, 2))
            notes.append(render.Note(t, length * 0.9, rng.choice(scale[7:]), rng.randint(50, 127), 0))
            if rng.random() < 0.3:
                for step in (0, 2, 4):
                    notes.append(render.Note(t, length, scale[(rng.randint(0, 6) + step) % len(scale)],
                                             rng.randint(40, 100), 1))
            if rng.random() < 0.5:
                notes.append(render.Note(t, 0.1, rng.choice((35, 38, 42, 46, 49)), rng.randint(60, 120), 9))
            t += length
        start += SEGMENT_SECONDS
    return notes, programs


def topup_music(data: Path, variant: str, hours: float, seed: int = 0, minutes_per_render: float = 5.0) -> None:
    """Random MIDI music rendered with the allowed banks (FluidR3 and MuseScore General) only."""
    part = data / variant / "parts" / "topup-music.csv"
    if _topup_done(part, hours, seed):
        return
    banks = []
    for package, inner in sorted(BANK_PACKAGES.items()):
        raw = unpack(data, package)
        banks.append(raw / inner)
    origins = [bank_origin(bank) for bank in banks]
    rng = random.Random(seed)
    clips = data / variant / "clips"
    rows: list[dict[str, object]] = []
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp, tqdm(total=round(hours * 3600), desc="music", unit="s") as bar:
        render_index = 0
        while total < hours * 3600:
            which = render_index % len(banks)
            notes, programs = random_music(rng, minutes_per_render * 60)
            midi = Path(tmp) / "x.mid"
            render.write_midi(midi, notes, programs)
            audio = render.render_midi(midi, banks[which], Path(tmp) / "x.wav", effects=True)
            for index, piece in segments(audio):
                pcm = render.quantize(piece * (0.7 / max(float(np.abs(piece).max()), 1e-6)))
                name = f"music/{origins[which].split(':')[1]}_{render_index:04d}_{index:03d}.flac"
                render.write_clip(clips / name, pcm)
                seconds = len(pcm) / render.SAMPLE_RATE
                rows.append({"path": f"clips/{name}", "origin": origins[which], "kind": MUSIC,
                             "source_path": f"render{render_index}", "duration": round(seconds, 4),
                             "fingerprint": leakage.fingerprint(pcm)})
                total += seconds
                bar.update(round(seconds))
            render_index += 1
    _write_topup(part, rows, hours, seed)


# ---------------------------------------------------------------- check, split, report


def _is_eval(row: dict[str, str]) -> bool:
    digest = hashlib.sha1(f"{row['origin']}/{row['source_path']}".encode()).hexdigest()
    return int(digest[:8], 16) % 100 < EVAL_PERCENT


def all_rows(data: Path, variant: str) -> list[dict[str, str]]:
    parts = sorted((data / variant / "parts").glob("*.csv"))
    if not parts:
        raise FileNotFoundError(f"{data / variant / 'parts'}: nothing converted yet (run the convert stage)")
    return [row for part in parts for row in _read_rows(part)]


def check(data: Path, variant: str, probe_manifests: list[Path]) -> None:
    """Leakage check over every converted clip, then write the per-kind train manifests and ``eval.csv``."""
    rows = all_rows(data, variant)
    prints = leakage.probe_fingerprints(probe_manifests)
    corpus = [leakage.CorpusRow(r["path"], r["origin"], r["source_path"], r["fingerprint"]) for r in rows]
    checked = leakage.check_corpus(corpus, prints)
    print(f"check: {checked} corpus clips against {len(prints)} probe clips from {len(probe_manifests)} "
          f"manifests and the source allow-list: no leak")
    for row in rows:  # short shard keys (tar member names are limited to 100 characters)
        row["key"] = f"{row['origin']}-{hashlib.sha1(row['path'].encode()).hexdigest()[:16]}"
    fields = ("key", *MANIFEST_FIELDS)
    train = [r for r in rows if not _is_eval(r)]
    _write_rows(data / variant / "eval.csv", [r for r in rows if _is_eval(r)], fields)
    for kind in KINDS:
        kind_rows = [r for r in train if r["kind"] == kind]
        target = data / variant / f"train-{kind}.csv"
        if kind_rows:
            _write_rows(target, kind_rows, fields)
        elif target.exists():
            target.unlink()


def report(data: Path, variant: str) -> dict[str, object]:
    """Hours per origin and per kind; written to ``<variant>/report.json`` and printed as a table."""
    rows = all_rows(data, variant)
    by_origin: dict[str, float] = defaultdict(float)
    by_kind: dict[str, float] = {kind: 0.0 for kind in KINDS}
    clips: dict[str, int] = defaultdict(int)
    for row in rows:
        seconds = float(row["duration"])
        by_origin[row["origin"]] += seconds / 3600
        by_kind[row["kind"]] += seconds / 3600
        clips[row["origin"]] += 1
    summary = {
        "variant": variant,
        "clips": len(rows),
        "hours": round(sum(by_kind.values()), 4),
        "hours_per_kind": {k: round(v, 4) for k, v in by_kind.items()},
        "hours_per_source": {k: round(v, 4) for k, v in sorted(by_origin.items())},
        "clips_per_source": dict(sorted(clips.items())),
    }
    (data / variant / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'source':32s} {'clips':>7s} {'hours':>7s}")
    for origin, hours in sorted(by_origin.items()):
        print(f"{origin:32s} {clips[origin]:7d} {hours:7.3f}")
    for kind, hours in by_kind.items():
        print(f"{'kind: ' + kind:32s} {'':7s} {hours:7.3f}")
    print(f"{'total':32s} {len(rows):7d} {summary['hours']:7.3f}")
    return summary


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssamba.openaudio.corpus", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=("fetch", "unpack", "convert", "topup", "check", "report"))
    parser.add_argument("--data", type=Path, required=True, help="data folder (debs, raw, variants)")
    parser.add_argument("--variant", choices=("full", "lean", "tiny"), default="full")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--tts-hours", type=float, default=0.0, help="topup: espeak-ng speech hours")
    parser.add_argument("--music-hours", type=float, default=0.0, help="topup: rendered MIDI music hours")
    parser.add_argument("--probes", type=Path, nargs="*", default=[],
                        help="check: probe manifests (CSV) or folders searched for manifest.csv")
    parser.add_argument("--packages", nargs="+", default=None, help="unpack/convert: only these packages")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    packages = packages_for(args.variant)
    try:
        if args.step == "fetch":
            names = [p.name for p in packages]
            if args.tts_hours > 0:
                names.append(TEXT_PACKAGE)
            if args.music_hours > 0:
                names += sorted(BANK_PACKAGES)
            fetch(args.data, names)
        elif args.step == "unpack":
            for package in tqdm([p for p in packages if not args.packages or p.name in args.packages], desc="unpack"):
                unpack(args.data, package)
        elif args.step == "convert":
            convert(args.data, args.variant, args.workers, args.packages)
        elif args.step == "topup":
            topup_tts(args.data, args.variant, args.tts_hours, args.seed)
            topup_music(args.data, args.variant, args.music_hours, args.seed)
        elif args.step == "check":
            manifests = []
            for item in args.probes:
                manifests += sorted(item.rglob("manifest.csv")) if item.is_dir() else [item]
            check(args.data, args.variant, manifests)
        else:
            report(args.data, args.variant)
    except (leakage.LeakageError, render.ToolError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
