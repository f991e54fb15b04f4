"""Pretrain an Audio Mamba encoder with SSAMBA's masked-patch objective (1 or many processes).

The `ssamba pretrain` command (its options and examples) is :mod:`ssamba.commands.pretrain`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ssamba.data.stream import INDEX_FILE, derive_seed, expand_shards
from ssamba.errors import UnsafeCheckpointError
from ssamba.interop.checkpoints import CheckpointError
from ssamba.train.config import ConfigError, PretrainConfig, load_config
from ssamba.train.engine import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    CheckpointManager,
    DeepSpeedEngine,
    DistInfo,
    LRSchedule,
    NonFiniteLossError,
    RunLock,
    TorchEngine,
    all_reduce,
    barrier,
    broadcast,
    deepspeed_config,
    gather_objects,
    init_distributed,
    load_checkpoint,
    lock_run,
    rng_state,
    seed_everything,
    set_rng_state,
    shutdown_distributed,
)
from ssamba.train.metrics import MetricsLogger, RunningMean, Throughput

CONFIG_FILE = "config.yaml"
EVAL_SEED = 1234
"""Seed of the evaluation masks: every evaluation scores the same masks."""
ARCHITECTURE_SECTIONS = ("model", "objective", "features")
"""Config sections a resumed run must share with the checkpoint ..."""
FREE_ON_RESUME = {"model.scan_backend"}
"""... except these keys (implementation choices that do not change the model)."""


UNREADABLE_SUFFIX = ".unreadable"
"""Checkpoints that ``--resume auto`` could not read are renamed with this suffix (kept, never deleted)."""


# ----------------------------------------------------------------------------------------- data


def count_clips(spec: str | dict[str, float]) -> int | None:
    """Clips in a shard set (or a mix of them), from the index.json that ``ssamba shards`` writes (None without one)."""
    if isinstance(spec, dict):
        counts = [count_clips(source) for source in spec]
        return None if None in counts else sum(counts)
    path = Path(spec)
    index = path / INDEX_FILE if path.is_dir() else path
    if index.suffix != ".json" or not index.is_file():
        return None
    return int(json.loads(index.read_text(encoding="utf-8"))["count"])


def epoch_batches(spec: str | dict[str, float], given: int | None, batch_size: int, world_size: int, key: str) -> int | None:
    """Micro-batches per process and epoch: ``given``, else the shard index's clips // (batch x processes)."""
    if given is not None:
        return given
    clips = count_clips(spec)
    if clips is None:
        if world_size > 1:
            raise ConfigError(f"{key}: set data.epoch_length, {spec!r} has no index.json to count its clips (needed with several processes)")
        return None
    batches = clips // (batch_size * world_size)
    if batches == 0:
        raise ConfigError(f"{key}: {spec!r} holds {clips} clips, fewer than one batch of {batch_size} per process x {world_size} processes")
    return batches


def make_train_loader(cfg: PretrainConfig, info: DistInfo) -> Any:
    """The training loader: this process's share of the shards, shuffled per epoch."""
    from ssamba.data.stream import make_loader

    length = epoch_batches(cfg.data.train_shards, cfg.data.epoch_length, cfg.data.batch_size, info.world_size, "data.train_shards")
    return make_loader(
        cfg.data.train_shards, cfg.features, cfg.data.batch_size, num_workers=cfg.data.num_workers, seed=cfg.run.seed,
        epoch_length=length, rank=info.rank, world_size=info.world_size, shuffle_buffer=cfg.data.shuffle_buffer,
    )


def make_eval_loader(cfg: PretrainConfig, info: DistInfo) -> Any:
    """The evaluation loader: the held-out shards in a fixed order, split over the processes."""
    from ssamba.data.stream import make_loader

    batch_size = cfg.data.eval_batch_size or cfg.data.batch_size
    length = epoch_batches(cfg.data.eval_shards, None, batch_size, info.world_size, "data.eval_shards")
    if length is not None and cfg.data.eval_max_batches is not None:
        length = min(length, cfg.data.eval_max_batches)
    return make_loader(
        cfg.data.eval_shards, cfg.features, batch_size, num_workers=cfg.data.num_workers, seed=cfg.run.seed,
        epoch_length=length, rank=info.rank, world_size=info.world_size, shuffle_buffer=0,
    )


