"""Read any supported checkpoint into an :class:`AudioMambaEncoder` (and the pretraining heads).

Supported layouts (detected from the file's keys, never from its name):

``ssamba-encoder``
    An export directory of this package (``config.json`` + ``model.safetensors``, see
    :mod:`ssamba.interop.export`), or the ``model.safetensors`` file inside one.
``ssamba-train``
    A training checkpoint of this package (``{"format": "ssamba-train", ...}``), or a run directory
    (``checkpoints/best.pt`` when present, else ``checkpoints/last.pt``).
``ssamba-official``
    A checkpoint released by the SSAMBA authors (``amba_{tiny,small,base}_{250,300,400}.pth``): a
    ``DataParallel`` state dict with keys ``module.v.*`` (the Vim encoder), ``module.cpredlayer.*``,
    ``module.gpredlayer.*``, ``module.mask_embed`` and the pretraining input size
    ``module.p_input_fdim`` / ``module.p_input_tdim``. Vim's classification head ``v.head`` is built
    and saved by the original but never used; it is the only tensor skipped.
``aum``
    An Audio Mamba (AuM) classifier state dict (``pos_embed.pos_embed``, RMSNorm, CLS in the middle),
    with or without the ``module.`` prefix; its classification ``head`` is not part of the encoder.

The architecture is inferred from tensor shapes: width and patch shape from the patch projection,
depth from the layer indices, ``d_state``/``d_conv``/``expand``/``dt_rank`` from the mixer, the
bidirectional variant from the backward-branch tensors (``conv1d_b``: Bi-Bi "v2"; ``A_b_log`` only:
Fo-Bi "v1"; neither: "none"), LayerNorm vs RMSNorm from the presence of norm biases. The input size
comes from ``p_input_*`` (SSAMBA) or, for AuM, from the position-embedding length on AuM's 128 mel
bins with stride = patch size (what every AuM recipe uses). The computation follows the checkpoint's
family: SSAMBA = Vim layer pairing, CLS first, final norm applied twice, mean over patch tokens;
AuM = sequential layers, middle CLS, one final norm, CLS pooling, fp32 residual.

Key accounting is strict: every tensor in the file is loaded, or known to be unused (listed in
:attr:`Checkpoint.unused` with the reason); anything else is an error naming the keys.

Input-size adaptation (``target_length``, ``fstride``, ``tstride``) follows the original fine-tuning
code: the patch kernel is reused with the new stride and the patch part of the position embedding is
laid out as (D, f_patches, t_patches) and resized, time axis first -- for the SSAMBA family a centred
crop when it shrinks and bilinear interpolation (``align_corners=False``, no antialias) when it grows,
then the frequency axis likewise; for AuM bilinear resampling with antialias, as AuM's loader does.
CLS entries are kept unchanged. (Where the original hard-codes 8 frequency rows, or ends the
frequency crop at the time size, this code uses the true sizes; both agree on every real setting.)
"""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from ssamba.audio.fbank import FeatureConfig
from ssamba.fields import dataclass_from_dict
from ssamba.models.encoder import AudioMambaEncoder, EncoderConfig, grid_size

Layout = Literal["ssamba-encoder", "ssamba-train", "ssamba-official", "aum"]
PosEmbedRule = Literal["ssamba", "aum"]

EXPORT_FORMAT = "ssamba-encoder"
EXPORT_VERSION = 1
TRAIN_FORMAT = "ssamba-train"
TRAIN_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RUN_CHECKPOINTS = ("checkpoints/best.pt", "checkpoints/last.pt")

AUM_NUM_MEL_BINS = 128
"""AuM's mel bins (``--melbins`` default, every released model); AuM files do not store the input size."""
DATA_PARALLEL_PREFIX = "module."
HEAD_PREFIXES = ("cpredlayer.", "gpredlayer.")
MASK_EMBED = "mask_embed"
_LAYER_KEY = re.compile(r"^layers\.(\d+)\.(.+)$")


class CheckpointError(ValueError):
    """A file could not be read as a checkpoint of a supported layout; the message says why."""


