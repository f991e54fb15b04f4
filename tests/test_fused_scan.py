"""Fused C++ selective scan: output and all gradients against an independent float64 loop."""

from __future__ import annotations

import itertools
import platform
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssamba.models import fused_scan
from ssamba.models.fused_scan import (
    CHECKPOINT_INTERVAL,
    fused_kernel_isas,
    fused_selective_scan,
    fused_selective_scan_channels_last,
    fused_status,
    set_fused_kernel_isa,
)

FLOAT32_TOLERANCE = 1e-5
FLOAT64_TOLERANCE = 1e-10
INPUT_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
K = CHECKPOINT_INTERVAL


@pytest.fixture(scope="module", autouse=True)
def _fused_extension() -> None:
    """Build (first run, minutes) or load the extension once. Skipped only without a C++ compiler:
    with one, a failing build is a failure, not a silent skip of every kernel test."""
    reason = fused_status()
    if reason is not None and fused_scan._compiler_missing() is not None:
        pytest.skip(f"fused selective scan extension unavailable: {reason}")
    assert reason is None, f"the fused extension does not build although a compiler is present: {reason}"


def reference_scan(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False
):
    """Plain sequential loop (slices via unbind, so its autograd backward is linear in L)."""
    dt = delta if delta_bias is None else delta + delta_bias[:, None]
    if delta_softplus:
        dt = F.softplus(dt)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for dt_t, u_t, B_t, C_t in zip(
        dt.unbind(-1), u.unbind(-1), B.unbind(-1), C.unbind(-1)
    ):
        h = (
            torch.exp(dt_t[..., None] * A) * h
            + (dt_t * u_t)[..., None] * B_t[:, None, :]
        )
        ys.append((h * C_t[:, None, :]).sum(-1))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D[:, None] * u
    if z is not None:
        y = y * F.silu(z)
    return y


