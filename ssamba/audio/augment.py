"""Fine-tuning augmentations as in SSAST/SSAMBA: SpecAugment, mixup, noise + time roll; and
background noise from recordings (Speech Commands' ``_background_noise_``) mixed in at a random SNR.

Order inside the loader (same as the original dataloader): waveform mixup -> fbank -> pad/crop ->
SpecAugment (on the un-normalised log-mel, so masked cells are 0 *before* normalisation) ->
normalise -> noise + roll. Fbank-level mixup is applied to whole batches instead.

Scalar draws (mixup lambda, whether to mix, roll shift) use a ``random.Random``; tensor draws use
a ``torch.Generator``, so a seeded loader is reproducible.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

MIXUP_ALPHA = 10.0  # lambda ~ Beta(10, 10)
NOISE_SCALE = 0.1  # noise = U[0,1) * (U[0,1) * 0.1), added to the normalised fbank
MAX_ROLL_FRAMES = 10  # circular time shift drawn from [-10, 9]


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations a fine-tuning loader applies (all off by default = pretraining).

    ``freq_mask`` / ``time_mask``: maximum width of the one frequency / time mask (torchaudio's
    ``FrequencyMasking(freqm)`` / ``TimeMasking(timem)``). ``mixup``: probability of mixing a
    sample with a partner, lambda ~ Beta(``mixup_alpha``, ``mixup_alpha``), on the waveform (partner
    from a pool of recent clips, as the original draws from the dataset) or on batched fbank.
    ``noise``: uniform noise + circular time roll.
    """

    freq_mask: int = 0
    time_mask: int = 0
    mixup: float = 0.0
    mixup_alpha: float = MIXUP_ALPHA
    mixup_level: Literal["waveform", "fbank"] = "waveform"
    noise: bool = False

    def __post_init__(self) -> None:
        if self.freq_mask < 0 or self.time_mask < 0:
            raise ValueError(f"mask widths must be >= 0, got freq_mask={self.freq_mask}, time_mask={self.time_mask}")
        if not 0.0 <= self.mixup <= 1.0:
            raise ValueError(f"mixup is a probability in [0, 1], got {self.mixup}")
        if self.mixup_level not in ("waveform", "fbank"):
            raise ValueError(f"mixup_level must be 'waveform' or 'fbank', got {self.mixup_level!r}")
        if self.mixup_alpha <= 0:
            raise ValueError(f"mixup_alpha must be positive, got {self.mixup_alpha}")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> AugmentConfig:
        """Fine-tuning recipe by dataset: 'audioset', 'esc50', 'speechcommands' (spec section 4.3)."""
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; choose from {sorted(AUGMENT_PRESETS)}")
        return replace(AUGMENT_PRESETS[name], **overrides)


AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    "pretrain": AugmentConfig(),
    "audioset": AugmentConfig(freq_mask=48, time_mask=192, mixup=0.5),
    "esc50": AugmentConfig(freq_mask=24, time_mask=96, noise=True),
    "speechcommands": AugmentConfig(freq_mask=48, time_mask=48, mixup=0.6, noise=True),
}


def _mask_along(features: torch.Tensor, dim: int, max_width: int, generator: torch.Generator | None) -> torch.Tensor:
    if max_width <= 0:
        return features
    size = features.shape[dim]
    width_f = float(torch.rand((), generator=generator)) * max_width
    start = int(float(torch.rand((), generator=generator)) * max(size - width_f, 0.0))
    end = min(start + int(width_f), size)
    if end <= start:
        return features
    out = features.clone()
    out.narrow(dim, start, end - start).zero_()
    return out


