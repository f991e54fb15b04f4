"""Fine-tune an encoder (pretrained or random) with a classification head on a labelled manifest.

The `ssamba finetune` command (its options and examples) is :mod:`ssamba.commands.finetune`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssamba.data.stream import derive_seed
from ssamba.interop.checkpoints import torch_load
from ssamba.train.config import ConfigError
from ssamba.train.engine import (
    CheckpointManager,
    DeepSpeedEngine,
    DistInfo,
    NonFiniteLossError,
    RunLock,
    TorchEngine,
    all_reduce,
    barrier,
    broadcast,
    deepspeed_config,
    gather_objects,
    init_distributed,
    lock_run,
    seed_everything,
    shutdown_distributed,
)
from ssamba.train.finetune_config import FinetuneConfig, load_finetune_config, random_encoder_config
from ssamba.train.metrics import MetricsLogger, RunningMean, Throughput

CHECKPOINT_FORMAT = "ssamba-finetune"
CHECKPOINT_VERSION = 1
CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"
PREDICTIONS_DIR = "predictions"
SELECTED_TEST_PREDICTIONS = "test-selected.npz"
"""In PREDICTIONS_DIR: the selected model's test scores, targets, clip paths and class names."""
EPOCH_WEIGHTS_DIR = "epochs"
MODEL_DIR = "model"
WA_MODEL_DIR = "model-weight-average"
BALANCE_NUMERATOR = 1000.0
BALANCE_SMOOTHING = 0.01
"""AuM/PSLA class-balanced sampling: a label's weight is 1000 / (count + 0.01)."""


END_OF_EPOCH = object()


# ------------------------------------------------------------------------------------------ data


@dataclass
class FoldPlan:
    """The clips one model trains on, is selected on and is tested on."""

    name: str
    """``""`` for a single run, ``fold-<id>`` in cross-validation."""
    train: Any
    valid: Any | None
    test: Any | None


def read_data(cfg: FinetuneConfig):  # -> LabelledSet
    """The manifest, validated (labels, splits, groups) before anything trains."""
    from ssamba.data.labelled import read_labelled

    try:
        data = read_labelled(cfg.data.manifest, class_table=cfg.data.class_table)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"data.manifest: {error}") from None
    if cfg.train.loss == "ce" and data.multilabel:
        row = next(c.row for c in data.clips if len(c.labels) != 1)
        raise ConfigError(f"train.loss=ce needs one label per clip, but {data.source} row {row} has several; use train.loss=bce")
    return data


def split_off_valid(data, fraction: float, seed: int) -> tuple[Any, Any | None]:
    """Hold out ``fraction`` of the clips (whole groups) for model selection; (rest, held out)."""
    if fraction <= 0:
        return data, None
    groups = [c.group if c.group is not None else f"\0{c.path}#{c.key}" for c in data.clips]  # a file's segments stay together
    unique = sorted(set(groups))
    if len(unique) < 2:
        raise ConfigError(f"{data.source}: cannot hold out a validation share of {len(unique)} group(s); add a valid split")
    order = random.Random(seed).sample(unique, len(unique))
    held = set(order[: max(1, round(fraction * len(unique)))])
    keep = [i for i, g in enumerate(groups) if g not in held]
    out = [i for i, g in enumerate(groups) if g in held]
    return data.select(keep), data.select(out)


def assign_folds(data, folds: int) -> list[list[int]]:
    """Clip indices of each of ``folds`` folds: the manifest's fold column, or its groups (GroupKFold)."""
    fold_ids = data.fold_ids()
    if fold_ids:
        if len(fold_ids) != folds:
            raise ConfigError(f"data.folds={folds} but {data.source} has {len(fold_ids)} folds ({', '.join(fold_ids)})")
        unassigned = next((c for c in data.clips if c.fold is None), None)
        if unassigned is not None:
            raise ConfigError(f"{data.source} row {unassigned.row}: no fold (every clip needs one with data.folds)")
        return [[i for i, c in enumerate(data.clips) if c.fold == fold] for fold in fold_ids]
    if all(c.group is None for c in data.clips):
        raise ConfigError(f"data.folds={folds}: {data.source} has neither a fold nor a group column to split on")
    from sklearn.model_selection import GroupKFold

    groups = data.groups()
    if len(set(groups)) < folds:
        raise ConfigError(f"data.folds={folds}: {data.source} has only {len(set(groups))} groups")
    splitter = GroupKFold(n_splits=folds)
    return [sorted(test.tolist()) for _, test in splitter.split(np.zeros(len(groups)), groups=groups)]


def plan_folds(cfg: FinetuneConfig, data) -> list[FoldPlan]:
    """What each model trains, selects and tests on; raises (naming the split/fold) when a part is empty."""
    need_valid = cfg.train.select == "best"
    if cfg.data.folds is None:
        present = data.splits
        if "train" not in present:
            raise ConfigError(f"{data.source}: no clip has split=train (splits present: {', '.join(present) or 'none'}); "
                              "add a split column, or use data.folds for cross-validation")
        train = data.subset(split="train")
        valid = data.subset(split="valid") if "valid" in present else None
        if valid is None and need_valid:
            train, valid = split_off_valid(train, cfg.data.valid_fraction, cfg.run.seed)
            if valid is None:
                raise ConfigError(f"train.select=best needs a valid split: {data.source} has none and data.valid_fraction=0")
        test = data.subset(split="test") if "test" in present else None
        return [FoldPlan("", train, valid, test)]
    plans = []
    fold_indices = assign_folds(data, cfg.data.folds)
    names = data.fold_ids() or [str(k + 1) for k in range(cfg.data.folds)]
    for k, (name, held) in enumerate(zip(names, fold_indices)):
        if not held:
            raise ConfigError(f"{data.source}: fold {name} is empty")
        held_set = set(held)
        train = data.select([i for i in range(len(data.clips)) if i not in held_set])
        valid = None
        if need_valid:
            train, valid = split_off_valid(train, cfg.data.valid_fraction, derive_seed(cfg.run.seed, "valid", k))
            if valid is None:
                raise ConfigError("train.select=best in cross-validation holds out data.valid_fraction of the training folds: set it > 0")
        plans.append(FoldPlan(f"fold-{name}", train, valid, data.select(held)))
    return plans


