"""Inference time and peak memory of SSAMBA encoders against an SSAST-style transformer, by token count.

For every token count and model, one fresh subprocess builds the model, makes a random fbank of
(batch, 2 * tokens, 128) frames (16x16 patches, stride 16: tokens = 8 * frames / 16), runs one
warm-up forward and then up to ``--repeats`` timed forwards (fp32, ``torch.no_grad``) within the
per-case time budget, and reports the minimum / median time and the peak memory:

* CPU: the process's peak resident set (VmHWM, reset after the model and input are built) and the
  forward's extra memory over the resident set before it. Each case's address space (RLIMIT_AS) is
  capped at ``--mem-limit-gib`` or at the memory available when it starts less 1 GiB, whichever is
  smaller, so a case that does not fit fails with "OOM" instead of pushing the machine into the
  kernel's OOM killer; a case killed by the kernel is reported the same way.
* CUDA: ``torch.cuda.max_memory_allocated`` (weights, input and activations, as SSAMBA measured it)
  and CUDA-event timing.

Models: ``ssamba-{size}`` (the pretraining preset, 24 Mamba layers) and ``ssast-{size}`` (DeiT:
12 layers, CLS + distillation token) with plain softmax attention (``plain``, the attention matrix
is materialised, as SSAST computes it) and with PyTorch's ``scaled_dot_product_attention`` (``sdpa``).
Once a model runs out of memory or time at some size, its larger sizes are skipped, and so is a
size whose forward time, extrapolated from the smaller sizes, leaves no room for a warm-up and one
timed run within the budget.

Writes OUT_DIR/efficiency_{device}.json (raw results), .md (tables, ratios, targets) and .png (plot).

Examples:
  python benchmarks/efficiency.py                                   # tiny + small, 512 .. 32768 tokens
  python benchmarks/efficiency.py --models tiny --sizes 512 4096 16384 --repeats 3
  python benchmarks/efficiency.py --sizes 64 128 --models tiny --depth 2 --out-dir /tmp/eff   # smoke test
  python benchmarks/efficiency.py --from-json benchmarks/efficiency_cpu.json     # redraw the tables and plot
  python benchmarks/efficiency.py --device cuda --sizes 1024 8192 22528 --mem-limit-gib 0
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import resource
import shlex
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used, so that --help and argument errors are instant
    import torch

DEFAULT_SIZES = (512, 1024, 2048, 4096, 8192, 16384, 32768)
DEFAULT_OUT_DIR = Path(__file__).resolve().parent
BATCH = 2
MEL_BINS = 128

TOKEN_MULTIPLE = 8
"""128 mel bins give 8 frequency rows of patches, so token counts are multiples of 8."""
SETUP_ALLOWANCE_S = 120.0
"""Time a case process may spend on imports and model building on top of its budget."""
TARGET_TOKENS = 16384
TARGET_SPEEDUP = 4.0
TARGET_MEMORY_RATIO = 10.0
MIB = 2**20
MEMORY_RESERVE_GIB = 1.0
"""CPU: a case may use at most the memory available when it starts minus this (other processes share the machine)."""
MEMORY_ERROR_MARKERS = ("can't allocate memory", "out of memory", "not enough memory", "cannot allocate memory")
STATUS_OK, STATUS_OOM, STATUS_BUDGET, STATUS_ERROR, STATUS_SKIPPED = "ok", "oom", "budget", "error", "skipped"


@dataclass
class Case:
    """One (model, token count) measurement, run in its own subprocess."""

    family: str
    """``ssamba`` or ``ssast``."""
    size: str
    attention: str | None
    tokens: int
    device: str
    depth: int | None
    repeats: int
    budget_s: float
    mem_limit_gib: float
    scan_backend: str | None
    threads: int | None

    @property
    def label(self) -> str:
        return model_label(self.family, self.size, self.attention)


def model_label(family: str, size: str, attention: str | None) -> str:
    """Display name: ``ssamba-tiny``, ``ssast-tiny (plain)``, ``ssast-small (sdpa)``."""
    return f"{family}-{size}" + (f" ({attention})" if attention else "")


# ----------------------------------------------------------------------------- the case subprocess


def build_model(case: Case) -> tuple[torch.nn.Module, str | None]:
    """The model of ``case`` in eval mode on its device, and the scan backend it uses (None for SSAST)."""
    import torch
    from ssast_baseline import FRAMES_PER_TOKEN, TransformerEncoder, transformer_config

    frames = case.tokens * FRAMES_PER_TOKEN
    device = torch.device(case.device)
    if case.family == "ssamba":
        from ssamba.models.encoder import AudioMambaEncoder, preset_config
        from ssamba.models.scan import resolve_backend

        overrides: dict[str, Any] = {"target_length": frames, "scan_backend": case.scan_backend}
        if case.depth is not None:
            overrides["depth"] = case.depth
        model = AudioMambaEncoder(preset_config(f"ssamba-{case.size}", **overrides))
        backend: str | None = resolve_backend(case.scan_backend, device)
    else:
        kwargs = {} if case.depth is None else {"depth": case.depth}
        model = TransformerEncoder(transformer_config(case.size, case.tokens, attention=case.attention or "plain", **kwargs))
        backend = None
    return model.eval().to(device), backend


def _proc_status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _available_gib() -> float:
    """MemAvailable of /proc/meminfo in GiB: what can be allocated without swapping or the OOM killer."""
    with open("/proc/meminfo") as info:
        for line in info:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def _reset_peak_rss() -> None:
    """Reset VmHWM to the current resident set (Linux: write 5 to /proc/self/clear_refs)."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def _limit_address_space(extra_gib: float) -> None:
    """Cap the address space at its current size plus ``extra_gib`` (so allocations beyond fail cleanly)."""
    limit = int((_proc_status_mib("VmSize") * MIB) + extra_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))


