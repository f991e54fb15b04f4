"""Linear probe of frozen encoders: embed every clip once (cached), fit logistic regression, report accuracy or mAP.

examples:
  ssamba probe --encoder exp/demo/export --manifest esc50.csv --folds 5 --target-length 512
  ssamba probe --encoder exp/demo/export --encoder random:ssamba-tiny --encoder logmel --manifest clips.csv
  ssamba probe --encoder amba_tiny_400.pth --manifest fsd.csv --task multilabel --layer all --pooling both
  ssamba probe --encoder runs/pretrain --manifest train=tr.json --manifest valid=va.json \\
      --manifest test=te.json --class-table class_labels_indices.csv --task multilabel
  ssamba probe --encoder export/ --manifest long_clips.csv --clip windows --window-seconds 10
  ssamba probe --encoder "random:ssamba-tiny:depth=2,embed_dim=64" --manifest clips.csv --seed 1
  ssamba probe --encoder exp/demo/export --encoder random:ssamba-tiny --manifest keywords.csv --layer all --pooling freq
  ssamba probe --encoder exp/demo/export --encoder random:ssamba-tiny --manifest foley.csv --layer all last

Evaluation follows the manifest (see ``ssamba.data.labelled`` for the format):
  * a ``split`` column: fit on train, choose the regularisation C on valid (by inner folds of train
    when there is no valid split), report valid and test;
  * a ``fold`` column: each fold is the test set once (C by inner folds of the others);
  * otherwise ``--folds N``: N folds drawn over ``group`` (each clip its own group without one),
    stratified by class for single-label sets.
A group never appears on both sides: a manifest where it would is an error naming the group.
With several ``--layer`` readouts, each fit (each fold) also chooses the readout the way it chooses C:
the one whose best C scores highest on the valid split or the inner folds (ties: the first listed).

Each clip is embedded once per encoder and readout (``--layer``, ``--pooling``, ``--clip``) and cached
under ``--cache`` (keyed by encoder weights digest, feature config, readout, file path/size/mtime and
segment); reruns only fit. Embeddings are standardised on the training clips, then an L2-regularised
logistic regression (scikit-learn; one-vs-rest for multi-label) is fitted. Encoders: a checkpoint any
``ssamba.load_encoder`` reads, ``random:PRESET[:field=value,...]`` (seeded random init, the
no-pretraining control) or ``logmel`` (per-mel-bin mean, std and mean |change| of a 64-bin log-mel, a
hand-crafted baseline).
Results (per split/fold, mean and spread, clips/s embedded, fit time) are printed and written to ``--output``.
"""

from __future__ import annotations

import argparse

from ssamba.defaults import DEFAULT_BATCH_SIZE, DEFAULT_C_GRID, DEFAULT_WINDOW_SECONDS, PROBE_POOLINGS, default_cache_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", action="append", required=True,
                        help="checkpoint/export/run, random:PRESET[:field=value,...] or logmel; repeat to compare encoders")
    parser.add_argument("--manifest", action="append", required=True,
                        help="labelled CSV manifest, SSAST JSON list or labelled shard folder; several as SPLIT=FILE")
    parser.add_argument("--class-table", help="class_labels_indices.csv (SSAST JSON lists)")
    parser.add_argument("--task", choices=("single", "multilabel"), default=None,
                        help="single-label (accuracy) or multilabel (mAP); default: from the labels")
    parser.add_argument("--folds", type=int, default=None, help="cross-validate over N folds (fold column, or drawn over groups)")
    parser.add_argument("--layer", nargs="+", default=["last"],
                        help="'last' (default), 'all' (per-block means concatenated) or a block number; several: "
                             "each fit keeps the one whose best C scores highest on the valid split or inner folds")
    parser.add_argument("--pooling", choices=PROBE_POOLINGS, default="mean",
                        help="patch-token mean (default), CLS, both, or freq (per frequency row of patches, the mean over "
                             "the clip's time columns, rows concatenated)")
    parser.add_argument("--clip", choices=("pad", "windows"), default="pad",
                        help="pad/crop each clip to --target-length (default), or average sliding windows")
    parser.add_argument("--target-length", type=int, default=None, help="--clip pad: input frames (default: the encoder's)")
    parser.add_argument("--window-seconds", type=float, default=DEFAULT_WINDOW_SECONDS, help="--clip windows: window length (default 10)")
    parser.add_argument("--c-grid", type=lambda s: [float(v) for v in s.split(",")], default=list(DEFAULT_C_GRID),
                        help="comma-separated inverse L2 strengths to choose from (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random encoders, drawn folds and the solver")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="windows per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--cache", default=None, help=f"embedding cache folder (default {default_cache_dir()})")
    parser.add_argument("--no-cache", action="store_true", help="embed without reading or writing the cache")
    parser.add_argument("--output", default="probe_results.json", help="results JSON (default %(default)s)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from ssamba.train import probe

    return probe.main(args)
