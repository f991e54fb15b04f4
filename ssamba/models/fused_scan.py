"""Fused C++ CPU selective scan (Mamba-1) with an exact, checkpointed backward.

The extension (``csrc/selective_scan.cpp``, plus the mixer ops of ``csrc/mixer_ops.cpp`` used by
``ssamba.models.fused_ops``) is compiled on first use with
``torch.utils.cpp_extension.load`` and cached in torch's extension directory
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later processes load the
cached build in about a second. It needs a C++ compiler and ninja at run time. ``ssamba build``
(:mod:`ssamba.models.build`, run once by ``shell/env.sh``) compiles it ahead of time; a build on
first use says so on stderr. Builds and loads hold a lock that names its owner (pid, host, start
time): others wait and say so, and locks left by killed builds are cleared. ``fused_status()``
says whether the kernels are usable here; nothing is compiled at import time.

Semantics follow mamba_ssm's ``selective_scan_fn``. The kernel works channel-last, the layout
the mixer produces: :func:`fused_selective_scan_channels_last` takes (batch, L, dim) inputs (views
of the projections' outputs need no copy) and runs the recurrence backwards in time with
``reverse`` (a bidirectional mixer's second direction, without flips);
:func:`fused_selective_scan` is the same op in mamba_ssm's (batch, dim, L) layout. One SIMD vector
holds 16 adjacent channels (float32), so the recurrence is vectorised over channels with no
horizontal sums. The forward keeps the state only every ``CHECKPOINT_INTERVAL`` steps; the
backward recomputes each block from its checkpoint, so the extra memory is
O(batch * dim * N * L / CHECKPOINT_INTERVAL) and no (batch, L, dim, N) tensor is ever built.
Under ``torch.no_grad()`` / ``inference_mode`` nothing is kept for a backward, and
:func:`fused_selective_scan_inference` runs the mixer's inference path: several directions summed
into one output in one pass over each tile, with ``dt_proj`` computed inside the kernel.
Work is spread over ``torch.get_num_threads()`` OpenMP threads, one (batch, 16 channels) tile at
a time. On x86-64 with GCC the kernels are compiled for AVX-512, AVX2 and the baseline ISA and the
widest one the CPU runs is used (:func:`fused_kernel_isas`).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

import torch

from ssamba.models.build import (
    BUILD_LOCK_FILE,
    BuildLock,
    BuildLockTimeout,
    build_progress,
    build_wait_seconds,
    clear_stale_torch_lock,
)

__all__ = [
    "CHECKPOINT_INTERVAL",
    "ScanDirection",
    "fused_build_directory",
    "fused_extension",
    "fused_kernel_isas",
    "fused_selective_scan",
    "fused_selective_scan_channels_last",
    "fused_selective_scan_inference",
    "fused_status",
    "set_build_on_first_use",
    "set_fused_kernel_isa",
]

# Steps between stored states in the forward; the backward recomputes blocks of this length.
CHECKPOINT_INTERVAL = 64

_EXTENSION_NAME = "ssamba_fused_selective_scan"
_SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan.cpp"
# Compiled into the same extension; selective_scan.cpp's module definition binds their functions.
_EXTRA_SOURCES = (Path(__file__).resolve().parent / "csrc" / "mixer_ops.cpp",)
# Portable flags: no -march=native (the build cache may be shared between machines); the
# source carries AVX-512/AVX2 clones of its hot loops that are selected at load time.
# -ffp-contract=fast lets a * b + c become one fused multiply-add (torch builds with ISO -std,
# which turns contraction off).
_CXX_FLAGS = ["-O3", "-fopenmp", "-ffp-contract=fast"]
_LD_FLAGS = ["-fopenmp"]
_MAX_REASON_CHARS = 300
# Written next to a successful build: what it was built from, so a cached build can be trusted
# without compiling (``ssamba info``) and a changed source announces its rebuild up front.
_STAMP_FILE = "ssamba-build.json"
_NOT_BUILT = "not built yet: run `ssamba build` (compiles once, in minutes)"

_lock = threading.Lock()
_extension: ModuleType | None = None
_status: str | None = None
_attempted = False
_build_on_first_use = True


def _compiler_missing() -> str | None:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        return f"no C++ compiler ({compiler}) found"
    from torch.utils.cpp_extension import is_ninja_available

    if not is_ninja_available():
        return "ninja not found (pip install ninja)"
    return None


def _short_reason(error: BaseException) -> str:
    """The compiler's first error line if there is one, else the exception's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    compiler_errors = [line for line in lines if "error:" in line]
    message = (compiler_errors or lines or [type(error).__name__])[
        0 if compiler_errors else -1
    ]
    return f"building the fused scan extension failed: {message}"[:_MAX_REASON_CHARS]