class TrainBatches:
    """Training micro-batches, epoch after epoch, until ``train.epochs`` passes are done.

    The loader gives every process the same number of batches per epoch, so processes stay in
    step. Its ``state_dict()`` (epoch, batches consumed) goes into checkpoints: resuming at an epoch
    boundary continues exactly; inside an epoch the rest of it is a fresh deterministic draw.
    """

    def __init__(self, loader: Any, epochs: int | None) -> None:
        self.loader = loader
        self.epochs = epochs
        self._iterator: Iterator[dict[str, Any]] | None = None
        self.wait_s = 0.0

    def next(self) -> Tensor | None:
        """The next micro-batch (B, T, F), or None once the last epoch is done."""
        start = time.perf_counter()
        try:
            while self.epochs is None or self.loader.epoch < self.epochs:
                if self._iterator is None:
                    if self.loader.epoch_length is not None and self.loader.batches_in_epoch >= self.loader.epoch_length:
                        self.loader.set_epoch(self.loader.epoch + 1)  # resumed right at the end of an epoch
                        continue
                    self._iterator = iter(self.loader)
                batch = next(self._iterator, None)
                if batch is not None:
                    return batch["fbank"]
                self._iterator = None  # the loader moved to the next epoch
            return None
        finally:
            self.wait_s += time.perf_counter() - start


# ------------------------------------------------------------------------------------ evaluation


@torch.no_grad()
def evaluate(model: torch.nn.Module, engine: TorchEngine | DeepSpeedEngine, loader: Any, info: DistInfo, single_pass: bool) -> dict[str, float]:
    """Mean mpc accuracy, nce and mpg MSE on the held-out shards, with the same masks every time."""
    generator = torch.Generator(device=info.device).manual_seed(EVAL_SEED + info.rank)
    sums = torch.zeros(4, dtype=torch.float64)  # acc, nce, mse (each times the clips), clips
    loader.set_epoch(0)
    model.eval()
    try:
        for batch in loader:
            fbank = batch["fbank"].to(info.device, dtype=engine.input_dtype)
            clips = fbank.shape[0]
            mask_ids = model.make_mask(clips, generator=generator)
            mpg_mask_ids = None if single_pass else model.make_mask(clips, generator=generator)
            with engine.autocast():
                out = model(fbank, mask_ids, mpg_mask_ids)
            sums += torch.tensor([float(out.acc) * clips, float(out.nce) * clips, float(out.mse) * clips, clips], dtype=torch.float64)
    finally:
        model.train()
    all_reduce(sums)
    clips = sums[3].item()
    if clips == 0:
        raise RuntimeError("evaluation read no clips from data.eval_shards")
    return {"acc": sums[0].item() / clips, "nce": sums[1].item() / clips, "mse": sums[2].item() / clips, "clips": clips}


# ------------------------------------------------------------------------------------ the run


@dataclass
class RunState:
    """Counters saved with every checkpoint besides the model, optimiser, schedule and data position."""

    step: int = 0
    best_eval_acc: float | None = None
    nonfinite_total: int = 0
    clips_seen: int = 0


def build_engine(cfg: PretrainConfig, model: torch.nn.Module, info: DistInfo) -> TorchEngine | DeepSpeedEngine:
    """The training engine named by ``dist.engine``."""
    if cfg.dist.engine == "deepspeed":
        ds_config = deepspeed_config(
            resolve_deepspeed_config(cfg.dist.deepspeed_config), batch_size=cfg.data.batch_size,
            world_size=info.world_size, optim=cfg.optim, precision=cfg.train.precision,
        )
        return DeepSpeedEngine(model, info, optim=cfg.optim, precision=cfg.train.precision, config=ds_config)
    return TorchEngine(model, info, optim=cfg.optim, precision=cfg.train.precision, compile=cfg.train.compile)


def resolve_deepspeed_config(path: str) -> Path:
    """``dist.deepspeed_config`` as given, else relative to the repository root (configs/deepspeed/...)."""
    candidate = Path(path)
    if candidate.is_file():
        return candidate
    in_repo = Path(__file__).resolve().parents[2] / path
    if not candidate.is_absolute() and in_repo.is_file():
        return in_repo
    raise ConfigError(f"dist.deepspeed_config: file {path} not found")


@dataclass
class ResumePoint:
    """Where a run starts: a checkpoint (path and contents) or nothing, and what was skipped on the way."""

    path: Path | None = None
    checkpoint: dict[str, Any] | None = None
    skipped: list[tuple[Path, str]] = dataclasses.field(default_factory=list)

    def messages(self) -> list[str]:
        return [f"--resume auto: skipped {path} ({reason})" for path, reason in self.skipped]


