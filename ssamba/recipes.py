"""Downstream recipes: run a dataset's whole fine-tuning protocol and print its final table.

The ``shell/finetune_<dataset>.sh`` launchers call ``python -m ssamba.recipes <dataset> ...``. Each
recipe is a prepared folder (``finetune/<dataset>/prepare.sh SOURCE_DIR OUT_DIR``: manifest.csv,
stats.json) and a config (``configs/finetune/<dataset>.yaml``); this module builds the
``ssamba finetune`` command (torchrun for several processes), runs it with ``--resume auto`` (a
rerun continues), and prints per-fold and mean numbers from ``RUN/results.json``.

examples:
  python -m ssamba.recipes esc50 --pretrained exported/ssamba-tiny --data data/esc50
  python -m ssamba.recipes esc50 --pretrained amba_base_400.pth --nproc-per-node 4 train.select=fold_average
  python -m ssamba.recipes speechcommands_v2 --pretrained none --model-size small    # from-scratch control
  python -m ssamba.recipes esc50 --pretrained exported/ssamba-tiny --fold 1 train.epochs=1  # one fold only
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "configs" / "finetune"
RESULTS_FILE = "results.json"
SIZES = ("tiny", "small", "base")
TABLE_METRICS = ("accuracy", "mAP")
SHORT = {"accuracy": "acc", "mAP": "mAP"}


@dataclass(frozen=True)
class RecipeInfo:
    """What a launcher needs to know about a dataset besides its config."""

    name: str
    title: str
    protocol: str
    folds: int | None
    """Cross-validation folds of the protocol (None: official train/valid/test split)."""
    prepared_stats: bool
    """Normalise with the statistics prepare.sh computed (no published ones for this dataset)."""

    @property
    def config(self) -> Path:
        return CONFIG_DIR / f"{self.name}.yaml"


RECIPES: dict[str, RecipeInfo] = {r.name: r for r in (
    RecipeInfo("esc50", "ESC-50", "5-fold cross-validation on the official folds; mean accuracy", 5, False),
    RecipeInfo("speechcommands_v2", "Speech Commands V2 (35 words)",
               "official validation_list/testing_list split; test accuracy of the model best on valid", None, False),
    RecipeInfo("speechcommands_v1", "Speech Commands V1 (30 words)",
               "official validation_list/testing_list split; test accuracy of the model best on valid", None, False),
    RecipeInfo("audioset_20k", "AudioSet-20K", "balanced train (valid: a held-out 10 %), eval segments as test; mAP", None, False),
    RecipeInfo("voxceleb1", "VoxCeleb1 speaker identification", "iden_split.txt train/valid/test, 1,251 speakers; accuracy", None, True),
    RecipeInfo("iemocap", "IEMOCAP emotion (4 classes)", "leave-one-session-out 5-fold cross-validation; mean accuracy", 5, True),
    RecipeInfo("vggsound", "VGGSound", "vggsound.csv train (valid: a held-out 10 %) / test; accuracy and mAP", None, True),
    RecipeInfo("epic_sounds", "EPIC-SOUNDS", "train annotations (valid: a held-out 10 % of videos), validation annotations as test; top-1 accuracy", None, True),
    RecipeInfo("dcase2025_task1", "DCASE2025 Task 1 (TAU22 Mobile, 25 % split)",
               "split25 for training (valid: held-out locations), the development test split as test; macro class accuracy per device", None, True),
    RecipeInfo("urban8k_per_second", "UrbanSound8K 60 s concatenations, one label per second",
               "10-fold cross-validation on the official folds; mean per-second accuracy", 10, False),
)}


class RecipeError(ValueError):
    """A launcher argument or prepared folder is not usable; the message says what to do."""


def fold_manifest(manifest: Path, fold: str, out: Path) -> Path:
    """A copy of a cross-validation manifest with ``fold`` as the test split and the rest as train."""
    with open(manifest, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = [c for c in (reader.fieldnames or []) if c not in ("fold", "split")]
        rows = list(reader)
    if not rows or "fold" not in rows[0]:
        raise RecipeError(f"{manifest}: --fold needs a manifest with a fold column")
    folds = sorted({r["fold"] for r in rows})
    if fold not in folds:
        raise RecipeError(f"--fold {fold}: {manifest} has folds {', '.join(folds)}")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*columns, "split"])
    for row in rows:
        writer.writerow([*(row[c] for c in columns), "test" if row["fold"] == fold else "train"])
    out.parent.mkdir(parents=True, exist_ok=True)
    # the copy lives in the run directory: relative paths must keep pointing into the prepared folder
    text = _absolute_paths(buffer.getvalue(), manifest.parent)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


def _absolute_paths(text: str, base: Path) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    index = rows[0].index("path")
    for row in rows[1:]:
        if not Path(row[index]).is_absolute():
            row[index] = str((base / row[index]).resolve())
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def finetune_command(recipe: RecipeInfo, args: argparse.Namespace, run_dir: Path, manifest: Path) -> list[str]:
    """The argument list of the ``ssamba finetune`` run (no shell involved)."""
    overrides = [f"run.dir={run_dir}", f"data.manifest={manifest}", f"model.pretrained={args.pretrained}"]
    if args.model_size:
        overrides.append(f"model.preset=ssamba-{args.model_size}")
    if args.fold is not None:
        overrides.append("data.folds=null")
        if recipe.folds is not None:
            overrides.append("train.select=best")
    stats_file = args.data / "stats.json"
    if args.stats == "prepared" or (args.stats == "auto" and recipe.prepared_stats):
        if not stats_file.is_file():
            raise RecipeError(f"{stats_file} is missing: run finetune/{recipe.name}/prepare.sh first (its stage 3 writes it)")
        stats = json.loads(stats_file.read_text(encoding="utf-8"))
        overrides += [f"features.mean={stats['mean']!r}", f"features.std={stats['std']!r}"]
    overrides += args.overrides
    finetune = ["-m", "ssamba", "finetune", "--config", str(recipe.config), *overrides, "--resume", "auto"]
    if args.nproc_per_node > 1:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc_per_node}", *finetune]
    return [sys.executable, *finetune]


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{100.0 * float(value):.2f}"


def results_table(recipe: RecipeInfo, results: dict[str, Any]) -> str:
    """The final table (percentages): per fold and mean +- std, or the single run's valid/test."""
    lines = [f"{recipe.title}: {recipe.protocol}"]
    header = f"{'':<12}" + "".join(f"{'valid ' + SHORT[m]:>12}{'test ' + SHORT[m]:>12}" for m in TABLE_METRICS)
    if "folds" in results:
        lines.append(header)
        for name, fold in results["folds"].items():
            valid, test = fold.get("valid") or {}, fold.get("test") or {}
            lines.append(f"{name:<12}" + "".join(f"{_number(valid.get(m)):>12}{_number(test.get(m)):>12}" for m in TABLE_METRICS))
        if "test_mean" in results:
            mean, std = results["test_mean"], results["test_std"]
            lines.append(f"{'mean +- std':<12}" + "".join(
                f"{'':>12}{_number(mean.get(m)) + ' +- ' + _number(std.get(m)):>12}" for m in TABLE_METRICS))
        if "fold_average" in results:
            fa = results["fold_average"]
            lines.append(f"SSAST fold-average rule (epoch {fa['epoch']}, selected on the test folds): accuracy "
                         f"{_number(fa['mean']['accuracy'])} +- {_number(fa['std']['accuracy'])}")
    else:
        lines.append(header)
        valid, test = results.get("valid") or {}, results.get("test") or {}
        lines.append(f"{'run':<12}" + "".join(f"{_number(valid.get(m)):>12}{_number(test.get(m)):>12}" for m in TABLE_METRICS))
    return "\n".join(lines)