def _sources() -> list[Path]:
    return [_SOURCE, *_EXTRA_SOURCES]


def _build_key() -> str:
    """Digest of everything a build depends on: sources and headers, flags, compiler, torch, Python."""
    digest = hashlib.sha256()
    headers = sorted(p for p in _SOURCE.parent.iterdir() if p.suffix in (".h", ".inc"))
    for path in (*_sources(), *headers):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    compiler = os.environ.get("CXX", "c++")
    context = [_EXTENSION_NAME, *_CXX_FLAGS, *_LD_FLAGS, compiler, torch.__version__, platform.python_version()]
    digest.update("\0".join(context).encode())
    return digest.hexdigest()


def fused_build_directory() -> Path:
    """Where the extension is built and cached (``$TORCH_EXTENSIONS_DIR/<name>`` or torch's default)."""
    from torch.utils.cpp_extension import _get_build_directory

    return Path(_get_build_directory(_EXTENSION_NAME, False))


def _build_is_current(build_dir: Path) -> bool:
    try:
        return (build_dir / _STAMP_FILE).read_text().strip() == _build_key()
    except OSError:
        return False


def _build_and_load(build_dir: Path, wait_s: float) -> ModuleType:
    """Under our build lock (waiting at most ``wait_s``): clear a stale torch lock, build if needed
    (announced on stderr), load, and stamp the build."""
    from torch.utils.cpp_extension import load

    lock = BuildLock(build_dir / BUILD_LOCK_FILE)
    lock.acquire(wait_s, "the fused kernel build")
    try:
        clear_stale_torch_lock(build_dir, wait_s)
        key = _build_key()
        with build_progress("the fused C++ CPU kernels", build_dir, expected=not _build_is_current(build_dir)):
            extension = load(
                name=_EXTENSION_NAME,
                sources=[str(source) for source in _sources()],
                extra_cflags=list(_CXX_FLAGS),  # copies: torch appends to the lists it is given
                extra_ldflags=list(_LD_FLAGS),
                build_directory=str(build_dir),
                verbose=False,
            )
        (build_dir / _STAMP_FILE).write_text(key + "\n")
        return extension
    finally:
        lock.release()


def _load() -> ModuleType | None:
    """Build (first time) or load the extension once per process; remember why it failed.

    Without building on first use (:func:`set_build_on_first_use`), only a current cached build is
    loaded and a lock held by a live build is not waited for."""
    global _extension, _status, _attempted
    with _lock:
        if _attempted:
            return _extension
        missing = [str(source) for source in _sources() if not source.is_file()]
        if missing:
            _attempted, _status = True, f"extension source {missing[0]} is missing"
            return None
        _status = _compiler_missing()
        if _status is not None:
            _attempted = True
            return None
        build_dir = fused_build_directory()
        if not _build_on_first_use and not _build_is_current(build_dir):
            _status = _NOT_BUILT  # not final: building may be allowed again later in this process
            return None
        _attempted = True
        try:
            _extension = _build_and_load(build_dir, build_wait_seconds() if _build_on_first_use else 0.0)
        except BuildLockTimeout as error:
            _status = str(error)
        except Exception as error:  # noqa: BLE001 -- any build or load failure disables the backend
            _status = _short_reason(error)
        return _extension


def set_build_on_first_use(enabled: bool) -> None:
    """Allow (default) or forbid compiling the extension when it is first needed in this process.

    Forbidden, only an up-to-date cached build is loaded (about a second) and a build in progress
    elsewhere is reported instead of waited for; ``ssamba info`` runs this way so it never blocks.
    """
    global _build_on_first_use
    _build_on_first_use = bool(enabled)


def fused_status() -> str | None:
    """None if the fused extension builds and loads here, else a short reason. Cached."""
    _load()
    return _status


def fused_kernel_isas() -> list[str]:
    """Instruction sets the scan kernels are built for and this CPU runs, widest (default) first:
    ``x86-64-v4`` (AVX-512), ``x86-64-v3`` (AVX2) and ``baseline`` on x86-64 with GCC; others
    build ``baseline`` only."""
    return list(fused_extension().scan_isas())


def set_fused_kernel_isa(name: str) -> None:
    """Run the scan kernels built for ``name`` (one of :func:`fused_kernel_isas`) in this process,
    e.g. to check every build against the reference on one machine."""
    fused_extension().set_scan_isa(name)


def fused_extension() -> ModuleType:
    """The loaded extension module (built on first use); RuntimeError with the reason if unusable."""
    extension = _load()
    if extension is None:
        raise RuntimeError(f"fused selective scan is unavailable: {_status}")
    return extension


