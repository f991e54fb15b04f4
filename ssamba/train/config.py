"""Pretraining configuration: YAML files plus ``key=value`` overrides, validated before any work.

A config file is a YAML mapping with the sections of :class:`PretrainConfig` (``run``, ``model``,
``objective``, ``features``, ``data``, ``optim``, ``schedule``, ``train``, ``dist``). A file may
start from another one with ``base: other.yaml`` (path relative to the file); its sections are
merged key by key. Command-line overrides use dotted keys and YAML values::

    ssamba pretrain --config configs/pretrain/ssamba-tiny-400.yaml optim.lr=5e-4 model.depth=2 \\
        data.train_shards=data/shards/train optim.betas=[0.9,0.98]

``model`` holds ``preset`` (an encoder preset such as ``ssamba-tiny``) and any
:class:`~ssamba.models.encoder.EncoderConfig` field to override it; ``objective`` holds
:class:`~ssamba.models.masked.ObjectiveConfig` fields and ``features``
:class:`~ssamba.audio.fbank.FeatureConfig` fields. The encoder's ``num_mel_bins`` and
``target_length`` always come from ``features``.

Every key and value is checked (unknown key, wrong type, out-of-range value, impossible combination)
and the first problem is raised as a :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ssamba.errors import UserError

BASE_KEY = "base"
"""Top-level key of a config file naming the file it extends."""
ENGINES = ("ddp", "deepspeed")
BACKENDS = ("auto", "gloo", "nccl")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16", "fp16")
SCHEDULES = ("plateau", "cosine", "constant")
ENCODER_INPUT_FIELDS = ("num_mel_bins", "target_length")
"""Encoder fields that are taken from the ``features`` section."""


class ConfigError(UserError, ValueError):
    """An invalid configuration: the message names the offending key."""


class _Loader(yaml.SafeLoader):
    """YAML loader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str, source: str) -> Any:
    """Parse YAML text (``source`` names it in errors)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{source}: invalid YAML: {error}") from None


# ------------------------------------------------------------------------------------------ sections


@dataclass
class RunConfig:
    """Where the run lives and how it is seeded."""

    dir: str = "exp/pretrain"
    """Run directory: config.yaml, checkpoints/, metrics.jsonl, tb/."""
    seed: int = 0


@dataclass
class DataConfig:
    """Training and evaluation shards and how they are batched."""

    train_shards: str | dict[str, float] | None = None
    """Shard directory, index file or brace pattern written by ``ssamba shards`` (required), or a
    mapping ``{shards: weight}`` that mixes sources, e.g. ``{shards/audioset: 0.7, shards/librispeech: 0.3}``."""
    eval_shards: str | None = None
    """Held-out shards for evaluation (needed by ``eval_every`` and the plateau schedule)."""
    batch_size: int = 64
    """Clips per process and micro-batch (global batch = batch_size x processes x optim.accumulate)."""
    eval_batch_size: int | None = None
    """Evaluation batch per process; None uses ``batch_size``."""
    num_workers: int = 4
    """Loader worker processes per training process (0 decodes in the training process)."""
    shuffle_buffer: int = 1000
    """Undecoded clips in the streaming shuffle buffer (per source and loader worker)."""
    epoch_length: int | None = None
    """Micro-batches per process in one epoch; None: the shard index's clip count // (batch_size x processes)."""
    eval_max_batches: int | None = None
    """Evaluate on at most this many batches per process (None: the whole eval set)."""


