"""Training infrastructure: process groups, the two training engines, the lr schedule, checkpoints.

Distributed setup
    :func:`init_distributed` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``MASTER_PORT`` or a rendezvous endpoint), so a single command covers one process
    (``ssamba pretrain ...``), several on one machine (``torchrun --standalone --nproc_per_node=N -m
    ssamba pretrain ...``) and several machines (``torchrun --nnodes=M --node_rank=i
    --rdzv_endpoint=HOST:PORT ...``). Backend: NCCL on GPUs, gloo on CPU.

Engines
    :class:`TorchEngine` (``dist.engine=ddp``): AdamW, ``DistributedDataParallel`` when there is more
    than one process, autocast (bf16/fp16, a gradient scaler for fp16), gradient clipping and
    accumulation, optional ``torch.compile``. :class:`DeepSpeedEngine` (``dist.engine=deepspeed``):
    the same optimiser under ``deepspeed.initialize`` with a ZeRO stage 1/2 JSON config. Both expose
    ``forward``/``backward``/``step``/``set_lr``/``state_dict``.

Learning rate
    :class:`LRSchedule`: linear warm-up, then SSAMBA's reduce-on-plateau on evaluation accuracy,
    a cosine decay, or a constant. It sets the lr on the optimiser itself, for both engines.

Checkpoints
    :class:`CheckpointManager` writes ``RUN/checkpoints/step-XXXXXXXX.pt`` atomically (temporary file
    + ``os.replace``), points ``last.pt`` (and ``best.pt`` when the evaluation accuracy improved) at it
    through hard links, and keeps the newest ``keep_last`` step files. The file layout is the one the
    export code reads (``format``, ``version``, ``model``, ``encoder_config``, ...), made of plain
    tensors, numbers, strings and containers only, so it is read with ``weights_only=True``.
    :class:`RunLock` keeps a second run out of a run directory.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import math
import os
import random
import re
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from ssamba.errors import RunLockedError, UserError

CHECKPOINT_FORMAT = "ssamba-train"
CHECKPOINT_VERSION = 1
CHECKPOINT_DIR = "checkpoints"
LOCK_NAME = "run.lock"
LAST_NAME = "last.pt"
BEST_NAME = "best.pt"
STEP_PATTERN = re.compile(r"^step-(\d{8})\.pt$")
DEEPSPEED_EXTRA_HINT = "DeepSpeed is not installed: pip install 'ssamba[deepspeed]' (or pip install deepspeed)"


# ------------------------------------------------------------------------------- process groups


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def pick_device(requested: str, local_rank: int) -> torch.device:
    """``cuda:<local_rank>`` or ``cpu`` for ``train.device`` (auto: CUDA when available)."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device=cuda but torch sees no GPU (CPU build or no device); use train.device=cpu")
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        index = local_rank % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


