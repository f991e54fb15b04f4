"""Classification heads on top of an :class:`AudioMambaEncoder` (fine-tuning).

* ``head="aum"``: AuM's single ``Linear(D, classes)`` on the pooled feature (truncated-normal init).
* ``head="ssamba"``: SSAMBA's ``mlp_head`` = ``LayerNorm(D)`` then ``Linear(D, classes)``.

``task="clip"``: the pooled feature is the encoder's :meth:`~AudioMambaEncoder.embed` (mean over
patch tokens for SSAMBA presets, the CLS token for AuM presets); logits (B, classes).

``task="per_second"`` (SSAMBA's dynamic audio scene labelling, e.g. 60 s Urban8k concatenations):
for each second ``s`` the patch tokens of the time columns whose centre falls in
``[s, s + 1) * seconds_per_label`` are averaged over all frequency rows and those columns
(:func:`per_second_pool`), and the same head scores every second: logits (B, seconds, classes).
The original code instead averaged equal chunks of the flattened, frequency-major token sequence,
which mixes one mel band over several seconds; this pools over the (frequency, time) grid.

Logits are raw (apply sigmoid/softmax in the loss).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from ssamba.audio.fbank import MILLISECONDS_PER_SECOND
from ssamba.models.encoder import AudioMambaEncoder, EncoderConfig

HeadType = Literal["aum", "ssamba"]
Task = Literal["clip", "per_second"]


def column_centres(config: EncoderConfig, frame_shift_ms: float = 10.0, frame_length_ms: float = 25.0) -> Tensor:
    """Centre time (seconds, float64) of each time column of the patch grid.

    Column ``t`` covers frames ``t * tstride .. t * tstride + tshape - 1``; frame ``k`` covers
    ``[k * shift, k * shift + length)``, so the column's centre is
    ``(t * tstride + (tshape - 1) / 2) * shift + length / 2``.
    """
    shift, length = frame_shift_ms / MILLISECONDS_PER_SECOND, frame_length_ms / MILLISECONDS_PER_SECOND
    columns = torch.arange(config.grid[1], dtype=torch.float64)
    return (columns * config.tstride + (config.tshape - 1) / 2) * shift + length / 2


def second_weights(centres: Tensor, seconds: int, seconds_per_label: float = 1.0) -> Tensor:
    """(seconds, columns) averaging matrix: row ``s`` is 1/n on the n columns whose centre is in second ``s``.

    Columns after the last labelled second are ignored; a second without a column is an error.
    """
    index = torch.floor(centres / seconds_per_label).long()
    weights = torch.zeros(seconds, centres.shape[0], dtype=torch.float64)
    for s in range(seconds):
        members = index == s
        if not members.any():
            raise ValueError(
                f"second {s} ({s * seconds_per_label:g}-{(s + 1) * seconds_per_label:g} s) has no patch column; "
                f"the input covers {float(centres[-1]):.2f} s (column centres) -- lower seconds or the time stride"
            )
        weights[s, members] = 1.0 / int(members.sum())
    return weights


def per_second_pool(patch_tokens: Tensor, grid: tuple[int, int], weights: Tensor) -> Tensor:
    """Pool frequency-major patch tokens (B, F'*T', D) to (B, seconds, D) with :func:`second_weights`.

    Every frequency row of a column counts equally, so this is the mean over all tokens in the
    (frequency, time) cells of each second.
    """
    batch, count, dim = patch_tokens.shape
    if count != grid[0] * grid[1]:
        raise ValueError(f"expected {grid[0]} x {grid[1]} = {grid[0] * grid[1]} patch tokens, got {count}")
    columns = patch_tokens.reshape(batch, grid[0], grid[1], dim).mean(dim=1)
    return torch.einsum("st,btd->bsd", weights.to(columns.dtype), columns)


class AudioMambaClassifier(nn.Module):
    """Encoder + pooling + classification head; ``forward(fbank)`` gives logits (B, classes), or
    (B, seconds, classes) for ``task="per_second"``."""

    def __init__(
        self,
        encoder: AudioMambaEncoder,
        num_classes: int,
        head: HeadType = "aum",
        *,
        task: Task = "clip",
        seconds: int | None = None,
        seconds_per_label: float = 1.0,
        frame_shift_ms: float = 10.0,
        frame_length_ms: float = 25.0,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        if task not in ("clip", "per_second"):
            raise ValueError(f"task must be 'clip' or 'per_second', got {task!r}")
        dim = encoder.config.embed_dim
        self.encoder = encoder
        self.head_type = head
        self.task = task
        if head == "aum":
            self.head = nn.Linear(dim, num_classes)
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        elif head == "ssamba":
            self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))
        else:
            raise ValueError(f"head must be 'aum' or 'ssamba', got {head!r}")
        self.seconds = None
        if task == "per_second":
            if seconds_per_label <= 0:
                raise ValueError(f"seconds_per_label must be positive, got {seconds_per_label}")
            if seconds is None:
                input_seconds = encoder.config.target_length * frame_shift_ms / MILLISECONDS_PER_SECOND
                seconds = math.floor(input_seconds / seconds_per_label + 1e-9)
            if seconds < 1:
                raise ValueError(f"per-second labelling needs seconds >= 1, got {seconds}")
            self.seconds = seconds
            centres = column_centres(encoder.config, frame_shift_ms, frame_length_ms)
            self.register_buffer("second_weights", second_weights(centres, seconds, seconds_per_label).float(), persistent=False)

    def forward(self, fbank: Tensor, return_features: bool = False) -> Tensor:
        """Logits (B, classes) or (B, seconds, classes); the pooled features instead when ``return_features``."""
        if self.task == "clip":
            features = self.encoder.embed(fbank)
        else:
            patches = self.encoder.patch_tokens(self.encoder(fbank))
            features = per_second_pool(patches, self.encoder.grid, self.second_weights)
        return features if return_features else self.head(features)
