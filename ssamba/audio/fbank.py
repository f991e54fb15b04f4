"""Kaldi-compatible log-mel filterbank features in plain torch, plus SSAMBA's normalisation.

``fbank(waveform, sample_rate, **kaldi_options)`` takes torchaudio's ``compliance.kaldi.fbank``
option names and defaults and reproduces its output (checked against golden values produced by
torchaudio). Unlike torchaudio it is batched: a 1-D waveform gives ``(frames, bins)``, a 2-D
``(batch, samples)`` tensor gives ``(batch, frames, bins)``. It runs on any device, in the dtype of
the input (float32 or float64).

SSAMBA/SSAST feature recipe (:data:`SSAMBA_FBANK_OPTIONS`): remove the waveform mean, 128-bin Kaldi
fbank with a Hanning window and 10 ms hop, zero-pad or cut to ``target_length`` frames, then
normalise ``(x - mean) / (2 * std)`` with dataset statistics (:data:`NORM_PRESETS`).
:class:`FeatureConfig` bundles these steps.

Note: with 128 bins at 16 kHz, mel bin 3 covers no FFT bin and is the constant ``log(eps)``
(-15.9424) in every frame, exactly as in torchaudio (and therefore in all released SSAST/SSAMBA
checkpoints' inputs).
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

import torch

# Smallest positive float32 step; Kaldi/torchaudio floor energies at this value before the log.
FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
# Mel scale used by Kaldi (natural-log HTK formula).
MEL_BREAK_HZ = 700.0
MEL_HIGH_FREQ_Q = 1127.0
MILLISECONDS_PER_SECOND = 1000.0

WINDOW_TYPES = ("hamming", "hanning", "povey", "rectangular", "blackman")

# The arguments SSAST, SSAMBA and AuM pass to torchaudio.compliance.kaldi.fbank (besides the rate).
SSAMBA_FBANK_OPTIONS: dict[str, object] = {
    "htk_compat": True,
    "use_energy": False,
    "window_type": "hanning",
    "num_mel_bins": 128,
    "dither": 0.0,
    "frame_shift": 10.0,
}
SSAMBA_SAMPLE_RATE = 16000
PRETRAIN_TARGET_LENGTH = 1024


@dataclass(frozen=True)
class NormStats:
    """Dataset log-mel statistics used by ``(x - mean) / (2 * std)``."""

    mean: float
    std: float


# Statistics published with SSAST/SSAMBA (spec section 3.2), by dataset.
NORM_PRESETS: dict[str, NormStats] = {
    "audioset_librispeech": NormStats(-4.2677393, 4.5689974),
    "audioset": NormStats(-4.2677393, 4.5689974),
    "esc50": NormStats(-6.6268077, 5.358466),
    "speechcommands": NormStats(-6.845978, 5.5654526),
    "urban8k": NormStats(-5.138443946838379, 4.229961395263672),
}


def _mel(freq: torch.Tensor | float) -> torch.Tensor | float:
    if isinstance(freq, torch.Tensor):
        return MEL_HIGH_FREQ_Q * (1.0 + freq / MEL_BREAK_HZ).log()
    return MEL_HIGH_FREQ_Q * math.log1p(freq / MEL_BREAK_HZ)


def _inverse_mel(mel: float) -> float:
    return MEL_BREAK_HZ * (math.exp(mel / MEL_HIGH_FREQ_Q) - 1.0)


def _vtln_warp_freq(
    vtln_low: float, vtln_high: float, low_freq: float, high_freq: float, warp: float, freq: float
) -> float:
    """Kaldi's piecewise-linear VTLN frequency warp (identity outside [low_freq, high_freq])."""
    if freq < low_freq or freq > high_freq:
        return freq
    lower = vtln_low * max(1.0, warp)
    upper = vtln_high * min(1.0, warp)
    scale = 1.0 / warp
    if freq < lower:
        return low_freq + (scale * lower - low_freq) / (lower - low_freq) * (freq - low_freq)
    if freq < upper:
        return scale * freq
    return high_freq + (high_freq - scale * upper) / (high_freq - upper) * (freq - high_freq)


