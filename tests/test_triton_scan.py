"""The ``triton`` selective-scan backend against the float64 reference, and its dispatch.

Without a GPU the kernels run through Triton's interpreter. Triton fixes interpreter or compiled
mode when it is first imported, so the tests marked ``interpreter`` run in a child pytest process
started with ``TRITON_INTERPRET=1`` (``test_interpreter_tests_in_subprocess``); the variable never
reaches this process or other test files. Run them directly with
``TRITON_INTERPRET=1 python -m pytest tests/test_triton_scan.py -m interpreter``.
Shapes are small and the tiles are shrunk
(``chunk=8, block_d=4``) so that every case still spans several chunks, a partial last chunk,
two channel blocks (dim 5) and a padded state block (N = 3), yet the interpreter stays fast.

Tolerances (max |error| / max |reference| over each output and gradient):

* float64 inputs: the kernels compute in float64: ``1e-10``.
* float32: state and every sum in float32; errors grow with the number of accumulated terms
  (a few x L x 2^-24, L <= 19 here) far below ``1e-5``, the tolerance of the other backends' tests.
* bfloat16 / float16 inputs (A, D, bias float32 as the mixer passes them): compared with the float64
  reference on the same rounded inputs, so only the kernel's own error counts: float32
  accumulation (L x 2^-24 ~ 1e-6, negligible) plus one conversion of each result or gradient to
  the input dtype. On a GPU that rounds to nearest (half an ulp: at most eps/2 of the value, so of
  the maximum); Triton's interpreter converts float32 to bfloat16 by truncation (up to one ulp:
  eps). Bounds used: 1.5 eps for bfloat16 (eps = 2^-7) and eps for float16 (2^-10, rounded to
  nearest by the interpreter too), at least 1.5x margin over the worst case.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ssamba.models import scan
from ssamba.models.scan import default_backend, explain_default_backend, resolve_backend, selective_scan

triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton; it is in the dev extra)")

from ssamba.models import triton_scan  # noqa: E402  (after the importorskip)
from ssamba.models.triton_scan import triton_selective_scan, triton_selective_scan_channels_last  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
TILE = {"chunk": 8, "block_d": 4}
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1.5 * 2.0**-7, torch.float16: 2.0**-10}
GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (torch sees none)")
INTERPRETER_ACTIVE = triton_scan.kernels_interpreted()
SUBPROCESS_TIMEOUT_S = 900


def interpreter_test(fn):
    """Runs here when this process imported triton with TRITON_INTERPRET=1, else in the subprocess."""
    skip = pytest.mark.skipif(not INTERPRETER_ACTIVE, reason="runs in the TRITON_INTERPRET=1 child of test_interpreter_tests_in_subprocess")
    return pytest.mark.interpreter(skip(pytest.mark.usefixtures("fast_interpreter_scan")(fn)))


@pytest.fixture(scope="module")
def fast_interpreter_scan():
    """Triton's interpreter runs ``tl.associative_scan`` with a Python call per element; combine
    whole slices along the scan axis instead (the same left fold per lane, ~100x faster here)."""
    from triton.runtime import interpreter

    def sliced_scan(self, inputs):
        data = [np.moveaxis(arg.handle.data, self.axis, 0) for arg in inputs]
        outputs = [np.empty_like(d) for d in data]
        for out, d in zip(outputs, data):
            out[0] = d[0]
        for step in range(1, data[0].shape[0]):
            acc = [self.to_tensor(out[step - 1], arg.dtype) for out, arg in zip(outputs, inputs)]
            new = [self.to_tensor(d[step], arg.dtype) for d, arg in zip(data, inputs)]
            result = self.combine_fn.fn(*acc, *new)
            result = result if isinstance(result, tuple) else (result,)
            for out, value in zip(outputs, result):
                out[step] = value.handle.data
        return [self.to_tensor(np.moveaxis(out, 0, self.axis), arg.dtype) for out, arg in zip(outputs, inputs)]

    original = interpreter.ScanOps.generic_scan
    interpreter.ScanOps.generic_scan = sliced_scan
    yield
    interpreter.ScanOps.generic_scan = original


@pytest.fixture(autouse=True)
def _clean_backend_state(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv(scan.ENV_VAR, raising=False)
    for loader in (scan._load_fused, scan._load_cuda_scan, scan._load_triton_scan):
        loader.cache_clear()
    monkeypatch.setattr(scan, "_warned_fallbacks", set())
    yield
    for loader in (scan._load_fused, scan._load_cuda_scan, scan._load_triton_scan):
        loader.cache_clear()


def make_inputs(batch: int = 2, dim: int = 5, n_state: int = 3, length: int = 19, *, seed: int = 0,
                delta_scale: float = 1.0) -> dict[str, torch.Tensor]:
    """float64 inputs in mamba_ssm's layout, in the ranges a Mamba layer produces (softplus'd dt ~0.03-0.3)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    return {
        "u": randn(batch, dim, length),
        "delta": (randn(batch, dim, length) * 0.5 - 2.5) * delta_scale,
        "A": -(torch.rand(dim, n_state, generator=g, dtype=torch.float64) * 4 + 0.05),
        "B": randn(batch, n_state, length),
        "C": randn(batch, n_state, length),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim) * 0.3,
    }