def _is_memory_error(error: BaseException) -> bool:
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    return isinstance(error, RuntimeError) and any(m in str(error).lower() for m in MEMORY_ERROR_MARKERS)


def _timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """A function that runs a callable once and returns its duration in seconds on ``device``."""
    import torch

    if device.type == "cuda":

        def cuda_time(fn: Callable[[], Any]) -> float:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize(device)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            return start.elapsed_time(end) / 1000.0

        return cuda_time

    def cpu_time(fn: Callable[[], Any]) -> float:
        begin = time.perf_counter()
        fn()
        return time.perf_counter() - begin

    return cpu_time


def run_case(case: Case) -> dict[str, Any]:
    """Measure one case in this process (meant to be a fresh subprocess); returns the result record."""
    import torch
    from ssast_baseline import FRAMES_PER_TOKEN

    if case.threads:
        torch.set_num_threads(case.threads)
    device = torch.device(case.device)
    torch.manual_seed(0)
    result: dict[str, Any] = {"label": case.label, "tokens": case.tokens, "status": STATUS_OK, "times_s": []}
    model, backend = build_model(case)
    result["scan_backend"] = backend
    result["params"] = sum(p.numel() for p in model.parameters())
    fbank = torch.randn(BATCH, case.tokens * FRAMES_PER_TOKEN, MEL_BINS, device=device)
    timed = _timer(device)

    def forward() -> None:
        with torch.no_grad():
            model(fbank)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before_mib = torch.cuda.memory_allocated(device) / MIB
    else:
        if case.mem_limit_gib > 0:
            result["mem_cap_gib"] = round(min(case.mem_limit_gib, _available_gib() - MEMORY_RESERVE_GIB), 2)
            _limit_address_space(result["mem_cap_gib"])
        _reset_peak_rss()
        before_mib = _proc_status_mib("VmRSS")
    deadline = time.perf_counter() + case.budget_s
    try:
        result["warmup_s"] = timed(forward)
        for _ in range(case.repeats):
            remaining = deadline - time.perf_counter()
            last = result["times_s"][-1] if result["times_s"] else result["warmup_s"]
            if last > remaining:
                break
            result["times_s"].append(timed(forward))
    except Exception as error:  # noqa: BLE001 -- every failure is reported in the table
        result["status"] = STATUS_OOM if _is_memory_error(error) else STATUS_ERROR
        result["message"] = f"{type(error).__name__}: {str(error).splitlines()[0][:300] if str(error) else ''}"
        return result
    if not result["times_s"]:
        result["status"] = STATUS_BUDGET
        result["message"] = f"warm-up took {result['warmup_s']:.1f} s, no time left for a timed run"
        return result
    peak_mib = torch.cuda.max_memory_allocated(device) / MIB if device.type == "cuda" else _proc_status_mib("VmHWM")
    result.update(
        time_min_s=min(result["times_s"]),
        time_median_s=statistics.median(result["times_s"]),
        peak_mib=peak_mib,
        extra_mib=peak_mib - before_mib,
    )
    return result


