"""Kaldi fbank parity (golden torchaudio values + an independent float64 reference) and features."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ssamba
from ssamba.audio.fbank import (
    FEATURE_PRESETS,
    NORM_PRESETS,
    SSAMBA_FBANK_OPTIONS,
    FeatureConfig,
    fbank,
    normalize,
    pad_or_crop,
)

GOLDEN_DIR = Path(__file__).parent / "data" / "kaldi_fbank"
GOLDEN = np.load(GOLDEN_DIR / "kaldi_fbank_golden.npz")
GOLDEN_CONFIGS = json.loads((GOLDEN_DIR / "kaldi_fbank_golden.json").read_text())["configs"]
WAVE_NAMES = sorted(key.removeprefix("wave__") for key in GOLDEN.files if key.startswith("wave__"))
LOG_EPS = math.log(np.finfo(np.float32).eps)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _golden_options(config: str) -> tuple[int, dict[str, object]]:
    options = dict(GOLDEN_CONFIGS[config])
    return int(options.pop("sample_frequency")), options


# How close a float32 fbank must be to torchaudio's, argued from float32 rounding (not tuned on one
# CPU). Each step before the log (DC removal, pre-emphasis, window, an FFT of size N, |X|^2, the mel
# weights) is normwise accurate: the error of the float32 FFT is bounded by c * eps * log2(N) times
# the norm of the whole frame (FFT libraries reach c ~ 1; the vectorised kernels of different CPUs
# round differently within it). So a mel bin's power P_b carries an absolute error of order
# eps * (log2(N) + few) * E, where E = sum_k |X_k|^2 is the frame's total power -- however small
# P_b itself is. Both sides (torchaudio's golden values and ours) carry such an error, squaring
# |X| doubles it. The bound, per frame: |P_ours - P_golden| <= POWER_TOLERANCE(N) * E + eps, where
# eps is the floor (Kaldi clamps P at eps before the log; a value within one eps of it is the floor).
# In the log domain this allows a large difference for a bin whose power is tiny next to its frame's
# (a quiet band, frames next to digital silence, where values sit at the -15.94 floor): those bins
# are ill-conditioned, not wrong. Bins at least WELL_CONDITIONED times above that noise level must
# also match in the log domain to LOG_TOLERANCE, which is what a log error of 1/WELL_CONDITIONED
# relative power allows.
WELL_CONDITIONED = 1000.0
LOG_TOLERANCE = 1.0 / WELL_CONDITIONED
FLOAT32_EPS = float(np.finfo(np.float32).eps)


def power_tolerance(nfft: int) -> float:
    """Relative (to the frame's power) error allowed per mel bin: 2 sides x 2 (|X|^2) x (log2 N + 4) eps."""
    return 4 * (math.log2(nfft) + 4) * FLOAT32_EPS


def frame_power(wave: np.ndarray, rate: int, options: dict[str, object]) -> tuple[np.ndarray, int]:
    """float64 total power sum_k |X_k|^2 of each (snipped) frame after DC removal, pre-emphasis and the
    window, and the FFT size; the scale of the float32 rounding error of every mel bin of that frame."""
    size = int(rate * 25.0 / 1000)
    shift = int(rate * float(options.get("frame_shift", 10.0)) / 1000)
    nfft = 2 ** math.ceil(math.log2(size))
    starts = np.arange(1 + (len(wave) - size) // shift) * shift if len(wave) >= size else np.zeros(0, dtype=int)
    frames = wave[starts[:, None] + np.arange(size)].astype(np.float64)
    frames = frames - frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / (size - 1))
    window = {"hanning": hann, "povey": hann**0.85}[str(options.get("window_type", "povey"))]
    return (np.abs(np.fft.rfft(frames * window, nfft, axis=1)) ** 2).sum(axis=1), nfft


def assert_log_mel_close(out: np.ndarray, expected: np.ndarray, power: np.ndarray, nfft: int) -> None:
    """The comparison argued above: power domain everywhere, log domain on well-conditioned bins."""
    noise = power_tolerance(nfft) * power[:, None] + FLOAT32_EPS
    power_error = np.abs(np.exp(out.astype(np.float64)) - np.exp(expected.astype(np.float64)))
    worst = np.unravel_index(np.argmax(power_error / noise), out.shape)
    assert np.all(power_error <= noise), f"frame {worst[0]}, bin {worst[1]}: power error {power_error[worst]:.3g} > {noise[worst]:.3g}"
    well_conditioned = np.exp(expected.astype(np.float64)) >= WELL_CONDITIONED * noise
    audible = power >= 1.0  # its loudest bin is then far above the noise level: the strict check is not vacuous
    assert audible.any() and well_conditioned[audible].any(axis=1).all()
    assert np.abs(out - expected)[well_conditioned].max() <= LOG_TOLERANCE


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("config", sorted(GOLDEN_CONFIGS))
@pytest.mark.parametrize("name", WAVE_NAMES)
def test_matches_torchaudio_golden_values(config: str, name: str, dtype: torch.dtype) -> None:
    """float64 input rounds differently from torchaudio's float32, as another CPU's FFT does: the same
    bound must hold for it (near digital silence its log values differ by 1e-2 from the golden ones)."""
    rate, options = _golden_options(config)
    expected = GOLDEN[f"fbank__{config}__{name}"]
    wave = GOLDEN[f"wave__{name}"]
    out = fbank(torch.from_numpy(wave).to(dtype), rate, **options)
    assert out.dtype == dtype
    assert tuple(out.shape) == expected.shape
    assert_log_mel_close(out.numpy(), expected, *frame_power(wave, rate, options))


def test_ssamba_constants_are_the_golden_config() -> None:
    rate, options = _golden_options("ssamba128")
    assert rate == 16000
    assert {k: v for k, v in SSAMBA_FBANK_OPTIONS.items()} == {**options, "frame_shift": 10.0}


def test_empty_mel_bin_is_log_eps_like_torchaudio() -> None:
    out = fbank(torch.from_numpy(GOLDEN["wave__noise_1s"]), 16000, **SSAMBA_FBANK_OPTIONS)
    assert torch.all(out[:, 3] == torch.tensor(LOG_EPS, dtype=torch.float32))
    assert out[:, 2].std() > 0.1 and out[:, 4].std() > 0.1


def test_batched_equals_single() -> None:
    wave = torch.from_numpy(GOLDEN["wave__mixed_10p24s"])
    batch = torch.stack([wave[:48000], wave[48000:96000], wave[-48000:]])
    out = fbank(batch, 16000, **SSAMBA_FBANK_OPTIONS)
    assert out.shape == (3, 298, 128)
    for i in range(3):  # a batched FFT may round differently from a single one: same bound as above
        single = fbank(batch[i], 16000, **SSAMBA_FBANK_OPTIONS)
        assert_log_mel_close(out[i].numpy(), single.numpy(), *frame_power(batch[i].numpy(), 16000, SSAMBA_FBANK_OPTIONS))


def test_shorter_than_one_window_gives_zero_frames() -> None:
    assert fbank(torch.zeros(399), 16000, num_mel_bins=40).shape == (0, 40)
    assert fbank(torch.zeros(2, 399), 16000, num_mel_bins=40, use_energy=True).shape == (2, 0, 41)
    assert fbank(torch.zeros(1600), 16000, min_duration=0.2).shape == (0, 23)


def test_num_frames_counts_the_frames_raw_fbank_cuts() -> None:
    config = FeatureConfig(num_mel_bins=32)
    for samples in (0, 399, 400, 401, 559, 560, 6400, 16001):
        assert config.num_frames(samples) == config.raw_fbank(torch.rand(samples) - 0.5).shape[0], samples


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"float tensor scaled to \[-1, 1\], got torch.int16 \(divide int16 PCM by 32768"):
        fbank(torch.zeros(1000, dtype=torch.int16), 16000)
    with pytest.raises(ValueError, match=r"read as \(batch, samples\): rows of 2 samples are shorter than one 400-sample window"):
        fbank(torch.zeros(16000, 2), 16000)  # (samples, channels): used to give an empty result
    assert fbank(torch.zeros(2, 16000), 16000).shape == (2, 98, 23)  # channels first is the rule
    wave = torch.zeros(1000)
    wave[7] = float("nan")
    with pytest.raises(ValueError, match="waveform has 1 NaN or infinite samples of 1000"):
        fbank(wave, 16000)
    with pytest.raises(ValueError, match=r"\(samples,\) or \(batch, samples\)"):
        fbank(torch.zeros(1, 1, 1000), 16000)
    with pytest.raises(ValueError, match="window_type must be one of"):
        fbank(torch.zeros(1000), 16000, window_type="hann")
    with pytest.raises(ValueError, match="low_freq"):
        fbank(torch.zeros(1000), 16000, low_freq=9000.0)
    with pytest.raises(TypeError):
        fbank(torch.zeros(1000), 16000, sample_frequency=16000)


