"""Export an encoder (from a run, a training checkpoint or an official file) to a self-contained directory.

The directory holds ``model.safetensors`` (encoder weights only, this package's names),
``config.json`` (encoder config, the complete input recipe -- every fbank option, length,
normalisation -- and provenance; plain JSON a project without ssamba can read, its schema in the
card) and ``README.md`` (the model card); ``--onnx`` adds ``model.onnx``, whose metadata repeats the
input recipe. Load it offline with ``ssamba.load_encoder(OUT_DIR)``.

examples:
  ssamba export runs/pretrain-tiny exported/ssamba-tiny
  ssamba export runs/pretrain-tiny/checkpoints/step-00040000.pt exported/step40k
  ssamba export amba_tiny_400.pth exported/esc50-tiny --target-length 512 --fstride 10 --tstride 10
  ssamba export exported/ssamba-tiny exported/ssamba-tiny-onnx --onnx --target-length 128

ONNX: the input length is fixed at export time (the batch axis is dynamic) and the graph grows with
the number of tokens (see ssamba.interop.onnx); export the window length you will run.
"""

from __future__ import annotations

import argparse

from ssamba.defaults import DEFAULT_OPSET, ONNX_EXTRA_HINT, ONNX_FILE


def add_adaptation_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `ssamba export` and `ssamba import`."""
    parser.add_argument("out_dir", help="output directory (created)")
    parser.add_argument("--target-length", type=int, default=None, help="input frames of the exported encoder (default: the checkpoint's)")
    parser.add_argument("--fstride", type=int, default=None, help="frequency patch stride (default: the checkpoint's; SSAMBA fine-tuning uses 10)")
    parser.add_argument("--tstride", type=int, default=None, help="time patch stride (default: the checkpoint's; SSAMBA fine-tuning uses 10)")
    parser.add_argument("--onnx", action="store_true", help=f"also write {ONNX_FILE} (needs {ONNX_EXTRA_HINT})")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export in OUT_DIR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="run directory, training checkpoint (.pt), export directory, or official SSAMBA/AuM checkpoint")
    add_adaptation_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from ssamba.interop import export

    return export.main(args)
