"""Shard writer: every source layout, reject outcomes, round trip, determinism, resume, stats."""

from __future__ import annotations

import io
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from ssamba import cli
from ssamba.audio.fbank import FeatureConfig
from ssamba.audio.io import load_audio
from conftest import deadline
from ssamba.commands.shards import parse_size
from ssamba.data import shards
from ssamba.data.parallel import WorkerDiedError
from ssamba.data.shards import ShardOptions, write_shards
from ssamba.data.sources import AudioRecord, key_hash, ast_json, audioset, folder, librispeech, manifest
from ssamba.data.stats import compute_stats
from ssamba.data.stream import iter_tar_samples
from ssamba.data.synthetic import CLIP_KINDS, write_demo_corpus

QUIET = {"log": lambda message: None}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _tone(path: Path, seconds: float, rate: int = 16000, channels: int = 1, freq: float = 440.0, subtype: str = "PCM_16") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.4 * np.sin(2 * np.pi * freq * t)
    data = np.stack([wave * (1 + 0.1 * c) for c in range(channels)], axis=1) if channels > 1 else wave
    soundfile.write(path, data, rate, subtype=subtype)


def _read_shards(out_dir: Path) -> dict[str, dict[str, object]]:
    samples = {}
    for shard in sorted(out_dir.glob("*.tar")):
        for sample in iter_tar_samples(str(shard)):
            samples[sample["__key__"]] = sample
    return samples


def _labels_csv(path: Path) -> Path:
    path.write_text('index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0jbk,"Animal, pets"\n')
    return path


# --- sources on tiny fake trees laid out like the real datasets ---


