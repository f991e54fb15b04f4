"""Export an encoder (from a run, a training checkpoint or an official file) to a self-contained directory.

The `ssamba export` command (its options and examples) is :mod:`ssamba.commands.export`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
from pathlib import Path
from typing import Any

import ssamba
from ssamba.audio.fbank import FeatureConfig, fbank
from ssamba.defaults import DEFAULT_OPSET, ONNX_FILE
from ssamba.interop.checkpoints import (
    CONFIG_FILE,
    EXPORT_FORMAT,
    EXPORT_VERSION,
    WEIGHTS_FILE,
    Checkpoint,
    load_checkpoint,
)
from ssamba.interop.onnx import export_onnx

CARD_FILE = "README.md"
_HASH_CHUNK = 1 << 20
NORMALISATION_FORMULA = "(fbank - mean) / (2 * std)"
LENGTH_RULE = "zero-padded or cut at the end to target_length frames"

# config.json, key by key: the schema documented in every model card.
CONFIG_SCHEMA: tuple[tuple[str, str], ...] = (
    ("format, version", f'"{EXPORT_FORMAT}" and the schema version ({EXPORT_VERSION})'),
    ("input.name", '"fbank": the model input is a normalised log-mel filterbank, not a waveform'),
    ("input.shape, input.dtype", '["batch", target_length, num_mel_bins], "float32"'),
    ("input.sample_rate", "Hz of the mono waveform the fbank is computed from"),
    ("input.waveform_mean_removal", "true: the clip's mean is subtracted from the waveform first"),
    (
        "input.fbank_options",
        "every option of Kaldi's compute-fbank / torchaudio.compliance.kaldi.fbank "
        "(torchaudio's names; frame_length/frame_shift in ms)",
    ),
    ("input.target_length, input.length_rule", "frames the encoder takes and how a clip is fitted to them"),
    ("input.normalisation", f'mean, std and formula: {NORMALISATION_FORMULA}'),
    ("outputs", "token features and pooled embedding: shape and meaning"),
    ("encoder", "ssamba EncoderConfig fields (architecture)"),
    ("features", "ssamba FeatureConfig fields (the same recipe, as ssamba stores it)"),
    ("pos_embed_rule, provenance", "position-embedding adaptation rule; where the weights came from"),
)


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


def full_fbank_options(features: FeatureConfig) -> dict[str, object]:
    """Every Kaldi fbank option with the value ``features`` uses (defaults included), by torchaudio's names."""
    signature = inspect.signature(fbank).parameters.values()
    defaults = {p.name: p.default for p in signature if p.kind is inspect.Parameter.KEYWORD_ONLY}
    return {**defaults, **features.kaldi_options}


def input_spec(features: FeatureConfig) -> dict[str, object]:
    """The model input, completely: what a project without ssamba needs to reproduce it."""
    return {
        "name": "fbank",
        "description": "normalised Kaldi log-mel filterbank of a mono waveform (not the waveform itself)",
        "shape": ["batch", features.target_length, features.num_mel_bins],
        "dtype": "float32",
        "sample_rate": features.sample_rate,
        "waveform_mean_removal": True,
        "fbank_options": full_fbank_options(features),
        "target_length": features.target_length,
        "length_rule": LENGTH_RULE,
        "normalisation": {"mean": features.mean, "std": features.std, "formula": NORMALISATION_FORMULA},
    }


def output_spec(checkpoint: Checkpoint) -> dict[str, object]:
    enc = checkpoint.encoder_config
    pooling = "mean over patch tokens (CLS excluded)" if enc.pool == "mean" else "the CLS token"
    tokens = f"token features after the final norm; patches frequency-major, CLS at {enc.cls_position}"
    return {
        "tokens": {"shape": ["batch", enc.num_patches + enc.num_cls_tokens, enc.embed_dim], "description": tokens},
        "embedding": {"shape": ["batch", enc.embed_dim], "description": f"clip embedding: {pooling}"},
    }


def onnx_metadata(config: dict[str, Any]) -> dict[str, str]:
    """What ``model.onnx`` carries in ``metadata_props``: the input recipe of ``config.json``."""
    spec = config["input"]
    frames, bins = spec["target_length"], spec["shape"][2]
    return {
        "input": f"fbank: {spec['description']}, float32 (batch, {frames}, {bins}); fixed length {frames} frames",
        "target_length": str(frames),
        "num_mel_bins": str(bins),
        "sample_rate": str(spec["sample_rate"]),
        "waveform_mean_removal": json.dumps(spec["waveform_mean_removal"]),
        "fbank_options": json.dumps(spec["fbank_options"], sort_keys=True),
        "length_rule": spec["length_rule"],
        "normalisation": json.dumps(spec["normalisation"]),
        "outputs": json.dumps(config["outputs"]),
        "ssamba_version": ssamba.__version__,
    }