@dataclass
class Checkpoint:
    """An encoder (our parameter names) and everything known about it, read from one file."""

    layout: Layout
    source: Path
    encoder_config: EncoderConfig
    encoder_state: dict[str, Tensor]
    features: FeatureConfig
    head_state: dict[str, Tensor] = field(default_factory=dict)
    """``mask_embed`` and ``{c,g}predlayer.*`` of a pretraining checkpoint (empty otherwise)."""
    objective_config: dict[str, Any] | None = None
    unused: dict[str, str] = field(default_factory=dict)
    """Tensors of the file deliberately not loaded, with the reason."""
    pos_embed_rule: PosEmbedRule = "ssamba"
    provenance: dict[str, Any] = field(default_factory=dict)

    def build_encoder(self) -> AudioMambaEncoder:
        """A fresh encoder with these weights (strict) and this checkpoint's features, in eval mode."""
        encoder = AudioMambaEncoder(self.encoder_config, self.features)
        _load_strict(encoder, self.encoder_state, self.source)
        return encoder.eval()


# ------------------------------------------------------------------------------------- reading files


def _numpy_array_globals() -> list[Any]:
    """What unpickling plain numpy arrays needs (training checkpoints keep numpy RNG state as arrays)."""
    import numpy as np

    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25 pickles arrays with these dtype classes
    dtype_classes = [getattr(dtypes, name) for name in dir(dtypes) if name.endswith("DType")] if dtypes else []
    return [multiarray._reconstruct, np.ndarray, np.dtype, *dtype_classes]