def _librispeech_tree(root: Path) -> Path:
    split = root / "LibriSpeech" / "train-clean-100"
    for speaker, chapter, n in [(19, 198, 2), (103, 1240, 1)]:
        chapter_dir = split / str(speaker) / str(chapter)
        lines = []
        for utt in range(n):
            _tone(chapter_dir / f"{speaker}-{chapter}-{utt:04d}.flac", 0.5 + 0.25 * utt, freq=300 + 100 * utt)
            lines.append(f"{speaker}-{chapter}-{utt:04d} HELLO WORLD {utt}")
        (chapter_dir / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root / "LibriSpeech"


def test_librispeech_source(tmp_path: Path) -> None:
    root = _librispeech_tree(tmp_path)
    records = librispeech.scan(root)
    assert [r.key for r in records] == ["103-1240-0000", "19-198-0000", "19-198-0001"]
    assert records[2].extra == {"speaker": 19, "chapter": 198, "split": "train-clean-100", "text": "HELLO WORLD 1"}
    assert records[2].rel_path == "train-clean-100/19/198/19-198-0001.flac"
    assert librispeech.scan(root / "train-clean-100")[0].extra["split"] == "train-clean-100"
    index = write_shards(records, tmp_path / "out", ShardOptions(max_count=2), **QUIET)
    assert index["count"] == 3 and len(index["shards"]) == 2 and index["sources"] == {"librispeech": 3}
    assert index["seconds"] == 1.75 and index["hours"] == round(1.75 / 3600, 6)
    meta = json.loads(_read_shards(tmp_path / "out")["19-198-0001"]["json"])
    assert meta["text"] == "HELLO WORLD 1" and meta["duration"] == 0.75 and meta["labels"] == []
    with pytest.raises(ValueError, match="no LibriSpeech utterances"):
        librispeech.scan(tmp_path / "out")


def test_audioset_source_maps_mids_and_reports_missing_clips(tmp_path: Path) -> None:
    clips = tmp_path / "clips"
    _tone(clips / "Y--PJHxphWEs_30.000_40.000.wav", 1.0)  # 'Y' + YTID naming
    _tone(clips / "sub" / "_abcdefghij_0.flac", 1.0)  # YTID starting with '_' in a sub-folder
    header = "# Segments csv created Sun Mar  5 10:54:31 2017\n# num_ytids=2\n# YTID, start_seconds, end_seconds, positive_labels\n"
    (tmp_path / "balanced_train_segments.csv").write_text(header + '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/m/0jbk"\n')
    (tmp_path / "eval_segments.csv").write_text(header + '_abcdefghij, 0.000, 10.000, "/m/04rlf"\nmissingID00, 5.000, 15.000, "/m/09x0r"\n')
    records = audioset.scan(
        clips, [tmp_path / "balanced_train_segments.csv", tmp_path / "eval_segments.csv"], _labels_csv(tmp_path / "labels.csv")
    )
    assert [(r.key, r.labels, r.extra["split"]) for r in records] == [
        ("--PJHxphWEs", [0, 2], "balanced_train_segments"),
        ("_abcdefghij", [1], "eval_segments"),
        ("missingID00", [0], "eval_segments"),
    ]
    index = write_shards(records, tmp_path / "out", **QUIET)
    assert index["count"] == 2 and index["rejects"]["by_reason"] == {"missing": 1}
    reject = json.loads((tmp_path / "out" / "rejects.jsonl").read_text())
    assert reject["path"] == "missingID00" and "no clip named after YouTube ID missingID00" in reject["detail"]
    meta = json.loads(_read_shards(tmp_path / "out")["--PJHxphWEs"]["json"])
    assert meta["labels"] == [0, 2] and meta["mids"] == ["/m/09x0r", "/m/0jbk"] and meta["start"] == 30.0
    (tmp_path / "bad.csv").write_text(header + 'xxxxxxxxxxx, 0, 10, "/m/nope"\n')
    with pytest.raises(ValueError, match=r"labels \['/m/nope'\] not in"):
        audioset.scan(clips, [tmp_path / "bad.csv"], tmp_path / "labels.csv")


def test_folder_source_recursive_with_dir_labels(tmp_path: Path) -> None:
    _tone(tmp_path / "in" / "dog" / "a.wav", 0.5)
    _tone(tmp_path / "in" / "cat" / "deep" / "b.c.flac", 0.5)
    (tmp_path / "in" / "notes.txt").write_text("not audio")
    records = folder.scan(tmp_path / "in", labels_from_dirs=True)
    assert [(r.key, r.labels, r.rel_path) for r in records] == [
        ("cat_deep_b_c_flac", ["cat"], "cat/deep/b.c.flac"),
        ("dog_a_wav", ["dog"], "dog/a.wav"),
    ]


def test_ast_json_source(tmp_path: Path) -> None:
    _tone(tmp_path / "audio" / "x1.wav", 0.5)
    _tone(tmp_path / "audio" / "x2.wav", 0.5)
    datafile = tmp_path / "data.json"
    datafile.write_text(json.dumps({"data": [
        {"wav": "audio/x1.wav", "labels": "/m/09x0r"},
        {"wav": str(tmp_path / "audio" / "x2.wav"), "labels": "/m/04rlf,/m/0jbk", "extra": 5},
    ]}))
    records = ast_json.scan(datafile, _labels_csv(tmp_path / "labels.csv"))
    assert [(r.key, r.labels, r.extra) for r in records] == [("x1", [0], {}), ("x2", [1, 2], {"extra": 5})]
    assert ast_json.scan(datafile)[1].labels == ["/m/04rlf", "/m/0jbk"]
    (tmp_path / "broken.json").write_text('{"data": [{"labels": "x"}]}')
    with pytest.raises(ValueError, match='entry 0 has no "wav" path'):
        ast_json.scan(tmp_path / "broken.json")


def test_manifest_sources_csv_and_jsonl(tmp_path: Path) -> None:
    _tone(tmp_path / "a.wav", 0.5)
    _tone(tmp_path / "sub" / "b.wav", 0.5)
    (tmp_path / "m.csv").write_text('path,labels,speaker\na.wav,"3,4",s1\nsub/b.wav,,s2\n')
    records = manifest.scan(tmp_path / "m.csv")
    assert [(r.key, r.labels, r.extra) for r in records] == [("a", [3, 4], {"speaker": "s1"}), ("sub_b", [], {"speaker": "s2"})]
    (tmp_path / "m.jsonl").write_text('{"path": "a.wav", "labels": ["/m/04rlf"], "key": "clip-1"}\n\n{"path": "sub/b.wav", "labels": 2}\n')
    records = manifest.scan(tmp_path / "m.jsonl", _labels_csv(tmp_path / "labels.csv"))
    assert [(r.key, r.labels) for r in records] == [("clip-1", [1]), ("sub_b", [2])]
    (tmp_path / "bad.csv").write_text("file,labels\na.wav,1\n")
    with pytest.raises(ValueError, match="must contain a 'path' column"):
        manifest.scan(tmp_path / "bad.csv")


# --- writer outcomes on problem inputs ---


def test_problem_files_get_the_right_outcome(tmp_path: Path) -> None:
    src = tmp_path / "in"
    _tone(src / "good_stereo_44k.wav", 5.0, rate=44100, channels=2)
    (src / "corrupt.wav").parent.mkdir(parents=True, exist_ok=True)
    (src / "corrupt.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    (src / "empty.flac").write_bytes(b"")
    soundfile.write(src / "nan.wav", np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    _tone(src / "short.wav", 0.1)
    soundfile.write(src / "zero_samples.wav", np.zeros(0, dtype=np.float32), 16000)
    index = write_shards(folder.scan(src), tmp_path / "out", **QUIET)

    assert index["count"] == 1
    rejects = {r["path"]: r for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert {path: r["reason"] for path, r in rejects.items()} == {
        "corrupt.wav": "unreadable", "empty.flac": "empty", "nan.wav": "non_finite",
        "short.wav": "too_short", "zero_samples.wav": "empty",
    }
    assert rejects["nan.wav"]["detail"] == "8000 of 8000 samples are NaN or infinite"
    assert rejects["short.wav"]["detail"] == "0.100 s < min_seconds 0.3"
    assert rejects["empty.flac"]["detail"] == "file has 0 bytes"
    assert str(src / "corrupt.wav") in rejects["corrupt.wav"]["detail"]
    assert index["rejects"]["count"] == 5

    sample = _read_shards(tmp_path / "out")["good_stereo_44k_wav"]
    meta = json.loads(sample["json"])
    assert meta["duration"] == 5.0 and meta["sample_rate"] == 16000
    assert (meta["original_sample_rate"], meta["original_channels"]) == (44100, 2)
    info = soundfile.info(io.BytesIO(sample["flac"]))
    assert (info.samplerate, info.channels, info.frames, info.format) == (16000, 1, 80000, "FLAC")


# --- round trip, determinism, size limits, resume ---


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    write_demo_corpus(root, n_clips=12, seconds=1.0, seed=3)
    return root


def test_round_trip_preserves_audio_and_metadata(corpus: Path, tmp_path: Path) -> None:
    records = manifest.scan(corpus / "manifest.csv")
    write_shards(records, tmp_path / "out", ShardOptions(max_count=5), **QUIET)
    samples = _read_shards(tmp_path / "out")
    assert sorted(samples) == sorted(r.key for r in records)
    for record in records:
        sample = samples[record.key]
        meta = json.loads(sample["json"])
        assert meta == {
            "key": record.key, "source": "manifest", "path": record.rel_path, "duration": 1.0, "sample_rate": 16000,
            "original_sample_rate": 16000, "original_channels": 1, "labels": record.labels,
        }
        decoded, _ = soundfile.read(io.BytesIO(sample["flac"]), dtype="float32")
        assert np.array_equal(decoded, load_audio(record.path).numpy())  # 16-bit source: lossless
    assert {tuple(r.labels) for r in records} == {(kind,) for kind in CLIP_KINDS}


def test_webdataset_library_reads_the_shards(corpus: Path, tmp_path: Path) -> None:
    wds = pytest.importorskip("webdataset")
    write_shards(folder.scan(corpus), tmp_path / "out", ShardOptions(max_count=5), **QUIET)
    dataset = wds.WebDataset(sorted(str(p) for p in (tmp_path / "out").glob("*.tar")), shardshuffle=False)
    keys = [(sample["__key__"], json.loads(sample["json"])["key"]) for sample in dataset]
    assert len(keys) == 12 and all(a == b for a, b in keys)


def test_parallel_output_is_byte_identical_and_sized(corpus: Path, tmp_path: Path) -> None:
    records = folder.scan(corpus)
    options = ShardOptions(max_count=4, max_bytes=60_000)
    one = write_shards(records, tmp_path / "w1", options, workers=1, **QUIET)
    two = write_shards(records, tmp_path / "w2", options, workers=2, **QUIET)
    assert one["shards"] == two["shards"] and len(one["shards"]) >= 4
    for shard in one["shards"]:
        assert (tmp_path / "w1" / shard["name"]).read_bytes() == (tmp_path / "w2" / shard["name"]).read_bytes()
        assert shard["bytes"] <= 60_000 and 1 <= shard["count"] <= 4
    assert one["pattern"] == f"shard-{{000000..{len(one['shards']) - 1:06d}}}.tar"


def test_rerun_skips_finished_shards_and_redoes_missing_ones(corpus: Path, tmp_path: Path) -> None:
    records = folder.scan(corpus)
    options = ShardOptions(max_count=4)
    out = tmp_path / "out"
    first = write_shards(records, out, options, **QUIET)
    originals = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.glob("*.tar")}
    (out / "shard-000002.tar").unlink()
    messages: list[str] = []
    second = write_shards(records, out, options, log=messages.append)
    assert messages[0] == "resuming at input 8 of 12 (2 shards done)"
    assert second == first
    for name, (data, mtime) in originals.items():
        assert (out / name).read_bytes() == data
        if name != "shard-000002.tar":
            assert (out / name).stat().st_mtime_ns == mtime  # not rewritten
    messages.clear()
    write_shards(records, out, options, log=messages.append)
    assert messages == ["resuming at input 12 of 12 (3 shards done)"]
    with pytest.raises(ValueError, match="holds shards written from other inputs or options"):
        write_shards(records, out, ShardOptions(max_count=5), **QUIET)
    assert write_shards(records, out, ShardOptions(max_count=6), overwrite=True, **QUIET)["count"] == 12
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar"]


def test_any_file_name_gets_a_unique_stable_key_and_every_input_is_accounted_for(tmp_path: Path) -> None:
    src = tmp_path / "in"
    names = ["a b.wav", "a_b.wav", "\u00e9.wav", "\u00fc.wav", "dog/001.wav", "dog_001.wav", "x" * 120 + ".wav"]
    for name in names:
        _tone(src / name, 0.5)
    _tone(src / "later.wav", 0.5)
    os.rename(src / "later.wav", os.path.join(os.fsencode(src), b"\xff\xfe.wav"))  # not valid UTF-8
    (src / "gone.wav").symlink_to(src / "nowhere.wav")
    os.mkfifo(src / "pipe.wav")  # opening it for reading would block forever
    records = folder.scan(src)
    assert [r.key for r in records] == [r.key for r in folder.scan(src)]  # stable
    with deadline(120):
        index = write_shards(records, tmp_path / "out", **QUIET)

    rejects = {r["path"]: r for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines())}
    assert {path: (r["reason"], r["detail"]) for path, r in rejects.items()} == {
        "gone.wav": ("missing", "dangling symlink"), "pipe.wav": ("unreadable", "not a regular file (a FIFO, socket or device)"),
    }
    assert index["count"] == 8 and index["count"] + index["rejects"]["count"] == len(names) + 3
    samples = _read_shards(tmp_path / "out")
    paths = {json.loads(sample["json"])["path"]: key for key, sample in samples.items()}
    assert sorted(paths) == sorted([*names, "\\xff\\xfe.wav"])
    assert paths["a_b.wav"] == "a_b_wav"  # plain names keep their key
    assert paths["a b.wav"].startswith("a_b_wav-") and paths["\u00e9.wav"] != paths["\u00fc.wav"]
    assert paths["dog/001.wav"] != paths["dog_001.wav"] and paths["dog_001.wav"].startswith("dog_001_wav-")
    assert all(len(key) <= 80 for key in samples)


def test_colliding_keys_are_made_unique_and_repeated_files_rejected(tmp_path: Path) -> None:
    _tone(tmp_path / "a.wav", 0.5)
    _tone(tmp_path / "b.wav", 0.5, freq=300.0)
    records = [AudioRecord("k", str(tmp_path / p), "x", p) for p in ("a.wav", "b.wav", "a.wav")]
    index = write_shards(records, tmp_path / "out", **QUIET)
    assert index["count"] == 2 and sorted(_read_shards(tmp_path / "out")) == sorted(f"k-{key_hash(p)}" for p in ("a.wav", "b.wav"))
    (reject,) = map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())
    assert reject["reason"] == "duplicate" and reject["detail"] == "the same file as input 0 (a.wav)"


def test_sample_rate_and_amplitude_rules(tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    wave = 0.4 * np.sin(np.linspace(0, 2000, 16000)).astype(np.float32)
    soundfile.write(src / "four_hz.wav", wave, 4)  # a damaged header: 16000 samples at 4 Hz = 1.1 h
    soundfile.write(src / "unscaled.wav", wave * 32767, 16000, subtype="FLOAT")
    soundfile.write(src / "hot.wav", wave * 3.5, 16000, subtype="FLOAT")  # peak 1.4: clipped, counted
    soundfile.write(src / "fine.wav", wave, 16000, subtype="FLOAT")
    index = write_shards(folder.scan(src), tmp_path / "out", **QUIET)
    rejects = {r["path"]: r for r in map(json.loads, (tmp_path / "out" / "rejects.jsonl").read_text().splitlines())}
    assert {path: r["reason"] for path, r in rejects.items()} == {"four_hz.wav": "bad_sample_rate", "unscaled.wav": "too_loud"}
    assert rejects["four_hz.wav"]["detail"] == "implausible sample rate 4 Hz in the header (accepted: 1000..768000 Hz)"
    assert rejects["unscaled.wav"]["detail"].startswith("peak amplitude 1.311e+04 is above 2;")
    assert index["count"] == 2 and index["clipped"] == 1
    samples = _read_shards(tmp_path / "out")
    assert json.loads(samples["hot_wav"]["json"])["clipped"] is True and "clipped" not in json.loads(samples["fine_wav"]["json"])


def test_killed_worker_stops_the_writer_and_a_rerun_resumes(corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    records = folder.scan(corpus)
    options = ShardOptions(max_count=4)
    parent = os.getpid()
    original = shards.encode_record

    def killed_at_input_9(index: int, record: AudioRecord, opts: ShardOptions) -> object:
        if index == 9 and os.getpid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
        return original(index, record, opts)

    monkeypatch.setattr(shards, "encode_record", killed_at_input_9)  # forked workers inherit it
    with deadline(120), pytest.raises(WorkerDiedError, match="worker processes for decoding audio died abruptly.*2 shards finished so far are kept: rerun"):
        write_shards(records, tmp_path / "out", options, workers=2, **QUIET)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tar*")) == ["shard-000000.tar", "shard-000001.tar"]
    monkeypatch.setattr(shards, "encode_record", original)
    messages: list[str] = []
    index = write_shards(records, tmp_path / "out", options, workers=2, log=messages.append)
    assert messages[0] == "resuming at input 8 of 12 (2 shards done)" and index["count"] == 12
    fresh = write_shards(records, tmp_path / "fresh", options, **QUIET)
    assert index == fresh


def test_precomputed_fbank_shards(corpus: Path, tmp_path: Path) -> None:
    records = folder.scan(corpus)[:3]
    index = write_shards(records, tmp_path / "out", ShardOptions(fbank=True), **QUIET)
    assert index["content"] == "fbank" and index["fbank"] == FeatureConfig().kaldi_options
    for record in records:
        sample = _read_shards(tmp_path / "out")[record.key]
        assert "flac" not in sample
        stored = np.load(io.BytesIO(sample["fbank.npy"]))
        assert stored.dtype == np.float16 and stored.shape == (98, 128)
        expected = FeatureConfig().raw_fbank(load_audio(record.path))
        assert np.abs(stored.astype(np.float32) - expected.numpy()).max() < 0.02


def test_cli_shards_and_stats(corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert cli.main(["shards", "folder", str(corpus), "-o", str(out), "--max-count", "5", "--workers", "2", "--labels-from-dirs"]) == 0
    assert "3 shards, 12 clips, 0.003 h" in capsys.readouterr().out
    assert json.loads(_read_shards(out)["tone_tone_00000_flac"]["json"])["labels"] == ["tone"]

    config = FeatureConfig(target_length=150)
    frames = torch.cat([config.finish(config.raw_fbank(load_audio(p))) * 2 * config.std + config.mean for p in sorted(corpus.rglob("*.flac"))])
    stats = compute_stats(str(out), config, workers=2)
    assert stats["clips"] == 12 and stats["values"] == 12 * 150 * 128
    assert math.isclose(stats["mean"], float(frames.double().mean()), rel_tol=1e-4)
    assert math.isclose(stats["std"], float(frames.double().std(unbiased=False)), rel_tol=1e-4)

    assert cli.main(["stats", str(out / "shard-{000000..000002}.tar"), "--target-length", "150", "--max-clips", "7", "--exclude-padding", "-o", str(tmp_path / "s.json")]) == 0
    saved = json.loads((tmp_path / "s.json").read_text())
    assert saved["clips"] == 7 and saved["values"] == 7 * 98 * 128 and not saved["include_padding"]


def test_parse_size() -> None:
    assert parse_size("500M") == 500_000_000 and parse_size("2G") == 2_000_000_000 and parse_size("1234") == 1234
    assert parse_size("1.5kb") == 1500


def test_demo_corpus_is_deterministic_and_varied(tmp_path: Path) -> None:
    first = write_demo_corpus(tmp_path / "a", n_clips=8, seconds=0.5, seed=4)
    second = write_demo_corpus(tmp_path / "b", n_clips=8, seconds=0.5, seed=4)
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert [p.parent.name for p in first] == list(CLIP_KINDS) * 2
    rows = (tmp_path / "a" / "manifest.csv").read_text().splitlines()
    assert rows[0] == "path,labels" and rows[1] == "tone/tone_00000.flac,tone"
    config = FeatureConfig(target_length=48)
    spectra = [config.raw_fbank(load_audio(p)).mean(0) for p in first[:4]]
    assert all((a - b).abs().max() > 1.0 for i, a in enumerate(spectra) for b in spectra[i + 1 :])