@dataclass
class OptimConfig:
    """AdamW as in SSAMBA (lr 1e-4, weight decay 5e-8, betas 0.95/0.999)."""

    lr: float = 1e-4
    weight_decay: float = 5e-8
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (None: no clipping, as the original)."""
    accumulate: int = 1
    """Micro-batches per optimiser step."""


@dataclass
class ScheduleConfig:
    """Learning-rate schedule: linear warm-up, then plateau (SSAMBA), cosine or constant."""

    name: Literal["plateau", "cosine", "constant"] = "plateau"
    warmup_steps: int = 1000
    """Linear warm-up from lr/warmup_steps to lr over the first optimiser steps."""
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    """Evaluations without improvement of eval accuracy before the lr is multiplied by the factor."""
    plateau_threshold: float = 1e-4
    """Relative improvement of eval accuracy that counts as better."""
    min_lr: float = 0.0
    """Floor of the plateau schedule and end value of the cosine schedule."""


@dataclass
class TrainConfig:
    """Length of the run, evaluation, checkpoints, logging and numerics."""

    max_steps: int | None = None
    """Optimiser steps to run; None: until ``epochs`` passes over the training shards."""
    epochs: int | None = 10
    """Passes over the training shards (None: until ``max_steps``)."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this much wall time in this invocation; ``--resume auto`` continues."""
    eval_every: int = 4000
    """Evaluate every this many optimiser steps (0: never)."""
    save_every: int = 1000
    """Write a checkpoint every this many optimiser steps."""
    keep_last: int = 3
    """Step checkpoints kept besides last.pt and best.pt."""
    log_every: int = 50
    """Write training metrics every this many optimiser steps."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast dtype for the forward pass (fp16 uses a gradient scaler)."""
    compile: bool = False
    """torch.compile the model (engine ddp only)."""
    max_nonfinite: int = 20
    """Stop when this many micro-batches in a row have a non-finite loss or gradient."""
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class DistConfig:
    """Multi-process training (launch with torchrun; single process otherwise)."""

    engine: Literal["ddp", "deepspeed"] = "ddp"
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """Process-group backend; auto: nccl on GPU, gloo on CPU."""
    deepspeed_config: str = "configs/deepspeed/zero1.json"
    """DeepSpeed JSON (ZeRO stage etc.); batch, accumulation, clipping and precision come from this config."""
    timeout_minutes: int = 30


@dataclass
class ModelConfig:
    """An encoder preset plus EncoderConfig field overrides (written flat in YAML)."""

    preset: str = "ssamba-base"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainConfig:
    """The whole, validated pretraining configuration."""

    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: Any = None
    """:class:`~ssamba.models.masked.ObjectiveConfig`."""
    features: Any = None
    """:class:`~ssamba.audio.fbank.FeatureConfig`."""
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    def encoder_config(self):  # -> EncoderConfig
        """The encoder architecture: preset, overrides, and the input size from ``features``."""
        from ssamba.models.encoder import preset_config

        inputs = {"num_mel_bins": self.features.num_mel_bins, "target_length": self.features.target_length}
        return preset_config(self.model.preset, **self.model.overrides, **inputs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-ready) with every field resolved, the encoder fields expanded."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if section.name == "model":
                encoder = self.encoder_config().to_dict()
                for name in ENCODER_INPUT_FIELDS:
                    encoder.pop(name)
                out["model"] = {"preset": value.preset, **encoder}
            else:
                out[section.name] = _plain(dataclasses.asdict(value))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- type checking


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict or tp is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and converted to) type ``tp``; ConfigError naming ``key`` otherwise."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported field type {tp!r}")


def _build(cls: type, values: Any, key: str, skip: tuple[str, ...] = ()) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, checking every key and value type."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{key}: expected a mapping of {cls.__name__} fields, got {values!r}")
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name not in skip]
    for name in values:
        if name not in known:
            raise ConfigError(f"unknown config key {key}.{name}; known keys in {key}: {', '.join(known)}")
    typed = {name: _coerce(value, hints[name], f"{key}.{name}") for name, value in values.items()}
    try:
        return cls(**typed)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{key}: {error}") from None


