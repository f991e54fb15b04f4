"""Time the fused C++ CPU selective scan (forward + backward and forward only).

Prints a markdown table: minimum wall time (and process CPU time) over --repeats runs for each
sequence length and torch thread count. Inputs mimic one direction of a Mamba layer (dt ~ 0.01 to 0.06,
S4D-real A = -(1..N)); --mamba-layer adds z gating, delta_bias and softplus as Mamba uses them.
By default the kernel is called channel-last, as the mixer calls it; --layout mamba times the
(batch, dim, L) wrapper instead (one transpose copy per input and output), --reverse the
time-reversed recurrence, --isa one instruction-set build of the kernels.

Examples:
    python benchmarks/fused_scan.py
    python benchmarks/fused_scan.py --lengths 1024 --threads 1 --repeats 10
    python benchmarks/fused_scan.py --mamba-layer --dtype float64
    python benchmarks/fused_scan.py --lengths 1024 --layout mamba --isa baseline
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from ssamba.models.fused_scan import (
    fused_kernel_isas,
    fused_selective_scan,
    fused_selective_scan_channels_last,
    fused_status,
    set_fused_kernel_isa,
)

CHANNEL_LAST_INPUTS = ("u", "delta", "B", "C", "z")

DTYPES = {
    "float32": torch.float32,
    "float64": torch.float64,
    "bfloat16": torch.bfloat16,
}


def make_inputs(args: argparse.Namespace, length: int) -> dict:
    """Random leaf tensors that require grad, shaped like one scan direction."""
    g = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]
    shape = (args.batch, args.dim, length)
    inputs = {
        "u": torch.randn(shape, generator=g),
        "delta": torch.rand(shape, generator=g) * 0.05 + 0.01,
        "A": -torch.arange(1, args.state + 1, dtype=torch.float32).repeat(args.dim, 1),
        "B": torch.randn(args.batch, args.state, length, generator=g),
        "C": torch.randn(args.batch, args.state, length, generator=g),
        "D": torch.randn(args.dim, generator=g),
    }
    if args.mamba_layer:
        inputs["delta"] = (
            torch.randn(shape, generator=g) * 0.5 - 3.0
        )  # softplus -> ~0.05
        inputs["z"] = torch.randn(shape, generator=g)
        inputs["delta_bias"] = torch.randn(args.dim, generator=g) * 0.1
    if args.layout == "channels-last":
        inputs = {name: t.transpose(1, 2).contiguous() if name in CHANNEL_LAST_INPUTS else t for name, t in inputs.items()}
    return {name: t.to(dtype).requires_grad_() for name, t in inputs.items()}


def scan(args: argparse.Namespace, inputs: dict) -> torch.Tensor:
    """One call of the scan in the chosen layout."""
    if args.layout == "channels-last":
        return fused_selective_scan_channels_last(**inputs, delta_softplus=args.mamba_layer, reverse=args.reverse)
    return fused_selective_scan(**inputs, delta_softplus=args.mamba_layer)


def time_length(args: argparse.Namespace, length: int) -> tuple[float, float, float]:
    """Minimum seconds over the repeats: forward + backward (wall, process CPU), forward without grad.

    The process CPU time of a one-thread run is what the run costs without time-slicing by other
    jobs, so it stays meaningful on a loaded machine; with more threads it also counts waiting
    OpenMP threads.
    """
    inputs = make_inputs(args, length)
    grad_out = torch.randn(inputs["u"].shape).to(DTYPES[args.dtype])
    train_times, train_cpu_times, inference_times = [], [], []
    for _ in range(args.repeats + 1):  # the first run warms caches and is dropped
        for tensor in inputs.values():
            tensor.grad = None
        start, start_cpu = time.perf_counter(), time.process_time()
        scan(args, inputs).backward(grad_out)
        train_times.append(time.perf_counter() - start)
        train_cpu_times.append(time.process_time() - start_cpu)
        with torch.no_grad():
            start = time.perf_counter()
            scan(args, inputs)
            inference_times.append(time.perf_counter() - start)
    return min(train_times[1:]), min(train_cpu_times[1:]), min(inference_times[1:])


def build_parser() -> argparse.ArgumentParser:
    doc = (__doc__ or "").strip()
    summary, _, details = doc.partition("\n")
    parser = argparse.ArgumentParser(
        description=summary,
        epilog=details.strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=[512, 1024, 4096],
        help="sequence lengths L",
    )
    parser.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[1, 2],
        help="torch thread counts to try",
    )
    parser.add_argument("--batch", type=int, default=2, help="batch size (default 2)")
    parser.add_argument(
        "--dim",
        type=int,
        default=384,
        help="channels = embed dim x expand (default 384)",
    )
    parser.add_argument(
        "--state", type=int, default=16, help="state size N (default 16)"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed runs per point; the minimum is kept",
    )
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    parser.add_argument(
        "--mamba-layer",
        action="store_true",
        help="also use z gating, delta_bias and softplus",
    )
    parser.add_argument(
        "--layout",
        choices=["channels-last", "mamba"],
        default="channels-last",
        help="call the kernel channel-last (as the mixer does, default) or through the (batch, dim, L) wrapper",
    )
    parser.add_argument("--reverse", action="store_true", help="time the time-reversed recurrence (channels-last only)")
    parser.add_argument("--isa", default=None, help="instruction-set build of the kernels (default: the widest this CPU runs)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    reason = fused_status()
    if reason is not None:
        print(f"fused selective scan unavailable: {reason}", file=sys.stderr)
        return 1
    if args.reverse and args.layout != "channels-last":
        print("--reverse needs --layout channels-last", file=sys.stderr)
        return 2
    if args.isa is not None:
        if args.isa not in fused_kernel_isas():
            print(f"--isa {args.isa}: not available here; available: {', '.join(fused_kernel_isas())}", file=sys.stderr)
            return 2
        set_fused_kernel_isa(args.isa)
    print(
        f"batch={args.batch} dim={args.dim} N={args.state} dtype={args.dtype} layout={args.layout} "
        f"reverse={args.reverse} isa={args.isa or fused_kernel_isas()[0]} "
        f"mamba_layer={args.mamba_layer} repeats={args.repeats} (min wall time)\n"
    )
    print("| L | threads | fwd+bwd ms | fwd+bwd CPU ms | fwd (no grad) ms |")
    print("|---|---|---|---|---|")
    previous_threads = torch.get_num_threads()
    try:
        for length in args.lengths:
            for threads in args.threads:
                torch.set_num_threads(threads)
                train, train_cpu, inference = time_length(args, length)
                print(
                    f"| {length} | {threads} | {train * 1e3:.1f} | {train_cpu * 1e3:.1f} "
                    f"| {inference * 1e3:.1f} |",
                    flush=True,
                )
    finally:
        torch.set_num_threads(previous_threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
