"""Tiny fake copies of the downstream datasets, laid out exactly as their owners distribute them.

Each ``make_<dataset>(root)`` writes a handful of generated clips (short tones whose pitch
depends on the class, so two training steps see real signal) in the owners' folder layout, with
the owners' metadata formats reproduced for those few rows, and returns the SOURCE_DIR to hand
to ``finetune/<dataset>/prepare.sh``. Nothing here is committed audio: all of it is made in the test.
"""

from __future__ import annotations

import csv
import zlib
from pathlib import Path

import numpy as np
import soundfile


def tone(path: Path, label: str, seconds: float, rate: int, channels: int = 1, subtype: str = "PCM_16") -> Path:
    """A short tone (pitch from the label) with a little noise, written with soundfile."""
    seed = zlib.crc32(f"{label}/{path.name}".encode())
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    pitch = 200.0 + (zlib.crc32(label.encode()) % 40) * 60.0
    wave = 0.4 * np.sin(2 * np.pi * pitch * t) + 0.01 * rng.standard_normal(t.size)
    data = np.repeat(wave[:, None], channels, axis=1) if channels > 1 else wave
    path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(str(path), data.astype(np.float32), rate, subtype=subtype)
    return path


def _write_csv(path: Path, header: list[str], rows: list[list[object]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------ ESC-50

ESC50_CLASSES = ((0, "dog"), (19, "thunderstorm"))


def make_esc50(root: Path, clips_per_fold_and_class: int = 2, seconds: float = 1.0) -> Path:
    """``ESC-50-master/`` with ``audio/*.wav`` (44.1 kHz mono) and ``meta/esc50.csv``."""
    top = root / "ESC-50-master"
    rows = []
    for fold in range(1, 6):
        for target, category in ESC50_CLASSES:
            for k in range(clips_per_fold_and_class):
                src = 100000 + fold * 100 + target * 3 + k
                name = f"{fold}-{src}-A-{target}.wav"
                tone(top / "audio" / name, category, seconds, 44100)
                rows.append([name, fold, target, category, str(target == 0), src, "A"])
    _write_csv(top / "meta" / "esc50.csv", ["filename", "fold", "target", "category", "esc10", "src_file", "take"], rows)
    (top / "README.md").write_text("ESC-50 (fake test copy)\n")
    return top


# -------------------------------------------------------------------------------- Speech Commands

SC_WORDS = ("yes", "no", "up")
SC_NOISES = ("doing_the_dishes.wav", "white_noise.wav")


def make_speechcommands(root: Path, per_word: int = 6) -> Path:
    """The extracted ``speech_commands_v0.0x.tar.gz`` (no top folder): ``<word>/<spk>_nohash_<n>.wav``,
    ``_background_noise_/``, ``validation_list.txt``, ``testing_list.txt``."""
    top = root / "speech_commands"
    valid, test = [], []
    for word in SC_WORDS:
        for k in range(per_word):
            speaker = f"{zlib.crc32(f'spk{k}'.encode()):08x}"
            rel = f"{word}/{speaker}_nohash_0.wav"
            # the last speaker is short (0.8 s), as some real clips are
            tone(top / rel, word, 0.8 if k == per_word - 1 else 1.0, 16000)
            if k == 0:
                valid.append(rel)
            elif k == 1:
                test.append(rel)
    for name in SC_NOISES:
        tone(top / "_background_noise_" / name, name, 3.0, 16000)
    (top / "_background_noise_" / "README.md").write_text("background noise (fake)\n")
    (top / "validation_list.txt").write_text("".join(f"{r}\n" for r in valid))
    (top / "testing_list.txt").write_text("".join(f"{r}\n" for r in test))
    (top / "LICENSE").write_text("CC BY 4.0\n")
    return top
