"""Pretraining-step throughput (clips/s) of an SSAMBA encoder per selective-scan backend, 1 and 2 processes.

One step is what pretraining does: the joint masked-patch objective of
:class:`ssamba.models.masked.MaskedPatchModel` in training mode (the original's two encoder passes
with independent cluster masks, ``mask_patch`` masked patches each), backward, and an AdamW update,
on a random fbank of (batch, 2 * patches, 128) frames.

For every backend and process layout, fresh processes build the model, run ``--warmup`` untimed
steps (the ``compiled`` backend compiles here), wait for each other, then time ``--steps`` steps
(``--ref-steps`` for the slow ``ref`` backend). Layouts: ``1`` = one process using all cores'
threads; ``2`` = two independent processes with cores/2 threads each running at the same time
(data-parallel training without the gradient all-reduce); clips/s is all clips over the slowest
process's time.

Writes OUT_DIR/backend_throughput_cpu.json and .md.

Examples:
  python benchmarks/backend_throughput.py                                   # ssamba-tiny, 512 patches, batch 2
  python benchmarks/backend_throughput.py --backends chunked fused --procs 1 2 --steps 5
  python benchmarks/backend_throughput.py --patches 64 --depth 2 --backends chunked --steps 1 --out-dir /tmp/tp
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

from efficiency import machine_description, markdown_table

DEFAULT_OUT_DIR = Path(__file__).resolve().parent
CPU_BACKENDS = ("ref", "chunked", "compiled", "fused")
MEL_BINS = 128
FRAMES_PER_PATCH = 2
"""128 mel bins give 8 rows of 16x16 patches, so patches = frames / 2."""
PATCH_MULTIPLE = 8
LEARNING_RATE = 1e-4
BARRIER_TIMEOUT_S = 900.0


@dataclass
class Job:
    """What each process of one (backend, layout) measurement runs."""

    size: str
    depth: int | None
    patches: int
    batch: int
    backend: str
    threads: int
    warmup: int
    steps: int
    mask_patch: int | None


def build_training_step(job: Job) -> tuple[Any, Any]:
    """(model, step function) for ``job``: the step runs one masked-patch objective update."""
    import torch

    from ssamba.models.encoder import AudioMambaEncoder, preset_config
    from ssamba.models.masked import (
        MaskedPatchModel,
        ObjectiveConfig,
        max_cluster_mask_patch,
    )

    overrides: dict[str, Any] = {"target_length": job.patches * FRAMES_PER_PATCH, "scan_backend": job.backend}
    if job.depth is not None:
        overrides["depth"] = job.depth
    encoder = AudioMambaEncoder(preset_config(f"ssamba-{job.size}", **overrides))
    mask_patch = job.mask_patch or min(ObjectiveConfig().mask_patch, max_cluster_mask_patch(encoder.num_patches))
    model = MaskedPatchModel(encoder, ObjectiveConfig(mask_patch=mask_patch, eval_mask_patch=mask_patch)).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
    fbank = torch.randn(job.batch, job.patches * FRAMES_PER_PATCH, MEL_BINS)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(fbank).loss.backward()
        optimizer.step()

    return model, step


def _worker(job_fields: dict[str, Any], barrier: Barrier, connection: Connection) -> None:
    """One process: warm up, wait for the others, time the steps, send the timings."""
    import torch

    job = Job(**job_fields)
    torch.set_num_threads(job.threads)
    torch.manual_seed(0)
    try:
        _, step = build_training_step(job)
        begin = time.perf_counter()
        for _ in range(job.warmup):
            step()
        warmup_s = time.perf_counter() - begin
        barrier.wait(BARRIER_TIMEOUT_S)
        step_times = []
        for _ in range(job.steps):
            begin = time.perf_counter()
            step()
            step_times.append(time.perf_counter() - begin)
        connection.send({"warmup_s": warmup_s, "step_s": step_times})
    except Exception as error:  # noqa: BLE001 -- reported in the table
        barrier.abort()
        connection.send({"error": f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"})
    finally:
        connection.close()


def measure(job: Job, processes: int, budget_s: float) -> dict[str, Any]:
    """Run ``processes`` concurrent workers of ``job``; returns clips/s and the per-process timings."""
    context = multiprocessing.get_context("forkserver")
    barrier = context.Barrier(processes)
    pipes = [context.Pipe(duplex=False) for _ in range(processes)]
    workers = [context.Process(target=_worker, args=(asdict(job), barrier, sender), daemon=True) for _, sender in pipes]
    for worker in workers:
        worker.start()
    deadline = time.perf_counter() + budget_s
    reports: list[dict[str, Any]] = []
    try:
        for receiver, sender in pipes:
            sender.close()
            if not receiver.poll(max(deadline - time.perf_counter(), 0.0)):
                return {"status": "budget", "message": f"not done within {budget_s:.0f} s"}
            reports.append(receiver.recv())
    except EOFError:
        return {"status": "error", "message": "a worker process died without reporting (killed?)"}
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.kill()
            worker.join()
    errors = [r["error"] for r in reports if "error" in r]
    if errors:
        return {"status": "error", "message": errors[0]}
    slowest = max(sum(r["step_s"]) for r in reports)
    return {
        "status": "ok",
        "clips_per_s": processes * job.steps * job.batch / slowest,
        "median_step_s": statistics.median(t for r in reports for t in r["step_s"]),
        "warmup_s": max(r["warmup_s"] for r in reports),
        "reports": reports,
    }


def available_backends() -> list[str]:
    """The CPU scan backends usable here."""
    from ssamba.models.scan import backend_status

    status = backend_status()
    return [name for name in CPU_BACKENDS if status.get(name) is None]


def _cell(result: dict[str, Any]) -> str:
    if result["status"] == "ok":
        return f"{result['clips_per_s']:.3g} ({result['median_step_s']:.3g} s)"
    if result["status"] == "budget":
        return "skipped (budget)"
    return f"error ({result['message'][:80]})"


def write_report(args: argparse.Namespace, results: dict[str, dict[int, dict[str, Any]]], meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write OUT_DIR/backend_throughput_cpu.{json,md}; returns the paths."""
    args.out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = args.out_dir / "backend_throughput_cpu.json", args.out_dir / "backend_throughput_cpu.md"
    json_path.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    cores = os.cpu_count() or 1
    header = ["backend", "steps timed"]
    header += [f"{p} proc x {max(cores // p, 1)} thread(s): clips/s (median s/step)" for p in args.procs]
    header += ["first step(s), s"]
    rows = []
    for backend, by_procs in results.items():
        warmups = [f"{r['warmup_s']:.1f}" for r in by_procs.values() if r["status"] == "ok"]
        rows.append([f"`{backend}`", str(meta["steps"][backend])] + [_cell(by_procs[p]) for p in args.procs] + [" / ".join(warmups) or "-"])
    lines = [
        f"Command: `{meta['command']}`",
        "",
        (f"Machine: {meta['machine']}. Date: {meta['date']}; load average (1/5/15 min) before {meta['load_before']}, "
        f"after {meta['load_after']}; total wall time {meta['wall_min']:.1f} min."),
        (f"Model: ssamba-{args.size}{'' if args.depth is None else f' (depth {args.depth})'}, {meta['params']:,} parameters with heads; "
        f"{args.patches} patches (fbank {args.batch}x{args.patches * FRAMES_PER_PATCH}x{MEL_BINS}), batch {args.batch}; "
        f"step = MaskedPatchModel joint objective (two encoder passes, {meta['mask_patch']} masked patches each) + backward + AdamW; "
        f"{args.warmup} untimed warm-up step(s) per process."),
        "",
        *markdown_table(header, rows),
    ]
    md_path.write_text("\n".join(lines) + "\n")
    return json_path, md_path