def _torch_load(path: Path) -> Any:
    """torch.load on CPU: tensors, containers and numpy arrays only; full unpickling (with a warning)
    when the file pickles other objects."""
    unreadable = (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, AttributeError, ImportError)
    try:
        with torch.serialization.safe_globals(_numpy_array_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except unreadable as err:
        if "Weights only load failed" not in str(err):
            raise CheckpointError(f"{path}: not a checkpoint (PyTorch could not read it: {err})") from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except unreadable as err:
        raise CheckpointError(f"{path}: not a checkpoint (PyTorch could not unpickle it: {err})") from err
    warnings.warn(f"{path}: holds pickled Python objects besides tensors (e.g. optimiser or RNG state); unpickled it fully -- only load files you trust", stacklevel=3)
    return obj


def _resolve_source(path: Path) -> Path:
    """The file to read for ``path`` (a file, an export directory or a run directory)."""
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_file():
        return path
    if (path / CONFIG_FILE).is_file():
        return path / CONFIG_FILE
    for name in RUN_CHECKPOINTS:
        if (path / name).is_file():
            return path / name
    raise CheckpointError(
        f"{path}: directory is neither an export directory ({CONFIG_FILE} + {WEIGHTS_FILE}) "
        f"nor a training run ({' or '.join(RUN_CHECKPOINTS)})"
    )


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read any supported checkpoint (see the module docstring) without changing its input size."""
    source = _resolve_source(Path(path))
    if source.name == CONFIG_FILE or source.suffix == ".safetensors":
        return _read_export(source.parent)
    obj = _torch_load(source)
    if isinstance(obj, dict) and "format" in obj:
        return _read_train(obj, source)
    state = _state_dict_of(obj, source)
    if "v.patch_embed.proj.weight" in state:
        return _read_official(state, source)
    if "pos_embed.pos_embed" in state:
        return _read_aum(state, source)
    if "patch_embed.proj.weight" in state or "encoder.patch_embed.proj.weight" in state:
        raise CheckpointError(
            f"{source}: a bare state dict with this package's parameter names but no encoder config; "
            "load the training checkpoint (format 'ssamba-train') or an export directory instead"
        )
    raise CheckpointError(
        f"{source}: unknown checkpoint layout (expected an ssamba export/training checkpoint, an official SSAMBA "
        f"checkpoint with 'module.v.*' keys, or an AuM checkpoint with 'pos_embed.pos_embed'); first keys: {_preview(state)}"
    )


def _preview(keys: Any, count: int = 6) -> str:
    names = list(keys)
    return ", ".join(names[:count]) + (f", ... ({len(names)} in all)" if len(names) > count else "") if names else "(none)"


def _state_dict_of(obj: Any, source: Path) -> dict[str, Tensor]:
    """The flat tensor dict of a loaded file: itself, or its 'state_dict'/'model' entry, prefix stripped."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    if not any(isinstance(v, Tensor) for v in obj.values()):
        nested = [k for k in ("state_dict", "model") if isinstance(obj.get(k), dict)]
        if not nested:
            raise CheckpointError(f"{source}: holds no tensors at the top level and no 'state_dict'/'model' entry; keys: {_preview(obj)}")
        obj = obj[nested[0]]
    not_tensors = [k for k, v in obj.items() if not isinstance(v, Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: entries that are not tensors: {_preview(not_tensors)}")
    prefixed = [k.startswith(DATA_PARALLEL_PREFIX) for k in obj]
    if any(prefixed) and not all(prefixed):
        raise CheckpointError(f"{source}: some keys carry the DataParallel prefix '{DATA_PARALLEL_PREFIX}' and some do not")
    if all(prefixed) and prefixed:
        return {k[len(DATA_PARALLEL_PREFIX) :]: v for k, v in obj.items()}
    return dict(obj)


def _features_from_dict(values: dict[str, Any], source: Path) -> FeatureConfig:
    try:
        return dataclass_from_dict(FeatureConfig, values)
    except ValueError as err:
        raise CheckpointError(f"{source}: {err}") from err


def _encoder_config_from_dict(values: Any, source: Path, name: str) -> EncoderConfig:
    if not isinstance(values, dict):
        raise CheckpointError(f"{source}: '{name}' must be a dict of EncoderConfig fields, got {type(values).__name__}")
    try:
        return EncoderConfig.from_dict(values)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{source}: invalid '{name}': {err}") from err


def _read_export(directory: Path) -> Checkpoint:
    from safetensors.torch import load_file

    config_path, weights_path = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise CheckpointError(f"{directory}: export directory lacks {required.name}")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{config_path}: not valid JSON ({err})") from err
    if not isinstance(config, dict) or config.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{config_path}: expected \"format\": \"{EXPORT_FORMAT}\", got {config.get('format') if isinstance(config, dict) else config!r}")
    if config.get("version") != EXPORT_VERSION:
        raise CheckpointError(f"{config_path}: unsupported export version {config.get('version')!r} (this ssamba reads version {EXPORT_VERSION})")
    try:
        state = load_file(str(weights_path))
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise CheckpointError(f"{weights_path}: not a readable safetensors file ({err})") from err
    encoder_config = _encoder_config_from_dict(config.get("encoder"), config_path, "encoder")
    features = _features_from_dict(config.get("features", {}), config_path)
    return Checkpoint(
        layout="ssamba-encoder",
        source=directory,
        encoder_config=encoder_config,
        encoder_state=state,
        features=features,
        pos_embed_rule=config.get("pos_embed_rule", "ssamba"),
        provenance=dict(config.get("provenance", {})),
    )


def _read_train(obj: dict[str, Any], source: Path) -> Checkpoint:
    if obj.get("format") != TRAIN_FORMAT:
        raise CheckpointError(f"{source}: unknown checkpoint format {obj.get('format')!r} (expected '{TRAIN_FORMAT}')")
    if obj.get("version") != TRAIN_VERSION:
        raise CheckpointError(f"{source}: unsupported training checkpoint version {obj.get('version')!r} (this ssamba reads version {TRAIN_VERSION})")
    for required in ("model", "encoder_config"):
        if required not in obj:
            raise CheckpointError(f"{source}: training checkpoint lacks '{required}'")
    model = obj["model"]
    if not isinstance(model, dict):
        raise CheckpointError(f"{source}: 'model' must be a state dict, got {type(model).__name__}")
    encoder_state, head_state, unmapped = {}, {}, []
    for key, value in model.items():
        if key.startswith("encoder."):
            encoder_state[key[len("encoder.") :]] = value
        elif key == MASK_EMBED or key.startswith(HEAD_PREFIXES):
            head_state[key] = value
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{source}: unmapped tensors in 'model': {_preview(unmapped, 20)}")
    features = obj.get("features")
    return Checkpoint(
        layout="ssamba-train",
        source=source,
        encoder_config=_encoder_config_from_dict(obj["encoder_config"], source, "encoder_config"),
        encoder_state=encoder_state,
        features=_features_from_dict(features, source) if isinstance(features, dict) else FeatureConfig(),
        head_state=head_state,
        objective_config=obj.get("objective_config"),
        provenance={"step": obj.get("step")},
    )


# --------------------------------------------------------------------------- architecture inference


def _infer_architecture(state: dict[str, Tensor], source: Path) -> dict[str, Any]:
    """EncoderConfig fields that tensor shapes determine, from a state dict with our (Vim's) names."""

    def need(key: str) -> Tensor:
        if key not in state:
            raise CheckpointError(f"{source}: missing tensor '{key}'")
        return state[key]

    proj = need("patch_embed.proj.weight")
    if proj.ndim != 4 or proj.shape[1] != 1:
        raise CheckpointError(f"{source}: patch_embed.proj.weight must be (D, 1, fshape, tshape) for a 1-channel spectrogram, got {tuple(proj.shape)}")
    dim, _, fshape, tshape = proj.shape
    per_layer: dict[int, set[str]] = {}
    for key in state:
        match = _LAYER_KEY.match(key)
        if match:
            per_layer.setdefault(int(match.group(1)), set()).add(match.group(2))
    if not per_layer:
        raise CheckpointError(f"{source}: no 'layers.<i>.*' tensors")
    depth = max(per_layer) + 1
    missing_layers = sorted(set(range(depth)) - set(per_layer))
    if missing_layers:
        raise CheckpointError(f"{source}: layers {missing_layers} are missing (found indices up to {depth - 1})")
    every = set().union(*per_layer.values())
    for index in sorted(per_layer):
        if per_layer[index] != every:
            raise CheckpointError(f"{source}: layer {index} lacks tensors {sorted(every - per_layer[index])} that other layers have")
    first = per_layer[0]

    in_proj = need("layers.0.mixer.in_proj.weight")
    d_inner = in_proj.shape[0] // 2
    if d_inner % dim:
        raise CheckpointError(f"{source}: in_proj width {d_inner} is not a multiple of the embedding width {dim}")
    dt_rank = need("layers.0.mixer.dt_proj.weight").shape[1]
    if "mixer.conv1d_b.weight" in first:
        bimamba = "v2"
    elif "mixer.A_b_log" in first:
        bimamba = "v1"
    else:
        bimamba = "none"
    norm = "layernorm" if "norm.bias" in first else "rmsnorm"
    final_norm = "layernorm" if "norm_f.bias" in state else "rmsnorm"
    if final_norm != norm:
        raise CheckpointError(f"{source}: the block norms are {norm} but norm_f is {final_norm}")
    return {
        "embed_dim": dim,
        "depth": depth,
        "d_state": need("layers.0.mixer.A_log").shape[1],
        "d_conv": need("layers.0.mixer.conv1d.weight").shape[-1],
        "expand": d_inner // dim,
        "dt_rank": None if dt_rank == math.ceil(dim / 16) else dt_rank,
        "bimamba": bimamba,
        "norm": norm,
        "fshape": fshape,
        "tshape": tshape,
        "fstride": fshape,
        "tstride": tshape,
    }


def _split_known(state: dict[str, Tensor], unused: dict[str, str]) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, str]]:
    """Split into encoder tensors, pretraining-head tensors and the known-unused ones present."""
    encoder, heads, skipped = {}, {}, {}
    for key, value in state.items():
        if key in unused:
            skipped[key] = unused[key]
        elif key == MASK_EMBED or key.startswith(HEAD_PREFIXES):
            heads[key] = value
        else:
            encoder[key] = value
    return encoder, heads, skipped


