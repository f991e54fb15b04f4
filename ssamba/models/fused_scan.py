"""Fused C++ CPU selective scan (Mamba-1) with an exact, checkpointed backward.

The extension (``csrc/selective_scan.cpp``, plus the mixer ops of ``csrc/mixer_ops.cpp`` used by
``ssamba.models.fused_ops``) is compiled on first use with
``torch.utils.cpp_extension.load`` and cached in torch's extension directory
(``TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``); later processes load the
cached build in well under a second. It needs a C++ compiler and ninja at run time.
``fused_status()`` says whether it is usable here; nothing is compiled at import time.

Semantics and layout follow mamba_ssm's ``selective_scan_fn``. The forward keeps the state
only every ``CHECKPOINT_INTERVAL`` steps; the backward recomputes each block from its
checkpoint, so the extra memory is O(batch * dim * N * L / CHECKPOINT_INTERVAL) and no
(batch, L, dim, N) tensor is ever built. Work is spread over ``torch.get_num_threads()`` OpenMP
threads, one (batch, dim) channel at a time.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path
from types import ModuleType

import torch

__all__ = ["CHECKPOINT_INTERVAL", "fused_extension", "fused_selective_scan", "fused_status"]

# Steps between stored states in the forward; the backward recomputes blocks of this length.
CHECKPOINT_INTERVAL = 64

_EXTENSION_NAME = "ssamba_fused_selective_scan"
_SOURCE = Path(__file__).resolve().parent / "csrc" / "selective_scan.cpp"
# Compiled into the same extension; selective_scan.cpp's module definition binds their functions.
_EXTRA_SOURCES = (Path(__file__).resolve().parent / "csrc" / "mixer_ops.cpp",)
# Portable flags: no -march=native (the build cache may be shared between machines); the
# source carries AVX-512/AVX2 clones of its hot loops that are selected at load time.
_CXX_FLAGS = ["-O3", "-fopenmp"]
_LD_FLAGS = ["-fopenmp"]
_MAX_REASON_CHARS = 300

_lock = threading.Lock()
_extension: ModuleType | None = None
_status: str | None = None
_attempted = False


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


def _load() -> ModuleType | None:
    """Build (first time) or load the extension once per process; remember why it failed."""
    global _extension, _status, _attempted
    with _lock:
        if _attempted:
            return _extension
        _attempted = True
        missing = [str(source) for source in (_SOURCE, *_EXTRA_SOURCES) if not source.is_file()]
        if missing:
            _status = f"extension source {missing[0]} is missing"
            return None
        _status = _compiler_missing()
        if _status is not None:
            return None
        from torch.utils.cpp_extension import load

        try:
            _extension = load(
                name=_EXTENSION_NAME,
                sources=[str(source) for source in (_SOURCE, *_EXTRA_SOURCES)],
                extra_cflags=_CXX_FLAGS,
                extra_ldflags=_LD_FLAGS,
                verbose=False,
            )
        except Exception as error:  # noqa: BLE001 -- any build or load failure disables the backend
            _status = _short_reason(error)
        return _extension


def fused_status() -> str | None:
    """None if the fused extension builds and loads here, else a short reason. Cached."""
    _load()
    return _status


def fused_extension() -> ModuleType:
    """The loaded extension module (built on first use); RuntimeError with the reason if unusable."""
    extension = _load()
    if extension is None:
        raise RuntimeError(f"fused selective scan is unavailable: {_status}")
    return extension


class _FusedSelectiveScan(torch.autograd.Function):
    """Autograd wrapper around the C++ forward/backward (inputs already validated, one dtype)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        extension = fused_extension()
        u, delta, A = u.contiguous(), delta.contiguous(), A.contiguous()
        # (batch, L, N): N innermost for the kernel
        B_t = B.transpose(1, 2).contiguous()
        C_t = C.transpose(1, 2).contiguous()
        D = None if D is None else D.contiguous()
        z = None if z is None else z.contiguous()
        delta_bias = None if delta_bias is None else delta_bias.contiguous()
        save = any(ctx.needs_input_grad[:8])
        out, y_pre_gate, checkpoints = extension.forward(
            u,
            delta,
            A,
            B_t,
            C_t,
            D,
            z,
            delta_bias,
            delta_softplus,
            CHECKPOINT_INTERVAL,
            save,
        )
        if save:
            ctx.save_for_backward(
                u, delta, A, B_t, C_t, D, z, delta_bias, y_pre_gate, checkpoints
            )
            ctx.delta_softplus = delta_softplus
        return out

    @staticmethod
    def backward(ctx, dout):
        u, delta, A, B_t, C_t, D, z, delta_bias, y_pre_gate, checkpoints = (
            ctx.saved_tensors
        )
        extension = fused_extension()
        du, ddelta, dA, dB_t, dC_t, dD, dz, ddelta_bias = extension.backward(
            u,
            delta,
            A,
            B_t,
            C_t,
            D,
            z,
            delta_bias,
            ctx.delta_softplus,
            CHECKPOINT_INTERVAL,
            dout.contiguous(),
            y_pre_gate,
            checkpoints,
        )
        return (
            du,
            ddelta,
            dA,
            dB_t.transpose(1, 2).contiguous(),
            dC_t.transpose(1, 2).contiguous(),
            dD if D is not None else None,
            dz if z is not None else None,
            ddelta_bias if delta_bias is not None else None,
            None,
        )


