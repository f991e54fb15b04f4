"""Task C across TTS engines: the log-mel baseline trained on one engine's clips and tested on another's.

Task C (``finetune/open_audio_probes/C_keywords``) trains on espeak-ng, validates on festival and tests on
flite. This experiment fits the benchmark's log-mel baseline (``ssamba probe --encoder logmel``: per-bin
mean, std and mean |change| of a 64-bin log-mel, standardised, logistic regression) on every engine and
tests it on every other, at one fixed regularisation (no split is spent on choosing it), and reports each
engine's mean clip length in 10 ms frames. It is how the uneven cut of task C's first recipe was found
(festival and flite kept near-silence around the words, espeak-ng did not), and it shows how far each
engine's renders are from the others'.

Examples:
    python benchmarks/keyword_engines.py --manifest data/open_audio/probes/C_keywords/manifest.csv
    python benchmarks/keyword_engines.py --manifest data/open_audio/probes/C_keywords/manifest.csv \\
        --train espeak-ng festival --out exp/open_audio/keyword_engines
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import soundfile
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from ssamba.data.labelled import LabelledSet, read_labelled
from ssamba.train.probe import LOGMEL, MAX_ITER, EmbeddingCache, Readout, embed_set, load_embedder


def engine_of_clips(manifest: Path, data: LabelledSet) -> list[str]:
    """The ``engine`` column of a task C manifest for each clip of ``data`` (read from it)."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "engine" not in rows[0]:
        raise ValueError(f"{manifest}: expected an 'engine' column (a task C manifest)")
    return [rows[clip.row - 1]["engine"] for clip in data.clips]


def transfer_accuracy(vectors: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray,
                      regularisation: float) -> float:
    """Test accuracy (%) of a standardised logistic regression fitted on the ``train`` rows."""
    scaler = StandardScaler().fit(vectors[train])
    model = LogisticRegression(C=regularisation, max_iter=MAX_ITER).fit(scaler.transform(vectors[train]), labels[train])
    return 100.0 * float(model.score(scaler.transform(vectors[test]), labels[test]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True, help="task C manifest.csv (with its engine column)")
    parser.add_argument("--train", nargs="+", default=None, help="engines to train on (default: every engine)")
    parser.add_argument("--regularisation", type=float, default=1.0, help="logistic regression C (fixed)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    try:
        data = read_labelled(args.manifest)
        engines = np.array(engine_of_clips(args.manifest, data))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    labels = np.array([clip.labels[0] for clip in data.clips])
    embedder = load_embedder(LOGMEL, Readout())
    vectors = embed_set(data, embedder, EmbeddingCache(None, embedder.space)).vectors
    kept = ~np.isnan(vectors).any(axis=1)
    frames = np.array([embedder.features.num_frames(soundfile.info(clip.path).frames) for clip in data.clips])
    names = sorted(set(engines))
    for name in args.train or []:
        if name not in names:
            raise SystemExit(f"--train {name}: not an engine of {args.manifest} ({', '.join(names)})")
    lengths = {name: round(float(frames[engines == name].mean()), 1) for name in names}
    rows = [{"train": source, "test": target,
             "accuracy": round(transfer_accuracy(vectors, labels, kept & (engines == source), kept & (engines == target),
                                                 args.regularisation), 1)}
            for source in (args.train or names) for target in names if target != source]
    lines = [f"Mean clip length (10 ms frames): {', '.join(f'{k} {v}' for k, v in lengths.items())}.", "",
             f"| train engine -> test engine | log-mel accuracy % (C = {args.regularisation:g}) |", "|---|---|"]
    lines += [f"| {r['train']} ({int((engines == r['train']).sum())} clips) -> {r['test']} | {r['accuracy']} |" for r in rows]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"frames": lengths, "rows": rows}, indent=1) + "\n")
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
