"""CPU inference at ordinary clip lengths: SSAMBA encoders against an SSAST-style transformer, one process.

For every clip length and torch thread count ("cell"), every model runs in this one process on the
same random normalised fbank (fp32, ``torch.inference_mode``, random weights): one warm-up forward
each, then ``--repeats`` rounds of one forward per model in turn (alternating, so a change of load
on the machine hits every model alike). Reported per model: min and median time, clips/s from the
min, and the time ratios ssamba / ssast (sdpa) and ssamba / ssast (plain) against the targets
(ssamba-tiny at most 1.5x SSAST-tiny SDPA's time at 10 s clips and 2x at 1.5 s clips, 2 threads).

Clips are cut to whole patches: frames = 16 x floor(100 x seconds / 16), tokens = frames / 2 (8
frequency rows of 16x16 patches), the same input for both families. Models: ``ssamba-{size}`` (24
bimamba-v2 layers) and ``ssast-{size}`` (DeiT, 12 layers) with plain and SDPA attention (see
``benchmarks/efficiency.py`` and ``benchmarks/ssast_baseline.py``).

Also measured:

* memory: the forward's extra resident memory (VmHWM after one forward minus VmRSS before it, with
  freed heap pages returned to the system and VmHWM reset first), per model and cell, and in rows of
  their own at ``--memory-tokens`` (batch 1, the first ``--models`` size, one forward per model;
  plain attention is skipped where its attention matrices would not fit the available memory);
  target: ssamba-tiny at or below SSAST-tiny SDPA from 4096 tokens up;
* the scan inside the model against the standalone kernel: a profiled forward per SSAMBA model and
  cell sums the CPU time of the ``ssamba::selective_scan`` profiler ranges (min over 3 forwards);
  state updates per second = depth x directions x batch x tokens (CLS included) x d_inner x d_state
  / that time, against ``fused_selective_scan_channels_last`` timed alone on inputs of the same
  shape (both directions, inputs as ``benchmarks/fused_scan.py --mamba-layer`` makes them, min of
  3 calls); target: the model within 1.3x of the kernel's rate.

Writes OUT_DIR/inference_cpu.json (raw rows and machine facts) and OUT_DIR/inference_cpu.md (tables).

Examples:
  python benchmarks/inference.py                       # tiny + small; 1, 1.5, 10, 60 s; 1 and 2 threads
  python benchmarks/inference.py --models tiny --threads 2 --repeats 3
  python benchmarks/inference.py --seconds 10 --batch 8 --memory-tokens        # one length, no memory rows
  python benchmarks/inference.py --seconds 0.32 --depth 2 --repeats 1 --threads 1 --memory-tokens 64 --out-dir /tmp/inf
  python benchmarks/inference.py --from-json benchmarks/inference_cpu.json     # rewrite the tables only
"""

from __future__ import annotations

import argparse
import ctypes
import datetime as dt
import gc
import json
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from efficiency import (
    MEMORY_RESERVE_GIB,
    STATUS_OK,
    STATUS_OOM,
    STATUS_SKIPPED,
    Case,
    _available_gib,
    _is_memory_error,
    _proc_status_mib,
    _reset_peak_rss,
    _token_count,
    build_model,
    machine_description,
    markdown_table,
    model_label,
    plan_labels,
)

if TYPE_CHECKING:  # torch is imported where it is used, so that --help and argument errors are instant
    import torch

DEFAULT_SECONDS = (1.0, 1.5, 10.0, 60.0)
DEFAULT_MEMORY_TOKENS = (4096, 8192, 16384)
DEFAULT_OUT_DIR = Path(__file__).resolve().parent
ATTENTIONS = ("plain", "sdpa")
FRAMES_PER_SECOND = 100
PATCH = 16
MEL_BINS = 128
SCAN_EVENT = "ssamba::selective_scan"
"""Profiler range around every selective-scan computation inside the Mamba mixer."""
SCAN_REPEATS = 3
"""Profiled forwards per SSAMBA model and cell, and timed calls of the kernel alone; the min is kept."""
DIRECTIONS = {"none": 1, "v1": 2, "v2": 2}
"""Scans per Mamba layer for each bimamba variant."""
TIME_TARGETS = {10.0: 1.5, 1.5: 2.0}
"""Clip seconds -> the most ssamba-tiny's time may be, as a multiple of SSAST-tiny SDPA's (2 threads)."""
TARGET_SIZE, TARGET_THREADS = "tiny", 2
MEMORY_TARGET_TOKENS = 4096
SCAN_RATE_TARGET = 1.3
BYTES_PER_FLOAT = 4
GIB = 2**30