def _check_shape(
    name: str, tensor: torch.Tensor, expected: tuple[int, ...], layout: str
) -> None:
    if tuple(tensor.shape) != expected:
        raise ValueError(
            f"fused_selective_scan: {name} must have shape {layout} = {expected}, "
            f"got {tuple(tensor.shape)}"
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
    """Mamba-1 selective scan on CPU, fused in C++ (same semantics as ``selective_scan_fn``).

    Shapes: u, delta, z (batch, dim, L); A (dim, N); B, C (batch, N, L); D, delta_bias (dim,).
    Computes dt = softplus(delta + delta_bias) (or without softplus),
    h_t = exp(dt_t A) h_{t-1} + dt_t B_t u_t, y_t = C_t . h_t + D u_t, y *= silu(z).
    float32 and float64 are computed natively; float16/bfloat16 are computed in float32 and
    the result is cast back to u's dtype. Differentiable in every tensor argument.
    """
    named = {
        "u": u,
        "delta": delta,
        "A": A,
        "B": B,
        "C": C,
        "D": D,
        "z": z,
        "delta_bias": delta_bias,
    }
    present = {name: t for name, t in named.items() if t is not None}
    for name, tensor in present.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(
                f"fused_selective_scan: {name} must be a torch.Tensor, got {type(tensor).__name__}"
            )
        if not tensor.is_floating_point():
            raise TypeError(
                f"fused_selective_scan: {name} must be a floating tensor, got {tensor.dtype}"
            )
        if tensor.device.type != "cpu":
            raise ValueError(
                f"fused_selective_scan runs on CPU tensors only; {name} is on {tensor.device}"
            )
    if u.dim() != 3:
        raise ValueError(
            f"fused_selective_scan: u must be (batch, dim, L), got shape {tuple(u.shape)}"
        )
    if A.dim() != 2:
        raise ValueError(
            f"fused_selective_scan: A must be (dim, N), got shape {tuple(A.shape)}"
        )
    batch, dim, length = u.shape
    n_state = A.shape[1]
    _check_shape("delta", delta, (batch, dim, length), "(batch, dim, L)")
    _check_shape("A", A, (dim, n_state), "(dim, N)")
    _check_shape("B", B, (batch, n_state, length), "(batch, N, L)")
    _check_shape("C", C, (batch, n_state, length), "(batch, N, L)")
    if D is not None:
        _check_shape("D", D, (dim,), "(dim,)")
    if z is not None:
        _check_shape("z", z, (batch, dim, length), "(batch, dim, L)")
    if delta_bias is not None:
        _check_shape("delta_bias", delta_bias, (dim,), "(dim,)")

    compute_dtype = (
        torch.float64
        if any(t.dtype == torch.float64 for t in present.values())
        else torch.float32
    )

    def cast(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None else t.to(compute_dtype)

    out = _FusedSelectiveScan.apply(
        cast(u),
        cast(delta),
        cast(A),
        cast(B),
        cast(C),
        cast(D),
        cast(z),
        cast(delta_bias),
        bool(delta_softplus),
    )
    return out.to(u.dtype)
