"""Open-audio benchmark: corpus conversion, leakage guard, probe tasks, results table, end to end.

Tests that need Debian tools (apt-get, dpkg, fluidsynth, espeak-ng, festival, flite) or the Debian
archive skip with the reason when those are missing. Set SSAMBA_OPEN_AUDIO_DATA to a data folder
holding downloaded .debs (debs/) to reuse them instead of downloading.
"""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

from ssamba.openaudio import benchmark, corpus, leakage, probes, render, sources

REPO = Path(__file__).resolve().parents[1]
SR = render.SAMPLE_RATE


def _tone(seconds: float, rate: int = SR, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _fake_package(data: Path, name: str, files: dict[str, np.ndarray | tuple[np.ndarray, int]]) -> None:
    """An 'unpacked' package: files written under data/raw/<name>/ and the unpack stamp set."""
    raw = data / "raw" / name
    for rel, audio in files.items():
        wave, rate = audio if isinstance(audio, tuple) else (audio, SR)
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(raw / rel, wave, rate)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / ".unpacked").write_text("ok\n")


def _tiny_fake_corpus(data: Path, extra: dict[str, np.ndarray | tuple[np.ndarray, int]] | None = None) -> None:
    stereo = np.stack([_tone(25.0, 44100), _tone(25.0, 44100, 220.0)], axis=1)
    _fake_package(data, "bucklespring-data", {
        "usr/share/buckle/wav/long.wav": (stereo, 44100),    # 25 s -> 10 + 10 + 5 s segments
        "usr/share/buckle/wav/silent.wav": np.zeros(SR, np.float32),  # digital silence: dropped
        "usr/share/buckle/wav/short.wav": _tone(0.2),        # under 0.3 s: dropped
        **(extra or {}),
    })
    _fake_package(data, "sound-theme-freedesktop", {"usr/share/sounds/x/bell.wav": _tone(1.0, 48000, 880.0)})
    _fake_package(data, "alsa-utils", {"usr/share/sounds/alsa/Front_Left.wav": (_tone(1.5, 48000, 300.0), 48000)})


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_convert_segments_drops_and_tags(tmp_path):
    _tiny_fake_corpus(tmp_path)
    corpus.convert(tmp_path, "tiny", workers=1)
    rows = corpus.all_rows(tmp_path, "tiny")
    long = sorted((r for r in rows if r["source_path"].endswith("long.wav")), key=lambda r: r["path"])
    assert [float(r["duration"]) for r in long] == [10.0, 10.0, 5.0]
    assert not any("silent" in r["source_path"] or "short" in r["source_path"] for r in rows)
    kinds = {r["origin"]: r["kind"] for r in rows}
    assert kinds == {"bucklespring-data": "environmental", "sound-theme-freedesktop": "environmental", "alsa-utils": "speech"}
    info = soundfile.info(tmp_path / "tiny" / long[0]["path"])
    assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "FLAC")
    corpus.check(tmp_path, "tiny", [])
    assert (tmp_path / "tiny" / "train-speech.csv").exists() and not (tmp_path / "tiny" / "train-music.csv").exists()
    split = _rows(tmp_path / "tiny" / "eval.csv") + [r for k in ("speech", "environmental") for r in _rows(tmp_path / "tiny" / f"train-{k}.csv")]
    assert sorted(r["path"] for r in split) == sorted(r["path"] for r in rows)
    summary = corpus.report(tmp_path, "tiny")
    assert summary["hours_per_kind"]["environmental"] == pytest.approx((25 + 1) / 3600, abs=1e-3)
    assert summary["hours_per_kind"]["speech"] == pytest.approx(1.5 / 3600, abs=1e-4)


def test_kind_rules_and_variants():
    zero_ad = sources.PACKAGES_BY_NAME["0ad-data"]
    assert zero_ad.kind_of("audio/music/peace/x.ogg") == sources.MUSIC
    assert zero_ad.kind_of("audio/ambient/weather/rain.ogg") == sources.ENVIRONMENTAL
    for foley in probes.FOLEY_CLASSES.values():  # task B's clips never make pretraining audio
        assert zero_ad.kind_of(foley + "x_01.ogg") == sources.EXCLUDE
    tux = sources.PACKAGES_BY_NAME["tuxpaint-stamps-default"]
    assert tux.kind_of("usr/share/tuxpaint/stamps/animals/cat_desc_fr.ogg") == sources.SPEECH
    assert tux.kind_of("usr/share/tuxpaint/stamps/animals/cat.ogg") == sources.ENVIRONMENTAL
    lean = {p.name for p in sources.packages_for("lean")}
    assert {"0ad-data", "redeclipse-data", "supertuxkart-data"}.isdisjoint(lean) and "naev-data" in lean
    assert {p.name for p in sources.packages_for("tiny")} == {"bucklespring-data", "sound-theme-freedesktop", "alsa-utils"}
    with pytest.raises(ValueError, match="variant"):
        sources.packages_for("huge")