def default_batch(seconds: float) -> int:
    """Clips per forward when ``--batch`` is not given: 32 up to 2 s, 4 up to 20 s, else 1."""
    return 32 if seconds <= 2 else 4 if seconds <= 20 else 1


def clip_frames(seconds: float) -> int:
    """Frames of a clip of ``seconds``, cut to whole 16-frame patches."""
    return PATCH * math.floor(round(FRAMES_PER_SECOND * seconds, 6) / PATCH)


def seconds_text(seconds: float) -> str:
    return f"{seconds:g} s"


def build(family: str, size: str, attention: str | None, tokens: int, depth: int | None) -> torch.nn.Module:
    """The encoder in eval mode for an input of ``tokens`` patches (efficiency.py's models)."""
    case = Case(family, size, attention, tokens, device="cpu", depth=depth, repeats=0, budget_s=0.0,
                mem_limit_gib=0.0, scan_backend=None, threads=None)
    return build_model(case)[0]


def random_fbank(batch: int, tokens: int) -> torch.Tensor:
    """A random normalised fbank (batch, 2 x tokens, 128) (zero mean, SSAST's scale of 0.5)."""
    import torch

    return 0.5 * torch.randn(batch, 2 * tokens, MEL_BINS)


def timed_forward(model: torch.nn.Module, fbank: torch.Tensor) -> float:
    """Seconds of one inference forward."""
    import torch

    with torch.inference_mode():
        begin = time.perf_counter()
        model(fbank)
        return time.perf_counter() - begin


def _return_free_heap() -> None:
    """Give freed heap pages back to the system (glibc ``malloc_trim``), so that the next forward's
    peak resident memory counts what it allocates rather than what earlier forwards left cached."""
    gc.collect()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def forward_extra_mib(model: torch.nn.Module, fbank: torch.Tensor) -> tuple[float, float]:
    """Extra resident memory (MiB, VmHWM after minus VmRSS before) and seconds of one forward."""
    _return_free_heap()
    _reset_peak_rss()
    before_mib = _proc_status_mib("VmRSS")
    seconds = timed_forward(model, fbank)
    return _proc_status_mib("VmHWM") - before_mib, seconds


# ----------------------------------------------------------------------------- the scan inside and outside the model


def scan_shape(model: torch.nn.Module, batch: int, tokens_with_cls: int) -> dict[str, int]:
    """The selective scan's work in one forward of an SSAMBA ``model`` (from its config)."""
    config = model.config
    shape = {
        "depth": config.depth,
        "directions": DIRECTIONS[config.bimamba],
        "batch": batch,
        "length": tokens_with_cls,
        "d_inner": config.expand * config.embed_dim,
        "d_state": config.d_state,
    }
    shape["state_updates"] = math.prod(shape.values())
    return shape


