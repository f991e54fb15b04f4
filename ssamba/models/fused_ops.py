"""Fused C++ CPU ops of the Mamba mixer around the selective scan, with exact gradients.

They live in the same extension as the fused scan (``csrc/mixer_ops.cpp``, built and loaded by
``ssamba.models.fused_scan``) and exist to remove passes over memory that the plain PyTorch
mixer spends on layout changes:

* :func:`causal_conv1d_silu_channels_last`: depthwise causal conv + SiLU read straight from the
  channel-last output of ``in_proj`` (no transpose or flip copy of the input), optionally over
  the time-reversed sequence, returned in both layouts the mixer needs: (batch, L, E) for
  ``x_proj`` and (batch, E, L) for the scan. PyTorch's CPU depthwise conv1d is also slow.
* :func:`merge_directions`: ``scale * (y_fwd + flip(y_bwd))`` of the two scan outputs of a
  bidirectional mixer, transposed to (batch, L, E) for ``out_proj`` in one pass (instead of a
  flip, an add, a scale and a transpose copy, and the same again in the backward).

Both compute in float32 or float64 (the dtype of their inputs) on CPU tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssamba.models.fused_scan import fused_extension

__all__ = ["causal_conv1d_silu_channels_last", "merge_directions"]

SUPPORTED_DTYPES = (torch.float32, torch.float64)


def _check_floating_cpu(op: str, **tensors: Tensor | None) -> None:
    """ValueError naming the first tensor that is not a CPU float32/float64 tensor of the common dtype."""
    dtype = None
    for name, tensor in tensors.items():
        if tensor is None:
            continue
        if tensor.device.type != "cpu":
            raise ValueError(f"{op}: {name} must be a CPU tensor, got one on {tensor.device}")
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise ValueError(f"{op}: {name} must be float32 or float64, got {tensor.dtype}")
        if dtype is not None and tensor.dtype != dtype:
            raise ValueError(f"{op}: {name} has dtype {tensor.dtype}, expected {dtype} like the other inputs")
        dtype = tensor.dtype


class _CausalConv1dSilu(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, reverse: bool) -> tuple[Tensor, Tensor]:
        out_cl, out_cf = fused_extension().causal_conv1d_silu_forward(x, weight, bias, reverse)
        ctx.save_for_backward(x, weight, bias)
        ctx.reverse = reverse
        return out_cl, out_cf

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_cl: Tensor | None, grad_cf: Tensor | None) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = fused_extension().causal_conv1d_silu_backward(x, weight, bias, ctx.reverse, grad_cl, grad_cf)
        return dx, dweight, (dbias if bias is not None else None), None


def causal_conv1d_silu_channels_last(x: Tensor, weight: Tensor, bias: Tensor | None = None, reverse: bool = False) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv over time + SiLU of a channel-last ``x`` (batch, L, E).

    ``weight`` is (E, K) (an ``nn.Conv1d(E, E, K, groups=E)`` weight squeezed), ``bias`` (E,).
    ``out[t] = silu(bias + sum_k weight[:, k] * x[t - (K - 1) + k])`` with zeros before the start.
    With ``reverse`` the conv runs over ``x`` flipped in time and the result stays in that
    flipped order (as ``conv(x.flip(1))``). ``x`` may be a strided view (e.g. a slice of
    ``in_proj``'s output) as long as its channels are contiguous. Returns the result as
    (batch, L, E) and as (batch, E, L); gradients flow from both.
    """
    op = "causal_conv1d_silu_channels_last"
    _check_floating_cpu(op, x=x, weight=weight, bias=bias)
    if x.dim() != 3 or x.shape[1] == 0:
        raise ValueError(f"{op}: x must be (batch, L >= 1, channels), got shape {tuple(x.shape)}")
    if weight.dim() != 2 or weight.shape[0] != x.shape[2]:
        raise ValueError(f"{op}: weight must be (channels={x.shape[2]}, K), got shape {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (x.shape[2],):
        raise ValueError(f"{op}: bias must be ({x.shape[2]},), got shape {tuple(bias.shape)}")
    if x.stride(2) != 1:
        x = x.contiguous()
    return _CausalConv1dSilu.apply(x, weight.contiguous(), bias, bool(reverse))


class _MergeDirections(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, y_fwd: Tensor, y_bwd: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return fused_extension().merge_directions_forward(y_fwd, y_bwd, scale)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        grad_fwd, grad_bwd = fused_extension().merge_directions_backward(grad, ctx.scale)
        return grad_fwd, grad_bwd, None


def merge_directions(y_fwd: Tensor, y_bwd: Tensor, scale: float = 1.0) -> Tensor:
    """``(scale * (y_fwd + y_bwd.flip(-1))).transpose(1, 2)`` as one contiguous (batch, L, E) tensor.

    ``y_fwd`` and ``y_bwd`` are (batch, E, L); ``y_bwd`` is in reversed time order.
    """
    op = "merge_directions"
    _check_floating_cpu(op, y_fwd=y_fwd, y_bwd=y_bwd)
    if y_fwd.dim() != 3 or y_fwd.shape != y_bwd.shape:
        raise ValueError(f"{op}: y_fwd and y_bwd must be (batch, E, L) of one shape, got {tuple(y_fwd.shape)} and {tuple(y_bwd.shape)}")
    return _MergeDirections.apply(y_fwd.contiguous(), y_bwd.contiguous(), float(scale))