def _probe_manifest(folder: Path, clips: dict[str, np.ndarray]) -> Path:
    rows = []
    for name, audio in clips.items():
        render.write_clip(folder / name, render.quantize(audio))
        rows.append({"path": name, "label": "x", "split": "test"})
    with open(folder / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=("path", "label", "split"))
        writer.writeheader()
        writer.writerows(rows)
    return folder / "manifest.csv"


def test_leakage_check_catches_a_planted_probe_clip(tmp_path):
    probe_audio = _tone(1.2, SR, 660.0, seed=5)
    manifest = _probe_manifest(tmp_path / "probes" / "C", {"clips/test/hello_flite_00.flac": probe_audio})
    planted = tmp_path / "probes" / "C" / "clips" / "test" / "hello_flite_00.flac"
    data = tmp_path / "data"
    _tiny_fake_corpus(data, {"usr/share/buckle/wav/planted.flac": soundfile.read(planted, dtype="float32")[0]})
    corpus.convert(data, "tiny", workers=1)
    with pytest.raises(leakage.LeakageError, match="planted.*same audio as probe clip.*hello_flite_00"):
        corpus.check(data, "tiny", [manifest])
    assert not (data / "tiny" / "eval.csv").exists()  # nothing to shard after a failed check


def test_leakage_fingerprint_survives_resampling_and_cropping(tmp_path):
    """A 44.1 kHz source cropped by a probe (task B style) and segmented by the corpus leaves one fingerprint."""
    source = tmp_path / "impact.wav"
    soundfile.write(source, _tone(5.0, 44100, 123.0, seed=2), 44100)
    probe_clip = render.quantize(render.read_mono(source)[: 3 * SR])
    corpus_segment = corpus.segments(render.read_mono(source))[0][1]
    assert leakage.fingerprint(probe_clip) == leakage.fingerprint(render.quantize(corpus_segment))
    render.write_clip(tmp_path / "probe.flac", probe_clip)
    assert leakage.file_fingerprint(tmp_path / "probe.flac") == leakage.fingerprint(probe_clip)
    assert leakage.fingerprint(probe_clip) != leakage.fingerprint(render.quantize(_tone(3.0, SR, 124.0)))


@pytest.mark.parametrize(
    ("origin", "path", "message"),
    [
        ("tts:flite", "kal", "test engine"),
        ("tts:festival", "kal_diphone", "validation engine"),
        ("midi:sf_GMbank", "render1", "test bank"),
        ("0ad-data", "audio/attack/impact/arrow_01.ogg", "0 A.D. Foley"),
        ("some-other-package", "x.ogg", "allow-list"),
    ],
)
def test_leakage_check_refuses_reserved_and_unknown_sources(origin, path, message):
    rows = [leakage.CorpusRow("clips/ok.flac", "naev-data", "music/a.ogg", "0" * 40),
            leakage.CorpusRow("clips/bad.flac", origin, path, "1" * 40)]
    with pytest.raises(leakage.LeakageError, match=message):
        leakage.check_corpus(rows, {})
    assert leakage.check_corpus(rows[:1], {}) == 1


def test_music_banks_are_allow_listed(tmp_path):
    assert corpus.bank_origin(Path("/x/FluidR3_GM.sf2")) == sources.BANK_FLUIDR3
    assert corpus.bank_origin(Path("/x/MuseScore_General_Full.sf3")) == sources.BANK_MUSESCORE
    for refused in ("sf_GMbank.sf2", "TimGM6mb.sf2", "default.sf2"):
        with pytest.raises(ValueError, match="not allowed"):
            corpus.bank_origin(Path(refused))


