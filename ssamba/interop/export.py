"""Export an encoder (from a run, a training checkpoint or an official file) to a self-contained directory.

The directory holds ``model.safetensors`` (encoder weights only, this package's names),
``config.json`` (encoder config, feature parameters with normalisation statistics, provenance) and
``README.md`` (a short model card); ``--onnx`` adds ``model.onnx``. Load it offline with
``ssamba.load_encoder(OUT_DIR)``.

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
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

import ssamba
from ssamba.interop.checkpoints import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    WEIGHTS_FILE,
    Checkpoint,
    load_checkpoint,
)
from ssamba.interop.onnx import DEFAULT_OPSET, ONNX_EXTRA_HINT, export_onnx

CARD_FILE = "README.md"
ONNX_FILE = "model.onnx"
_HASH_CHUNK = 1 << 20


def _sha256(path: Path) -> str | None:
    """SHA-256 of a file (None for a directory source)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _provenance(checkpoint: Checkpoint) -> dict[str, Any]:
    source = checkpoint.source
    inherited = dict(checkpoint.provenance)
    record = {
        "source_layout": checkpoint.layout,
        "source_file": source.name,
        "source_sha256": _sha256(source),
        "ssamba_version": ssamba.__version__,
        "exported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if checkpoint.unused:
        record["unused_tensors"] = dict(sorted(checkpoint.unused.items()))
    if checkpoint.layout == "ssamba-encoder":  # re-export: keep the original origin
        record["derived_from"] = {k: v for k, v in inherited.items() if k != "adapted_from"}
        inherited = {k: v for k, v in inherited.items() if k == "adapted_from"}
    return {**inherited, **record}


def _model_card(checkpoint: Checkpoint, config: dict[str, Any], num_params: int) -> str:
    enc, feat, prov = checkpoint.encoder_config, checkpoint.features, config["provenance"]
    f_patches, t_patches = enc.grid
    pooling = "mean over patch tokens (CLS excluded)" if enc.pool == "mean" else "the CLS token"
    lines = [
        "# SSAMBA audio encoder",
        "",
        f"Bidirectional Mamba encoder exported by ssamba {ssamba.__version__} from `{prov['source_file']}` ({prov['source_layout']}).",
        "",
        "## Architecture",
        "",
        f"- width {enc.embed_dim}, depth {enc.depth}, d_state {enc.d_state}, expand {enc.expand}, bimamba {enc.bimamba}, {enc.norm}",
        f"- layer pairing: {enc.layer_pairing}, final norm twice: {enc.double_final_norm}, CLS: {enc.cls_position}",
        f"- {enc.fshape}x{enc.tshape} patches, stride {enc.fstride}x{enc.tstride}: {f_patches} x {t_patches} = {enc.num_patches} patches (frequency-major)",
        f"- parameters: {num_params:,}",
        "",
        "## Input",
        "",
        (
            f"- {feat.sample_rate} Hz mono audio, Kaldi fbank with {feat.num_mel_bins} mel bins, {feat.frame_shift_ms:g} ms hop, "
            f"{feat.target_length} frames ({feat.target_length * feat.frame_shift_ms / 1000:g} s; zero-padded or cut at the end)"
        ),
        f"- normalised as (fbank - ({feat.mean})) / (2 * {feat.std})",
        "",
        "## Output",
        "",
        f"- `encoder(fbank)`: (batch, {enc.num_patches + enc.num_cls_tokens}, {enc.embed_dim}) token features after the final norm",
        f"- `encoder.embed(fbank)`: (batch, {enc.embed_dim}), {pooling}",
        "",
        "## Usage",
        "",
        "```python",
        "import ssamba",
        "encoder = ssamba.load_encoder('THIS_DIRECTORY')",
        "```",
        "",
        "Or from the shell: `ssamba embed AUDIO_DIR --checkpoint THIS_DIRECTORY --out embeddings/`.",
        "",
        "## Provenance",
        "",
        "```json",
        json.dumps(prov, indent=2),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_export(checkpoint: Checkpoint, out_dir: str | Path, *, onnx: bool = False, opset: int = DEFAULT_OPSET, overwrite: bool = False) -> Path:
    """Write ``checkpoint``'s encoder as an export directory; returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    outputs = [out / name for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, ONNX_FILE)]
    existing = [p.name for p in outputs if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out}: already holds {', '.join(existing)}; choose another directory or pass overwrite=True (--overwrite)")
    encoder = checkpoint.build_encoder()  # strict load: validates the state before anything is written
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "encoder": {**checkpoint.encoder_config.to_dict(), "scan_backend": None},
        "features": checkpoint.features.to_dict(),
        "pos_embed_rule": checkpoint.pos_embed_rule,
        "provenance": _provenance(checkpoint),
    }
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    num_params = sum(p.numel() for p in encoder.parameters())
    (out / CARD_FILE).write_text(_model_card(checkpoint, config, num_params))
    if onnx:
        export_onnx(encoder, out / ONNX_FILE, opset=opset)
    elif (out / ONNX_FILE).exists():
        (out / ONNX_FILE).unlink()  # a stale graph of other weights must not stay next to these
    return out


def export_encoder(
    source: str | Path,
    out_dir: str | Path,
    *,
    target_length: int | None = None,
    fstride: int | None = None,
    tstride: int | None = None,
    onnx: bool = False,
    opset: int = DEFAULT_OPSET,
    overwrite: bool = False,
) -> Path:
    """Export the encoder of any supported checkpoint (optionally adapted to another size/stride)."""
    checkpoint = load_checkpoint(source, target_length=target_length, fstride=fstride, tstride=tstride)
    return write_export(checkpoint, out_dir, onnx=onnx, opset=opset, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- CLI


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


def run_export(source: Checkpoint, args: argparse.Namespace) -> int:
    """Write the export for the already-read ``source`` and report it."""
    out = write_export(source, args.out_dir, onnx=args.onnx, opset=args.opset, overwrite=args.overwrite)
    enc = source.encoder_config
    print(f"exported {source.layout} checkpoint {source.source} -> {out}")
    print(f"  encoder: width {enc.embed_dim}, depth {enc.depth}, {enc.norm}, bimamba {enc.bimamba}, input {enc.num_mel_bins}x{enc.target_length}, stride {enc.fstride}x{enc.tstride}")
    for key, reason in sorted(source.unused.items()):
        print(f"  not exported: {key} ({reason})")
    return 0


def main(args: argparse.Namespace) -> int:
    checkpoint = load_checkpoint(args.source, target_length=args.target_length, fstride=args.fstride, tstride=args.tstride)
    return run_export(checkpoint, args)