def background_noise_folder(cfg: FinetuneConfig) -> Path | None:
    """``augment.background_noise.dir``, a relative path resolved against the manifest's folder; None when off."""
    noise = cfg.augment.background_noise
    if noise is None:
        return None
    folder = Path(noise.dir).expanduser()
    if folder.is_absolute():
        return folder
    manifest = Path(cfg.data.manifest)
    return (manifest if manifest.is_dir() else manifest.parent) / folder


def load_background_noise(cfg: FinetuneConfig):  # -> BackgroundNoise | None
    """The noise recordings of ``augment.background_noise``, decoded once and checked before training."""
    from ssamba.audio.augment import BackgroundNoise

    folder = background_noise_folder(cfg)
    if folder is None:
        return None
    noise = cfg.augment.background_noise
    try:
        return BackgroundNoise.from_folder(folder, cfg.features.sample_rate, probability=noise.probability, snr_db=noise.snr_db)
    except ValueError as error:
        raise ConfigError(f"augment.background_noise.dir: {error}") from None


def balanced_weights(data) -> np.ndarray:
    """Sampling weight of each clip: the sum over its labels of 1000 / (label count + 0.01)."""
    targets = data.targets()
    per_class = BALANCE_NUMERATOR / (targets.sum(axis=0) + BALANCE_SMOOTHING)
    return (targets * per_class[None, :]).sum(axis=1)


class EpochSampler(torch.utils.data.Sampler[int]):
    """This process's clip indices for one epoch, from position ``start`` on.

    The epoch's order is a function of (seed, epoch) only: shuffled, drawn with replacement from
    ``weights``, or in order (evaluation). Every process gets the same number of indices (the
    order is padded by wrapping around for training, not for evaluation), so processes stay in step.
    """

    def __init__(self, size: int, *, rank: int, world_size: int, seed: int, epoch: int, shuffle: bool,
                 weights: np.ndarray | None = None, start: int = 0, pad: bool = True) -> None:
        generator = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
        if weights is not None:
            order = torch.multinomial(torch.as_tensor(weights, dtype=torch.float64), size, replacement=True, generator=generator)
        elif shuffle:
            order = torch.randperm(size, generator=generator)
        else:
            order = torch.arange(size)
        order = order.tolist()
        if pad and size % world_size:
            order += order[: world_size - size % world_size]
        mine = order[rank::world_size]
        self.epoch_size = len(mine)
        """This process's indices in the whole epoch (``start`` not counted off)."""
        self.indices = mine[start:]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def make_loader(dataset, sampler: EpochSampler, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    from ssamba.data.labelled import collate_labelled

    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, collate_fn=collate_labelled,
        persistent_workers=False, pin_memory=torch.cuda.is_available(),
    )


# ----------------------------------------------------------------------------------------- model


def build_classifier(cfg: FinetuneConfig, num_classes: int) -> nn.Module:
    """The encoder (checkpoint adapted to the input length and stride, or random) under a new head."""
    from ssamba.interop.checkpoints import CheckpointError, load_checkpoint
    from ssamba.models.classifier import AudioMambaClassifier
    from ssamba.models.encoder import AudioMambaEncoder, preset_config

    if cfg.pretrained is None:
        encoder = AudioMambaEncoder(random_encoder_config(cfg))
    else:
        overrides = cfg.model.encoder
        try:
            checkpoint = load_checkpoint(
                cfg.pretrained, target_length=cfg.features.target_length,
                fstride=overrides.get("fstride"), tstride=overrides.get("tstride"),
            )
        except (CheckpointError, FileNotFoundError, ValueError) as error:
            raise ConfigError(f"model.pretrained: {error}") from None
        config = checkpoint.encoder_config
        if config.num_mel_bins != cfg.features.num_mel_bins:
            raise ConfigError(f"features.num_mel_bins={cfg.features.num_mel_bins} but {cfg.pretrained} was trained on {config.num_mel_bins} mel bins")
        if cfg.model.preset is not None:
            want = preset_config(cfg.model.preset)
            if (want.embed_dim, want.depth) != (config.embed_dim, config.depth):
                raise ConfigError(f"model.preset={cfg.model.preset} (width {want.embed_dim}, depth {want.depth}) but {cfg.pretrained} "
                                  f"holds width {config.embed_dim}, depth {config.depth}; drop model.preset or pick the matching one")
        extra = {k: v for k, v in overrides.items() if k not in ("fstride", "tstride")}
        checkpoint = dataclasses.replace(checkpoint, encoder_config=config.replace(**extra))
        encoder = checkpoint.build_encoder()
    return AudioMambaClassifier(encoder, num_classes, head=cfg.model.head, **classifier_task_options(cfg))


def classifier_task_options(cfg: FinetuneConfig) -> dict[str, Any]:
    """Constructor options of the per-second classifier (none for clip classification)."""
    if cfg.model.task == "clip":
        return {}
    return {"task": "per_second", "seconds_per_label": cfg.data.seconds_per_label,
            "frame_shift_ms": cfg.features.frame_shift_ms, "frame_length_ms": cfg.features.frame_length_ms}


def layer_id(name: str, depth: int) -> int:
    """Depth position of a classifier parameter: embeddings 0, block i -> i + 1, final norm and head depth + 1."""
    if name.startswith("encoder.layers."):
        return int(name.split(".")[2]) + 1
    if name.startswith(("encoder.patch_embed", "encoder.pos_embed", "encoder.cls_token")):
        return 0
    return depth + 1


def parameter_groups(model: nn.Module, cfg: FinetuneConfig) -> list[dict[str, Any]]:
    """Optimiser groups with an ``lr_scale``: the head at ``head_lr``, encoder parameters by layer decay.

    With ``freeze_encoder`` the encoder's parameters stop requiring gradients and are left out.
    """
    optim = cfg.optim
    depth = model.encoder.config.depth
    if cfg.model.freeze_encoder:
        model.encoder.requires_grad_(False)
    scales: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("encoder."):
            scale = optim.layer_decay ** (depth + 1 - layer_id(name, depth))
        else:
            scale = optim.head_lr
        scales.setdefault(scale, []).append(param)
    return [{"params": params, "lr_scale": scale} for scale, params in sorted(scales.items())]


