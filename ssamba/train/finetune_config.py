"""Fine-tuning configuration: YAML files plus ``key=value`` overrides, validated before any work.

Same file system as pretraining (:mod:`ssamba.train.config`): a YAML mapping of sections, ``base:
other.yaml`` to extend another file, dotted ``section.key=value`` overrides on the command line::

    ssamba finetune --config configs/finetune/esc50.yaml model.pretrained=exported/ssamba-tiny \\
        run.dir=exp/esc50-tiny optim.lr=5e-4 data.folds=5

Sections: ``run`` (directory, seed), ``model`` (:class:`FinetuneModelConfig`), ``features``
(:class:`~ssamba.audio.fbank.FeatureConfig` fields: input length and dataset normalisation),
``data`` (:class:`FinetuneDataConfig`), ``augment`` (:class:`AugmentSection`), ``optim``
(:class:`FinetuneOptimConfig`), ``schedule`` (:class:`FinetuneScheduleConfig`), ``train``
(:class:`FinetuneTrainConfig`), ``dist`` (:class:`~ssamba.train.config.DistConfig`).

The defaults are SSAMBA's trainer (``traintest.py``): Adam with weight decay 5e-7 and betas
(0.95, 0.999), a head learning-rate multiplier, optional linear warm-up, ``MultiStepLR`` per
epoch with milestones ``range(start, 1000, step)`` and factor ``gamma``, BCE loss, model selection
by the validation metric. Every key and value is checked and the first problem is raised as a
:class:`~ssamba.train.config.ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

import yaml

from ssamba.train.config import (
    ConfigError,
    DistConfig,
    RunConfig,
    _build,
    _coerce,
    _plain,
    _require,
    apply_overrides,
    load_yaml_config,
)

PRETRAINED_NONE = "none"
"""``model.pretrained`` value for a randomly initialised encoder (the from-scratch control)."""
ENCODER_OVERRIDES_WITH_CHECKPOINT = ("fstride", "tstride", "drop_path_rate", "pool", "scan_backend")
"""Encoder fields that may change when the encoder comes from a checkpoint (the rest comes from the file)."""
DEFAULT_RUN_DIR = "exp/finetune"


@dataclass
class FinetuneModelConfig:
    """The classifier: an encoder (pretrained or random) under a classification head.

    ``encoder`` holds :class:`~ssamba.models.encoder.EncoderConfig` field overrides (written flat in
    the YAML ``model`` section, next to the fields below).
    """

    pretrained: str | None = None
    """Checkpoint to start from (anything ``ssamba.load_encoder`` reads: an export directory, a
    pretraining run or checkpoint, an official SSAMBA ``.pth``, an AuM checkpoint), or ``none`` for a
    random encoder built from ``preset``. Required."""
    preset: str | None = None
    """Encoder preset (ssamba-tiny/small/base, aum-tiny/small/base). Required with pretrained=none;
    with a checkpoint it is optional and, when given, must match the file's width and depth."""
    head: Literal["ssamba", "aum"] = "ssamba"
    """ssamba: LayerNorm + Linear (SSAMBA's mlp_head); aum: one Linear (AuM's head)."""
    task: Literal["clip", "per_second"] = "clip"
    """clip: one prediction per clip; per_second: one per second of audio (data with per-second labels)."""
    freeze_encoder: bool = False
    """Train the head only (the encoder is kept in eval mode, no dropout/drop path)."""
    encoder: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneDataConfig:
    """The labelled data (one manifest) and how it is split and batched."""

    manifest: str | None = None
    """CSV manifest (path,label[,split][,fold|group][,start,end]), SSAST/AuM JSON data list, or labelled
    shards; see finetune/README.md. Required."""
    class_table: str | None = None
    """class_labels_indices.csv for SSAST/AuM JSON data lists (class order); None: classes sorted by name."""
    folds: int | None = None
    """Cross-validation: train one model per fold of the manifest's ``fold`` column (or of ``group``s
    assigned to this many folds), test on the held-out fold. None: use the ``split`` column."""
    valid_fraction: float = 0.1
    """Share of the training clips (whole groups when there is a group column) held out for model
    selection when the manifest has no ``valid`` split (always the case in cross-validation)."""
    batch_size: int = 48
    """Clips per process and micro-batch."""
    eval_batch_size: int | None = None
    """Evaluation batch per process; None uses ``batch_size``."""
    num_workers: int = 4
    """Loader worker processes per training process (0 decodes in the training process)."""
    seconds_per_label: float = 1.0
    """model.task=per_second: seconds of audio per predicted label (the manifest's segments label them)."""
    balanced_sampling: bool = False
    """Draw training clips with probability from label frequency (AudioSet-style imbalanced sets):
    weight of a clip = sum over its labels of 1000 / (count(label) + 0.01), as AuM/PSLA."""