def _read_official(state: dict[str, Tensor], source: Path) -> Checkpoint:
    unused = {
        "v.head.weight": "Vim's classification head, built but never used by SSAMBA",
        "v.head.bias": "Vim's classification head, built but never used by SSAMBA",
        "p_input_fdim": "pretraining input size (read into the config)",
        "p_input_tdim": "pretraining input size (read into the config)",
    }
    for key in ("p_input_fdim", "p_input_tdim"):
        if key not in state:
            raise CheckpointError(f"{source}: official SSAMBA checkpoint lacks 'module.{key}' (the pretraining input size)")
    num_mel_bins, target_length = int(state["p_input_fdim"].item()), int(state["p_input_tdim"].item())
    rest, heads, skipped = _split_known(state, unused)
    not_vim = [k for k in rest if not k.startswith("v.")]
    if not_vim:
        raise CheckpointError(f"{source}: unmapped tensors (not part of SSAMBA's 'v.' encoder or its heads): {_preview(not_vim, 20)}")
    encoder_state = {k[2:]: v for k, v in rest.items()}
    arch = _infer_architecture(encoder_state, source)
    if arch["depth"] % 2:
        raise CheckpointError(f"{source}: SSAMBA pairs its layers (Vim if_bidirectional) but the checkpoint has an odd depth {arch['depth']}")
    config = _make_config(
        source,
        arch,
        num_mel_bins=num_mel_bins,
        target_length=target_length,
        divide_out=True,
        residual_in_fp32=False,
        layer_pairing=True,
        double_final_norm=True,
        cls_position="head" if "cls_token" in encoder_state else "none",
        pool="mean",
        drop_path_rate=0.1,
    )
    _check_pos_embed_length(encoder_state, config, source)
    return Checkpoint(
        layout="ssamba-official",
        source=source,
        encoder_config=config,
        encoder_state=encoder_state,
        features=FeatureConfig(num_mel_bins=num_mel_bins, target_length=target_length),
        head_state=heads,
        unused=skipped,
        provenance={"features": "SSAMBA pretraining recipe (AudioSet + LibriSpeech statistics)"},
    )


