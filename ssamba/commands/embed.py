"""Compute clip-level and frame-level embeddings of audio files with a pretrained encoder.

Each file is decoded to mono at the model's sample rate, turned into a normalised fbank, and cut into
windows of ``--window-seconds`` (10 s by default, as SSAMBA's SUPERB wrapper; the encoder's input
length and position embedding are adapted to the window). Frame embeddings are the encoder's patch
tokens averaged over frequency, one per time column of the frequency-major token grid, with the time
(seconds) of the column's centre; consecutive windows are placed so that the columns continue on one
evenly spaced grid (hop = tstride x 10 ms). The clip embedding is the encoder's pooled output
(mean over patch tokens for SSAMBA weights, CLS for AuM) averaged over windows, each weighted by its
number of columns inside the clip. Works for any clip length (short clips are padded, as in training).

Outputs (``--format npy``, default): ``OUT/<name>.npy`` (D,), ``OUT/<name>.frames.npy`` (frames, D) and
``OUT/<name>.times.npy`` (frames,) per input, mirroring sub-folders. ``--format npz``: one
``OUT/embeddings.npz`` with ``names``, ``clip`` (files, D), ``frames`` (all frames, D), ``frame_times``
and ``frame_offsets`` (files + 1; file i owns frames[offsets[i]:offsets[i+1]]).

A file that cannot be embedded (undecodable, too short, NaN/Inf samples, a sample rate outside
1000..768000 Hz, a float peak above 2.0, a dangling symlink, NaN/Inf embeddings) is skipped and
listed with its reason in ``OUT/rejects.jsonl``; the command fails only when nothing was embedded,
or with ``--strict`` when anything was skipped (the good files are written either way).

examples:
  ssamba embed clips/ --checkpoint exported/ssamba-tiny --out embeddings/
  ssamba embed a.wav b.flac --checkpoint amba_tiny_400.pth --out emb/ --format npz
  ssamba embed corpus/ --checkpoint runs/pretrain --out emb/ --tstride 4 --batch-size 32 --device cuda
  ssamba embed corpus/ --checkpoint exported/ssamba-tiny --out emb/ --strict   # any skipped file is an error
"""

from __future__ import annotations

import argparse

from ssamba.defaults import DEFAULT_BATCH_SIZE, DEFAULT_WINDOW_SECONDS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="audio files and/or folders (searched recursively)")
    parser.add_argument("--checkpoint", required=True, help="export directory, run, training checkpoint, or official SSAMBA/AuM checkpoint")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--format", choices=("npy", "npz"), default="npy", help="npy files per input (default) or one embeddings.npz")
    parser.add_argument("--window-seconds", type=float, default=DEFAULT_WINDOW_SECONDS, help=f"encoder window (default {DEFAULT_WINDOW_SECONDS:g} s)")
    parser.add_argument("--fstride", type=int, default=None, help="frequency patch stride (default: the checkpoint's)")
    parser.add_argument("--tstride", type=int, default=None, help="time patch stride = frame hop in 10 ms frames (default: the checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help=f"windows per forward pass (default {DEFAULT_BATCH_SIZE})")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument(
        "--strict", action="store_true",
        help="exit with an error if any input could not be embedded (the others are still written); "
        "by default such inputs are skipped, counted and listed in OUT/rejects.jsonl",
    )


def main(args: argparse.Namespace) -> int:
    from ssamba.interop import embed

    return embed.main(args)
