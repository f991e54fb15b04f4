"""HEAR 2021 API for SSAMBA encoders: ``load_model``, ``get_scene_embeddings``, ``get_timestamp_embeddings``.

Usage with the HEAR evaluation kit::

    python -m heareval.embeddings.runner ssamba.hear --model exported/ssamba-tiny

``load_model(path)`` accepts anything :func:`ssamba.load_encoder` does (export directory, run,
training checkpoint, official SSAMBA or AuM file). Audio is 16 kHz, cut into 10 s windows as
in :mod:`ssamba.interop.embed`. Timestamp embeddings are the patch tokens averaged over frequency,
one per time column of the frequency-major token grid, stamped with the true centre (ms) of the
column's receptive field; they are evenly spaced by ``tstride x 10 ms``. HEAR recommends a hop of at
most 50 ms, and its runner calls ``load_model(path)`` with no other argument, so by default
(``hop_ms=50``) the time stride becomes the largest whole number of 10 ms frames not above 50 ms
(5 frames; a checkpoint whose stride is already that fine keeps it), adapting the position
embedding as SSAMBA's fine-tuning does. The first stamp stays the first column's true centre
(87.5 ms for 16-frame patches), which the validator notes as later than one hop (a warning, not an
error). ``hop_ms=None`` keeps the checkpoint's stride (160 ms for
the released 16x16-stride models: a third of the compute). Scene embeddings are the clip
embeddings of ``ssamba embed``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ssamba.interop.checkpoints import read_checkpoint
from ssamba.interop.embed import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_WINDOW_SECONDS,
    WindowedEncoder,
    load_windowed_encoder,
)

HEAR_SAMPLE_RATES = (16000, 22050, 32000, 44100, 48000)
MILLISECONDS_PER_SECOND = 1000.0
HOP_ROUNDING_SLACK = 1e-9
"""Lets hop_ms=50 give 5 frames of 10 ms despite float rounding."""
DEFAULT_HOP_MS = 50.0
"""The hear-validator's recommended largest timestamp hop."""


class HearModel(WindowedEncoder):
    """A :class:`WindowedEncoder` with the attributes the HEAR API requires."""

    def __init__(self, windowed: WindowedEncoder, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(windowed.encoder, windowed.features)
        if self.features.sample_rate not in HEAR_SAMPLE_RATES:
            raise ValueError(f"HEAR needs a sample rate in {HEAR_SAMPLE_RATES}, the checkpoint's features use {self.features.sample_rate} Hz")
        self.sample_rate = int(self.features.sample_rate)
        self.scene_embedding_size = int(self.encoder.config.embed_dim)
        self.timestamp_embedding_size = int(self.encoder.config.embed_dim)
        self.batch_size = batch_size


def load_model(
    model_file_path: str = "",
    *,
    hop_ms: float | None = DEFAULT_HOP_MS,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> HearModel:
    """Load a checkpoint for the HEAR API (``hop_ms``: largest timestamp hop, 50 ms as HEAR recommends;
    None keeps the checkpoint's time stride)."""
    if not model_file_path:
        raise ValueError("ssamba.hear.load_model needs model_file_path: an export directory or checkpoint (there is no built-in default model)")
    checkpoint = read_checkpoint(model_file_path)
    tstride = None
    if hop_ms is not None:
        shift_ms = checkpoint.features.frame_shift_ms
        frames = math.floor(hop_ms / shift_ms + HOP_ROUNDING_SLACK)
        if frames < 1:
            raise ValueError(f"hop_ms={hop_ms} is below one fbank frame ({shift_ms:g} ms)")
        tstride = min(frames, checkpoint.encoder_config.tstride)
    return HearModel(load_windowed_encoder(checkpoint, window_seconds=window_seconds, tstride=tstride), batch_size)


def _check_audio(audio: Tensor) -> None:
    if not isinstance(audio, Tensor) or audio.ndim != 2:
        raise ValueError(f"audio must be a tensor (n_sounds, n_samples), got {getattr(audio, 'shape', type(audio).__name__)}")


def _embed(audio: Tensor, model: HearModel):
    _check_audio(audio)
    clips = [model.prepare(row, f"sound {i}") for i, row in enumerate(audio.float())]
    return model.embed_prepared(clips, model.batch_size)


def get_scene_embeddings(audio: Tensor, model: HearModel) -> Tensor:
    """(n_sounds, n_samples) at ``model.sample_rate`` -> float32 (n_sounds, scene_embedding_size)."""
    return torch.stack([r.clip for r in _embed(audio, model)]).to(audio.device, torch.float32)


def get_timestamp_embeddings(audio: Tensor, model: HearModel) -> tuple[Tensor, Tensor]:
    """(n_sounds, n_samples) -> float32 embeddings (n_sounds, n_times, D) and timestamps (n_sounds, n_times) in ms."""
    results = _embed(audio, model)
    embeddings = torch.stack([r.frames for r in results]).to(audio.device, torch.float32)
    timestamps = torch.stack([r.times * MILLISECONDS_PER_SECOND for r in results]).to(audio.device, torch.float32)
    return embeddings, timestamps
