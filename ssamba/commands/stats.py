"""Compute the log-mel mean/std of a shard set (for FeatureConfig(mean=..., std=...)).

examples:
  ssamba stats shards/audioset shards/librispeech --max-clips 20000 -o stats.json
  ssamba stats 'shards/esc50/shard-{000000..000009}.tar' --target-length 512
  ssamba stats shards/mine --exclude-padding        # statistics of real frames only

Features are the SSAMBA fbank (mean-removed waveform, 128 bins, 10 ms hop), zero-padded or cut at
the end to --target-length frames. With padding included (default) the numbers are comparable to
the published presets, which were computed on padded inputs; --exclude-padding uses only the
clip's own frames. Mean and std are exact over all values (float64 sums), clips taken in shard
order. Unreadable samples are skipped and counted in "skipped", and so are samples lost to damaged
shards (exactly when the shards' folder has its index.json).
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("shards", nargs="+", help="shard folders, index.json files, globs or brace patterns")
    parser.add_argument("--max-clips", type=int, default=None, help="use only the first N clips (default: all)")
    parser.add_argument("--target-length", type=int, default=None, help="pad/cut to this many frames (default 1024)")
    parser.add_argument("--num-mel-bins", type=int, default=None, help="mel bins (default 128)")
    parser.add_argument("--sample-rate", type=int, default=None, help="decode rate in Hz (default 16000)")
    parser.add_argument("--exclude-padding", action="store_true", help="statistics of the clips' own frames only")
    parser.add_argument("--workers", type=int, default=1, help="processes (default %(default)s)")
    parser.add_argument("-o", "--output", help="also write the result as JSON here")


def main(args: argparse.Namespace) -> int:
    from ssamba.data import stats

    return stats.main(args)