# --- independent float64 reference: a per-frame loop written straight from Kaldi's description ---


def _ref_mel(f: float) -> float:
    return 1127.0 * math.log(1.0 + f / 700.0)


def _ref_warp(f: float, lo: float, hi: float, low: float, high: float, alpha: float) -> float:
    if f < low or f > high:
        return f
    l, h = lo * max(1.0, alpha), hi * min(1.0, alpha)
    if f < l:
        return low + (l / alpha - low) / (l - low) * (f - low)
    if f < h:
        return f / alpha
    return high + (high - h / alpha) / (high - h) * (f - high)


def _reference_fbank(wave: np.ndarray, rate: int, o: dict[str, object]) -> np.ndarray:
    size = int(rate * o.get("frame_length", 25.0) / 1000)
    shift = int(rate * o.get("frame_shift", 10.0) / 1000)
    nfft = 2 ** math.ceil(math.log2(size)) if o.get("round_to_power_of_two", True) else size
    n = len(wave)
    if o.get("snip_edges", True):
        starts = [i * shift for i in range(1 + (n - size) // shift)] if n >= size else []
    else:
        starts = [i * shift + shift // 2 - size // 2 for i in range((n + shift // 2) // shift)]
    t = np.arange(size)
    window = {
        "hanning": 0.5 - 0.5 * np.cos(2 * np.pi * t / (size - 1)),
        "hamming": 0.54 - 0.46 * np.cos(2 * np.pi * t / (size - 1)),
        "povey": (0.5 - 0.5 * np.cos(2 * np.pi * t / (size - 1))) ** 0.85,
        "rectangular": np.ones(size),
        "blackman": 0.42 - 0.5 * np.cos(2 * np.pi * t / (size - 1)) + 0.08 * np.cos(4 * np.pi * t / (size - 1)),
    }[str(o.get("window_type", "povey"))]
    bins = int(o.get("num_mel_bins", 23))
    low, high = float(o.get("low_freq", 20.0)), float(o.get("high_freq", 0.0))
    high = high if high > 0 else rate / 2 + high
    vlo, vhi, alpha = float(o.get("vtln_low", 100.0)), float(o.get("vtln_high", -500.0)), float(o.get("vtln_warp", 1.0))
    vhi = vhi if vhi > 0 else rate / 2 + vhi
    mlo, mhi = _ref_mel(low), _ref_mel(high)
    delta = (mhi - mlo) / (bins + 1)
    banks = np.zeros((bins, nfft // 2 + 1))
    for b in range(bins):
        edges = [mlo + (b + k) * delta for k in range(3)]
        if alpha != 1.0:
            edges = [_ref_mel(_ref_warp(700 * (math.exp(m / 1127) - 1), vlo, vhi, low, high, alpha)) for m in edges]
        left, center, right = edges
        for k in range(nfft // 2):
            m = _ref_mel(k * rate / nfft)
            if left < m < right:
                banks[b, k] = (m - left) / (center - left) if m <= center else (right - m) / (right - center)
    eps = np.finfo(np.float32).eps
    rows = []
    for start in starts:
        idx = np.arange(start, start + size)
        while np.any((idx < 0) | (idx >= n)):
            idx = np.where(idx < 0, -idx - 1, idx)
            idx = np.where(idx >= n, 2 * n - 1 - idx, idx)
        frame = wave[idx].astype(np.float64)
        if o.get("remove_dc_offset", True):
            frame = frame - frame.mean()
        energy = max(np.sum(frame**2), eps)
        coeff = float(o.get("preemphasis_coefficient", 0.97))
        frame = frame - coeff * np.concatenate([frame[:1], frame[:-1]])
        frame = frame * window
        if not o.get("raw_energy", True):
            energy = max(np.sum(frame**2), eps)
        spec = np.abs(np.fft.rfft(frame, nfft))
        if o.get("use_power", True):
            spec = spec**2
        mel = banks @ spec
        if o.get("use_log_fbank", True):
            mel = np.log(np.maximum(mel, eps))
        if o.get("use_energy", False):
            log_e = max(math.log(energy), math.log(o.get("energy_floor", 1.0))) if o.get("energy_floor", 1.0) > 0 else math.log(energy)
            mel = np.append(mel, log_e) if o.get("htk_compat", False) else np.insert(mel, 0, log_e)
        rows.append(mel)
    out = np.array(rows).reshape(len(rows), bins + int(bool(o.get("use_energy", False))))
    if o.get("subtract_mean", False):
        out = out - out.mean(axis=0, keepdims=True)
    return out


REFERENCE_CASES = [
    {},
    dict(SSAMBA_FBANK_OPTIONS),
    {"snip_edges": False, "num_mel_bins": 40},
    {"use_energy": True, "htk_compat": True, "window_type": "hamming"},
    {"use_energy": True, "raw_energy": False, "energy_floor": 0.0, "window_type": "blackman"},
    {"subtract_mean": True, "window_type": "rectangular", "remove_dc_offset": False, "preemphasis_coefficient": 0.0},
    {"use_power": False, "use_log_fbank": False, "low_freq": 100.0, "high_freq": -400.0, "num_mel_bins": 30},
    {"round_to_power_of_two": False, "frame_length": 20.0, "frame_shift": 7.5},
    {"vtln_warp": 0.9, "num_mel_bins": 40},
    {"vtln_warp": 1.1, "num_mel_bins": 40, "vtln_high": 7000.0},
]


@pytest.mark.parametrize("options", REFERENCE_CASES, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_matches_independent_float64_reference(options: dict[str, object]) -> None:
    wave = GOLDEN["wave__espeak_speech"][:8000].astype(np.float64)
    expected = _reference_fbank(wave, 16000, options)
    out = fbank(torch.from_numpy(wave), 16000, **options).numpy()
    assert out.shape == expected.shape
    scale = np.abs(expected).max() if not options.get("use_log_fbank", True) else 1.0
    # Our mel weights are rounded to float32 (like Kaldi/torchaudio); the reference keeps float64.
    assert np.abs(out - expected).max() / scale <= 2e-4


def test_vtln_warp_moves_energy() -> None:
    wave = torch.from_numpy(GOLDEN["wave__espeak_speech"][:8000])
    plain = fbank(wave, 16000, num_mel_bins=40)
    assert not torch.allclose(plain, fbank(wave, 16000, num_mel_bins=40, vtln_warp=0.9))
    torch.testing.assert_close(plain, fbank(wave, 16000, num_mel_bins=40, vtln_warp=1.0))


def test_float64_input_stays_float64() -> None:
    out = fbank(torch.from_numpy(GOLDEN["wave__noise_1s"]).double(), 16000, **SSAMBA_FBANK_OPTIONS)
    assert out.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_cuda() -> None:
    wave = torch.from_numpy(GOLDEN["wave__mixed_10p24s"])
    expected = GOLDEN["fbank__ssamba128__mixed_10p24s"]
    out = fbank(wave.cuda(), 16000, **SSAMBA_FBANK_OPTIONS).cpu().numpy()
    assert_log_mel_close(out, expected, *frame_power(wave.numpy(), 16000, SSAMBA_FBANK_OPTIONS))


# --- normalisation, length and the feature config ---


def test_normalize_and_presets() -> None:
    stats = NORM_PRESETS["audioset_librispeech"]
    assert (stats.mean, stats.std) == (-4.2677393, 4.5689974)
    assert (NORM_PRESETS["esc50"].mean, NORM_PRESETS["esc50"].std) == (-6.6268077, 5.358466)
    assert (NORM_PRESETS["speechcommands"].mean, NORM_PRESETS["speechcommands"].std) == (-6.845978, 5.5654526)
    x = torch.tensor([[0.0, -4.2677393, 4.8702555]])
    torch.testing.assert_close(normalize(x, stats.mean, stats.std), torch.tensor([[4.2677393 / 9.1379948, 0.0, 1.0]]))
    assert ssamba.normalize is normalize and ssamba.fbank is fbank
    with pytest.raises(ValueError, match="std must be positive"):
        normalize(x, 0.0, 0.0)


def test_pad_or_crop() -> None:
    x = torch.arange(10.0)[:, None].repeat(1, 3)
    padded = pad_or_crop(x, 14)
    assert padded.shape == (14, 3) and torch.all(padded[10:] == 0) and torch.equal(padded[:10], x)
    assert torch.equal(pad_or_crop(x, 4), x[:4])
    offsets = {int(pad_or_crop(x, 4, "random", torch.Generator().manual_seed(s))[0, 0]) for s in range(40)}
    assert offsets == set(range(7))
    with pytest.raises(ValueError, match="crop must be 'start' or 'random'"):
        pad_or_crop(x, 4, "middle")


def test_feature_config_refuses_what_fbank_refuses() -> None:
    config = FeatureConfig(target_length=64)
    pcm = (torch.sin(torch.arange(16000) * 0.05) * 12000).to(torch.int16)
    with pytest.raises(TypeError, match="got torch.int16 \\(divide int16 PCM by 32768"):
        config.features(pcm)  # used to run on the unscaled values
    torch.testing.assert_close(config.features(pcm.float() / 32768), config.features(pcm.double() / 32768), rtol=0, atol=1e-5)
    wave = torch.zeros(16000)
    wave[-1] = float("inf")  # past the kept frames: still refused
    with pytest.raises(ValueError, match="NaN or infinite samples"):
        config.features(wave)
    with pytest.raises(ValueError, match="NaN or infinite samples"):
        config.raw_fbank(wave)


def test_feature_config_pretraining_input() -> None:
    config = FeatureConfig()
    wave = GOLDEN["wave__espeak_speech"]  # 7.46 s -> 744 frames, padded to 1024
    out = config.features(torch.from_numpy(wave))
    assert out.shape == (1024, 128) and out.dtype == torch.float32
    raw = out[:744].double().numpy() * 2 * config.std + config.mean
    assert_log_mel_close(raw, GOLDEN["fbank__ssamba128__espeak_speech"], *frame_power(wave, 16000, SSAMBA_FBANK_OPTIONS))
    # A DC offset must not matter (mean removal). On white noise every bin is well conditioned, so
    # the float32 rounding of wave + 0.25 (eps/8 per sample, against an RMS of ~0.3) stays far below
    # LOG_TOLERANCE in the log domain, i.e. LOG_TOLERANCE / (2 std) after normalisation.
    noise = torch.from_numpy(GOLDEN["wave__noise_1s"])
    shifted = config.features(noise + 0.25) - config.features(noise)
    assert shifted.abs().max() <= LOG_TOLERANCE / (2 * config.std)
    pad_value = -config.mean / (2 * config.std)
    assert torch.allclose(out[744:], torch.full((280, 128), pad_value))
    assert config.kaldi_options == {**SSAMBA_FBANK_OPTIONS, "frame_length": 25.0}


def test_random_crop_of_waveform_equals_cropping_the_full_fbank() -> None:
    config = FeatureConfig(target_length=200, crop="random")
    wave = torch.from_numpy(GOLDEN["wave__mixed_10p24s"])
    full = config.raw_fbank(wave)
    for seed in range(3):
        fast = config.features(wave, torch.Generator().manual_seed(seed))
        slow = config.finish(full, torch.Generator().manual_seed(seed))
        assert (fast - slow).abs().max() <= 1e-3
    starts = {float(config.features(wave, torch.Generator().manual_seed(s))[0, 0]) for s in range(5)}
    assert len(starts) > 1


def test_feature_presets() -> None:
    assert FeatureConfig.preset("esc50").target_length == 512
    assert FeatureConfig.preset("speechcommands", crop="random").crop == "random"
    assert FEATURE_PRESETS["pretrain"] == FeatureConfig()
    with pytest.raises(ValueError, match="unknown feature preset"):
        FeatureConfig.preset("nope")
    with pytest.raises(ValueError, match="crop must be"):
        FeatureConfig(crop="middle")
    with pytest.raises(ValueError, match="FeatureConfig needs snip_edges=True"):
        FeatureConfig(fbank_options={"snip_edges": False})
    povey = FeatureConfig(fbank_options={"window_type": "povey"})
    assert povey.kaldi_options["window_type"] == "povey" and povey.features(torch.zeros(16000)).shape == (1024, 128)