def test_topup_music_never_plays_task_a_validation_programs():
    """FluidR3's held-out programs are task A's validation side, so the top-up must not render them."""
    assert sources.TASK_A_VALID_PROGRAMS == {3, 7, 11, 15, 19, 27, 31, 35, 39, 43, 48, 59, 63, 64, 68, 75, 79, 83, 87}
    _, programs = corpus.random_music(random.Random(0), seconds=3000.0)
    used = {program for _, channel, program in programs if channel != 9}
    assert len(used) > 50 and not used & sources.TASK_A_VALID_PROGRAMS


def test_topup_refuses_to_mix_requests(tmp_path):
    """A corpus keeps the top-up it was built with: other hours, or none, is an error, not a silent mix."""
    parts = tmp_path / "full" / "parts"
    corpus.topup_tts(tmp_path, "full", 0.0)  # none asked, none there: nothing to do
    assert not parts.exists()
    corpus._write_topup(parts / "topup-tts.csv", [], hours=6.0, seed=0)
    corpus.topup_tts(tmp_path, "full", 6.0)  # the same request: already done
    for hours, seed in ((3.0, 0), (0.0, 0), (6.0, 1)):
        with pytest.raises(ValueError, match="topup-tts.csv: holds a top-up made with"):
            corpus.topup_tts(tmp_path, "full", hours, seed)


def _read_midi_events(path: Path) -> list[tuple[int, bytes]]:
    data = path.read_bytes()
    assert data[:4] == b"MThd" and data[14:18] == b"MTrk"
    track, position, now, events = data[22:], 0, 0, []
    while position < len(track):
        delta = 0
        while True:
            byte = track[position]
            position += 1
            delta = (delta << 7) | (byte & 0x7F)
            if byte < 0x80:
                break
        now += delta
        status = track[position]
        size = 3 + track[position + 2] if status == 0xFF else 2 if status & 0xF0 == 0xC0 else 3
        events.append((now, track[position : position + size]))
        position += size
    return events


def test_midi_writer_timing(tmp_path):
    notes = [render.Note(1.0, 0.5, 60, 100), render.Note(1.5, 2.0, 64, 90, channel=1)]
    render.write_midi(tmp_path / "x.mid", notes, [(0.0, 0, 5), (1.5, 1, 40)])
    events = _read_midi_events(tmp_path / "x.mid")
    ticks = render.TICKS_PER_BEAT * 2  # 120 bpm: two beats per second
    assert (int(1.0 * ticks), bytes([0x90, 60, 100])) in events
    assert (int(1.5 * ticks), bytes([0x80, 60, 0])) in events
    assert (int(1.5 * ticks), bytes([0xC1, 40])) in events
    order = [e for t, e in events if t == int(1.5 * ticks)]
    assert order.index(bytes([0xC1, 40])) < order.index(bytes([0x91, 64, 90]))  # program before its note
    assert events[-1][1] == b"\xff\x2f\x00"
    with pytest.raises(ValueError, match="out of range"):
        render.write_midi(tmp_path / "y.mid", [render.Note(0, 1, 200, 100)], [])


def test_foley_task_groups_stems_into_folds(tmp_path):
    files = {}
    for label, prefix in probes.FOLEY_CLASSES.items():
        for stem in ("alpha", "beta"):
            for i in range(1, 4):
                files[f"_archives/public/{prefix}{stem}_{i:02d}.wav"] = (
                    _tone(4.0, 44100, 200.0 + 10 * i, seed=i), 44100)
    _fake_package(tmp_path, "0ad-data", files)
    manifest = probes.prepare_foley(tmp_path, tmp_path / "B")
    rows = _rows(manifest)
    assert len(rows) == 60 and {r["label"] for r in rows} == set(probes.FOLEY_CLASSES)
    folds_of_group: dict[str, set[str]] = {}
    for row in rows:
        folds_of_group.setdefault(row["group"], set()).add(row["fold"])
        assert soundfile.info(manifest.parent / row["path"]).duration == pytest.approx(3.0, abs=1e-3)
    assert all(len(f) == 1 for f in folds_of_group.values()) and len(folds_of_group) == 20
    assert {r["fold"] for r in rows} == {"1", "2", "3", "4", "5"}
    from ssamba.data.labelled import read_labelled

    labelled = read_labelled(manifest)
    assert len(labelled.clips) == 60 and len(labelled.classes) == 10
    again = probes.prepare_foley(tmp_path, tmp_path / "B2")
    assert _rows(again) == rows  # deterministic