def make_optimizer(cfg: FinetuneConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Adam (SSAMBA/SSAST/AuM) or AdamW over :func:`parameter_groups`."""
    optim = cfg.optim
    cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
    return cls(parameter_groups(model, cfg), lr=optim.lr, weight_decay=optim.weight_decay, betas=optim.betas, eps=optim.eps)


def learning_rate(cfg: FinetuneConfig, step: int, epoch: int, total_steps: int) -> float:
    """lr of optimiser step ``step`` (0-based) in epoch ``epoch`` (0-based = epochs completed).

    Linear warm-up ``lr * (step + 1) / warmup_steps`` (the original raises it every 50 steps), then
    multistep: ``lr * gamma ** (milestones <= epoch)``; cosine: from lr to min_lr over ``total_steps``.
    """
    lr, schedule = cfg.optim.lr, cfg.schedule
    if step < schedule.warmup_steps:
        return lr * (step + 1) / schedule.warmup_steps
    if schedule.name == "multistep":
        return lr * schedule.gamma ** sum(1 for m in cfg.milestones() if m <= epoch)
    if schedule.name == "cosine":
        span = max(total_steps - schedule.warmup_steps, 1)
        progress = min((step - schedule.warmup_steps) / span, 1.0)
        return schedule.min_lr + 0.5 * (lr - schedule.min_lr) * (1.0 + math.cos(math.pi * progress))
    return lr


# -------------------------------------------------------------------------------------- augmentation


class BatchAugment:
    """Training augmentation of a normalised batch: SpecAugment, noise + roll, mixup (``augment`` section).

    SpecAugment fills masked cells with the normalised value of 0 (``-mean / (2 std)``), which is what
    masking the un-normalised log-mel before normalisation gives (the original's order).
    """

    def __init__(self, cfg: FinetuneConfig, seed: int) -> None:
        from ssamba.audio.fbank import normalize

        self.aug = cfg.augment
        self.fill = float(normalize(torch.zeros(()), cfg.features.mean, cfg.features.std))
        self.rng = random.Random(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, fbank: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        from ssamba.audio.augment import add_noise_and_roll, mixup_batch, spec_augment

        aug = self.aug
        if aug.freqm or aug.timem or aug.noise:
            clips = []
            for clip in fbank:
                if aug.freqm or aug.timem:
                    kept = spec_augment(torch.ones_like(clip), aug.freqm, aug.timem, self.generator)
                    clip = clip.masked_fill(kept == 0, self.fill)
                if aug.noise:
                    clip = add_noise_and_roll(clip, self.rng, self.generator)
                clips.append(clip)
            fbank = torch.stack(clips)
        if aug.mixup > 0:
            shape = targets.shape
            fbank, flat = mixup_batch(fbank, targets.reshape(shape[0], -1), aug.mixup, aug.mixup_alpha, self.rng)
            targets = flat.reshape(shape)
        return fbank, targets


# ------------------------------------------------------------------------------------ loss and scores


def classification_loss(logits: Tensor, targets: Tensor, kind: str, mask: Tensor | None = None) -> Tensor:
    """BCE-with-logits on (soft) multi-hot targets, or cross-entropy on soft targets; per-second
    outputs (B, S, C) count only the seconds ``mask`` marks as labelled."""
    logits = logits.float()
    if logits.ndim == 3:
        keep = mask.reshape(-1) if mask is not None else slice(None)
        logits, targets = logits.reshape(-1, logits.shape[-1])[keep], targets.reshape(-1, targets.shape[-1])[keep]
    if kind == "ce":
        return F.cross_entropy(logits, targets)
    return F.binary_cross_entropy_with_logits(logits, targets)


def to_probabilities(logits: Tensor, kind: str) -> Tensor:
    """Scores written to predictions and scored: softmax for CE-trained models, sigmoid otherwise."""
    return logits.float().softmax(-1) if kind == "ce" else logits.float().sigmoid()


@dataclass
class Predictions:
    """Scores of one model on one split, ordered by clip index (clips skipped as unreadable are absent)."""

    index: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    mask: np.ndarray | None = None
    """Per-second task: (N, S) seconds that carry a label."""
    loss: float = math.nan
    paths: np.ndarray | None = None
    """(N,) str: each item's audio file (per-second task: the file of its rows), when recorded."""
    classes: np.ndarray | None = None
    """(C,) str: the class of each score column, when recorded."""

    def save(self, path: Path) -> None:
        arrays = {"index": self.index, "scores": self.scores, "targets": self.targets, "loss": np.array(self.loss)}
        for name in ("mask", "paths", "classes"):
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> Predictions:
        with np.load(path, allow_pickle=False) as f:
            optional = {name: f[name] if name in f else None for name in ("mask", "paths", "classes")}
            return cls(f["index"], f["scores"], f["targets"], loss=float(f["loss"]), **optional)

    def with_sources(self, dataset, classes: list[str]) -> Predictions:
        """These predictions with the audio file of each item of ``dataset`` and the class names."""
        paths = np.array([str(dataset.clip(int(i)).path) for i in self.index], dtype=np.str_)
        return dataclasses.replace(self, paths=paths, classes=np.array(classes, dtype=np.str_))

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, targets) as (items, classes): per-second outputs flattened over the labelled seconds."""
        if self.scores.ndim == 2:
            return self.scores, self.targets
        keep = self.mask.reshape(-1) if self.mask is not None else slice(None)
        classes = self.scores.shape[-1]
        return self.scores.reshape(-1, classes)[keep], self.targets.reshape(-1, classes)[keep]


def score_predictions(pred: Predictions, multilabel: bool, classes: list[str]) -> dict[str, Any]:
    """accuracy, mAP, mAUC, d' (macro), per-class AP and the loss of some predictions."""
    from ssamba.train.scores import classification_scores

    scores, targets = pred.flat()
    out = classification_scores(scores, targets, multilabel=multilabel, class_names=classes)
    return {**out, "loss": pred.loss, "clips": int(len(pred.index))}


def metric_value(scores: dict[str, Any], metric: str) -> float:
    """The selection metric's value, oriented so that higher is better."""
    value = float(scores[metric if metric != "acc" else "accuracy"])
    return -value if metric == "loss" else value


def scalar_scores(scores: dict[str, Any]) -> dict[str, float]:
    """The numbers of a scores dict (per-class APs left out) for logs."""
    return {k: float(v) for k, v in scores.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


@torch.no_grad()
def predict(model: nn.Module, engine: Any, dataset, cfg: FinetuneConfig, info: DistInfo) -> tuple[Predictions, int]:
    """Scores of every clip of ``dataset`` (split over the processes, gathered on all); and the clips skipped."""
    batch_size = cfg.data.eval_batch_size or cfg.data.batch_size
    sampler = EpochSampler(len(dataset), rank=info.rank, world_size=info.world_size, seed=0, epoch=0, shuffle=False, pad=False)
    loader = make_loader(dataset, sampler, batch_size, cfg.data.num_workers)
    parts: dict[str, list[np.ndarray]] = {"index": [], "scores": [], "targets": [], "mask": []}
    loss_sum, used = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        for batch in loader:
            if batch is None:
                continue
            used += len(batch["index"])
            with engine.autocast():
                logits = model(batch["fbank"].to(info.device, dtype=engine.input_dtype))
            targets = batch["target"].to(info.device)
            mask = batch.get("target_mask")
            loss = classification_loss(logits, targets, cfg.train.loss, None if mask is None else mask.to(info.device))
            loss_sum += float(loss) * len(batch["index"])
            parts["index"].append(batch["index"].numpy())
            parts["scores"].append(to_probabilities(logits, cfg.train.loss).cpu().numpy())
            parts["targets"].append(batch["target"].numpy())
            if mask is not None:
                parts["mask"].append(mask.numpy())
    finally:
        model.train(was_training)
    gathered = gather_objects((parts, loss_sum, len(sampler) - used))
    merged = {key: [a for p, _, _ in gathered for a in p[key]] for key in parts}
    if not merged["index"]:
        raise RuntimeError("evaluation read no usable clip (all skipped as unreadable or silent)")
    index = np.concatenate(merged["index"])
    order = np.argsort(index, kind="stable")
    pick = lambda arrays: np.concatenate(arrays)[order]  # noqa: E731
    pred = Predictions(
        index=index[order], scores=pick(merged["scores"]), targets=pick(merged["targets"]),
        mask=pick(merged["mask"]) if merged["mask"] else None,
        loss=sum(s for _, s, _ in gathered) / len(index),
    )
    return pred, sum(k for _, _, k in gathered)


# ------------------------------------------------------------------------------------ checkpoints


def model_state(model: nn.Module) -> dict[str, Tensor]:
    """float32 CPU copies of the model's tensors."""
    return {k: (v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()) for k, v in model.state_dict().items()}


def load_finetune_checkpoint(path: Path) -> dict[str, Any]:
    """A fine-tuning checkpoint (tensors, numbers, strings, lists and dicts only: weights_only loading)."""
    payload = torch_load(path)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path} is not an ssamba fine-tuning checkpoint (no format={CHECKPOINT_FORMAT!r})")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: fine-tuning checkpoint version {payload.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
    return payload


@dataclass
class FoldState:
    """Progress of one fold, saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    """Epochs completed."""
    batches_in_epoch: int = 0
    """Micro-batches of the current epoch already trained (mid-epoch checkpoints)."""
    best_epoch: int | None = None
    best_value: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    """Per completed epoch: {"epoch", "lr", "train_loss", "valid": scalar scores}."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Clips skipped (unreadable or silent) per split, as last seen."""
    nonfinite_total: int = 0


# ------------------------------------------------------------------------------------ one fold


@dataclass
class Context:
    """What every part of a fold's run needs."""

    cfg: FinetuneConfig
    info: DistInfo
    data: Any
    """The whole LabelledSet (class list, multi-label flag)."""
    run_dir: Path
    background_noise: Any = None
    """:class:`~ssamba.audio.augment.BackgroundNoise` mixed into training clips (reseeded per epoch), or None."""


def make_dataset(cfg: FinetuneConfig, subset):
    from ssamba.data.labelled import LabelledAudioDataset

    seconds = cfg.data.seconds_per_label if cfg.model.task == "per_second" else None
    return LabelledAudioDataset(subset, cfg.features, seconds_per_label=seconds)


def build_engine(cfg: FinetuneConfig, model: nn.Module, info: DistInfo) -> TorchEngine | DeepSpeedEngine:
    """The engine of ``dist.engine`` with the fine-tuning optimiser."""
    from ssamba.train.pretrain import resolve_deepspeed_config

    make_optim = lambda module: make_optimizer(cfg, module)  # noqa: E731
    if cfg.dist.engine == "deepspeed":
        ds_config = deepspeed_config(
            resolve_deepspeed_config(cfg.dist.deepspeed_config), batch_size=cfg.data.batch_size,
            world_size=info.world_size, optim=cfg.optim, precision=cfg.train.precision,
        )
        return DeepSpeedEngine(model, info, optim=cfg.optim, precision=cfg.train.precision, config=ds_config, make_optim=make_optim)
    return TorchEngine(model, info, optim=cfg.optim, precision=cfg.train.precision, compile=cfg.train.compile, make_optim=make_optim)


def train_fold(ctx: Context, plan: FoldPlan, resume: str, progress: bool) -> dict[str, Any]:
    """Train one model, select its epoch, test it once; returns (and writes) its results."""
    cfg, info = ctx.cfg, ctx.info
    run_dir = ctx.run_dir / plan.name if plan.name else ctx.run_dir
    results_path = run_dir / RESULTS_FILE
    checkpoints = CheckpointManager(run_dir, keep_last=1)
    if resume == "auto" and results_path.is_file():
        finished = json.loads(results_path.read_text(encoding="utf-8"))
        if len(finished["history"]) == cfg.train.epochs:
            return finished  # this fold finished before (with as many epochs as now asked for)
    resume_path = find_resume(resume, checkpoints)

    # 1. data and model
    classes = ctx.data.classes
    train_set = make_dataset(cfg, plan.train)
    valid_set = make_dataset(cfg, plan.valid) if plan.valid is not None else None
    test_set = make_dataset(cfg, plan.test) if plan.test is not None else None
    seed_everything(derive_seed(cfg.run.seed, plan.name, "init"))  # the head's initialisation
    model = build_classifier(cfg, len(classes))
    engine = build_engine(cfg, model, info)
    state = FoldState()
    if resume_path is not None:
        checkpoint = load_finetune_checkpoint(resume_path)
        check_same_task(checkpoint, cfg, classes, resume_path)
        model.load_state_dict(checkpoint["model"])
        engine.load_gathered_state({"optimizer": checkpoint["optimizer"], "scaler": checkpoint["scaler"]})
        state = FoldState(**checkpoint["fold_state"])
        del checkpoint

    # 2. run directory and logs
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
        checkpoints.remove_stale_temporaries()
    batches_per_epoch = math.ceil(len(train_set) / info.world_size / cfg.data.batch_size)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.optim.accumulate)
    total_steps = cfg.train.epochs * steps_per_epoch
    logger = MetricsLogger(run_dir, enabled=info.is_main, start_step=state.step, total_steps=total_steps, progress=progress,
                           desc=f"finetune {plan.name}".strip())
    weights = balanced_weights(plan.train) if cfg.data.balanced_sampling else None
    try:
        if resume_path is not None:
            logger.message(f"resumed from {resume_path} at step {state.step} (epoch {state.epoch + 1}, batch {state.batches_in_epoch})")
        logger.message(
            f"fine-tuning {plan.name or 'run'}: {len(plan.train)} train / {len(plan.valid) if plan.valid else 0} valid / "
            f"{len(plan.test) if plan.test else 0} test clips, {len(classes)} classes, "
            f"{sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6:.2f} M trainable parameters, "
            f"{info.world_size} x {info.device.type}, run dir {run_dir}"
        )
        if ctx.background_noise is not None:
            noise = ctx.background_noise
            logger.message(
                f"background noise: {len(noise.recordings)} recordings ({noise.samples / cfg.features.sample_rate:.1f} s) from "
                f"{noise.source}, mixed into {100 * noise.probability:g} % of training clips at "
                f"{noise.snr_db[0]:g} to {noise.snr_db[1]:g} dB SNR"
            )

        # 3. epochs: train, predict on valid (and test when an ensemble needs every epoch), checkpoint
        deadline = None if cfg.train.max_minutes is None else time.monotonic() + 60.0 * cfg.train.max_minutes
        while state.epoch < cfg.train.epochs:
            finished = train_epoch(ctx, model, engine, train_set, weights, state, checkpoints, logger, total_steps, deadline)
            if not finished:
                logger.message(f"train.max_minutes={cfg.train.max_minutes} reached at step {state.step}; continue with --resume auto")
                return {}
            end_of_epoch(ctx, model, engine, run_dir, valid_set, test_set, state, checkpoints, logger, plan)

        # 4. the selected model, tested once; ensemble and weight average
        results = final_results(ctx, model, engine, run_dir, valid_set, test_set, state, checkpoints, logger, plan)
        if info.is_main:
            write_json(results_path, results)
        barrier()
        return results
    finally:
        logger.close()


