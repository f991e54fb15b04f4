"""Selective scan (Mamba-1) in Triton: the ``triton`` scan backend, for GPUs without mamba-ssm.

Triton ships with the CUDA builds of torch, so this backend needs no compile step of ours. The
kernels (``ssamba.models.triton_kernels``) take both layouts through strides, without copies:
mamba_ssm's (batch, dim, L) (:func:`triton_selective_scan`) and the mixer's channel-last
(batch, L, dim) (:func:`triton_selective_scan_channels_last`), each with a native ``reverse``
direction. The state is float32 (float64 for float64 inputs) whatever the input dtype (float32,
bfloat16, float16); results and gradients come back in each input's dtype.

Time is cut into chunks of :data:`CHUNK` steps and every kernel program owns one
(batch, :data:`BLOCK_D` channels, chunk) tile, so short sequences at small batch still fill a GPU.
The forward keeps only the state entering each chunk (1/CHUNK of the full (batch, L, dim, N) state
tensor, float32) and the backward recomputes the states inside each chunk from it.

With ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors through Triton's interpreter
(slow: for tests). Triton fixes the mode when it is first imported (its own library functions are
decorated then), so the variable must be set before that. Triton is imported on first use only;
a CPU install without triton is unaffected.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "BLOCK_D",
    "CHUNK",
    "interpreter_enabled",
    "kernels_interpreted",
    "triton_selective_scan",
    "triton_selective_scan_channels_last",
    "triton_status",
]

CHUNK = 16
"""Time steps per program tile; the forward keeps one state per chunk for the backward."""
BLOCK_D = 16
"""Channels per program tile."""
INTERPRET_ENV = "TRITON_INTERPRET"
FORWARD_WARPS = 4
BACKWARD_WARPS = 8
COMPILE_OPTIONS = {"enable_fp_fusion": True}
"""Compiler options of every launch: fused multiply-add, Triton's default up to 3.9 and off by default
from 3.10, pinned so that every Triton version builds the kernels that were measured on the H100."""

_KERNELS_MODULE = "ssamba.models.triton_kernels"


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET=1`` is set (Triton's interpreter runs the kernels on CPU tensors)."""
    return os.environ.get(INTERPRET_ENV, "0") == "1"


def triton_status() -> str | None:
    """None when triton imports, else the reason (the device is checked by the caller)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as err:  # noqa: BLE001 -- a broken triton install fails in many ways
        return f"triton is not importable ({type(err).__name__}: {err}); it ships with CUDA builds of torch, or pip install triton"
    return None


def kernels_interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter in this process: decided by ``TRITON_INTERPRET``
    when triton was first imported (imports triton)."""
    from triton.language import standard

    return type(standard.zeros).__name__ == "InterpretedFunction"


def _kernel_module() -> ModuleType:
    """The kernels, decorated in the same mode as Triton's own library functions (whatever
    ``TRITON_INTERPRET`` says now), so that they can call them."""
    module = sys.modules.get(_KERNELS_MODULE)
    if module is not None:
        return module
    previous = os.environ.get(INTERPRET_ENV)
    os.environ[INTERPRET_ENV] = "1" if kernels_interpreted() else "0"
    try:
        return importlib.import_module(_KERNELS_MODULE)
    finally:
        if previous is None:
            os.environ.pop(INTERPRET_ENV, None)
        else:
            os.environ[INTERPRET_ENV] = previous


def _kernels_for(device: torch.device) -> ModuleType:
    """The kernel module for tensors on ``device``: CUDA, or CPU through the interpreter."""
    reason = triton_status()
    if reason is not None:
        raise RuntimeError(f"the triton selective scan is unavailable: {reason}")
    if device.type != "cuda":
        if not interpreter_enabled():
            raise RuntimeError(
                f"the triton selective scan needs CUDA tensors, got tensors on {device} "
                f"(set {INTERPRET_ENV}=1 to run its kernels on CPU through Triton's interpreter)"
            )
        if not kernels_interpreted():
            raise RuntimeError(
                f"{INTERPRET_ENV}=1 was set after triton was imported in this process; set it before "
                "(e.g. in the environment of the process) to run the kernels on CPU tensors"
            )
    return _kernel_module()


def _channel_strides(t: Tensor, channels_last: bool) -> tuple[int, int, int]:
    """(batch, channel, time) strides of a 3-d tensor in either layout."""
    return (t.stride(0), t.stride(2), t.stride(1)) if channels_last else (t.stride(0), t.stride(1), t.stride(2))


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _tl_dtype(dtype: torch.dtype) -> Any:
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


def _block_n(n_state: int) -> int:
    return max(2, 1 << (n_state - 1).bit_length())