@dataclass
class AugmentSection:
    """Training-time augmentation (off at evaluation)."""

    freqm: int = 0
    """Maximum width (mel bins) of one SpecAugment frequency mask."""
    timem: int = 0
    """Maximum width (frames) of one SpecAugment time mask."""
    mixup: float = 0.0
    """Probability that a clip is mixed with another clip of the batch, lambda ~ Beta(alpha, alpha)."""
    mixup_alpha: float = 10.0
    noise: bool = False
    """SSAST's noise: uniform noise scaled by U(0, 0.1), then a circular time roll of [-10, 9] frames."""


@dataclass
class FinetuneOptimConfig:
    """Optimiser: Adam as SSAMBA/SSAST/AuM (``adamw`` for AdamW), per-group learning rates."""

    name: Literal["adam", "adamw"] = "adam"
    lr: float = 1e-4
    head_lr: float = 1.0
    """Multiplier of lr for the classification head (SSAMBA's --head_lr; 3 for AudioSet-20K)."""
    layer_decay: float = 1.0
    """Layer-wise lr decay: block i of L gets lr * layer_decay ** (L - i), the patch/position
    embeddings lr * layer_decay ** (L + 1); 1.0 = off (the original)."""
    weight_decay: float = 5e-7
    betas: tuple[float, float] = (0.95, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None
    """Clip the global gradient norm (None: no clipping, as the original)."""
    accumulate: int = 1
    """Micro-batches per optimiser step."""


@dataclass
class FinetuneScheduleConfig:
    """Learning rate: optional linear warm-up, then MultiStepLR per epoch (SSAMBA), cosine or constant."""

    name: Literal["multistep", "cosine", "constant"] = "multistep"
    warmup_steps: int = 0
    """Linear warm-up over the first optimiser steps (SSAMBA's --warmup True = 1000; 0 = off)."""
    start: int = 10
    """multistep: first epoch whose end multiplies the lr by gamma (SSAMBA's lrscheduler_start)."""
    step: int = 5
    """multistep: then every this many epochs (lrscheduler_step; milestones range(start, 1000, step))."""
    gamma: float = 0.5
    """multistep: factor per milestone (lrscheduler_decay)."""
    min_lr: float = 0.0
    """cosine: the final lr (the cosine runs per optimiser step over all epochs)."""


@dataclass
class FinetuneTrainConfig:
    """Loss, length, model selection, ensembles, checkpoints and numerics."""

    epochs: int = 25
    loss: Literal["bce", "ce"] = "bce"
    """bce: BCEWithLogits on (mixed) multi-hot targets; ce: cross-entropy on soft targets (single-label only)."""
    metric: Literal["acc", "mAP", "mAUC", "d_prime", "loss"] = "mAP"
    """Validation metric that selects the best epoch (loss: lowest; the others: highest)."""
    select: Literal["best", "last", "fold_average"] = "best"
    """best: the epoch best on the validation split; last: the last epoch; fold_average (with data.folds):
    SSAST's ESC-50 rule, the single epoch best on the average over folds of the held-out fold's
    metric (selection on the test folds: reported as such)."""
    ensemble: bool = False
    """SSAST's checkpoint ensemble: also score the running mean of every epoch's predictions ("cum_*")."""
    weight_average: tuple[int, int] | None = None
    """[first, last] epoch (1-based, inclusive): average those epochs' weights into the final model
    (SSAST's --wa); its scores are reported as "wa"."""
    max_minutes: float | None = None
    """Stop (with a checkpoint) after this much wall time in this invocation; ``--resume auto`` continues."""
    save_every: int = 0
    """Also checkpoint every this many optimiser steps inside an epoch (0: at epoch ends only)."""
    log_every: int = 20
    """Write training metrics every this many optimiser steps."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    max_nonfinite: int = 20
    """Stop when this many micro-batches in a row have a non-finite loss or gradient."""
    device: Literal["auto", "cpu", "cuda"] = "auto"


@dataclass
class FinetuneConfig:
    """The whole, validated fine-tuning configuration."""

    run: RunConfig = field(default_factory=lambda: RunConfig(dir=DEFAULT_RUN_DIR))
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    features: Any = None
    """:class:`~ssamba.audio.fbank.FeatureConfig`."""
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    augment: AugmentSection = field(default_factory=AugmentSection)
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    schedule: FinetuneScheduleConfig = field(default_factory=FinetuneScheduleConfig)
    train: FinetuneTrainConfig = field(default_factory=FinetuneTrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)

    @property
    def pretrained(self) -> str | None:
        """The checkpoint path, or None for a random encoder."""
        return None if self.model.pretrained == PRETRAINED_NONE else self.model.pretrained

    def milestones(self) -> list[int]:
        """Epochs (1-based, after which) the multistep schedule multiplies the lr by gamma."""
        return list(range(self.schedule.start, 1000, self.schedule.step))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML-ready) with every field resolved."""
        out: dict[str, Any] = {}
        for section in dataclasses.fields(self):
            value = getattr(self, section.name)
            if section.name == "model":
                plain = _plain(dataclasses.asdict(value))
                out["model"] = {**{k: v for k, v in plain.items() if k != "encoder"}, **plain["encoder"]}
            else:
                out[section.name] = _plain(dataclasses.asdict(value))
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# -------------------------------------------------------------------------------------- validation


def _build_model(values: Any) -> FinetuneModelConfig:
    from ssamba.models.encoder import EncoderConfig, available_presets

    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"model: expected a mapping, got {values!r}")
    own = {f.name for f in dataclasses.fields(FinetuneModelConfig)} - {"encoder"}
    mine = {k: v for k, v in values.items() if k in own}
    rest = {k: v for k, v in values.items() if k not in own}
    cfg = _build(FinetuneModelConfig, mine, "model")
    hints = typing.get_type_hints(EncoderConfig)
    known = [f.name for f in dataclasses.fields(EncoderConfig) if f.name not in ("num_mel_bins", "target_length")]
    for name in rest:
        if name in ("num_mel_bins", "target_length"):
            raise ConfigError(f"model.{name}: the encoder input size comes from the features section; set features.{name} instead")
        if name not in known:
            raise ConfigError(f"unknown config key model.{name}; known keys in model: {', '.join(sorted(own))}, {', '.join(known)}")
    cfg.encoder = {name: _coerce(value, hints[name], f"model.{name}") for name, value in rest.items()}
    _require(cfg.pretrained is not None, "model.pretrained: required: a checkpoint (export dir, run, .pt/.pth) or 'none' for a random encoder")
    if cfg.preset is not None:
        _require(cfg.preset in available_presets(), f"model.preset: unknown encoder preset {cfg.preset!r}; available: {', '.join(available_presets())}")
    if cfg.pretrained == PRETRAINED_NONE:
        _require(cfg.preset is not None, "model.pretrained=none builds a random encoder: set model.preset (e.g. ssamba-tiny)")
    else:
        fixed = sorted(set(cfg.encoder) - set(ENCODER_OVERRIDES_WITH_CHECKPOINT))
        _require(not fixed, f"model.{fixed[0] if fixed else ''}: the architecture comes from model.pretrained; only "
                 f"{', '.join(ENCODER_OVERRIDES_WITH_CHECKPOINT)} may be overridden (or use model.pretrained=none)")
    return cfg