def test_foley_task_clips_assets_that_overshoot_full_scale(tmp_path):
    # some 0 A.D. Vorbis assets decode above full scale (Musket_*.ogg peaks at 3.4): the generic decoder
    # refuses such a file, task B keeps it, clipped to 16-bit full scale as the reference manifest has it
    from ssamba.audio.io import AudioDecodeError, decode_file

    files = {f"_archives/public/{prefix}s_01.wav": (_tone(2.0, 44100, 300.0), 44100)
             for prefix in probes.FOLEY_CLASSES.values()}
    _fake_package(tmp_path, "0ad-data", files)
    hot_rel = next(iter(files))
    hot = tmp_path / "raw/0ad-data" / hot_rel
    tone = _tone(2.0, 44100, 300.0)
    soundfile.write(hot, 3.4 * tone / np.abs(tone).max(), 44100, subtype="FLOAT")  # peak 3.4, as the muskets
    with pytest.raises(AudioDecodeError, match="peak amplitude"):
        decode_file(hot)
    rows = _rows(probes.prepare_foley(tmp_path, tmp_path / "B"))
    assert len(rows) == 10
    hot_row = next(r for r in rows if r["label"] == next(iter(probes.FOLEY_CLASSES)))
    pcm, _ = soundfile.read(tmp_path / "B" / hot_row["path"], dtype="int16")
    assert pcm.max() == 32767 and pcm.min() == -32768


def test_missing_tools_error_names_every_debian_package(monkeypatch):
    # one message lists what to install, festival's voices included (text2wave alone cannot speak task C)
    monkeypatch.setattr(render.shutil, "which", lambda tool: None if tool in ("fluidsynth", "text2wave") else "/bin/x")
    with pytest.raises(render.ToolError) as caught:
        render.require_tools(["dpkg", "fluidsynth", "text2wave"])
    assert str(caught.value) == ("missing tools: fluidsynth, text2wave (apt-get install festival festlex-cmu "
                                 "festlex-poslex festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts fluidsynth)")
    render.require_tools(["dpkg"])


def test_foley_group_names():
    assert probes.foley_group("audio/resource/mining/mine_stone_01.ogg") == "mine_stone"
    assert probes.foley_group("x/Arrow-12b.wav") == "arrow"
    assert probes.assign_folds({"a": 5, "b": 3, "c": 2, "d": 1}, 2, 0) == probes.assign_folds({"a": 5, "b": 3, "c": 2, "d": 1}, 2, 0)


def test_speech_span_cuts_near_silence_around_the_loud_part():
    rng = np.random.default_rng(0)
    tone = 0.5 * np.sin(2 * np.pi * 440 * np.arange(int(0.5 * SR)) / SR)
    hiss = lambda seconds: 1e-3 * rng.standard_normal(int(seconds * SR))  # noqa: E731 (~-51 dB under the tone)
    audio = np.concatenate([hiss(0.3), tone, hiss(0.2)])
    span = probes.speech_span(audio)
    frame, hop = round(probes.ENDPOINT_FRAME_SECONDS * SR), round(probes.ENDPOINT_HOP_SECONDS * SR)
    tone_start, tone_end = int(0.3 * SR), int(0.8 * SR)
    # the first and last frames kept overlap the tone; nothing further out than one frame is kept
    assert tone_start - frame < span.start <= tone_start and tone_end <= span.stop < tone_end + frame + hop
    assert probes.speech_span(audio, top_db=70.0) == slice(0, audio.size - (audio.size - frame) % hop)
    assert probes.speech_span(np.zeros(SR)) == slice(0, 0)
    assert probes.speech_span(tone[:100]) == slice(0, 100)  # shorter than one frame: all of it


TTS_TOOLS = ["espeak-ng", "text2wave", "flite"]