def find_resume(resume: str, checkpoints: CheckpointManager) -> Path | None:
    """``never`` (refuse an existing run), ``auto`` (last.pt when present) or a checkpoint path."""
    if resume == "never":
        if checkpoints.last.exists():
            raise ConfigError(f"{checkpoints.dir.parent} already holds a run ({checkpoints.last}); pass --resume auto to continue it, or choose another run.dir")
        return None
    if resume == "auto":
        return checkpoints.last if checkpoints.last.exists() else None
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: no such checkpoint file")
    return path


def check_same_task(checkpoint: dict[str, Any], cfg: FinetuneConfig, classes: list[str], source: Path) -> None:
    """A run may only resume with the same classes, model and features."""
    if checkpoint["classes"] != classes:
        raise ConfigError(f"cannot resume from {source}: its class list differs from data.manifest's")
    saved = checkpoint["config"]
    current = cfg.to_dict()
    for section in ("model", "features"):
        changed = sorted(k for k in set(saved[section]) | set(current[section])
                         if saved[section].get(k) != current[section].get(k) and k != "scan_backend")
        if changed:
            raise ConfigError(f"cannot resume from {source}: {', '.join(f'{section}.{k}' for k in changed)} differ from the checkpoint's config")


def train_epoch(
    ctx: Context, model: nn.Module, engine: Any, train_set, weights: np.ndarray | None, state: FoldState,
    checkpoints: CheckpointManager, logger: MetricsLogger, total_steps: int, deadline: float | None,
) -> bool:
    """Train the rest of epoch ``state.epoch``; False when train.max_minutes stopped it (checkpoint written)."""
    cfg, info = ctx.cfg, ctx.info
    epoch_seed = derive_seed(cfg.run.seed, "epoch", state.epoch, info.rank, state.batches_in_epoch)
    seed_everything(epoch_seed)  # drop path
    augment = BatchAugment(cfg, epoch_seed)
    if ctx.background_noise is not None:  # draws per (epoch, clip): the same after a resume, in any worker
        train_set.wave_transform = ctx.background_noise.reseeded(derive_seed(cfg.run.seed, "background_noise", state.epoch))
    sampler = EpochSampler(
        len(train_set), rank=info.rank, world_size=info.world_size, seed=derive_seed(cfg.run.seed, "train"), epoch=state.epoch,
        shuffle=True, weights=weights, start=state.batches_in_epoch * cfg.data.batch_size,
    )
    loader = make_loader(train_set, sampler, cfg.data.batch_size, cfg.data.num_workers)
    epoch_batches = math.ceil(sampler.epoch_size / cfg.data.batch_size)
    if engine.name == "deepspeed":  # DeepSpeed steps after every `accumulate` micro-batches: drop a partial rest
        epoch_batches -= epoch_batches % cfg.optim.accumulate
    model.train()
    if cfg.model.freeze_encoder:
        model.encoder.eval()
    if state.batches_in_epoch == 0:
        state.skipped["train"] = 0  # clips skipped in this epoch (the same bad file counts once per epoch)
    running, speed, epoch_loss = RunningMean(), Throughput(), RunningMean()
    nonfinite_in_row = micro = 0
    lr = learning_rate(cfg, state.step, state.epoch, total_steps)
    batches = iter(loader)
    wait_start = time.perf_counter()
    while True:
        # None: collate dropped every clip of the batch as unusable
        batch = next(batches, END_OF_EPOCH) if state.batches_in_epoch < epoch_batches else END_OF_EPOCH
        last = batch is END_OF_EPOCH
        usable = all_reduce(torch.tensor([float(not last and batch is not None)]), op=torch.distributed.ReduceOp.MIN)
        if usable.item():
            state.batches_in_epoch += 1
            state.skipped["train"] = state.skipped.get("train", 0) + int(batch["skipped"])
            speed.add(len(batch["index"]) * info.world_size, time.perf_counter() - wait_start)
            fbank, targets = augment(batch["fbank"], batch["target"])
            mask = batch.get("target_mask")
            fbank, targets = fbank.to(info.device, non_blocking=True), targets.to(info.device, non_blocking=True)
            lr = learning_rate(cfg, state.step, state.epoch, total_steps)
            engine.set_lr(lr)
            with engine.micro_batch(sync=(micro + 1) % cfg.optim.accumulate == 0):
                logits = engine.forward(fbank)
                loss = classification_loss(logits, targets, cfg.train.loss, None if mask is None else mask.to(info.device))
                nonfinite = all_reduce(torch.tensor([float(not torch.isfinite(loss.detach()).item())]))
                if nonfinite.item():
                    state.nonfinite_total += 1
                    nonfinite_in_row += 1
                    check_nonfinite(nonfinite_in_row, cfg, state, checkpoints)
                else:
                    engine.backward(loss)
                    running.add({"loss": float(loss.detach())})
                    epoch_loss.add({"loss": float(loss.detach())})
                    micro += 1
        elif not last:
            state.batches_in_epoch += 1  # some process's batch held no usable clip: every process skips it
            if batch is None:
                state.skipped["train"] = state.skipped.get("train", 0) + cfg.data.batch_size
        if micro and (micro == cfg.optim.accumulate or last):
            micro = 0
            result = engine.step()
            if not result.applied:
                state.nonfinite_total += 1
                nonfinite_in_row += 1
                check_nonfinite(nonfinite_in_row, cfg, state, checkpoints)
            else:
                nonfinite_in_row = 0
                state.step += 1
                running.add({"grad_norm": result.grad_norm})
                log_step(cfg, state, running, speed, lr, logger)
                if cfg.train.save_every and state.step % cfg.train.save_every == 0:
                    save_checkpoint(ctx, model, engine, state, checkpoints, is_best=False)
                if deadline is not None and out_of_time(deadline):
                    save_checkpoint(ctx, model, engine, state, checkpoints, is_best=False)
                    return False
        if last:
            break
        wait_start = time.perf_counter()
    state.history.append({"epoch": state.epoch + 1, "lr": lr, "train_loss": epoch_loss.pop().get("loss", math.nan)})
    return True


