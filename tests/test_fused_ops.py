"""Fused CPU mixer path: the conv + SiLU op's values and gradients against a float64 reference
written here, and the channel-last fused mixer (conv op + channel-last scan with native reverse)
against the plain PyTorch mixer."""

from __future__ import annotations

import pytest
import torch

from ssamba.models import fused_ops, mamba
from ssamba.models.fused_ops import causal_conv1d_silu_channels_last
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
    """out[t] = silu(bias + sum_k w[:, k] * x[t - (K - 1) + k]) over (batch, L, E), by shifted sums;
    with reverse the same over the flipped sequence, flipped back to input time order."""
    if reverse:
        return reference_conv_silu(x.flip(1), weight, bias, False).flip(1)
    xs = x
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
    out = causal_conv1d_silu_channels_last(x, weight, b, reverse)
    expected = reference_conv_silu(x, weight, b, reverse)
    assert out.shape == expected.shape and out.is_contiguous()
    torch.testing.assert_close(out, expected, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)

    up = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    got = grads([out], [up], [wide, weight, b])
    want = grads([expected], [up], [wide, weight, b])
    for name, a, e in zip(["x", "weight", "bias"], got, want):
        torch.testing.assert_close(a, e, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE, msg=lambda m, name=name: f"grad {name}: {m}")
    assert got[0][..., 7:].abs().max() == 0  # the other half of the wide tensor is untouched


@pytest.mark.parametrize("taps", [1, 2, 3, 6])
@pytest.mark.parametrize("channels", [1, 17, 40])
@pytest.mark.parametrize("reverse", [False, True])
def test_conv_other_kernel_sizes_and_widths(taps, channels, reverse):
    wide, weight, b = conv_inputs(37, channels=channels, taps=taps, seed=taps)
    x = wide[..., :channels]
    out = causal_conv1d_silu_channels_last(x, weight, b, reverse=reverse)
    expected = reference_conv_silu(x, weight, b, reverse=reverse)
    torch.testing.assert_close(out, expected, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)
    up = torch.randn_like(out)
    got = grads([out], [up], [wide, weight, b])
    want = grads([expected], [up], [wide, weight, b])
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e, rtol=FLOAT64_TOLERANCE, atol=FLOAT64_TOLERANCE)


def test_conv_float32_close_to_float64_reference():
    wide, weight, b = conv_inputs(513, channels=48)
    x32, w32, b32 = (t.detach().float().requires_grad_() for t in (wide[..., :48], weight, b))
    rows = causal_conv1d_silu_channels_last(x32, w32, b32, reverse=True)
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
            rows = causal_conv1d_silu_channels_last(wide[..., :32], weight, b, reverse=True)
            results.append((rows, *grads([rows], [torch.ones_like(rows)], [wide, weight, b])))
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


def _mixer_outputs_and_grads(bimamba, length, dtype, scan_backend):
    torch.manual_seed(3)
    m = MambaMixer(16, d_state=8, bimamba=bimamba, scan_backend=scan_backend).to(dtype)
    with torch.no_grad():
        for p in m.parameters():  # distinct forward/backward parameters, non-trivial conv bias
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, length, 16, dtype=dtype, requires_grad=True)
    out = m(x)
    out.backward(torch.randn_like(out))
    return [out, x.grad, *(p.grad for p in m.parameters())]


@pytest.mark.parametrize("bimamba", ["none", "v1", "v2"])
@pytest.mark.parametrize("length", [1, 9, 70])
def test_channels_last_fused_mixer_matches_plain_pytorch(bimamba, length, monkeypatch):
    """With backend 'fused' the mixer runs the conv op and the channel-last scan (reverse for the
    backward direction, no flips); it must equal the plain mixer over the float64 'ref' scan."""
    calls = []
    for module, name in ((fused_ops, "causal_conv1d_silu_channels_last"), (mamba, "fused_selective_scan_channels_last")):
        original = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _f=original, _n=name, **k: calls.append((_n, k.get("reverse", a[3] if len(a) > 3 else False))) or _f(*a, **k))
    fused = _mixer_outputs_and_grads(bimamba, length, torch.float64, "fused")
    scans = [reverse for name, reverse in calls if name == "fused_selective_scan_channels_last"]
    assert scans == ([False] if bimamba == "none" else [False, True])
    assert sum(name == "causal_conv1d_silu_channels_last" for name, _ in calls) == (2 if bimamba == "v2" else 1)
    calls.clear()
    plain = _mixer_outputs_and_grads(bimamba, length, torch.float64, "ref")
    assert [name for name, _ in calls] == ["causal_conv1d_silu_channels_last"] * (2 if bimamba == "v2" else 1)
    for a, e in zip(fused, plain):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_disabled_fused_ops_run_plain_pytorch(fused_ops_disabled, monkeypatch):
    monkeypatch.setattr(fused_ops, "causal_conv1d_silu_channels_last", lambda *a, **k: pytest.fail("fused conv used while disabled"))
    monkeypatch.setattr(mamba, "fused_selective_scan_channels_last", lambda *a, **k: pytest.fail("channel-last scan used while disabled"))
    fused_off = _mixer_outputs_and_grads("v2", 9, torch.float64, "fused")
    mamba.set_fused_ops_enabled(True)
    monkeypatch.undo()
    fused_on = _mixer_outputs_and_grads("v2", 9, torch.float64, "fused")
    for a, e in zip(fused_off, fused_on):
        torch.testing.assert_close(a, e, rtol=1e-9, atol=1e-9)


def test_mixer_falls_back_for_unsupported_dtype(monkeypatch):
    monkeypatch.setattr(fused_ops, "causal_conv1d_silu_channels_last", lambda *a, **k: pytest.fail("fused op used for bfloat16"))
    m = MambaMixer(16, d_state=8, scan_backend="ref").to(torch.bfloat16)
    assert m(torch.randn(1, 5, 16, dtype=torch.bfloat16)).shape == (1, 5, 16)


def test_fused_ops_switch(fused_ops_disabled):
    assert not mamba.fused_ops_enabled()
