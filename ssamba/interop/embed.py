"""Compute clip-level and frame-level embeddings of audio files with a pretrained encoder.

The `ssamba embed` command (its options and examples) is :mod:`ssamba.commands.embed`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ssamba.audio.fbank import MILLISECONDS_PER_SECOND, FeatureConfig, normalize
from ssamba.defaults import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW_SECONDS
from ssamba.interop.checkpoints import Checkpoint, adapt_checkpoint, read_checkpoint
from ssamba.models.encoder import AudioMambaEncoder

NPZ_FILE = "embeddings.npz"
REJECTS_FILE = "rejects.jsonl"


@dataclass
class PreparedClip:
    """A clip cut into encoder windows: ``windows`` (W, target_length, mel_bins), ``columns`` inside the clip."""

    windows: Tensor
    columns: int


@dataclass
class ClipEmbedding:
    """Embeddings of one clip: ``clip`` (D,), ``frames`` (columns, D), ``times`` (columns,) in seconds."""

    clip: Tensor
    frames: Tensor
    times: Tensor


class WindowedEncoder(nn.Module):
    """An encoder plus its feature recipe, applied to waveforms of any length through fixed windows."""

    def __init__(self, encoder: AudioMambaEncoder, features: FeatureConfig) -> None:
        super().__init__()
        cfg = encoder.config
        if (features.target_length, features.num_mel_bins) != (cfg.target_length, cfg.num_mel_bins):
            raise ValueError(
                f"feature recipe ({features.num_mel_bins} bins x {features.target_length} frames) does not match the encoder input "
                f"({cfg.num_mel_bins} x {cfg.target_length})"
            )
        self.encoder = encoder.eval()
        self.features = features
        self.columns_per_window = cfg.grid[1]
        self.hop_frames = self.columns_per_window * cfg.tstride
        """Window starts are this many frames apart, so that window w's column t is global column w * T' + t."""
        shift, length = features.frame_shift_samples, features.frame_length_samples
        self.column_hop_samples = cfg.tstride * shift
        self.column_centre_samples = ((cfg.tshape - 1) * shift + length) / 2
        """Centre of column 0's receptive field (first to last sample of its first and last frames)."""

    @property
    def column_hop_seconds(self) -> float:
        return self.column_hop_samples / self.features.sample_rate

    @property
    def device(self) -> torch.device:
        return self.encoder.pos_embed.device

    def column_times(self, columns: int) -> Tensor:
        """Centre times (seconds, float64) of the first ``columns`` time columns of a clip."""
        index = torch.arange(columns, dtype=torch.float64)
        return (index * self.column_hop_samples + self.column_centre_samples) / self.features.sample_rate

    def columns_in_clip(self, num_samples: int) -> int:
        """Columns whose centre lies inside a clip of ``num_samples`` samples (at least one)."""
        inside = math.floor((num_samples - self.column_centre_samples) / self.column_hop_samples) + 1
        return max(1, inside)

    def prepare(self, waveform: Tensor, name: str = "waveform") -> PreparedClip:
        """Cut a 1-D waveform (at the model's sample rate) into normalised encoder windows."""
        if waveform.ndim != 1:
            raise ValueError(f"{name}: expected a 1-D waveform, got shape {tuple(waveform.shape)}")
        feat = self.features
        if waveform.shape[0] < feat.frame_length_samples:
            raise ValueError(
                f"{name}: {waveform.shape[0]} samples is shorter than one {feat.frame_length_ms:g} ms analysis frame "
                f"({feat.frame_length_samples} samples at {feat.sample_rate} Hz)"
            )
        raw = feat.raw_fbank(waveform.float())
        columns = self.columns_in_clip(waveform.shape[0])
        num_windows = math.ceil(columns / self.columns_per_window)
        needed = (num_windows - 1) * self.hop_frames + feat.target_length
        raw = raw[:needed]
        if raw.shape[0] < needed:  # zero-pad before normalising, as training pads
            raw = torch.nn.functional.pad(raw, (0, 0, 0, needed - raw.shape[0]))
        windows = raw.unfold(0, feat.target_length, self.hop_frames).transpose(1, 2)
        return PreparedClip(normalize(windows, feat.mean, feat.std), columns)

    @torch.no_grad()
    def encode_windows(self, windows: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
        """Column features (N, T', D) (patch tokens averaged over frequency) and pooled (N, D) of windows (N, T, F)."""
        f_patches, t_patches = self.encoder.grid
        columns, pooled = [], []
        for batch in windows.split(batch_size):
            tokens = self.encoder(batch.to(self.device))
            patches = self.encoder.patch_tokens(tokens)
            columns.append(patches.reshape(batch.shape[0], f_patches, t_patches, -1).mean(dim=1).float().cpu())
            pooled.append(self.encoder.pool(tokens).float().cpu())
        return torch.cat(columns), torch.cat(pooled)

    def embed_prepared(self, clips: Sequence[PreparedClip], batch_size: int = DEFAULT_BATCH_SIZE) -> list[ClipEmbedding]:
        """Encode the windows of several clips together (``batch_size`` windows at a time)."""
        if not clips:
            return []
        columns, pooled = self.encode_windows(torch.cat([c.windows for c in clips]), batch_size)
        results, start = [], 0
        for clip in clips:
            count = clip.windows.shape[0]
            frames = columns[start : start + count].flatten(0, 1)[: clip.columns]
            inside = torch.full((count,), float(self.columns_per_window))
            inside[-1] = clip.columns - (count - 1) * self.columns_per_window
            clip_embedding = (pooled[start : start + count] * inside[:, None]).sum(0) / inside.sum()
            results.append(ClipEmbedding(clip_embedding, frames, self.column_times(clip.columns)))
            start += count
        return results


def load_windowed_encoder(
    checkpoint: str | Path | Checkpoint,
    *,
    window_seconds: float = DEFAULT_WINDOW_SECONDS,
    fstride: int | None = None,
    tstride: int | None = None,
    device: str | torch.device = "cpu",
) -> WindowedEncoder:
    """Load any supported checkpoint (a path or one already read) for ``window_seconds`` windows
    (input length and position embedding adapted to the window)."""
    if window_seconds <= 0:
        raise ValueError(f"window_seconds must be positive, got {window_seconds}")
    original = checkpoint if isinstance(checkpoint, Checkpoint) else read_checkpoint(checkpoint)
    target_length = round(window_seconds * MILLISECONDS_PER_SECOND / original.features.frame_shift_ms)
    loaded = adapt_checkpoint(original, target_length=target_length, fstride=fstride, tstride=tstride)
    return WindowedEncoder(loaded.build_encoder(), loaded.features).to(device)


# ---------------------------------------------------------------------------------------------- CLI


def find_audio_files(inputs: Sequence[str | Path]) -> list[tuple[str, Path]]:
    """``(output name, path)`` per audio file: files as given (name = stem), folders searched recursively
    (name = path relative to the folder, without suffix). Duplicated names and inputs that do not exist
    are an error; dangling symlinks and special files with an audio extension are kept, to be listed
    as rejects."""
    from ssamba.audio.io import AUDIO_EXTENSIONS

    found: list[tuple[str, Path]] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and not p.is_dir())
            if not files:
                raise FileNotFoundError(f"{item}: no audio files ({', '.join(sorted(AUDIO_EXTENSIONS))}) in this folder")
            found += [(p.relative_to(item).with_suffix("").as_posix(), p) for p in files]
        elif os.path.lexists(item):
            found.append((item.stem, item))
        else:
            raise FileNotFoundError(f"{item}: no such file or folder")
    names: dict[str, Path] = {}
    for name, path in found:
        if name in names:
            raise ValueError(f"two inputs would write the same output name {name!r}: {names[name]} and {path}")
        names[name] = path
    return found