def make_inputs(
    batch: int = 2,
    dim: int = 4,
    n_state: int = 16,
    length: int = 67,
    *,
    with_D: bool = True,
    with_z: bool = True,
    with_bias: bool = True,
    softplus: bool = True,
    delta_scale: float = 1.0,
    seed: int = 0,
) -> dict:
    """Random float64 inputs in the ranges a Mamba layer produces (dt ~ 0.01 to 0.2)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    if softplus:
        delta = randn(batch, dim, length) * 0.5 - 2.5  # softplus -> about 0.03 to 0.3
    else:
        delta = (
            torch.rand(batch, dim, length, generator=g, dtype=torch.float64) * 0.2
            + 0.01
        )
    return {
        "u": randn(batch, dim, length),
        "delta": delta * delta_scale,
        "A": -(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 4 + 0.05),
        "B": randn(batch, n_state, length),
        "C": randn(batch, n_state, length),
        "D": randn(dim) if with_D else None,
        "z": randn(batch, dim, length) if with_z else None,
        "delta_bias": randn(dim) * 0.3 if with_bias else None,
        "delta_softplus": softplus,
    }


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return (
        (actual.double() - expected).abs().max()
        / expected.abs().max().clamp_min(1e-300)
    ).item()


def outputs_and_grads(fn, inputs: dict, dtype: torch.dtype, grad_out: torch.Tensor):
    """Run fn on leaf copies of inputs cast to dtype; return y and the gradient of every tensor."""
    leaves = {
        name: (
            value.detach().to(dtype).requires_grad_()
            if isinstance(value, torch.Tensor)
            else value
        )
        for name, value in inputs.items()
    }
    y = fn(**leaves)
    y.backward(grad_out.to(y.dtype))
    grads = {
        name: leaves[name].grad for name in INPUT_NAMES if leaves.get(name) is not None
    }
    return y.detach(), grads


def assert_matches_reference(
    inputs: dict,
    dtype: torch.dtype = torch.float32,
    tolerance=FLOAT32_TOLERANCE,
    fn=fused_selective_scan,
    reference=reference_scan,
):
    grad_out = torch.randn(
        inputs["u"].shape,
        generator=torch.Generator().manual_seed(1),
        dtype=torch.float64,
    )
    y_ref, grads_ref = outputs_and_grads(reference, inputs, torch.float64, grad_out)
    y, grads = outputs_and_grads(fn, inputs, dtype, grad_out)
    assert y.dtype == dtype and y.shape == y_ref.shape
    errors = {"y": relative_error(y, y_ref)}
    assert set(grads) == set(grads_ref)
    for name, expected in grads_ref.items():
        assert grads[name].shape == expected.shape, name
        assert grads[name].dtype == dtype, name
        errors[name] = relative_error(grads[name], expected)
    worst = max(errors, key=errors.get)
    assert errors[worst] <= tolerance, (
        f"{worst} relative error {errors[worst]:.2e} > {tolerance:.0e}: {errors}"
    )


def reference_channels_last(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, reverse=False):
    """The (batch, dim, L) reference on transposed inputs, run on the flipped sequence (and
    flipped back) when ``reverse``."""

    def scan_layout(t):
        if t is None:
            return None
        t = t.transpose(1, 2)
        return t.flip(-1) if reverse else t

    y = reference_scan(scan_layout(u), scan_layout(delta), A, scan_layout(B), scan_layout(C), D, scan_layout(z), delta_bias, delta_softplus)
    return (y.flip(-1) if reverse else y).transpose(1, 2)


def channels_last_inputs(inputs: dict, reverse: bool) -> dict:
    """make_inputs' tensors in the channel-last layout; u, z and B as strided slices of wider
    tensors, like the mixer's views of its projections."""
    out = dict(inputs, reverse=reverse)
    for name in ("u", "delta", "B", "C", "z"):
        if inputs[name] is not None:
            out[name] = inputs[name].transpose(1, 2).contiguous()
    for name in ("u", "z", "B"):
        if out[name] is not None:
            out[name] = torch.cat([out[name], torch.zeros_like(out[name])], dim=-1)[..., : out[name].shape[-1]]
    return out


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 17, K + 1, 2 * K + 3])
@pytest.mark.parametrize("dim", [16, 37])
def test_channels_last_matches_reference(reverse, length, dim):
    """The mixer's entry point: channel-last strided views, a partial last tile of channels
    (dim 37 = 2 x 16 + 5) and the time-reversed recurrence."""
    inputs = channels_last_inputs(make_inputs(dim=dim, length=length, seed=length + dim), reverse)
    assert not inputs["u"].is_contiguous() and inputs["u"].stride(-1) == 1
    assert_matches_reference(inputs, fn=fused_selective_scan_channels_last, reference=reference_channels_last)
    assert_matches_reference(inputs, torch.float64, FLOAT64_TOLERANCE, fused_selective_scan_channels_last, reference_channels_last)


# Every kernel build the source carries on x86-64 with GCC, widest first, with the CPU flags each needs
# (GCC's x86-64 micro-architecture levels; /proc/cpuinfo calls LZCNT "abm").
KERNEL_ISA_FLAGS = {
    "x86-64-v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl", "avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe"},
    "x86-64-v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe"},
    "baseline": set(),
}


