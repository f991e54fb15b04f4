"""Audio decoding: soundfile (WAV/FLAC/OGG/MP3) + soxr resampling to mono float32.

``load_audio(path)`` returns a 1-D float32 tensor at the requested rate (16 kHz by default),
downmixed to mono by averaging channels. The waveform mean is *not* removed here: SSAMBA removes
it right before the fbank, which :class:`ssamba.audio.fbank.FeatureConfig` does.

Formats libsndfile cannot read (m4a/AAC/MP4/WebM from AudioSet downloads) fall back to PyAV when
it is installed (``pip install 'ssamba[decode]'``); this path is meant for shard writing, where
everything is transcoded to 16 kHz FLAC once.
"""

from __future__ import annotations

import io
import math
import os
import stat
from pathlib import Path

import numpy as np
import soundfile
import soxr
import torch

DEFAULT_SAMPLE_RATE = 16000
# Extensions libsndfile (>= 1.1) decodes; anything else needs the optional decoder.
SOUNDFILE_EXTENSIONS = frozenset({".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"})
# Extensions we look for when scanning folders (soundfile formats + those PyAV handles).
AUDIO_EXTENSIONS = SOUNDFILE_EXTENSIONS | frozenset({".m4a", ".aac", ".mp4", ".webm", ".mka", ".wma"})
DECODE_EXTRA = "pip install 'ssamba[decode]'"
RESAMPLE_QUALITY = "HQ"
# Sample rates a header may claim (Hz); anything else is a damaged or mislabelled file.
MIN_SAMPLE_RATE = 1000
MAX_SAMPLE_RATE = 768_000
# Float audio is expected in [-1, 1]; peaks above this (+6 dBFS) mean unscaled samples, not clipping.
MAX_PEAK = 2.0


class AudioDecodeError(ValueError):
    """A file or byte string could not be used; the message names it and the cause.

    ``reason`` is a short category (the shard writer's reject reasons): ``unreadable``, ``missing``,
    ``empty``, ``bad_sample_rate``, ``non_finite`` or ``too_loud``.
    """

    def __init__(self, message: str, reason: str = "unreadable") -> None:
        super().__init__(message)
        self.reason = reason


def check_sample_rate(rate: int, name: str) -> None:
    """Refuse a sample rate outside ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]`` (e.g. a damaged header)."""
    if not MIN_SAMPLE_RATE <= rate <= MAX_SAMPLE_RATE:
        raise AudioDecodeError(
            f"{name}: implausible sample rate {rate} Hz in the header (accepted: {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE} Hz)",
            "bad_sample_rate",
        )


def check_samples(audio: np.ndarray, name: str, max_peak: float | None = MAX_PEAK) -> float:
    """Refuse NaN/Inf samples and peaks above ``max_peak`` (None: any peak); returns the peak ``max |x|``."""
    peak = float(np.abs(audio).max()) if audio.size else 0.0
    if not math.isfinite(peak):
        bad = int((~np.isfinite(audio)).sum())
        raise AudioDecodeError(f"{name}: {bad} of {audio.size} samples are NaN or infinite", "non_finite")
    if max_peak is not None and peak > max_peak:
        raise AudioDecodeError(
            f"{name}: peak amplitude {peak:.4g} is above {max_peak:g}; float audio must be scaled to [-1, 1] "
            "(integer PCM stored as float? divide by 32768)",
            "too_loud",
        )
    return peak


