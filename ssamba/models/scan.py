"""Mamba-1 selective scan with interchangeable backends.

The op
------
For every batch element ``b``, channel ``d`` and state ``n`` the scan runs the linear recurrence::

    delta'_t = softplus(delta_t + delta_bias)      (or delta_t + delta_bias without softplus)
    h_t      = exp(delta'_t * A[d, n]) * h_{t-1} + delta'_t * B_t[n] * u_t        (h_{-1} = 0)
    y_t      = sum_n C_t[n] * h_t[n] + D[d] * u_t
    y_t      = y_t * silu(z_t)                      (only when z is given)

with the layout of mamba_ssm's ``selective_scan_fn``: ``u``, ``delta``, ``z`` are (batch, dim, L),
``A`` is (dim, N) and already negative (``A = -exp(A_log)``), ``B`` and ``C`` are (batch, N, L),
``D`` and ``delta_bias`` are (dim,).  The result has ``u``'s dtype; the scan itself runs in float32
(float64 when an input is float64).

The bias, softplus, skip term ``D * u`` and the ``silu(z)`` gate are cheap (batch, dim, L) operations
applied with plain autograd around the recurrence; only the recurrence differs between backends.

Backends
--------
``ref``
    The reference: a sequential loop over time on (batch, dim, N) states, written with plain
    differentiable ops.  Inputs are sliced once with ``unbind`` (indexing ``x[..., t]`` in an
    autograd loop would make the backward O(L^2)).  Exact, float64-capable, slow; used by the
    tests as ground truth.
``chunked``
    A custom ``autograd.Function`` (the CPU default when ``fused`` is unavailable).  Time is cut
    into chunks of ``CHUNK_SIZE`` steps.  Per chunk the decays ``exp(delta*A)`` (computed as
    ``exp2(delta * A*log2(e))``, which is ~2.5x faster than ``exp`` on CPU) and the inputs
    ``delta*B*u`` are formed in a (T, batch, N, dim) buffer with ``dim`` innermost, the recurrence
    runs as one in-place ``addcmul_`` per step on ``unbind`` views, and the contraction with ``C``
    is one ``bmm``.  Only the state at each chunk boundary is kept; the backward recomputes each
    chunk's states from its boundary state and runs the reverse recurrence
    ``g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}``, with every reduction over N or dim done as a
    ``bmm`` or an outer-dimension sum.  Memory is O(batch*dim*N*(T + L/T)); no (batch, L, dim, N)
    tensor is ever built.
``compiled``
    ``torch.compile`` (Inductor, ``dynamic=False``) of a fixed ``COMPILE_CHUNK_SIZE``-step chunk
    function, with a Python loop over chunks and the sequence padded to a multiple of the chunk
    (padded steps have ``delta = 0``, so they leave the state unchanged).  Opt-in only: it needs a
    C++ compiler and compiles for 30-50 s per new shape (the compiled function is created once per
    process; Dynamo caches one graph per shape, up to ``torch._dynamo.config.recompile_limit``
    shapes, after which it silently runs the chunk eagerly).  The chunk collects all states and contracts them
    with ``C`` once, because torch 2.13's Inductor-CPU returns wrong outputs (but right gradients)
    for the formulation that contracts inside the unrolled loop.
``fused``
    The C++ kernel of ``ssamba.models.fused_scan`` (the CPU default when it is usable). The kernel
    is channel-last; through this function it costs one transpose copy per input, while the
    mixer calls its channel-last entry point directly.
``cuda``
    mamba_ssm's CUDA kernel (``pip install 'ssamba[cuda]'``); CUDA tensors only.
``triton``
    The Triton kernels of ``ssamba.models.triton_scan`` (Triton ships with CUDA builds of torch,
    so nothing is compiled by hand); CUDA tensors, or CPU tensors with ``TRITON_INTERPRET=1``
    (Triton's interpreter, for tests). The mixer calls its channel-last entry point directly.

Choosing a backend: ``backend=`` argument, else the ``SSAMBA_SCAN`` environment variable, else
automatic (:func:`explain_default_backend` says why): for CUDA tensors ``cuda`` when mamba_ssm
imports, else ``triton`` when triton imports, else ``chunked`` with a warning naming both reasons;
on CPU ``fused`` (or ``chunked``).
"""

