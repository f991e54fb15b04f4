"""Fused CPU mixer ops (causal conv + SiLU, direction merge): values and gradients against float64
references written here, and their automatic use in MambaMixer."""

from __future__ import annotations

import pytest
import torch

from ssamba.models import fused_ops, mamba
from ssamba.models.fused_ops import causal_conv1d_silu_channels_last, merge_directions
from ssamba.models.fused_scan import fused_status
from ssamba.models.mamba import MambaMixer

FLOAT64_TOLERANCE = 1e-12
FLOAT32_TOLERANCE = 1e-5
LENGTHS = [1, 2, 3, 5, 31, 32, 33, 70]


@pytest.fixture(scope="module", autouse=True)
def _fused_extension() -> None:
    """Build (first run, about a minute) or load the extension once; skip if it cannot be built."""
    reason = fused_status()
    if reason is not None:
        pytest.skip(f"fused CPU extension unavailable: {reason}")


@pytest.fixture
def fused_ops_disabled():
    mamba.set_fused_ops_enabled(False)
    yield
    mamba.set_fused_ops_enabled(True)


def reference_conv_silu(x, weight, bias, reverse):
    """out[t] = silu(bias + sum_k w[:, k] * x[t - (K - 1) + k]) over (batch, L, E), by shifted sums."""
    xs = x.flip(1) if reverse else x
    length, taps = xs.shape[1], weight.shape[1]
    pre = torch.zeros_like(xs) if bias is None else bias.expand_as(xs).clone()
    for k in range(taps):
        shift = taps - 1 - k
        if shift < length:
            shifted = torch.cat([xs.new_zeros(xs.shape[0], shift, xs.shape[2]), xs[:, : length - shift]], dim=1)
            pre = pre + weight[:, k] * shifted
    return pre / (1 + torch.exp(-pre))


