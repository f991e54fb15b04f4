"""Selective-scan backends against a float64 reference, and backend dispatch."""

from __future__ import annotations

import math
import sys
import types
import warnings

import pytest
import torch

from ssamba.models import scan
from ssamba.models.scan import (
    BACKENDS,
    backend_status,
    default_backend,
    resolve_backend,
    selective_scan,
)

CPU = torch.device("cpu")
REL_TOL_FP32 = 1e-5
REL_TOL_FP64 = 1e-10
TYPICAL_DELTA = 0.05
STRESS_DELTA_FACTOR = 20.0
ARG_NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(batch: int, dim: int, n_state: int, length: int, *, seed: int = 0, delta_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """Random float64 scan inputs; delta is pre-softplus-like around TYPICAL_DELTA * delta_scale."""
    g = torch.Generator().manual_seed(seed)
    s4d_real = torch.arange(1, n_state + 1, dtype=torch.float64)
    return {
        "u": torch.randn(batch, dim, length, generator=g, dtype=torch.float64),
        "delta": TYPICAL_DELTA * delta_scale * torch.rand(batch, dim, length, generator=g, dtype=torch.float64) * 2,
        "A": -s4d_real * (0.5 + torch.rand(dim, 1, generator=g, dtype=torch.float64)),
        "B": torch.randn(batch, n_state, length, generator=g, dtype=torch.float64),
        "C": torch.randn(batch, n_state, length, generator=g, dtype=torch.float64),
        "D": torch.randn(dim, generator=g, dtype=torch.float64),
        "z": torch.randn(batch, dim, length, generator=g, dtype=torch.float64),
        "delta_bias": 0.1 * torch.randn(dim, generator=g, dtype=torch.float64),
    }


def run_scan(inputs: dict[str, torch.Tensor], backend: str, dtype: torch.dtype, *, use: tuple[str, ...], softplus: bool) -> dict[str, torch.Tensor]:
    """Output and gradients (of a fixed random cotangent) in float64, keyed 'y' and argument names."""
    leaves = {k: v.detach().to(dtype).requires_grad_() for k, v in inputs.items() if k in ("u", "delta", "A", "B", "C") or k in use}
    y = selective_scan(
        leaves["u"], leaves["delta"], leaves["A"], leaves["B"], leaves["C"],
        D=leaves.get("D"), z=leaves.get("z"), delta_bias=leaves.get("delta_bias"),
        delta_softplus=softplus, backend=backend,
    )
    assert y.dtype == dtype and y.shape == inputs["u"].shape
    cotangent = torch.randn(y.shape, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    y.backward(cotangent.to(dtype))
    out = {"y": y.detach().double()}
    out.update({k: v.grad.double() for k, v in leaves.items()})
    return out


def assert_close_rel(result: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], tol: float) -> None:
    """max |result - expected| / max |expected| <= tol for the output and every gradient."""
    assert result.keys() == expected.keys()
    for key, ref in expected.items():
        scale = ref.abs().max().item()
        err = (result[key] - ref).abs().max().item()
        assert err <= tol * max(scale, 1e-30), f"{key}: max abs err {err:.3e} vs max abs ref {scale:.3e}"


def naive_scan(inputs: dict[str, torch.Tensor], softplus: bool) -> torch.Tensor:
    """Scalar python loops over every index, float64, straight from the definition."""
    u, delta, A, B, C, D, z, bias = (inputs[k].tolist() for k in ARG_NAMES)
    batch, dim, length, n_state = len(u), len(u[0]), len(u[0][0]), len(A[0])
    y = [[[0.0] * length for _ in range(dim)] for _ in range(batch)]
    for b in range(batch):
        for d in range(dim):
            h = [0.0] * n_state
            for t in range(length):
                dt = delta[b][d][t] + bias[d]
                if softplus:
                    dt = math.log1p(math.exp(dt))
                out = 0.0
                for n in range(n_state):
                    h[n] = math.exp(dt * A[d][n]) * h[n] + dt * B[b][n][t] * u[b][d][t]
                    out += C[b][n][t] * h[n]
                out += D[d] * u[b][d][t]
                zt = z[b][d][t]
                y[b][d][t] = out * zt / (1.0 + math.exp(-zt))
    return torch.tensor(y, dtype=torch.float64)


@pytest.fixture(autouse=True)
def _clean_backend_state(monkeypatch: pytest.MonkeyPatch):
    """Each test sees no SSAMBA_SCAN and freshly probed optional backends."""
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    scan._load_fused.cache_clear()
    scan._load_cuda_scan.cache_clear()
    scan._load_triton_scan.cache_clear()
    monkeypatch.setattr(scan, "_warned_fallbacks", set())
    yield
    scan._load_fused.cache_clear()
    scan._load_cuda_scan.cache_clear()
    scan._load_triton_scan.cache_clear()


# ----------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("softplus", [False, True])
def test_ref_matches_naive_loop(softplus: bool) -> None:
    inputs = make_inputs(2, 3, 2, 5, seed=1)
    expected = naive_scan(inputs, softplus)
    y = selective_scan(*(inputs[k] for k in ARG_NAMES[:5]), D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=softplus, backend="ref")
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)