def profiled_scan_seconds(model: torch.nn.Module, fbank: torch.Tensor) -> tuple[float, int, int]:
    """One profiled forward: summed CPU time (s) and count of the ``SCAN_EVENT`` ranges, and the
    output length (tokens including CLS)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.inference_mode():
        length = model(fbank).shape[1]
    scans = [event for event in prof.events() if event.name == SCAN_EVENT]
    return sum(event.cpu_time_total for event in scans) * 1e-6, len(scans), length


def standalone_scan_seconds(shape: dict[str, int], repeats: int) -> float:
    """Min time (s) of the fused kernel alone over one layer's scans (every direction), inputs of the
    in-model shape as ``benchmarks/fused_scan.py --mamba-layer`` makes them, under inference_mode."""
    import torch
    from fused_scan import make_inputs, scan

    settings = argparse.Namespace(batch=shape["batch"], dim=shape["d_inner"], state=shape["d_state"], dtype="float32",
                                  mamba_layer=True, layout="channels-last")
    inputs = make_inputs(settings, shape["length"])
    total = 0.0
    with torch.inference_mode():
        for reverse in (False, True)[: shape["directions"]]:
            settings.reverse = reverse
            scan(settings, inputs)  # warm-up
            times = []
            for _ in range(repeats):
                begin = time.perf_counter()
                scan(settings, inputs)
                times.append(time.perf_counter() - begin)
            total += min(times)
    return total


def scan_row(model: torch.nn.Module, label: str, fbank: torch.Tensor, fused_reason: str | None) -> dict[str, Any]:
    """In-model and standalone scan rates (state updates per second) of one SSAMBA model and input."""
    profiles = [profiled_scan_seconds(model, fbank) for _ in range(SCAN_REPEATS)]
    in_model_s, events, length = min(profiles)
    shape = scan_shape(model, fbank.shape[0], length)
    row: dict[str, Any] = {"model": label, **shape, "events": events}
    if events:
        row["in_model_s"] = in_model_s
        row["in_model_rate"] = shape["state_updates"] / in_model_s
    else:
        row["in_model_note"] = f"no '{SCAN_EVENT}' profiler ranges in the forward"
    if fused_reason is None:
        # the standalone time is for one layer's scans; the in-model count covers all layers
        row["standalone_s"] = shape["depth"] * standalone_scan_seconds(shape, SCAN_REPEATS)
        row["standalone_rate"] = shape["state_updates"] / row["standalone_s"]
    else:
        row["standalone_note"] = f"fused kernel unavailable: {fused_reason}"
    if "in_model_rate" in row and "standalone_rate" in row:
        row["standalone_over_in_model"] = row["standalone_rate"] / row["in_model_rate"]
    return row


# ----------------------------------------------------------------------------- measuring


def measure_cell(
    models: dict[str, torch.nn.Module], fbank: torch.Tensor, repeats: int, log: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """Warm up every model, then ``repeats`` rounds of one forward per model in turn; then one forward
    per model for its extra memory. Returns per label the times, their min/median and the memory."""
    results: dict[str, dict[str, Any]] = {}
    for label, model in models.items():
        results[label] = {"warmup_s": timed_forward(model, fbank), "times_s": []}
        log(f"  warm-up {label}: {results[label]['warmup_s']:.3f} s")
    for round_index in range(repeats):
        for label, model in models.items():
            results[label]["times_s"].append(timed_forward(model, fbank))
        times = ", ".join(f"{label} {result['times_s'][-1]:.3f} s" for label, result in results.items())
        log(f"  round {round_index + 1}/{repeats}: {times}")
    for label, model in models.items():
        results[label]["extra_mib"] = forward_extra_mib(model, fbank)[0]
        times = results[label]["times_s"]
        results[label].update(
            time_min_s=min(times), time_median_s=statistics.median(times), clips_per_s=fbank.shape[0] / min(times)
        )
    log("  forward extra memory: " + ", ".join(f"{label} {r['extra_mib']:.0f} MiB" for label, r in results.items()))
    return results


def run_speed(
    args: argparse.Namespace, batches: Sequence[int], fused_reason: str | None, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every (clip length, threads) cell: speed and memory rows, and scan rows of the SSAMBA models."""
    import torch

    speed_rows: list[dict[str, Any]] = []
    scan_rows: list[dict[str, Any]] = []
    plan = plan_labels(args.models, ATTENTIONS)
    for seconds, batch in zip(args.seconds, batches):
        frames = clip_frames(seconds)
        tokens = frames // 2
        clips = f"{seconds_text(seconds)} clips"
        log(f"{clips} ({frames} frames, {tokens} tokens), batch {batch}: building {len(plan)} models")
        torch.manual_seed(0)
        models = {model_label(*spec): build(*spec, tokens, args.depth) for spec in plan}
        fbank = random_fbank(batch, tokens)
        for threads in args.threads:
            torch.set_num_threads(threads)
            log(f"{clips}, batch {batch}, {threads} thread(s): warm-up, then alternating rounds: {args.repeats}")
            cell = {"seconds": seconds, "frames": frames, "tokens": tokens, "batch": batch, "threads": threads}
            for label, result in measure_cell(models, fbank, args.repeats, log).items():
                speed_rows.append(cell | {"model": label} | result)
            for (family, size, _), (label, model) in zip(plan, models.items()):
                if family == "ssamba":
                    row = cell | scan_row(model, label, fbank, fused_reason)
                    rates = f"{format_rate(row, 'in_model')} in the model, {format_rate(row, 'standalone')} standalone"
                    log(f"  scan in {label}: {rates}")
                    scan_rows.append(row)
        del models
    return speed_rows, scan_rows


def plain_attention_gib(size: str, tokens: int, batch: int = 1) -> float:
    """Memory of the two (batch, heads, tokens + 2, tokens + 2) matrices plain attention holds at once
    (scores and their softmax)."""
    from ssast_baseline import DEIT_SIZES, NUM_EXTRA_TOKENS

    heads = DEIT_SIZES[size][1]
    return 2 * batch * heads * (tokens + NUM_EXTRA_TOKENS) ** 2 * BYTES_PER_FLOAT / GIB