def spec_augment(
    features: torch.Tensor, freq_mask: int, time_mask: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero one random frequency band (width < ``freq_mask``) and one time span (< ``time_mask``)
    of a ``(frames, bins)`` log-mel."""
    out = _mask_along(features, 1, freq_mask, generator)
    return _mask_along(out, 0, time_mask, generator)


def add_noise_and_roll(
    features: torch.Tensor, rng: random.Random, generator: torch.Generator | None = None
) -> torch.Tensor:
    """SSAST's noise augmentation on a normalised ``(frames, bins)`` input: add ``U[0,1) * s`` with
    ``s ~ U[0, 0.1)``, then roll circularly along time by an integer in [-10, 9]."""
    scale = rng.random() * NOISE_SCALE
    noisy = features + torch.rand(features.shape, generator=generator, dtype=features.dtype) * scale
    return torch.roll(noisy, rng.randrange(-MAX_ROLL_FRAMES, MAX_ROLL_FRAMES), dims=0)


def mixup_waveforms(first: torch.Tensor, second: torch.Tensor, lam: float) -> torch.Tensor:
    """``lam * first + (1 - lam) * second``, the partner zero-padded or cut to ``first``'s length,
    then the mean removed again (as the original does)."""
    n = first.shape[-1]
    partner = second[..., :n] if second.shape[-1] >= n else torch.nn.functional.pad(second, (0, n - second.shape[-1]))
    mixed = lam * first + (1.0 - lam) * partner
    return mixed - mixed.mean(dim=-1, keepdim=True)


def mixup_batch(
    features: torch.Tensor, labels: torch.Tensor, probability: float, alpha: float, rng: random.Random
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fbank-level mixup of a batch: each sample is, with ``probability``, mixed with another
    random sample of the batch using ``lambda ~ Beta(alpha, alpha)``; labels alike."""
    batch = features.shape[0]
    if batch < 2 or probability <= 0:
        return features, labels
    order = list(range(batch))
    partners = [(i + rng.randrange(1, batch)) % batch for i in order]
    lams = torch.tensor(
        [rng.betavariate(alpha, alpha) if rng.random() < probability else 1.0 for _ in order], dtype=features.dtype
    )
    shape = (batch,) + (1,) * (features.dim() - 1)
    mixed = lams.view(shape) * features + (1 - lams.view(shape)) * features[partners]
    mixed_labels = lams[:, None].to(labels.dtype) * labels + (1 - lams[:, None].to(labels.dtype)) * labels[partners]
    return mixed, mixed_labels


def mix_at_snr(signal: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``signal + a * noise`` with ``a`` chosen so that the signal-to-noise power ratio (mean squares
    over the whole clip) is ``snr_db`` decibels; ``noise`` has ``signal``'s length. A silent noise
    (or signal) leaves the signal unchanged."""
    if noise.shape != signal.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} differs from the signal's {tuple(signal.shape)}")
    signal_power = float(signal.double().square().mean())
    noise_power = float(noise.double().square().mean())
    if noise_power == 0.0 or signal_power == 0.0:
        return signal
    scale = math.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return (signal.double() + scale * noise.double()).to(signal.dtype)


class BackgroundNoise:
    """Mix a random crop of a random noise recording into a waveform at a random SNR.

    With ``probability`` a clip gets noise: a recording drawn uniformly, a window of the clip's
    length at a uniform offset (a recording shorter than the clip is repeated), an SNR drawn
    uniformly in decibels from ``snr_db``, mixed by :func:`mix_at_snr`. Every draw comes from
    ``(seed, index)`` alone, so the same clip of the same epoch gets the same noise in any loader
    worker and after a resume. Call as ``noise(waveform, index)`` (a dataset's ``wave_transform``).
    """

    def __init__(self, recordings: Sequence[torch.Tensor], *, probability: float, snr_db: tuple[float, float],
                 seed: int = 0, source: str = "") -> None:
        if not recordings:
            raise ValueError(f"{source or 'background noise'}: no noise recordings")
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"background noise probability must be in [0, 1], got {probability}")
        if not snr_db[0] <= snr_db[1]:
            raise ValueError(f"background noise snr_db must be [low, high] with low <= high, got {list(snr_db)}")
        self.recordings = list(recordings)
        self.probability = probability
        self.snr_db = (float(snr_db[0]), float(snr_db[1]))
        self.seed = seed
        self.source = source

    @classmethod
    def from_folder(cls, folder: str | os.PathLike[str], sample_rate: int, *, probability: float,
                    snr_db: tuple[float, float], seed: int = 0) -> BackgroundNoise:
        """Decode every audio file of ``folder`` (recursively) at ``sample_rate``; unreadable or silent
        files are skipped with a warning. ValueError when the folder is missing or holds no usable audio."""
        from ssamba.audio.io import AUDIO_EXTENSIONS, AudioDecodeError, load_audio

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder of background-noise recordings")
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
        recordings, problems = [], []
        for path in files:
            try:
                wave = load_audio(path, sample_rate)
            except (AudioDecodeError, OSError, RuntimeError) as error:
                problems.append(f"{path.name}: {error}")
                continue
            if wave.numel() == 0 or float(wave.abs().max()) == 0.0:
                problems.append(f"{path.name}: silent")
                continue
            recordings.append(wave)
        for problem in problems:
            log.warning("background noise: skipping %s", problem)
        if not recordings:
            found = f"{len(files)} audio file(s), none readable and non-silent" if files else \
                f"no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))})"
            raise ValueError(f"{folder}: {found}; expected background-noise recordings")
        return cls(recordings, probability=probability, snr_db=snr_db, seed=seed, source=str(folder))

    def reseeded(self, seed: int) -> BackgroundNoise:
        """The same recordings and settings with another seed (one per epoch)."""
        return BackgroundNoise(self.recordings, probability=self.probability, snr_db=self.snr_db, seed=seed,
                               source=self.source)

    @property
    def samples(self) -> int:
        """Total length of the recordings in samples."""
        return sum(r.numel() for r in self.recordings)

    def crop(self, recording: torch.Tensor, length: int, rng: np.random.Generator) -> torch.Tensor:
        """A window of ``length`` samples at a uniform offset (the recording repeated when shorter)."""
        if recording.numel() < length:
            recording = recording.repeat(math.ceil(length / recording.numel()) + 1)
        offset = int(rng.integers(0, recording.numel() - length + 1))
        return recording[offset:offset + length]

    def __call__(self, waveform: torch.Tensor, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, index])
        if rng.random() >= self.probability:
            return waveform
        recording = self.recordings[int(rng.integers(len(self.recordings)))]
        noise = self.crop(recording, waveform.shape[-1], rng)
        return mix_at_snr(waveform, noise.to(waveform.dtype), float(rng.uniform(*self.snr_db)))