def check_regular_file(path: str) -> None:
    """Refuse missing paths (dangling symlinks included), non-regular files (FIFOs would block) and 0-byte files."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        detail = "dangling symlink" if os.path.islink(path) else "file not found"
        raise AudioDecodeError(f"{path}: {detail}", "missing") from None
    except OSError as exc:
        raise AudioDecodeError(f"{path}: cannot access: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise AudioDecodeError(f"{path}: not a regular file (a FIFO, socket or device)")
    if info.st_size == 0:
        raise AudioDecodeError(f"{path}: file has 0 bytes", "empty")


def to_mono(audio: np.ndarray) -> np.ndarray:
    """(samples, channels) or (samples,) -> (samples,) float32 by averaging channels."""
    if audio.ndim == 2:
        audio = audio.mean(axis=1) if audio.shape[1] > 1 else audio[:, 0]
    return np.ascontiguousarray(audio, dtype=np.float32)


def resample(audio: np.ndarray, orig_rate: int, target_rate: int) -> np.ndarray:
    """Resample a 1-D float32 array with soxr (high quality); identity when rates match."""
    if orig_rate == target_rate or audio.size == 0:
        return audio
    return soxr.resample(audio, orig_rate, target_rate, quality=RESAMPLE_QUALITY).astype(np.float32, copy=False)


def _read_soundfile(source: str | io.BytesIO) -> tuple[np.ndarray, int]:
    # A bytes path: soundfile cannot encode file names that are not valid UTF-8 itself.
    audio, rate = soundfile.read(os.fsencode(source) if isinstance(source, str) else source, dtype="float32", always_2d=True)
    return audio, rate


def _read_pyav(path: str) -> tuple[np.ndarray, int]:
    try:
        import av
    except ImportError as exc:
        raise ImportError("PyAV is not installed") from exc
    chunks: list[np.ndarray] = []
    with av.open(path) as container:
        if not container.streams.audio:
            raise AudioDecodeError(f"{path}: no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        # Convert every decoded frame to packed float32 with the stream's own layout and rate.
        converter = av.AudioResampler(format="flt", layout=stream.codec_context.layout, rate=rate)
        channels = len(stream.codec_context.layout.channels)
        for frame in container.decode(stream):
            for converted in converter.resample(frame):
                chunks.append(converted.to_ndarray().reshape(-1, channels))
        for converted in converter.resample(None):
            chunks.append(converted.to_ndarray().reshape(-1, channels))
    audio = np.concatenate(chunks) if chunks else np.zeros((0, channels), np.float32)
    return audio, rate


def decode_file(path: str | os.PathLike[str], max_peak: float | None = MAX_PEAK) -> tuple[np.ndarray, int, int]:
    """Decode a file to ``(mono float32 samples, sample_rate, original_channels)``.

    soundfile first; for other formats PyAV (optional extra). Raises :class:`AudioDecodeError`
    naming the file (and the extra when the format needs PyAV and it is missing) for a missing,
    non-regular or 0-byte file, undecodable data, a sample rate outside
    ``[MIN_SAMPLE_RATE, MAX_SAMPLE_RATE]``, NaN/Inf samples or a peak above ``max_peak`` (None: no
    limit, for trusted sources whose lossy decode overshoots full scale).
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    check_regular_file(path)
    try:
        audio, rate = _read_soundfile(path)
    except Exception as sf_error:  # libsndfile raises LibsndfileError/RuntimeError/TypeError
        try:
            audio, rate = _read_pyav(path)
        except ImportError:
            if suffix in SOUNDFILE_EXTENSIONS:
                raise AudioDecodeError(f"{path}: cannot decode: {sf_error}") from sf_error
            raise AudioDecodeError(
                f"{path}: soundfile cannot read '{suffix or 'this'}' files and PyAV is not installed; "
                f"install the decoder extra: {DECODE_EXTRA}"
            ) from sf_error
        except AudioDecodeError:
            raise
        except Exception as av_error:
            raise AudioDecodeError(f"{path}: cannot decode (soundfile: {sf_error}; PyAV: {av_error})") from av_error
    check_sample_rate(rate, path)
    mono = to_mono(audio)
    check_samples(mono, path, max_peak)
    return mono, rate, audio.shape[1]


def load_audio(path: str | os.PathLike[str], sample_rate: int = DEFAULT_SAMPLE_RATE) -> torch.Tensor:
    """Decode ``path`` to a mono float32 tensor ``(samples,)`` at ``sample_rate`` Hz (checked as :func:`decode_file`)."""
    audio, rate, _ = decode_file(path)
    return torch.from_numpy(resample(audio, rate, sample_rate))


def decode_bytes(data: bytes, sample_rate: int = DEFAULT_SAMPLE_RATE, name: str = "<bytes>") -> torch.Tensor:
    """Decode an in-memory soundfile-readable file (e.g. a FLAC shard member) to mono float32."""
    try:
        audio, rate = _read_soundfile(io.BytesIO(data))
    except Exception as exc:
        raise AudioDecodeError(f"{name}: cannot decode {len(data)} bytes: {exc}") from exc
    check_sample_rate(rate, name)
    mono = to_mono(audio)
    check_samples(mono, name)
    return torch.from_numpy(resample(mono, rate, sample_rate))


def encode_flac(waveform: np.ndarray, sample_rate: int) -> bytes:
    """Encode mono float samples as 16-bit FLAC bytes (values are clipped to [-1, 1])."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(waveform, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