# ------------------------------------------------------------------------------------ file loading


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``, mappings recursively, anything else replaced."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_yaml_config(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The raw mapping of a config file, with its ``base:`` chain merged in."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    resolved = path.resolve()
    if resolved in _seen:
        raise ConfigError(f"{path}: circular '{BASE_KEY}:' chain ({' -> '.join(str(p) for p in (*_seen, resolved))})")
    values = parse_yaml(path.read_text(encoding="utf-8"), str(path))
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level, got {type(values).__name__}")
    base = values.pop(BASE_KEY, None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise ConfigError(f"{path}: '{BASE_KEY}' must be a file name, got {base!r}")
    return deep_merge(load_yaml_config(path.parent / base, (*_seen, resolved)), values)


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    out = dict(values)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected dotted.key=value, e.g. optim.lr=5e-4")
        value = parse_yaml(text, f"override {item!r}") if text else None
        parts = key.split(".")
        node: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            node = {part: node}
        if len(parts) == 1 and not isinstance(value, dict):
            raise ConfigError(f"override {item!r}: {key} is a section; set one of its keys, e.g. {key}.<name>=value")
        out = deep_merge(out, node)
    return out


# -------------------------------------------------------------------------------------- validation


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def _build_model(values: Any) -> ModelConfig:
    from ssamba.models.encoder import EncoderConfig, available_presets

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"model: expected a mapping with 'preset' and EncoderConfig fields, got {values!r}")
    values = dict(values)
    preset = _coerce(values.pop("preset", ModelConfig.preset), str, "model.preset")
    _require(preset in available_presets(), f"model.preset: unknown encoder preset {preset!r}; available: {', '.join(available_presets())}")
    hints = typing.get_type_hints(EncoderConfig)
    known = [f.name for f in dataclasses.fields(EncoderConfig) if f.name not in ENCODER_INPUT_FIELDS]
    for name in values:
        if name in ENCODER_INPUT_FIELDS:
            raise ConfigError(f"model.{name}: the encoder input size comes from the features section; set features.{name} instead")
        if name not in known:
            raise ConfigError(f"unknown config key model.{name}; known keys in model: preset, {', '.join(known)}")
    overrides = {name: _coerce(value, hints[name], f"model.{name}") for name, value in values.items()}
    return ModelConfig(preset=preset, overrides=overrides)


def _check_ranges(cfg: PretrainConfig) -> None:
    """Range checks of the engine's own sections (the others validate themselves)."""
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "optim.lr": cfg.optim.lr,
        "optim.eps": cfg.optim.eps,
        "optim.accumulate": cfg.optim.accumulate,
        "train.save_every": cfg.train.save_every,
        "train.keep_last": cfg.train.keep_last,
        "train.log_every": cfg.train.log_every,
        "train.max_nonfinite": cfg.train.max_nonfinite,
        "dist.timeout_minutes": cfg.dist.timeout_minutes,
    }
    for key, value in positive.items():
        _require(value > 0 and math.isfinite(value), f"{key}: must be positive, got {value}")
    optional_positive = {
        "data.eval_batch_size": cfg.data.eval_batch_size,
        "data.eval_max_batches": cfg.data.eval_max_batches,
        "data.epoch_length": cfg.data.epoch_length,
        "optim.grad_clip": cfg.optim.grad_clip,
        "train.max_steps": cfg.train.max_steps,
        "train.epochs": cfg.train.epochs,
        "train.max_minutes": cfg.train.max_minutes,
    }
    for key, value in optional_positive.items():
        _require(value is None or (value > 0 and math.isfinite(value)), f"{key}: must be positive or null, got {value}")
    non_negative = {
        "data.num_workers": cfg.data.num_workers,
        "data.shuffle_buffer": cfg.data.shuffle_buffer,
        "optim.weight_decay": cfg.optim.weight_decay,
        "schedule.warmup_steps": cfg.schedule.warmup_steps,
        "schedule.plateau_patience": cfg.schedule.plateau_patience,
        "schedule.plateau_threshold": cfg.schedule.plateau_threshold,
        "schedule.min_lr": cfg.schedule.min_lr,
        "train.eval_every": cfg.train.eval_every,
    }
    for key, value in non_negative.items():
        _require(value >= 0 and math.isfinite(value), f"{key}: must be >= 0, got {value}")
    for i, beta in enumerate(cfg.optim.betas):
        _require(0.0 <= beta < 1.0, f"optim.betas[{i}]: must be in [0, 1), got {beta}")
    _require(0.0 < cfg.schedule.plateau_factor < 1.0, f"schedule.plateau_factor: must be in (0, 1), got {cfg.schedule.plateau_factor}")
    _require(cfg.schedule.min_lr < cfg.optim.lr, f"schedule.min_lr ({cfg.schedule.min_lr}) must be below optim.lr ({cfg.optim.lr})")