def conv_inputs(length, channels=7, taps=4, batch=2, bias=True, dtype=torch.float64, seed=0):
    """x as a strided channel slice of a wider (batch, L, 2E) tensor, as in the mixer."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(batch, length, 2 * channels, generator=g, dtype=dtype).requires_grad_()
    weight = (0.5 * torch.randn(channels, taps, generator=g, dtype=dtype)).requires_grad_()
    b = torch.randn(channels, generator=g, dtype=dtype).requires_grad_() if bias else None
    return wide, weight, b


def grads(outputs, upstream, inputs):
    loss = sum((o * g).sum() for o, g in zip(outputs, upstream))
    return torch.autograd.grad(loss, [t for t in inputs if t is not None])


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("bias", [True, False])
def test_conv_matches_float64_reference(length, reverse, bias):
    wide, weight, b = conv_inputs(length, bias=bias)
    x = wide[..., :7]
    rows, channels_first = causal_conv1d_silu_channels_last(x, weight, b, reverse)
    expected = reference_conv_silu(x, weight, b, reverse)
    assert rows.shape == expected.shape and rows.is_contiguous() and channels_first.is_contiguous()
    torch.testing.assert_close(rows, expected, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)
    torch.testing.assert_close(channels_first, expected.transpose(1, 2), rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)

    g = torch.Generator().manual_seed(1)
    up_rows = torch.randn(rows.shape, generator=g, dtype=rows.dtype)
    up_cf = torch.randn(channels_first.shape, generator=g, dtype=rows.dtype)
    got = grads([rows, channels_first], [up_rows, up_cf], [wide, weight, b])
    want = grads([expected, expected.transpose(1, 2)], [up_rows, up_cf], [wide, weight, b])
    for name, a, e in zip(["x", "weight", "bias"], got, want):
        torch.testing.assert_close(a, e, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE, msg=lambda m, name=name: f"grad {name}: {m}")
    assert got[0][..., 7:].abs().max() == 0  # the other half of the wide tensor is untouched


@pytest.mark.parametrize("taps", [1, 2, 3, 6])
@pytest.mark.parametrize("channels", [1, 17, 40])
def test_conv_other_kernel_sizes_and_widths(taps, channels):
    wide, weight, b = conv_inputs(37, channels=channels, taps=taps, seed=taps)
    x = wide[..., :channels]
    rows, channels_first = causal_conv1d_silu_channels_last(x, weight, b, reverse=True)
    expected = reference_conv_silu(x, weight, b, reverse=True)
    torch.testing.assert_close(rows, expected, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)
    assert torch.equal(channels_first, rows.transpose(1, 2))
    up = torch.randn_like(rows)
    got = grads([rows], [up], [wide, weight, b])
    want = grads([expected], [up], [wide, weight, b])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


@pytest.mark.parametrize("used", ["rows", "channels_first"])
def test_conv_gradient_from_one_output_only(used):
    wide, weight, b = conv_inputs(45)
    x = wide[..., :7]
    rows, channels_first = causal_conv1d_silu_channels_last(x, weight, b)
    out = rows if used == "rows" else channels_first.transpose(1, 2)
    got = torch.autograd.grad(out.square().sum(), [wide, weight, b])
    want = torch.autograd.grad(reference_conv_silu(x, weight, b, False).square().sum(), [wide, weight, b])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


def test_conv_float32_close_to_float64_reference():
    wide, weight, b = conv_inputs(513, channels=48)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (wide[..., :48], weight, b))
    rows, _ = causal_conv1d_silu_channels_last(x32, w32, b32, reverse=True)
    up = torch.randn(rows.shape, dtype=torch.float64)
    rows.backward(up.float())
    expected = reference_conv_silu(wide[..., :48], weight, b, True)
    want = grads([expected], [up], [wide, weight, b])
    torch.testing.assert_close(rows.double(), expected, rtol=FLOAT32_TOLERANCE, atol=FLOAT32_TOLERANCE)
    for a, e in zip([x32.grad, w32.grad, b32.grad], [want[0][..., :48], want[1], want[2]]):
        scale = e.abs().max()
        assert (a.double() - e).abs().max() <= FLOAT32_TOLERANCE * scale * 10


def test_conv_does_not_depend_on_thread_count():
    wide, weight, b = conv_inputs(300, channels=32)
    results = []
    previous = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            rows, cf = causal_conv1d_silu_channels_last(wide[..., :32], weight, b, reverse=True)
            results.append((rows, *grads([rows, cf], [torch.ones_like(rows), torch.ones_like(cf)], [wide, weight, b])))
    finally:
        torch.set_num_threads(previous)
    for a, e in zip(*results):
        assert torch.equal(a, e)


def test_conv_rejects_bad_inputs():
    wide, weight, b = conv_inputs(5)
    with pytest.raises(ValueError, match=r"weight must be \(channels=14, K\), got shape \(7, 4\)"):
        causal_conv1d_silu_channels_last(wide, weight, None)
    with pytest.raises(ValueError, match="bias has dtype torch.float32, expected torch.float64"):
        causal_conv1d_silu_channels_last(wide[..., :7], weight, b.float())
    with pytest.raises(ValueError, match="x must be float32 or float64, got torch.int64"):
        causal_conv1d_silu_channels_last(torch.ones(1, 3, 7, dtype=torch.long), weight, b)


@pytest.mark.parametrize("length", [1, 2, 33, 70])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_merge_directions_matches_reference(length, scale):
    g = torch.Generator().manual_seed(length)
    y_fwd = torch.randn(2, 19, length, generator=g, dtype=torch.float64, requires_grad=True)
    y_bwd = torch.randn(2, 19, length, generator=g, dtype=torch.float64, requires_grad=True)
    got = merge_directions(y_fwd, y_bwd, scale)
    expected = torch.stack([(y_fwd[..., t] + y_bwd[..., length - 1 - t]) * scale for t in range(length)], dim=1)
    assert got.is_contiguous()
    assert torch.equal(got, expected)
    up = torch.randn(got.shape, generator=g, dtype=torch.float64)
    for a, e in zip(grads([got], [up], [y_fwd, y_bwd]), grads([expected], [up], [y_fwd, y_bwd])):
        assert torch.equal(a, e)


def test_merge_directions_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"must be \(batch, E, L\) of one shape, got \(1, 2, 3\) and \(1, 2, 4\)"):
        merge_directions(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4))


def _mixer_outputs_and_grads(bimamba, length, dtype):
    torch.manual_seed(3)
    m = MambaMixer(16, d_state=8, bimamba=bimamba, scan_backend="ref").to(dtype)
    with torch.no_grad():
        for p in m.parameters():  # distinct forward/backward parameters, non-trivial conv bias
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, length, 16, dtype=dtype, requires_grad=True)
    out = m(x)
    out.backward(torch.randn_like(out))
    return [out, x.grad, *(p.grad for p in m.parameters())]


@pytest.mark.parametrize("bimamba", ["none", "v1", "v2"])
@pytest.mark.parametrize("length", [1, 9])
def test_mixer_uses_fused_ops_and_matches_plain_pytorch(bimamba, length, monkeypatch):
    calls = []
    for name in ("causal_conv1d_silu_channels_last", "merge_directions"):
        original = getattr(fused_ops, name)
        monkeypatch.setattr(fused_ops, name, lambda *a, _f=original, _n=name, **k: calls.append(_n) or _f(*a, **k))
    fused = _mixer_outputs_and_grads(bimamba, length, torch.float64)
    assert "causal_conv1d_silu_channels_last" in calls
    assert ("merge_directions" in calls) == (bimamba != "none")
    mamba.set_fused_ops_enabled(False)
    try:
        calls.clear()
        plain = _mixer_outputs_and_grads(bimamba, length, torch.float64)
        assert calls == []
    finally:
        mamba.set_fused_ops_enabled(True)
    for a, e in zip(fused, plain):
        torch.testing.assert_close(a, e, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


def test_mixer_falls_back_for_unsupported_dtype(monkeypatch):
    monkeypatch.setattr(fused_ops, "causal_conv1d_silu_channels_last", lambda *a, **k: pytest.fail("fused op used for bfloat16"))
    m = MambaMixer(16, d_state=8, scan_backend="ref").to(torch.bfloat16)
    assert m(torch.randn(1, 5, 16, dtype=torch.bfloat16)).shape == (1, 5, 16)


def test_fused_ops_switch(fused_ops_disabled):
    assert not mamba.fused_ops_enabled()