def init_distributed(device: str, backend: str, timeout_minutes: int, *, single_process_group: bool = False) -> DistInfo:
    """Join the process group described by torchrun's environment.

    A single process gets no group, unless ``single_process_group`` (DeepSpeed needs one; it is
    then created in memory, without a network port).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    chosen = pick_device(device, local_rank)
    if backend == "auto":
        backend = "nccl" if chosen.type == "cuda" else "gloo"
    timeout = datetime.timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        if world_size > 1:
            dist.init_process_group(backend=backend, timeout=timeout, device_id=chosen if chosen.type == "cuda" else None)
        elif single_process_group:
            dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def _collective_device() -> torch.device:
    """NCCL reduces GPU tensors only; gloo CPU tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(values: Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> Tensor:
    """All-reduce a small tensor in place across the job (identity for a single process)."""
    if dist.is_initialized():
        moved = values.to(_collective_device())
        dist.all_reduce(moved, op=op)
        values.copy_(moved)
    return values


def broadcast(values: Tensor, src: int = 0) -> Tensor:
    """Overwrite a small tensor with rank ``src``'s values (identity for a single process)."""
    if dist.is_initialized():
        moved = values.to(_collective_device())
        dist.broadcast(moved, src=src)
        values.copy_(moved)
    return values


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (a list indexed by rank), on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


# ---------------------------------------------------------------------------------- rng state


def rng_state(mask_generator: torch.Generator) -> dict[str, Any]:
    """This process's random states (python, numpy, torch CPU/CUDA, the mask generator), as plain
    tensors, numbers, strings and containers (what a weights-only checkpoint reader accepts)."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": name, "keys": keys.tolist(), "pos": int(position),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
        "masks": mask_generator.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], mask_generator: torch.Generator) -> None:
    """Restore what :func:`rng_state` returned."""
    random.setstate(state["python"])
    numpy_state = state["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = (
            numpy_state["bit_generator"], np.asarray(numpy_state["keys"], dtype=np.uint32), numpy_state["pos"],
            numpy_state["has_gauss"], numpy_state["cached_gaussian"],
        )
    np.random.set_state(numpy_state)  # a tuple with an array: checkpoints of ssamba 0.1
    torch.set_rng_state(state["torch"])
    mask_generator.set_state(state["masks"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------ lr schedule


class LRSchedule:
    """Warm-up then plateau / cosine / constant; ``lr(step)`` for optimiser step ``step`` (0-based).

    * warm-up: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps (the original
      raised the lr in a staircase every 50 steps and ran steps 0-49 at lr 0);
    * ``plateau``: after warm-up, ``lr * scale`` where ``scale`` is multiplied by ``factor`` (floored
      at ``min_lr``) once evaluation accuracy has not improved by a relative ``threshold`` for more
      than ``patience`` evaluations (``torch.optim.lr_scheduler.ReduceLROnPlateau``, mode max);
    * ``cosine``: from ``lr`` to ``min_lr`` between the end of warm-up and ``total_steps``;
    * ``constant``: ``lr``.
    """

    def __init__(
        self,
        name: str,
        base_lr: float,
        warmup_steps: int,
        *,
        total_steps: int | None = None,
        factor: float = 0.5,
        patience: int = 2,
        threshold: float = 1e-4,
        min_lr: float = 0.0,
    ) -> None:
        if name == "cosine" and total_steps is None:
            raise ValueError("the cosine schedule needs total_steps")
        self.name = name
        self.base_lr = base_lr
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.factor = factor
        self.patience = patience
        self.threshold = threshold
        self.min_lr = min_lr
        self.scale = 1.0
        self.best: float | None = None
        self.bad_evals = 0

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.name == "plateau":
            return max(self.base_lr * self.scale, self.min_lr)
        if self.name == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min((step - self.warmup_steps) / span, 1.0)
            return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))
        return self.base_lr

    def observe(self, accuracy: float) -> bool:
        """Feed an evaluation accuracy (plateau only); True when the lr was just reduced."""
        if self.name != "plateau" or not math.isfinite(accuracy):
            return False
        if self.best is None or accuracy > self.best * (1.0 + self.threshold):
            self.best, self.bad_evals = accuracy, 0
            return False
        self.bad_evals += 1
        if self.bad_evals <= self.patience:
            return False
        self.bad_evals = 0
        reduced = max(self.base_lr * self.scale * self.factor, self.min_lr)
        changed = reduced < self.base_lr * self.scale
        self.scale = reduced / self.base_lr
        return changed

    def state_dict(self) -> dict[str, Any]:
        return {"name": self.name, "scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["name"] != self.name:
            raise ValueError(f"checkpoint schedule is {state['name']!r}, config says {self.name!r}")
        self.scale, self.best, self.bad_evals = state["scale"], state["best"], state["bad_evals"]


# ------------------------------------------------------------------------------------ engines


@dataclass(frozen=True)
class StepResult:
    """What one optimiser step did: the gradient norm before clipping, and whether it was applied."""

    grad_norm: float
    applied: bool


def autocast_context(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for ``precision`` (bf16/fp16) on ``device``; a null context for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def check_precision(device: torch.device, precision: str) -> None:
    """Raise if ``device`` cannot autocast to ``precision``."""
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError(f"train.precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
    if precision != "fp32" and not torch.amp.is_autocast_available(device.type):
        raise RuntimeError(f"train.precision={precision}: autocast is not available on {device.type}; use fp32")


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], eps: float) -> torch.optim.AdamW:
    """SSAMBA's optimiser: AdamW over all trainable parameters with one weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)


def _default_optimizer(optim: Any) -> Callable[[nn.Module], torch.optim.Optimizer]:
    """The pretraining optimiser for an engine built without ``make_optim``."""
    return lambda model: make_optimizer(model, optim.lr, optim.weight_decay, optim.betas, optim.eps)


class TorchEngine:
    """Plain PyTorch training: one process, or DDP over the process group."""

    name = "ddp"
    input_dtype = torch.float32
    """Inputs stay float32; autocast picks the compute dtype."""

    def __init__(
        self, model: nn.Module, info: DistInfo, *, optim: Any, precision: str, compile: bool,
        make_optim: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    ) -> None:
        check_precision(info.device, precision)
        self.model = model.to(info.device)
        self.info = info
        self.precision = precision
        self.grad_clip = optim.grad_clip
        self.accumulate = optim.accumulate
        self.optimizer = (make_optim or _default_optimizer(optim))(self.model)
        self.scaler = torch.amp.GradScaler(info.device.type, enabled=precision == "fp16")
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        module: nn.Module = self.model
        if info.distributed:
            device_ids = [info.device.index] if info.device.type == "cuda" else None
            module = self.ddp = nn.parallel.DistributedDataParallel(module, device_ids=device_ids)
        self.module = torch.compile(module) if compile else module

    @contextlib.contextmanager
    def micro_batch(self, sync: bool) -> Iterator[None]:
        """Context of one micro-batch's forward and backward; ``sync=False`` skips the DDP
        gradient all-reduce (all but the last micro-batch of an accumulated step)."""
        if sync or self.ddp is None:
            yield
            return
        with self.ddp.no_sync():
            yield

    def autocast(self) -> contextlib.AbstractContextManager:
        """Autocast context of the configured precision (for evaluation outside :meth:`forward`)."""
        return autocast_context(self.info.device, self.precision)

    def forward(self, fbank: Tensor) -> Any:
        with self.autocast():
            return self.module(fbank)

    def backward(self, loss: Tensor) -> None:
        self.scaler.scale(loss / self.accumulate).backward()

    def set_lr(self, lr: float) -> None:
        """Set every parameter group's lr to ``lr`` times the group's ``lr_scale`` (1 when absent)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> StepResult:
        """Unscale, clip, step (unless the gradient is not finite), zero the gradients."""
        self.scaler.unscale_(self.optimizer)
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
        applied = math.isfinite(norm)
        if self.scaler.is_enabled():
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            applied = applied and self.scaler.get_scale() >= scale
        elif applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(grad_norm=norm, applied=applied)

    def gathered_state(self) -> dict[str, Any]:
        """Optimiser and scaler state to store (the same on every rank)."""
        return {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_gathered_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`gathered_state` returned."""
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def import_deepspeed() -> Any:
    """The deepspeed module, or an ImportError naming the pip extra."""
    try:
        import deepspeed
    except ImportError as error:
        raise ImportError(DEEPSPEED_EXTRA_HINT) from error
    return deepspeed


def deepspeed_config(path: Path, *, batch_size: int, world_size: int, optim: Any, precision: str) -> dict[str, Any]:
    """The DeepSpeed JSON at ``path`` with batch, accumulation, clipping and precision from our config."""
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"dist.deepspeed_config: cannot read {path}: {error}") from None
    owned = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping", "optimizer", "scheduler", "fp16", "bf16")
    clashes = sorted(set(config) & set(owned))
    if clashes:
        raise ValueError(f"{path}: remove {', '.join(clashes)}; they come from the ssamba config (data.batch_size, optim.*, train.precision)")
    config.update(
        train_micro_batch_size_per_gpu=batch_size,
        gradient_accumulation_steps=optim.accumulate,
        train_batch_size=batch_size * optim.accumulate * world_size,
        gradient_clipping=optim.grad_clip or 0.0,
    )
    if precision == "bf16":
        config["bf16"] = {"enabled": True}
    elif precision == "fp16":
        config["fp16"] = {"enabled": True}
    return config


