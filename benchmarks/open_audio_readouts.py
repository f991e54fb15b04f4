"""Readouts of the open-audio probe tasks beyond ``ssamba probe``'s: which pooling of the token grid, which block.

``ssamba probe`` mean-pools all patch tokens of the padded input. This experiment asks whether another
readout of the same frozen encoders changes the picture (task C, keywords, above all): it keeps every
block's token grid (frequency x time patches) of every clip, then fits the same probe (standardised
logistic regression, C chosen on the validation split or by inner folds) on each pooling:

* ``mean``: all patch tokens (``ssamba probe --pooling mean``);
* ``clip-mean``: only the time columns whose centre lies inside the clip, not its padding;
* ``clip-thirds``: the clip's columns cut into three equal parts, each mean-pooled, concatenated (keeps
  coarse time order, e.g. which phone comes first);
* ``clip-freq``: per frequency row, the mean over the clip's columns, concatenated (keeps the spectral layout;
  ``ssamba probe --pooling freq`` reads it out in float32).

Both the pretrained encoder and the same architecture at random init (seed 0) are read out the same way;
the log-mel baseline (``ssamba probe --encoder logmel``) is fitted beside them for reference.

``--standardise per-split`` z-scores each split (or fold) with its own mean and variance before the probe
instead of the training split's. It uses the evaluation clips' statistics (transductive), so it is a
diagnosis of a shift between splits (task C: between TTS engines), never the benchmark protocol.

Examples:
    python benchmarks/open_audio_readouts.py --export exp/open_audio/export --probes data/open_audio/probes
    python benchmarks/open_audio_readouts.py --export exp/open_audio/export --probes data/open_audio/probes \\
        --tasks C --blocks last all --out exp/open_audio/readouts
    python benchmarks/open_audio_readouts.py --export exp/open_audio/export --probes data/open_audio/probes \\
        --tasks C --blocks all --poolings mean --standardise per-split
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ssamba.data.labelled import LabelledSet, load_clip_waveform, read_labelled
from ssamba.interop.embed import WindowedEncoder
from ssamba.openaudio.benchmark import TASKS, random_spec
from ssamba.train.probe import (LOGMEL, EmbeddingCache, Evaluation, Readout, embed_set, load_embedder, make_plan,
                                run_probe)

POOLINGS = ("mean", "clip-mean", "clip-thirds", "clip-freq")
STANDARDISATIONS = ("train", "per-split")
BATCH_SIZE = 32


def token_grids(spec: str, data: LabelledSet) -> tuple[np.ndarray, np.ndarray]:
    """(clips, blocks, freq patches, time patches, dim) float16 token grids and each clip's covered time columns."""
    embedder = load_embedder(spec, Readout(), seed=0)
    encoder = embedder.encoder
    freq_patches, time_patches = encoder.grid
    clip_columns = WindowedEncoder(encoder, embedder.features).columns_in_clip
    grids, columns, batch = [], [], []

    def flush() -> None:
        with torch.no_grad():
            states = encoder.hidden_states(torch.stack(batch))
        tokens = torch.stack([encoder.patch_tokens(state) for state in states], dim=1)
        grids.append(tokens.reshape(*tokens.shape[:2], freq_patches, time_patches, -1).half().numpy())
        batch.clear()

    for clip in tqdm(data.clips, desc=f"{Path(spec).name} {Path(data.source).parent.name}", leave=False):
        wave = load_clip_waveform(clip, embedder.features.sample_rate)
        windows, _ = embedder.prepare(wave)
        columns.append(min(time_patches, clip_columns(wave.shape[0])))
        batch.append(windows[0])
        if len(batch) == BATCH_SIZE:
            flush()
    if batch:
        flush()
    return np.concatenate(grids), np.array(columns)


def logmel_vectors(data: LabelledSet) -> np.ndarray:
    """The log-mel baseline's clip vectors, as ``ssamba probe --encoder logmel`` makes them (NaN rows: skipped)."""
    embedder = load_embedder(LOGMEL, Readout())
    return embed_set(data, embedder, EmbeddingCache(None, embedder.space)).vectors