from __future__ import annotations

import functools
import importlib
import math
import os
import shutil
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS: tuple[str, ...] = ("ref", "chunked", "compiled", "fused", "cuda", "triton")
ENV_VAR = "SSAMBA_SCAN"
CUDA_EXTRA_HINT = "install the GPU extra: pip install 'ssamba[cuda]'"

CHUNK_SIZE = 16
"""Time steps per chunk of the ``chunked`` backend (boundary states are stored every CHUNK_SIZE steps)."""
COMPILE_CHUNK_SIZE = 16
"""Time steps unrolled in the ``compiled`` backend's chunk function."""

_LOG2_E = 1.0 / math.log(2.0)
_FUSED_MODULE = "ssamba.models.fused_scan"
_CUDA_MODULE = "mamba_ssm.ops.selective_scan_interface"
_TRITON_MODULE = "ssamba.models.triton_scan"
_CXX_CANDIDATES = ("g++", "c++", "clang++")

_warned_fallbacks: set[str] = set()


# ----------------------------------------------------------------------------- availability


@functools.cache
def _load_fused() -> tuple[ModuleType | None, str | None]:
    """The fused-kernel module and None, or None and the reason it is unusable (cached)."""
    try:
        module = importlib.import_module(_FUSED_MODULE)
    except ImportError as err:
        return None, f"{_FUSED_MODULE} cannot be imported ({err})"
    reason = module.fused_status()
    if reason is not None:
        return None, reason
    return module, None


@functools.cache
def _load_cuda_scan() -> tuple[Callable[..., Tensor] | None, str | None]:
    """mamba_ssm's ``selective_scan_fn`` and None, or None and why it cannot be imported (cached)."""
    try:
        module = importlib.import_module(_CUDA_MODULE)
    except Exception as err:  # noqa: BLE001 -- mamba_ssm fails with assorted errors without its CUDA build
        return None, f"mamba_ssm is not importable ({type(err).__name__}: {err}); {CUDA_EXTRA_HINT}"
    return module.selective_scan_fn, None


@functools.cache
def _load_triton_scan() -> tuple[ModuleType | None, str | None]:
    """``ssamba.models.triton_scan`` and None when triton imports, else None and the reason (cached)."""
    try:
        module = importlib.import_module(_TRITON_MODULE)
    except ImportError as err:
        return None, f"{_TRITON_MODULE} cannot be imported ({err})"
    reason = module.triton_status()
    return (None, reason) if reason is not None else (module, None)


def _triton_device_reason(module: ModuleType, device: torch.device) -> str | None:
    """None when the triton kernels can run tensors on ``device``, else why not."""
    if device.type == "cuda" or module.interpreter_enabled():
        return None
    return f"the 'triton' backend needs CUDA tensors, got tensors on {device} (TRITON_INTERPRET=1 runs it on CPU, slowly)"


def _compiled_status() -> str | None:
    """None when ``torch.compile`` with a C++ compiler is available, else the reason."""
    if not torch._dynamo.is_dynamo_supported():
        return "torch.compile (Dynamo) is not supported on this Python/torch build"
    compilers = (os.environ.get("CXX", ""), *_CXX_CANDIDATES)
    if not any(c and shutil.which(c) for c in compilers):
        return "no C++ compiler found (Inductor needs g++ or clang++ on PATH, or $CXX)"
    return None


def backend_status() -> dict[str, str | None]:
    """Map each backend name to None when usable on this machine, else the reason why not."""
    cuda_reason = _load_cuda_scan()[1]
    if cuda_reason is None and not torch.cuda.is_available():
        cuda_reason = "mamba_ssm imports, but torch sees no CUDA device"
    triton_module, triton_reason = _load_triton_scan()
    if triton_module is not None and not torch.cuda.is_available() and not triton_module.interpreter_enabled():
        triton_reason = "triton imports, but torch sees no CUDA device (TRITON_INTERPRET=1 runs it on CPU, slowly)"
    return {
        "ref": None,
        "chunked": None,
        "compiled": _compiled_status(),
        "fused": _load_fused()[1],
        "cuda": cuda_reason,
        "triton": triton_reason,
    }