@pytest.mark.skipif(bool(render.missing_tools(TTS_TOOLS)), reason=f"needs {', '.join(TTS_TOOLS)} (apt-get install espeak-ng festival flite festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts)")
def test_keyword_task_tiny(tmp_path):
    manifest = probes.prepare_keywords(tmp_path / "C", renders=2, phrases=2, seed=3)
    rows = _rows(manifest)
    by_split = {s: [r for r in rows if r["split"] == s] for s in ("train", "valid", "test")}
    assert [len(by_split[s]) for s in ("train", "valid", "test")] == [4, 6, 30]
    assert {r["engine"] for r in by_split["train"]} == {"espeak-ng"}
    assert {r["engine"] for r in by_split["valid"]} == {"festival"} and {r["engine"] for r in by_split["test"]} == {"flite"}
    assert {r["label"] for r in rows} == {"bye_bye", "come_on_then"}
    frame, hop = round(probes.ENDPOINT_FRAME_SECONDS * SR), round(probes.ENDPOINT_HOP_SECONDS * SR)
    for row in rows:
        audio, rate = soundfile.read(manifest.parent / row["path"])
        assert rate == SR and 0.2 < audio.size / SR < 3.0
        # every engine's clip starts and ends at speech (festival and flite render ~0.3 s of near-silence),
        # so endpointing the written clip again keeps it whole (up to a hop of 16-bit rounding at the edges)
        span = probes.speech_span(audio)
        assert span.start <= hop and span.stop >= audio.size - frame - 2 * hop, row["path"]


def test_probe_folder_recipe_versions(tmp_path):
    assert probes.built_recipe_version(tmp_path) is None  # nothing built
    (tmp_path / probes.MANIFEST).write_text("path,label\n")
    assert probes.built_recipe_version(tmp_path) == 1  # built before versions were recorded
    (tmp_path / probes.RECIPE).write_text('{"task": "keywords", "version": 2}')
    assert probes.built_recipe_version(tmp_path) == 2
    (tmp_path / probes.RECIPE).write_text("{")
    with pytest.raises(ValueError, match="recipe.json: unreadable"):
        probes.built_recipe_version(tmp_path)


@pytest.mark.skipif(bool(render.missing_tools(TTS_TOOLS)), reason=f"needs {', '.join(TTS_TOOLS)}")
def test_keyword_folder_from_an_older_recipe_is_rebuilt(tmp_path, capsys):
    out = tmp_path / "C"
    (out / "clips" / "train").mkdir(parents=True)
    (out / "clips" / "train" / "stale.flac").write_bytes(b"old")
    (out / probes.MANIFEST).write_text("path,label,split\nclips/train/stale.flac,hello,train\n")
    argv = ["keywords", "--out", str(out), "--phrases", "1", "--renders", "1"]
    assert probes._main(argv) == 0
    assert "built by recipe version 1, now 2: rebuilding" in capsys.readouterr().out
    assert not (out / "clips" / "train" / "stale.flac").exists()
    assert {r["label"] for r in _rows(out / probes.MANIFEST)} == {"bye_bye"}
    assert probes.built_recipe_version(out) == probes.RECIPE_VERSIONS["keywords"]
    assert probes._main(argv) == 0 and "exists (use --force to rebuild)" in capsys.readouterr().out


def _data_dir(tmp_path: Path) -> Path:
    """A data folder; .debs from SSAMBA_OPEN_AUDIO_DATA/debs are linked in to avoid downloads."""
    data = tmp_path / "data"
    (data / "debs").mkdir(parents=True)
    cached = os.environ.get("SSAMBA_OPEN_AUDIO_DATA")
    if cached and (Path(cached) / "debs").is_dir():
        for deb in (Path(cached) / "debs").glob("*.deb"):
            (data / "debs" / deb.name).symlink_to(deb)
    return data


def _fetch_or_skip(data: Path, packages: list[str]) -> None:
    if render.missing_tools(["apt-get", "dpkg"]):
        pytest.skip("needs apt-get and dpkg (a Debian/Ubuntu system)")
    try:
        corpus.fetch(data, packages)
    except (render.ToolError, subprocess.SubprocessError, OSError) as exc:
        pytest.skip(f"cannot download from the Debian archive: {exc}")


@pytest.mark.slow
@pytest.mark.skipif(bool(render.missing_tools(["fluidsynth"])), reason="needs fluidsynth (apt-get install fluidsynth)")
def test_instrument_task_tiny(tmp_path):
    data = _data_dir(tmp_path)
    _fetch_or_skip(data, [probes.TRAIN_BANK[0], probes.TEST_BANK[0]])
    manifest = probes.prepare_instrument(data, tmp_path / "A", notes=2, programs_per_family=4, seed=1)
    rows = _rows(manifest)
    assert {r["label"] for r in rows} == set(probes.FAMILIES)
    valid_programs = {r["group"] for r in rows if r["split"] == "valid"}
    train_programs = {r["group"] for r in rows if r["split"] == "train"}
    assert valid_programs and not valid_programs & train_programs  # program-disjoint validation
    assert {r["group"].split("_p")[0] for r in rows if r["split"] == "test"} == {"csound-soundfont"}
    assert soundfile.info(manifest.parent / rows[0]["path"]).duration == pytest.approx(1.5)