def fast_cpu_backends() -> list:
    params = [pytest.param("chunked", id="chunked")]
    reason = backend_status()["fused"]
    params.append(pytest.param("fused", id="fused", marks=pytest.mark.skipif(reason is not None, reason=f"fused: {reason}")))
    return params


CASES = [
    # (length, optional args used, softplus)
    (1, ("D", "z", "delta_bias"), True),
    (16, (), False),
    (17, ("D", "z", "delta_bias"), True),
    (67, ("D",), False),
    (67, ("z", "delta_bias"), True),
]


@pytest.mark.parametrize("backend", fast_cpu_backends())
@pytest.mark.parametrize(("length", "use", "softplus"), CASES)
def test_fp32_backend_matches_fp64_ref(backend: str, length: int, use: tuple[str, ...], softplus: bool) -> None:
    inputs = make_inputs(2, 12, 8, length, seed=length)
    expected = run_scan(inputs, "ref", torch.float64, use=use, softplus=softplus)
    result = run_scan(inputs, backend, torch.float32, use=use, softplus=softplus)
    assert_close_rel(result, expected, REL_TOL_FP32)


@pytest.mark.parametrize("backend", fast_cpu_backends())
def test_large_decay_stress(backend: str) -> None:
    """delta ~20x typical with A = -(1..16): decays down to exp(-32) per step."""
    inputs = make_inputs(2, 8, 16, 67, seed=7, delta_scale=STRESS_DELTA_FACTOR)
    inputs["A"] = -torch.arange(1, 17, dtype=torch.float64).repeat(8, 1)
    use = ("D", "z", "delta_bias")
    expected = run_scan(inputs, "ref", torch.float64, use=use, softplus=False)
    result = run_scan(inputs, backend, torch.float32, use=use, softplus=False)
    assert_close_rel(result, expected, REL_TOL_FP32)


@pytest.mark.parametrize("length", [1, 33, 67])
def test_chunked_fp64_is_exact(length: int) -> None:
    """In float64 the chunked backward agrees with autograd through the reference to ~1e-10."""
    inputs = make_inputs(2, 6, 4, length, seed=3)
    use = ("D", "z", "delta_bias")
    expected = run_scan(inputs, "ref", torch.float64, use=use, softplus=True)
    result = run_scan(inputs, "chunked", torch.float64, use=use, softplus=True)
    assert_close_rel(result, expected, REL_TOL_FP64)


def test_low_precision_inputs_compute_in_fp32() -> None:
    """bfloat16 u/delta: the result is bfloat16, computed in float32 (only the output is rounded)."""
    inputs = make_inputs(1, 4, 4, 20, seed=5)
    u16, delta16 = inputs["u"].to(torch.bfloat16), inputs["delta"].to(torch.bfloat16)
    rest = [inputs[k] for k in ("A", "B", "C")]
    y = selective_scan(u16, delta16, *(t.float() for t in rest), D=inputs["D"].float(), backend="chunked")
    assert y.dtype == torch.bfloat16
    expected = selective_scan(u16.double(), delta16.double(), *rest, D=inputs["D"], backend="ref")
    torch.testing.assert_close(y.double(), expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())


