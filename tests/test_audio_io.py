"""Decoding, resampling, downmix, the optional PyAV path, and augmentations."""

from __future__ import annotations

import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import ssamba
from conftest import deadline
from ssamba.audio.augment import AugmentConfig, add_noise_and_roll, mixup_batch, mixup_waveforms, spec_augment
from ssamba.audio.io import AudioDecodeError, decode_bytes, decode_file, encode_flac, load_audio


def _stereo_tones(rate: int, seconds: float) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)], axis=1).astype(np.float32)


def _expected_mono_16k(seconds: float) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    return (0.5 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1000 * t)) / 2


def test_stereo_44k_wav_becomes_16k_mono(tmp_path: Path) -> None:
    path = tmp_path / "stereo.wav"
    soundfile.write(path, _stereo_tones(44100, 2.0), 44100, subtype="FLOAT")
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.shape == (32000,)
    inner = slice(800, -800)  # away from the resampler's edge transients
    assert np.abs(wave.numpy()[inner] - _expected_mono_16k(2.0)[inner]).max() < 2e-3
    assert ssamba.load_audio is load_audio


@pytest.mark.parametrize("fmt,subtype,tolerance", [("FLAC", "PCM_16", 1e-4), ("OGG", "VORBIS", 0.05), ("MP3", "MPEG_LAYER_III", 0.1)])
def test_compressed_formats_decode(tmp_path: Path, fmt: str, subtype: str, tolerance: float) -> None:
    path = tmp_path / f"clip.{fmt.lower()}"
    mono = _expected_mono_16k(1.0).astype(np.float32)
    soundfile.write(path, mono, 16000, format=fmt, subtype=subtype)
    wave = load_audio(path).numpy()
    assert abs(len(wave) - len(mono)) <= 1200  # mp3 encoder delay/padding
    n = min(len(wave), len(mono))
    if fmt == "MP3":  # compare spectra: the codec shifts samples in time
        spectrum = np.abs(np.fft.rfft(wave[:n]))
        assert {int(np.argmax(spectrum)), int(np.argsort(spectrum)[-2])} <= {440, 1000, 439, 441, 999, 1001}
    else:
        assert np.abs(wave[:n] - mono[:n]).max() < tolerance


def test_decode_bytes_matches_file_and_flac_round_trip(tmp_path: Path) -> None:
    mono = _expected_mono_16k(1.0).astype(np.float32)
    data = encode_flac(mono * 3.0, 16000)  # out of range: must clip, not wrap
    (tmp_path / "a.flac").write_bytes(data)
    from_bytes = decode_bytes(data, 16000)
    assert torch.equal(from_bytes, load_audio(tmp_path / "a.flac"))
    assert from_bytes.abs().max() <= 1.0 and from_bytes.max() > 0.99
    at_8k = decode_bytes(data, 8000)
    assert at_8k.shape == (8000,)


def test_corrupt_and_missing_files_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00garbage" * 10)
    with pytest.raises(AudioDecodeError, match=r"bad\.wav: cannot decode"):
        load_audio(bad)
    with pytest.raises(AudioDecodeError, match=r"nothere\.flac: file not found"):
        load_audio(tmp_path / "nothere.flac")
    with pytest.raises(AudioDecodeError, match=r"clip\.flac: cannot decode 5 bytes"):
        decode_bytes(b"hello", 16000, "clip.flac")


def test_implausible_files_and_samples_are_refused_with_a_reason(tmp_path: Path) -> None:
    wave = 0.4 * np.sin(np.linspace(0, 3000, 16000)).astype(np.float32)
    cases = {
        "four_hz.wav": (wave, 4, "PCM_16", "bad_sample_rate", "implausible sample rate 4 Hz in the header (accepted: 1000..768000 Hz)"),
        "nan.wav": (np.where(np.arange(16000) == 9, np.nan, wave).astype(np.float32), 16000, "FLOAT", "non_finite", "1 of 16000 samples are NaN or infinite"),
        "unscaled.wav": (wave * 32767, 16000, "FLOAT", "too_loud", "peak amplitude 1.311e+04 is above 2; float audio must be scaled to [-1, 1]"),
    }
    for name, (data, rate, subtype, reason, message) in cases.items():
        soundfile.write(tmp_path / name, data, rate, subtype=subtype)
        for read in (load_audio, decode_file, lambda p: decode_bytes(p.read_bytes(), 16000, str(p))):
            with pytest.raises(AudioDecodeError, match=re.escape(f"{tmp_path / name}: {message}")) as info:
                read(tmp_path / name)
            assert info.value.reason == reason
    soundfile.write(tmp_path / "hot.wav", wave * 4, 16000, subtype="FLOAT")  # peak 1.6: allowed, not rescaled
    assert abs(float(load_audio(tmp_path / "hot.wav").abs().max()) - 1.6) < 1e-3


