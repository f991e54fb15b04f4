"""Classify audio files with a fine-tuned classifier: the top classes per file (per second for per-second models).

examples:
  ssamba predict dog.wav rain.flac --model exp/esc50/model
  ssamba predict clips/ --model exp/as20k/model --top 3 --jsonl predictions.jsonl
  ssamba predict street.wav --model exp/urban8k-dasl/model          # one line per second

A file longer than the model's input (features.target_length frames) is cut into consecutive
windows whose scores are averaged (clip models); a per-second model labels the seconds its input
covers, so its windows start every that many seconds and their per-second outputs are concatenated
over the whole file. Unreadable and silent files are skipped and counted, never guessed.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", help="audio files or directories (searched recursively for audio files)")
    parser.add_argument("--model", required=True, type=Path, help="classifier export directory (RUN/model written by ssamba finetune)")
    parser.add_argument("--top", type=int, default=5, help="classes shown per file or second (default 5)")
    parser.add_argument("--jsonl", type=Path, default=None, help="also write one JSON object per file: path, top classes and scores")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where the model runs (auto: GPU when available)")


def main(args: argparse.Namespace) -> int:
    from ssamba.interop import predict

    return predict.main(args)
