"""`ssamba embed`: real audio files in, clip and frame embeddings out, checked against direct encoder calls."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import ssamba
from conftest import TINY_DIM, TINY_MEL_BINS, tiny_export
from ssamba.audio.fbank import FeatureConfig
from ssamba.audio.io import load_audio
from ssamba.cli import main as cli_main
from ssamba.interop.embed import embed_files, find_audio_files, load_windowed_encoder

MEL, DIM = TINY_MEL_BINS, TINY_DIM
WINDOW_SECONDS = 1.0  # 100 frames: 2 x 6 patches per window
WINDOW_FRAMES = 100
COLUMNS_PER_WINDOW = 6


def _write_audio(path, seconds, rate, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    tone = 0.3 * np.sin(2 * np.pi * (300 + 900 * t) * t) + 0.05 * rng.standard_normal(t.size)
    audio = np.stack([tone * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else tone
    soundfile.write(path, audio.astype(np.float32), rate)


@pytest.fixture()
def corpus(tmp_path):
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    _write_audio(root / "short.wav", 0.6, 44100, channels=2, seed=1)  # resampled, down-mixed, one window
    _write_audio(root / "sub" / "long.flac", 2.3, 16000, seed=2)  # three windows
    (root / "notes.txt").write_text("not audio")
    return root


def _direct_tokens(export, fbank):
    encoder = ssamba.load_encoder(export, target_length=WINDOW_FRAMES)
    with torch.no_grad():
        tokens = encoder(fbank[None])[0]
    return encoder, tokens


def _frequency_mean(encoder, tokens):
    f, t = encoder.grid
    return encoder.patch_tokens(tokens[None])[0].reshape(f, t, -1).mean(0)


def test_embed_cli_npy_matches_direct_encoder(tmp_path, corpus, capsys):
    export = tiny_export(tmp_path)
    out = tmp_path / "emb"
    argv = ["embed", str(corpus), "--checkpoint", str(export), "--out", str(out), "--window-seconds", str(WINDOW_SECONDS), "--batch-size", "2"]
    assert cli_main(argv) == 0
    captured = capsys.readouterr()
    assert "embedded 2 file(s)" in captured.out and "160 ms" in captured.out
    assert "2/2" in captured.err  # progress bar
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.npy")) == [
        "short.frames.npy", "short.npy", "short.times.npy", "sub/long.frames.npy", "sub/long.npy", "sub/long.times.npy"
    ]
    features = FeatureConfig(num_mel_bins=MEL, target_length=WINDOW_FRAMES)

    # short clip: one padded window, exactly the training-style input
    wave = load_audio(corpus / "short.wav")
    encoder, tokens = _direct_tokens(export, features.features(wave))
    columns = 4  # centres 87.5 + 160 k ms <= 600 ms
    np.testing.assert_allclose(np.load(out / "short.npy"), encoder.pool(tokens[None])[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(out / "short.frames.npy"), _frequency_mean(encoder, tokens)[:columns].numpy(), atol=1e-5)
    np.testing.assert_allclose(np.load(out / "short.times.npy"), 0.0875 + 0.16 * np.arange(columns))

    # long clip: windows start 96 frames apart, so column k of window w is global column 6 w + k
    wave = load_audio(corpus / "sub" / "long.flac")
    raw = features.raw_fbank(wave)
    frames = np.load(out / "sub" / "long.frames.npy")
    times = np.load(out / "sub" / "long.times.npy")
    assert frames.shape == (14, DIM) and times[-1] <= 2.3 < times[-1] + 0.16
    np.testing.assert_allclose(np.diff(times), 0.16)
    window_means, pooled = [], []
    for w in range(3):
        chunk = raw[w * 96 : w * 96 + WINDOW_FRAMES]
        chunk = torch.nn.functional.pad(chunk, (0, 0, 0, WINDOW_FRAMES - chunk.shape[0]))
        encoder, tokens = _direct_tokens(export, (chunk - features.mean) / (2 * features.std))
        window_means.append(_frequency_mean(encoder, tokens))
        pooled.append(encoder.pool(tokens[None])[0])
    np.testing.assert_allclose(frames, torch.cat(window_means)[:14].numpy(), atol=1e-5)
    weights = torch.tensor([6.0, 6.0, 2.0])  # columns of each window inside the clip
    expected_clip = (torch.stack(pooled) * weights[:, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(np.load(out / "sub" / "long.npy"), expected_clip.numpy(), atol=1e-5)


def test_embed_cli_npz_and_default_window(tmp_path, corpus):
    export = tiny_export(tmp_path)
    out = tmp_path / "emb"
    files = [str(corpus / "sub" / "long.flac"), str(corpus / "short.wav")]
    assert cli_main(["embed", *files, "--checkpoint", str(export), "--out", str(out), "--format", "npz"]) == 0
    data = np.load(out / "embeddings.npz")
    assert data["names"].tolist() == ["long", "short"]
    assert data["clip"].shape == (2, DIM)
    offsets = data["frame_offsets"]
    assert offsets.tolist() == [0, 14, 18] and data["frames"].shape == (18, DIM)
    np.testing.assert_allclose(data["frame_times"][offsets[1] :], 0.0875 + 0.16 * np.arange(4))
    # default 10 s window: one window per clip, encoder adapted to 1000 frames
    model = load_windowed_encoder(export)
    assert model.encoder.config.target_length == 1000 and model.columns_per_window == 62


def test_embed_errors_name_the_input(tmp_path, corpus, capsys):
    export = tiny_export(tmp_path)
    soundfile.write(tmp_path / "blip.wav", np.zeros(100, np.float32), 16000)
    assert cli_main(["embed", str(tmp_path / "blip.wav"), "--checkpoint", str(export), "--out", str(tmp_path / "o")]) == 2
    assert "blip.wav: 100 samples is shorter than one 25 ms analysis frame" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli_main(["embed", str(tmp_path / "empty"), "--checkpoint", str(export), "--out", str(tmp_path / "o")]) == 2
    assert "empty: no audio files" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    _write_audio(other / "short.wav", 0.3, 16000)
    argv = ["embed", str(corpus / "short.wav"), str(other / "short.wav"), "--checkpoint", str(export), "--out", str(tmp_path / "o")]
    assert cli_main(argv) == 2
    assert "same output name 'short'" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["npy", "npz"])
def test_bad_files_are_skipped_counted_and_listed(tmp_path, corpus, capsys, fmt):
    """Before: one undecodable file aborted the run with nothing written; NaN audio gave NaN embeddings with rc 0."""
    export = tiny_export(tmp_path)
    (corpus / "broken.wav").write_bytes(b"RIFF" + bytes(range(256)) * 4)
    soundfile.write(corpus / "nan.wav", np.where(np.arange(8000) == 5, np.nan, 0.1).astype(np.float32), 16000, subtype="FLOAT")
    soundfile.write(corpus / "four_hz.wav", np.zeros(8000, np.float32), 4)
    (corpus / "gone.wav").symlink_to(corpus / "nowhere.wav")
    out = tmp_path / "emb"
    argv = ["embed", str(corpus), "--checkpoint", str(export), "--out", str(out), "--window-seconds", str(WINDOW_SECONDS), "--format", fmt]
    assert cli_main(argv) == 0
    assert "embedded 2 file(s)" in capsys.readouterr().out
    rejects = {r["path"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert {Path(path).name: r["reason"] for path, r in rejects.items()} == {
        "broken.wav": "unreadable", "four_hz.wav": "bad_sample_rate", "gone.wav": "missing", "nan.wav": "non_finite",
    }
    if fmt == "npy":
        assert sorted(p.name for p in out.rglob("*.npy") if not p.name.endswith((".frames.npy", ".times.npy"))) == ["long.npy", "short.npy"]
        assert np.isfinite(np.load(out / "short.npy")).all()
    else:
        assert np.load(out / "embeddings.npz")["names"].tolist() == ["short", "sub/long"]
    assert cli_main([*argv, "--strict"]) == 2
    assert "4 of 6 inputs could not be embedded (--strict)" in capsys.readouterr().err


def test_non_finite_embeddings_are_rejected(tmp_path, corpus):
    export = tiny_export(tmp_path)
    model = load_windowed_encoder(export, window_seconds=WINDOW_SECONDS)
    with torch.no_grad():
        model.encoder.norm_f.weight.fill_(float("nan"))  # e.g. a diverged checkpoint
    rejects = []
    assert list(embed_files(model, find_audio_files([corpus]), 4, rejects)) == []
    assert [r.reason for r in rejects] == ["non_finite_output", "non_finite_output"]