def test_special_files_are_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.wav")  # soundfile would wait forever for a writer
    (tmp_path / "gone.wav").symlink_to(tmp_path / "nowhere.wav")
    with deadline(30), pytest.raises(AudioDecodeError, match=r"pipe\.wav: not a regular file"):
        load_audio(tmp_path / "pipe.wav")
    with pytest.raises(AudioDecodeError, match=r"gone\.wav: dangling symlink") as info:
        load_audio(tmp_path / "gone.wav")
    assert info.value.reason == "missing"


def _write_m4a(path: Path, rate: int = 44100, seconds: float = 1.0) -> None:
    av = pytest.importorskip("av")
    tones = np.ascontiguousarray(_stereo_tones(rate, seconds).T)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("aac", rate=rate, layout="stereo")
        for start in range(0, tones.shape[1], 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(tones[:, start : start + 1024]), format="fltp", layout="stereo")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def test_m4a_goes_through_pyav(tmp_path: Path) -> None:
    path = tmp_path / "clip.m4a"
    _write_m4a(path)
    audio, rate, channels = decode_file(path)
    assert (rate, channels) == (44100, 2)
    wave = load_audio(path).numpy()
    assert 16000 <= len(wave) <= 16000 + 1200  # AAC priming adds a few frames
    spectrum = np.abs(np.fft.rfft(wave[:16000]))
    assert {int(np.argmax(spectrum)), int(np.argsort(spectrum)[-2])} <= {439, 440, 441, 999, 1000, 1001}


def test_m4a_without_pyav_names_file_and_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "clip.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A " + bytes(64))
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` raise ImportError
    with pytest.raises(AudioDecodeError) as info:
        load_audio(path)
    message = str(info.value)
    assert str(path) in message
    assert "soundfile cannot read '.m4a' files and PyAV is not installed" in message
    assert "pip install 'ssamba[decode]'" in message


# --- augmentations ---


def test_spec_augment_masks_one_band_and_one_span() -> None:
    x = torch.ones(200, 128)
    out = spec_augment(x, freq_mask=48, time_mask=80, generator=torch.Generator().manual_seed(1))
    zero_cols = torch.nonzero((out == 0).all(dim=0)).flatten()
    zero_rows = torch.nonzero((out == 0).all(dim=1)).flatten()
    assert 0 < len(zero_cols) < 48 and 0 < len(zero_rows) < 80
    assert torch.equal(zero_cols, torch.arange(zero_cols[0], zero_cols[-1] + 1))  # contiguous band
    assert torch.equal(zero_rows, torch.arange(zero_rows[0], zero_rows[-1] + 1))
    assert (out == 0).sum() == len(zero_cols) * 200 + len(zero_rows) * 128 - len(zero_cols) * len(zero_rows)
    assert torch.equal(spec_augment(x, 0, 0), x)
    widths = {int((spec_augment(x, 48, 0, torch.Generator().manual_seed(s)) == 0).all(0).sum()) for s in range(60)}
    assert max(widths) < 48 and len(widths) > 20


def test_noise_and_roll() -> None:
    x = torch.arange(50.0)[:, None].repeat(1, 4)
    out = add_noise_and_roll(x, random.Random(0), torch.Generator().manual_seed(0))
    shift = int(torch.argmin(out[:, 0]))  # the roll moves frame 0 (value ~0) to index `shift`
    rolled = torch.roll(x, shift, dims=0)
    noise = out - rolled
    assert -10 <= (shift if shift < 25 else shift - 50) <= 9
    assert noise.min() >= 0 and noise.max() < 0.1


def test_mixup_waveforms_pads_partner_and_removes_mean() -> None:
    first, second = torch.ones(10), torch.full((4,), 3.0)
    mixed = mixup_waveforms(first, second, 0.75)
    expected = torch.tensor([1.5] * 4 + [0.75] * 6)
    torch.testing.assert_close(mixed, expected - expected.mean())


def test_mixup_batch_mixes_labels_like_features() -> None:
    features = torch.eye(4)[:, None, :].repeat(1, 3, 1)  # sample i = one-hot i
    labels = torch.eye(4)
    mixed, mixed_labels = mixup_batch(features, labels, 1.0, 10.0, random.Random(0))
    torch.testing.assert_close(mixed[:, 0, :], mixed_labels)
    assert torch.allclose(mixed_labels.sum(1), torch.ones(4))
    assert (mixed_labels.max(1).values < 1).all() and (mixed_labels.max(1).values > 0.5 - 0.3).all()
    same, same_labels = mixup_batch(features, labels, 0.0, 10.0, random.Random(0))
    assert torch.equal(same, features) and torch.equal(same_labels, labels)


def test_augment_presets_and_validation() -> None:
    assert AugmentConfig.preset("audioset") == AugmentConfig(freq_mask=48, time_mask=192, mixup=0.5)
    assert AugmentConfig.preset("esc50").noise and AugmentConfig.preset("esc50").mixup == 0
    with pytest.raises(ValueError, match="mixup is a probability"):
        AugmentConfig(mixup=1.5)
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        AugmentConfig.preset("nope")