def reference(inputs: dict[str, torch.Tensor | None], softplus: bool, reverse: bool) -> torch.Tensor:
    """The ``ref`` backend in mamba_ssm's layout; ``reverse`` = run on the flipped sequence, flip back."""

    per_step = ("u", "delta", "B", "C", "z")
    args = {k: (v.flip(-1) if reverse and v is not None and k in per_step else v) for k, v in inputs.items()}
    y = selective_scan(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], args["z"], args["delta_bias"],
                       delta_softplus=softplus, backend="ref")
    return y.flip(-1) if reverse else y


def grads_of(fn, inputs: dict[str, torch.Tensor | None], dtypes: dict[str, torch.dtype], cotangent: torch.Tensor):
    """Output and gradient of every given tensor, cast to float64, for leaves of the given dtypes."""
    leaves = {k: None if v is None else v.detach().to(dtypes[k]).requires_grad_() for k, v in inputs.items()}
    y = fn(leaves)
    y.backward(cotangent.to(y.dtype))
    out = {"y": y.detach()}
    out.update({k: v.grad for k, v in leaves.items() if v is not None})
    return out


def check_against_reference(inputs, *, softplus=True, reverse=False, channels_last=False, dtype=torch.float32,
                            strided=False) -> dict[str, float]:
    """Run the triton kernels (interpreter) and the float64 reference on the same (rounded) values;
    assert every output and gradient within TOLERANCE[dtype]; return the errors."""
    low = {"u", "delta", "B", "C", "z"}  # what the mixer hands over in the autocast dtype
    dtypes = {k: (dtype if k in low or dtype == torch.float64 else torch.float32) for k in inputs}
    rounded = {k: None if v is None else v.to(dtypes[k]).double() for k, v in inputs.items()}
    cotangent = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    cotangent = cotangent.to(dtype).double()

    def run_triton(leaves):
        if not channels_last:
            return triton_selective_scan(*(leaves[k] for k in NAMES), softplus, reverse, **TILE)
        views = {}
        for k, v in leaves.items():
            if v is not None and v.dim() == 3:
                v = v.transpose(1, 2)  # (batch, L, channels) views, channels with stride L
                if strided:  # a slice of a wider channel-last tensor, like the mixer's projections
                    wide = torch.cat([v, torch.zeros_like(v)], dim=-1)
                    v = wide[..., : v.shape[-1]]
            views[k] = v
        y = triton_selective_scan_channels_last(*(views[k] for k in NAMES), softplus, reverse, **TILE)
        assert y.shape == views["u"].shape
        return y.transpose(1, 2)

    expected = grads_of(lambda leaves: reference(leaves, softplus, reverse), rounded, {k: torch.float64 for k in inputs},
                        cotangent)
    result = grads_of(run_triton, rounded, dtypes, cotangent)
    assert result["y"].dtype == dtype
    errors = {}
    for key, ref in expected.items():
        got = result[key]
        assert got.shape == ref.shape, key
        assert got.dtype == (dtype if key == "y" else dtypes[key]), key
        errors[key] = ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()
    worst = max(errors, key=errors.get)
    assert errors[worst] <= TOLERANCE[dtype], f"{worst}: relative error {errors[worst]:.2e} > {TOLERANCE[dtype]:.1e}; {errors}"
    return errors


# ----------------------------------------------------------------------------- numerics (interpreter)


