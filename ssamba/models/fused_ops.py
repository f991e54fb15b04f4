"""Fused C++ CPU op of the Mamba mixer in front of the selective scan, with exact gradients.

It lives in the same extension as the fused scan (``csrc/mixer_ops.cpp``, built and loaded by
``ssamba.models.fused_scan``). :func:`causal_conv1d_silu_channels_last` is the depthwise causal
conv + SiLU read straight from the channel-last output of ``in_proj`` (no transpose copy),
optionally anti-causal (the backward direction of a bidirectional mixer, without a flip copy),
and written channel-last for ``x_proj`` and the fused scan. PyTorch's CPU depthwise conv1d is
also slow. It computes in float32 or float64 (the dtype of its inputs) on CPU tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ssamba.models.fused_scan import fused_extension

__all__ = ["causal_conv1d_silu_channels_last"]

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
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, reverse: bool) -> Tensor:
        ctx.save_for_backward(x, weight, bias)
        ctx.reverse = reverse
        return fused_extension().causal_conv1d_silu_forward(x, weight, bias, reverse)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias = ctx.saved_tensors
        dx, dweight, dbias = fused_extension().causal_conv1d_silu_backward(x, weight, bias, ctx.reverse, grad)
        return dx, dweight, (dbias if bias is not None else None), None


def causal_conv1d_silu_channels_last(x: Tensor, weight: Tensor, bias: Tensor | None = None, reverse: bool = False) -> Tensor:
    """Depthwise causal conv over time + SiLU of a channel-last ``x`` (batch, L, E) -> (batch, L, E).

    ``weight`` is (E, K) (an ``nn.Conv1d(E, E, K, groups=E)`` weight squeezed), ``bias`` (E,).
    ``out[t] = silu(bias + sum_k weight[:, k] * x[t - (K - 1) + k])`` with zeros before the start.
    With ``reverse`` the conv runs over the time-reversed sequence and the result is returned in
    input time order: ``out[t] = silu(bias + sum_k weight[:, k] * x[t + (K - 1) - k])``, i.e.
    ``conv(x.flip(1)).flip(1)``. ``x`` may be a strided view (e.g. a slice of ``in_proj``'s
    output) as long as its channels are contiguous.
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
    if not torch.is_grad_enabled():  # inference: no autograd node, nothing saved
        return fused_extension().causal_conv1d_silu_forward(x, weight.contiguous(), bias, bool(reverse))
    return _CausalConv1dSilu.apply(x, weight.contiguous(), bias, bool(reverse))