# ----------------------------------------------------------------------------- the driver


def _case_worker(case: dict[str, Any], connection: Connection) -> None:
    """Entry point of a case process: measure and send the result record back."""
    connection.send(run_case(Case(**case)))
    connection.close()


def run_case_subprocess(case: Case) -> dict[str, Any]:
    """Run ``case`` in a fresh process; turn crashes, kills and timeouts into result records.

    Processes come from a fork server that has imported torch but run nothing, so every case starts
    from the same clean state without paying for the torch import again.
    """
    context = multiprocessing.get_context("forkserver")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_case_worker, args=(dataclasses.asdict(case), sender), daemon=True)
    process.start()
    sender.close()
    base = {"label": case.label, "tokens": case.tokens, "times_s": []}
    timeout = case.budget_s + SETUP_ALLOWANCE_S
    try:
        if not receiver.poll(timeout):
            return base | {"status": STATUS_BUDGET, "message": f"killed after {timeout:.0f} s"}
        return receiver.recv()
    except EOFError:  # the process died without sending a result
        process.join()
        if process.exitcode == -signal.SIGKILL:  # on Linux almost always the kernel's OOM killer
            return base | {"status": STATUS_OOM, "message": "killed by SIGKILL (kernel OOM killer)"}
        return base | {"status": STATUS_ERROR, "message": f"case process exited with code {process.exitcode}"}
    finally:
        if process.is_alive():
            process.kill()
        process.join()
        receiver.close()


def plan_labels(models: Sequence[str], attentions: Sequence[str]) -> list[tuple[str, str, str | None]]:
    """(family, size, attention) of every model to run, SSAMBA first within each size."""
    plan: list[tuple[str, str, str | None]] = []
    for size in models:
        plan.append(("ssamba", size, None))
        plan.extend(("ssast", size, attention) for attention in attentions)
    return plan


def predicted_time_s(history: Sequence[tuple[int, float]], tokens: int) -> float | None:
    """Forward time at ``tokens`` extrapolated from earlier (tokens, seconds) of the same model.

    The growth exponent is the slope between the last two sizes on a log-log scale, clipped to
    [1, 2] (linear to quadratic), and 1 with one earlier size. Both models' local exponent only grows
    with the size, so this is an optimistic estimate: a case is never skipped that could have fit.
    """
    if not history:
        return None
    (last_tokens, last_s) = history[-1]
    exponent = 1.0
    if len(history) > 1:
        (prev_tokens, prev_s) = history[-2]
        exponent = min(max(math.log(last_s / prev_s) / math.log(last_tokens / prev_tokens), 1.0), 2.0)
    return last_s * (tokens / last_tokens) ** exponent