def _model_card(checkpoint: Checkpoint, config: dict[str, Any], num_params: int, onnx: bool) -> str:
    enc, feat, prov = checkpoint.encoder_config, checkpoint.features, config["provenance"]
    f_patches, t_patches = enc.grid
    options, outputs = config["input"]["fbank_options"], config["outputs"]
    n_tokens = enc.num_patches + enc.num_cls_tokens
    seconds = (feat.target_length - 1) * feat.frame_shift_ms / 1000 + feat.frame_length_ms / 1000
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
            "The input is a normalised log-mel filterbank `fbank` of shape "
            f"(batch, {feat.target_length}, {feat.num_mel_bins}), float32 -- not a waveform:"
        ),
        "",
        f"1. mono audio at {feat.sample_rate} Hz; subtract the clip's mean from the waveform",
        (
            f"2. Kaldi fbank (`torchaudio.compliance.kaldi.fbank` with these options): {feat.num_mel_bins} mel bins, "
            f"window {options['window_type']}, frame length {options['frame_length']:g} ms, "
            f"frame shift {options['frame_shift']:g} ms, htk_compat {options['htk_compat']}, "
            f"dither {options['dither']:g}, use_energy {options['use_energy']}, "
            f"preemphasis {options['preemphasis_coefficient']:g}, remove_dc_offset {options['remove_dc_offset']}, "
            f"low_freq {options['low_freq']:g} Hz, high_freq {options['high_freq']:g} (<= 0: offset from Nyquist); "
            "all options in `config.json` under `input.fbank_options`"
        ),
        f"3. {feat.target_length} frames ({seconds:g} s of audio): {LENGTH_RULE}",
        f"4. normalised as (fbank - ({feat.mean})) / (2 * {feat.std})",
        "",
        "## Output",
        "",
        f"- `encoder(fbank)`: (batch, {n_tokens}, {enc.embed_dim}) {outputs['tokens']['description']}",
        f"- `encoder.embed(fbank)`: (batch, {enc.embed_dim}), {outputs['embedding']['description']}",
        "",
        "## Usage",
        "",
        "```python",
        "import ssamba",
        "encoder = ssamba.load_encoder('THIS_DIRECTORY')",
        "clip = encoder.embed(encoder.features(ssamba.load_audio('clip.wav'))[None])  # (1, D)",
        "```",
        "",
        "Or from the shell: `ssamba embed AUDIO_DIR --checkpoint THIS_DIRECTORY --out embeddings/`.",
        "",
    ]
    if onnx:
        lines += [
            f"## ONNX (`{ONNX_FILE}`)",
            "",
            (
                f"- input `fbank`: float32 (batch, {feat.target_length}, {feat.num_mel_bins}), the normalised filterbank "
                f"above, not a waveform; the length is fixed at {feat.target_length} frames (only the batch axis is dynamic)"
            ),
            "- outputs `tokens` and `embedding` as above",
            "- the graph's `metadata_props` repeat the input recipe: `input`, `target_length`, `num_mel_bins`, `sample_rate`, "
            "`waveform_mean_removal`, `fbank_options` (JSON), `length_rule`, `normalisation` (JSON), `outputs` (JSON)",
            "",
        ]
    lines += [
        "## config.json",
        "",
        "Plain JSON, readable without ssamba:",
        "",
        *[f"- `{key}`: {meaning}" for key, meaning in CONFIG_SCHEMA],
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
        "input": input_spec(checkpoint.features),
        "outputs": output_spec(checkpoint),
        "encoder": {**checkpoint.encoder_config.to_dict(), "scan_backend": None},
        "features": checkpoint.features.to_dict(),
        "pos_embed_rule": checkpoint.pos_embed_rule,
        "provenance": _provenance(checkpoint),
    }
    state = {k: v.detach().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    num_params = sum(p.numel() for p in encoder.parameters())
    (out / CARD_FILE).write_text(_model_card(checkpoint, config, num_params, onnx))
    if onnx:
        export_onnx(encoder, out / ONNX_FILE, opset=opset, metadata=onnx_metadata(config))
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