def log_step(cfg: FinetuneConfig, state: FoldState, running: RunningMean, speed: Throughput, lr: float, logger: MetricsLogger) -> None:
    """Training metrics every ``train.log_every`` steps; the progress bar every step."""
    if state.step % cfg.train.log_every:
        logger.progress(state.step)
        return
    means = running.pop()
    values = {**means, "lr": lr, **speed.pop(), "epoch": state.epoch, "nonfinite_skipped": state.nonfinite_total}
    logger.log(state.step, "train", values)
    logger.progress(state.step, {"loss": means.get("loss", math.nan), "clips/s": values["clips_per_s"]})


def out_of_time(deadline: float) -> bool:
    """Whether rank 0 passed ``deadline`` (the same answer on every process)."""
    return bool(broadcast(torch.tensor([float(time.monotonic() > deadline)])).item())


def check_nonfinite(in_row: int, cfg: FinetuneConfig, state: FoldState, checkpoints: CheckpointManager) -> None:
    if in_row >= cfg.train.max_nonfinite:
        raise NonFiniteLossError(
            f"{in_row} micro-batches in a row had a non-finite loss or gradient (train.max_nonfinite={cfg.train.max_nonfinite}) "
            f"after step {state.step}; the last good checkpoint is kept in {checkpoints.dir}. Lower optim.lr or set "
            "optim.grad_clip, then --resume auto"
        )