def _cpu_flags() -> set[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    line = next((line for line in text.splitlines() if line.startswith("flags")), None)
    return set(line.split(":", 1)[1].split()) if line else None


def _expected_isas() -> list[str] | None:
    """The builds this CPU runs, from its flags (None off x86-64 Linux, where only ``baseline`` is built)."""
    flags = _cpu_flags()
    if platform.machine() not in ("x86_64", "AMD64") or flags is None:
        return None
    return [isa for isa, needed in KERNEL_ISA_FLAGS.items() if needed <= flags]


def test_every_isa_the_cpu_supports_is_built():
    """A CPU with AVX-512 must get (and the next test must check) the AVX-512 kernels, and so on."""
    expected = _expected_isas()
    assert fused_kernel_isas() == (expected if expected is not None else ["baseline"])


@pytest.fixture(params=list(KERNEL_ISA_FLAGS))
def kernel_isa(request):
    """Run a test once per kernel build; skipped (with the flags it lacks) only where this CPU cannot run it."""
    isa = request.param
    if isa not in fused_kernel_isas():
        expected = _expected_isas()
        assert expected is None or isa not in expected, f"this CPU supports {isa} but the extension has no {isa} kernels"
        missing = sorted(KERNEL_ISA_FLAGS[isa] - (_cpu_flags() or set()))
        pytest.skip(f"this CPU cannot run the {isa} kernels (lacks {', '.join(missing) or 'x86-64'})")
    default = fused_kernel_isas()[0]
    set_fused_kernel_isa(isa)
    yield isa
    set_fused_kernel_isa(default)


@pytest.mark.parametrize("reverse", [False, True])
def test_kernel_isa_matches_reference(kernel_isa, reverse):
    """Each instruction-set build: output and every gradient, float32 and float64, a partial tile of
    channels (dim 21), lengths across checkpoint blocks, the reversed recurrence."""
    inputs = channels_last_inputs(make_inputs(dim=21, length=2 * K + 3, seed=23), reverse)
    assert_matches_reference(inputs, fn=fused_selective_scan_channels_last, reference=reference_channels_last)
    assert_matches_reference(inputs, torch.float64, FLOAT64_TOLERANCE, fused_selective_scan_channels_last, reference_channels_last)
    assert_matches_reference(make_inputs(n_state=5, length=K + 2, seed=24))


def test_unknown_kernel_isa_is_rejected():
    with pytest.raises(RuntimeError, match=r"scan kernels for 'sse9' are not available on this CPU; available: .*baseline"):
        set_fused_kernel_isa("sse9")


@pytest.mark.parametrize("length", [1, 17, 67, 130, K - 1, K, K + 1, 2 * K + 3])
def test_lengths_around_checkpoint_interval(length):
    assert_matches_reference(make_inputs(length=length, seed=length))


@pytest.mark.parametrize(
    "with_D, with_z, with_bias, softplus",
    list(itertools.product([False, True], repeat=4)),
)
def test_optional_arguments(with_D, with_z, with_bias, softplus):
    inputs = make_inputs(
        length=K + 1,
        with_D=with_D,
        with_z=with_z,
        with_bias=with_bias,
        softplus=softplus,
        seed=3,
    )
    assert_matches_reference(inputs)


@pytest.mark.parametrize("n_state", [1, 5, 24])
def test_state_sizes_without_specialised_kernel(n_state):
    assert_matches_reference(
        make_inputs(n_state=n_state, length=2 * K + 3, seed=n_state)
    )


def test_large_decay_stress(kernel_isa):
    """dt up to 4.2 with A down to -16: decays exp(dt A) down to e^-67, per kernel build."""
    inputs = make_inputs(length=130, softplus=False, delta_scale=20.0, seed=7)
    inputs["A"] = -torch.arange(1, 17, dtype=torch.float64).repeat(
        inputs["A"].shape[0], 1
    )
    assert_matches_reference(inputs)


def test_long_sequence():
    assert_matches_reference(make_inputs(batch=1, dim=2, length=2000, seed=11))


@pytest.mark.parametrize("n_state", [16, 5])
@pytest.mark.parametrize("length", [1, 2 * K + 3])
def test_float64_is_exact(n_state, length):
    inputs = make_inputs(n_state=n_state, length=length, seed=5)
    assert_matches_reference(inputs, dtype=torch.float64, tolerance=FLOAT64_TOLERANCE)
    inputs = make_inputs(
        n_state=n_state, length=length, softplus=False, delta_scale=20.0, seed=6
    )
    assert_matches_reference(inputs, dtype=torch.float64, tolerance=FLOAT64_TOLERANCE)


def test_non_contiguous_inputs():
    batch, dim, n_state, length = 2, 3, 16, 70
    inputs = make_inputs(batch, dim, n_state, length, seed=9)
    strided = {
        # stored with other memory layouts or as strided slices, same values
        "u": inputs["u"].transpose(1, 2).contiguous().transpose(1, 2),
        "delta": torch.stack([inputs["delta"], inputs["delta"]], dim=-1)[..., 0],
        "A": inputs["A"].t().contiguous().t(),
        "B": inputs["B"].transpose(1, 2).contiguous().transpose(1, 2),
        "C": torch.cat([inputs["C"], inputs["C"]], dim=-1)[..., :length],
        "D": torch.stack([inputs["D"], inputs["D"]], dim=1)[:, 1],
        "z": inputs["z"].permute(2, 0, 1).contiguous().permute(1, 2, 0),
        "delta_bias": torch.stack([inputs["delta_bias"]] * 3, dim=1)[:, 2],
    }
    for name, tensor in strided.items():
        assert not tensor.is_contiguous() and torch.equal(tensor, inputs[name]), name
    inputs.update(strided)
    assert_matches_reference(inputs)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(dtype):
    inputs = make_inputs(length=K + 5, seed=12)
    tensors = {
        k: v.to(dtype).requires_grad_()
        for k, v in inputs.items()
        if isinstance(v, torch.Tensor)
    }
    y = fused_selective_scan(**tensors, delta_softplus=True)
    assert y.dtype == dtype
    upcast = {k: v.detach().float() for k, v in tensors.items()}
    expected = fused_selective_scan(**upcast, delta_softplus=True).to(dtype)
    assert torch.equal(y, expected)
    y.float().sum().backward()
    assert all(t.grad is not None and t.grad.dtype == dtype for t in tensors.values())


def test_no_grad_forward_matches_training_forward():
    inputs = make_inputs(length=2 * K + 3, seed=13)
    tensors = {
        k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()
    }
    with torch.no_grad():
        y_inference = fused_selective_scan(**tensors)
    u = tensors.pop("u").requires_grad_()
    assert torch.equal(fused_selective_scan(u, **tensors).detach(), y_inference)


def test_result_does_not_depend_on_thread_count():
    inputs = make_inputs(batch=3, dim=5, length=K + 9, seed=14)
    grad_out = torch.randn(inputs["u"].shape, dtype=torch.float64)
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        y_one, grads_one = outputs_and_grads(
            fused_selective_scan, inputs, torch.float32, grad_out
        )
        torch.set_num_threads(2)
        y_two, grads_two = outputs_and_grads(
            fused_selective_scan, inputs, torch.float32, grad_out
        )
    finally:
        torch.set_num_threads(previous)
    assert torch.equal(y_one, y_two)
    for name in grads_one:
        # dB/dC partial sums may be added in another order; everything else is identical
        torch.testing.assert_close(
            grads_two[name], grads_one[name], rtol=1e-6, atol=1e-6
        )


def test_only_some_inputs_require_grad():
    inputs = make_inputs(length=K + 2, seed=15)
    tensors = {
        k: (v.float() if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()
    }
    tensors["B"].requires_grad_()
    fused_selective_scan(**tensors).sum().backward()
    assert tensors["B"].grad is not None and tensors["u"].grad is None


def test_rejects_mismatched_shapes():
    inputs = make_inputs(length=10, seed=16)
    inputs["B"] = inputs["B"][:, :, :9]
    with pytest.raises(
        ValueError,
        match=r"B must have shape \(batch, N, L\) = \(2, 16, 10\), got \(2, 16, 9\)",
    ):
        fused_selective_scan(**inputs)


def test_rejects_integer_inputs():
    inputs = make_inputs(length=10, seed=17)
    inputs["u"] = torch.ones(inputs["u"].shape, dtype=torch.int64)
    with pytest.raises(TypeError, match="u must be a floating tensor, got torch.int64"):
        fused_selective_scan(**inputs)


@pytest.fixture
def fresh_loader(monkeypatch, tmp_path):
    """Forget the loaded extension for one test and build into a temporary cache directory."""
    monkeypatch.setattr(fused_scan, "_attempted", False)
    monkeypatch.setattr(fused_scan, "_extension", None)
    monkeypatch.setattr(fused_scan, "_status", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    return tmp_path


def test_status_reports_missing_compiler(fresh_loader, monkeypatch):
    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    assert fused_status() == "no C++ compiler (no-such-c++-compiler) found"
    with pytest.raises(RuntimeError, match=r"unavailable: no C\+\+ compiler"):
        fused_selective_scan(**make_inputs(length=4))


def test_status_reports_build_error(fresh_loader, monkeypatch):
    broken = fresh_loader / "broken_scan.cpp"
    broken.write_text("int main() { return undeclared_name; }\n")
    monkeypatch.setattr(fused_scan, "_SOURCE", broken)
    monkeypatch.setattr(fused_scan, "_EXTRA_SOURCES", ())  # else ninja finishes compiling them first (minutes)
    monkeypatch.setattr(
        fused_scan, "_EXTENSION_NAME", "ssamba_fused_scan_broken_source"
    )
    reason = fused_status()
    assert reason.startswith("building the fused scan extension failed:")
    assert "undeclared_name" in reason