@interpreter_test
@pytest.mark.parametrize("length", [1, 19])
def test_matches_reference_fp32(length: int) -> None:
    """One step, and 2 chunks + a partial one (8 + 8 + 3)."""
    check_against_reference(make_inputs(length=length, seed=length))


@interpreter_test
def test_without_optional_inputs_and_softplus() -> None:
    inputs = make_inputs(seed=3)
    inputs.update(D=None, z=None, delta_bias=None)
    inputs["delta"] = inputs["delta"].abs() * 0.05  # already positive: used as dt without softplus
    check_against_reference(inputs, softplus=False)


@interpreter_test
def test_reverse_channels_last_strided_views() -> None:
    """The mixer's call: channel-last slices of wider tensors (read in place through their
    strides) and the time-reversed recurrence. Reverse in mamba_ssm's layout: test_large_decays."""
    check_against_reference(make_inputs(length=17, seed=9), reverse=True, channels_last=True, strided=True)


@interpreter_test
def test_large_decays() -> None:
    """dt up to ~2.5 with A down to -4: per-step decays to exp(-10), chunk decays underflow to 0."""
    inputs = make_inputs(length=19, seed=11)
    inputs["delta"] = torch.rand(inputs["delta"].shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2.5
    inputs["A"] = -torch.linspace(0.5, 4.0, 3, dtype=torch.float64).repeat(5, 1)
    check_against_reference(inputs, softplus=False, reverse=True)


@interpreter_test
def test_float64_is_exact() -> None:
    check_against_reference(make_inputs(length=19, seed=13), dtype=torch.float64, channels_last=True, reverse=True)


@interpreter_test
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs(dtype: torch.dtype) -> None:
    """Low-precision u, delta, B, C, z (fp32 A, D, bias); fp32 state; results in the input dtypes."""
    errors = check_against_reference(make_inputs(length=19, seed=17), dtype=dtype, channels_last=True)
    assert max(errors.values()) > 1e-6  # the comparison really saw rounded results


@interpreter_test
def test_selective_scan_backend_on_cpu_tensors() -> None:
    """Through the dispatcher: ``backend='triton'`` takes CPU float32 and float64 tensors with TRITON_INTERPRET=1."""
    inputs = make_inputs(batch=1, dim=3, n_state=2, length=21, seed=19)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-10)):
        args = [inputs[k].to(dtype) for k in NAMES]
        y = selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True, backend="triton")
        expected = reference(inputs, True, False)
        assert y.dtype == dtype
        assert (y.double() - expected).abs().max() <= tol * expected.abs().max()