def standardise_per_split(vectors: np.ndarray, data: LabelledSet) -> np.ndarray:
    """Z-score the clips of each split (or fold) with that split's own mean and standard deviation
    (a constant feature stays 0; NaN rows, skipped clips, stay NaN)."""
    keys = np.array([clip.split or clip.fold or "" for clip in data.clips])
    out = np.empty_like(vectors, dtype=np.float64)
    for key in np.unique(keys):
        part = vectors[keys == key].astype(np.float64)
        std = np.nanstd(part, axis=0)
        out[keys == key] = (part - np.nanmean(part, axis=0)) / np.where(std > 0, std, 1.0)
    return out


def pool(grid: np.ndarray, columns: int, pooling: str) -> np.ndarray:
    """One clip's (freq, time, dim) grid -> its vector under ``pooling``."""
    grid = grid.astype(np.float32)
    clip = grid[:, :columns]
    if pooling == "mean":
        return grid.mean(axis=(0, 1))
    if pooling == "clip-mean":
        return clip.mean(axis=(0, 1))
    if pooling == "clip-freq":
        return clip.mean(axis=1).reshape(-1)
    if pooling == "clip-thirds":
        edges = np.linspace(0, columns, 4)
        parts = [(math.floor(a), max(math.floor(a) + 1, math.ceil(b))) for a, b in zip(edges[:-1], edges[1:])]
        return np.concatenate([clip[:, a:b].mean(axis=(0, 1)) for a, b in parts])
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def readout_vectors(grids: np.ndarray, columns: np.ndarray, block: str, pooling: str) -> np.ndarray:
    """Clip vectors for ``block`` ('last', 'all' or a 1-based block (pair) number) and ``pooling``."""
    blocks = range(grids.shape[1]) if block == "all" else [grids.shape[1] - 1 if block == "last" else int(block) - 1]
    return np.stack([np.concatenate([pool(g[b], c, pooling) for b in blocks]) for g, c in zip(grids, columns)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--export", type=Path, required=True, help="exported pretrained encoder")
    parser.add_argument("--probes", type=Path, required=True, help="folder with A_instrument/, B_foley/, C_keywords/")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    parser.add_argument("--blocks", nargs="+", default=["last", "all"], help="last, all or block (pair) numbers")
    parser.add_argument("--poolings", nargs="+", choices=POOLINGS, default=list(POOLINGS))
    parser.add_argument("--standardise", choices=STANDARDISATIONS, default="train",
                        help="train: the probe's own (the protocol); per-split: each split its own (a diagnosis)")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    encoders = {"pretrained": str(args.export), "random": random_spec(args.export)}
    rows = []

    def probe(data: LabelledSet, plan: list[Evaluation], vectors: np.ndarray, **row: str) -> None:
        if args.standardise == "per-split":
            vectors = standardise_per_split(vectors, data)
        result = run_probe(data, vectors, plan, multilabel=False)
        rows.append({**row, **{split: round(100 * s["mean"], 1) for split, s in result["summary"].items()}})
        print(json.dumps(rows[-1]), flush=True)

    for task in args.tasks:
        data = read_labelled(args.probes / TASKS[task] / "manifest.csv")
        plan = make_plan(data)
        probe(data, plan, logmel_vectors(data), task=task, encoder=LOGMEL, block="-", pooling="-")
        for name, spec in encoders.items():
            grids, columns = token_grids(spec, data)
            for block in args.blocks:
                for pooling in args.poolings:
                    probe(data, plan, readout_vectors(grids, columns, block, pooling), task=task, encoder=name,
                          block=block, pooling=pooling)
    lines = [f"Standardisation: {args.standardise}.", "",
             "| task | block | pooling | pretrained valid / test | random valid / test | log-mel valid / test |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        if row["encoder"] != "pretrained":
            continue
        twin = next(r for r in rows if r["encoder"] == "random" and all(r[k] == row[k] for k in ("task", "block", "pooling")))
        logmel = next(r for r in rows if r["encoder"] == LOGMEL and r["task"] == row["task"])
        cells = [" / ".join(str(r.get(split, "-")) for split in ("valid", "test")) for r in (row, twin, logmel)]
        lines.append(f"| {row['task']} | {row['block']} | {row['pooling']} | {' | '.join(cells)} |")
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps({"standardise": args.standardise, "rows": rows}, indent=1))
        args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
