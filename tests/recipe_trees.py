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


# ---------------------------------------------------------------------------------- AudioSet-20K

AUDIOSET_CLASSES = (("/m/09x0r", "Speech"), ("/m/05zppz", "Male speech, man speaking"), ("/t/dd00088", "Gush"))


def make_audioset(root: Path, per_split: int = 6) -> Path:
    """Owners' segment CSVs (three # header lines, ", "-separated, quoted MID lists), the class table,
    and clips named by YouTube id (one id starting with '-', one segment left undownloaded)."""
    top = root / "audioset"
    top.mkdir(parents=True, exist_ok=True)
    _write_csv(top / "class_labels_indices.csv", ["index", "mid", "display_name"],
               [[i, mid, name] for i, (mid, name) in enumerate(AUDIOSET_CLASSES)])
    for stem, prefix in (("balanced_train_segments", "b"), ("eval_segments", "e")):
        lines = ["# Segments csv created Sun Mar  5 10:54:31 2017",
                 f"# num_ytids={per_split}, num_segs={per_split}, num_unique_labels=3, num_positive_labels={per_split + 2}",
                 "# YTID, start_seconds, end_seconds, positive_labels"]
        for k in range(per_split):
            ytid = f"-{prefix}{k:02d}_abcdef"[:11]
            mids = [AUDIOSET_CLASSES[k % 3][0]] + ([AUDIOSET_CLASSES[2][0]] if k < 2 else [])
            lines.append(f'{ytid}, {30.0 + k:.3f}, {40.0 + k:.3f}, "{",".join(mids)}"')
            if k != per_split - 1:  # the last video is "no longer online"
                tone(top / "audio" / ytid[:2] / f"{ytid}_{30.0 + k:.3f}.flac", mids[0], 1.0, 16000, channels=2)
        (top / f"{stem}.csv").write_text("\n".join(lines) + "\n")
    return top


# ------------------------------------------------------------------------------------ VoxCeleb1


def make_voxceleb1(root: Path) -> Path:
    """s3prl layout (dev/wav + test/wav), iden_split.txt with sets 1/2/3; videos differ per set."""
    top = root / "VoxCeleb1"
    lines = []
    for s, speaker in enumerate(("id10001", "id10002", "id10003")):
        for set_id, part in ((1, "dev"), (1, "dev"), (1, "dev"), (2, "dev"), (3, "test")):
            video = f"vid{s}set{set_id}"
            utt = f"{len(lines) % 7 + 1:05d}.wav"
            rel = f"{speaker}/{video}/{utt}"
            tone(top / part / "wav" / rel, speaker, 1.0, 16000)
            lines.append(f"{set_id} {rel}")
    (top / "iden_split.txt").write_text("\n".join(lines) + "\n")
    return top


# -------------------------------------------------------------------------------------- IEMOCAP


def make_iemocap(root: Path) -> Path:
    """Session1-5 EmoEvaluation files (summary lines + annotator lines) and sentence WAVs."""
    top = root / "IEMOCAP_full_release"
    codes = ("neu", "hap", "exc", "ang", "sad", "fru", "xxx")
    for session in range(1, 6):
        for dialog in (f"Ses0{session}F_impro01", f"Ses0{session}M_script02_2"):
            lines = ["% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]", ""]
            for k, code in enumerate(codes):
                utt = f"{dialog}_{'FM'[k % 2]}{k:03d}"
                lines += [f"[{6.29 + k:.4f} - {8.23 + k:.4f}]\t{utt}\t{code}\t[2.5000, 2.5000, 2.5000]",
                          "C-E2:\tNeutral;\t()", "A-E3:\tval 3; act 2; dom 2;\t()", ""]
                tone(top / f"Session{session}" / "sentences" / "wav" / dialog / f"{utt}.wav", code, 1.0, 16000)
            evaluation = top / f"Session{session}" / "dialog" / "EmoEvaluation"
            evaluation.mkdir(parents=True, exist_ok=True)
            (evaluation / f"{dialog}.txt").write_text("\n".join(lines) + "\n")
    return top


# ------------------------------------------------------------------------------------- VGGSound