@interpreter_test
def test_mixer_with_triton_backend_matches_chunked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bidirectional (v2) mixer: the triton channel-last path with native reverse against 'chunked'."""
    from ssamba.models.mamba import MambaMixer

    monkeypatch.setattr(triton_scan, "CHUNK", TILE["chunk"])
    monkeypatch.setattr(triton_scan, "BLOCK_D", TILE["block_d"])
    torch.manual_seed(0)
    mixer = MambaMixer(d_model=4, d_state=3, bimamba="v2").double()
    hidden = torch.randn(2, 9, 4, dtype=torch.float64)
    results = []
    for backend in ("triton", "chunked"):
        mixer.scan_backend = backend
        mixer.zero_grad()
        x = hidden.clone().requires_grad_()
        out = mixer(x)
        out.square().sum().backward()
        results.append((out.detach(), x.grad, [p.grad.clone() for p in mixer.parameters()]))
    (out_t, dx_t, grads_t), (out_c, dx_c, grads_c) = results
    torch.testing.assert_close(out_t, out_c, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(dx_t, dx_c, rtol=1e-10, atol=1e-12)
    for grad_t, grad_c in zip(grads_t, grads_c):
        torch.testing.assert_close(grad_t, grad_c, rtol=1e-10, atol=1e-12)


@pytest.mark.skipif(INTERPRETER_ACTIVE, reason="this process runs the interpreter tests itself")
def test_interpreter_tests_in_subprocess() -> None:
    """The interpreter tests, in a child pytest with TRITON_INTERPRET=1 set before triton is imported."""
    env = dict(os.environ, **{triton_scan.INTERPRET_ENV: "1"})
    command = [sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-m", "interpreter", "-q", "-x",
               "-p", "no:cacheprovider"]
    child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
    summary = child.stdout.strip().splitlines()[-1] if child.stdout.strip() else ""
    assert child.returncode == 0, f"interpreter tests failed:\n{child.stdout[-6000:]}\n{child.stderr[-2000:]}"
    assert " passed" in summary and "skipped" not in summary, summary


@pytest.mark.skipif(INTERPRETER_ACTIVE, reason="this process runs the interpreter")
def test_cpu_tensors_need_the_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(triton_scan.INTERPRET_ENV, raising=False)
    inputs = make_inputs(length=4)
    with pytest.raises(RuntimeError, match=r"needs CUDA tensors, got tensors on cpu \(set TRITON_INTERPRET=1"):
        triton_selective_scan(*(inputs[k].float() for k in NAMES))
    with pytest.raises(RuntimeError, match=r"backend 'triton' is unavailable: .*needs CUDA tensors.*TRITON_INTERPRET=1"):
        resolve_backend("triton", torch.device("cpu"))
    monkeypatch.setenv(triton_scan.INTERPRET_ENV, "1")  # too late: triton is imported in compiled mode here
    with pytest.raises(RuntimeError, match=r"TRITON_INTERPRET=1 was set after triton was imported"):
        triton_selective_scan(*(inputs[k].float() for k in NAMES))


def test_shape_and_dtype_errors_name_the_argument() -> None:
    inputs = make_inputs(length=6)
    args = {k: v.float() for k, v in inputs.items()}
    with pytest.raises(ValueError, match=r"triton_selective_scan: B must have shape \(2, 3, 6\), got \(2, 3, 5\)"):
        triton_selective_scan(*(args[k][..., :5] if k == "B" else args[k] for k in NAMES))
    with pytest.raises(ValueError, match=r"triton_selective_scan_channels_last: z must have shape \(2, 6, 5\)"):
        triton_selective_scan_channels_last(*(args[k].transpose(1, 2) if args[k].dim() == 3 and k != "z" else args[k] for k in NAMES))
    with pytest.raises(TypeError, match=r"delta must be float32, bfloat16, float16 or float64, got torch.int64"):
        triton_selective_scan(*(args[k].long() if k == "delta" else args[k] for k in NAMES))


# ----------------------------------------------------------------------------- dispatch


def _install_fake_mamba_ssm(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("mamba_ssm", "mamba_ssm.ops"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    module = types.ModuleType(scan._CUDA_MODULE)
    module.selective_scan_fn = lambda *args, **kwargs: None
    monkeypatch.setitem(sys.modules, scan._CUDA_MODULE, module)


def test_cuda_default_is_mamba_ssm_when_it_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_mamba_ssm(monkeypatch)
    assert explain_default_backend(torch.device("cuda")) == ("cuda", "mamba_ssm's CUDA kernel imports")


def test_cuda_default_is_triton_without_mamba_ssm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, scan._CUDA_MODULE, None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # triton is a real GPU kernel: no fallback warning
        assert default_backend(torch.device("cuda")) == "triton"
    name, why = explain_default_backend(torch.device("cuda"))
    assert name == "triton" and "mamba_ssm is not importable" in why and "triton imports" in why
    assert default_backend(torch.device("cpu")) in ("fused", "chunked")  # CPU never picks triton


def test_cuda_without_either_kernel_warns_with_both_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, scan._CUDA_MODULE, None)
    monkeypatch.setattr(triton_scan, "triton_status", lambda: "triton is not importable (ImportError: no)")
    with pytest.warns(RuntimeWarning, match=r"slow 'chunked' backend on CUDA because neither GPU scan kernel is usable: "
                                            r"mamba_ssm is not importable .*; and triton is not importable"):
        assert default_backend(torch.device("cuda")) == "chunked"
    with pytest.raises(RuntimeError, match=r"backend 'triton' is unavailable: triton is not importable"):
        resolve_backend("triton", torch.device("cuda"))
    assert scan.backend_status()["triton"] == "triton is not importable (ImportError: no)"


def test_env_override_selects_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    _install_fake_mamba_ssm(monkeypatch)
    monkeypatch.setenv(scan.ENV_VAR, "triton")
    assert resolve_backend(None, torch.device("cuda")) == "triton"  # the override beats mamba-ssm
    monkeypatch.setenv(triton_scan.INTERPRET_ENV, "1")
    assert resolve_backend(None, torch.device("cpu")) == "triton"
    assert scan.backend_status()["triton"] is None


def test_triton_status_without_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(triton_scan.INTERPRET_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert "torch sees no CUDA device" in scan.backend_status()["triton"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert scan.backend_status()["triton"] is None


def test_info_says_which_backend_and_why(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import argparse

    from ssamba.commands import info

    monkeypatch.setitem(sys.modules, scan._CUDA_MODULE, None)
    assert info.main(argparse.Namespace(device="cuda")) == 0
    out = capsys.readouterr().out
    assert "  triton     " in out
    assert "scan on cuda  triton (automatic: mamba_ssm is not importable" in out


# ----------------------------------------------------------------------------- GPU


GPU_SHAPES = [(2, 96, 16, 300), (3, 40, 5, 33)]  # (batch, dim, N, L): the model's N, and odd sizes


@GPU
@pytest.mark.gpu
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("reverse", [False, True])
def test_gpu_matches_float64_reference(shape, reverse: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(triton_scan.INTERPRET_ENV, raising=False)
    batch, dim, n_state, length = shape
    inputs = {k: v.cuda() for k, v in make_inputs(batch, dim, n_state, length, seed=length).items()}
    cotangent = torch.randn(inputs["u"].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).cuda()
    for channels_last in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            dtypes = {k: (dtype if k in ("u", "delta", "B", "C", "z") else torch.float32) for k in inputs}
            rounded = {k: v.to(dtypes[k]).double() for k, v in inputs.items()}
            expected = grads_of(lambda leaves: reference(leaves, True, reverse), rounded, {k: torch.float64 for k in inputs},
                                cotangent.to(dtype).double())

            def run(leaves):
                if channels_last:
                    t = {k: (v.transpose(1, 2) if v.dim() == 3 else v) for k, v in leaves.items()}
                    return triton_selective_scan_channels_last(*(t[k] for k in NAMES), True, reverse).transpose(1, 2)
                return triton_selective_scan(*(leaves[k] for k in NAMES), True, reverse)

            result = grads_of(run, rounded, dtypes, cotangent.to(dtype).double())
            # float32: GPU exp2/log are approximate (~2 ulp) and L is up to 300: 1e-4; bf16: one rounding, eps
            tol = 1e-4 if dtype == torch.float32 else 2.0**-7
            for key, ref in expected.items():
                err = ((result[key].double() - ref).abs().max() / ref.abs().max()).item()
                assert err <= tol, f"{key} ({dtype}, channels_last={channels_last}): {err:.2e} > {tol:.0e}"


@GPU
@pytest.mark.gpu
def test_gpu_backends_agree_through_selective_scan() -> None:
    """triton vs chunked (and mamba-ssm's cuda when importable) on a model-sized scan, float32."""
    inputs = {k: v.float().cuda() for k, v in make_inputs(2, 384, 16, 257, seed=1).items()}
    args = [inputs[k] for k in NAMES]
    backends = ["triton", "chunked"] + (["cuda"] if scan.backend_status()["cuda"] is None else [])
    outputs = {b: selective_scan(*args[:5], D=args[5], z=args[6], delta_bias=args[7], delta_softplus=True, backend=b) for b in backends}
    for name in backends[1:]:
        torch.testing.assert_close(outputs["triton"], outputs[name], rtol=1e-4, atol=1e-4 * outputs[name].abs().max().item())


@GPU
@pytest.mark.gpu
def test_gpu_mixer_bf16_autocast_matches_chunked() -> None:
    from ssamba.models.mamba import MambaMixer

    torch.manual_seed(0)
    mixer = MambaMixer(d_model=64, bimamba="v2").cuda()
    hidden = torch.randn(2, 129, 64, device="cuda")
    outs = {}
    for backend in ("triton", "chunked"):
        mixer.scan_backend = backend
        with torch.autocast("cuda", dtype=torch.bfloat16):
            outs[backend] = mixer(hidden).float()
    scale = outs["chunked"].abs().max().item()
    assert (outs["triton"] - outs["chunked"]).abs().max().item() <= 2.0**-6 * scale


# ----------------------------------------------------------------------------- the prepared GPU check


@pytest.mark.slow
def test_gpu_check_cpu_smoke(tmp_path: Path) -> None:
    """benchmarks/gpu_check.sh --cpu-smoke: every stage at tiny sizes on CPU, one JSON and one Markdown report."""
    repo = Path(__file__).resolve().parent.parent
    env = dict(os.environ, GPU_CHECK_TIMEOUT_S="3000")
    env.pop(triton_scan.INTERPRET_ENV, None)
    run = subprocess.run(["bash", str(repo / "benchmarks/gpu_check.sh"), "--cpu-smoke", "--out-dir", str(tmp_path),
                          "--budget-scale", "6", "--total-minutes", "45"], env=env, capture_output=True, text=True, timeout=3100)
    assert run.returncode == 0, run.stderr[-3000:]
    report = __import__("json").loads((tmp_path / "gpu_check.json").read_text())
    stages = report["stages"]
    assert list(stages) == ["env", "mamba_ssm", "tests", "parity", "scan_speed", "train_step", "pretrain", "efficiency"]
    failed = {name: r for name, r in stages.items() if r["status"] not in ("ok", "skipped")}
    assert not failed, failed
    assert stages["mamba_ssm"]["status"] == "skipped"  # no archive given, mamba-ssm absent
    assert all(row["status"] in ("ok", "skipped") for row in stages["parity"]["rows"]), stages["parity"]["rows"]
    assert {row["backend"] for row in stages["scan_speed"]["rows"] if row["status"] == "ok"} == {"triton", "chunked"}
    assert all(row["status"] == "ok" for row in stages["train_step"]["rows"])
    assert stages["pretrain"]["runs"][1]["resumed"] and stages["pretrain"]["last_step"] == 4
    assert [row["vs"] for row in stages["efficiency"]["comparison"]] == ["ssast-tiny (plain)", "ssast-tiny (sdpa)"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "Scan parity" in markdown and "Pretraining step" in markdown and "Efficiency" in markdown


def test_kernels_compile_for_a_gpu_without_one() -> None:
    """Every kernel goes through Triton's full compiler to a cubin for sm_90 (H100) here, which the
    interpreter does not exercise (e.g. non-constexpr globals, scan lowering, dtype rules), with the launches'
    compiler options, none left to a default that changes between Triton versions."""
    import inspect

    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if INTERPRETER_ACTIVE:
        pytest.skip("this process runs the interpreter")
    from ssamba.models import triton_kernels as kernels

    common = {"SOFTPLUS": True, "REVERSE": True, "DTYPE": tl.float32, "BLOCK_D": triton_scan.BLOCK_D, "BLOCK_N": 16}
    cases = [
        (kernels._chunk_end_kernel, dict(common, HAS_BIAS=True, CHUNK=triton_scan.CHUNK)),
        (kernels._chunk_boundary_kernel, {"BACKWARD": True, "DTYPE": tl.float32, "BLOCK_D": triton_scan.BLOCK_D, "BLOCK_N": 16}),
        (kernels._forward_output_kernel, dict(common, HAS_D=True, HAS_Z=True, HAS_BIAS=True, CHUNK=triton_scan.CHUNK)),
        (kernels._chunk_adjoint_kernel, dict(common, HAS_Z=True, HAS_BIAS=True, CHUNK=triton_scan.CHUNK)),
        (kernels._backward_kernel, dict(common, HAS_D=True, HAS_Z=True, HAS_BIAS=True, CHUNK=triton_scan.CHUNK)),
    ]
    for kernel, constexprs in cases:
        names = inspect.signature(kernel.fn).parameters
        signature = {n: "constexpr" if n in constexprs else ("*bf16" if n.endswith("_ptr") else "i32") for n in names}
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                                          target=GPUTarget("cuda", 90, 32),
                                          options={"num_warps": triton_scan.BACKWARD_WARPS, **triton_scan.COMPILE_OPTIONS})
        except (RuntimeError, FileNotFoundError) as err:
            if "ptxas" in str(err).lower() or isinstance(err, FileNotFoundError):
                pytest.skip(f"no ptxas in this triton install: {err}")
            raise
        assert "cubin" in compiled.asm, kernel.fn.__name__
        defaulted = [str(w.message) for w in caught if "FP_FUSION" in str(w.message)]
        assert not defaulted, f"{kernel.fn.__name__} left a compiler option to Triton's version-dependent default: {defaulted}"