def test_tiny_corpus_builds_and_shards(tmp_path):
    data = _data_dir(tmp_path)
    _fetch_or_skip(data, [p.name for p in sources.packages_for("tiny")])
    env = {**os.environ, "DATA": str(data), "WORKERS": "1"}
    done = subprocess.run(["bash", str(REPO / "pretrain/open_audio/prepare.sh"), "--tiny", "--stage", "2"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((data / "tiny" / "report.json").read_text())
    assert report["hours_per_kind"]["speech"] > 0 and report["hours_per_kind"]["environmental"] > 0
    assert set(report["hours_per_source"]) == {"alsa-utils", "bucklespring-data", "sound-theme-freedesktop"}
    counts = {kind: json.loads((data / "tiny" / "shards" / kind / "index.json").read_text())["count"]
              for kind in ("speech", "environmental", "eval")}
    assert sum(counts.values()) == report["clips"] and min(counts.values()) > 0


def test_benchmark_table_and_random_spec(tmp_path):
    from conftest import tiny_export

    export = tiny_export(tmp_path, frames=64)
    spec = benchmark.random_spec(export)
    assert spec.startswith("random:ssamba-tiny:") and "depth=2" in spec and "embed_dim=32" in spec
    probe_dir = tmp_path / "probe"
    probe_dir.mkdir()
    task_c = tmp_path / "C_keywords"
    task_c.mkdir()
    (task_c / probes.MANIFEST).write_text("path,label,split\n")
    (task_c / probes.RECIPE).write_text('{"task": "keywords", "version": 2}')
    for seed, (pre, rnd) in enumerate([(0.8, 0.4), (0.8, 0.5)]):
        for task in ("A", "C"):
            report = {"manifest": [str(task_c / probes.MANIFEST)] if task == "C" else [], "encoders": [
                {"encoder": str(export), "summary": {"valid": {"mean": 0.1}, "test": {"mean": pre}}},
                {"encoder": spec, "summary": {"test": {"mean": rnd}}},
                {"encoder": "logmel", "summary": {"test": {"mean": 0.6}}},
            ]}
            (probe_dir / f"{task}-seed{seed}.json").write_text(json.dumps(report))
    table = benchmark.summarise(probe_dir, run=None, corpus_report=None, extra={"budget_minutes": 1.0})
    assert table["tasks"]["A"]["pretrained"] == {"mean": 80.0, "std": 0.0, "values": [80.0, 80.0]}
    assert table["tasks"]["C"]["random"]["mean"] == 45.0
    assert table["tasks"]["C"]["random"]["std"] == pytest.approx(7.07, abs=0.01)
    assert "B" not in table["tasks"] and table["budget_minutes"] == 1.0
    assert table["tasks"]["C"]["recipe"] == 2 and "recipe" not in table["tasks"]["A"]  # the task folder's recipe
    text = benchmark.markdown(table)
    assert "| A: instrument family (11) | 80.0 ± 0.0 | 45.0 ± 7.1 | 60.0 ± 0.0 | 2 |" in text


def test_training_wall_time_sums_the_sessions_of_a_resumed_run():
    # two sessions logging every 10 s, an hour's break between them
    first = [1000.0 + 10 * i for i in range(7)]  # 60 s of gaps
    second = [first[-1] + 3600 + 10 * i for i in range(4)]  # 30 s of gaps
    assert benchmark.training_wall_time(first + second) == pytest.approx(60 + 30 + 2 * 10)
    assert benchmark.training_wall_time(first) == pytest.approx(60 + 10)


@pytest.mark.parametrize(("model_size", "rate", "budget", "steps"), [
    ("tiny", ["--steps-per-minute", "0.6"], "5", 3),  # the GPU variant: the released config, the steps a cap
    ("cpu", [], "0.4", 34),  # the CPU reference's default rate, 85 steps/min: the README's command reproduces it
])
def test_benchmark_pretrain_and_export(tmp_path, model_size, rate, budget, steps):
    # stage 3 trains the size's config for the wall-clock budget, budget x --steps-per-minute steps; here
    # cut to 2 layers of width 32 on CPU
    import yaml

    from ssamba.data.synthetic import write_demo_corpus

    data = tmp_path / "data"
    for split, clips, seed in (("speech", 6, 0), ("eval", 2, 1)):
        write_demo_corpus(tmp_path / "audio" / split, clips, seconds=2.0, seed=seed)
        subprocess.run([sys.executable, "-m", "ssamba", "shards", "folder", str(tmp_path / "audio" / split),
                        "-o", str(data / "tiny/shards" / split)], check=True, capture_output=True)
    exp = tmp_path / "exp"
    command = ["bash", str(REPO / "shell/open_audio_benchmark.sh"), "--stage", "3", "--stop-stage", "4",
               "--variant", "tiny", "--model-size", model_size, "--budget", budget, *rate,
               "--data", str(data), "--exp", str(exp), "--", "model.depth=2", "model.embed_dim=32",
               "data.batch_size=2", "data.num_workers=0", "train.eval_every=3", "train.save_every=3",
               "data.eval_max_batches=1"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    train = yaml.safe_load((exp / "run" / "config.yaml").read_text())["train"]
    assert (train["max_steps"], train["epochs"], train["max_minutes"]) == (steps, None, float(budget))
    assert f"finished at step {steps}" in done.stdout + done.stderr
    assert (exp / "export").is_dir()


E2E_TOOLS = ["apt-get", "dpkg", "fluidsynth", *TTS_TOOLS]


@pytest.mark.slow
@pytest.mark.skipif(bool(render.missing_tools(E2E_TOOLS)), reason=f"needs {', '.join(E2E_TOOLS)}")
def test_benchmark_script_end_to_end(tmp_path):
    data = _data_dir(tmp_path)
    _fetch_or_skip(data, [p.name for p in sources.packages_for("tiny")] + [probes.TRAIN_BANK[0], probes.TEST_BANK[0]]
                   + [sources.TEXT_PACKAGE, *sources.BANK_PACKAGES])
    files = {f"_archives/public/{prefix}{label}_v{i}_01.wav": (_tone(3.5, 44100, 100.0 + 37 * n + 5 * i, seed=i), 44100)
             for n, (label, prefix) in enumerate(probes.FOLEY_CLASSES.items()) for i in range(1, 6)}
    _fake_package(data, "0ad-data", files)  # task B from a stand-in 0 A.D. tree (the real one is 1.3 GB)
    exp = tmp_path / "exp"
    command = ["bash", str(REPO / "shell/open_audio_benchmark.sh"), "--variant", "tiny", "--tiny-probes",
               "--budget", "0.25", "--seeds", "0 1", "--tts-hours", "0.01", "--music-hours", "0.01",
               "--layer", "all last", "--data", str(data), "--exp", str(exp), "--",
               "data.eval_batch_size=2", "data.eval_max_batches=1", "train.eval_every=5", "train.save_every=5"]
    done = subprocess.run(command, cwd=REPO, env={**os.environ, "WORKERS": "1"}, capture_output=True, text=True,
                          timeout=1800, check=False)
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    table = json.loads((exp / "open_audio.json").read_text())
    assert set(table["tasks"]) == {"A", "B", "C"}
    for task in table["tasks"].values():
        assert set(task) >= {"pretrained", "random", "logmel"} and task["seeds"] == 2
        assert all(0.0 <= task[name]["mean"] <= 100.0 for name in ("pretrained", "random", "logmel"))
    assert table["tasks"]["C"]["recipe"] == probes.RECIPE_VERSIONS["keywords"]
    assert table["steps"] > 0 and table["clips_seen"] >= table["steps"] and table["corpus_hours"] > 0
    assert (exp / "open_audio.md").read_text().startswith("| task |")
    assert (exp / "run" / "tb").is_dir()
    assert table["readout"] == {"layers": ["all", "last"], "pooling": "mean"}
    pretrained = json.loads((exp / "probe" / "A-seed0.json").read_text())["encoders"][0]
    assert set(pretrained["readouts"]) == {"all", "last"} and pretrained["evaluations"][0]["readout"] in ("all", "last")
    origins = {row["origin"] for row in csv.DictReader((data / "tiny" / "train-speech.csv").open())}
    origins |= {row["origin"] for row in csv.DictReader((data / "tiny" / "train-music.csv").open())}
    assert {sources.TTS_ESPEAK, sources.BANK_FLUIDR3} <= origins  # the top-up reached the corpus