class DeepSpeedEngine:
    """DeepSpeed training (ZeRO stage from the JSON config), same interface as :class:`TorchEngine`.

    ZeRO partitions the optimiser state across ranks, so checkpoints store every rank's partition
    (``optimizer.zero_partitions``); resuming needs the same number of processes.
    """

    name = "deepspeed"

    def __init__(
        self, model: nn.Module, info: DistInfo, *, optim: Any, precision: str, config: dict[str, Any],
        make_optim: Callable[[nn.Module], torch.optim.Optimizer] | None = None,
    ) -> None:
        deepspeed = import_deepspeed()
        self.info = info
        # DeepSpeed reads the launcher's variables, which a plain single-process start does not set
        for name, value in (("RANK", info.rank), ("LOCAL_RANK", info.local_rank), ("WORLD_SIZE", info.world_size)):
            os.environ.setdefault(name, str(value))
        self.model = model.to(info.device)
        optimizer = (make_optim or _default_optimizer(optim))(self.model)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=self.model, optimizer=optimizer, config=config)
        self.module = self.engine
        self.input_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)

    @contextlib.contextmanager
    def micro_batch(self, sync: bool) -> Iterator[None]:
        """DeepSpeed tracks accumulation boundaries itself."""
        yield

    def autocast(self) -> contextlib.AbstractContextManager:
        """DeepSpeed converts the model itself to the training precision: no autocast."""
        return contextlib.nullcontext()

    def forward(self, fbank: Tensor) -> Any:
        return self.engine(fbank.to(self.input_dtype))

    def backward(self, loss: Tensor) -> None:
        """Backward of one micro-batch (DeepSpeed divides by the accumulation steps itself)."""
        self.engine.backward(loss)
        if not self.engine.is_gradient_accumulation_boundary():
            self.engine.step()  # only advances DeepSpeed's micro-batch counter

    def set_lr(self, lr: float) -> None:
        """Set every parameter group's lr to ``lr`` times the group's ``lr_scale`` (1 when absent)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    def step(self) -> StepResult:
        """Apply the accumulated update (after the last micro-batch of a step)."""
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        norm = float(norm) if norm is not None else math.nan
        return StepResult(grad_norm=norm, applied=not getattr(self.optimizer, "overflow", False))

    def gathered_state(self) -> dict[str, Any]:
        """Every rank's ZeRO optimiser partition (a collective: call on all ranks)."""
        return {"optimizer": {"zero_partitions": gather_objects(self.optimizer.state_dict())}, "scaler": None}

    def load_gathered_state(self, state: dict[str, Any]) -> None:
        """Give every rank its own ZeRO partition back."""
        partitions = state["optimizer"]["zero_partitions"]
        if len(partitions) != self.info.world_size:
            raise ValueError(f"checkpoint holds {len(partitions)} ZeRO partitions but this job has {self.info.world_size} processes; resume with the same number")
        self.optimizer.load_state_dict(partitions)