def _warn_once(key: str, message: str) -> None:
    if key not in _warned_fallbacks:
        _warned_fallbacks.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=5)  # the caller of selective_scan


def explain_default_backend(device: torch.device) -> tuple[str, str]:
    """The automatic choice for tensors on ``device`` (ignores ``SSAMBA_SCAN``) and why, in words."""
    if torch.device(device).type == "cuda":
        cuda_reason = _load_cuda_scan()[1]
        if cuda_reason is None:
            return "cuda", "mamba_ssm's CUDA kernel imports"
        triton_reason = _load_triton_scan()[1]
        if triton_reason is None:
            return "triton", f"{cuda_reason.split(';')[0]}; triton imports"
        return "chunked", f"neither GPU scan kernel is usable: {cuda_reason}; and {triton_reason}"
    reason = _load_fused()[1]
    if reason is None:
        return "fused", "the fused C++ CPU kernel builds here"
    return "chunked", f"fused CPU kernel unavailable ({reason})"


def default_backend(device: torch.device) -> str:
    """The automatic choice for tensors on ``device`` (ignores ``SSAMBA_SCAN``); warns once when
    it falls back to ``chunked``."""
    name, why = explain_default_backend(device)
    if name == "chunked" and torch.device(device).type == "cuda":
        _warn_once("cuda", f"selective scan: using the slow 'chunked' backend on CUDA because {why}")
    elif name == "chunked":
        _warn_once("fused", f"selective scan: {why}; using 'chunked'")
    return name


def resolve_backend(name: str | None, device: torch.device) -> str:
    """Pick the backend: ``name``, else ``$SSAMBA_SCAN``, else :func:`default_backend`.

    Raises ValueError for an unknown name and RuntimeError when the named backend cannot run
    tensors on ``device`` here.
    """
    source = "backend argument"
    if name is None:
        name = os.environ.get(ENV_VAR) or None
        source = f"${ENV_VAR}"
    if name is None:
        return default_backend(device)
    if name not in BACKENDS:
        raise ValueError(f"unknown selective-scan backend {name!r} (from {source}); expected one of {', '.join(BACKENDS)}")
    device = torch.device(device)
    if name == "cuda":
        reason = _load_cuda_scan()[1]
        if reason is not None:
            raise RuntimeError(f"selective-scan backend 'cuda' is unavailable: {reason}")
        if device.type != "cuda":
            raise RuntimeError(
                f"selective-scan backend 'cuda' needs CUDA tensors, got tensors on {device}; "
                "use backend 'fused' or 'chunked' on CPU"
            )
    elif name == "fused":
        reason = _load_fused()[1]
        if reason is not None:
            raise RuntimeError(f"selective-scan backend 'fused' is unavailable: {reason}")
        if device.type != "cpu":
            raise RuntimeError(f"selective-scan backend 'fused' runs on CPU tensors only, got tensors on {device}")
    elif name == "triton":
        module, reason = _load_triton_scan()
        if module is None:
            raise RuntimeError(f"selective-scan backend 'triton' is unavailable: {reason}")
        reason = _triton_device_reason(module, device)
        if reason is not None:
            raise RuntimeError(f"selective-scan backend 'triton' is unavailable: {reason}")
    elif name == "compiled":
        reason = _compiled_status()
        if reason is not None:
            raise RuntimeError(f"selective-scan backend 'compiled' is unavailable: {reason}")
    return name


# ----------------------------------------------------------------------------- shared pieces


