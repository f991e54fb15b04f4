"""Profile one ssamba-tiny masked-patch pretraining step on CPU (forward, backward, AdamW step).

The model is ``MaskedPatchModel`` around the real ``ssamba-tiny`` preset (24 bimamba-v2 layers,
width 192) on a random normalised fbank of shape (batch, 1024, 128), i.e. 512 patches, with the
default two masked passes. For each thread count it times ``--repeats`` steps after ``--warmup``
untimed ones (minimum wall time and minimum process CPU time; the CPU time stays meaningful when
other jobs share the cores) and then records one step with ``torch.profiler``, printing the ops
with the largest self CPU time. ``--out-dir`` also writes the numbers and tables as JSON.
``--compare-fused-ops`` instead alternates steps with the fused mixer ops on and off in one process,
and ``--compare-scan B`` alternates steps with the ``--scan`` backend and backend ``B`` (paired
timings of one model, far less sensitive to changing load than separate runs); both print the
minimum of each and their ratio.

Examples:
  python benchmarks/profile_step.py                                   # default scan backend, 1 and 2 threads
  python benchmarks/profile_step.py --scan chunked --threads 1 --repeats 3
  python benchmarks/profile_step.py --scan fused --no-fused-ops       # scan kernel only, conv in PyTorch
  python benchmarks/profile_step.py --scan fused --top 20 --out-dir benchmarks/results
  python benchmarks/profile_step.py --scan fused --threads 1 --compare-fused-ops --repeats 5
  python benchmarks/profile_step.py --scan fused --compare-scan chunked --repeats 3   # the issue-7 ratio
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from ssamba.models import mamba
from ssamba.models.encoder import AudioMambaEncoder, preset_config
from ssamba.models.masked import MaskedPatchModel, ObjectiveConfig
from ssamba.models.scan import BACKENDS

PRESET = "ssamba-tiny"
NUM_MEL_BINS = 128
LEARNING_RATE = 5e-4
WEIGHT_DECAY = 5e-7
MS_PER_US = 1e-3


def build(args: argparse.Namespace) -> tuple[MaskedPatchModel, torch.optim.Optimizer, torch.Tensor]:
    """The model in training mode, its AdamW optimiser and one fixed input batch."""
    torch.manual_seed(0)
    encoder = AudioMambaEncoder(preset_config(PRESET, target_length=args.target_length, scan_backend=args.scan))
    objective = ObjectiveConfig(mask_patch=args.mask_patch, eval_mask_patch=args.mask_patch)  # evaluation masking unused here
    model = MaskedPatchModel(encoder, objective).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    fbank = torch.randn(args.batch_size, args.target_length, NUM_MEL_BINS)
    return model, optimizer, fbank


def train_step(model: MaskedPatchModel, optimizer: torch.optim.Optimizer, fbank: torch.Tensor) -> float:
    """One optimisation step; returns the loss."""
    loss = model(fbank).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def measure(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """Step times (min wall, min process CPU) and the top ops of one profiled step."""
    torch.set_num_threads(threads)
    model, optimizer, fbank = build(args)
    for _ in range(args.warmup):
        train_step(model, optimizer, fbank)
    walls, cpus = [], []
    for _ in range(args.repeats):
        wall0, cpu0 = time.perf_counter(), time.process_time()
        train_step(model, optimizer, fbank)
        walls.append(time.perf_counter() - wall0)
        cpus.append(time.process_time() - cpu0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_step(model, optimizer, fbank)
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total_us = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    top = [
        {"op": e.key, "self_cpu_ms": e.self_cpu_time_total * MS_PER_US, "percent": 100.0 * e.self_cpu_time_total / total_us, "calls": e.count}
        for e in events[: args.top]
    ]
    return {
        "scan": args.scan or "auto",
        "fused_ops": mamba.fused_ops_enabled(),
        "threads": threads,
        "step_wall_s": min(walls),
        "step_cpu_s": min(cpus),
        "profiled_self_cpu_ms": total_us * MS_PER_US,
        "top_ops": top,
    }


def alternate(args: argparse.Namespace, threads: int, variants: dict[str, Callable[[MaskedPatchModel], None]]) -> dict[str, Any]:
    """Min step time of each variant from alternating steps of one model; ``variants`` maps a label
    to a function that switches the model to that variant."""
    torch.set_num_threads(threads)
    model, optimizer, fbank = build(args)
    times: dict[str, list[tuple[float, float]]] = {label: [] for label in variants}
    for label, switch in variants.items():  # warm up every variant (e.g. build the compiled scan)
        switch(model)
        for _ in range(args.warmup):
            train_step(model, optimizer, fbank)
    for _ in range(args.repeats):
        for label, switch in variants.items():
            switch(model)
            wall0, cpu0 = time.perf_counter(), time.process_time()
            train_step(model, optimizer, fbank)
            times[label].append((time.perf_counter() - wall0, time.process_time() - cpu0))
    result: dict[str, Any] = {"scan": args.scan or "auto", "threads": threads}
    for label in variants:
        result[f"{label}_step_wall_s"] = min(w for w, _ in times[label])
        result[f"{label}_step_cpu_s"] = min(c for _, c in times[label])
    first, second = variants
    ratio = result[f"{second}_step_wall_s"] / result[f"{first}_step_wall_s"]
    result["ratio"] = ratio
    steps = ", ".join(
        f"{label} {result[f'{label}_step_wall_s'] * 1e3:.0f} ms wall / {result[f'{label}_step_cpu_s'] * 1e3:.0f} ms CPU" for label in variants
    )
    print(f"\nthreads={threads}, alternating steps (min of {args.repeats} each): {steps}; {second} / {first} = {ratio:.2f}x")
    return result


def compare_fused_ops(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """The ``--scan`` backend with the fused mixer ops on and off, alternating."""
    variants = {
        "fused_ops": lambda model: mamba.set_fused_ops_enabled(True),
        "plain_ops": lambda model: mamba.set_fused_ops_enabled(False),
    }
    result = alternate(args, threads, variants)
    mamba.set_fused_ops_enabled(not args.no_fused_ops)
    return result


def set_scan_backend(model: MaskedPatchModel, backend: str | None) -> None:
    """Point every mixer of ``model`` at ``backend``."""
    for module in model.modules():
        if isinstance(module, mamba.MambaMixer):
            module.scan_backend = backend


def compare_scan(args: argparse.Namespace, threads: int) -> dict[str, Any]:
    """The ``--scan`` backend against ``--compare-scan``, alternating."""
    variants = {
        args.scan or "auto": lambda model: set_scan_backend(model, args.scan),
        args.compare_scan: lambda model: set_scan_backend(model, args.compare_scan),
    }
    return alternate(args, threads, variants)


def print_result(result: dict[str, Any]) -> None:
    print(
        f"\nscan={result['scan']} fused_ops={result['fused_ops']} threads={result['threads']}: "
        f"step {result['step_wall_s'] * 1e3:.0f} ms wall (min), {result['step_cpu_s'] * 1e3:.0f} ms process CPU (min); "
        f"profiled step {result['profiled_self_cpu_ms']:.0f} ms self CPU in all"
    )
    print("| op | self CPU ms | % | calls |")
    print("|---|---|---|---|")
    for op in result["top_ops"]:
        print(f"| `{op['op']}` | {op['self_cpu_ms']:.1f} | {op['percent']:.1f} | {op['calls']} |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog="Examples:" + __doc__.split("Examples:")[1], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scan", choices=BACKENDS, default=None, help="selective-scan backend (default: automatic, 'fused' when it builds)")
    parser.add_argument("--no-fused-ops", action="store_true", help="run the conv/gate glue in plain PyTorch even when the fused extension is available")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--target-length", type=int, default=1024, help="frames per clip (1024 = 512 patches)")
    parser.add_argument("--mask-patch", type=int, default=400, help="masked patches per clip")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps (the minimum is reported)")
    parser.add_argument("--top", type=int, default=12, help="ops listed, by self CPU time")
    parser.add_argument("--compare-fused-ops", action="store_true", help="alternate steps with the fused mixer ops on and off (no profile)")
    parser.add_argument("--compare-scan", choices=BACKENDS, default=None, help="alternate steps with this scan backend and --scan (no profile)")
    parser.add_argument("--out-dir", type=Path, default=None, help="also write profile_step_<scan>.json here")
    args = parser.parse_args()
    if min(args.threads) < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--threads and --repeats must be positive, --warmup non-negative")
    if args.compare_scan is not None and args.compare_fused_ops:
        parser.error("use one of --compare-scan and --compare-fused-ops")
    if args.compare_scan is not None and args.compare_scan == args.scan:
        parser.error(f"--compare-scan {args.compare_scan} is the --scan backend itself")
    mamba.set_fused_ops_enabled(not args.no_fused_ops)

    results = []
    for threads in args.threads:
        if args.compare_fused_ops:
            results.append(compare_fused_ops(args, threads))
            continue
        if args.compare_scan is not None:
            results.append(compare_scan(args, threads))
            continue
        result = measure(args, threads)
        print_result(result)
        results.append(result)
    if args.out_dir is not None:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        suffix = (args.scan or "auto") + (
            "-compare" if args.compare_fused_ops else f"-vs-{args.compare_scan}" if args.compare_scan else "-plain-ops" if args.no_fused_ops else ""
        )
        path = args.out_dir / f"profile_step_{suffix}.json"
        path.write_text(json.dumps(results, indent=1) + "\n")
        print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
