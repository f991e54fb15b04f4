"""Forward+backward time and peak extra memory of each selective-scan backend on CPU.

One scan direction of a Mamba layer (B=2, D=384, N=16 by default) with everything the encoder
uses: D skip, z gate, delta_bias and softplus. Gradients are taken for every input. Each thread
count runs in its own fresh process; times are the minimum wall time and the minimum process CPU
time over --repeats runs after one warm-up (the warm-up includes torch.compile's compilation for
`compiled`); on a shared machine the 1-thread CPU time is the better estimate of the unloaded cost. Peak extra memory is measured
at one thread in a fresh process per case, with glibc told to return freed memory at once
(MALLOC_MMAP_THRESHOLD_=4096, MALLOC_TRIM_THRESHOLD_=0): the resident-set high-water mark
(VmHWM, reset through /proc/self/clear_refs) during one fwd+bwd call minus the resident size
just before it, so the inputs are excluded and the output, gradients and workspace included.
The last table times the ssamba-tiny encoder (fbank 2 x 1024 x 128, i.e. 512 patches) fwd+bwd.
Output is a markdown report on stdout, progress on stderr.

Examples:
    python benchmarks/scan.py
    python benchmarks/scan.py --backends chunked fused --lengths 1024 --threads 1
    python benchmarks/scan.py --no-memory --encoder-backends --repeats 3
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import torch

from ssamba.models.scan import backend_status, selective_scan

CPU_BACKENDS = ("ref", "chunked", "compiled", "fused")
TARGET_LENGTH = 1024
TARGETS_MS = {"chunked": 300.0, "compiled": 120.0}  # fwd+bwd at L=1024, 1 thread
ENCODER_PRESET = "ssamba-tiny"
ENCODER_INPUT = (2, 1024, 128)  # (batch, frames, mel bins) -> 512 patches
MALLOC_RETURN_MEMORY = {"MALLOC_MMAP_THRESHOLD_": "4096", "MALLOC_TRIM_THRESHOLD_": "0"}


def make_inputs(batch: int, dim: int, state: int, length: int) -> dict[str, torch.Tensor]:
    """Leaf tensors (requiring grad) shaped and scaled like one Mamba scan direction."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, dim, length)
    tensors = {
        "u": torch.randn(shape, generator=g),
        "delta": torch.randn(shape, generator=g) * 0.5 - 3.0,  # softplus -> ~0.05
        "A": -torch.arange(1, state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, state, length, generator=g),
        "C": torch.randn(batch, state, length, generator=g),
        "D": torch.randn(dim, generator=g),
        "z": torch.randn(shape, generator=g),
        "delta_bias": torch.randn(dim, generator=g) * 0.1,
    }
    return {k: v.requires_grad_() for k, v in tensors.items()}


def scan_step(backend: str, batch: int, dim: int, state: int, length: int) -> Callable[[], None]:
    """A callable running one fwd+bwd of the scan (gradients reset first)."""
    x = make_inputs(batch, dim, state, length)
    cotangent = torch.randn(batch, dim, length, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        for tensor in x.values():
            tensor.grad = None
        y = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], D=x["D"], z=x["z"], delta_bias=x["delta_bias"], delta_softplus=True, backend=backend)
        y.backward(cotangent)

    return step


def encoder_step(backend: str) -> Callable[[], None]:
    """A callable running one fwd+bwd of the ssamba-tiny encoder on a (2, 1024, 128) fbank."""
    from ssamba.models.encoder import AudioMambaEncoder, preset_config

    model = AudioMambaEncoder(preset_config(ENCODER_PRESET, scan_backend=backend)).train()
    fbank = torch.randn(ENCODER_INPUT, generator=torch.Generator().manual_seed(2))

    def step() -> None:
        model.zero_grad(set_to_none=True)
        model(fbank).float().square().mean().backward()

    return step