class _TritonSelectiveScan(torch.autograd.Function):
    """Autograd wrapper: three forward launches, three backward launches (see triton_kernels)."""

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
                delta_bias: Tensor | None, softplus: bool, reverse: bool, channels_last: bool, chunk: int, block_d: int) -> Tensor:
        kernels = _kernels_for(u.device)
        dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
        A_c = A.to(dtype).contiguous()
        D_c = None if D is None else D.to(dtype).contiguous()
        bias_c = None if delta_bias is None else delta_bias.to(dtype).contiguous()
        batch = u.shape[0]
        length, dim = (u.shape[1], u.shape[2]) if channels_last else (u.shape[2], u.shape[1])
        n_state = A.shape[1]
        n_chunks = -(-length // chunk)
        block_n = _block_n(n_state)
        grid = (batch, -(-dim // block_d), n_chunks)
        flags = dict(SOFTPLUS=bool(softplus), REVERSE=bool(reverse), DTYPE=_tl_dtype(dtype), BLOCK_D=block_d, BLOCK_N=block_n)

        starts = torch.empty(batch, n_chunks, dim, n_state, device=u.device, dtype=dtype)
        dtsum = torch.empty(batch, n_chunks, dim, device=u.device, dtype=dtype)
        placeholder = A_c  # pointer for absent optional tensors (never read)
        kernels._chunk_end_kernel[grid](
            u, delta, A_c, B, placeholder if bias_c is None else bias_c, starts, dtsum,
            *_channel_strides(u, channels_last), *_channel_strides(delta, channels_last), *_channel_strides(B, channels_last),
            length, dim, n_state, n_chunks,
            HAS_BIAS=bias_c is not None, CHUNK=chunk, num_warps=FORWARD_WARPS, **COMPILE_OPTIONS, **flags,
        )
        kernels._chunk_boundary_kernel[grid[:2]](
            A_c, starts, dtsum, dim, n_state, n_chunks,
            BACKWARD=False, DTYPE=flags["DTYPE"], BLOCK_D=block_d, BLOCK_N=block_n,
            num_warps=FORWARD_WARPS, **COMPILE_OPTIONS,
        )
        out = torch.empty(u.shape, device=u.device, dtype=u.dtype)
        z_arg = u if z is None else z
        kernels._forward_output_kernel[grid](
            u, delta, A_c, B, C, placeholder if D_c is None else D_c, z_arg, placeholder if bias_c is None else bias_c, starts, out,
            *_channel_strides(u, channels_last), *_channel_strides(delta, channels_last), *_channel_strides(z_arg, channels_last),
            *_channel_strides(out, channels_last), *_channel_strides(B, channels_last), *_channel_strides(C, channels_last),
            length, dim, n_state, n_chunks,
            HAS_D=D_c is not None, HAS_Z=z is not None, HAS_BIAS=bias_c is not None, CHUNK=chunk,
            num_warps=FORWARD_WARPS, **COMPILE_OPTIONS, **flags,
        )
        ctx.save_for_backward(u, delta, A_c, B, C, D_c, z, bias_c, starts)
        ctx.config = (softplus, reverse, channels_last, chunk, block_d, dtype)
        ctx.input_dtypes = tuple(None if t is None else t.dtype for t in (A, D, delta_bias))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dout: Tensor) -> tuple[Tensor | None, ...]:
        u, delta, A_c, B, C, D_c, z, bias_c, starts = ctx.saved_tensors
        softplus, reverse, channels_last, chunk, block_d, dtype = ctx.config
        kernels = _kernels_for(u.device)
        batch, n_chunks, dim, n_state = starts.shape
        length = u.shape[1] if channels_last else u.shape[2]
        block_n = _block_n(n_state)
        grid = (batch, -(-dim // block_d), n_chunks)
        flags = dict(SOFTPLUS=bool(softplus), REVERSE=bool(reverse), DTYPE=_tl_dtype(dtype), BLOCK_D=block_d, BLOCK_N=block_n)
        placeholder = A_c
        z_arg = dout if z is None else z
        bias_arg = placeholder if bias_c is None else bias_c

        carries = torch.empty_like(starts)
        dtsum = torch.empty(batch, n_chunks, dim, device=u.device, dtype=dtype)
        kernels._chunk_adjoint_kernel[grid](
            delta, A_c, C, z_arg, bias_arg, dout, carries, dtsum,
            *_channel_strides(delta, channels_last), *_channel_strides(z_arg, channels_last),
            *_channel_strides(dout, channels_last), *_channel_strides(C, channels_last),
            length, dim, n_state, n_chunks,
            HAS_Z=z is not None, HAS_BIAS=bias_c is not None, CHUNK=chunk,
            num_warps=FORWARD_WARPS, **COMPILE_OPTIONS, **flags,
        )
        kernels._chunk_boundary_kernel[grid[:2]](
            A_c, carries, dtsum, dim, n_state, n_chunks,
            BACKWARD=True, DTYPE=flags["DTYPE"], BLOCK_D=block_d, BLOCK_N=block_n,
            num_warps=FORWARD_WARPS, **COMPILE_OPTIONS,
        )
        du = torch.empty(u.shape, device=u.device, dtype=u.dtype)
        ddelta = torch.empty(delta.shape, device=u.device, dtype=delta.dtype)
        dz = None if z is None else torch.empty(z.shape, device=u.device, dtype=z.dtype)
        dA = torch.zeros_like(A_c)
        dB = torch.zeros(B.shape, device=u.device, dtype=dtype)
        dC = torch.zeros(C.shape, device=u.device, dtype=dtype)
        dD = None if D_c is None else torch.zeros_like(D_c)
        dbias = None if bias_c is None else torch.zeros_like(bias_c)
        dz_arg = du if dz is None else dz
        kernels._backward_kernel[grid](
            u, delta, A_c, B, C, placeholder if D_c is None else D_c, z_arg, bias_arg, starts, carries, dout,
            du, ddelta, dA, dB, dC, placeholder if dD is None else dD, dz_arg, placeholder if dbias is None else dbias,
            *_channel_strides(u, channels_last), *_channel_strides(delta, channels_last), *_channel_strides(z_arg, channels_last),
            *_channel_strides(dout, channels_last), *_channel_strides(du, channels_last), *_channel_strides(ddelta, channels_last),
            *_channel_strides(dz_arg, channels_last),
            *_channel_strides(B, channels_last), *_channel_strides(C, channels_last),
            *_channel_strides(dB, channels_last), *_channel_strides(dC, channels_last),
            length, dim, n_state, n_chunks,
            HAS_D=D_c is not None, HAS_Z=z is not None, HAS_BIAS=bias_c is not None, CHUNK=chunk,
            num_warps=BACKWARD_WARPS, **COMPILE_OPTIONS, **flags,
        )
        a_dtype, d_dtype, bias_dtype = ctx.input_dtypes
        return (
            du,
            ddelta,
            dA.to(a_dtype),
            dB.to(B.dtype),
            dC.to(C.dtype),
            None if dD is None else dD.to(d_dtype),
            dz,
            None if dbias is None else dbias.to(bias_dtype),
            None, None, None, None, None,
        )


def _check(op: str, channels_last: bool, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor,
           D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None) -> None:
    """ValueError/TypeError naming the first argument whose shape, dtype or device does not fit."""
    layout = "(batch, L, dim)" if channels_last else "(batch, dim, L)"
    if u.dim() != 3:
        raise ValueError(f"{op}: u must be a {layout} tensor, got shape {tuple(u.shape)}")
    if A.dim() != 2:
        raise ValueError(f"{op}: A must be a (dim, N) tensor, got shape {tuple(A.shape)}")
    batch = u.shape[0]
    length, dim = (u.shape[1], u.shape[2]) if channels_last else (u.shape[2], u.shape[1])
    if length == 0:
        raise ValueError(f"{op}: the sequence length L must be at least 1")
    n_state = A.shape[1]
    per_channel = (batch, length, dim) if channels_last else (batch, dim, length)
    per_state = (batch, length, n_state) if channels_last else (batch, n_state, length)
    expected = {"delta": per_channel, "A": (dim, n_state), "B": per_state, "C": per_state, "D": (dim,), "z": per_channel,
                "delta_bias": (dim,)}
    tensors = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": delta_bias}
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"{op}: {name} must be float32, bfloat16, float16 or float64, got {tensor.dtype}")
        if tensor.device != u.device:
            raise ValueError(f"{op}: {name} is on {tensor.device} but u is on {u.device}")
        if name in expected and tuple(tensor.shape) != expected[name]:
            raise ValueError(f"{op}: {name} must have shape {expected[name]}, got {tuple(tensor.shape)}")
    if A.is_complex():
        raise ValueError(f"{op}: complex A is not supported")


def triton_selective_scan_channels_last(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    *,
    chunk: int | None = None,
    block_d: int | None = None,
) -> Tensor:
    """Selective scan in the mixer's channel-last layout (semantics of mamba_ssm's ``selective_scan_fn``).

    Shapes: u, delta, z (batch, L, dim); A (dim, N), negative; B, C (batch, L, N); D, delta_bias
    (dim,). Any strides (views of projection outputs are read in place). With ``reverse`` the
    recurrence runs from the last step to the first; the output stays in input time order.
    Returns (batch, L, dim) in ``u``'s dtype; differentiable in every tensor. CUDA tensors, or
    CPU tensors with ``TRITON_INTERPRET=1``. ``chunk`` and ``block_d`` (powers of two) set the tile
    (default :data:`CHUNK` and :data:`BLOCK_D`).
    """
    _check("triton_selective_scan_channels_last", True, u, delta, A, B, C, D, z, delta_bias)
    return _TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse), True,
                                      chunk or CHUNK, block_d or BLOCK_D)


def triton_selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    reverse: bool = False,
    *,
    chunk: int | None = None,
    block_d: int | None = None,
) -> Tensor:
    """Selective scan in mamba_ssm's layout: u, delta, z (batch, dim, L); B, C (batch, N, L).

    Otherwise as :func:`triton_selective_scan_channels_last`.
    """
    _check("triton_selective_scan", False, u, delta, A, B, C, D, z, delta_bias)
    return _TritonSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus), bool(reverse), False,
                                      chunk or CHUNK, block_d or BLOCK_D)