class _FusedSelectiveScan(torch.autograd.Function):
    """Autograd wrapper around the C++ forward/backward (channel-last inputs, validated, one dtype)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, grad_enabled):
        A_t = A.t().contiguous()
        # needs_input_grad ignores no_grad/inference_mode (a parameter still "requires grad"), so the
        # caller's grad mode decides too: inference keeps no checkpoints and no pre-gate copy
        save = grad_enabled and any(ctx.needs_input_grad[:8])
        out, y_pre_gate, checkpoints = fused_extension().forward(
            u, delta, A_t, B, C, D, z, delta_bias, delta_softplus, reverse, CHECKPOINT_INTERVAL, save
        )
        if save:
            ctx.save_for_backward(u, delta, A_t, B, C, D, z, delta_bias, y_pre_gate, checkpoints)
            ctx.flags = (delta_softplus, reverse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        u, delta, A_t, B, C, D, z, delta_bias, y_pre_gate, checkpoints = ctx.saved_tensors
        delta_softplus, reverse = ctx.flags
        du, ddelta, dA, dB, dC, dD, dz, ddelta_bias = fused_extension().backward(
            u, delta, A_t, B, C, D, z, delta_bias, delta_softplus, reverse, CHECKPOINT_INTERVAL,
            dout.contiguous(), y_pre_gate, checkpoints,
        )
        return (
            du,
            ddelta,
            dA,
            dB,
            dC,
            dD if D is not None else None,
            dz if z is not None else None,
            ddelta_bias if delta_bias is not None else None,
            None,
            None,
            None,
        )


def _check_arguments(op: str, channels_last: bool, tensors: dict[str, torch.Tensor | None]) -> torch.dtype:
    """TypeError/ValueError naming the first bad argument of a scan in either layout; returns the
    compute dtype (float64 if any input is float64, else float32)."""
    layout = "(batch, L, dim)" if channels_last else "(batch, dim, L)"
    u, A = tensors["u"], tensors["A"]
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        raise ValueError(f"{op}: u must be a {layout} tensor, got {getattr(u, 'shape', type(u).__name__)}")
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError(f"{op}: A must be a (dim, N) tensor, got {getattr(A, 'shape', type(A).__name__)}")
    if channels_last:
        batch, length, dim = u.shape
    else:
        batch, dim, length = u.shape
    if length == 0:
        raise ValueError(f"{op}: the sequence length L must be at least 1")
    n_state = A.shape[1]
    per_channel = ((batch, length, dim) if channels_last else (batch, dim, length), layout)
    per_state = ((batch, length, n_state), "(batch, L, N)") if channels_last else ((batch, n_state, length), "(batch, N, L)")
    shapes = {
        "delta": per_channel,
        "A": ((dim, n_state), "(dim, N)"),
        "B": per_state,
        "C": per_state,
        "D": ((dim,), "(dim,)"),
        "z": per_channel,
        "delta_bias": ((dim,), "(dim,)"),
    }
    present = {name: t for name, t in tensors.items() if t is not None}
    for name, tensor in present.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TypeError(f"{op}: {name} must be a floating tensor, got {tensor.dtype}")
        if tensor.device.type != "cpu":
            raise ValueError(f"{op} runs on CPU tensors only; {name} is on {tensor.device}")
    for name, (expected, described) in shapes.items():
        tensor = present.get(name)
        if tensor is not None and tuple(tensor.shape) != expected:
            raise ValueError(f"{op}: {name} must have shape {described} = {expected}, got {tuple(tensor.shape)}")
    return torch.float64 if any(t.dtype == torch.float64 for t in present.values()) else torch.float32


def fused_selective_scan_channels_last(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
) -> torch.Tensor:
    """Mamba-1 selective scan on CPU in the channel-last layout the mixer produces.

    Shapes: u, delta, z (batch, L, dim); A (dim, N); B, C (batch, L, N); D, delta_bias (dim,).
    Inputs may be strided views (e.g. slices of a projection's output) as long as their last
    dimension is contiguous; others are copied. With ``reverse`` the recurrence runs from the
    last step to the first (the backward direction of a bidirectional mixer, without flips);
    the output stays in input time order. float32 and float64 are computed natively;
    float16/bfloat16 are computed in float32 and cast back. Differentiable in every tensor.
    """
    compute_dtype = _check_arguments(
        "fused_selective_scan_channels_last",
        True,
        {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias},
    )
    return _scan_channels_last(compute_dtype, u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse)


def _scan_channels_last(
    compute_dtype: torch.dtype,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
    z: torch.Tensor | None,
    delta_bias: torch.Tensor | None,
    delta_softplus: bool,
    reverse: bool,
) -> torch.Tensor:
    """Validated channel-last inputs -> the kernel: cast to ``compute_dtype``, make the last
    dimension contiguous where it is not, run, cast back to ``u``'s dtype."""

    def prepare(t: torch.Tensor | None, vector: bool = False) -> torch.Tensor | None:
        if t is None:
            return None
        t = t.to(compute_dtype)
        return t.contiguous() if vector or t.stride(-1) != 1 else t

    out = _FusedSelectiveScan.apply(
        prepare(u),
        prepare(delta),
        prepare(A),
        prepare(B),
        prepare(C),
        prepare(D, vector=True),
        prepare(z),
        prepare(delta_bias, vector=True),
        bool(delta_softplus),
        bool(reverse),
        torch.is_grad_enabled(),
    )
    return out.to(u.dtype)


class ScanDirection(NamedTuple):
    """One direction of :func:`fused_selective_scan_inference`, channel-last, with ``dt_proj`` fused in:
    delta = dt_low @ dt_weight.T (the mixer's ``dt_proj`` without its bias, which is ``delta_bias``)."""

    u: torch.Tensor  # (batch, L, dim)
    dt_low: torch.Tensor  # (batch, L, R), e.g. a slice of x_proj's output
    dt_weight: torch.Tensor  # (dim, R), dt_proj.weight
    A: torch.Tensor  # (dim, N)
    B: torch.Tensor  # (batch, L, N)
    C: torch.Tensor  # (batch, L, N)
    D: torch.Tensor  # (dim,)
    delta_bias: torch.Tensor  # (dim,)
    reverse: bool


def fused_selective_scan_inference(
    directions: Sequence[ScanDirection],
    z: torch.Tensor | None,
    out_scale: float = 1.0,
    delta_softplus: bool = True,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Forward-only selective scan of one or more directions sharing the gate ``z``, summed:
    ``out_scale * sum_d scan(direction_d)``, each term as :func:`fused_selective_scan_channels_last`
    computes it (with ``delta = dt_low @ dt_weight.T``), in one pass over each (batch, channels) tile.

    The inference path of a bidirectional mixer (both directions and the ``divide_out`` halving in one
    call); no gradients. CPU float32/float64 tensors of one dtype; the per-step inputs (u, dt_low, B, C,
    z) may be strided views whose last dimension is contiguous. ``out`` (contiguous, u's shape) receives
    the result and is returned; it may be the first direction's ``u`` (overwritten in place, saving a
    buffer) unless a later direction reads that same tensor.
    """
    if not directions:
        raise ValueError("fused_selective_scan_inference: at least one direction is needed")
    dtype = directions[0].u.dtype
    tensors = [t for d in directions for t in d[:-1]] + ([z] if z is not None else [])
    for t in tensors:
        if t.device.type != "cpu" or t.dtype != dtype or dtype not in (torch.float32, torch.float64):
            raise ValueError(
                f"fused_selective_scan_inference: inputs must be CPU float32 or float64 tensors of one dtype, "
                f"got {t.dtype} on {t.device} next to {dtype}"
            )

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t if t.stride(-1) == 1 else t.contiguous()

    return fused_extension().inference(
        [rows(d.u) for d in directions],
        [rows(d.dt_low) for d in directions],
        [d.dt_weight.t().contiguous() for d in directions],
        [d.A.t().contiguous() for d in directions],
        [rows(d.B) for d in directions],
        [rows(d.C) for d in directions],
        [d.D.contiguous() for d in directions],
        [d.delta_bias.contiguous() for d in directions],
        [bool(d.reverse) for d in directions],
        None if z is None else rows(z),
        bool(delta_softplus),
        float(out_scale),
        out,
    )


def fused_selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
) -> torch.Tensor:
    """Mamba-1 selective scan on CPU in mamba_ssm's layout (same semantics as ``selective_scan_fn``).

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L); D, delta_bias (dim,).
    Computes dt = softplus(delta + delta_bias) (or without softplus),
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t + D u_t, y *= silu(z).
    The inputs are transposed to the kernel's channel-last layout (one copy each); the mixer
    calls :func:`fused_selective_scan_channels_last` directly. Dtypes and gradients as there.
    """
    compute_dtype = _check_arguments(
        "fused_selective_scan",
        False,
        {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias},
    )

    def channels_last(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.transpose(1, 2)

    y = _scan_channels_last(
        compute_dtype,
        channels_last(u),
        channels_last(delta),
        A,
        channels_last(B),
        channels_last(C),
        D,
        channels_last(z),
        delta_bias,
        delta_softplus,
        False,
    )
    return y.transpose(1, 2)
