"""Pretrain an Audio Mamba encoder with SSAMBA's masked-patch objective (1 or many processes).

examples:
  ssamba pretrain --config configs/pretrain/ssamba-tiny-400.yaml \\
      data.train_shards=shards/train data.eval_shards=shards/eval run.dir=exp/tiny-400
  ssamba pretrain --config configs/pretrain/ssamba-tiny-400.yaml --resume auto   # continue exp/tiny-400
  ssamba pretrain --config configs/pretrain/ssamba-base-400.yaml --dry-run        # validate, print the config
  torchrun --standalone --nproc_per_node=2 -m ssamba pretrain --config configs/pretrain/ssamba-small-400.yaml
  torchrun --standalone --nproc_per_node=2 -m ssamba pretrain --config configs/pretrain/ssamba-tiny-400.yaml \\
      dist.engine=deepspeed dist.deepspeed_config=configs/deepspeed/zero2.json

Overrides are dotted keys with YAML values (optim.lr=5e-4, model.depth=2, train.precision=bf16).
The run directory (run.dir) receives config.yaml, checkpoints/{last,best,step-*}.pt,
metrics.jsonl and tb/ (tensorboard --logdir RUN/tb); run.lock keeps a second run out of it.
Checkpoints are read weights-only; --unsafe-load allows one that needs full unpickling (trusted files only).
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="YAML config (configs/pretrain/*.yaml); defaults only if omitted")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides with dotted keys, e.g. optim.lr=5e-4 train.max_steps=100")
    parser.add_argument(
        "--resume", default="never", metavar="auto|never|PATH",
        help="auto: continue from the newest readable checkpoint in RUN/checkpoints (last.pt, then step files), "
        "or start fresh when there is none; never (default): refuse a run dir that has checkpoints; or a checkpoint file",
    )
    parser.add_argument(
        "--dry-run", action="store_true",
        help="validate the config, the shard paths and the checkpoint to resume from, print the config, and exit",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.jsonl and TensorBoard)")


def main(args: argparse.Namespace) -> int:
    from ssamba.train import pretrain

    return pretrain.main(args)
