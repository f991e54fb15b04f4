"""One prepared GPU check of ssamba: GPU tests, scan parity and speed, training steps, pretrain + resume, efficiency.

Stages, in order, each in its own subprocess with its own time budget (a stage that fails, crashes
or runs out of time is recorded as such and the next one runs; nothing needs the network):

  env          torch / CUDA / triton versions, device, usable scan backends and the automatic choice
  mamba_ssm    optional: build mamba-ssm from a source archive (--mamba-ssm-archive) for this GPU only
  tests        the GPU-marked tests (python -m pytest -m gpu tests)
  parity       triton vs chunked (vs cuda = mamba-ssm when importable): output and every gradient
  scan_speed   scan forward+backward at B=8, D=1536, L=1024, N=16, bf16 inputs, per backend
  train_step   ssamba-tiny and ssamba-base pretraining step per backend, fp32 and bf16 autocast
  pretrain     `ssamba pretrain` on a generated corpus for a few steps, then --resume auto for more
  efficiency   benchmarks/efficiency.py on the GPU: ssamba-tiny vs SSAST-tiny (plain, SDPA) past 22k tokens

Writes OUT/gpu_check.json and OUT/gpu_check.md (OUT: --out-dir, else $OUT, else ./gpu_check_out),
after every stage, so a killed run still leaves its results. ``--cpu-smoke`` runs every stage at
tiny sizes on the CPU (the triton kernels through TRITON_INTERPRET=1) to test the script itself.

Examples:
  bash benchmarks/gpu_check.sh                                   # one GPU, about 6-9 minutes
  python benchmarks/gpu_check.py --stages env parity scan_speed  # a subset
  python benchmarks/gpu_check.py --mamba-ssm-archive mamba_ssm-2.3.2.post1.tar.gz --total-minutes 20
  python benchmarks/gpu_check.py --cpu-smoke --out-dir /tmp/gpu_check_smoke
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO / "benchmarks"
MIB = 2**20

STAGE_BUDGETS_S: dict[str, float] = {
    "env": 20,
    "mamba_ssm": 240,
    "tests": 120,
    "parity": 35,
    "scan_speed": 45,
    "train_step": 120,
    "pretrain": 60,
    "efficiency": 110,
}
"""Per-stage time budgets on one H100 (the default stages add up to 8.5 minutes without mamba_ssm; the tests took
95 s on a cold Triton cache in the first H100 run, 2026-11-27)."""
DEFAULT_STAGES = ("env", "mamba_ssm", "tests", "parity", "scan_speed", "train_step", "pretrain", "efficiency")
STARTUP_GRACE_S = 20.0
"""Subprocess time on top of a stage budget (imports); the stage itself keeps to its budget."""

# issue targets
SCAN_SHAPE = (8, 1536, 1024, 16)  # batch, dim, L, N
TARGET_VS_CUDA = 1.5
TARGET_VS_CHUNKED = 10.0
TARGET_STEP_VS_CUDA = 1.3
CLAIM_TOKENS = 22528  # 22k tokens (a multiple of the 8 frequency rows)
CLAIM_SPEEDUP = 13.7
CLAIM_MEMORY = 21.0
EFFICIENCY_SIZES = (2048, 8192, CLAIM_TOKENS, 32768)
TRAIN_BATCH = 8


# ============================================================================ stages (run in a child)


def _device(smoke: bool):
    import torch

    if smoke:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError(f"torch {torch.__version__} sees no CUDA device (use --cpu-smoke to test the script on CPU)")
    return torch.device("cuda")


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_ms(fn: Callable[[], Any], device, repeats: int, deadline: float) -> list[float]:
    """Wall-clock ms of up to ``repeats`` calls (synchronised), stopping at ``deadline``."""
    times = []
    for _ in range(repeats):
        if times and time.perf_counter() + times[-1] / 1000 > deadline:
            break
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1000)
    return times


def _reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else None


def _mamba_ssm_reason() -> str | None:
    """None when the 'cuda' backend (mamba-ssm) can run here, else why not (without probing the CPU kernel)."""
    import torch

    from ssamba.models import scan

    reason = scan._load_cuda_scan()[1]
    if reason is None and not torch.cuda.is_available():
        reason = "mamba_ssm imports, but torch sees no CUDA device"
    return reason


def stage_env(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    import torch

    from ssamba.models import scan

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception as err:  # noqa: BLE001
        info["triton"] = f"not importable: {err}"
    # the GPU backends only: probing 'fused' would build the C++ CPU extension (minutes)
    info["scan_backends"] = {"cuda": scan._load_cuda_scan()[1], "triton": scan._load_triton_scan()[1]}
    runtime = ("numpy", "yaml", "tqdm", "einops", "safetensors", "soundfile", "soxr", "webdataset", "braceexpand", "tensorboard", "pytest")
    info["missing_modules"] = [m for m in runtime if importlib.util.find_spec(m) is None]
    info["automatic_scan"] = dict(zip(("backend", "why"), scan.explain_default_backend(torch.device("cuda"))))
    return info


def stage_mamba_ssm(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """Build mamba-ssm for this GPU's architecture into OUT/mamba_ssm (added to later stages' path)."""
    from ssamba.models import scan

    if _mamba_ssm_reason() is None:
        return {"status": "ok", "message": "mamba_ssm already importable; nothing to build"}
    if not args.mamba_ssm_archive:
        return {"status": "skipped", "message": "no --mamba-ssm-archive given and mamba_ssm is not importable: "
                "the 'cuda' backend comparison is skipped"}
    if args.cpu_smoke:
        return {"status": "skipped", "message": "--cpu-smoke: no CUDA build on CPU"}
    import torch

    archive = Path(args.mamba_ssm_archive).resolve()
    if not archive.is_file():
        return {"status": "error", "message": f"--mamba-ssm-archive {archive}: no such file"}
    major, minor = torch.cuda.get_device_capability(0)
    target = Path(args.out_dir).resolve() / "mamba_ssm"
    env = dict(os.environ, MAMBA_FORCE_BUILD="TRUE", TORCH_CUDA_ARCH_LIST=f"{major}.{minor}", MAX_JOBS=str(os.cpu_count() or 4))
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
               "--target", str(target), str(archive)]
    remaining = max(deadline - time.perf_counter(), 1.0)
    try:
        build = subprocess.run(command, env=env, capture_output=True, text=True, timeout=remaining)
    except subprocess.TimeoutExpired:
        return {"status": "budget", "message": f"building mamba-ssm for sm_{major}{minor} did not finish in {remaining:.0f} s; "
                "the 'cuda' backend comparison is skipped"}
    if build.returncode != 0:
        return {"status": "error", "message": "pip failed: " + build.stderr.strip()[-600:]}
    check = subprocess.run([sys.executable, "-c", f"import {scan._CUDA_MODULE}"], env=dict(os.environ, PYTHONPATH=_pythonpath(target)),
                           capture_output=True, text=True)
    if check.returncode != 0:
        return {"status": "error", "message": "built, but does not import: " + check.stderr.strip()[-600:]}
    return {"status": "ok", "message": f"built for sm_{major}{minor} into {target}", "path": str(target)}


def stage_tests(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    # only the files with GPU tests: collecting the others may build the C++ CPU extension (minutes)
    files = [str(path) for path in sorted((REPO / "tests").glob("test_*.py")) if "mark.gpu" in path.read_text()]
    command = [sys.executable, "-m", "pytest", "-m", "gpu", *files, "-q", "-p", "no:cacheprovider", "-rs"]
    remaining = max(deadline - time.perf_counter(), 1.0)
    try:
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=remaining)
    except subprocess.TimeoutExpired as err:
        partial = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (err.stdout or "")
        return {"status": "budget", "message": f"pytest did not finish in {remaining:.0f} s", "output": partial[-1500:]}
    lines = run.stdout.strip().splitlines()
    summary = lines[-1] if lines else run.stderr.strip()[-300:]
    status = "ok" if run.returncode == 0 else ("skipped" if run.returncode == 5 else "failed")
    return {"status": status, "summary": summary, "command": shlex.join(command[1:]), "output": run.stdout[-3000:] if status == "failed" else ""}


def _scan_inputs(batch: int, dim: int, length: int, n_state: int, device, dtype, seed: int = 0) -> dict[str, Any]:
    """Mixer-like scan inputs in mamba_ssm's layout: low-precision u, delta, B, C, z; float32 A, D, bias."""
    import torch

    g = torch.Generator(device="cpu").manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    values = {
        "u": randn(batch, dim, length),
        "delta": randn(batch, dim, length) * 0.5 - 2.5,
        "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1) * (0.5 + torch.rand(dim, 1, generator=g)),
        "B": randn(batch, n_state, length),
        "C": randn(batch, n_state, length),
        "D": randn(dim),
        "z": randn(batch, dim, length),
        "delta_bias": randn(dim) * 0.3,
    }
    return {k: v.to(device=device, dtype=(dtype if v.dim() == 3 else torch.float32)) for k, v in values.items()}