def save_checkpoint(ctx: Context, model: nn.Module, engine: Any, state: FoldState, checkpoints: CheckpointManager, *, is_best: bool) -> None:
    """Everything needed to resume, as plain tensors, numbers, strings, lists and dicts (a collective)."""
    optimizer = engine.gathered_state()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": model_state(model),
        "classes": list(ctx.data.classes),
        "multilabel": bool(ctx.data.multilabel),
        "encoder_config": model.encoder.config.to_dict(),
        "features": ctx.cfg.features.to_dict(),
        "step": state.step,
        "optimizer": optimizer["optimizer"],
        "scaler": optimizer["scaler"],
        "fold_state": dataclasses.asdict(state),
        "engine": engine.name,
        "world_size": ctx.info.world_size,
        "config": ctx.cfg.to_dict(),
    }
    if ctx.info.is_main:
        checkpoints.save(payload, is_best=is_best)
    barrier()


def end_of_epoch(
    ctx: Context, model: nn.Module, engine: Any, run_dir: Path, valid_set, test_set, state: FoldState,
    checkpoints: CheckpointManager, logger: MetricsLogger, plan: FoldPlan,
) -> None:
    """Score the epoch's model on valid (model selection), keep what ensembles need, checkpoint."""
    cfg, info = ctx.cfg, ctx.info
    epoch = state.epoch + 1
    record = state.history[-1]
    predictions = run_dir / PREDICTIONS_DIR
    is_best = False
    selection_set = valid_set if cfg.train.select != "fold_average" else test_set
    if selection_set is not None:
        split = "valid" if selection_set is valid_set else "test"
        pred, skipped = predict(model, engine, selection_set, cfg, info)
        state.skipped[split] = skipped
        scores = score_predictions(pred, ctx.data.multilabel, ctx.data.classes)
        record[split] = scalar_scores(scores)
        if info.is_main:
            predictions.mkdir(parents=True, exist_ok=True)
            pred.save(predictions / f"{split}-epoch-{epoch:03d}.npz")
        if cfg.train.ensemble:
            cum = ensemble_predictions(predictions, split, range(1, epoch + 1)) if info.is_main else None
            cum = gather_objects(cum)[0]
            record[f"cum_{split}"] = scalar_scores(score_predictions(cum, ctx.data.multilabel, ctx.data.classes))
        value = metric_value(scores, cfg.train.metric)
        if split == "valid" and (state.best_value is None or value > state.best_value):
            state.best_epoch, state.best_value, is_best = epoch, value, True
        logger.log(state.step, split, record[split])
        logger.message(
            f"epoch {epoch}/{cfg.train.epochs}: {split} acc {scores['accuracy']:.4f} mAP {scores['mAP']:.4f} "
            f"loss {scores['loss']:.4f}" + (" (best)" if is_best else "")
        )
    if cfg.train.ensemble and test_set is not None and selection_set is not test_set:
        pred, _ = predict(model, engine, test_set, cfg, info)  # written for the ensemble, not looked at
        if info.is_main:
            predictions.mkdir(parents=True, exist_ok=True)
            pred.save(predictions / f"test-epoch-{epoch:03d}.npz")
    if cfg.train.weight_average is not None and info.is_main:
        first, last = cfg.train.weight_average
        if first <= epoch <= last:
            save_weights(model, run_dir / EPOCH_WEIGHTS_DIR / f"epoch-{epoch:03d}.safetensors")
    state.epoch, state.batches_in_epoch = epoch, 0
    save_checkpoint(ctx, model, engine, state, checkpoints, is_best=is_best)