def _check_ranges(cfg: FinetuneConfig) -> None:
    positive = {
        "data.batch_size": cfg.data.batch_size,
        "data.seconds_per_label": cfg.data.seconds_per_label,
        "optim.lr": cfg.optim.lr,
        "optim.head_lr": cfg.optim.head_lr,
        "optim.layer_decay": cfg.optim.layer_decay,
        "optim.eps": cfg.optim.eps,
        "optim.accumulate": cfg.optim.accumulate,
        "schedule.start": cfg.schedule.start,
        "schedule.step": cfg.schedule.step,
        "schedule.gamma": cfg.schedule.gamma,
        "train.epochs": cfg.train.epochs,
        "train.log_every": cfg.train.log_every,
        "train.max_nonfinite": cfg.train.max_nonfinite,
        "augment.mixup_alpha": cfg.augment.mixup_alpha,
        "dist.timeout_minutes": cfg.dist.timeout_minutes,
    }
    for key, value in positive.items():
        _require(value > 0 and math.isfinite(value), f"{key}: must be positive, got {value}")
    optional_positive = {
        "data.eval_batch_size": cfg.data.eval_batch_size,
        "optim.grad_clip": cfg.optim.grad_clip,
        "train.max_minutes": cfg.train.max_minutes,
    }
    for key, value in optional_positive.items():
        _require(value is None or (value > 0 and math.isfinite(value)), f"{key}: must be positive or null, got {value}")
    non_negative = {
        "data.num_workers": cfg.data.num_workers,
        "optim.weight_decay": cfg.optim.weight_decay,
        "schedule.warmup_steps": cfg.schedule.warmup_steps,
        "schedule.min_lr": cfg.schedule.min_lr,
        "train.save_every": cfg.train.save_every,
        "augment.freqm": cfg.augment.freqm,
        "augment.timem": cfg.augment.timem,
    }
    for key, value in non_negative.items():
        _require(value >= 0 and math.isfinite(value), f"{key}: must be >= 0, got {value}")
    _require(cfg.optim.layer_decay <= 1.0, f"optim.layer_decay: must be in (0, 1], got {cfg.optim.layer_decay}")
    _require(0.0 <= cfg.data.valid_fraction < 1.0, f"data.valid_fraction: must be in [0, 1), got {cfg.data.valid_fraction}")
    _require(0.0 <= cfg.augment.mixup <= 1.0, f"augment.mixup: a probability in [0, 1], got {cfg.augment.mixup}")
    for i, beta in enumerate(cfg.optim.betas):
        _require(0.0 <= beta < 1.0, f"optim.betas[{i}]: must be in [0, 1), got {beta}")
    _require(cfg.schedule.min_lr < cfg.optim.lr, f"schedule.min_lr ({cfg.schedule.min_lr}) must be below optim.lr ({cfg.optim.lr})")