@pytest.mark.slow
def test_compiled_matches_ref() -> None:
    """Outputs AND gradients: torch 2.13 Inductor-CPU miscompiles a per-step-contraction chunk.

    The shape (batch 2, dim 32, N 16) is one where that miscompile shows (wrong y, right grads).
    """
    reason = backend_status()["compiled"]
    if reason is not None:
        pytest.skip(f"compiled backend unavailable: {reason}")
    use = ("D", "z", "delta_bias")
    for delta_scale in (1.0, STRESS_DELTA_FACTOR):  # same shape: compiled once
        inputs = make_inputs(2, 32, 16, 37, seed=11, delta_scale=delta_scale)
        expected = run_scan(inputs, "ref", torch.float64, use=use, softplus=True)
        result = run_scan(inputs, "compiled", torch.float32, use=use, softplus=True)
        assert_close_rel(result, expected, REL_TOL_FP32)


def test_shape_errors_name_the_argument() -> None:
    inputs = make_inputs(2, 4, 3, 10)
    with pytest.raises(ValueError, match=r"B must have shape \(2, 3, 10\), got \(2, 3, 9\)"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"][..., :9], inputs["C"], backend="ref")
    with pytest.raises(ValueError, match=r"A must have shape \(dim, N\) with dim=4"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"][:3], inputs["B"], inputs["C"], backend="ref")
    with pytest.raises(ValueError, match=r"delta_bias must have shape \(4,\)"):
        selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"], delta_bias=inputs["D"][:2], backend="ref")
    with pytest.raises(ValueError, match="sequence length L .* must be at least 1"):
        selective_scan(*(inputs[k][..., :0] if inputs[k].dim() == 3 else inputs[k] for k in ARG_NAMES[:5]), backend="ref")


# ----------------------------------------------------------------------------- dispatch


def install_fake_module(monkeypatch: pytest.MonkeyPatch, name: str, **attrs) -> None:
    """Register a fake module (and its parent packages) in sys.modules for this test."""
    parts = name.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    module = types.ModuleType(name)
    for key, value in attrs.items():
        setattr(module, key, value)
    monkeypatch.setitem(sys.modules, name, module)


def hide_module(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Make `import name` raise ImportError for this test."""
    monkeypatch.setitem(sys.modules, name, None)


def test_backends_tuple() -> None:
    assert BACKENDS == ("ref", "chunked", "compiled", "fused", "cuda", "triton")
    assert set(backend_status()) == set(BACKENDS)
    assert backend_status()["ref"] is None and backend_status()["chunked"] is None


@pytest.mark.parametrize("name", ["ref", "chunked"])
def test_env_var_and_explicit_name_dispatch(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    calls: list[str] = []
    real = scan._IMPLEMENTATIONS[name]

    def spy(*args):
        calls.append(name)
        return real(*args)

    monkeypatch.setitem(scan._IMPLEMENTATIONS, name, spy)
    inputs = make_inputs(1, 2, 2, 3)
    args = [inputs[k] for k in ARG_NAMES[:5]]
    monkeypatch.setenv(scan.ENV_VAR, name)
    assert resolve_backend(None, CPU) == name
    selective_scan(*args)
    assert calls == [name]
    other = "chunked" if name == "ref" else "ref"
    assert resolve_backend(other, CPU) == other  # the argument wins over the environment
    selective_scan(*args, backend=name)
    assert calls == [name, name]


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match=r"unknown selective-scan backend 'fast' \(from backend argument\); expected one of ref, chunked, compiled, fused, cuda, triton"):
        resolve_backend("fast", CPU)


def test_unknown_backend_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(scan.ENV_VAR, "fast")
    with pytest.raises(ValueError, match=r"unknown selective-scan backend 'fast' \(from \$SSAMBA_SCAN\)"):
        selective_scan(*(make_inputs(1, 2, 2, 3)[k] for k in ARG_NAMES[:5]))


def test_cuda_missing_mamba_ssm(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, scan._CUDA_MODULE)
    hide_module(monkeypatch, scan._TRITON_MODULE)
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is unavailable: mamba_ssm is not importable .*pip install 'ssamba\[cuda\]'"):
        resolve_backend("cuda", torch.device("cuda"))
    assert "ssamba[cuda]" in backend_status()["cuda"]
    with pytest.warns(RuntimeWarning, match="using the slow 'chunked' backend on CUDA"):
        assert default_backend(torch.device("cuda")) == "chunked"


def test_cuda_backend_with_mamba_ssm(monkeypatch: pytest.MonkeyPatch) -> None:
    """With mamba_ssm importable: auto-chosen for CUDA tensors, refused for CPU tensors, args passed through."""
    received: dict = {}

    def fake_selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, return_last_state=False):
        received.update(D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus, return_last_state=return_last_state)
        return scan._IMPLEMENTATIONS["ref"](u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    install_fake_module(monkeypatch, scan._CUDA_MODULE, selective_scan_fn=fake_selective_scan_fn)
    assert default_backend(torch.device("cuda")) == "cuda"
    assert resolve_backend("cuda", torch.device("cuda", 0)) == "cuda"
    with pytest.raises(RuntimeError, match=r"backend 'cuda' needs CUDA tensors, got tensors on cpu"):
        resolve_backend("cuda", CPU)

    inputs = make_inputs(1, 3, 2, 4)
    args = [inputs[k] for k in ARG_NAMES[:5]]
    y = scan._IMPLEMENTATIONS["cuda"](*args, inputs["D"], inputs["z"], inputs["delta_bias"], True)
    assert received["D"] is inputs["D"] and received["z"] is inputs["z"] and received["delta_bias"] is inputs["delta_bias"]
    assert received["delta_softplus"] is True and received["return_last_state"] is False
    torch.testing.assert_close(y, selective_scan(*args, D=inputs["D"], z=inputs["z"], delta_bias=inputs["delta_bias"], delta_softplus=True, backend="ref"))


def test_fused_missing_falls_back_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, scan._FUSED_MODULE)
    with pytest.warns(RuntimeWarning, match=r"fused CPU kernel unavailable .*; using 'chunked'"):
        assert default_backend(CPU) == "chunked"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend(None, CPU) == "chunked"  # warned once per process only
    with pytest.raises(RuntimeError, match=r"backend 'fused' is unavailable: ssamba.models.fused_scan cannot be imported"):
        resolve_backend("fused", CPU)
    assert backend_status()["fused"].startswith("ssamba.models.fused_scan cannot be imported")


def test_fused_status_reason_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    install_fake_module(monkeypatch, scan._FUSED_MODULE, fused_status=lambda: "no C++ compiler", fused_selective_scan=None)
    assert backend_status()["fused"] == "no C++ compiler"
    with pytest.raises(RuntimeError, match=r"backend 'fused' is unavailable: no C\+\+ compiler"):
        resolve_backend("fused", CPU)


def test_fused_is_the_cpu_default_when_usable(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bool] = []

    def fake_fused(u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        calls.append(delta_softplus)
        return scan._IMPLEMENTATIONS["ref"](u, delta, A, B, C, D, z, delta_bias, delta_softplus)

    install_fake_module(monkeypatch, scan._FUSED_MODULE, fused_status=lambda: None, fused_selective_scan=fake_fused)
    assert default_backend(CPU) == "fused"
    inputs = make_inputs(1, 2, 2, 3)
    selective_scan(*(inputs[k] for k in ARG_NAMES[:5]), delta_softplus=True)
    assert calls == [True]
    with pytest.raises(RuntimeError, match="runs on CPU tensors only"):
        resolve_backend("fused", torch.device("cuda"))


def test_compiled_is_opt_in_only(monkeypatch: pytest.MonkeyPatch) -> None:
    hide_module(monkeypatch, scan._FUSED_MODULE)
    hide_module(monkeypatch, scan._CUDA_MODULE)
    hide_module(monkeypatch, scan._TRITON_MODULE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert default_backend(CPU) == "chunked"
        assert default_backend(torch.device("cuda")) == "chunked"


def test_compiled_without_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scan.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "no C++ compiler found" in backend_status()["compiled"]
    with pytest.raises(RuntimeError, match=r"backend 'compiled' is unavailable: no C\+\+ compiler found"):
        resolve_backend("compiled", CPU)