def time_callable(fn: Callable[[], None], repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Minimum wall time and minimum process CPU time of ``fn()``, in seconds, over ``repeats`` runs
    after ``warmup`` runs. On a shared machine the CPU time of a 1-thread run is the better
    estimate of the unloaded cost; with several threads it is the sum over threads."""
    for _ in range(warmup):
        fn()
    best_wall = best_cpu = float("inf")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def peak_extra_mib(fn: Callable[[], None]) -> float:
    """Resident-set high-water mark during one ``fn()`` minus the resident size before it (Linux)."""
    gc.collect()
    before = _proc_status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    fn()
    return (_proc_status_kib("VmHWM") - before) / 1024


def warm_peak_extra_mib(fn: Callable[[], None]) -> float:
    """:func:`peak_extra_mib` of ``fn`` after one warm-up call (which compiles for `compiled`)."""
    fn()
    return peak_extra_mib(fn)


def _measure(errors: dict[str, str], key: str, measure: Callable[..., Any], *args: Any) -> Any:
    """Return ``measure(*args)``; a backend failing at run time is recorded in ``errors``, not fatal."""
    try:
        value = measure(*args)
    except RuntimeError as err:
        errors[key] = str(err).strip().splitlines()[-1]
        print(f"{key}: failed: {errors[key]}", file=sys.stderr, flush=True)
        return None
    print(f"{key}: {value}", file=sys.stderr, flush=True)
    return value


def run_worker(args: argparse.Namespace) -> dict:
    """Measure inside this (fresh) process; the result goes to stdout as JSON, progress to stderr."""
    torch.set_num_threads(args.threads[0])
    shape = (args.batch, args.dim, args.state)
    errors: dict[str, str] = {}
    results: dict[str, Any] = {}
    for backend in args.backends:
        for length in args.lengths:
            key = f"{backend}/{length}"
            if args.worker == "memory":
                results[key] = _measure(errors, f"{key} peak MiB", warm_peak_extra_mib, scan_step(backend, *shape, length))
            else:
                results[key] = _measure(errors, f"{key} s ({args.threads[0]} thr)", time_callable, scan_step(backend, *shape, length), args.repeats)
        if args.worker == "time" and backend in args.encoder_backends:
            key = f"{backend}/encoder"
            results[key] = _measure(errors, f"{key} s ({args.threads[0]} thr)", time_callable, encoder_step(backend), args.encoder_repeats)
    return {"results": results, "errors": errors}


def call_worker(args: argparse.Namespace, worker: str, threads: int, backends: list[str], lengths: list[int], extra_env: dict[str, str] | None = None) -> dict:
    """Run ``run_worker`` in a fresh interpreter (its progress goes to our stderr); return its JSON."""
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", worker,
        "--threads", str(threads), "--backends", *backends, "--lengths", *map(str, lengths),
        "--batch", str(args.batch), "--dim", str(args.dim), "--state", str(args.state),
        "--repeats", str(args.repeats), "--encoder-repeats", str(args.encoder_repeats),
        "--encoder-backends", *(args.encoder_backends if worker == "time" else []),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), **(extra_env or {}))
    done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark worker crashed (exit {done.returncode}): {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _ms(wall_cpu: list[float] | None) -> str:
    """'wall / cpu' in ms."""
    return "failed" if wall_cpu is None else " / ".join(f"{x * 1e3:.0f}" for x in wall_cpu)


def _mib(mib: float | None) -> str:
    return "failed" if mib is None else f"{mib:.0f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    doc = (__doc__ or "").strip()
    summary, _, examples = doc.partition("\n")
    parser = argparse.ArgumentParser(description=summary, epilog=examples.strip(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=CPU_BACKENDS, default=list(CPU_BACKENDS), help="backends to measure (unavailable ones are skipped)")
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 4096], help="sequence lengths L")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch thread counts")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dim", type=int, default=384, help="channels (embed_dim * expand)")
    parser.add_argument("--state", type=int, default=16, help="state size N")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per scan case (minimum reported)")
    parser.add_argument("--encoder-repeats", type=int, default=2, help="timed runs per encoder case")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory subprocesses")
    parser.add_argument("--encoder-backends", nargs="*", choices=CPU_BACKENDS, default=["chunked", "compiled", "fused"], help=f"backends for the {ENCODER_PRESET} encoder rows (none: skip them)")
    parser.add_argument("--worker", choices=["time", "memory"], help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    args.encoder_backends = [b for b in args.encoder_backends if b in args.backends]

    status = backend_status()
    backends = [b for b in args.backends if status[b] is None]
    for skipped in sorted(set(args.backends) - set(backends)):
        print(f"skipping {skipped}: {status[skipped]}", file=sys.stderr)
    times, errors = {}, {}
    for t in args.threads:
        report = call_worker(args, "time", t, backends, args.lengths)
        times[t] = report["results"]
        errors.update({f"{key} ({t} thread(s))": err for key, err in report["errors"].items()})
    memory = {}
    if args.memory:  # one fresh process per case
        for backend in backends:
            for length in args.lengths:
                report = call_worker(args, "memory", 1, [backend], [length], MALLOC_RETURN_MEMORY)
                memory.update(report["results"])
                errors.update({f"{key} (memory)": err for key, err in report["errors"].items()})

    command = " ".join(["python", f"benchmarks/{os.path.basename(__file__)}", *(sys.argv[1:] if argv is None else argv)])
    print(f"Command: `{command}`")
    print(f"Date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; torch {torch.__version__}")
    print(f"\nScan fwd+bwd, B={args.batch} D={args.dim} N={args.state}, fp32, min of {args.repeats}, wall / process CPU ms; peak extra memory at 1 thread (MiB):\n")
    header = ["backend", "threads", *(f"L={n}" for n in args.lengths)]
    if args.memory:
        header.append("peak MiB (" + " / ".join(map(str, args.lengths)) + ")")
    rows = []
    for backend in backends:
        for t in args.threads:
            row = [backend, str(t), *(_ms(times[t].get(f"{backend}/{n}")) for n in args.lengths)]
            if args.memory:
                row.append(" / ".join(_mib(memory.get(f"{backend}/{n}")) for n in args.lengths) if t == args.threads[0] else "")
            rows.append(row)
    print(markdown_table(header, rows))

    if args.encoder_backends:
        print(f"\n{ENCODER_PRESET} encoder fwd+bwd, fbank {ENCODER_INPUT} (512 patches), min of {args.encoder_repeats}, wall / process CPU ms:\n")
        rows = [[b, *(_ms(times[t].get(f"{b}/encoder")) for t in args.threads)] for b in args.encoder_backends if b in backends]
        print(markdown_table(["backend", *(f"{t} thread(s)" for t in args.threads)], rows))

    if 1 in args.threads and TARGET_LENGTH in args.lengths:
        print(f"\nTargets (fwd+bwd, L={TARGET_LENGTH}, 1 thread):")
        for backend, target in TARGETS_MS.items():
            measured = times[1].get(f"{backend}/{TARGET_LENGTH}")
            if measured is not None:
                wall, cpu = (x * 1e3 for x in measured)
                verdict = {2: "met", 1: "met on CPU time only", 0: "not met"}[(wall <= target) + (cpu <= target)]
                print(f"- {backend}: {wall:.0f} ms wall / {cpu:.0f} ms CPU vs <= {target:.0f} ms: {verdict}")
    if errors:
        print("\nFailed cases:")
        for key, err in errors.items():
            print(f"- {key}: {err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
