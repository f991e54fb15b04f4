"""Open-audio benchmark: probe a pretrained encoder, the same architecture at random init and the
log-mel baseline on tasks A, B, C over several seeds, and write one table (JSON + Markdown).

examples:
  python -m ssamba.openaudio.benchmark probes --export exp/open_audio/export --probes data/open_audio/probes \\
      --out exp/open_audio/probe --seeds 0 1 2 --layer all
  python -m ssamba.openaudio.benchmark summarise --probe-dir exp/open_audio/probe --run exp/open_audio/run \\
      --corpus-report data/open_audio/full/report.json --json benchmarks/open_audio_cpu.json \\
      --markdown exp/open_audio/table.md

Every (task, seed) is one ``ssamba probe`` call with the three encoders (embeddings are cached, so
seeds after the first only re-embed the random encoder, whose weights the seed draws). A task's
score for one seed is its test accuracy (B: the mean over its 5 grouped folds); the table gives the
mean and the sample standard deviation over seeds, in percent.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ssamba.defaults import PROBE_POOLINGS

TASKS = {"A": "A_instrument", "B": "B_foley", "C": "C_keywords"}
TASK_NAMES = {"A": "instrument family (11)", "B": "0 A.D. Foley (10)", "C": "TTS keywords (28)"}
ENCODERS = ("pretrained", "random", "logmel")
HEADLINE_SPLIT = "test"


def random_spec(export: Path) -> str:
    """``random:PRESET:field=value,...`` for the architecture of an exported encoder."""
    from ssamba.models.encoder import available_presets, preset_config

    encoder = json.loads((export / "config.json").read_text())["encoder"]
    best: tuple[int, str, dict[str, Any]] | None = None
    for preset in available_presets():
        reference = preset_config(preset).to_dict()
        diff = {k: v for k, v in encoder.items() if k != "scan_backend" and reference.get(k) != v}
        if best is None or len(diff) < best[0]:
            best = (len(diff), preset, diff)
    assert best is not None
    _, preset, diff = best
    for key, value in diff.items():
        if isinstance(value, (list, dict)):
            raise ValueError(f"{export}: field {key}={value!r} cannot be written as a random: override")
    overrides = ",".join(f"{k}={json.dumps(v)}" for k, v in sorted(diff.items()))
    return f"random:{preset}" + (f":{overrides}" if overrides else "")


def run_probes(export: Path, probes: Path, out: Path, seeds: list[int], *, layers: list[str], pooling: str,
               cache: Path | None, tasks: list[str], device: str = "cpu") -> None:
    """One ``ssamba probe`` per task and seed, results in ``out/<task>-seed<N>.json``."""
    from ssamba.cli import main as cli_main

    spec = random_spec(export)
    print(f"random-init control: {spec}")
    for task in tasks:
        manifest = probes / TASKS[task] / "manifest.csv"
        if not manifest.exists():
            raise FileNotFoundError(f"{manifest}: task {task} is not prepared (finetune/open_audio_probes/{TASKS[task]}/prepare.sh)")
        for seed in seeds:
            target = out / f"{task}-seed{seed}.json"
            if target.exists():
                continue
            argv = ["probe", "--encoder", str(export), "--encoder", spec, "--encoder", "logmel",
                    "--manifest", str(manifest), "--seed", str(seed), "--layer", *layers, "--pooling", pooling,
                    "--output", str(target), "--device", device, "--quiet"]
            argv += ["--cache", str(cache)] if cache else []
            print(f"task {task}, seed {seed}: ssamba {' '.join(argv)}", flush=True)
            code = cli_main(argv)
            if code:
                raise RuntimeError(f"ssamba probe failed for task {task}, seed {seed} (exit {code})")


def _seed_score(encoder_result: dict[str, Any]) -> float:
    summary = encoder_result["summary"]
    if HEADLINE_SPLIT not in summary:
        raise ValueError(f"probe result of {encoder_result['encoder']} has no {HEADLINE_SPLIT!r} split: {sorted(summary)}")
    return 100.0 * float(summary[HEADLINE_SPLIT]["mean"])


def _task_recipe(report: dict[str, Any]) -> int | None:
    """The recipe version of the task folder a probe report read (None when the report names no manifest)."""
    from ssamba.openaudio.probes import built_recipe_version

    manifests = report.get("manifest") or []
    return built_recipe_version(Path(manifests[0]).parent) if manifests else None


def summarise(probe_dir: Path, *, run: Path | None, corpus_report: Path | None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Collect ``probe_dir/<task>-seed<N>.json`` into the benchmark table."""
    tasks: dict[str, Any] = {}
    for task in TASKS:
        files = sorted(probe_dir.glob(f"{task}-seed*.json"))
        if not files:
            continue
        values: dict[str, list[float]] = {name: [] for name in ENCODERS}
        for file in files:
            report = json.loads(file.read_text())
            for result in report["encoders"]:
                spec = result["encoder"]
                name = "logmel" if spec == "logmel" else "random" if spec.startswith("random:") else "pretrained"
                values[name].append(_seed_score(result))
        tasks[task] = {
            name: {"mean": round(float(np.mean(v)), 2), "std": round(float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, 2),
                   "values": [round(x, 2) for x in v]}
            for name, v in values.items() if v
        }
        tasks[task]["seeds"] = len(files)
        recipe = _task_recipe(report)  # the last probe report read names the task's manifest
        if recipe is not None:
            tasks[task]["recipe"] = recipe
    table: dict[str, Any] = {"tasks": tasks}
    if corpus_report is not None and corpus_report.exists():
        report = json.loads(corpus_report.read_text())
        table["corpus_hours"] = report["hours"]
        table["corpus_hours_per_kind"] = report["hours_per_kind"]
    if run is not None:
        table.update(run_facts(run))
    table["machine"] = f"{platform.machine()}, {platform.processor() or platform.system()}"
    table.update(extra or {})
    return table