def _read_aum(state: dict[str, Tensor], source: Path) -> Checkpoint:
    unused = {
        "head.weight": "AuM's classification head (not part of the encoder)",
        "head.bias": "AuM's classification head (not part of the encoder)",
    }
    rest, heads, skipped = _split_known(state, unused)
    if heads:
        raise CheckpointError(f"{source}: AuM checkpoint with pretraining-head tensors {_preview(heads)}; unknown layout")
    encoder_state = {("pos_embed" if k == "pos_embed.pos_embed" else k): v for k, v in rest.items()}
    arch = _infer_architecture(encoder_state, source)
    has_cls = "cls_token" in encoder_state
    tokens = encoder_state["pos_embed"].shape[1] - int(has_cls)
    f_patches = grid_size(AUM_NUM_MEL_BINS, arch["tshape"], arch["fshape"], arch["tshape"], arch["fstride"], arch["tstride"])[0]
    if tokens <= 0 or tokens % f_patches:
        raise CheckpointError(
            f"{source}: AuM position embedding has {tokens} patch entries, not a multiple of the {f_patches} "
            f"frequency patches of {AUM_NUM_MEL_BINS} mel bins with {arch['fshape']}x{arch['tshape']} patches"
        )
    t_patches = tokens // f_patches
    target_length = (t_patches - 1) * arch["tstride"] + arch["tshape"]
    config = _make_config(
        source,
        arch,
        num_mel_bins=AUM_NUM_MEL_BINS,
        target_length=target_length,
        divide_out=True,
        residual_in_fp32=True,
        layer_pairing=False,
        double_final_norm=False,
        cls_position="middle" if has_cls else "none",
        pool="cls" if has_cls else "mean",
        drop_path_rate=0.0,
    )
    return Checkpoint(
        layout="aum",
        source=source,
        encoder_config=config,
        encoder_state=encoder_state,
        features=FeatureConfig(num_mel_bins=AUM_NUM_MEL_BINS, target_length=target_length),
        unused=skipped,
        pos_embed_rule="aum",
        provenance={"features": "assumed: AuM's AudioSet statistics (AuM checkpoints do not store them)"},
    )