SCAN_ARGS = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _run_scan(backend: str, inputs: dict[str, Any], *, reverse: bool = False, channels_last: bool = False, grad: bool = True,
              cotangent=None, fresh: bool = True) -> dict[str, Any]:
    """Output (and every gradient) of one backend; triton layouts and reverse through its own entry points.
    ``fresh``: on new leaf copies of the inputs (else on ``inputs`` themselves, for timing)."""
    import torch

    from ssamba.models.scan import selective_scan

    leaves = {k: v.detach().clone().requires_grad_(grad) for k, v in inputs.items()} if fresh else inputs
    if backend == "triton" and (reverse or channels_last):
        from ssamba.models.triton_scan import triton_selective_scan, triton_selective_scan_channels_last

        if channels_last:
            views = {k: (v.transpose(1, 2) if v.dim() == 3 else v) for k, v in leaves.items()}
            y = triton_selective_scan_channels_last(*(views[k] for k in SCAN_ARGS), True, reverse).transpose(1, 2)
        else:
            y = triton_selective_scan(*(leaves[k] for k in SCAN_ARGS), True, reverse)
    else:
        flip = (lambda t: t.flip(-1)) if reverse else (lambda t: t)
        args = {k: (flip(v) if v.dim() == 3 else v) for k, v in leaves.items()}
        y = flip(selective_scan(args["u"], args["delta"], args["A"], args["B"], args["C"], args["D"], args["z"],
                                args["delta_bias"], delta_softplus=True, backend=backend))
    result = {"y": y}
    if grad:
        y.backward(torch.ones_like(y) if cotangent is None else cotangent.to(y.dtype))
        result.update({k: v.grad for k, v in leaves.items()})
    return result