def macro_accuracy(true: list[str], predicted: list[str]) -> float:
    """Mean over the classes present in ``true`` of the share of their clips predicted right (DCASE's metric)."""
    classes = sorted(set(true))
    per_class = [sum(p == c for t, p in zip(true, predicted) if t == c) / sum(t == c for t in true) for c in classes]
    return sum(per_class) / len(per_class)


def device_table(devices: list[str], true: list[str], predicted: list[str]) -> str:
    """DCASE's table: macro class accuracy overall and per recording device (real a-c, simulated s1-s6)."""
    names = sorted(set(devices), key=lambda d: (d[0] == "s", d))
    cells = {"all": macro_accuracy(true, predicted)}
    for device in names:
        pick = [i for i, d in enumerate(devices) if d == device]
        cells[device] = macro_accuracy([true[i] for i in pick], [predicted[i] for i in pick])
    header = "".join(f"{name:>8}" for name in cells)
    return "macro class accuracy (%) by device\n" + header + "\n" + "".join(f"{100 * v:>8.2f}" for v in cells.values())


def dcase_device_report(model_dir: Path, manifest: Path) -> str:
    """Score the selected classifier (``RUN/model``) on the manifest's test clips, clip by clip."""
    import torch

    from ssamba.data.labelled import read_labelled
    from ssamba.interop.classifier import load_classifier
    from ssamba.interop.predict import predict_file

    model = load_classifier(model_dir)
    test = read_labelled(manifest).subset(split="test")
    devices, true, predicted, skipped = [], [], [], 0
    for clip in test.clips:
        try:
            scores = predict_file(model, clip.path, torch.device("cpu")).scores
        except ValueError:
            skipped += 1
            continue
        devices.append(clip.path.stem.rsplit("-", 1)[-1])
        true.append(clip.labels[0])
        predicted.append(model.classes[int(scores.argmax())])
    if not true:
        raise RecipeError(f"{manifest}: no readable test clip to score")
    return device_table(devices, true, predicted) + (f"\n({skipped} unreadable test clips skipped)" if skipped else "")