@functools.lru_cache(maxsize=32)
def _mel_banks(
    num_bins: int,
    padded_window_size: int,
    sample_rate: float,
    low_freq: float,
    high_freq: float,
    vtln_low: float,
    vtln_high: float,
    vtln_warp: float,
) -> torch.Tensor:
    """Triangular mel filters, shape (num_bins, padded_window_size // 2 + 1), float32 on CPU.

    Computed in float32 like Kaldi (BaseFloat) and torchaudio, so the weights round identically.
    The last column (Nyquist FFT bin) is zero: Kaldi only uses the first N/2 FFT bins.
    """
    num_fft_bins = padded_window_size // 2
    fft_bin_width = sample_rate / padded_window_size
    mel_low, mel_high = _mel(low_freq), _mel(high_freq)
    delta = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + torch.arange(num_bins + 2, dtype=torch.float32) * delta
    if vtln_warp != 1.0:
        edges = torch.tensor(
            [
                _mel(_vtln_warp_freq(vtln_low, vtln_high, low_freq, high_freq, vtln_warp, _inverse_mel(float(m))))
                for m in edges
            ],
            dtype=torch.float32,
        )
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    fft_mel = _mel(fft_bin_width * torch.arange(num_fft_bins, dtype=torch.float32))[None, :]
    up = (fft_mel - left) / (center - left)
    down = (right - fft_mel) / (right - center)
    weights = torch.clamp_min(torch.minimum(up, down), 0.0)
    return torch.nn.functional.pad(weights, (0, 1))