def find_resume_checkpoint(resume: str, checkpoints: CheckpointManager, *, unsafe_load: bool | None = None) -> ResumePoint:
    """The checkpoint to resume from, loaded: ``never``, ``auto`` or a path.

    ``never`` refuses a run directory that holds checkpoints. ``auto`` starts fresh only when the run
    directory holds no checkpoint at all; otherwise it takes the newest one that loads (last.pt, then
    the step files newest first, then best.pt) and reports why it skipped the others; if none loads it
    stops with every reason (a fresh start would overwrite the run's history). A refused unsafe file
    (see ``--unsafe-load``) is never skipped silently: it stops the run.
    """
    existing = checkpoints.existing()
    if resume == "never":
        if existing:
            raise ConfigError(
                f"{checkpoints.dir.parent} already holds a run ({', '.join(p.name for p in existing)} in {checkpoints.dir}); "
                "pass --resume auto to continue it, or choose another run.dir"
            )
        return ResumePoint()
    if resume == "auto":
        point = ResumePoint()
        for path in existing:
            try:
                point.checkpoint = load_checkpoint(path, unsafe_load=unsafe_load)
            except UnsafeCheckpointError:
                raise
            except CheckpointError as error:
                point.skipped.append((path, str(error).removeprefix(f"{path}: ")))
                continue
            point.path = path
            return point
        if point.skipped:
            reasons = "; ".join(f"{p.name}: {reason}" for p, reason in point.skipped)
            raise CheckpointError(
                f"--resume auto: none of the checkpoints in {checkpoints.dir} can be read ({reasons}); "
                "move them away to start a new run there, or pass --resume PATH with an intact copy"
            )
        return point
    path = Path(resume)
    if not path.exists():
        raise ConfigError(f"--resume {resume}: no such checkpoint file")
    if not path.is_file():
        raise ConfigError(f"--resume {resume}: a directory; pass a checkpoint file (e.g. {path / 'checkpoints' / 'last.pt'}) or --resume auto")
    return ResumePoint(path=path, checkpoint=load_checkpoint(path, unsafe_load=unsafe_load))


def set_aside_unreadable(point: ResumePoint) -> list[str]:
    """Rename checkpoints ``--resume auto`` skipped (``*.unreadable``), so that neither pruning nor a later
    resume takes them for the run's newest state; returns what was done."""
    done = []
    for path, _ in point.skipped:
        target = path.with_name(path.name + UNREADABLE_SUFFIX)
        if path.exists():
            os.replace(path, target)
            done.append(f"renamed the unreadable {path.name} to {target.name}")
    return done


# ------------------------------------------------------------------------------------ checks before work


def check_inputs(cfg: PretrainConfig) -> None:
    """Check the files a run needs before any work: run.dir is not a file, every shard exists and can
    be read, and no shard set is empty. ConfigError names the key and the path."""
    run_dir = Path(cfg.run.dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run.dir: {run_dir} exists and is not a directory")
    train = cfg.data.train_shards
    for source in train if isinstance(train, dict) else [train]:
        key = f"data.train_shards.{source}" if isinstance(train, dict) else "data.train_shards"
        check_shard_set(source, key)
    if cfg.data.eval_shards:
        check_shard_set(cfg.data.eval_shards, "data.eval_shards")


def check_shard_set(spec: str, key: str) -> None:
    """Shards of ``spec`` exist, open for reading, and are not all empty (index count 0 or 0-byte files)."""
    try:
        paths = expand_shards(spec)
        clips = count_clips(spec)
    except FileNotFoundError:
        raise ConfigError(
            f"{key}: no shards at {spec!r} (expected a folder or index.json written by `ssamba shards`, a .tar file or a pattern)"
        ) from None
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"{key}: cannot read the shard index of {spec!r}: {error}") from None
    sizes = []
    for path in paths:
        try:
            with open(path, "rb") as handle:
                sizes.append(os.fstat(handle.fileno()).st_size)
        except OSError as error:
            raise ConfigError(f"{key}: shard {path} cannot be read ({error.strerror or error})") from None
    if clips == 0 or not any(sizes):
        why = "its index counts 0 clips" if clips == 0 else f"all {len(paths)} shard file(s) are empty (0 bytes)"
        raise ConfigError(f"{key}: {spec!r} holds no clips: {why}")


