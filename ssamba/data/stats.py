"""Compute the log-mel mean/std of a shard set (for FeatureConfig(mean=..., std=...)).

The `ssamba stats` command (its options and examples) is :mod:`ssamba.commands.stats`.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ssamba.audio.fbank import FeatureConfig, pad_or_crop
from ssamba.audio.io import decode_bytes
from ssamba.data.parallel import ordered_map
from ssamba.data.stream import AUDIO_MEMBER_EXTENSIONS, DAMAGE_KEY, FBANK_MEMBER, LOST_KEY, expand_shards, is_damage, iter_tar_samples

ClipSums = tuple[float, float, int]  # (sum, sum of squares, number of values)


def _fit_frames(raw: torch.Tensor, features: FeatureConfig, include_padding: bool) -> torch.Tensor:
    if include_padding:
        return pad_or_crop(raw, features.target_length, "start")
    return raw[: features.target_length]


def waveform_frames(waveform: torch.Tensor, features: FeatureConfig, include_padding: bool = True) -> torch.Tensor:
    """The un-normalised log-mel frames of one clip that the statistics count (padded or cut)."""
    return _fit_frames(features.raw_fbank(features.crop_waveform(waveform)), features, include_padding)


def mean_std(total: float, total_sq: float, count: int) -> tuple[float, float]:
    """Mean and (population) std from float64 sums of values and squares."""
    mean = total / count
    return mean, math.sqrt(max(total_sq / count - mean * mean, 0.0))


def _clip_frames(sample: dict[str, object], features: FeatureConfig, include_padding: bool) -> torch.Tensor:
    if FBANK_MEMBER in sample:
        raw = torch.from_numpy(np.load(io.BytesIO(sample[FBANK_MEMBER]))).float()
        return _fit_frames(raw, features, include_padding)
    ext = next((e for e in AUDIO_MEMBER_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ValueError("no audio or fbank member")
    return waveform_frames(decode_bytes(sample[ext], features.sample_rate), features, include_padding)


def shard_sums(shard: str, features: FeatureConfig, include_padding: bool, max_clips: int | None) -> tuple[list[ClipSums], int]:
    """Per-clip (sum, sumsq, count) of one shard's features, and the number of skipped samples."""
    sums: list[ClipSums] = []
    skipped = 0
    try:
        for sample in iter_tar_samples(shard):
            if max_clips is not None and len(sums) >= max_clips:
                break
            if is_damage(sample):
                print(f"skipping {sample[LOST_KEY]} sample(s): {sample[DAMAGE_KEY]}", file=sys.stderr)
                skipped += int(sample[LOST_KEY])
                continue
            try:
                frames = _clip_frames(sample, features, include_padding).double()
            except Exception as exc:
                print(f"skipping {sample.get('__key__')} in {shard}: {exc}", file=sys.stderr)
                skipped += 1
                continue
            if frames.numel() == 0 or not torch.isfinite(frames).all():
                skipped += 1
                continue
            sums.append((float(frames.sum()), float(frames.pow(2).sum()), frames.numel()))
    except (OSError, EOFError, tarfile.TarError) as exc:
        print(f"skipping the rest of {shard}: {exc}", file=sys.stderr)
        skipped += 1
    return sums, skipped


def _task(args: tuple[str, FeatureConfig, bool, int | None]) -> tuple[list[ClipSums], int]:
    torch.set_num_threads(1)
    return shard_sums(*args)


def compute_stats(
    shards: object, features: FeatureConfig = FeatureConfig(), max_clips: int | None = None,
    include_padding: bool = True, workers: int = 1,
) -> dict[str, object]:
    """Mean/std of the (padded) log-mel over the first ``max_clips`` clips of ``shards``."""
    paths = expand_shards(shards)
    tasks = [(path, features, include_padding, max_clips) for path in paths]
    total, total_sq, count, clips, skipped = 0.0, 0.0, 0, 0, 0
    results = ordered_map(_task, tasks, workers, what="reading shards")
    try:
        for clip_sums, shard_skipped in results:
            skipped += shard_skipped
            for clip_sum, clip_sq, n in clip_sums:
                if max_clips is not None and clips >= max_clips:
                    break
                total, total_sq, count, clips = total + clip_sum, total_sq + clip_sq, count + n, clips + 1
            if max_clips is not None and clips >= max_clips:
                break
    finally:
        results.close()
    if count == 0:
        raise ValueError(f"no readable clips in {len(paths)} shards")
    mean, std = mean_std(total, total_sq, count)
    return {
        "mean": mean, "std": std, "clips": clips, "values": count, "skipped": skipped,
        "target_length": features.target_length, "include_padding": include_padding, "shards": len(paths),
    }


def main(args: argparse.Namespace) -> int:
    given = {"target_length": args.target_length, "num_mel_bins": args.num_mel_bins, "sample_rate": args.sample_rate}
    features = replace(FeatureConfig(), **{name: value for name, value in given.items() if value is not None})
    result = compute_stats(args.shards, features, args.max_clips, not args.exclude_padding, args.workers)
    text = json.dumps(result, indent=1)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
    return 0
