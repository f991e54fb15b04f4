"""Mamba mixer (with the Vim/AuM bidirectional variants) and the pre-norm residual block.

Bidirectional variants (``bimamba``), named as in AuM's paper:

* ``"none"`` (Fo-Fo): plain Mamba-1, one forward scan.
* ``"v1"`` (Fo-Bi): the backward scan reuses the forward branch's conv output, ``dt``, ``B``, ``C``,
  ``D``, the dt bias and the gate ``z`` (all flipped in time) with its own decay ``A_b_log``; the two
  gated outputs are summed.
* ``"v2"`` (Bi-Bi, SSAMBA's and Vim's default): the backward branch has its own ``conv1d_b``,
  ``x_proj_b``, ``dt_proj_b``, ``A_b_log`` and ``D_b`` and runs on the time-flipped ``x`` and ``z``;
  the two gated outputs are summed and, with ``divide_out``, halved.

Both directions run on every backend and code path (Vim's non-CUDA path silently ran forward only).
Parameter names follow the original checkpoints, so official weights load by a prefix rename.

Activations stay channel-last (batch, L, E) in input time order throughout: ``x`` and ``z`` are
views of ``in_proj``'s output. The backward direction is a time-reversed recurrence
(``reverse=True``) over an anti-causal conv, which equals running the forward recipe on the
flipped sequence and flipping the result back. On CPU (float32/float64, eager mode), when the
fused C++ extension builds, the conv + SiLU is the fused op of ``ssamba.models.fused_ops``, and
with the ``fused`` scan backend the scan runs channel-last with a native ``reverse``: no
transpose or flip copies anywhere; the ``triton`` backend (GPU) is called the same way. Other backends get the scan through
:func:`~ssamba.models.scan.selective_scan` in mamba_ssm's (batch, E, L) layout, with explicit
flips for the backward direction; under tracing or ``torch.compile`` the conv runs in PyTorch.
:func:`set_fused_ops_enabled` switches the fused path off (for comparisons).

Inference (gradients disabled: ``torch.no_grad()`` or ``inference_mode``) on the fused CPU path
does only what inference needs: both directions of a layer go through one call of
:func:`~ssamba.models.fused_scan.fused_selective_scan_inference` (summed and halved in the kernel,
``dt_proj`` computed inside it, no state checkpoints), and ``time_reversed`` lets a paired layer
run on the time-reversed sequence without flip copies. Every scan shows in a profile as
``ssamba::selective_scan``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssamba.models import fused_ops
from ssamba.models.fused_scan import (
    ScanDirection,
    fused_selective_scan_channels_last,
    fused_selective_scan_inference,
    fused_status,
)
from ssamba.models.scan import resolve_backend, selective_scan
from ssamba.models.triton_scan import triton_selective_scan_channels_last

BimambaType = Literal["none", "v1", "v2"]
NormType = Literal["layernorm", "rmsnorm"]

DT_MIN = 1e-3
DT_MAX = 1e-1
DT_INIT_FLOOR = 1e-4
SCAN_PROFILE_LABEL = "ssamba::selective_scan"
"""``torch.profiler`` label of every selective scan a mixer runs (benchmarks/inference.py times them)."""


class RMSNorm(nn.Module):
    """Root-mean-square norm with a learned scale (``weight`` only), computed in float32."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def make_norm(kind: NormType, dim: int, eps: float) -> nn.Module:
    """LayerNorm (weight and bias) or RMSNorm (weight only)."""
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


_fused_ops_enabled = True


def set_fused_ops_enabled(enabled: bool) -> None:
    """Allow (default) or forbid the fused CPU mixer ops; forbidding them runs plain PyTorch."""
    global _fused_ops_enabled
    _fused_ops_enabled = bool(enabled)


def fused_ops_enabled() -> bool:
    """Whether CPU mixers use the fused ops: allowed and the extension builds here."""
    return _fused_ops_enabled and fused_status() is None


def _use_fused_ops(*tensors: Tensor) -> bool:
    """Fused ops for these tensors: CPU float32/float64 of one dtype, eager mode, extension usable."""
    if not _fused_ops_enabled or torch.jit.is_tracing() or torch.compiler.is_compiling():
        return False
    dtype = tensors[0].dtype
    if dtype not in (torch.float32, torch.float64) or any(t.device.type != "cpu" or t.dtype != dtype for t in tensors):
        return False
    return fused_status() is None


def _causal_conv1d_module():
    """The optional CUDA causal-conv1d kernel, or None."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except ImportError:
        return None
    return causal_conv1d_fn


def causal_conv1d_silu(x: Tensor, conv: nn.Conv1d) -> Tensor:
    """Depthwise causal convolution over time followed by SiLU. ``x``: (batch, channels, L)."""
    if x.is_cuda:
        kernel = _causal_conv1d_module()
        if kernel is not None:
            return kernel(x, conv.weight.squeeze(1), conv.bias, activation="silu")
    length = x.shape[-1]
    y = F.conv1d(x, conv.weight, conv.bias, padding=conv.kernel_size[0] - 1, groups=conv.groups)
    return F.silu(y[..., :length])


def to_scan_layout(t: Tensor, reverse: bool) -> Tensor:
    """Channel-last (batch, L, C) in input time order -> mamba_ssm's (batch, C, L) in the
    direction's time order (flipped when ``reverse``)."""
    t = t.transpose(1, 2)
    return t.flip(-1) if reverse else t