def save_weights(model: nn.Module, path: Path) -> None:
    """The model's tensors as safetensors, written atomically."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model_state(model).items()}, str(tmp))
    tmp.replace(path)


def ensemble_predictions(folder: Path, split: str, epochs) -> Predictions:
    """SSAST's checkpoint ensemble: the mean of the epochs' predictions on ``split``."""
    preds = [Predictions.load(folder / f"{split}-epoch-{e:03d}.npz") for e in epochs]
    first = preds[0]
    for other in preds[1:]:
        if not np.array_equal(other.index, first.index):
            raise RuntimeError(f"{folder}: the epochs' {split} predictions cover different clips; cannot ensemble them")
    scores = np.mean([p.scores for p in preds], axis=0)
    return Predictions(first.index, scores, first.targets, first.mask)  # no loss: the ensemble has no logits


def average_weights(paths: list[Path]) -> dict[str, Tensor]:
    """SSAST's weight averaging: the element-wise mean of the saved epochs' tensors."""
    from safetensors.torch import load_file

    total: dict[str, Tensor] = {}
    for path in paths:
        for name, value in load_file(str(path)).items():
            total[name] = total[name] + value.double() if name in total else value.double()
    return {name: (value / len(paths)).float() for name, value in total.items()}


def final_results(
    ctx: Context, model: nn.Module, engine: Any, run_dir: Path, valid_set, test_set, state: FoldState,
    checkpoints: CheckpointManager, logger: MetricsLogger, plan: FoldPlan,
) -> dict[str, Any]:
    """Load the selected epoch, evaluate it once on test; the ensemble and weight average likewise."""
    cfg, info, data = ctx.cfg, ctx.info, ctx.data
    if cfg.train.select == "best" and state.best_epoch is not None:
        selected = state.best_epoch
        model.load_state_dict(load_finetune_checkpoint(checkpoints.best)["model"])
        rule = f"best valid {cfg.train.metric}"
    else:
        selected = state.epoch
        rule = "last epoch" if cfg.train.select == "last" else "fold_average (epoch chosen after all folds; this fold's model: last epoch)"
    results: dict[str, Any] = {
        "fold": plan.name or None,
        "selection": {"rule": rule, "epoch": selected, "metric": cfg.train.metric},
        "classes": list(data.classes),
        "multilabel": bool(data.multilabel),
        "clips": {"train": len(plan.train), "valid": len(plan.valid) if plan.valid else 0, "test": len(plan.test) if plan.test else 0},
        "history": state.history,
    }
    valid_record = state.history[selected - 1].get("valid") if selected else None
    results["valid"] = valid_record
    if test_set is not None:
        pred, skipped = predict(model, engine, test_set, cfg, info)
        state.skipped["test"] = skipped
        test_scores = score_predictions(pred, data.multilabel, data.classes)
        results["test"] = test_scores
        if info.is_main:
            (run_dir / PREDICTIONS_DIR).mkdir(parents=True, exist_ok=True)
            pred.with_sources(test_set, data.classes).save(run_dir / PREDICTIONS_DIR / SELECTED_TEST_PREDICTIONS)
        logger.log(state.step, "test", scalar_scores(test_scores))
        logger.message(f"selected epoch {selected} ({rule}): test acc {test_scores['accuracy']:.4f} mAP {test_scores['mAP']:.4f}")
    if info.is_main:
        export_selected(ctx, model, run_dir / MODEL_DIR, plan, selected, rule)
    predictions = run_dir / PREDICTIONS_DIR
    if cfg.train.ensemble:
        results["ensemble"] = {"epochs": [1, state.epoch]}
        for split, subset in (("valid", valid_set), ("test", test_set)):
            if subset is not None and (predictions / f"{split}-epoch-{state.epoch:03d}.npz").exists():
                cum = ensemble_predictions(predictions, split, range(1, state.epoch + 1))
                results["ensemble"][split] = score_predictions(cum, data.multilabel, data.classes)
    if cfg.train.weight_average is not None:
        first, last = cfg.train.weight_average
        paths = [run_dir / EPOCH_WEIGHTS_DIR / f"epoch-{e:03d}.safetensors" for e in range(first, last + 1)]
        model.load_state_dict(average_weights(paths))
        results["weight_average"] = {"epochs": [first, last]}
        for split, subset in (("valid", valid_set), ("test", test_set)):
            if subset is not None:
                pred, _ = predict(model, engine, subset, cfg, info)
                results["weight_average"][split] = score_predictions(pred, data.multilabel, data.classes)
        if info.is_main:
            export_selected(ctx, model, run_dir / WA_MODEL_DIR, plan, None, f"weight average of epochs {first}-{last}")
    results["skipped_clips"] = dict(state.skipped)
    return results


def export_selected(ctx: Context, model: nn.Module, out: Path, plan: FoldPlan, epoch: int | None, rule: str) -> None:
    """The classifier as an export directory (``ssamba.load_classifier(out)``)."""
    from ssamba.interop.classifier import export_classifier

    cfg = ctx.cfg
    export_classifier(
        model, out, classes=ctx.data.classes, features=cfg.features, multilabel=ctx.data.multilabel,
        activation="softmax" if cfg.train.loss == "ce" else "sigmoid",
        seconds_per_label=cfg.data.seconds_per_label if cfg.model.task == "per_second" else None,
        display_names=getattr(ctx.data, "display_names", None),
        provenance={"pretrained": cfg.model.pretrained, "fold": plan.name or None, "epoch": epoch, "selection": rule,
                    "manifest": str(cfg.data.manifest), "loss": cfg.train.loss},
        overwrite=True,
    )


def write_json(path: Path, value: Any) -> None:
    """Atomic JSON write (NaN written as null)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_jsonable(value), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# ------------------------------------------------------------------------------------ the run