@dataclass
class EmbedReject:
    """An input that could not be embedded: ``reason`` (a short category) and the error message."""

    path: str
    reason: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"path": self.path, "reason": self.reason, "detail": self.detail}


def _reject(path: Path, error: Exception) -> EmbedReject:
    from ssamba.data.sources import display_path

    reason = getattr(error, "reason", "unusable")
    return EmbedReject(display_path(str(path)), reason, display_path(str(error)))


def embed_files(
    model: WindowedEncoder, files: list[tuple[str, Path]], batch_size: int, rejects: list[EmbedReject]
) -> Iterator[tuple[str, ClipEmbedding]]:
    """Decode and embed files, grouping windows of consecutive files into batches. A file that cannot
    be decoded or used (too short, NaN/Inf, implausible rate, ...) or whose embedding is not finite
    is appended to ``rejects`` instead; the others are yielded in input order."""
    from ssamba.audio.io import load_audio

    pending: list[tuple[str, Path, PreparedClip]] = []
    for index, (name, path) in enumerate(files):
        try:
            pending.append((name, path, model.prepare(load_audio(path, model.features.sample_rate), str(path))))
        except (ValueError, OSError) as error:  # AudioDecodeError is a ValueError
            rejects.append(_reject(path, error))
        if pending and (sum(c.windows.shape[0] for _, _, c in pending) >= batch_size or index == len(files) - 1):
            results = model.embed_prepared([c for _, _, c in pending], batch_size)
            for (name, path, _), result in zip(pending, results):
                if not (torch.isfinite(result.clip).all() and torch.isfinite(result.frames).all()):
                    error = ValueError(f"{path}: the encoder gave NaN/Inf embeddings (check the checkpoint's weights)")
                    rejects.append(EmbedReject(_reject(path, error).path, "non_finite_output", str(error)))
                    continue
                yield name, result
            pending = []


