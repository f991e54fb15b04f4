"""Loader throughput: 10 s 16 kHz FLAC clips -> decode + fbank + augmentation -> batches.

Builds a synthetic corpus (ssamba.data.synthetic), writes it to shards, then times full passes of
the streaming loader with 1 and 2 DataLoader workers. Reports clips/s overall and per worker, plus
the single-thread cost of each stage per clip.

    python benchmarks/loader.py                     # 240 clips, workers 1 and 2, AudioSet augmentation
    python benchmarks/loader.py --clips 480 --workers 1 2 --augment none
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import torch

from ssamba.audio.augment import AugmentConfig, add_noise_and_roll, spec_augment
from ssamba.audio.fbank import FeatureConfig, normalize, pad_or_crop
from ssamba.audio.io import decode_bytes
from ssamba.data.shards import ShardOptions, write_shards
from ssamba.data.sources import folder
from ssamba.data.stream import expand_shards, iter_tar_samples, make_loader
from ssamba.data.synthetic import CLIP_KINDS, write_demo_corpus

AUGMENTS = {"none": None, "audioset": AugmentConfig.preset("audioset", noise=True)}


def build_shards(root: Path, clips: int, seconds: float, per_shard: int) -> Path:
    write_demo_corpus(root / "corpus", clips, seconds, seed=0)
    records = folder.scan(root / "corpus", labels_from_dirs=True)
    for record in records:
        record.labels = [CLIP_KINDS.index(str(record.labels[0]))]
    write_shards(records, root / "shards", ShardOptions(max_count=per_shard), workers=2, log=lambda message: None)
    return root / "shards"


def stage_costs(shards: Path, features: FeatureConfig, n: int = 30) -> dict[str, tuple[float, float]]:
    """(best, median) single-thread ms per clip of each stage; on a loaded machine the best is the
    closer estimate of the uncontended cost."""
    torch.set_num_threads(1)
    samples = [s for s in iter_tar_samples(expand_shards(shards)[0])][:n]
    rng, generator = random.Random(0), torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {"decode": [], "fbank": [], "augment+normalise": []}
    for sample in samples:
        t0 = time.perf_counter()
        wave = decode_bytes(sample["flac"], features.sample_rate)
        t1 = time.perf_counter()
        frames = pad_or_crop(features.raw_fbank(features.crop_waveform(wave)), features.target_length)
        t2 = time.perf_counter()
        out = add_noise_and_roll(normalize(spec_augment(frames, 48, 192, generator), features.mean, features.std), rng, generator)
        t3 = time.perf_counter()
        assert out.shape == (features.target_length, features.num_mel_bins)
        for name, value in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[name].append(value * 1000)
    return {name: (min(values), sorted(values)[len(values) // 2]) for name, values in times.items()}


def time_loader(shards: Path, features: FeatureConfig, workers: int, batch_size: int, augment: AugmentConfig | None) -> tuple[float, float, int]:
    """(clips/s over a full pass after the first batch, seconds to the first batch, clips timed)."""
    loader = make_loader(shards, features, batch_size=batch_size, num_workers=workers, seed=0, augment=augment, num_classes=len(CLIP_KINDS), shuffle_buffer=64)
    start = time.perf_counter()
    iterator = iter(loader)
    next(iterator)
    first = time.perf_counter()
    clips = sum(batch["fbank"].shape[0] for batch in iterator)
    return clips / (time.perf_counter() - first), first - start, clips


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-size", type=int, default=12)
    parser.add_argument("--augment", choices=sorted(AUGMENTS), default="audioset")
    parser.add_argument("--repeats", type=int, default=2, help="passes per worker count; the best is reported")
    args = parser.parse_args()
    features = FeatureConfig()
    with tempfile.TemporaryDirectory() as tmp:
        shards = build_shards(Path(tmp), args.clips, args.seconds, per_shard=max(1, args.clips // 8))
        costs = stage_costs(shards, features)
        print("single-thread ms per clip (best / median): " + ", ".join(f"{k} {b:.2f} / {m:.2f}" for k, (b, m) in costs.items()))
        print("| workers | clips/s | clips/s per worker | first batch (s) | clips timed |")
        print("|---|---|---|---|---|")
        for workers in args.workers:
            runs = [time_loader(shards, features, workers, args.batch_size, AUGMENTS[args.augment]) for _ in range(args.repeats)]
            rate, startup, clips = max(runs)
            print(f"| {workers} | {rate:.1f} | {rate / workers:.1f} | {startup:.2f} | {clips} |")


if __name__ == "__main__":
    main()