def _relative_errors(result: dict[str, Any], expected: dict[str, Any]) -> dict[str, float]:
    return {k: float((result[k].double() - ref.double()).abs().max() / ref.double().abs().max().clamp_min(1e-30))
            for k, ref in expected.items()}


def stage_parity(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    import torch

    device = _device(args.cpu_smoke)
    batch, dim, length, n_state = (1, 8, 37, 4) if args.cpu_smoke else (2, 768, 1025, 16)
    have_cuda = _mamba_ssm_reason() is None
    g = torch.Generator(device="cpu").manual_seed(5)
    cotangent = torch.randn(batch, dim, length, generator=g).to(device)
    rows = []
    for reverse in (False, True):
        for dtype in (torch.float32, torch.bfloat16):
            inputs = _scan_inputs(batch, dim, length, n_state, device, dtype)
            reference = _run_scan("chunked", {k: v.float() for k, v in inputs.items()}, reverse=reverse, cotangent=cotangent)
            for channels_last in (False, True):
                if time.perf_counter() > deadline:
                    rows.append({"case": "rest", "status": "budget"})
                    return {"shape": [batch, dim, length, n_state], "rows": rows}
                triton = _run_scan("triton", inputs, reverse=reverse, channels_last=channels_last, cotangent=cotangent)
                errors = _relative_errors(triton, reference)
                tolerance = 1e-4 if dtype == torch.float32 else 2.0**-7
                rows.append({"case": f"triton {str(dtype).split('.')[-1]} {'channels-last' if channels_last else 'mamba layout'}"
                             f"{' reverse' if reverse else ''} vs chunked fp32", "max_rel_error": max(errors.values()),
                             "worst": max(errors, key=errors.get), "tolerance": tolerance,
                             "status": "ok" if max(errors.values()) <= tolerance else "FAILED"})
            if have_cuda and not reverse:
                cuda = _run_scan("cuda", inputs, cotangent=cotangent)
                errors = _relative_errors(cuda, reference)
                rows.append({"case": f"cuda (mamba-ssm) {str(dtype).split('.')[-1]} vs chunked fp32", "max_rel_error": max(errors.values()),
                             "worst": max(errors, key=errors.get), "tolerance": None, "status": "info"})
    if not have_cuda:
        rows.append({"case": "cuda (mamba-ssm)", "status": "skipped", "message": _mamba_ssm_reason()})
    return {"shape": [batch, dim, length, n_state], "rows": rows}


def stage_scan_speed(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    import torch

    device = _device(args.cpu_smoke)
    batch, dim, length, n_state = (1, 16, 40, 4) if args.cpu_smoke else SCAN_SHAPE
    inputs = _scan_inputs(batch, dim, length, n_state, device, torch.bfloat16)
    backends = ["triton", "chunked"] + (["cuda"] if _mamba_ssm_reason() is None else [])
    rows = []
    for backend in backends:
        if time.perf_counter() > deadline:
            rows.append({"backend": backend, "status": "budget"})
            continue
        repeats = 1 if args.cpu_smoke else (3 if backend == "chunked" else 10)
        _run_scan(backend, inputs)  # warm-up (triton compiles here)
        _reset_peak(device)
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        fwd_bwd = _time_ms(lambda: _run_scan(backend, leaves, fresh=False), device, repeats, deadline)
        peak = _peak_mib(device)
        with torch.no_grad():
            fwd = _time_ms(lambda: _run_scan(backend, inputs, grad=False, fresh=False), device, repeats, deadline)
        rows.append({"backend": backend, "status": "ok", "fwd_bwd_ms": min(fwd_bwd), "fwd_ms": min(fwd), "n": len(fwd_bwd),
                     "peak_mib": peak})
    found = {r["backend"]: r for r in rows if r["status"] == "ok"}
    targets = {}
    if "triton" in found and "chunked" in found:
        speedup = found["chunked"]["fwd_bwd_ms"] / found["triton"]["fwd_bwd_ms"]
        targets["triton_vs_chunked"] = {"value": speedup, "target": f">= {TARGET_VS_CHUNKED:g}x", "met": speedup >= TARGET_VS_CHUNKED}
    if "triton" in found and "cuda" in found:
        ratio = found["triton"]["fwd_bwd_ms"] / found["cuda"]["fwd_bwd_ms"]
        targets["triton_vs_cuda"] = {"value": ratio, "target": f"<= {TARGET_VS_CUDA:g}x", "met": ratio <= TARGET_VS_CUDA}
    else:
        targets["triton_vs_cuda"] = {"value": None, "target": f"<= {TARGET_VS_CUDA:g}x", "met": None,
                                     "message": "mamba-ssm not importable: not measured"}
    return {"shape": [batch, dim, length, n_state], "dtype": "bfloat16 (A, D, bias float32)", "rows": rows, "targets": targets}


def stage_train_step(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    import torch

    from ssamba.models.encoder import AudioMambaEncoder, preset_config
    from ssamba.models.masked import MaskedPatchModel, ObjectiveConfig
    device = _device(args.cpu_smoke)
    if args.cpu_smoke:
        from ssamba.models.mamba import set_fused_ops_enabled

        set_fused_ops_enabled(False)  # no C++ extension build in the smoke run
        models, backends, batch, frames, masked = ("ssamba-tiny",), ["chunked"], 2, 128, 48
        overrides: dict[str, Any] = {"depth": 2, "embed_dim": 32}
    else:
        models, batch, frames, masked, overrides = ("ssamba-tiny", "ssamba-base"), TRAIN_BATCH, 1024, 400, {}
        backends = (["cuda"] if _mamba_ssm_reason() is None else []) + ["triton", "chunked"]
    rows = []
    for model_name in models:
        for precision in ("fp32", "bf16"):
            for backend in backends:
                row = {"model": model_name, "precision": precision, "backend": backend}
                if time.perf_counter() > deadline:
                    rows.append(row | {"status": "budget"})
                    continue
                torch.manual_seed(0)
                config = preset_config(model_name, target_length=frames, scan_backend=backend, **overrides)
                model = MaskedPatchModel(AudioMambaEncoder(config), ObjectiveConfig(mask_patch=masked, eval_mask_patch=masked))
                model = model.to(device).train()
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
                fbank = torch.randn(batch, frames, 128, device=device)

                def step() -> None:
                    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                        loss = model(fbank).loss
                    loss.backward()
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)

                try:
                    step()  # warm-up (kernel compiles, allocator)
                    _reset_peak(device)
                    times = _time_ms(step, device, 1 if args.cpu_smoke else (2 if backend == "chunked" else 4), deadline)
                except torch.cuda.OutOfMemoryError as err:
                    rows.append(row | {"status": "oom", "message": str(err).splitlines()[0][:200]})
                    continue
                finally:
                    peak = _peak_mib(device)
                median = sorted(times)[len(times) // 2]
                rows.append(row | {"status": "ok", "ms_per_step": median, "ms_min": min(times), "n": len(times),
                                   "clips_per_s": batch * 1000 / median, "peak_mib": peak})
                del model, optimizer
    found = {(r["model"], r["precision"], r["backend"]): r for r in rows if r.get("status") == "ok"}
    targets = {}
    for precision in ("fp32", "bf16"):
        triton, cuda = found.get(("ssamba-base", precision, "triton")), found.get(("ssamba-base", precision, "cuda"))
        if triton and cuda:
            ratio = triton["ms_per_step"] / cuda["ms_per_step"]
            targets[f"base_{precision}_triton_vs_cuda"] = {"value": ratio, "target": f"<= {TARGET_STEP_VS_CUDA:g}x",
                                                           "met": ratio <= TARGET_STEP_VS_CUDA}
    return {"batch": batch, "frames": frames, "mask_patch": masked, "rows": rows, "targets": targets}


def stage_pretrain(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    from ssamba.data.synthetic import write_demo_corpus
    from ssamba.train.metrics import read_metrics

    work = Path(args.out_dir).resolve() / "pretrain"
    data, run_dir = work / "data", work / "run"
    clips, eval_clips = (8, 4) if args.cpu_smoke else (64, 8)
    if not (data / "shards/train/index.json").is_file():
        write_demo_corpus(data / "audio/train", clips, seconds=1.28, seed=0)
        write_demo_corpus(data / "audio/eval", eval_clips, seconds=1.28, seed=1)
        for split, per_shard in (("train", max(clips // 4, 1)), ("eval", max(eval_clips // 2, 1))):
            subprocess.run([sys.executable, "-m", "ssamba", "shards", "folder", str(data / "audio" / split), "-o",
                            str(data / "shards" / split), "--max-count", str(per_shard), "--overwrite"], check=True,
                           capture_output=True, text=True)
    first, total = (2, 4) if args.cpu_smoke else (20, 30)
    base = ["--config", str(REPO / "configs/pretrain/demo-tiny.yaml"), f"run.dir={run_dir}",
            f"data.train_shards={data / 'shards/train'}", f"data.eval_shards={data / 'shards/eval'}",
            "train.max_minutes=null", "train.log_every=1", f"train.save_every={first // 2}", f"train.eval_every={first // 2}",
            "data.num_workers=2"]
    if args.cpu_smoke:
        base += ["model.depth=2", "model.embed_dim=32", "data.batch_size=2"]
    runs = []
    for steps in (first, total):
        remaining = deadline - time.perf_counter()
        if remaining < 5:
            runs.append({"max_steps": steps, "status": "budget"})
            break
        command = [sys.executable, "-m", "ssamba", "pretrain", *base, f"train.max_steps={steps}", "--no-progress", "--resume", "auto"]
        begin = time.perf_counter()
        try:
            run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=remaining)
        except subprocess.TimeoutExpired:
            runs.append({"max_steps": steps, "status": "budget", "message": f"not finished in {remaining:.0f} s"})
            break
        log = run.stdout + run.stderr
        runs.append({"max_steps": steps, "status": "ok" if run.returncode == 0 else "error", "wall_s": time.perf_counter() - begin,
                     "resumed": "resumed from" in log, "output": "" if run.returncode == 0 else log[-1500:]})
        if run.returncode != 0:
            break
    train = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == "train"] if (run_dir / "metrics.jsonl").is_file() else []
    ok = len(runs) == 2 and all(r["status"] == "ok" for r in runs) and runs[1]["resumed"] and bool(train) and train[-1]["step"] == total
    return {"status": "ok" if ok else "failed", "runs": runs, "last_step": train[-1]["step"] if train else None,
            "loss_first_last": [train[0]["loss"], train[-1]["loss"]] if train else None,
            "command": "ssamba pretrain " + shlex.join(base) + " train.max_steps=N --resume auto"}


def stage_efficiency(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    out = Path(args.out_dir).resolve() / "efficiency"
    budget_min = max((deadline - time.perf_counter()) / 60 - 0.3, 0.1)
    if args.cpu_smoke:
        options = ["--device", "cpu", "--sizes", "64", "--models", "tiny", "--depth", "2", "--repeats", "1"]
    else:
        options = ["--device", "cuda", "--sizes", *map(str, EFFICIENCY_SIZES), "--models", "tiny", "--repeats", "3",
                   "--case-budget-s", "30", "--mem-limit-gib", "0"]
    command = [sys.executable, str(BENCHMARKS / "efficiency.py"), *options, "--attention", "plain", "sdpa",
               "--total-budget-min", f"{budget_min:.2f}", "--out-dir", str(out)]
    try:
        run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(deadline - time.perf_counter(), 1))
    except subprocess.TimeoutExpired:
        return {"status": "budget", "message": "efficiency.py did not finish in its budget"}
    if run.returncode != 0:
        return {"status": "error", "message": run.stderr[-1500:]}
    device = "cpu" if args.cpu_smoke else "cuda"
    results = json.loads((out / f"efficiency_{device}.json").read_text())["results"]
    found = {(r["label"], r["tokens"]): r for r in results}
    tokens = max(r["tokens"] for r in results) if args.cpu_smoke else CLAIM_TOKENS
    comparison = []
    ours = found.get(("ssamba-tiny", tokens))
    for attention in ("plain", "sdpa"):
        theirs = found.get((f"ssast-tiny ({attention})", tokens))
        row = {"tokens": tokens, "vs": f"ssast-tiny ({attention})"}
        if ours and theirs and ours["status"] == "ok" and theirs["status"] == "ok":
            row |= {"ssamba_s": ours["time_min_s"], "ssast_s": theirs["time_min_s"], "speedup": theirs["time_min_s"] / ours["time_min_s"],
                    "ssamba_mib": ours["peak_mib"], "ssast_mib": theirs["peak_mib"], "memory_ratio": theirs["peak_mib"] / ours["peak_mib"]}
            if attention == "plain":
                row["claim"] = f"SSAMBA: {CLAIM_SPEEDUP:g}x faster, {CLAIM_MEMORY:g}x less memory"
                row["met"] = row["speedup"] >= CLAIM_SPEEDUP and row["memory_ratio"] >= CLAIM_MEMORY
        else:
            row["status"] = f"ssamba: {ours and ours['status']}, ssast: {theirs and theirs['status']} ({(theirs or {}).get('message', '')})"
        comparison.append(row)
    return {"command": shlex.join(["python", "benchmarks/efficiency.py", *options, "--attention", "plain", "sdpa"]),
            "table": str(out / f"efficiency_{device}.md"), "comparison": comparison}


STAGES: dict[str, Callable[[argparse.Namespace, float], dict[str, Any]]] = {
    "env": stage_env,
    "mamba_ssm": stage_mamba_ssm,
    "tests": stage_tests,
    "parity": stage_parity,
    "scan_speed": stage_scan_speed,
    "train_step": stage_train_step,
    "pretrain": stage_pretrain,
    "efficiency": stage_efficiency,
}


# ============================================================================ driver


def _pythonpath(*extra: Path) -> str:
    parts = [str(p) for p in extra] + [str(REPO), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(p for p in parts if p)


def run_stage_subprocess(name: str, args: argparse.Namespace, budget: float, extra_path: list[Path]) -> dict[str, Any]:
    """Run one stage in a child process with ``budget`` seconds; failures become result records."""
    out_dir = Path(args.out_dir)
    result_file = out_dir / f".stage_{name}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--run-stage", name, "--stage-budget-s", str(budget),
               "--out-dir", str(out_dir)] + (["--cpu-smoke"] if args.cpu_smoke else []) + \
              (["--mamba-ssm-archive", args.mamba_ssm_archive] if args.mamba_ssm_archive else [])
    env = dict(os.environ, PYTHONPATH=_pythonpath(*extra_path))
    if args.cpu_smoke:
        env["TRITON_INTERPRET"] = "1"  # before triton is imported in the child
    begin = time.perf_counter()
    try:
        child = subprocess.run(command, env=env, capture_output=True, text=True, timeout=budget + STARTUP_GRACE_S)
        log = child.stdout + child.stderr
        if result_file.is_file():
            result = json.loads(result_file.read_text())
        else:
            result = {"status": "error", "message": f"stage process exited with code {child.returncode}: {log.strip()[-1500:]}"}
    except subprocess.TimeoutExpired:
        result = {"status": "budget", "message": f"killed after {budget + STARTUP_GRACE_S:.0f} s (budget {budget:.0f} s)"}
    result.setdefault("status", "ok")
    result["wall_s"] = round(time.perf_counter() - begin, 1)
    result["budget_s"] = budget
    return result


def child_main(args: argparse.Namespace) -> int:
    """Run one stage in this process and write its result (--run-stage)."""
    deadline = time.perf_counter() + args.stage_budget_s
    try:
        result = STAGES[args.run_stage](args, deadline)
    except Exception as err:  # noqa: BLE001 -- every failure is reported in the table
        import traceback

        result = {"status": "error", "message": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-2000:]}
    (Path(args.out_dir) / f".stage_{args.run_stage}.json").write_text(json.dumps(result, indent=1, default=str))
    return 0


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def markdown_report(report: dict[str, Any]) -> str:
    """The Markdown tables of one run."""
    meta, stages = report["meta"], report["stages"]
    env = stages.get("env", {})
    lines = [
        "# GPU check", "",
        f"Command: `{meta['command']}`; date {meta['date']}; total {meta['wall_min']:.1f} min.",
        f"Device: {env.get('device', 'cpu (smoke run)' if meta['cpu_smoke'] else '?')}; torch {env.get('torch', '?')}, "
        f"CUDA {env.get('cuda_runtime', '-')}, triton {env.get('triton', '?')}; "
        f"automatic scan: {env.get('automatic_scan', {}).get('backend', '?')} ({env.get('automatic_scan', {}).get('why', '')}); "
        f"modules missing: {', '.join(env.get('missing_modules', [])) or 'none'}.", "",
        "| stage | status | wall s / budget s | notes |", "|---|---|---|---|",
    ]
    for name, result in stages.items():
        note = result.get("message") or result.get("summary") or ""
        lines.append(f"| {name} | {result['status']} | {_fmt(result.get('wall_s'))} / {_fmt(result.get('budget_s'))} | {note[:200]} |")
    parity = stages.get("parity", {})
    if parity.get("rows"):
        lines += ["", f"Scan parity, shape (B, D, L, N) = {parity.get('shape')}, max relative error over y and all gradients:", "",
                  "| case | max rel error | worst | tolerance | status |", "|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {_fmt(r.get('max_rel_error'))} | {r.get('worst', '-')} | {_fmt(r.get('tolerance'))} | {r['status']} |"
                  for r in parity["rows"]]
    speed = stages.get("scan_speed", {})
    if speed.get("rows"):
        lines += ["", f"Scan speed, (B, D, L, N) = {speed.get('shape')}, {speed.get('dtype')}, min ms:", "",
                  "| backend | fwd+bwd ms | fwd ms | n | peak MiB |", "|---|---|---|---|---|"]
        lines += [f"| {r['backend']} | {_fmt(r.get('fwd_bwd_ms'))} | {_fmt(r.get('fwd_ms'))} | {r.get('n', '-')} | {_fmt(r.get('peak_mib'))} |"
                  if r["status"] == "ok" else f"| {r['backend']} | {r['status']} | | | |" for r in speed["rows"]]
    steps = stages.get("train_step", {})
    if steps.get("rows"):
        lines += ["", f"Pretraining step, batch {steps.get('batch')}, {steps.get('frames')} frames, {steps.get('mask_patch')} masked, AdamW:", "",
                  "| model | precision | backend | ms/step (median) | clips/s | peak MiB |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['precision']} | {r['backend']} | {_fmt(r.get('ms_per_step'))} | {_fmt(r.get('clips_per_s'))} | "
                  f"{_fmt(r.get('peak_mib'))} |" if r["status"] == "ok" else f"| {r['model']} | {r['precision']} | {r['backend']} | {r['status']} | | |"
                  for r in steps["rows"]]
    efficiency = stages.get("efficiency", {})
    if efficiency.get("comparison"):
        lines += ["", f"Efficiency (`{efficiency.get('command')}`; full tables in {efficiency.get('table')}):", "",
                  "| tokens | vs | SSAMBA s | SSAST s | speed-up | SSAMBA MiB | SSAST MiB | memory ratio | claim |", "|---|---|---|---|---|---|---|---|---|"]
        for r in efficiency["comparison"]:
            claim = f"{r['claim']}: {'met' if r.get('met') else 'NOT met'}" if "claim" in r else r.get("status", "")
            lines.append(f"| {r['tokens']} | {r['vs']} | {_fmt(r.get('ssamba_s'))} | {_fmt(r.get('ssast_s'))} | {_fmt(r.get('speedup'))} | "
                         f"{_fmt(r.get('ssamba_mib'))} | {_fmt(r.get('ssast_mib'))} | {_fmt(r.get('memory_ratio'))} | {claim} |")
    targets = {**speed.get("targets", {}), **steps.get("targets", {})}
    if targets:
        lines += ["", "Targets:", ""]
        for name, t in targets.items():
            verdict = "not measured" if t["met"] is None else ("met" if t["met"] else "NOT met")
            lines.append(f"- {name}: {_fmt(t['value'])} (target {t['target']}): {verdict}{'; ' + t['message'] if t.get('message') else ''}")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    json_path, md_path = out_dir / "gpu_check.json", out_dir / "gpu_check.md"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path.write_text(markdown_report(report))
    return json_path, md_path


def build_parser() -> argparse.ArgumentParser:
    summary, _, details = (__doc__ or "").partition("\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(DEFAULT_STAGES), help="stages to run, in order (default: all)")
    parser.add_argument("--out-dir", type=Path, default=Path(os.environ.get("OUT") or "gpu_check_out"),
                        help="where gpu_check.json/.md go (default: $OUT, else ./gpu_check_out)")
    parser.add_argument("--total-minutes", type=float, default=8.6, help="no stage starts once this is used up (default: %(default)s)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every stage budget (default: %(default)s)")
    parser.add_argument("--mamba-ssm-archive", help="mamba-ssm source archive (.tar.gz) to build for this GPU before the comparisons")
    parser.add_argument("--cpu-smoke", action="store_true", help="every stage at tiny sizes on CPU (triton via TRITON_INTERPRET=1)")
    parser.add_argument("--run-stage", choices=list(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("--stage-budget-s", type=float, default=60.0, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.run_stage:
        return child_main(args)
    begin = time.perf_counter()
    report: dict[str, Any] = {
        "meta": {"command": shlex.join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)]),
                 "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu_smoke": args.cpu_smoke, "wall_min": 0.0},
        "stages": {},
    }
    extra_path: list[Path] = []
    for name in args.stages:
        left = args.total_minutes * 60 - (time.perf_counter() - begin)
        budget = min(STAGE_BUDGETS_S[name] * args.budget_scale, left - STARTUP_GRACE_S)
        if budget < 5:
            result = {"status": "skipped", "message": f"total budget of {args.total_minutes:g} min used up"}
        else:
            print(f"[gpu_check] {name} (budget {budget:.0f} s) ...", file=sys.stderr, flush=True)
            result = run_stage_subprocess(name, args, budget, extra_path)
        if name == "mamba_ssm" and result.get("path"):
            extra_path.append(Path(result["path"]))
        report["stages"][name] = result
        print(f"[gpu_check] {name}: {result['status']} {result.get('message', result.get('summary', ''))[:200]}", file=sys.stderr, flush=True)
        report["meta"]["wall_min"] = (time.perf_counter() - begin) / 60
        paths = write_report(report, args.out_dir)
    print("\n".join(map(str, paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
