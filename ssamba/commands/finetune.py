"""Fine-tune an encoder (pretrained or random) with a classification head on a labelled manifest.

examples:
  ssamba finetune --config configs/finetune/esc50.yaml model.pretrained=exported/ssamba-tiny run.dir=exp/esc50
  ssamba finetune --config configs/finetune/base.yaml model.pretrained=amba_tiny_400.pth \\
      data.manifest=data/mytask/manifest.csv train.loss=ce train.metric=acc run.dir=exp/mytask
  ssamba finetune --config configs/finetune/base.yaml model.pretrained=none model.preset=ssamba-tiny ...  # control
  ssamba finetune --config configs/finetune/esc50.yaml ... data.folds=5 train.select=fold_average
  ssamba finetune --config configs/finetune/esc50.yaml ... --resume auto      # continue run.dir
  ssamba finetune --config configs/finetune/esc50.yaml ... --dry-run          # validate, print the config
  torchrun --standalone --nproc_per_node=4 -m ssamba finetune --config configs/finetune/audioset.yaml ...

The run directory (run.dir) receives config.yaml, checkpoints/, metrics.jsonl, tb/ (tensorboard
--logdir RUN/tb), predictions/ (per-epoch scores; test-selected.npz: the selected model's test scores,
targets, clip paths and class names), model/ (the selected classifier, `ssamba.load_classifier(RUN/model)`)
and results.json (validation numbers of the selected epoch and ONE test evaluation). With data.folds=K
each fold runs in RUN/fold-<k>/ and RUN/results.json holds every fold and the mean and spread.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config (configs/finetune/*.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides with dotted keys, e.g. optim.lr=5e-4 model.pretrained=none")
    parser.add_argument("--resume", default="never", metavar="auto|never|PATH",
                        help="auto: continue run.dir (finished folds are kept); never (default): refuse a run dir with checkpoints; or a checkpoint file")
    parser.add_argument("--dry-run", action="store_true", help="validate the config and the manifest, print the config resolved, and exit")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl and TensorBoard)")


def main(args: argparse.Namespace) -> int:
    from ssamba.train import finetune

    return finetune.main(args)
