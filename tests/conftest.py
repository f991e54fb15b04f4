"""Shared test helpers: a tiny exported encoder and a one-thread fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssamba.audio.fbank import FeatureConfig
from ssamba.interop.checkpoints import Checkpoint
from ssamba.interop.export import write_export
from ssamba.models.encoder import AudioMambaEncoder, preset_config

TINY_MEL_BINS = 32
TINY_DIM = 32


def tiny_export(directory: Path, preset: str = "ssamba-tiny", frames: int = 64, **overrides: object) -> Path:
    """Export a randomly initialised 2-layer, 32-wide encoder (32 mel bins) to ``directory/export``."""
    torch.manual_seed(0)
    config = preset_config(preset, embed_dim=TINY_DIM, depth=2, num_mel_bins=TINY_MEL_BINS, target_length=frames, **overrides)
    encoder = AudioMambaEncoder(config)
    checkpoint = Checkpoint(
        layout="ssamba-train",
        source=directory / "synthetic.pt",
        encoder_config=encoder.config,
        encoder_state=encoder.state_dict(),
        features=FeatureConfig(num_mel_bins=TINY_MEL_BINS, target_length=frames),
    )
    return write_export(checkpoint, directory / "export")


@pytest.fixture
def one_torch_thread():
    """Per-clip tensor ops are tiny; intra-op threads only add contention on a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def write_labelled_clips(root: Path, per_class: int = 8, seconds: float = 1.0, seed: int = 0) -> list[tuple[str, str]]:
    """Write ``per_class`` 16 kHz clips each of tones, noise and chirps under ``root``; returns (relative path, label)
    rows. The classes differ in spectral shape, so a linear probe separates them."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(seed)
    rate = 16000
    t = np.arange(int(seconds * rate)) / rate
    rows = []
    for index in range(per_class):
        waves = {
            "tone": np.sin(2 * np.pi * rng.uniform(300, 1500) * t),
            "noise": rng.standard_normal(t.size) / 3,
            "chirp": np.sin(2 * np.pi * (rng.uniform(200, 500) * t + rng.uniform(2000, 3000) * t**2 / (2 * seconds))),
        }
        for label, wave in waves.items():
            path = root / label / f"{label}_{index:03d}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            wave = 0.5 * wave / np.abs(wave).max() + 0.002 * rng.standard_normal(t.size)
            soundfile.write(path, wave.astype(np.float32), rate, subtype="PCM_16")
            rows.append((path.relative_to(root).as_posix(), label))
    return rows