def check_resumable(cfg: PretrainConfig, checkpoint: dict[str, Any], source: Path) -> None:
    """The architecture sections of the config must match those of the checkpoint's run."""
    saved = checkpoint.get("config", {})
    current = cfg.to_dict()
    for section in ARCHITECTURE_SECTIONS:
        old, new = saved.get(section, {}), current[section]
        changed = sorted(key for key in set(old) | set(new) if old.get(key) != new.get(key) and f"{section}.{key}" not in FREE_ON_RESUME)
        if changed:
            raise ConfigError(f"cannot resume from {source}: {', '.join(f'{section}.{k}' for k in changed)} differ from the checkpoint's config")


def planned_steps(cfg: PretrainConfig, batches_per_epoch: int | None) -> int | None:
    """Optimiser steps the run will take (progress bar total and ETA), when known."""
    by_epochs = None
    if cfg.train.epochs is not None and batches_per_epoch is not None:
        by_epochs = cfg.train.epochs * batches_per_epoch // cfg.optim.accumulate
    candidates = [n for n in (cfg.train.max_steps, by_epochs) if n is not None]
    return min(candidates) if candidates else None


def checkpoint_payload(
    cfg: PretrainConfig, model: torch.nn.Module, engine: TorchEngine | DeepSpeedEngine, schedule: LRSchedule,
    state: RunState, loader: Any, info: DistInfo, metrics: dict[str, float],
) -> dict[str, Any]:
    """Everything needed to resume (a collective: every rank takes part; rank 0 writes it)."""
    optimizer_state = engine.gathered_state()
    rng = gather_objects(rng_state(model.mask_generator()))
    digests = gather_objects(parameter_digest(model))
    if len(set(digests)) > 1:
        raise RuntimeError(f"processes hold different model parameters at step {state.step} (digests {digests}); the run is out of sync")
    return {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model": {name: value.detach().cpu().float() if value.is_floating_point() else value.detach().cpu() for name, value in model.state_dict().items()},
        "encoder_config": model.encoder.config.to_dict(),
        "objective_config": cfg.objective.to_dict(),
        "features": cfg.features.to_dict(),
        "step": state.step,
        "optimizer": optimizer_state["optimizer"],
        "scheduler": schedule.state_dict(),
        "scaler": optimizer_state["scaler"],
        "rng": rng,
        "data_state": loader.state_dict(),
        "metrics": dict(metrics),
        "run_state": dataclasses.asdict(state),
        "engine": engine.name,
        "world_size": info.world_size,
        "parameter_digests": digests,
        "config": cfg.to_dict(),
    }


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of all parameter values (equal on every process of a synchronised run)."""
    digest = hashlib.sha256()
    for name, param in model.named_parameters():
        digest.update(name.encode())
        digest.update(param.detach().cpu().float().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def restore(
    checkpoint: dict[str, Any], model: torch.nn.Module, engine: TorchEngine | DeepSpeedEngine, schedule: LRSchedule, loader: Any, info: DistInfo
) -> RunState:
    """Load optimiser, schedule, RNG, data position and counters (the model weights are loaded before)."""
    if checkpoint.get("engine") != engine.name:
        raise ConfigError(f"the checkpoint was written with dist.engine={checkpoint.get('engine')}; resume with the same engine")
    engine.load_gathered_state({"optimizer": checkpoint["optimizer"], "scaler": checkpoint["scaler"]})
    schedule.load_state_dict(checkpoint["scheduler"])
    loader.load_state_dict(checkpoint["data_state"])
    saved_rng = checkpoint["rng"]
    if len(saved_rng) == info.world_size:
        set_rng_state(saved_rng[info.rank], model.mask_generator())
    else:  # another process count: the data split changes anyway; start fresh random streams
        seed_everything(derive_seed(checkpoint["step"], info.rank))
        model.reseed_masks(derive_seed(checkpoint["step"], info.rank, "masks"))
    return RunState(**checkpoint["run_state"])


def pretrain(cfg: PretrainConfig, resume: str = "never", progress: bool = True, *, unsafe_load: bool | None = None) -> dict[str, float]:
    """Run (or continue) pretraining as configured; returns the last logged metrics.

    The run directory is locked for the whole run (:class:`~ssamba.train.engine.RunLock`); ``resume``
    follows :func:`find_resume_checkpoint`; checkpoints are read weights-only unless ``unsafe_load``.
    """
    from ssamba.models.encoder import AudioMambaEncoder
    from ssamba.models.masked import MaskedPatchModel

    check_inputs(cfg)
    info = init_distributed(cfg.train.device, cfg.dist.backend, cfg.dist.timeout_minutes, single_process_group=cfg.dist.engine == "deepspeed")
    run_dir = Path(cfg.run.dir)
    lock = RunLock(run_dir)
    try:
        notes = lock_run(lock, info)
        checkpoints = CheckpointManager(run_dir, cfg.train.keep_last)
        point = find_resume_checkpoint(resume, checkpoints, unsafe_load=unsafe_load)
        checkpoint, resume_path = point.checkpoint, point.path
        if checkpoint is not None:
            check_resumable(cfg, checkpoint, resume_path)
        notes += point.messages()
        if info.is_main:
            notes += set_aside_unreadable(point)

        # 1. data
        train_loader = make_train_loader(cfg, info)
        eval_loader = make_eval_loader(cfg, info) if cfg.train.eval_every else None

        # 2. the model (same initial weights on every rank), its optimiser and the lr schedule
        seed_everything(cfg.run.seed)
        model = MaskedPatchModel(AudioMambaEncoder(cfg.encoder_config()), cfg.objective, mask_seed=derive_seed(cfg.run.seed, info.rank, "masks"))
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        seed_everything(derive_seed(cfg.run.seed, info.rank))  # per-rank stream (drop path)
        engine = build_engine(cfg, model, info)
        schedule = LRSchedule(
            cfg.schedule.name, cfg.optim.lr, cfg.schedule.warmup_steps, total_steps=cfg.train.max_steps,
            factor=cfg.schedule.plateau_factor, patience=cfg.schedule.plateau_patience,
            threshold=cfg.schedule.plateau_threshold, min_lr=cfg.schedule.min_lr,
        )
        state = RunState()
        if checkpoint is not None:
            state = restore(checkpoint, model, engine, schedule, train_loader, info)
            del checkpoint

        # 3. run directory and logs (rank 0)
        if info.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / CONFIG_FILE).write_text(cfg.to_yaml(), encoding="utf-8")
            checkpoints.remove_stale_temporaries()
        total = planned_steps(cfg, train_loader.epoch_length)
        logger = MetricsLogger(run_dir, enabled=info.is_main, start_step=state.step, total_steps=total, progress=progress)
        try:
            for note in notes:
                logger.message(note)
            if resume_path is not None:
                logger.message(f"resumed from {resume_path} at step {state.step} (data position {train_loader.state_dict()})")
            overrides = ", ".join(f"{key}={value}" for key, value in sorted(cfg.model.overrides.items()))
            logger.message(
                f"pretraining {cfg.model.preset}{f' with {overrides}' if overrides else ''} "
                f"({sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters) "
                f"on {info.world_size} x {info.device.type}, engine {engine.name}, "
                f"global batch {cfg.data.batch_size * info.world_size * cfg.optim.accumulate}, run dir {run_dir}"
            )
            return train_loop(cfg, info, model, engine, schedule, state, train_loader, eval_loader, checkpoints, logger)
        finally:
            logger.close()
    finally:
        lock.release()
        shutdown_distributed()




def train_loop(
    cfg: PretrainConfig,
    info: DistInfo,
    model: torch.nn.Module,
    engine: TorchEngine | DeepSpeedEngine,
    schedule: LRSchedule,
    state: RunState,
    train_loader: Any,
    eval_loader: Any,
    checkpoints: CheckpointManager,
    logger: MetricsLogger,
) -> dict[str, float]:
    """Optimiser steps of ``optim.accumulate`` micro-batches, with evaluation, checkpoints and logs."""
    train = cfg.train
    batches = TrainBatches(train_loader, train.epochs)
    running = RunningMean()
    speed = Throughput()
    nonfinite_in_row = 0
    last_metrics: dict[str, float] = {}
    saved_step = logged_step = state.step

    def save(is_best: bool) -> None:
        nonlocal saved_step
        payload = checkpoint_payload(cfg, model, engine, schedule, state, train_loader, info, last_metrics)
        if info.is_main:
            checkpoints.save(payload, is_best=is_best)
        barrier()
        saved_step = state.step

    def log_train() -> None:
        nonlocal last_metrics, logged_step
        means = mean_across_ranks(running.pop())
        last_metrics = {**means, "lr": schedule.lr(state.step - 1), **speed.pop(), "nonfinite_skipped": state.nonfinite_total, "epoch": train_loader.epoch, "data_skipped": train_loader.skipped_total}
        logger.log(state.step, "train", last_metrics)
        logger.progress(state.step, {"loss": means["loss"], "acc": means["acc"], "clips/s": last_metrics["clips_per_s"]})
        logged_step = state.step

    def count_nonfinite() -> None:
        nonlocal nonfinite_in_row
        state.nonfinite_total += 1
        nonfinite_in_row += 1
        if nonfinite_in_row >= train.max_nonfinite:
            raise NonFiniteLossError(
                f"{nonfinite_in_row} micro-batches in a row had a non-finite loss or gradient (train.max_nonfinite="
                f"{train.max_nonfinite}) after step {state.step}; stopped without writing a checkpoint, the last good one "
                f"is kept in {checkpoints.dir}. Lower optim.lr, set optim.grad_clip or use train.precision=fp32/bf16, then --resume auto"
            )

    deadline = None if train.max_minutes is None else time.monotonic() + 60.0 * train.max_minutes
    while train.max_steps is None or state.step < train.max_steps:
        if deadline is not None and out_of_time(deadline):
            logger.message(f"train.max_minutes={train.max_minutes} reached at step {state.step}")
            break
        engine.set_lr(schedule.lr(state.step))

        # one optimiser step: `accumulate` micro-batches whose loss is finite on every process
        done = 0
        while done < cfg.optim.accumulate:
            fbank = batches.next()
            if fbank is None:
                break
            fbank = fbank.to(info.device, non_blocking=True)
            with engine.micro_batch(sync=done == cfg.optim.accumulate - 1):
                out = engine.forward(fbank)
                nonfinite = all_reduce(torch.tensor([float(not torch.isfinite(out.loss.detach()).item())]))
                if nonfinite.item():
                    del out
                    count_nonfinite()
                    continue
                engine.backward(out.loss)
            done += 1
            running.add(out.metrics())
            clips = fbank.shape[0] * info.world_size
            state.clips_seen += clips
            speed.add(clips, batches.wait_s)
            batches.wait_s = 0.0
        if done < cfg.optim.accumulate:
            break  # the last epoch is over

        result = engine.step()
        if not result.applied:
            count_nonfinite()
            continue
        nonfinite_in_row = 0
        state.step += 1
        running.add({"grad_norm": result.grad_norm})

        if state.step % train.log_every == 0:
            log_train()
        else:
            logger.progress(state.step)

        is_best = False
        if train.eval_every and state.step % train.eval_every == 0:
            scores = evaluate(model, engine, eval_loader, info, cfg.objective.single_pass)
            is_best = state.best_eval_acc is None or scores["acc"] > state.best_eval_acc
            if is_best:
                state.best_eval_acc = scores["acc"]
            reduced = schedule.observe(scores["acc"])
            logger.log(state.step, "eval", {**scores, "best_acc": state.best_eval_acc})
            last_metrics = {**last_metrics, **{f"eval_{name}": value for name, value in scores.items()}}
            logger.message(
                f"step {state.step}: eval acc {scores['acc']:.4f} nce {scores['nce']:.4f} mse {scores['mse']:.4f}"
                + (" (best)" if is_best else "") + (f"; lr reduced to {schedule.lr(state.step):.3g}" if reduced else "")
            )
        if is_best or state.step % train.save_every == 0:
            save(is_best)

    if state.step != logged_step:
        log_train()
    if state.step != saved_step:
        save(is_best=False)  # the final state
    logger.message(f"finished at step {state.step} (epoch {train_loader.epoch}); checkpoints in {checkpoints.dir}")
    return last_metrics


def out_of_time(deadline: float) -> bool:
    """Whether rank 0 passed ``deadline`` (the same answer on every process)."""
    return bool(broadcast(torch.tensor([float(time.monotonic() > deadline)])).item())


def mean_across_ranks(means: dict[str, float]) -> dict[str, float]:
    """Average per-process means over the job."""
    names = sorted(means)
    values = all_reduce(torch.tensor([means[name] for name in names], dtype=torch.float64))
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    return {name: float(value) / world for name, value in zip(names, values)}


# ------------------------------------------------------------------------------------ command line


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    check_inputs(cfg)
    if args.dry_run:
        point = find_resume_checkpoint(args.resume, CheckpointManager(Path(cfg.run.dir), cfg.train.keep_last))
        if point.checkpoint is not None:
            check_resumable(cfg, point.checkpoint, point.path)
        print(cfg.to_yaml(), end="")
        for message in point.messages():
            print(message, file=sys.stderr)
        start = f"resume from {point.path} (step {point.checkpoint['step']})" if point.path else "start a new run"
        print(f"dry run: config, shards and run directory are valid; would {start} in {cfg.run.dir}", file=sys.stderr)
        return 0
    pretrain(cfg, resume=args.resume, progress=not args.no_progress)
    return 0