def _check_inputs(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None) -> None:
    """Raise ValueError naming the argument whose shape or dtype does not fit."""
    if u.dim() != 3:
        raise ValueError(f"selective_scan: u must have shape (batch, dim, L), got {tuple(u.shape)}")
    batch, dim, length = u.shape
    if length == 0:
        raise ValueError("selective_scan: the sequence length L (last dim of u) must be at least 1")
    if A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"selective_scan: A must have shape (dim, N) with dim={dim}, got {tuple(A.shape)}")
    if A.is_complex():
        raise ValueError("selective_scan: complex A is not supported (expected a real, negative A)")
    n_state = A.shape[1]
    expected = {
        "delta": (delta, (batch, dim, length)),
        "B": (B, (batch, n_state, length)),
        "C": (C, (batch, n_state, length)),
        "D": (D, (dim,)),
        "z": (z, (batch, dim, length)),
        "delta_bias": (delta_bias, (dim,)),
    }
    for arg, (tensor, shape) in expected.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"selective_scan: {arg} must have shape {shape}, got {tuple(tensor.shape)}")


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    """float64 if any input is float64, else float32."""
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _run_torch_backend(
    recurrence: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor],
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """Apply bias/softplus, run ``recurrence(u, delta', A, B, C) -> sum_n C h``, add D*u, gate."""
    dtype = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    uc = u.to(dtype)
    dt = delta.to(dtype)
    if delta_bias is not None:
        dt = dt + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    y = recurrence(uc, dt, A.to(dtype), B.to(dtype), C.to(dtype))
    if D is not None:
        y = y + D.to(dtype)[:, None] * uc
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y.to(u.dtype)


# ----------------------------------------------------------------------------- ref


def _recurrence_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    """Sequential reference: one (batch, dim, N) state update per time step, plain autograd."""
    batch, dim, _ = u.shape
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for u_t, dt_t, b_t, c_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)):
        decay = torch.exp(dt_t[:, :, None] * A)
        h = decay * h + (dt_t * u_t)[:, :, None] * b_t[:, None, :]
        ys.append((h * c_t[:, None, :]).sum(-1))
    return torch.stack(ys, dim=-1)


# ----------------------------------------------------------------------------- chunked


