"""A small synthetic audio corpus with learnable time-frequency structure (no downloads).

``write_demo_corpus(out_dir, n_clips, seconds, seed)`` writes 16 kHz mono FLAC clips of four
kinds, cycling through them: steady tones (1-3 partials with envelopes), chirps (linear or
exponential sweeps), band-limited noise bursts, and harmonic stacks (a pitch with harmonics,
vibrato and tremolo). Each clip gets a little background noise. Files go to
``out_dir/<kind>/<kind>_<index>.flac`` and ``out_dir/manifest.csv`` lists ``path,labels`` (the
kind), so the corpus works with both the ``folder`` and the ``manifest`` shard sources.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile

DEMO_SAMPLE_RATE = 16000
CLIP_KINDS = ("tone", "chirp", "noise_burst", "harmonic")
BACKGROUND_NOISE_LEVEL = 0.003
PEAK_RANGE = (0.3, 0.8)
MIN_FREQ_HZ, MAX_FREQ_HZ = 80.0, 6000.0


def _envelope(rng: np.random.Generator, n: int, sample_rate: int) -> np.ndarray:
    """Attack/release envelope with a random number of on-segments."""
    env = np.zeros(n)
    for _ in range(rng.integers(1, 4)):
        start = rng.integers(0, max(1, n - sample_rate // 4))
        length = rng.integers(sample_rate // 4, max(sample_rate // 4 + 1, n - start + 1))
        ramp = min(length // 4, int(0.05 * sample_rate)) or 1
        seg = np.ones(length)
        seg[:ramp] = np.linspace(0, 1, ramp)
        seg[-ramp:] = np.linspace(1, 0, ramp)
        env[start : start + length] = np.maximum(env[start : start + length], seg[: n - start])
    return env


def _tone(rng: np.random.Generator, t: np.ndarray, sample_rate: int) -> np.ndarray:
    freqs = rng.uniform(MIN_FREQ_HZ * 2, MAX_FREQ_HZ / 2, rng.integers(1, 4))
    wave = sum(rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)) for f in freqs)
    return wave * _envelope(rng, t.size, sample_rate)


def _chirp(rng: np.random.Generator, t: np.ndarray, sample_rate: int) -> np.ndarray:
    f0, f1 = rng.uniform(MIN_FREQ_HZ * 2, MAX_FREQ_HZ, 2)
    duration = t[-1] if t.size > 1 else 1.0
    if rng.random() < 0.5:
        phase = 2 * np.pi * (f0 * t + (f1 - f0) * t**2 / (2 * duration))
    else:
        rate = np.log(f1 / f0) / duration
        phase = 2 * np.pi * f0 * np.expm1(rate * t) / rate
    return np.sin(phase)


def _noise_burst(rng: np.random.Generator, t: np.ndarray, sample_rate: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.standard_normal(t.size))
    freqs = np.fft.rfftfreq(t.size, 1.0 / sample_rate)
    low = rng.uniform(MIN_FREQ_HZ, MAX_FREQ_HZ / 2)
    high = low * rng.uniform(1.2, 4.0)
    spectrum[(freqs < low) | (freqs > high)] = 0
    noise = np.fft.irfft(spectrum, t.size)
    return noise / (np.abs(noise).max() + 1e-9) * _envelope(rng, t.size, sample_rate)


def _harmonic(rng: np.random.Generator, t: np.ndarray, sample_rate: int) -> np.ndarray:
    f0 = rng.uniform(MIN_FREQ_HZ, 500.0)
    vibrato = 1 + rng.uniform(0, 0.02) * np.sin(2 * np.pi * rng.uniform(3, 7) * t)
    phase = 2 * np.pi * f0 * np.cumsum(vibrato) / sample_rate
    rolloff = rng.uniform(0.5, 1.5)
    wave = sum(np.sin(k * phase) / k**rolloff for k in range(1, 12) if k * f0 < sample_rate / 2)
    tremolo = 1 + rng.uniform(0, 0.5) * np.sin(2 * np.pi * rng.uniform(1, 6) * t)
    return wave * tremolo * _envelope(rng, t.size, sample_rate)


_GENERATORS: dict[str, Callable[[np.random.Generator, np.ndarray, int], np.ndarray]] = {
    "tone": _tone,
    "chirp": _chirp,
    "noise_burst": _noise_burst,
    "harmonic": _harmonic,
}


def synth_clip(kind: str, seconds: float, rng: np.random.Generator, sample_rate: int = DEMO_SAMPLE_RATE) -> np.ndarray:
    """One float32 clip of ``kind`` (one of :data:`CLIP_KINDS`), peak in :data:`PEAK_RANGE`."""
    if kind not in _GENERATORS:
        raise ValueError(f"unknown clip kind {kind!r}; choose from {CLIP_KINDS}")
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = _GENERATORS[kind](rng, t, sample_rate)
    wave = wave / (np.abs(wave).max() + 1e-9) * rng.uniform(*PEAK_RANGE)
    wave = wave + BACKGROUND_NOISE_LEVEL * rng.standard_normal(t.size)
    return np.clip(wave, -1.0, 1.0).astype(np.float32)


def write_demo_corpus(
    out_dir: str | Path, n_clips: int, seconds: float = 10.0, seed: int = 0, sample_rate: int = DEMO_SAMPLE_RATE
) -> list[Path]:
    """Write ``n_clips`` FLAC clips (kinds in turn) plus ``manifest.csv``; returns the clip paths."""
    if n_clips < 1 or seconds <= 0:
        raise ValueError(f"need n_clips >= 1 and seconds > 0, got {n_clips}, {seconds}")
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    paths: list[Path] = []
    rows: list[tuple[str, str]] = []
    for index in range(n_clips):
        kind = CLIP_KINDS[index % len(CLIP_KINDS)]
        path = out_dir / kind / f"{kind}_{index:05d}.flac"
        path.parent.mkdir(parents=True, exist_ok=True)
        soundfile.write(path, synth_clip(kind, seconds, rng, sample_rate), sample_rate, format="FLAC", subtype="PCM_16")
        paths.append(path)
        rows.append((path.relative_to(out_dir).as_posix(), kind))
    with open(out_dir / "manifest.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    return paths