def _window(window_type: str, size: int, blackman_coeff: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Analysis window, computed directly in ``dtype`` (Kaldi's definitions; 'hanning' is the
    symmetric Hann). Computing it in the working precision keeps float32 results bit-close to
    torchaudio's, which matters in near-silent bins where rounding noise dominates."""
    if window_type == "hanning":
        return torch.hann_window(size, periodic=False, dtype=dtype, device=device)
    if window_type == "hamming":
        return torch.hamming_window(size, periodic=False, alpha=0.54, beta=0.46, dtype=dtype, device=device)
    if window_type == "povey":
        return torch.hann_window(size, periodic=False, dtype=dtype, device=device).pow(0.85)
    if window_type == "rectangular":
        return torch.ones(size, dtype=dtype, device=device)
    if window_type == "blackman":
        phase = 2.0 * math.pi / (size - 1) * torch.arange(size, dtype=dtype, device=device)
        return blackman_coeff - 0.5 * torch.cos(phase) + (0.5 - blackman_coeff) * torch.cos(2.0 * phase)
    raise ValueError(f"window_type must be one of {WINDOW_TYPES}, got {window_type!r}")


def _frames(waveform: torch.Tensor, size: int, shift: int, snip_edges: bool) -> torch.Tensor:
    """Cut (B, N) into (B, T, size) frames with Kaldi's framing (reflection padding if not snip_edges)."""
    num_samples = waveform.shape[-1]
    if snip_edges:
        if num_samples < size:
            return waveform.new_empty((waveform.shape[0], 0, size))
        return waveform.unfold(-1, size, shift)
    num_frames = (num_samples + shift // 2) // shift
    starts = torch.arange(num_frames, device=waveform.device) * shift + shift // 2 - size // 2
    index = starts[:, None] + torch.arange(size, device=waveform.device)[None, :]
    # Reflect at both ends, repeatedly if needed (sample -1 -> 0, N -> N-1), as Kaldi does.
    index = index % (2 * num_samples)
    index = torch.where(index >= num_samples, 2 * num_samples - 1 - index, index)
    return waveform[:, index]


def fbank(
    waveform: torch.Tensor,
    sample_rate: float,
    *,
    blackman_coeff: float = 0.42,
    dither: float = 0.0,
    energy_floor: float = 1.0,
    frame_length: float = 25.0,
    frame_shift: float = 10.0,
    high_freq: float = 0.0,
    htk_compat: bool = False,
    low_freq: float = 20.0,
    min_duration: float = 0.0,
    num_mel_bins: int = 23,
    preemphasis_coefficient: float = 0.97,
    raw_energy: bool = True,
    remove_dc_offset: bool = True,
    round_to_power_of_two: bool = True,
    snip_edges: bool = True,
    subtract_mean: bool = False,
    use_energy: bool = False,
    use_log_fbank: bool = True,
    use_power: bool = True,
    vtln_high: float = -500.0,
    vtln_low: float = 100.0,
    vtln_warp: float = 1.0,
    window_type: str = "povey",
) -> torch.Tensor:
    """Kaldi filterbank features, equal to ``torchaudio.compliance.kaldi.fbank`` for the same options.

    Args:
        waveform: float tensor, ``(samples,)`` or ``(batch, samples)``; values on any scale
            (torchaudio's [-1, 1] convention is what the SSAMBA statistics assume).
        sample_rate: sampling rate in Hz (torchaudio's ``sample_frequency``).
        **options: torchaudio/Kaldi option names and defaults (frame_length/frame_shift in ms,
            ``high_freq <= 0`` means an offset from Nyquist, ``window_type`` one of
            :data:`WINDOW_TYPES`). ``dither`` draws from torch's global generator.

    Returns:
        ``(frames, num_mel_bins [+1 with use_energy])`` for 1-D input, ``(batch, frames, ...)`` for
        2-D input; zero frames when the input is shorter than one window (or ``min_duration``).

    Raises:
        TypeError for integer input (scale PCM to [-1, 1] floats first); ValueError for NaN/Inf
        samples, and for a 2-D input whose rows are shorter than one window while its first axis
        is not (a ``(samples, channels)`` array: 2-D input is always channels/clips first).
    """
    if waveform.dim() not in (1, 2):
        raise ValueError(f"waveform must be (samples,) or (batch, samples), got shape {tuple(waveform.shape)}")
    check_float_waveform(waveform)
    if window_type not in WINDOW_TYPES:
        raise ValueError(f"window_type must be one of {WINDOW_TYPES}, got {window_type!r}")
    single = waveform.dim() == 1
    wave = waveform[None] if single else waveform
    dtype, device = wave.dtype, wave.device

    window_size = int(sample_rate * frame_length / MILLISECONDS_PER_SECOND)
    window_shift = int(sample_rate * frame_shift / MILLISECONDS_PER_SECOND)
    if window_size < 2 or window_shift < 1:
        raise ValueError(f"frame_length={frame_length} ms / frame_shift={frame_shift} ms too small at {sample_rate} Hz")
    padded_size = 1 << (window_size - 1).bit_length() if round_to_power_of_two else window_size
    nyquist = 0.5 * sample_rate
    high = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if not (0.0 <= low_freq < nyquist and 0.0 < high <= nyquist and low_freq < high):
        raise ValueError(f"need 0 <= low_freq < high_freq <= Nyquist ({nyquist} Hz), got low_freq={low_freq}, high_freq={high}")
    vtln_high_abs = vtln_high + nyquist if vtln_high < 0.0 else vtln_high
    if vtln_warp != 1.0 and not (low_freq < vtln_low < vtln_high_abs < high):
        raise ValueError(f"VTLN needs low_freq < vtln_low < vtln_high < high_freq, got {vtln_low}, {vtln_high_abs}")

    if not single and wave.shape[-1] < window_size <= wave.shape[0]:
        raise ValueError(
            f"waveform of shape {tuple(waveform.shape)} is read as (batch, samples): rows of {wave.shape[-1]} samples are "
            f"shorter than one {window_size}-sample window; for a (samples, channels) array pass waveform.T (one clip per "
            "channel) or waveform.mean(-1) (mono)"
        )
    out_dim = num_mel_bins + int(use_energy)
    too_short = wave.shape[-1] < min_duration * sample_rate
    frames = _frames(wave, window_size, window_shift, snip_edges)
    if too_short or frames.shape[1] == 0:
        empty = wave.new_empty((wave.shape[0], 0, out_dim))
        return empty[0] if single else empty

    if dither != 0.0:
        frames = frames + dither * torch.randn_like(frames)
    if remove_dc_offset:
        frames = frames - frames.mean(dim=-1, keepdim=True)
    eps = torch.tensor(FLOAT32_EPS, dtype=dtype, device=device)
    if use_energy and raw_energy:
        log_energy = torch.maximum(frames.pow(2).sum(-1), eps).log()
    if preemphasis_coefficient != 0.0:
        previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = frames - preemphasis_coefficient * previous
    frames = frames * _window(window_type, window_size, blackman_coeff, dtype, device)
    if padded_size > window_size:
        frames = torch.nn.functional.pad(frames, (0, padded_size - window_size))
    if use_energy and not raw_energy:
        log_energy = torch.maximum(frames.pow(2).sum(-1), eps).log()

    complex_spectrum = torch.fft.rfft(frames)
    if use_power:  # |X|^2 as re^2 + im^2: same values as abs()^2 to rounding, 5x cheaper than hypot
        parts = torch.view_as_real(complex_spectrum)
        spectrum = parts[..., 0].square() + parts[..., 1].square()
    else:
        spectrum = complex_spectrum.abs()
    banks = _mel_banks(
        num_mel_bins, padded_size, float(sample_rate), float(low_freq), float(high),
        float(vtln_low), float(vtln_high_abs), float(vtln_warp),
    ).to(device=device, dtype=dtype)
    features = torch.matmul(spectrum, banks.T)
    if use_log_fbank:
        features = torch.maximum(features, eps).log()

    if use_energy:
        if energy_floor > 0.0:
            log_energy = torch.clamp_min(log_energy, math.log(energy_floor))
        parts = (features, log_energy[..., None]) if htk_compat else (log_energy[..., None], features)
        features = torch.cat(parts, dim=-1)
    if subtract_mean:
        features = features - features.mean(dim=1, keepdim=True)
    return features[0] if single else features


def check_float_waveform(waveform: torch.Tensor) -> None:
    """Refuse integer dtypes (unscaled PCM) and NaN/Inf samples with a clear message."""
    if not waveform.is_floating_point():
        hint = " (divide int16 PCM by 32768: waveform.float() / 32768)" if waveform.dtype == torch.int16 else ""
        raise TypeError(f"waveform must be a float tensor scaled to [-1, 1], got {waveform.dtype}{hint}")
    if torch.isfinite(waveform.sum()):  # one cheap reduction; the exact count only when it fails
        return
    bad = int((~torch.isfinite(waveform)).sum())
    if bad:
        raise ValueError(f"waveform has {bad} NaN or infinite samples of {waveform.numel()}")


def normalize(features: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """SSAST/SSAMBA normalisation ``(x - mean) / (2 * std)`` with dataset statistics."""
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    return (features - mean) / (2.0 * std)


CropMode = Literal["start", "random"]


def pad_or_crop(
    features: torch.Tensor, target_length: int, crop: CropMode = "start", generator: torch.Generator | None = None
) -> torch.Tensor:
    """Zero-pad at the end or cut ``(frames, bins)`` to ``target_length`` frames.

    ``crop="start"`` keeps the first frames (SSAMBA's behaviour); ``"random"`` keeps a window at a
    uniformly drawn offset (better for long utterances). Padding happens before normalisation, so
    padded frames become ``-mean / (2 * std)`` afterwards, as in the original.
    """
    num_frames = features.shape[0]
    if num_frames < target_length:
        return torch.nn.functional.pad(features, (0, 0, 0, target_length - num_frames))
    offset = _crop_offset(num_frames, target_length, crop, generator)
    return features[offset : offset + target_length]


def _crop_offset(num_frames: int, target_length: int, crop: CropMode, generator: torch.Generator | None) -> int:
    if crop not in ("start", "random"):
        raise ValueError(f"crop must be 'start' or 'random', got {crop!r}")
    if crop == "start" or num_frames <= target_length:
        return 0
    return int(torch.randint(num_frames - target_length + 1, (1,), generator=generator))


@dataclass(frozen=True)
class FeatureConfig:
    """How a waveform becomes the model input: SSAMBA fbank -> pad/crop -> normalise.

    ``FeatureConfig()`` is the pretraining recipe (AudioSet + LibriSpeech statistics, 1024 frames);
    :meth:`preset` gives the fine-tuning ones. ``fbank_options`` overrides/extends
    :data:`SSAMBA_FBANK_OPTIONS` (e.g. ``{"window_type": "povey"}``).
    """

    sample_rate: int = SSAMBA_SAMPLE_RATE
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    target_length: int = PRETRAIN_TARGET_LENGTH
    mean: float = NORM_PRESETS["audioset_librispeech"].mean
    std: float = NORM_PRESETS["audioset_librispeech"].std
    crop: CropMode = "start"
    fbank_options: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.crop not in ("start", "random"):
            raise ValueError(f"FeatureConfig.crop must be 'start' or 'random', got {self.crop!r}")
        if self.target_length < 1:
            raise ValueError(f"FeatureConfig.target_length must be >= 1, got {self.target_length}")
        if self.std <= 0:
            raise ValueError(f"FeatureConfig.std must be positive, got {self.std}")
        if not self.fbank_options.get("snip_edges", True):
            raise ValueError("FeatureConfig needs snip_edges=True: waveform cropping relies on Kaldi's snipped framing")

    @classmethod
    def preset(cls, name: str, **overrides: object) -> FeatureConfig:
        """Recipe by dataset: 'pretrain', 'audioset', 'esc50', 'speechcommands', 'urban8k'."""
        if name not in FEATURE_PRESETS:
            raise ValueError(f"unknown feature preset {name!r}; choose from {sorted(FEATURE_PRESETS)}")
        return replace(FEATURE_PRESETS[name], **overrides)

    def to_dict(self) -> dict[str, object]:
        """Plain-dict form (for configs, checkpoints and shard indexes)."""
        return asdict(self)

    @property
    def kaldi_options(self) -> dict[str, object]:
        """The keyword arguments passed to :func:`fbank` (besides the sample rate)."""
        return {
            **SSAMBA_FBANK_OPTIONS,
            "num_mel_bins": self.num_mel_bins,
            "frame_shift": self.frame_shift_ms,
            "frame_length": self.frame_length_ms,
            **self.fbank_options,
        }

    @property
    def frame_shift_samples(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms / MILLISECONDS_PER_SECOND)

    @property
    def frame_length_samples(self) -> int:
        return int(self.sample_rate * self.frame_length_ms / MILLISECONDS_PER_SECOND)

    def num_frames(self, num_samples: int) -> int:
        """Frames Kaldi's snipped framing cuts from ``num_samples`` samples (0 below one frame)."""
        size = self.frame_length_samples
        return 0 if num_samples < size else 1 + (num_samples - size) // self.frame_shift_samples

    def raw_fbank(self, waveform: torch.Tensor) -> torch.Tensor:
        """Mean-removed waveform -> un-normalised, uncropped log-mel ``(frames, bins)`` (or batched)."""
        check_float_waveform(waveform)
        wave = waveform - waveform.mean(dim=-1, keepdim=True)
        return fbank(wave, self.sample_rate, **self.kaldi_options)

    def crop_waveform(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cut a 1-D waveform to the samples the kept ``target_length`` frames need.

        Equivalent to computing fbank on the whole clip and then cropping (with ``snip_edges``),
        but much cheaper for long utterances. The mean is removed over the whole clip first.
        """
        check_float_waveform(waveform)
        wave = waveform - waveform.mean()
        shift, size = self.frame_shift_samples, self.frame_length_samples
        if wave.shape[0] < size:
            return wave
        num_frames = self.num_frames(wave.shape[0])
        offset = _crop_offset(num_frames, self.target_length, self.crop, generator)
        needed = (min(num_frames, self.target_length) - 1) * shift + size
        return wave[offset * shift : offset * shift + needed]

    def features(self, waveform: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """1-D float waveform in [-1, 1] -> normalised ``(target_length, num_mel_bins)`` model input (float32).

        Integer dtypes and NaN/Inf samples are refused, as by :func:`fbank`."""
        if waveform.dim() != 1:
            raise ValueError(f"FeatureConfig.features expects a 1-D waveform, got shape {tuple(waveform.shape)}")
        check_float_waveform(waveform)
        raw = self.raw_fbank(self.crop_waveform(waveform.float(), generator))
        return normalize(pad_or_crop(raw, self.target_length, "start"), self.mean, self.std)

    def finish(self, raw: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Un-normalised ``(frames, bins)`` (e.g. precomputed) -> normalised ``(target_length, bins)``."""
        return normalize(pad_or_crop(raw.float(), self.target_length, self.crop, generator), self.mean, self.std)


FEATURE_PRESETS: dict[str, FeatureConfig] = {
    "pretrain": FeatureConfig(),
    "audioset": FeatureConfig(),
    "esc50": FeatureConfig(target_length=512, mean=NORM_PRESETS["esc50"].mean, std=NORM_PRESETS["esc50"].std),
    "speechcommands": FeatureConfig(
        target_length=128, mean=NORM_PRESETS["speechcommands"].mean, std=NORM_PRESETS["speechcommands"].std
    ),
    "urban8k": FeatureConfig(target_length=6144, mean=NORM_PRESETS["urban8k"].mean, std=NORM_PRESETS["urban8k"].std),
}