def build_parser(recipe: RecipeInfo) -> argparse.ArgumentParser:
    name = recipe.name
    parser = argparse.ArgumentParser(
        prog=f"shell/finetune_{name}.sh",
        description=f"{recipe.title}: {recipe.protocol}.\nConfig: configs/finetune/{name}.yaml; data from finetune/{name}/prepare.sh.",
        epilog=(f"examples:\n  shell/finetune_{name}.sh --pretrained exported/ssamba-tiny --data data/{name}\n"
                f"  shell/finetune_{name}.sh --pretrained amba_base_400.pth --nproc-per-node 4 optim.lr=5e-5\n"
                f"  shell/finetune_{name}.sh --pretrained none --model-size tiny      # random-init control"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--pretrained", required=True, help="encoder checkpoint (export dir, run, .pth) or 'none' (random init)")
    parser.add_argument("--data", type=Path, default=None, help=f"prepared folder with manifest.csv (default data/{name})")
    parser.add_argument("--exp-dir", type=Path, default=None, help=f"run directory (default exp/finetune/{name})")
    parser.add_argument("--nproc-per-node", type=int, default=1, help="training processes (torchrun) (default 1)")
    parser.add_argument("--model-size", choices=SIZES, default=None,
                        help="encoder preset ssamba-SIZE (required with --pretrained none; checked against a checkpoint)")
    parser.add_argument("--fold", default=None, help="run only this cross-validation fold (it becomes the test split)")
    parser.add_argument("--stats", choices=("auto", "config", "prepared"), default="auto",
                        help="normalisation: the config's published statistics, or prepare.sh's stats.json "
                             "(auto: prepared only where none are published)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides passed to ssamba finetune")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in RECIPES:
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(f"usage: python -m ssamba.recipes {{{','.join(RECIPES)}}} --pretrained PATH [options]\n\n{__doc__}",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    recipe = RECIPES[argv[0]]
    args = build_parser(recipe).parse_args(argv[1:])
    args.data = args.data or Path("data") / recipe.name
    run_dir = args.exp_dir or Path("exp") / "finetune" / recipe.name
    try:
        if args.nproc_per_node < 1:
            raise RecipeError(f"--nproc-per-node must be >= 1, got {args.nproc_per_node}")
        manifest = args.data / "manifest.csv"
        if not manifest.is_file():
            raise RecipeError(f"{manifest} is missing: run finetune/{recipe.name}/prepare.sh SOURCE_DIR {args.data} first")
        if args.fold is not None:
            if recipe.folds is None:
                raise RecipeError(f"--fold: {recipe.name} has an official split, not cross-validation folds")
            run_dir = run_dir / f"fold-{args.fold}"
            manifest = fold_manifest(manifest, args.fold, run_dir / "manifest.csv")
        command = finetune_command(recipe, args, run_dir, manifest)
    except RecipeError as error:
        print(f"finetune_{recipe.name}: error: {error}", file=sys.stderr)
        return 2
    print("== " + " ".join(command[1:]), flush=True)
    status = subprocess.run(command, check=False).returncode
    if status != 0:
        return status
    results_path = run_dir / RESULTS_FILE
    if not results_path.is_file():
        print(f"== no {results_path} yet (stopped by train.max_minutes?); rerun the same command to continue")
        return 0
    print()
    print(results_table(recipe, json.loads(results_path.read_text(encoding="utf-8"))))
    if recipe.name == "dcase2025_task1":
        print(dcase_device_report(run_dir / "model", manifest))
    print(f"\nresults: {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