def _check_combinations(cfg: FinetuneConfig) -> None:
    data, train = cfg.data, cfg.train
    _require(bool(data.manifest), "data.manifest: required (a CSV manifest, SSAST/AuM JSON data list or labelled shards)")
    if data.folds is not None:
        _require(data.folds >= 2, f"data.folds: cross-validation needs at least 2 folds, got {data.folds}")
    if train.select == "fold_average":
        _require(data.folds is not None, "train.select=fold_average is SSAST's cross-validation rule: set data.folds")
    if train.weight_average is not None:
        first, last = train.weight_average
        _require(1 <= first <= last <= train.epochs,
                 f"train.weight_average: need 1 <= first <= last <= train.epochs ({train.epochs}), got [{first}, {last}]")
    if cfg.model.freeze_encoder:
        _require(cfg.optim.layer_decay == 1.0, "optim.layer_decay has no effect with model.freeze_encoder=true: set it to 1.0")
    if cfg.dist.engine == "deepspeed":
        _require(not train.compile, "train.compile is not supported with dist.engine=deepspeed; use dist.engine=ddp")
    if train.device == "cpu" and cfg.dist.backend == "nccl":
        raise ConfigError("dist.backend=nccl needs GPUs; use dist.backend=gloo (or auto) with train.device=cpu")


def build_finetune_config(values: dict[str, Any]) -> FinetuneConfig:
    """A validated :class:`FinetuneConfig` from a raw nested mapping (ConfigError on any problem)."""
    from ssamba.audio.fbank import FeatureConfig

    if not isinstance(values, dict):
        raise ConfigError(f"expected a mapping of config sections, got {values!r}")
    sections = [f.name for f in dataclasses.fields(FinetuneConfig)]
    for name in values:
        if name not in sections:
            raise ConfigError(f"unknown config section {name!r}; known sections: {', '.join(sections)}")
    run_values = values.get("run") or {}
    if isinstance(run_values, dict):
        run_values = {"dir": DEFAULT_RUN_DIR, **run_values}
    cfg = FinetuneConfig(
        run=_build(RunConfig, run_values, "run"),
        model=_build_model(values.get("model")),
        features=_build(FeatureConfig, values.get("features"), "features"),
        data=_build(FinetuneDataConfig, values.get("data"), "data"),
        augment=_build(AugmentSection, values.get("augment"), "augment"),
        optim=_build(FinetuneOptimConfig, values.get("optim"), "optim"),
        schedule=_build(FinetuneScheduleConfig, values.get("schedule"), "schedule"),
        train=_build(FinetuneTrainConfig, values.get("train"), "train"),
        dist=_build(DistConfig, values.get("dist"), "dist"),
    )
    _check_ranges(cfg)
    _check_combinations(cfg)
    _check_encoder(cfg)
    return cfg


def _check_encoder(cfg: FinetuneConfig) -> None:
    """For a random encoder, the preset with its overrides must fit the input size."""
    if cfg.pretrained is not None:
        return
    try:
        random_encoder_config(cfg)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"model: {error}") from None


def random_encoder_config(cfg: FinetuneConfig):  # -> EncoderConfig
    """The encoder of ``model.pretrained=none``: preset + overrides, input size from ``features``."""
    from ssamba.models.encoder import preset_config

    inputs = {"num_mel_bins": cfg.features.num_mel_bins, "target_length": cfg.features.target_length}
    return preset_config(cfg.model.preset, **cfg.model.encoder, **inputs)


def load_finetune_config(path: str | None, overrides: list[str] | tuple[str, ...] = ()) -> FinetuneConfig:
    """Load a config file (or only defaults when ``path`` is None), apply overrides, validate."""
    values = load_yaml_config(path) if path is not None else {}
    return build_finetune_config(apply_overrides(values, list(overrides)))