SESSION_BREAK_S = 600.0
"""A gap this long between two logged training records is a break between sessions of a resumed run."""


def training_wall_time(times: list[float]) -> float:
    """Seconds spent training, from the times of the logged training records: the gaps between
    consecutive records, leaving out breaks between the sessions of a resumed run (gaps over
    SESSION_BREAK_S), plus one median gap per session for the steps before its first record."""
    gaps = [b - a for a, b in zip(times, times[1:])]
    kept = [g for g in gaps if g < SESSION_BREAK_S]
    sessions = 1 + len(gaps) - len(kept)
    return sum(kept) + sessions * (float(np.median(kept)) if kept else 0.0)


def run_facts(run: Path) -> dict[str, Any]:
    """Steps, clips seen (steps x batch x accumulation, one process) and wall time of a pretraining run
    (summed over its sessions when it was resumed)."""
    import yaml

    from ssamba.train.metrics import read_metrics

    metrics = list(read_metrics(run / "metrics.jsonl"))
    records = [r for r in metrics if r.get("split") == "train"]
    if not records:
        return {"steps": 0, "clips_seen": 0, "wall_time_s": 0.0}
    config = yaml.safe_load((run / "config.yaml").read_text())
    steps = int(records[-1]["step"])
    facts: dict[str, Any] = {
        "steps": steps,
        "clips_seen": steps * int(config["data"]["batch_size"]) * int(config["optim"].get("accumulate", 1)),
        "wall_time_s": round(training_wall_time([float(r["time"]) for r in records]), 1),
    }
    evals = [r for r in metrics if r.get("split") == "eval"]
    if evals:
        facts["eval_acc_first_last"] = [round(float(evals[0]["acc"]), 4), round(float(evals[-1]["acc"]), 4)]
    return facts


def markdown(table: dict[str, Any]) -> str:
    """The table as Markdown: one row per task, mean +- std per encoder (test accuracy, %)."""
    lines = ["| task | pretrained | random init | log-mel | seeds |", "|---|---|---|---|---|"]
    for task, result in table["tasks"].items():
        cells = [f"{result[n]['mean']:.1f} ± {result[n]['std']:.1f}" if n in result else "-" for n in ENCODERS]
        lines.append(f"| {task}: {TASK_NAMES[task]} | " + " | ".join(cells) + f" | {result['seeds']} |")
    facts = [f"{key} {table[key]}" for key in ("corpus_hours", "steps", "clips_seen", "wall_time_s") if key in table]
    if facts:
        lines += ["", "Pretraining: " + ", ".join(facts) + "."]
    return "\n".join(lines) + "\n"


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssamba.openaudio.benchmark", description=__doc__.split("\n")[0],
                                     epilog=__doc__.split("\n", 2)[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True)
    probes = sub.add_parser("probes", help="run the probes")
    probes.add_argument("--export", type=Path, required=True, help="exported pretrained encoder")
    probes.add_argument("--probes", type=Path, required=True, help="folder with A_instrument/, B_foley/, C_keywords/")
    probes.add_argument("--out", type=Path, required=True)
    probes.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    probes.add_argument("--tasks", nargs="+", choices=sorted(TASKS), default=sorted(TASKS))
    probes.add_argument("--layer", nargs="+", default=["all"],
                        help="probe readout layer(s): last, all or a block number; several: chosen per fit on "
                             "validation")
    probes.add_argument("--pooling", default="mean", choices=PROBE_POOLINGS, help="probe readout pooling (ssamba probe's)")
    probes.add_argument("--cache", type=Path, default=None, help="embedding cache (default: ssamba probe's)")
    probes.add_argument("--device", default="cpu", help="torch device for embedding (cpu, cuda)")
    summary = sub.add_parser("summarise", help="collect the probe results into the table")
    summary.add_argument("--probe-dir", type=Path, required=True)
    summary.add_argument("--run", type=Path, default=None, help="pretraining run folder (steps, clips, wall time)")
    summary.add_argument("--corpus-report", type=Path, default=None)
    summary.add_argument("--json", type=Path, required=True)
    summary.add_argument("--markdown", type=Path, default=None)
    summary.add_argument("--extra", default="{}", help="JSON object merged into the table (budget, config, readout)")
    args = parser.parse_args(argv)
    try:
        if args.step == "probes":
            run_probes(args.export, args.probes, args.out, args.seeds, layers=args.layer, pooling=args.pooling,
                       cache=args.cache, tasks=args.tasks, device=args.device)
            return 0
        table = summarise(args.probe_dir, run=args.run, corpus_report=args.corpus_report, extra=json.loads(args.extra))
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(table, indent=2) + "\n")
    text = markdown(table)
    if args.markdown:
        args.markdown.write_text(text)
    print(text, end="")
    print(f"table: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
