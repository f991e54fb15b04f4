"""Linear-probe cost: clips/s to embed (decode + fbank + frozen encoder) and the logistic-regression fit time.

Writes a synthetic labelled corpus (ssamba.data.synthetic, four kinds of sound) at each clip length,
embeds it with a ssamba-tiny encoder (random init: the cost does not depend on the weights) through
the same path as ``ssamba probe`` (no cache), then times the fit: 2-fold cross-validation on those
embeddings, and 5-fold cross-validation on an ESC-50-sized set (2000 clips, 50 classes) of
synthetic embeddings of the encoder's width.

    python benchmarks/probe.py                           # 10 s and 1 s clips, 48 each, batch 16
    python benchmarks/probe.py --seconds 10 --clips 96 --threads 2 --encoder exp/demo/export
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ssamba.data.labelled import read_labelled
from ssamba.data.synthetic import write_demo_corpus
from ssamba.train.probe import DEFAULT_C_GRID, EmbeddingCache, Readout, embed_set, load_embedder, make_plan, run_probe

FRAMES_PER_SECOND = 100


def embed_benchmark(root: Path, encoder: str, seconds: float, clips: int, batch_size: int) -> tuple[float, float, np.ndarray, object]:
    """(clips/s, seconds, embeddings, labelled set) for ``clips`` synthetic clips of ``seconds``."""
    corpus = root / f"corpus_{seconds:g}s"
    write_demo_corpus(corpus, clips, seconds, seed=0)
    data = read_labelled(corpus / "manifest.csv")
    # the conventional input sizes: 1024 frames for 10 s (AudioSet), 128 for 1 s (Speech Commands)
    target_length = None if encoder == "logmel" else 2 ** math.ceil(math.log2(seconds * FRAMES_PER_SECOND))
    embedder = load_embedder(encoder, Readout(), target_length=target_length)
    run = embed_set(data, embedder, EmbeddingCache(None, embedder.space), batch_size, progress=False)
    return run.clips_per_second, run.seconds, run.vectors, data


def synthetic_fit(dim: int, clips: int = 2000, classes: int = 50, folds: int = 5, seed: int = 0) -> float:
    """Seconds to cross-validate the probe on Gaussian class clusters of the given size."""
    from ssamba.data.labelled import LabelledClip, LabelledSet

    rng = np.random.default_rng(seed)
    labels = np.arange(clips) % classes
    vectors = (rng.standard_normal((classes, dim)) * 0.5)[labels] + rng.standard_normal((clips, dim))
    names = [f"c{k}" for k in range(classes)]
    data = LabelledSet([LabelledClip(Path(f"/{i}.wav"), (names[labels[i]],), fold=str(1 + (i // classes) % folds)) for i in range(clips)],
                       names, False, Path("synthetic"))
    started = time.perf_counter()
    result = run_probe(data, vectors.astype(np.float32), make_plan(data), multilabel=False)
    elapsed = time.perf_counter() - started
    print(f"  synthetic fit: {clips} clips x {dim} dims, {classes} classes, {folds} folds: {elapsed:.1f} s, "
          f"accuracy {result['summary']['test']['mean']:.3f}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoder", default="random:ssamba-tiny", help="encoder spec as for `ssamba probe --encoder`")
    parser.add_argument("--seconds", type=float, nargs="+", default=[10.0, 1.0], help="clip lengths")
    parser.add_argument("--clips", type=int, default=48, help="clips per length")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--fit-clips", type=int, default=2000, help="size of the synthetic fit benchmark (0: skip)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"encoder {args.encoder}, {args.threads} threads, batch {args.batch_size}, torch {torch.__version__}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            rate, elapsed, vectors, data = embed_benchmark(Path(tmp), args.encoder, seconds, args.clips, args.batch_size)
            base_rate, *_ = embed_benchmark(Path(tmp) / "logmel", "logmel", seconds, args.clips, args.batch_size)
            started = time.perf_counter()
            run_probe(data, vectors, make_plan(data, folds=2), multilabel=False, c_grid=DEFAULT_C_GRID)
            fit = time.perf_counter() - started
            rows.append((seconds, rate, elapsed, base_rate, fit, vectors.shape[1]))
            print(f"  {seconds:g} s clips: {rate:.2f} clips/s ({args.clips} in {elapsed:.1f} s), logmel {base_rate:.1f} clips/s, "
                  f"fit (2 folds, {args.clips} clips) {fit:.2f} s")
    fit_esc = synthetic_fit(rows[0][5], args.fit_clips) if args.fit_clips else float("nan")
    print("\n| clip | embed clips/s | logmel clips/s | fit, 2-fold on these clips |")
    print("|---|---|---|---|")
    for seconds, rate, _, base_rate, fit, _ in rows:
        print(f"| {seconds:g} s | {rate:.2f} | {base_rate:.1f} | {fit:.2f} s |")
    if args.fit_clips:
        print(f"\nfit, 5-fold CV, {args.fit_clips} clips x {rows[0][5]} dims x 50 classes: {fit_esc:.1f} s")


if __name__ == "__main__":
    main()