def summarise_folds(cfg: FinetuneConfig, folds: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-fold and mean +- std (over folds) test numbers; SSAST's fold-average epoch rule when chosen."""
    names = ("accuracy", "mAP", "mAUC", "d_prime")
    out: dict[str, Any] = {"folds": {r["fold"]: r for r in folds}}
    if cfg.train.select == "fold_average":
        epochs = len(folds[0]["history"])
        key = "accuracy" if cfg.train.metric == "acc" else cfg.train.metric
        sign = -1.0 if cfg.train.metric == "loss" else 1.0
        average = [float(np.mean([r["history"][e]["test"][key] for r in folds])) for e in range(epochs)]
        best = int(np.argmax([sign * a for a in average]))
        per_fold = {r["fold"]: {n: r["history"][best]["test"].get(n) for n in (*names, "loss")} for r in folds}
        out["fold_average"] = {
            "rule": "SSAST ESC-50: the single epoch best on the average over folds of the held-out fold's "
                    f"{cfg.train.metric} (selected on the test folds)",
            "epoch": best + 1, "average_by_epoch": average, "per_fold": per_fold,
            "mean": {n: float(np.mean([v[n] for v in per_fold.values()])) for n in names},
            "std": {n: float(np.std([v[n] for v in per_fold.values()])) for n in names},
        }
    tested = [r for r in folds if r.get("test")]
    if tested:
        out["test_mean"] = {n: float(np.mean([r["test"][n] for r in tested])) for n in names}
        out["test_std"] = {n: float(np.std([r["test"][n] for r in tested])) for n in names}
    return out


def finetune(cfg: FinetuneConfig, resume: str = "never", progress: bool = True) -> dict[str, Any]:
    """Run (or continue) fine-tuning as configured; returns what RUN/results.json holds."""
    data = read_data(cfg)
    plans = plan_folds(cfg, data)  # every data problem is raised here, before any training
    background_noise = load_background_noise(cfg)
    info = init_distributed(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_minutes, single_process_group=cfg.dist.engine == "deepspeed")
    run_dir = Path(cfg.run.dir)
    lock = RunLock(run_dir)
    try:
        for note in lock_run(lock, info):
            print(note, file=sys.stderr, flush=True)
        ctx = Context(cfg, info, data, run_dir, background_noise)
        fold_results = []
        for plan in plans:
            result = train_fold(ctx, plan, resume, progress)
            if not result:
                return {}  # stopped by train.max_minutes
            fold_results.append(result)
        results = fold_results[0] if cfg.data.folds is None else summarise_folds(cfg, fold_results)
        if info.is_main:
            write_json(run_dir / RESULTS_FILE, results)
            print(summary_line(cfg, results), flush=True)
        return results
    finally:
        lock.release()
        shutdown_distributed()


def summary_line(cfg: FinetuneConfig, results: dict[str, Any]) -> str:
    if cfg.data.folds is None:
        test = results.get("test") or {}
        valid = results.get("valid") or {}
        return (f"selected epoch {results['selection']['epoch']}: valid {_fmt(valid)}; test {_fmt(test) if test else 'none (no test split)'}"
                f"; results in {Path(cfg.run.dir) / RESULTS_FILE}")
    parts = []
    if "test_mean" in results:
        parts.append("test mean " + ", ".join(f"{k} {results['test_mean'][k]:.4f} +- {results['test_std'][k]:.4f}" for k in ("accuracy", "mAP")))
    if "fold_average" in results:
        fa = results["fold_average"]
        parts.append(f"fold-average rule: epoch {fa['epoch']}, accuracy {fa['mean']['accuracy']:.4f} +- {fa['std']['accuracy']:.4f}")
    return f"{cfg.data.folds}-fold cross-validation: " + "; ".join(parts) + f"; results in {Path(cfg.run.dir) / RESULTS_FILE}"


def _fmt(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k} {scores[k]:.4f}" for k in ("accuracy", "mAP") if scores.get(k) is not None)


# ------------------------------------------------------------------------------------ command line


def main(args: argparse.Namespace) -> int:
    cfg = load_finetune_config(args.config, args.overrides)
    if args.dry_run:
        plans = plan_folds(cfg, read_data(cfg))
        background_noise = load_background_noise(cfg)
        print(cfg.to_yaml(), end="")
        for plan in plans:
            sizes = ", ".join(f"{name} {len(part) if part is not None else 0}" for name, part in (("train", plan.train), ("valid", plan.valid), ("test", plan.test)))
            print(f"# {plan.name or 'run'}: {sizes} clips")
        if background_noise is not None:
            print(f"# background noise: {len(background_noise.recordings)} recordings from {background_noise.source}")
        return 0
    finetune(cfg, resume=args.resume, progress=not args.no_progress)
    return 0