def run_all(args: argparse.Namespace, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Run every (size, model) case in order of increasing size.

    A model's larger sizes are skipped after it fails (OOM, budget, error) and when its
    extrapolated warm-up plus one timed run would not fit the per-case budget.
    """
    results: list[dict[str, Any]] = []
    failed_at: dict[str, str] = {}
    history: dict[str, list[tuple[int, float]]] = {}
    start = time.perf_counter()
    for tokens in sorted(args.sizes):
        for family, size, attention in plan_labels(args.models, args.attention):
            case = Case(family, size, attention, tokens, args.device, args.depth, args.repeats, args.case_budget_s, args.mem_limit_gib, args.scan_backend, args.threads)
            base = {"label": case.label, "tokens": tokens, "times_s": []}
            predicted = predicted_time_s(history.get(case.label, []), tokens)
            if case.label in failed_at:
                result = base | {"status": STATUS_SKIPPED, "message": failed_at[case.label]}
            elif args.total_budget_min and (time.perf_counter() - start) / 60 > args.total_budget_min:
                result = base | {"status": STATUS_BUDGET, "message": "total budget used up"}
            elif predicted is not None and 2 * predicted > case.budget_s:
                result = base | {"status": STATUS_BUDGET, "message": f"predicted {predicted:.0f} s per forward, warm-up + 1 run exceed {case.budget_s:g} s"}
            else:
                log(f"{case.label:22s} {tokens:6d} tokens ...")
                result = run_case_subprocess(case)
            if result["status"] == STATUS_OK:
                history.setdefault(case.label, []).append((tokens, result["time_min_s"]))
            elif result["status"] != STATUS_SKIPPED and case.label not in failed_at:
                reason = {STATUS_OOM: "OOM", STATUS_BUDGET: "over budget", STATUS_ERROR: "error"}[result["status"]]
                failed_at[case.label] = f"{reason} at {tokens} tokens"
            log(f"{case.label:22s} {tokens:6d} tokens: {format_time(result)} | {format_memory(result)}")
            results.append(result)
    return results


# ----------------------------------------------------------------------------- reporting


def _failure_text(result: dict[str, Any]) -> str:
    status = result["status"]
    if status == STATUS_OOM:
        return f"OOM (cap {result['mem_cap_gib']:g} GiB)" if "mem_cap_gib" in result else "OOM"
    if status == STATUS_BUDGET:
        return "skipped (budget)"
    if status == STATUS_SKIPPED:
        return f"skipped ({result['message']})"
    return f"error ({result.get('message', '')[:80]})"


def format_time(result: dict[str, Any]) -> str:
    """``min / median`` seconds, or the failure."""
    if result["status"] != STATUS_OK:
        return _failure_text(result)
    return f"{result['time_min_s']:.3g} / {result['time_median_s']:.3g} s (n={len(result['times_s'])})"


def format_memory(result: dict[str, Any]) -> str:
    """``peak (forward extra)`` MiB, or the failure."""
    if result["status"] != STATUS_OK:
        return _failure_text(result)
    return f"{result['peak_mib']:,.0f} ({result['extra_mib']:,.0f})"


def _by_key(results: Sequence[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    return {(r["label"], r["tokens"]): r for r in results}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def ratio_rows(results: Sequence[dict[str, Any]], models: Sequence[str], attentions: Sequence[str]) -> list[list[str]]:
    """Per size and SSAST variant: SSAST time / SSAMBA time and SSAST memory / SSAMBA memory."""
    found = _by_key(results)
    rows = []
    for size in models:
        for attention in attentions:
            ours, theirs = model_label("ssamba", size, None), model_label("ssast", size, attention)
            for tokens in sorted({r["tokens"] for r in results}):
                a, b = found.get((ours, tokens)), found.get((theirs, tokens))
                if not a or not b or a["status"] != STATUS_OK or b["status"] != STATUS_OK:
                    continue
                rows.append([
                    f"{ours} vs {theirs}",
                    str(tokens),
                    f"{b['time_min_s'] / a['time_min_s']:.2f}x",
                    f"{b['peak_mib'] / a['peak_mib']:.2f}x",
                    f"{b['extra_mib'] / max(a['extra_mib'], 1.0):.2f}x",
                ])
    return rows


def crossover_tokens(results: Sequence[dict[str, Any]], ours: str, theirs: str) -> int | None:
    """Smallest measured size from which ``ours`` is faster than ``theirs`` at every larger size
    (a size where ``theirs`` failed for lack of memory or time counts as ``ours`` being faster)."""
    found = _by_key(results)
    sizes = sorted(t for (label, t), r in found.items() if label == ours and r["status"] == STATUS_OK)
    crossing = None
    for tokens in sizes:
        other = found.get((theirs, tokens))
        if other is None:
            continue
        faster = other["status"] != STATUS_OK or found[(ours, tokens)]["time_min_s"] < other["time_min_s"]
        crossing = (crossing or tokens) if faster else None
    return crossing


def target_lines(results: Sequence[dict[str, Any]], size: str, attentions: Sequence[str]) -> list[str]:
    """Met / not met for the benchmark's targets, from the measured numbers."""
    found = _by_key(results)
    ours = model_label("ssamba", size, None)
    lines = []
    mine, plain = found.get((ours, TARGET_TOKENS)), found.get((model_label("ssast", size, "plain"), TARGET_TOKENS))
    if "plain" in attentions and mine and plain:
        if mine["status"] == STATUS_OK and plain["status"] == STATUS_OK:
            speed = plain["time_min_s"] / mine["time_min_s"]
            memory = plain["peak_mib"] / mine["peak_mib"]
            extra = plain["extra_mib"] / max(mine["extra_mib"], 1.0)
            lines.append(
                f"- {TARGET_TOKENS} tokens, {ours} vs SSAST plain attention: {speed:.2f}x faster "
                f"(target {TARGET_SPEEDUP:g}x: {'met' if speed >= TARGET_SPEEDUP else 'NOT met'}); "
                f"peak RSS {memory:.1f}x lower (target {TARGET_MEMORY_RATIO:g}x: {'met' if memory >= TARGET_MEMORY_RATIO else 'NOT met'}); "
                f"forward extra memory {extra:.1f}x lower."
            )
        else:
            lines.append(f"- {TARGET_TOKENS} tokens, {ours}: {format_time(mine)}; SSAST plain: {format_time(plain)}.")
    if "sdpa" in attentions:
        crossing = crossover_tokens(results, ours, model_label("ssast", size, "sdpa"))
        largest = max(r["tokens"] for r in results if r["label"] == ours and r["status"] == STATUS_OK)
        where = f"from {crossing} tokens on (largest size measured for it: {largest})" if crossing else "at no measured size"
        lines.append(f"- {ours} is faster than SSAST with SDPA {where}.")
    return lines


def machine_description() -> str:
    """CPU model, core count, RAM and torch version of this machine."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), cpu)
        with open("/proc/meminfo") as info:
            ram = f"{int(next(line for line in info if line.startswith('MemTotal')).split()[1]) / 2**20:.1f} GiB RAM"
    except OSError:
        ram = "RAM unknown"
    return f"{cpu}, {os.cpu_count()} logical CPUs, {ram}, torch {torch.__version__}"


def write_report(results: list[dict[str, Any]], meta: dict[str, Any], out_dir: Path) -> tuple[Path, Path, Path]:
    """Write the JSON results, the Markdown tables and the plot; returns their paths."""
    models, attentions = meta["models"], meta["attention"]
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"efficiency_{meta['device'].split(':')[0]}"
    json_path, md_path, png_path = stem.with_suffix(".json"), stem.with_suffix(".md"), stem.with_suffix(".png")
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")

    labels = list(dict.fromkeys(r["label"] for r in results))
    sizes = sorted({r["tokens"] for r in results})
    found = _by_key(results)
    memory_kind = "peak max_memory_allocated MiB (extra over weights+input)" if meta["device"].startswith("cuda") else "peak RSS MiB (forward extra over RSS before it)"
    lines = [
        f"Command: `{meta['command']}`",
        "",
        (f"Machine: {meta['machine']}; device {meta['device']}; torch threads {meta['threads']}; "
        f"SSAMBA scan backend `{meta['scan_backend']}`; batch {BATCH}, fp32, torch.no_grad."),
        (f"Date: {meta['date']}; load average (1/5/15 min) before {meta['load_before']}, after {meta['load_after']}; "
        f"total wall time {meta['wall_min']:.1f} min."),
        "",
        f"Time, min / median seconds of n timed forwards after one warm-up (budget {meta['case_budget_s']:g} s per case):",
        "",
        *markdown_table(["tokens", *labels], [[str(t)] + [format_time(found[(label, t)]) for label in labels] for t in sizes]),
        "",
        f"Memory, {memory_kind}:",
        "",
        *markdown_table(["tokens", *labels], [[str(t)] + [format_memory(found[(label, t)]) for label in labels] for t in sizes]),
    ]
    ratios = ratio_rows(results, models, attentions)
    if ratios:
        lines += ["", "SSAST / SSAMBA ratios (above 1: SSAMBA is faster / smaller):", ""]
        lines += markdown_table(["pair", "tokens", "time", "peak memory", "forward extra memory"], ratios)
    targets = [line for size in models for line in target_lines(results, size, attentions)]
    if targets:
        lines += ["", "Targets:", "", *targets]
    md_path.write_text("\n".join(lines) + "\n")
    plot(results, labels, png_path, title=f"{meta['device']}: {meta['machine']}", memory_label=memory_kind.split(" (")[0])
    return json_path, md_path, png_path


def plot(results: Sequence[dict[str, Any]], labels: Sequence[str], path: Path, title: str, memory_label: str) -> None:
    """Log-log time and memory against tokens, one line per model; failed sizes are not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axis, memory_axis) = plt.subplots(1, 2, figsize=(12, 4.8))
    for label in labels:
        ok = sorted((r for r in results if r["label"] == label and r["status"] == STATUS_OK), key=lambda r: r["tokens"])
        style = "-o" if label.startswith("ssamba") else ("--s" if "plain" in label else ":^")
        if ok:
            tokens = [r["tokens"] for r in ok]
            time_axis.plot(tokens, [r["time_min_s"] for r in ok], style, label=label)
            memory_axis.plot(tokens, [r["peak_mib"] for r in ok], style, label=label)
    for axis, ylabel in ((time_axis, "forward time, min (s)"), (memory_axis, memory_label)):
        axis.set_xscale("log", base=2)
        axis.set_yscale("log")
        axis.set_xlabel("tokens (patches per clip)")
        axis.set_ylabel(ylabel)
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(f"Batch {BATCH} fp32 inference; {title}", fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# ----------------------------------------------------------------------------- command line


def _token_count(text: str) -> int:
    value = int(text)
    if value <= 0 or value % TOKEN_MULTIPLE:
        raise argparse.ArgumentTypeError(f"token counts must be positive multiples of {TOKEN_MULTIPLE} (8 frequency rows of 16x16 patches), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (see the module docstring for examples)."""
    summary, _, details = (__doc__ or "").partition("\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=_token_count, nargs="+", default=list(DEFAULT_SIZES), help="token counts (default: %(default)s)")
    parser.add_argument("--models", nargs="+", choices=("tiny", "small", "base"), default=["tiny", "small"], help="model sizes (default: tiny small)")
    parser.add_argument("--attention", nargs="+", choices=("plain", "sdpa"), default=["plain", "sdpa"], help="SSAST attention variants (default: both)")
    parser.add_argument("--depth", type=int, help="override the depth of both model families (SSAMBA needs it even); default: 24 Mamba / 12 transformer layers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (default: cpu)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards after the warm-up (default: %(default)s)")
    parser.add_argument("--case-budget-s", type=float, default=600.0, help="time budget per case; fewer repeats, or 'skipped (budget)' (default: %(default)s)")
    parser.add_argument("--total-budget-min", type=float, help="stop starting new cases after this many minutes")
    parser.add_argument(
        "--mem-limit-gib", type=float, default=16.0,
        help="CPU: address-space cap per case over its size after setup, lowered to the available memory less 1 GiB; 0 = none (default: %(default)s)",
    )
    parser.add_argument("--scan-backend", help="SSAMBA selective-scan backend (default: $SSAMBA_SCAN or the automatic choice)")
    parser.add_argument("--threads", type=int, help="torch threads per case (default: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the .json/.md/.png go (default: benchmarks/)")
    parser.add_argument("--from-json", type=Path, help="only rewrite the .md and .png from an earlier run's .json (no measuring)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and write the report."""
    args = build_parser().parse_args(argv)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        print("\n".join(str(p) for p in write_report(saved["results"], saved["meta"], args.out_dir)))
        return 0
    if args.depth is not None and (args.depth <= 0 or args.depth % 2):
        raise SystemExit(f"--depth must be a positive even number (SSAMBA pairs layers), got {args.depth}")
    if args.repeats < 1:
        raise SystemExit(f"--repeats must be at least 1, got {args.repeats}")
    import torch

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: torch {torch.__version__} sees no CUDA device")
    from ssamba.models.scan import resolve_backend

    meta: dict[str, Any] = {
        "command": shlex.join(["python", os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description() if device.type == "cpu" else torch.cuda.get_device_name(device),
        "device": str(device),
        "threads": args.threads or torch.get_num_threads(),
        "scan_backend": resolve_backend(args.scan_backend, device),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "models": args.models,
        "attention": args.attention,
        "case_budget_s": args.case_budget_s,
    }
    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch"])
    begin = time.perf_counter()
    results = run_all(args, log=lambda message: print(message, file=sys.stderr, flush=True))
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["wall_min"] = (time.perf_counter() - begin) / 60
    paths = write_report(results, meta, args.out_dir)
    print("\n".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
