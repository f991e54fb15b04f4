"""Convert an official SSAMBA or AuM checkpoint into an ssamba export directory.

The architecture (width, depth, patch shape, LayerNorm/RMSNorm, bidirectional variant, pretraining
input size) is read from the file's tensors; nothing is taken from its name. Tensors that are not
part of the encoder are listed (Vim's unused `v.head`, AuM's classifier `head`); the SSAMBA
pretraining heads stay in the original file (use `ssamba.load_pretraining_model` on it).

examples:
  ssamba import amba_tiny_400.pth exported/amba-tiny-400
  ssamba import amba_base_300.pth exported/amba-base-esc50 --target-length 512 --fstride 10 --tstride 10
  ssamba import aum_small_audioset.pth exported/aum-small --onnx --target-length 128
"""

from __future__ import annotations

import argparse

from ssamba.commands.export import add_adaptation_arguments

OFFICIAL_LAYOUTS = ("ssamba-official", "aum")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="official checkpoint: SSAMBA amba_*.pth (module.v.* keys) or an AuM state dict")
    add_adaptation_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from ssamba.interop.checkpoints import CheckpointError, adapt_checkpoint, read_checkpoint
    from ssamba.interop.export import run_export

    checkpoint = read_checkpoint(args.source)
    if checkpoint.layout not in OFFICIAL_LAYOUTS:
        raise CheckpointError(f"{checkpoint.source}: a '{checkpoint.layout}' checkpoint of this package, not an official one; use `ssamba export`")
    checkpoint = adapt_checkpoint(checkpoint, target_length=args.target_length, fstride=args.fstride, tstride=args.tstride)
    return run_export(checkpoint, args)
