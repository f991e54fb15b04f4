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

``in_proj`` produces ``x`` channel-last (batch, L, E) and ``z`` channel-first (batch, E, L). On CPU (float32/float64, eager mode), when the
fused C++ extension builds, the causal conv + SiLU and the merge of the two directions run as the
fused ops of ``ssamba.models.fused_ops`` (no transpose or flip copies around them); otherwise, and
under tracing or ``torch.compile``, the same math runs in plain PyTorch.
:func:`set_fused_ops_enabled` switches the fused ops off (for comparisons).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ssamba.models import fused_ops
from ssamba.models.fused_scan import fused_status
from ssamba.models.scan import selective_scan

BimambaType = Literal["none", "v1", "v2"]
NormType = Literal["layernorm", "rmsnorm"]

DT_MIN = 1e-3
DT_MAX = 1e-1
DT_INIT_FLOOR = 1e-4


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


def linear_channels_first(x: Tensor, weight: Tensor) -> Tensor:
    """``F.linear(x, weight).transpose(1, 2)`` for ``x`` (batch, L, in), computed straight into a
    contiguous (batch, out, L) tensor (one batched GEMM; no transpose copy, neither in the backward)."""
    return torch.bmm(weight.expand(x.shape[0], -1, -1), x.transpose(1, 2))


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


def branch_conv(x: Tensor, conv: nn.Conv1d, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Causal conv + SiLU of channel-last ``x`` (batch, L, channels), over ``x`` flipped in time
    if ``reverse`` (the result then stays flipped). Returns it as (batch, L, channels) for
    ``x_proj`` and as (batch, channels, L) for the scan."""
    if _use_fused_ops(x, conv.weight):
        return fused_ops.causal_conv1d_silu_channels_last(x, conv.weight.squeeze(1), conv.bias, reverse)
    x = x.transpose(1, 2)
    xc = causal_conv1d_silu(x.flip(-1) if reverse else x, conv)
    return xc.transpose(1, 2), xc


def merge_directions(y_fwd: Tensor, y_bwd: Tensor, scale: float) -> Tensor:
    """``scale * (y_fwd + y_bwd.flip(-1))`` of two (batch, channels, L) scan outputs (``y_bwd`` in
    reversed time), as (batch, L, channels) for ``out_proj``."""
    if _use_fused_ops(y_fwd, y_bwd):
        return fused_ops.merge_directions(y_fwd, y_bwd, scale)
    y = y_fwd + y_bwd.flip(-1)
    return (y * scale if scale != 1.0 else y).transpose(1, 2)


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

    def _scan(self, x: Tensor, x_dbl: Tensor, dt_proj: nn.Linear, A_log: Tensor, D: Tensor, z: Tensor) -> Tensor:
        """Selective scan of conv output ``x`` (B, E, L) given x_proj output ``x_dbl`` (B, L, R+2N)."""
        dt_low, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = linear_channels_first(dt_low, dt_proj.weight)
        return selective_scan(
            x,
            delta,
            -torch.exp(A_log.float()),
            B.transpose(1, 2),
            C.transpose(1, 2),
            D.float(),
            z=z,
            delta_bias=dt_proj.bias.float(),
            delta_softplus=True,
            backend=self.scan_backend,
        )

    def _branch(self, x: Tensor, z: Tensor, conv: nn.Conv1d, x_proj: nn.Linear, dt_proj: nn.Linear, A_log: Tensor, D: Tensor, reverse: bool) -> Tensor:
        """One direction: ``x`` (B, L, E) in input time order, ``z`` (B, E, L) already in the
        direction's time order; returns the gated scan output (B, E, L) in the direction's order."""
        xc_rows, xc = branch_conv(x, conv, reverse)
        return self._scan(xc, x_proj(xc_rows), dt_proj, A_log, D, z)

    def forward(self, hidden: Tensor) -> Tensor:
        """``hidden``: (batch, L, d_model) -> (batch, L, d_model)."""
        w_x, w_z = self.in_proj.weight.chunk(2, dim=0)
        x = F.linear(hidden, w_x)  # (B, L, E): the layout of the conv input and x_proj
        z = linear_channels_first(hidden, w_z)  # (B, E, L): the layout of the scan's gate
        if self.bimamba == "v1":
            xc_rows, xc = branch_conv(x, self.conv1d)
            x_dbl = self.x_proj(xc_rows)
            y_fwd = self._scan(xc, x_dbl, self.dt_proj, self.A_log, self.D, z)
            y_bwd = self._scan(xc.flip(-1), x_dbl.flip(1), self.dt_proj, self.A_b_log, self.D, z.flip(-1))
            y = merge_directions(y_fwd, y_bwd, 1.0)
        else:
            y = self._branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D, reverse=False)
            if self.bimamba == "v2":
                y_bwd = self._branch(x, z.flip(-1), self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b, reverse=True)
                y = merge_directions(y, y_bwd, 0.5 if self.divide_out else 1.0)
            else:
                y = y.transpose(1, 2)
        return self.out_proj(y)


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

    def forward(self, hidden: Tensor, residual: Tensor | None = None) -> tuple[Tensor, Tensor]:
        residual = hidden if residual is None else residual + self.drop_path(hidden)
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        if self.residual_in_fp32:
            residual = residual.float()
        return self.mixer(hidden), residual