class _ChunkedScan(torch.autograd.Function):
    """Recurrence ``y = sum_n C h`` with chunk-boundary checkpoints and a recomputing backward.

    Internally time-major: u, delta, y are (L, batch, dim); B, C are (L, batch, N); states and
    per-chunk buffers are (T, batch, N, dim).
    """

    @staticmethod
    def forward(ctx: Any, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk: int) -> Tensor:
        u_t = u.permute(2, 0, 1).contiguous()
        dt_t = delta.permute(2, 0, 1).contiguous()
        b_t = B.permute(2, 0, 1).contiguous()
        c_t = C.permute(2, 0, 1).contiguous()
        a2 = (A * _LOG2_E).t().contiguous()  # (N, dim), exp2(dt * a2) == exp(dt * A)
        length, batch, dim = u_t.shape
        n_state = a2.shape[0]
        n_chunks = -(-length // chunk)

        dtu = dt_t * u_t
        y = u_t.new_empty(length, batch, dim)
        states = u_t.new_zeros(n_chunks, batch, n_state, dim)  # state entering each chunk
        decay_buf = u_t.new_empty(min(chunk, length), batch, n_state, dim)
        h_buf = torch.empty_like(decay_buf)
        for c in range(n_chunks):
            t0 = c * chunk
            t1 = min(t0 + chunk, length)
            _, hs = _chunk_states(dt_t[t0:t1], dtu[t0:t1], b_t[t0:t1], a2, states[c], decay_buf, h_buf)
            n = t1 - t0
            torch.bmm(c_t[t0:t1].view(n * batch, 1, n_state), hs.view(n * batch, n_state, dim), out=y[t0:t1].view(n * batch, 1, dim))
            if c + 1 < n_chunks:
                states[c + 1].copy_(hs[-1])
        ctx.chunk = chunk
        ctx.save_for_backward(u_t, dt_t, A, b_t, c_t, states)
        return y.permute(1, 2, 0).contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        u_t, dt_t, A, b_t, c_t, states = ctx.saved_tensors
        chunk = ctx.chunk
        length, batch, dim = u_t.shape
        n_state = A.shape[1]
        a2 = (A * _LOG2_E).t().contiguous()
        a_nd = A.t().contiguous()
        dy_t = dy.permute(2, 0, 1).contiguous()
        dtu = dt_t * u_t

        grad_dtu = torch.empty_like(u_t)  # dL/d(delta*u)
        grad_decay = torch.empty_like(u_t)  # dL/d delta through exp(delta*A)
        grad_b = torch.empty_like(b_t)
        grad_c = torch.empty_like(c_t)
        grad_a = a_nd.new_zeros(n_state, dim)
        carry = u_t.new_zeros(batch, n_state, dim)  # dL/dh at the end of the chunk, from later steps
        decay_buf = u_t.new_empty(min(chunk, length), batch, n_state, dim)
        h_buf = torch.empty_like(decay_buf)
        g_buf = torch.empty_like(decay_buf)
        for c in reversed(range(states.shape[0])):
            t0 = c * chunk
            t1 = min(t0 + chunk, length)
            n = t1 - t0
            rows = n * batch
            h0 = states[c]
            decay, hs = _chunk_states(dt_t[t0:t1], dtu[t0:t1], b_t[t0:t1], a2, h0, decay_buf, h_buf)
            torch.bmm(hs.view(rows, n_state, dim), dy_t[t0:t1].view(rows, dim, 1), out=grad_c[t0:t1].view(rows, n_state, 1))

            gs = torch.mul(c_t[t0:t1, :, :, None], dy_t[t0:t1, :, None, :], out=g_buf[:n])
            g_steps = gs.unbind(0)
            decay_steps = decay.unbind(0)
            g_steps[-1].add_(carry)
            for t in range(n - 2, -1, -1):
                g_steps[t].addcmul_(decay_steps[t + 1], g_steps[t + 1])
            torch.mul(decay_steps[0], g_steps[0], out=carry)

            torch.bmm(b_t[t0:t1].view(rows, 1, n_state), gs.view(rows, n_state, dim), out=grad_dtu[t0:t1].view(rows, 1, dim))
            torch.bmm(gs.view(rows, n_state, dim), dtu[t0:t1].view(rows, dim, 1), out=grad_b[t0:t1].view(rows, n_state, 1))

            # m_t = g_t * exp(delta_t A) * h_{t-1} = dL/d(delta_t * A), built in the decay buffer
            m = decay.mul_(gs)
            m[1:].mul_(hs[:-1])
            m[0].mul_(h0)
            m_times_dt = torch.mul(m, dt_t[t0:t1, :, None, :], out=hs)  # states are no longer needed
            grad_a.add_(m_times_dt.view(rows, n_state * dim).sum(0).view(n_state, dim))
            torch.sum(m.mul_(a_nd), dim=2, out=grad_decay[t0:t1])

        grad_u = grad_dtu * dt_t
        grad_delta = grad_dtu.mul_(u_t).add_(grad_decay)
        return (
            grad_u.permute(1, 2, 0),
            grad_delta.permute(1, 2, 0),
            grad_a.t(),
            grad_b.permute(1, 2, 0),
            grad_c.permute(1, 2, 0),
            None,
        )


def _chunk_states(dt: Tensor, dtu: Tensor, b: Tensor, a2: Tensor, h0: Tensor, decay_buf: Tensor, h_buf: Tensor) -> tuple[Tensor, Tensor]:
    """States h_t of one chunk, (n, batch, N, dim), and its decays exp(dt*A), both in the buffers."""
    n = dt.shape[0]
    decay = torch.mul(dt[:, :, None, :], a2, out=decay_buf[:n]).exp2_()
    hs = torch.mul(b[:, :, :, None], dtu[:, :, None, :], out=h_buf[:n])
    h_steps = hs.unbind(0)
    decay_steps = decay.unbind(0)
    h_steps[0].addcmul_(decay_steps[0], h0)
    for t in range(1, n):
        h_steps[t].addcmul_(decay_steps[t], h_steps[t - 1])
    return decay, hs


def _recurrence_chunked(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    return _ChunkedScan.apply(u, delta, A, B, C, CHUNK_SIZE)


# ----------------------------------------------------------------------------- compiled


def _chunk_step(h: Tensor, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> tuple[Tensor, Tensor]:
    """One chunk of the recurrence: h (batch, dim, N), u/delta (batch, dim, T), B/C (batch, N, T).

    Returns y (batch, dim, T) and the final state.  All states are stacked first and contracted
    with C once (the per-step contraction is miscompiled by torch 2.13 Inductor-CPU).
    """
    decay = torch.exp(delta.unsqueeze(-1) * A[:, None, :])  # (batch, dim, T, N)
    inputs = (delta * u).unsqueeze(-1) * B.transpose(1, 2).unsqueeze(1)  # (batch, dim, T, N)
    states = []
    for t in range(u.shape[-1]):
        h = decay[:, :, t] * h + inputs[:, :, t]
        states.append(h)
    y = (torch.stack(states, dim=2) * C.transpose(1, 2).unsqueeze(1)).sum(-1)
    return y, h


@functools.lru_cache(maxsize=1)
def _compiled_chunk_step() -> Callable[..., tuple[Tensor, Tensor]]:
    """The process-wide compiled chunk step (Dynamo then caches one graph per input shape)."""
    return torch.compile(_chunk_step, dynamic=False, fullgraph=True)


def _recurrence_compiled(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> Tensor:
    batch, dim, length = u.shape
    step = _compiled_chunk_step()
    pad = -length % COMPILE_CHUNK_SIZE
    if pad:  # delta = 0 on padded steps: decay 1, input 0, state unchanged
        u, delta, B, C = (F.pad(x, (0, pad)) for x in (u, delta, B, C))
    needs_grad = torch.is_grad_enabled() and any(x.requires_grad for x in (u, delta, A, B, C))
    # the first state requires grad like the later ones, so all chunks share one compiled graph
    h = u.new_zeros(batch, dim, A.shape[1], requires_grad=needs_grad)
    ys = []
    chunks = (x.split(COMPILE_CHUNK_SIZE, dim=-1) for x in (u, delta, B, C))
    for u_c, dt_c, b_c, c_c in zip(*chunks):
        y_c, h = step(h, u_c, dt_c, A, b_c, c_c)
        ys.append(y_c)
    return torch.cat(ys, dim=-1)[..., :length]


# ----------------------------------------------------------------------------- external kernels


def _scan_fused(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    module, reason = _load_fused()
    if module is None:
        raise RuntimeError(f"selective-scan backend 'fused' is unavailable: {reason}")
    return module.fused_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _scan_cuda(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    scan_fn, reason = _load_cuda_scan()
    if scan_fn is None:
        raise RuntimeError(f"selective-scan backend 'cuda' is unavailable: {reason}")
    return scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=False)


def _scan_triton(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None, delta_bias: Tensor | None, delta_softplus: bool) -> Tensor:
    module, reason = _load_triton_scan()
    if module is None:
        raise RuntimeError(f"selective-scan backend 'triton' is unavailable: {reason}")
    return module.triton_selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


def _torch_backend(recurrence: Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]) -> Callable[..., Tensor]:
    return functools.partial(_run_torch_backend, recurrence)


_IMPLEMENTATIONS: dict[str, Callable[..., Tensor]] = {
    "ref": _torch_backend(_recurrence_ref),
    "chunked": _torch_backend(_recurrence_chunked),
    "compiled": _torch_backend(_recurrence_compiled),
    "fused": _scan_fused,
    "cuda": _scan_cuda,
    "triton": _scan_triton,
}


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str | None = None,
) -> Tensor:
    """Mamba-1 selective scan (semantics and layout of mamba_ssm's ``selective_scan_fn``).

    u, delta, z: (batch, dim, L); A: (dim, N), negative; B, C: (batch, N, L); D, delta_bias: (dim,).
    Returns y (batch, dim, L) in ``u``'s dtype.  ``backend`` is one of :data:`BACKENDS`; None uses
    ``$SSAMBA_SCAN`` or the automatic choice (see the module docstring).
    """
    _check_inputs(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend(backend, u.device)
    return _IMPLEMENTATIONS[name](u, delta, A, B, C, D, z, delta_bias, delta_softplus)