def run_memory(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Memory-only rows: one forward per model at batch 1 for each ``--memory-tokens``."""
    import torch

    size = args.models[0]
    threads = max(args.threads)
    torch.set_num_threads(threads)
    rows = []
    for tokens in args.memory_tokens:
        for family, attention in (("ssamba", None), ("ssast", "sdpa"), ("ssast", "plain")):
            label = model_label(family, size, attention)
            row: dict[str, Any] = {"tokens": tokens, "batch": 1, "threads": threads, "size": size, "model": label}
            row["status"] = STATUS_OK
            rows.append(row)
            needed, available = plain_attention_gib(size, tokens), _available_gib() - MEMORY_RESERVE_GIB
            if attention == "plain" and needed > available:
                message = f"attention matrices need {needed:.1f} GiB, {available:.1f} GiB available"
                row.update(status=STATUS_SKIPPED, message=message)
                log(f"memory {tokens} tokens {label}: skipped ({row['message']})")
                continue
            log(f"memory {tokens} tokens {label} ...")
            torch.manual_seed(0)
            model = build(family, size, attention, tokens, args.depth)
            try:
                row["extra_mib"], row["time_s"] = forward_extra_mib(model, random_fbank(1, tokens))
            except Exception as error:  # noqa: BLE001 -- running out of memory is a result, other errors are not
                if not _is_memory_error(error):
                    raise
                row.update(status=STATUS_OOM, message=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
            del model
            log(f"memory {tokens} tokens {label}: {format_memory_row(row)}")
    return rows


# ----------------------------------------------------------------------------- reporting


def format_rate(row: dict[str, Any], kind: str) -> str:
    """``1.23 G/s`` state updates per second, or why it is unavailable."""
    if f"{kind}_rate" in row:
        return f"{row[f'{kind}_rate'] / 1e9:.2f} G/s"
    return f"unavailable ({row[f'{kind}_note']})"


def format_memory_row(row: dict[str, Any]) -> str:
    if row["status"] == STATUS_OK:
        return f"{row['extra_mib']:,.0f} MiB ({row['time_s']:.2f} s)"
    return f"{row['status']} ({row['message']})"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def ratio_rows(speed_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell and size: ssamba time / ssast time for each attention, and the time target if any."""
    found = {(r["seconds"], r["threads"], r["model"]): r for r in speed_rows}
    rows = []
    for (seconds, threads, label), ours in found.items():
        if not label.startswith("ssamba-"):
            continue
        size = label.split("-", 1)[1]
        row: dict[str, Any] = {"seconds": seconds, "threads": threads, "size": size}
        for attention in ATTENTIONS:
            theirs = found.get((seconds, threads, model_label("ssast", size, attention)))
            if theirs:
                row[attention] = ours["time_min_s"] / theirs["time_min_s"]
        if size == TARGET_SIZE and threads == TARGET_THREADS and seconds in TIME_TARGETS and "sdpa" in row:
            row["target"] = TIME_TARGETS[seconds]
            row["met"] = row["sdpa"] <= row["target"]
        rows.append(row)
    return rows


def memory_target_rows(memory_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per token count of the memory rows: ssamba extra / SDPA extra and, from 4096 tokens, the target."""
    found = {(r["tokens"], r["model"]): r for r in memory_rows}
    rows = []
    for tokens in sorted({r["tokens"] for r in memory_rows}):
        size = memory_rows[0]["size"]
        ours = found[(tokens, model_label("ssamba", size, None))]
        sdpa = found[(tokens, model_label("ssast", size, "sdpa"))]
        if ours["status"] != STATUS_OK or sdpa["status"] != STATUS_OK:
            continue
        row: dict[str, Any] = {"tokens": tokens, "ratio": ours["extra_mib"] / max(sdpa["extra_mib"], 1.0)}
        if tokens >= MEMORY_TARGET_TOKENS and size == TARGET_SIZE:
            row["met"] = ours["extra_mib"] <= sdpa["extra_mib"]
        rows.append(row)
    return rows


def speed_tables(speed_rows: Sequence[dict[str, Any]], labels: Sequence[str]) -> list[str]:
    cells = list(dict.fromkeys((r["seconds"], r["batch"], r["tokens"], r["threads"]) for r in speed_rows))
    found = {(r["seconds"], r["threads"], r["model"]): r for r in speed_rows}
    header = ["clip", "batch", "tokens", "threads", *labels]

    def cell_text(seconds: float, threads: int, label: str, kind: str) -> str:
        row = found.get((seconds, threads, label))
        if row is None:
            return "-"
        if kind == "speed":
            return f"{row['clips_per_s']:.1f} ({row['time_min_s']:.3g} / {row['time_median_s']:.3g} s)"
        return f"{row['extra_mib']:,.0f}"

    def table(kind: str) -> list[str]:
        body = [
            [seconds_text(s), str(b), str(t), str(n), *(cell_text(s, n, label, kind) for label in labels)]
            for s, b, t, n in cells
        ]
        return markdown_table(header, body)

    return [
        "Clips/s from the min time (min / median seconds per forward):", "", *table("speed"), "",
        "Forward extra memory, MiB (peak resident set of one forward over the resident set before it):", "",
        *table("memory"),
    ]


def ratio_table(ratios: Sequence[dict[str, Any]]) -> list[str]:
    def target_text(row: dict[str, Any]) -> str:
        return f"<= {row['target']:g}x: {verdict(row['met'])}" if "target" in row else ""

    body = [
        [seconds_text(r["seconds"]), str(r["threads"]), f"ssamba-{r['size']}",
         *(f"{r[a]:.2f}x" if a in r else "-" for a in ("sdpa", "plain")), target_text(r)]
        for r in ratios
    ]
    return markdown_table(["clip", "threads", "model", "time / ssast (sdpa)", "time / ssast (plain)", "target"], body)


def memory_table(memory_rows: Sequence[dict[str, Any]]) -> list[str]:
    labels = list(dict.fromkeys(r["model"] for r in memory_rows))
    found = {(r["tokens"], r["model"]): r for r in memory_rows}
    targets = {r["tokens"]: r for r in memory_target_rows(memory_rows)}

    def target_text(tokens: int) -> list[str]:
        row = targets.get(tokens)
        if row is None:
            return ["-", ""]
        return [f"{row['ratio']:.2f}x", f"<= 1x: {verdict(row['met'])}" if "met" in row else ""]

    body = [
        [str(t), *(format_memory_row(found[(t, label)]) for label in labels), *target_text(t)]
        for t in sorted({r["tokens"] for r in memory_rows})
    ]
    return markdown_table(["tokens", *labels, "ssamba / sdpa", "target"], body)


def scan_table(scan_rows: Sequence[dict[str, Any]]) -> list[str]:
    def ratio_text(row: dict[str, Any]) -> str:
        if "standalone_over_in_model" not in row:
            return "-"
        ratio = row["standalone_over_in_model"]
        return f"{ratio:.2f}x (<= {SCAN_RATE_TARGET:g}x: {verdict(ratio <= SCAN_RATE_TARGET)})"

    body = [
        [seconds_text(r["seconds"]), str(r["threads"]), r["model"],
         f"{r['batch']} x {r['length']} x {r['d_inner']} x {r['d_state']}", f"{r['state_updates'] / 1e9:.3g}",
         format_rate(r, "in_model"), format_rate(r, "standalone"), ratio_text(r)]
        for r in scan_rows
    ]
    header = ["clip", "threads", "model", "B x L x d_inner x N", "G updates / forward", "in the model", "kernel alone",
              "kernel / model"]
    return markdown_table(header, body)


def write_report(report: dict[str, Any], out_dir: Path) -> tuple[Path, Path]:
    """Write OUT_DIR/inference_cpu.json and .md; returns their paths."""
    meta, speed_rows, memory_rows, scan_rows = report["meta"], report["speed"], report["memory"], report["scan"]
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "inference_cpu.json", out_dir / "inference_cpu.md"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    labels = list(dict.fromkeys(r["model"] for r in speed_rows))
    lines = [
        f"Command: `{meta['command']}`",
        "",
        (f"Machine: {meta['machine']}; torch threads {', '.join(map(str, meta['threads']))}; SSAMBA scan backend "
         f"`{meta['scan_backend']}`; fp32, torch.inference_mode, random weights; depth {meta['depth']}."),
        (f"Date: {meta['date']}; load average (1/5/15 min) before {meta['load_before']}, after {meta['load_after']}; "
         f"total wall time {meta['wall_min']:.1f} min."),
        "",
        (f"Every model of a (clip, threads) cell in one process, alternating: one warm-up each, then "
         f"rounds of one forward per model: {meta['repeats']}."),
        "",
        *speed_tables(speed_rows, labels),
    ]
    ratios = ratio_rows(speed_rows)
    if ratios:
        targets = f"targets for {TARGET_SIZE} at {TARGET_THREADS} threads"
        lines += ["", f"Time ratios, ssamba / ssast (below 1: SSAMBA is faster); {targets}:", ""]
        lines += ratio_table(ratios)
    if memory_rows:
        threads = memory_rows[0]["threads"]
        lines += ["", f"Forward extra memory at batch 1, {threads} thread(s) (MiB, seconds of that one forward):", ""]
        lines += memory_table(memory_rows)
    if scan_rows:
        lines += ["", f"Selective scan, state updates per second: inside the model (sum of the `{SCAN_EVENT}` profiler",
                  "ranges of one forward) and the fused kernel alone on the same shape (both directions):", ""]
        lines += scan_table(scan_rows)
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


# ----------------------------------------------------------------------------- command line


def _clip_seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or clip_frames(value) < PATCH:
        shortest = PATCH / FRAMES_PER_SECOND
        raise argparse.ArgumentTypeError(f"clip lengths must be at least {shortest:g} s (one 16-frame patch), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (see the module docstring for examples)."""
    summary, _, details = (__doc__ or "").partition("\n")
    parser = argparse.ArgumentParser(
        description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--seconds", type=_clip_seconds, nargs="+", default=list(DEFAULT_SECONDS),
        help="clip lengths in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--batch", type=_positive_int, nargs="+",
        help="clips per forward: one value for every length or one per --seconds (default: 32 up to 2 s, 4 up to 20 s, else 1)",
    )
    parser.add_argument(
        "--threads", type=_positive_int, nargs="+", default=[1, 2], help="torch thread counts (default: %(default)s)"
    )
    parser.add_argument(
        "--models", nargs="+", choices=("tiny", "small", "base"), default=["tiny", "small"],
        help="model sizes (default: tiny small)",
    )
    parser.add_argument(
        "--depth", type=_positive_int,
        help="override the depth of both model families (even); default: 24 Mamba / 12 transformer layers",
    )
    parser.add_argument(
        "--repeats", type=_positive_int, default=5, help="alternating rounds after the warm-up (default: %(default)s)"
    )
    parser.add_argument(
        "--memory-tokens", type=_token_count, nargs="*", default=list(DEFAULT_MEMORY_TOKENS),
        help="token counts of the memory-only rows, batch 1, first --models size; none: skip them (default: %(default)s)",
    )
    parser.add_argument(
        "--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where inference_cpu.json/.md go (default: benchmarks/)"
    )
    parser.add_argument("--from-json", type=Path, help="only rewrite the .json/.md from an earlier run's .json (no measuring)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.from_json:
        print("\n".join(str(path) for path in write_report(json.loads(args.from_json.read_text()), args.out_dir)))
        return 0
    if args.depth is not None and args.depth % 2:
        parser.error(f"--depth must be even (SSAMBA pairs layers), got {args.depth}")
    if args.batch is not None and len(args.batch) not in (1, len(args.seconds)):
        parser.error(f"--batch takes one value or one per --seconds ({len(args.seconds)}), got {len(args.batch)}")
    if args.batch is None:
        batches = [default_batch(seconds) for seconds in args.seconds]
    else:
        batches = args.batch * (len(args.seconds) // len(args.batch))
    import torch

    from ssamba.models.fused_scan import fused_status
    from ssamba.models.scan import resolve_backend

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log("loading the fused CPU kernels (compiled on first use) ...")
    fused_reason = fused_status()
    meta: dict[str, Any] = {
        "command": shlex.join(["python", os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        "torch": torch.__version__,
        "threads": args.threads,
        "scan_backend": resolve_backend(None, torch.device("cpu")),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "models": args.models,
        "depth": args.depth or "default",
        "repeats": args.repeats,
    }
    previous_threads = torch.get_num_threads()
    begin = time.perf_counter()
    try:
        speed_rows, scan_rows = run_speed(args, batches, fused_reason, log)
        memory_rows = run_memory(args, log)
    finally:
        torch.set_num_threads(previous_threads)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["wall_min"] = (time.perf_counter() - begin) / 60
    paths = write_report({"meta": meta, "speed": speed_rows, "memory": memory_rows, "scan": scan_rows}, args.out_dir)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
