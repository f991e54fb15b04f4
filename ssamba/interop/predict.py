"""Classify audio files with a fine-tuned classifier: the top classes per file (per second for per-second models).

The `ssamba predict` command (its options and examples) is :mod:`ssamba.commands.predict`.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff", ".aif")
SILENCE_PEAK = 2.0**-15
"""Same rule as training: a peak below one 16-bit step is silence."""
WINDOW_BATCH = 16
"""Windows of one file run through the model together."""


@dataclass
class Prediction:
    """Scores of one file: (classes,) for clip models, (seconds, classes) for per-second models."""

    path: Path
    scores: torch.Tensor
    windows: int
    seconds_per_label: float | None = None
    """Per-second models: the seconds of audio each row of ``scores`` labels."""


def audio_files(inputs: list[str]) -> Iterator[Path]:
    """The files named, directories expanded to their audio files (sorted, recursively)."""
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        else:
            yield path


def windows_of(waveform: torch.Tensor, features, labelled_seconds: float | None = None) -> torch.Tensor:
    """(windows, frames, bins) model inputs covering the waveform.

    Clip models (``labelled_seconds`` None): consecutive windows of the model's input length.
    Per-second models: a window starts every ``labelled_seconds`` (the seconds one input's labels
    cover), so the windows' labels tile the file; the last window is padded as in training.
    """
    samples = waveform.shape[0]
    samples_per_window = (features.target_length - 1) * features.frame_shift_samples + features.frame_length_samples
    if labelled_seconds is None:
        step = features.target_length * features.frame_shift_samples
        count = max(1, math.ceil(max(samples - samples_per_window, 0) / step) + 1)
    else:
        step = round(labelled_seconds * features.sample_rate)
        count = max(1, math.ceil(samples / step))
    return torch.stack([features.features(waveform[k * step : k * step + samples_per_window]) for k in range(count)])


def run_windows(model, inputs: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Activated scores of every window, ``WINDOW_BATCH`` windows at a time (long files stay in memory bounds)."""
    from ssamba.interop.classifier import activate

    parts = [activate(model(inputs[k : k + WINDOW_BATCH].to(device)), model.activation).cpu()
             for k in range(0, inputs.shape[0], WINDOW_BATCH)]
    return torch.cat(parts)


@torch.no_grad()
def predict_file(model, path: Path, device: torch.device) -> Prediction:
    """Scores of one file; raises ``ValueError`` for unreadable or silent audio."""
    from ssamba.audio.io import AudioDecodeError, load_audio

    try:
        waveform = load_audio(path, model.features.sample_rate)
    except (AudioDecodeError, OSError, RuntimeError) as error:
        raise ValueError(f"unreadable ({error})") from None
    if waveform.numel() == 0 or float(waveform.abs().max()) < SILENCE_PEAK:
        raise ValueError("silent")
    if model.task != "per_second":
        inputs = windows_of(waveform, model.features)
        return Prediction(path, run_windows(model, inputs, device).mean(dim=0), inputs.shape[0])
    labelled_seconds = model.seconds * model.seconds_per_label
    inputs = windows_of(waveform, model.features, labelled_seconds)
    scores = run_windows(model, inputs, device)  # (windows, labels per window, classes)
    audio_seconds = waveform.shape[0] / model.features.sample_rate
    labels = max(1, math.ceil(audio_seconds / model.seconds_per_label - 1e-9))
    return Prediction(path, scores.reshape(-1, scores.shape[-1])[:labels], inputs.shape[0], model.seconds_per_label)


def top_classes(scores: torch.Tensor, names: list[str], k: int) -> list[tuple[str, float]]:
    values, index = scores.topk(min(k, scores.shape[-1]))
    return [(names[i], float(v)) for v, i in zip(values.tolist(), index.tolist())]


def format_prediction(pred: Prediction, names: list[str], k: int) -> str:
    if pred.scores.ndim == 1:
        window = f" ({pred.windows} windows averaged)" if pred.windows > 1 else ""
        return f"{pred.path}{window}: " + ", ".join(f"{name} {score:.3f}" for name, score in top_classes(pred.scores, names, k))
    lines = [f"{pred.path}:"]
    step = pred.seconds_per_label or 1.0
    for second, row in enumerate(pred.scores):
        span = f"{second * step:g}-{(second + 1) * step:g} s"
        lines.append(f"  {span}: " + ", ".join(f"{name} {score:.3f}" for name, score in top_classes(row, names, k)))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from ssamba.interop.checkpoints import CheckpointError
    from ssamba.interop.classifier import load_classifier

    if args.top < 1:
        print("ssamba predict: --top must be >= 1", file=sys.stderr)
        return 2
    try:
        model = load_classifier(args.model)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"ssamba predict: {error}", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    model.to(device)
    names = model.display_names or model.classes
    skipped: list[str] = []
    done = 0
    out = args.jsonl.open("w", encoding="utf-8") if args.jsonl else None
    try:
        for path in audio_files(args.files):
            try:
                pred = predict_file(model, path, device)
            except ValueError as problem:
                skipped.append(f"{path} ({problem})")
                continue
            done += 1
            print(format_prediction(pred, names, args.top), flush=True)
            if out is not None:
                rows = [pred.scores] if pred.scores.ndim == 1 else list(pred.scores)
                record = {"path": str(pred.path), "windows": pred.windows,
                          "top": [top_classes(row, names, args.top) for row in rows]}
                if pred.scores.ndim == 1:
                    record["top"] = record["top"][0]
                out.write(json.dumps(record) + "\n")
    finally:
        if out is not None:
            out.close()
    if skipped:
        print(f"skipped {len(skipped)} file(s): " + "; ".join(skipped), file=sys.stderr)
    if done == 0:
        print("ssamba predict: no file could be classified", file=sys.stderr)
        return 1
    return 0