def make_vggsound(root: Path) -> Path:
    """Headerless vggsound.csv (a quoted label with a comma) and clips <ytid>_<start:06d>.wav."""
    top = root / "vggsound"
    rows = []
    for k in range(8):
        ytid = f"-{k}g-f_I2yQ{k}"[:11]
        label = ("people marching", "heart sounds, heartbeat")[k % 2]
        rows.append([ytid, 30 * k, label, "test" if k >= 6 else "train"])
        if k != 3:
            tone(top / "video" / f"{ytid}_{30 * k:06d}.wav", label, 1.0, 44100)
    with open(top / "vggsound.csv", "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    return top


# ---------------------------------------------------------------------------------- EPIC-SOUNDS


def make_epic_sounds(root: Path) -> Path:
    """Annotation CSVs (train: two videos, validation: one) and 24 kHz per-video WAVs with segments inside."""
    top = root / "epic_sounds"
    header = ["annotation_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "start_sample",
              "stop_sample", "description", "class", "class_id"]
    classes = (("rustle", 4), ("ceramic / wood collision", 34))
    for name, videos in (("EPIC_Sounds_train.csv", ("P01_11", "P01_12")), ("EPIC_Sounds_validation.csv", ("P02_03",))):
        rows = []
        for k in range(6):
            video = videos[k * len(videos) // 6]
            start, stop = 0.5 * k + 0.1, 0.5 * k + 0.5
            cls, cid = classes[k % 2]
            rows.append([f"{video}_{k}", video[:3], video, f"00:00:{start:06.3f}", f"00:00:{stop:06.3f}",
                         int(start * 24000), int(stop * 24000), "paper rustle", cls, cid])
        _write_csv(top / "epic-sounds-annotations" / name, header, rows)
        for video in videos:
            tone(top / "audio" / f"{video}.wav", video, 3.5, 24000)
    return top


# -------------------------------------------------------------------------------- DCASE2025 T1

DCASE_SCENES = ("airport", "bus", "park")


def make_dcase2025(root: Path) -> Path:
    """TAU22 development tree: 1 s 44.1 kHz WAVs, tab-separated meta.csv, split_setup/split25.csv + test.csv."""
    top = root / "TAU-urban-acoustic-scenes-2022-mobile-development"
    meta, split25, test = [], [], []
    for s, scene in enumerate(DCASE_SCENES):
        for location, city in ((f"{s}0", "barcelona"), (f"{s}1", "lisbon"), (f"{s}2", "vienna")):
            for k, device in enumerate(("a", "b", "s4")):
                name = f"audio/{scene}-{city}-{location}-{100 + s}-{k}-{device}.wav"
                tone(top / name, scene, 1.0, 44100, subtype="PCM_24")
                meta.append([name, scene, f"{city}-{location}", device])
                if city == "vienna":
                    test.append([name])
                elif device != "s4":  # s4-s6 are unseen in training
                    split25.append([name])
    _write_csv(top / "meta.csv", ["filename", "scene_label", "identifier", "source_label"], meta, delimiter="\t")
    _write_csv(top / "split_setup" / "split25.csv", ["filename"], split25, delimiter="\t")
    _write_csv(top / "split_setup" / "test.csv", ["filename"], test, delimiter="\t")
    _write_csv(top / "evaluation_setup" / "fold1_evaluate.csv", ["filename", "scene_label"],
               [[m[0], m[1]] for m in meta if m[0] in {t[0] for t in test}], delimiter="\t")
    return top


# ---------------------------------------------------------------------------------- UrbanSound8K

URBAN_CLASSES = ((3, "dog_bark"), (8, "siren"))


def make_urbansound8k(root: Path, folds: int = 10) -> Path:
    """audio/fold1..10 with clips of mixed rates/channels and metadata/UrbanSound8K.csv."""
    top = root / "UrbanSound8K"
    rows = []
    for fold in range(1, folds + 1):
        for k, (class_id, name) in enumerate(URBAN_CLASSES * 2):
            fs_id = 100000 + fold * 10 + k
            file = f"{fs_id}-{class_id}-0-{k}.wav"
            seconds = (0.5, 1.5, 2.0, 1.2)[k]
            tone(top / "audio" / f"fold{fold}" / file, name, seconds, (44100, 22050, 48000, 16000)[k], channels=1 + k % 2)
            rows.append([file, fs_id, 0.0, seconds, 1, fold, class_id, name])
    _write_csv(top / "metadata" / "UrbanSound8K.csv",
               ["slice_file_name", "fsID", "start", "end", "salience", "fold", "classID", "class"], rows)
    return top