class EmbedFailedError(ValueError):
    """Nothing could be embedded, or (with --strict) some inputs could not be."""


def main(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    files = find_audio_files(args.inputs)
    model = load_windowed_encoder(args.checkpoint, window_seconds=args.window_seconds, fstride=args.fstride, tstride=args.tstride, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    collected: dict[str, ClipEmbedding] = {}
    rejects: list[EmbedReject] = []
    embedded = 0
    with tqdm(total=len(files), unit="file", desc="embedding") as progress:
        for name, result in embed_files(model, files, args.batch_size, rejects):
            if args.format == "npy":
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                np.save(f"{target}.npy", result.clip.numpy())
                np.save(f"{target}.frames.npy", result.frames.numpy())
                np.save(f"{target}.times.npy", result.times.numpy())
            else:
                collected[name] = result
            embedded += 1
            progress.update(embedded + len(rejects) - progress.n)
        progress.update(len(files) - progress.n)
    if collected:
        names = [name for name, _ in files if name in collected]
        offsets = np.cumsum([0] + [collected[n].frames.shape[0] for n in names])
        np.savez(
            out / NPZ_FILE,
            names=np.array(names),
            clip=np.stack([collected[n].clip.numpy() for n in names]),
            frames=np.concatenate([collected[n].frames.numpy() for n in names]),
            frame_times=np.concatenate([collected[n].times.numpy() for n in names]),
            frame_offsets=offsets,
        )
    rejects_path = out / REJECTS_FILE
    rejects_path.write_text("".join(json.dumps(r.to_dict(), ensure_ascii=False) + "\n" for r in rejects), encoding="utf-8")
    dim = model.encoder.config.embed_dim
    summary = f"embedded {embedded} file(s) -> {out} ({dim}-d, frame hop {model.column_hop_seconds * MILLISECONDS_PER_SECOND:g} ms)"
    if rejects:
        summary += f"; {len(rejects)} of {len(files)} could not be embedded, listed in {rejects_path}"
    print(summary)
    if rejects and (embedded == 0 or args.strict):
        which = "none of the inputs could be embedded" if embedded == 0 else f"{len(rejects)} of {len(files)} inputs could not be embedded (--strict)"
        raise EmbedFailedError(f"{which}; first: {rejects[0].detail} (all in {rejects_path})")
    return 0