def from_scan_layout(y: Tensor, reverse: bool) -> Tensor:
    """Inverse of :func:`to_scan_layout`."""
    return (y.flip(-1) if reverse else y).transpose(1, 2)


def conv_silu(x: Tensor, conv: nn.Conv1d, reverse: bool = False) -> Tensor:
    """Depthwise conv + SiLU of channel-last ``x`` (batch, L, channels), returned channel-last in
    input time order: causal, or with ``reverse`` anti-causal (the causal conv of the flipped
    sequence, flipped back)."""
    if _use_fused_ops(x, conv.weight):
        return fused_ops.causal_conv1d_silu_channels_last(x, conv.weight.squeeze(1), conv.bias, reverse)
    return from_scan_layout(causal_conv1d_silu(to_scan_layout(x, reverse), conv), reverse)


class MambaMixer(nn.Module):
    """Mamba-1 mixer over (batch, L, d_model) sequences, optionally bidirectional (``bimamba``)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | None = None,
        bimamba: BimambaType = "v2",
        divide_out: bool = True,
        scan_backend: str | None = None,
    ) -> None:
        super().__init__()
        if bimamba not in ("none", "v1", "v2"):
            raise ValueError(f"bimamba must be 'none', 'v1' or 'v2', got {bimamba!r}")
        self.d_model = d_model
        self.d_state = d_state
        self.d_inner = expand * d_model
        self.dt_rank = dt_rank if dt_rank is not None else math.ceil(d_model / 16)
        self.bimamba = bimamba
        self.divide_out = divide_out
        self.scan_backend = scan_backend

        d_inner = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * d_inner, bias=False)
        self.conv1d, self.x_proj, self.dt_proj = self._branch_layers(d_conv)
        self.A_log = nn.Parameter(self._s4d_real_log())
        self.D = nn.Parameter(torch.ones(d_inner))
        if bimamba in ("v1", "v2"):
            self.A_b_log = nn.Parameter(self._s4d_real_log())
        if bimamba == "v2":
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._branch_layers(d_conv)
            self.D_b = nn.Parameter(torch.ones(d_inner))
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def _branch_layers(self, d_conv: int) -> tuple[nn.Conv1d, nn.Linear, nn.Linear]:
        conv = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        init_dt_proj(dt_proj)
        return conv, x_proj, dt_proj

    def _s4d_real_log(self) -> Tensor:
        """S4D-real initialisation: A = -(1..N) for every channel, stored as log."""
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32)
        return torch.log(a).repeat(self.d_inner, 1).contiguous()

    def _fused_channels_last(self, x: Tensor) -> bool:
        """Whether this call runs the channel-last fused scan (fused ops usable, backend 'fused')."""
        return _use_fused_ops(x) and resolve_backend(self.scan_backend, x.device) == "fused"

    def _scan(self, xc: Tensor, x_dbl: Tensor, dt_proj: nn.Linear, A_log: Tensor, D: Tensor, z: Tensor, reverse: bool) -> Tensor:
        """Selective scan of one direction over conv output ``xc`` (B, L, E) with gate ``z`` (B, L, E),
        given x_proj output ``x_dbl`` (B, L, R+2N), all in input time order; with ``reverse`` the
        recurrence runs from the last step to the first. Returns (B, L, E) in input time order."""
        dt_low, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt_low, dt_proj.weight)
        A = -torch.exp(A_log.float())
        with torch.profiler.record_function(SCAN_PROFILE_LABEL):
            return self._scan_op(xc, delta, A, B, C, dt_proj, D, z, reverse)

    def _scan_op(self, xc: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, dt_proj: nn.Linear, D: Tensor, z: Tensor, reverse: bool) -> Tensor:
        """The scan of :meth:`_scan` on the backend that fits, from the channel-last inputs."""
        if self._fused_channels_last(xc):
            return fused_selective_scan_channels_last(
                xc, delta, A, B, C, D.float(), z, dt_proj.bias.float(), delta_softplus=True, reverse=reverse
            )
        if resolve_backend(self.scan_backend, xc.device) == "triton":
            return triton_selective_scan_channels_last(
                xc, delta, A, B, C, D.float(), z, dt_proj.bias.float(), delta_softplus=True, reverse=reverse
            )
        y = selective_scan(
            to_scan_layout(xc, reverse),
            to_scan_layout(delta, reverse),
            A,
            to_scan_layout(B, reverse),
            to_scan_layout(C, reverse),
            D.float(),
            z=to_scan_layout(z, reverse),
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )
        return from_scan_layout(y, reverse)

    def _direction(self, x: Tensor, z: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear, A_log: Tensor, D: Tensor, reverse: bool) -> Tensor:
        """One direction with its own conv and projections: ``x``, ``z`` and the result (B, L, E)."""
        xc = conv_silu(x, conv, reverse)
        return self._scan(xc, x_proj(xc), dt_proj, A_log, D, z, reverse)

    def forward(self, hidden: Tensor, time_reversed: bool = False) -> Tensor:
        """``hidden``: (batch, L, d_model) -> (batch, L, d_model).

        With ``time_reversed`` the mixer runs on the sequence reversed in time and returns the result in
        input order, i.e. ``mixer(hidden.flip(1)).flip(1)``, without flipping anything.
        """
        if not torch.is_grad_enabled() and self._fused_channels_last(hidden):
            return self.out_proj(self._fused_inference(hidden, time_reversed))
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, L, E) views, channels contiguous
        forward, backward = time_reversed, not time_reversed  # the `reverse` flag of each direction
        if self.bimamba == "v1":
            xc = conv_silu(x, self.conv1d, forward)
            x_dbl = self.x_proj(xc)
            y = self._scan(xc, x_dbl, self.dt_proj, self.A_log, self.D, z, reverse=forward)
            y = y + self._scan(xc, x_dbl, self.dt_proj, self.A_b_log, self.D, z, reverse=backward)
        else:
            y = self._direction(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=forward)
            if self.bimamba == "v2":
                y = y + self._direction(x, z, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, reverse=backward)
                if self.divide_out:
                    y = y * 0.5
        return self.out_proj(y)

    def _fused_inference(self, hidden: Tensor, time_reversed: bool) -> Tensor:
        """The gated scan output (B, L, E) of every direction, summed (and halved for v2 with
        ``divide_out``) by one fused inference call; no autograd. ``x`` and ``z`` come from two halves
        of ``in_proj`` so that ``x`` is freed once the convs have read it (peak 3 x E per token, not 4)."""
        dtype = hidden.dtype
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        x = F.linear(hidden, w_x)

        def direction(xc: Tensor, x_dbl: Tensor, dt_proj: nn.Linear, A_log: Tensor, D: Tensor, reverse: bool) -> ScanDirection:
            dt_low, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
            A = -torch.exp(A_log.to(dtype))
            return ScanDirection(xc, dt_low, dt_proj.weight.to(dtype), A, B, C, D.to(dtype), dt_proj.bias.to(dtype), reverse)

        forward, backward = time_reversed, not time_reversed
        xc = conv_silu(x, self.conv1d, forward)
        x_dbl = self.x_proj(xc)
        directions = [direction(xc, x_dbl, self.dt_proj, self.A_log, self.D, forward)]
        if self.bimamba == "v1":
            directions.append(direction(xc, x_dbl, self.dt_proj, self.A_b_log, self.D, backward))
        elif self.bimamba == "v2":
            xc_b = conv_silu(x, self.conv1d_b, backward)
            directions.append(direction(xc_b, self.x_proj_b(xc_b), self.dt_proj_b, self.A_b_log, self.D_b, backward))
        del x
        z = F.linear(hidden, w_z)
        scale = 0.5 if self.bimamba == "v2" and self.divide_out else 1.0
        in_place = self.bimamba != "v1"  # v1's second direction reads xc too
        with torch.profiler.record_function(SCAN_PROFILE_LABEL):
            return fused_selective_scan_inference(directions, z, out_scale=scale, out=xc if in_place else None)


def init_dt_proj(dt_proj: nn.Linear, dt_min: float = DT_MIN, dt_max: float = DT_MAX, floor: float = DT_INIT_FLOOR) -> None:
    """Mamba's dt initialisation: weight U(+-rank^-0.5), bias = softplus^-1(dt), dt log-uniform."""
    rank = dt_proj.in_features
    with torch.no_grad():
        bound = rank**-0.5
        dt_proj.weight.uniform_(-bound, bound)
        log_dt = torch.rand(dt_proj.out_features) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        dt = torch.exp(log_dt).clamp(min=floor)
        dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse of softplus
    dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]


class Block(nn.Module):
    """Pre-norm residual block in Vim's "add -> norm -> mixer" order.

    ``forward(hidden, residual)`` returns ``(mixer_output, residual)`` where the residual stream
    is ``residual + drop_path(hidden)`` (or ``hidden`` for the first block).
    """

    def __init__(self, dim: int, mixer: MambaMixer, norm: nn.Module, drop_path: float = 0.0, residual_in_fp32: bool = False) -> None:
        super().__init__()
        self.mixer = mixer
        self.norm = norm
        self.drop_path = DropPath(drop_path)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: Tensor, residual: Tensor | None = None, time_reversed: bool = False) -> tuple[Tensor, Tensor]:
        """One block; with ``time_reversed`` the mixer sees the sequence reversed in time (see
        :meth:`MambaMixer.forward`), everything else is per token."""
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(hidden, time_reversed), residual