def _check_combinations(cfg: PretrainConfig) -> None:
    """Settings that are fine alone but impossible together."""
    _require(bool(cfg.data.train_shards), "data.train_shards: required (shards written by `ssamba shards`)")
    if isinstance(cfg.data.train_shards, dict):
        for source, weight in cfg.data.train_shards.items():
            _require(isinstance(weight, (int, float)) and not isinstance(weight, bool) and weight > 0,
                     f"data.train_shards.{source}: mixing weight must be a positive number, got {weight!r}")
    _require(cfg.train.max_steps is not None or cfg.train.epochs is not None, "train.max_steps and train.epochs are both null: set at least one")
    if cfg.schedule.name == "cosine":
        _require(cfg.train.max_steps is not None, "schedule.name=cosine needs train.max_steps (the cosine length)")
        _require(cfg.schedule.warmup_steps < cfg.train.max_steps, f"schedule.warmup_steps ({cfg.schedule.warmup_steps}) must be below train.max_steps ({cfg.train.max_steps})")
    if cfg.schedule.name == "plateau":
        _require(cfg.train.eval_every > 0, "schedule.name=plateau is driven by evaluation accuracy: set train.eval_every > 0 (or use schedule.name=cosine/constant)")
    if cfg.train.eval_every > 0:
        _require(bool(cfg.data.eval_shards), f"train.eval_every={cfg.train.eval_every} needs data.eval_shards (held-out shards); or set train.eval_every=0")
    if cfg.dist.engine == "deepspeed":
        _require(not cfg.train.compile, "train.compile is not supported with dist.engine=deepspeed; use dist.engine=ddp")
    if cfg.train.device == "cpu" and cfg.dist.backend == "nccl":
        raise ConfigError("dist.backend=nccl needs GPUs; use dist.backend=gloo (or auto) with train.device=cpu")


def _check_model(cfg: PretrainConfig) -> None:
    """Check the encoder config and that the masks fit its patch grid (without building the model)."""
    from ssamba.models.masked import max_cluster_mask_patch

    try:
        encoder = cfg.encoder_config()
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model: {error}") from None
    _require(
        (encoder.fstride, encoder.tstride) == (encoder.fshape, encoder.tshape),
        f"model: masked-patch pretraining needs non-overlapping patches (fstride, tstride) == (fshape, tshape), got {(encoder.fstride, encoder.tstride)} and {(encoder.fshape, encoder.tshape)}",
    )
    cluster = cfg.objective.cluster if cfg.objective.cluster is not None else encoder.fshape != encoder.num_mel_bins
    limit = max_cluster_mask_patch(encoder.num_patches) if cluster else encoder.num_patches
    for name in ("mask_patch", "eval_mask_patch"):
        value = getattr(cfg.objective, name)
        _require(
            value <= limit,
            f"objective.{name}={value} is too large: the {encoder.grid[0]}x{encoder.grid[1]} patch grid of "
            f"features.target_length={encoder.target_length} allows at most {limit} masked patches",
        )


def build_config(values: dict[str, Any]) -> PretrainConfig:
    """A validated :class:`PretrainConfig` from a raw nested mapping (ConfigError on any problem)."""
    from ssamba.audio.fbank import FeatureConfig
    from ssamba.models.masked import ObjectiveConfig

    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping of config sections, got {values!r}")
    sections = [f.name for f in dataclasses.fields(PretrainConfig)]
    for name in values:
        if name not in sections:
            raise ConfigError(f"unknown config section {name!r}; known sections: {', '.join(sections)}")
    cfg = PretrainConfig(
        run=_build(RunConfig, values.get("run"), "run"),
        model=_build_model(values.get("model")),
        objective=_build(ObjectiveConfig, values.get("objective"), "objective"),
        features=_build(FeatureConfig, values.get("features"), "features"),
        data=_build(DataConfig, values.get("data"), "data"),
        optim=_build(OptimConfig, values.get("optim"), "optim"),
        schedule=_build(ScheduleConfig, values.get("schedule"), "schedule"),
        train=_build(TrainConfig, values.get("train"), "train"),
        dist=_build(DistConfig, values.get("dist"), "dist"),
    )
    _check_ranges(cfg)
    _check_combinations(cfg)
    _check_model(cfg)
    return cfg


def load_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> PretrainConfig:
    """Load a config file (or only defaults when ``path`` is None), apply overrides, validate."""
    values = load_yaml_config(path) if path is not None else {}
    return build_config(apply_overrides(values, list(overrides)))
