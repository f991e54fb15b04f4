"""The three probe tasks of the open-audio benchmark; each writes ``<out>/clips/`` and ``<out>/manifest.csv``.

examples:
  python -m ssamba.openaudio.probes instrument --data data/open_audio --out data/open_audio/probes/A
  python -m ssamba.openaudio.probes foley --data data/open_audio --out data/open_audio/probes/B
  python -m ssamba.openaudio.probes keywords --out data/open_audio/probes/C
  python -m ssamba.openaudio.probes keywords --out /tmp/C --phrases 4 --renders 3    # tiny subset

A  instrument family, 11 classes: one note per 2 s slot (1 s on), sliced to 1.5 s; train on FluidR3_GM,
   valid on FluidR3 programs held out (every 4th program of each family), test on the csound GM bank.
B  0 A.D. Foley, 10 classes, first 3 s of each file; ``fold`` 1-5 assigned by file stem
   (``mine_stone_01..25`` is one group), ``group`` the stem.
C  keyword spotting, 28 phrases: train espeak-ng (random English accent, variant, speed, pitch),
   valid festival (kal, ked, slt), test flite (kal, kal16, awb, rms, slt x 3 duration stretches);
   every render is cut to its speech: from the first to the last 25 ms frame within 40 dB of its loudest.

Everything is seeded (``--seed``); the same inputs give the same clips. A finished task (its
manifest exists) is skipped unless ``--force``; one built by an older recipe (``recipe.json``) is rebuilt.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import re
import shutil
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ssamba.openaudio import corpus, render
from ssamba.openaudio.sources import FAMILIES, heldout_programs

MANIFEST = "manifest.csv"
SILENCE_PEAK = 1e-4

# ---------------------------------------------------------------- A: instrument family

TRAIN_BANK = ("fluid-soundfont-gm", "usr/share/sounds/sf2/FluidR3_GM.sf2")
TEST_BANK = ("csound-soundfont", "usr/share/sounds/sf2/sf_GMbank.sf2")
SLOT_SECONDS, NOTE_SECONDS, CLIP_SECONDS_A = 2.0, 1.0, 1.5


def _render_bank(bank: Path, plan: list[tuple[str, int]], notes: int, seed: int, tmp: Path) -> dict[tuple[int, int], np.ndarray]:
    """Render ``notes`` notes for every (family, program) of ``plan`` in one fluidsynth call; slot -> clip."""
    rng = random.Random(seed)
    midi_notes, programs, slots = [], [], []
    for family, program in plan:
        programs.append((len(slots) * SLOT_SECONDS, 0, program))
        low, high = (28, 55) if family == "bass" else (48, 84)
        for k in range(notes):
            start = len(slots) * SLOT_SECONDS
            midi_notes.append(render.Note(start, NOTE_SECONDS, rng.randint(low, high), rng.randint(50, 127)))
            slots.append((program, k))
    midi = tmp / "notes.mid"
    render.write_midi(midi, midi_notes, programs)
    audio = render.render_midi(midi, bank, tmp / "notes.wav")
    step, length = int(SLOT_SECONDS * render.SAMPLE_RATE), int(CLIP_SECONDS_A * render.SAMPLE_RATE)
    out = {}
    for index, slot in enumerate(slots):
        clip = audio[index * step : index * step + length]
        if len(clip) == length and float(np.abs(clip).max()) >= SILENCE_PEAK:
            out[slot] = clip
    return out


def prepare_instrument(data: Path, out: Path, *, notes: int = 12, programs_per_family: int | None = None,
                       seed: int = 0) -> Path:
    """Task A. ``programs_per_family`` limits the programs (tiny subsets for tests)."""
    banks = {}
    corpus.fetch(data, [TRAIN_BANK[0], TEST_BANK[0]])
    for package, inner in (TRAIN_BANK, TEST_BANK):
        banks[package] = corpus.unpack(data, package) / inner
    plan = [(family, p) for family, programs in FAMILIES.items() for p in programs[:programs_per_family]]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, bank in banks.items():
            clips = _render_bank(bank, plan, notes, seed, Path(tmp))
            for family, program in plan:
                if package == TRAIN_BANK[0]:
                    split = "valid" if program in heldout_programs(FAMILIES[family][:programs_per_family]) else "train"
                else:
                    split = "test"
                for k in range(notes):
                    if (program, k) in clips:
                        name = f"clips/{split}/{package}_p{program:03d}_{k:02d}.flac"
                        render.write_clip(out / name, render.quantize(clips[(program, k)]))
                        rows.append({"path": name, "label": family, "split": split, "group": f"{package}_p{program}"})
    return _write_manifest(out, rows, ("path", "label", "split", "group"))


# ---------------------------------------------------------------- B: 0 A.D. Foley

FOLEY_CLASSES = {
    "impact": "audio/attack/impact/", "weapon": "audio/attack/weapon/", "human_death": "audio/actor/human/death/",
    "gathering": "audio/resource/gathering/", "mining": "audio/resource/mining/",
    "animal": "audio/actor/fauna/animal/", "footsteps": "audio/actor/singlesteps/",
    "construction": "audio/resource/construction/", "lumbering": "audio/resource/lumbering/",
    "fire": "audio/attack/fire/",
}
ZERO_AD = "0ad-data"
CLIP_SECONDS_B = 3.0
FOLDS = 5


def foley_group(rel_path: str) -> str:
    """The file-stem group: trailing numbers and separators removed (``mine_stone_01`` -> ``mine_stone``)."""
    stem = Path(rel_path).stem.lower()
    return re.sub(r"[\s_\-]*\d+[a-z]?$", "", stem) or stem


def assign_folds(groups: dict[str, int], folds: int, seed: int) -> dict[str, int]:
    """Groups (name -> clip count) to folds 1..N: seeded order, largest first, each to the emptiest fold."""
    rng = random.Random(seed)
    names = sorted(groups)
    rng.shuffle(names)
    names.sort(key=lambda g: -groups[g])
    load = [0] * folds
    out = {}
    for name in names:
        fold = min(range(folds), key=lambda f: (load[f], f))
        out[name] = fold + 1
        load[fold] += groups[name]
    return out


def prepare_foley(data: Path, out: Path, *, max_per_class: int | None = None, seed: int = 0) -> Path:
    """Task B from the unpacked 0 A.D. package (``--data``); ``max_per_class`` for tiny subsets."""
    corpus.fetch(data, [ZERO_AD])
    from ssamba.openaudio.sources import PACKAGES_BY_NAME

    raw = corpus.unpack(data, PACKAGES_BY_NAME[ZERO_AD])
    files = corpus.package_files(raw)
    chosen: list[tuple[Path, str, str]] = []
    for label, prefix in FOLEY_CLASSES.items():
        members = [(p, rel) for p, rel in files if rel.startswith(prefix)]
        if not members:
            raise FileNotFoundError(f"{raw}: no 0 A.D. audio under {prefix} (class {label})")
        chosen += [(p, rel, label) for p, rel in members[:max_per_class]]
    rows = []
    for path, rel, label in tqdm(chosen, desc="foley", leave=False):
        # the game's Vorbis assets are trusted, and some overshoot full scale when decoded (the muskets
        # peak at 3.4): no peak limit, and quantize() clips them to 16-bit full scale
        audio = render.read_mono(path, max_peak=None)[: int(CLIP_SECONDS_B * render.SAMPLE_RATE)]
        if len(audio) < 0.3 * render.SAMPLE_RATE or float(np.abs(audio).max()) < SILENCE_PEAK:
            continue
        name = f"clips/{label}/{Path(rel).stem}.flac"
        render.write_clip(out / name, render.quantize(audio))
        rows.append({"path": name, "label": label, "group": f"{label}/{foley_group(rel)}"})
    folds = assign_folds(Counter(r["group"] for r in rows), FOLDS, seed)
    for row in rows:
        row["fold"] = folds[row["group"]]
    return _write_manifest(out, rows, ("path", "label", "fold", "group"))


# ---------------------------------------------------------------- C: TTS keywords

PHRASES = ("Bye bye", "Come on then", "Coward", "Cut it out", "Enemy down", "First blood", "Flawless", "Hello",
           "Hurry", "I'll get you", "Incoming", "Kamikaze", "Leave me alone", "Melon", "Missed", "Nooo", "Nutter",
           "Oops", "Reinforcements", "Same team", "Stupid", "Take cover", "Traitor", "Uh oh", "Victory", "Watch it",
           "Yes sir", "You'll regret that")
ESPEAK_ENGLISH = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
ESPEAK_VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5")
FLITE_STRETCHES = (0.85, 1.0, 1.2)
ENDPOINT_FRAME_SECONDS, ENDPOINT_HOP_SECONDS = 0.025, 0.010
ENDPOINT_TOP_DB = 40.0


def phrase_label(phrase: str) -> str:
    """Class name of a phrase: lower case, words joined by underscores, apostrophes dropped."""
    return re.sub(r"[^a-z]+", "_", phrase.lower().replace("'", "")).strip("_")


def speech_span(audio: np.ndarray, sample_rate: int = render.SAMPLE_RATE, top_db: float = ENDPOINT_TOP_DB) -> slice:
    """Samples from the first to the last frame (25 ms, 10 ms hop) whose energy is within ``top_db`` of the
    loudest frame's: the same endpointing for every TTS engine, whose renders differ in leading and trailing
    near-silence (festival and flite keep about 0.3 s of it, espeak-ng almost none). Empty for digital silence."""
    frame = round(ENDPOINT_FRAME_SECONDS * sample_rate)
    hop = round(ENDPOINT_HOP_SECONDS * sample_rate)
    if audio.size == 0 or float(np.abs(audio).max()) < SILENCE_PEAK:
        return slice(0, 0)
    padded = np.pad(np.asarray(audio, np.float64), (0, max(0, frame - audio.size)))
    energy = np.mean(np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop] ** 2, axis=1)
    loud = np.flatnonzero(energy >= energy.max() * 10.0 ** (-top_db / 10.0))
    return slice(int(loud[0]) * hop, min(audio.size, int(loud[-1]) * hop + frame))


def prepare_keywords(out: Path, *, renders: int = 48, phrases: int | None = None, seed: int = 0) -> Path:
    """Task C (needs espeak-ng, festival with its voices, and flite)."""
    render.require_tools(["espeak-ng", "text2wave", "flite"])
    rng = random.Random(seed)
    jobs: list[tuple[str, str, str, dict[str, object]]] = []  # (split, phrase, engine, tts kwargs)
    for phrase in PHRASES[:phrases]:
        for _ in range(renders):
            voice = rng.choice(ESPEAK_ENGLISH) + rng.choice(ESPEAK_VARIANTS)
            jobs.append(("train", phrase, "espeak-ng",
                         {"voice": voice, "speed": rng.randint(120, 200), "pitch": rng.randint(20, 80)}))
        jobs += [("valid", phrase, "festival", {"voice": v}) for v in render.FESTIVAL_VOICES]
        jobs += [("test", phrase, "flite", {"voice": v, "stretch": s})
                 for v in render.FLITE_VOICES for s in FLITE_STRETCHES]
    rows = []
    counts: Counter[tuple[str, str]] = Counter()
    with tempfile.TemporaryDirectory() as tmp:
        for split, phrase, engine, kwargs in tqdm(jobs, desc="keywords", leave=False):
            audio = render.tts(engine, phrase, Path(tmp) / "x.wav", **kwargs)
            speech = audio[speech_span(audio)]
            if speech.size == 0:
                continue
            label = phrase_label(phrase)
            index = counts[(split, label)]
            counts[(split, label)] += 1
            name = f"clips/{split}/{label}_{engine}_{index:02d}.flac"
            render.write_clip(out / name, render.quantize(speech))
            rows.append({"path": name, "label": label, "split": split, "engine": engine, "voice": kwargs["voice"]})
    return _write_manifest(out, rows, ("path", "label", "split", "engine", "voice"))


# ---------------------------------------------------------------- common


def _write_manifest(out: Path, rows: list[dict[str, object]], fields: tuple[str, ...]) -> Path:
    if not rows:
        raise ValueError(f"{out}: no clips were produced")
    path = out / MANIFEST
    tmp = path.with_name(MANIFEST + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    per_split: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        per_split[str(row.get("split", f"fold {row.get('fold')}"))][str(row["label"])] += 1
    summary = ", ".join(f"{split} {sum(c.values())}" for split, c in sorted(per_split.items()))
    print(f"{path}: {len(rows)} clips, {len({r['label'] for r in rows})} classes ({summary})")
    return path


TASK_FOLDERS = {"instrument": "A_instrument", "foley": "B_foley", "keywords": "C_keywords"}
"""Task -> its folder under finetune/open_audio_probes/ and DATA/probes/."""
RECIPE_VERSIONS = {"instrument": 1, "foley": 1, "keywords": 2}
"""Raised when a task's clips change; a folder built by an older recipe is rebuilt (keywords 2: endpointing)."""
RECIPE = "recipe.json"