def _make_config(source: Path, arch: dict[str, Any], **family: Any) -> EncoderConfig:
    try:
        return EncoderConfig(**arch, **family)
    except ValueError as err:
        raise CheckpointError(f"{source}: inferred architecture is invalid: {err}") from err


def _check_pos_embed_length(state: dict[str, Tensor], config: EncoderConfig, source: Path) -> None:
    expected = config.num_cls_tokens + config.num_patches
    found = state["pos_embed"].shape[1] if "pos_embed" in state else None
    if found != expected:
        f, t = config.grid
        raise CheckpointError(
            f"{source}: position embedding has {found} entries but a {config.num_mel_bins}x{config.target_length} input with "
            f"{config.fshape}x{config.tshape} patches gives {f}x{t} = {f * t} patches + {config.num_cls_tokens} CLS "
            "(fine-tuned checkpoints with other strides are not supported)"
        )


def _load_strict(module: torch.nn.Module, state: dict[str, Tensor], source: Path) -> None:
    """load_state_dict with errors that name the file, the missing/unmapped keys and shape mismatches."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unmapped = sorted(set(state) - set(expected))
    if missing or unmapped:
        parts = ([f"missing: {_preview(missing, 20)}"] if missing else []) + ([f"unmapped: {_preview(unmapped, 20)}"] if unmapped else [])
        raise CheckpointError(f"{source}: tensors do not match the inferred architecture; " + "; ".join(parts))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise CheckpointError(f"{source}: tensor shapes do not match the inferred architecture: {'; '.join(wrong[:10])}")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


# ------------------------------------------------------------------------------------- adaptation


def adapt_pos_embed(pos_embed: Tensor, num_prefix: int, src_grid: tuple[int, int], dst_grid: tuple[int, int], rule: PosEmbedRule = "ssamba") -> Tensor:
    """Resize the patch part of a (1, prefix + f*t, D) position embedding to another patch grid.

    The patch part is laid out as (1, D, f, t) (frequency rows) and resized time axis first, then
    frequency (rules in the module docstring); prefix (CLS) entries are kept. Computed in float32.
    """
    (f_src, t_src), (f_dst, t_dst) = src_grid, dst_grid
    if pos_embed.ndim != 3 or pos_embed.shape[1] != num_prefix + f_src * t_src:
        raise ValueError(f"position embedding of shape {tuple(pos_embed.shape)} does not hold {num_prefix} + {f_src}x{t_src} entries")
    if (f_src, t_src) == (f_dst, t_dst):
        return pos_embed.clone()
    dim = pos_embed.shape[-1]
    pos = pos_embed.float()
    prefix = pos[:, :num_prefix]
    grid = pos[:, num_prefix:].transpose(1, 2).reshape(1, dim, f_src, t_src)
    if rule == "aum":
        grid = F.interpolate(grid, size=(f_dst, t_dst), mode="bilinear", align_corners=False, antialias=True)
    elif rule == "ssamba":
        grid = _resize_axis(grid, t_dst, axis=3)
        grid = _resize_axis(grid, f_dst, axis=2)
    else:
        raise ValueError(f"position-embedding rule must be 'ssamba' or 'aum', got {rule!r}")
    patches = grid.reshape(1, dim, f_dst * t_dst).transpose(1, 2)
    return torch.cat([prefix, patches], dim=1).to(pos_embed.dtype)


def _resize_axis(grid: Tensor, size: int, axis: int) -> Tensor:
    """SSAMBA's rule on one axis of (1, D, f, t): centred crop to shrink, bilinear to grow."""
    current = grid.shape[axis]
    if size < current:
        start = current // 2 - size // 2
        return grid.narrow(axis, start, size)
    if size > current:
        target = (size, grid.shape[3]) if axis == 2 else (grid.shape[2], size)
        return F.interpolate(grid, size=target, mode="bilinear", align_corners=False)
    return grid