def _patch_count(text: str) -> int:
    value = int(text)
    if value <= 0 or value % PATCH_MULTIPLE:
        raise argparse.ArgumentTypeError(f"--patches must be a positive multiple of {PATCH_MULTIPLE} (8 frequency rows), got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser (see the module docstring for examples)."""
    summary, _, details = (__doc__ or "").partition("\n")
    parser = argparse.ArgumentParser(description=summary, epilog=details, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", nargs="+", choices=CPU_BACKENDS, help="scan backends (default: every one usable here)")
    parser.add_argument("--procs", nargs="+", type=int, default=[1, 2], help="process layouts to measure (default: 1 2)")
    parser.add_argument("--size", choices=("tiny", "small", "base"), default="tiny", help="SSAMBA size (default: tiny)")
    parser.add_argument("--depth", type=int, help="override the encoder depth (even)")
    parser.add_argument("--patches", type=_patch_count, default=512, help="patches per clip (default: %(default)s = 10.24 s)")
    parser.add_argument("--batch", type=int, default=2, help="clips per step and process (default: %(default)s)")
    parser.add_argument("--mask-patch", type=int, help="masked patches per pass (default: the objective's default, capped by the grid)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per process (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per process (default: %(default)s)")
    parser.add_argument("--ref-steps", type=int, default=1, help="timed steps for the slow 'ref' backend (default: %(default)s)")
    parser.add_argument("--budget-s", type=float, default=600.0, help="time limit per (backend, layout) measurement (default: %(default)s)")
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where the .json/.md go (default: benchmarks/)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every requested backend and layout and write the report."""
    args = build_parser().parse_args(argv)
    if args.depth is not None and (args.depth <= 0 or args.depth % 2):
        raise SystemExit(f"--depth must be a positive even number (SSAMBA pairs layers), got {args.depth}")
    for name in ("batch", "steps", "ref_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or any(p < 1 for p in args.procs):
        raise SystemExit("--warmup must be >= 0 and every --procs value >= 1")
    usable = available_backends()
    backends = args.backends or usable
    unusable = [b for b in backends if b not in usable]
    if unusable:
        from ssamba.models.scan import backend_status

        raise SystemExit("; ".join(f"backend {b!r} is unavailable: {backend_status()[b]}" for b in unusable))
    cores = os.cpu_count() or 1
    multiprocessing.get_context("forkserver").set_forkserver_preload(["torch"])
    probe = Job(args.size, args.depth, args.patches, args.batch, backends[0], cores, 0, 0, args.mask_patch)
    model, _ = build_training_step(probe)
    meta: dict[str, Any] = {
        "command": shlex.join(["python", os.path.relpath(__file__), *(sys.argv[1:] if argv is None else argv)]),
        "machine": machine_description(),
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "params": sum(p.numel() for p in model.parameters()),
        "mask_patch": model.config.mask_patch,
        "steps": {b: args.ref_steps if b == "ref" else args.steps for b in backends},
    }
    del model
    begin = time.perf_counter()
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for backend in backends:
        results[backend] = {}
        for processes in args.procs:
            threads = max(cores // processes, 1)
            job = Job(args.size, args.depth, args.patches, args.batch, backend, threads, args.warmup, meta["steps"][backend], args.mask_patch)
            print(f"{backend:9s} {processes} proc x {threads} thread(s) ...", file=sys.stderr, flush=True)
            results[backend][processes] = measure(job, processes, args.budget_s)
            print(f"{backend:9s} {processes} proc x {threads} thread(s): {_cell(results[backend][processes])}", file=sys.stderr, flush=True)
    meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    meta["wall_min"] = (time.perf_counter() - begin) / 60
    print("\n".join(str(p) for p in write_report(args, results, meta)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