# ------------------------------------------------------------------------------------ checkpoints


class NonFiniteLossError(UserError, RuntimeError):
    """Too many micro-batches in a row had a non-finite loss or gradient."""

    exit_code = 1


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint could not be written (full disk, lost mount, permissions); the previous one is intact."""

    exit_code = 1


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file in the same directory, fsync, then rename over ``path``.

    A failed write (e.g. a full disk) removes the temporary file, leaves ``path`` as it was, and
    raises :class:`CheckpointWriteError` naming the file and the cause.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch's zip writer reports a failed write as RuntimeError
        cause = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {cause}; {kept} (free disk space or fix the run directory, then --resume auto)"
        ) from error
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_link(source: Path, target: Path) -> None:
    """Make ``target`` the same file as ``source`` atomically (hard link, or a copy where links fail)."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)


class CheckpointManager:
    """``RUN/checkpoints``: numbered step files, ``last.pt``, ``best.pt``, the newest ``keep_last`` kept."""

    def __init__(self, run_dir: Path, keep_last: int) -> None:
        self.dir = run_dir / CHECKPOINT_DIR
        self.keep_last = keep_last

    @property
    def last(self) -> Path:
        return self.dir / LAST_NAME

    def existing(self) -> list[Path]:
        """Checkpoints present, in the order ``--resume auto`` tries them: last.pt, step files newest
        first, best.pt (a file hard-linked under several names is listed once)."""
        seen: set[tuple[int, int]] = set()
        found = []
        for path in [self.last, *reversed(self.step_files()), self.best]:
            try:
                info = path.stat()
            except FileNotFoundError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                found.append(path)
        return found

    @property
    def best(self) -> Path:
        return self.dir / BEST_NAME

    def step_path(self, step: int) -> Path:
        return self.dir / f"step-{step:08d}.pt"

    def remove_stale_temporaries(self) -> None:
        """Delete temporary files left by a process killed while writing a checkpoint."""
        if self.dir.is_dir():
            for path in self.dir.glob(".*.tmp-*"):
                path.unlink(missing_ok=True)

    def step_files(self) -> list[Path]:
        """Step checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        return sorted(p for p in self.dir.iterdir() if STEP_PATTERN.match(p.name))

    def save(self, payload: dict[str, Any], *, is_best: bool) -> Path:
        """Write ``payload`` as the checkpoint of ``payload['step']``; update last/best; prune."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.step_path(payload["step"])
        atomic_torch_save(payload, path)
        _atomic_link(path, self.last)
        if is_best:
            _atomic_link(path, self.best)
        for old in self.step_files()[: -self.keep_last]:
            old.unlink(missing_ok=True)
        return path