def built_recipe_version(out: Path) -> int | None:
    """The recipe version a finished task folder was built with (1 for folders from before versions were
    recorded), or None when it has no manifest."""
    if not (out / MANIFEST).exists():
        return None
    try:
        return int(json.loads((out / RECIPE).read_text(encoding="utf-8"))["version"])
    except FileNotFoundError:
        return 1
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{out / RECIPE}: unreadable ({exc}); delete it or rebuild with --force") from exc


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssamba.openaudio.probes", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=("instrument", "foley", "keywords"))
    parser.add_argument("--out", type=Path, default=None, help="task folder (clips/ and manifest.csv; default DATA/probes/<task folder>)")
    parser.add_argument("--data", type=Path, default=Path("data/open_audio"), help="data folder (debs, raw) for A and B")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--notes", type=int, default=12, help="A: notes per program and bank")
    parser.add_argument("--programs-per-family", type=int, default=None, help="A: limit programs (tiny subsets)")
    parser.add_argument("--max-per-class", type=int, default=None, help="B: limit clips per class (tiny subsets)")
    parser.add_argument("--renders", type=int, default=48, help="C: espeak-ng renders per phrase")
    parser.add_argument("--phrases", type=int, default=None, help="C: use the first N phrases (tiny subsets)")
    parser.add_argument("--force", action="store_true", help="rebuild even if the manifest exists")
    args = parser.parse_args(argv)
    args.out = args.out or args.data / "probes" / TASK_FOLDERS[args.task]
    try:
        built = built_recipe_version(args.out)
        if built == RECIPE_VERSIONS[args.task] and not args.force:
            print(f"{args.out / MANIFEST} exists (use --force to rebuild)")
            return 0
        if built is not None and built != RECIPE_VERSIONS[args.task]:
            print(f"{args.out}: built by recipe version {built}, now {RECIPE_VERSIONS[args.task]}: rebuilding")
        (args.out / MANIFEST).unlink(missing_ok=True)  # the manifest, written last, marks a finished folder
        shutil.rmtree(args.out / "clips", ignore_errors=True)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / RECIPE).write_text(json.dumps({"task": args.task, "version": RECIPE_VERSIONS[args.task]}) + "\n",
                                       encoding="utf-8")
        if args.task == "instrument":
            prepare_instrument(args.data, args.out, notes=args.notes, programs_per_family=args.programs_per_family,
                               seed=args.seed)
        elif args.task == "foley":
            prepare_foley(args.data, args.out, max_per_class=args.max_per_class, seed=args.seed)
        else:
            prepare_keywords(args.out, renders=args.renders, phrases=args.phrases, seed=args.seed)
    except (render.ToolError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