def adapt_checkpoint(checkpoint: Checkpoint, *, target_length: int | None = None, fstride: int | None = None, tstride: int | None = None) -> Checkpoint:
    """The checkpoint for another input length and/or patch stride (kernel reused, position embedding resized)."""
    old = checkpoint.encoder_config
    changes = {k: v for k, v in {"target_length": target_length, "fstride": fstride, "tstride": tstride}.items() if v is not None}
    if not changes or all(getattr(old, k) == v for k, v in changes.items()):
        return checkpoint
    try:
        new = old.replace(**changes)
    except ValueError as err:
        raise ValueError(f"{checkpoint.source}: cannot adapt the encoder to {changes}: {err}") from err
    state = dict(checkpoint.encoder_state)
    state["pos_embed"] = adapt_pos_embed(state["pos_embed"], old.num_cls_tokens, old.grid, new.grid, checkpoint.pos_embed_rule)
    features = dataclasses.replace(checkpoint.features, target_length=new.target_length)
    provenance = {**checkpoint.provenance, "adapted_from": {k: getattr(old, k) for k in ("target_length", "fstride", "tstride")}}
    return dataclasses.replace(checkpoint, encoder_config=new, encoder_state=state, features=features, provenance=provenance)


# ----------------------------------------------------------------------------------------- public


def load_checkpoint(path: str | Path, *, target_length: int | None = None, fstride: int | None = None, tstride: int | None = None) -> Checkpoint:
    """:func:`read_checkpoint` then :func:`adapt_checkpoint` (when a size or stride is given)."""
    return adapt_checkpoint(read_checkpoint(path), target_length=target_length, fstride=fstride, tstride=tstride)


def load_encoder(path: str | Path, *, target_length: int | None = None, fstride: int | None = None, tstride: int | None = None) -> AudioMambaEncoder:
    """Load the encoder of any supported checkpoint (export dir, training checkpoint/run, official SSAMBA, AuM).

    The architecture comes from the file; ``target_length`` (frames) and ``fstride``/``tstride``
    adapt the input size and patch stride as the original fine-tuning code does. Returned in eval mode:
    ``encoder(fbank)`` gives token features (B, tokens, D), ``encoder.embed(fbank)`` the pooled (B, D),
    and ``encoder.features(wave)`` the input it expects (``encoder.feature_config``: the checkpoint's
    mel bins, length and normalisation statistics).
    """
    return load_checkpoint(path, target_length=target_length, fstride=fstride, tstride=tstride).build_encoder()


def load_pretraining_model(path: str | Path):
    """The masked-patch model (encoder, mask token, ``cpredlayer``/``gpredlayer``) of a pretraining checkpoint.

    Works for official SSAMBA checkpoints and this package's training checkpoints; returned in eval
    mode. ``model.mpc(fbank, mask_ids)`` gives InfoNCE and accuracy, ``model.mpg(fbank, mask_ids)`` the MSE,
    with ``mask_ids`` (B, M) 0-based patch indices on the frequency-major grid (CLS not counted).
    """
    from ssamba.models.masked import (
        EVAL_MASK_PATCH,
        MaskedPatchModel,
        ObjectiveConfig,
        max_cluster_mask_patch,
    )

    checkpoint = read_checkpoint(path)
    if not checkpoint.head_state:
        raise CheckpointError(f"{checkpoint.source}: a '{checkpoint.layout}' checkpoint holds an encoder only, no pretraining heads (mask_embed, cpredlayer, gpredlayer)")
    if checkpoint.objective_config:
        objective = ObjectiveConfig.from_dict(checkpoint.objective_config)
    else:  # official files do not store their mask count: the original's validation setting, capped to the grid
        count = min(EVAL_MASK_PATCH, max_cluster_mask_patch(checkpoint.encoder_config.num_patches))
        objective = ObjectiveConfig(mask_patch=count, eval_mask_patch=count)
    try:
        model = MaskedPatchModel(AudioMambaEncoder(checkpoint.encoder_config), objective)
    except ValueError as err:
        raise CheckpointError(f"{checkpoint.source}: cannot build the pretraining model: {err}") from err
    state = {f"encoder.{k}": v for k, v in checkpoint.encoder_state.items()} | checkpoint.head_state
    _load_strict(model, state, checkpoint.source)
    return model.eval()