RESUME_KEYS = ("model", "step", "optimizer", "scheduler", "scaler", "rng", "data_state", "run_state", "engine", "config")
"""Entries a training checkpoint needs to be resumed from."""


def load_checkpoint(path: Path, *, unsafe_load: bool | None = None) -> dict[str, Any]:
    """Read a training checkpoint (weights-only, see :func:`ssamba.interop.checkpoints.torch_load`),
    checking its format tag, version and entries; :class:`CheckpointError` names the file otherwise."""
    from ssamba.interop.checkpoints import CheckpointError, torch_load

    payload = torch_load(path, unsafe_load=unsafe_load)
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path}: not an ssamba training checkpoint (no format={CHECKPOINT_FORMAT!r}); resume needs a file from RUN/checkpoints/"
        )
    if payload.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {payload.get('version')} is not supported (expected {CHECKPOINT_VERSION})")
    missing = [key for key in RESUME_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: training checkpoint lacks {', '.join(missing)}")
    return payload


# ------------------------------------------------------------------------------------ run lock


class RunLock:
    """Exclusive lock of a run directory (``RUN/run.lock``), so two runs never write into one.

    The file records the owner (pid, host, start time); the lock itself is an ``flock`` on it, which
    the operating system drops when the owner process ends, however it ends. A lock left by a process
    that is gone is therefore taken over (with a message); one held by a live process is refused.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._handle: Any = None

    def acquire(self) -> str | None:
        """Take the lock; returns a message when a stale lock was taken over. Raises RunLockedError."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - kept open while the lock is held
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = _describe_owner(handle.read())
            handle.close()
            raise RunLockedError(
                f"{self.path.parent} is in use by another run ({owner}); wait for it to end, stop it, or choose another run.dir"
            ) from None
        handle.seek(0)
        previous = handle.read().strip()
        handle.seek(0)
        handle.truncate()
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}
        handle.write(json.dumps(owner) + "\n")
        handle.flush()
        self._handle = handle
        if previous:
            return f"took over the lock of {self.path.parent} left by a run that is gone ({_describe_owner(previous)})"
        return None

    def release(self) -> None:
        """Clear the owner record and unlock (a no-op when not held)."""
        if self._handle is None:
            return
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.flush()
        fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()
        self._handle = None


def lock_run(lock: RunLock, info: DistInfo) -> list[str]:
    """Rank 0 locks the run directory; every rank learns whether it could (so all stop together)."""
    notes: list[str] = []
    error: RunLockedError | None = None
    if info.is_main:
        try:
            taken_over = lock.acquire()
            notes += [taken_over] if taken_over else []
        except RunLockedError as locked:
            error = locked
    if not broadcast(torch.tensor([float(error is None)])).item():
        raise error or RunLockedError(f"{lock.path.parent} is in use by another run (rank 0 could not lock it)")
    return notes


def _describe_owner(text: str) -> str:
    try:
        owner = json.loads(text)
        return f"pid {owner['pid']} on {owner['host']}, started {owner['started']}"
    except (ValueError, KeyError, TypeError):
        return "owner unknown"
