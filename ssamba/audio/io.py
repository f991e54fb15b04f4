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
import os
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


class AudioDecodeError(ValueError):
    """A file or byte string could not be decoded; the message names it and the cause."""


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
    audio, rate = soundfile.read(source, dtype="float32", always_2d=True)
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


def decode_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, int, int]:
    """Decode a file to ``(mono float32 samples, sample_rate, original_channels)``.

    soundfile first; for other formats PyAV (optional extra). Raises :class:`AudioDecodeError`
    naming the file, and naming the extra when the format needs PyAV and it is missing.
    """
    path = os.fspath(path)
    suffix = Path(path).suffix.lower()
    try:
        audio, rate = _read_soundfile(path)
    except Exception as sf_error:  # libsndfile raises LibsndfileError/RuntimeError/TypeError
        if not os.path.exists(path):
            raise AudioDecodeError(f"{path}: file not found") from sf_error
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
    return to_mono(audio), rate, audio.shape[1]


def load_audio(path: str | os.PathLike[str], sample_rate: int = DEFAULT_SAMPLE_RATE) -> torch.Tensor:
    """Decode ``path`` to a mono float32 tensor ``(samples,)`` at ``sample_rate`` Hz."""
    audio, rate, _ = decode_file(path)
    return torch.from_numpy(resample(audio, rate, sample_rate))


def decode_bytes(data: bytes, sample_rate: int = DEFAULT_SAMPLE_RATE, name: str = "<bytes>") -> torch.Tensor:
    """Decode an in-memory soundfile-readable file (e.g. a FLAC shard member) to mono float32."""
    try:
        audio, rate = _read_soundfile(io.BytesIO(data))
    except Exception as exc:
        raise AudioDecodeError(f"{name}: cannot decode {len(data)} bytes: {exc}") from exc
    return torch.from_numpy(resample(to_mono(audio), rate, sample_rate))


def encode_flac(waveform: np.ndarray, sample_rate: int) -> bytes:
    """Encode mono float samples as 16-bit FLAC bytes (values are clipped to [-1, 1])."""
    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(waveform, -1.0, 1.0), sample_rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()
