"""Training metrics: a JSONL file, TensorBoard scalars and a tqdm progress bar (rank 0 only).

:class:`MetricsLogger` writes one JSON object per line to ``RUN/metrics.jsonl``, e.g.
``{"step": 100, "split": "train", "loss": 3.2, "lr": 1e-4, "time": 1732368000.0}``, and the same
values as TensorBoard scalars ``<split>/<name>`` under ``RUN/tb``. When a run resumes from step
``s``, records of steps after ``s`` (written by the interrupted run after its last checkpoint) are
removed from both, so the logs read as one uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tb"
PROGRESS_INTERVAL_S = 0.5
LOG_FILE_PROGRESS_INTERVAL_S = 30.0
"""Progress bar refresh when stderr is a file (keeps logs short)."""


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics JSONL file."""
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def truncate_metrics(path: Path, last_step: int) -> None:
    """Drop records with ``step > last_step`` from a metrics file (atomic rewrite)."""
    if not path.exists():
        return
    kept = [record for record in read_metrics(path) if record.get("step", 0) <= last_step]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(record) + "\n" for record in kept)
    os.replace(tmp, path)


class RunningMean:
    """Means of named scalars since the last :meth:`pop`."""

    def __init__(self) -> None:
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def add(self, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._sums[name] = self._sums.get(name, 0.0) + float(value)
            self._counts[name] = self._counts.get(name, 0) + 1

    def pop(self) -> dict[str, float]:
        """The means, and reset."""
        means = {name: total / self._counts[name] for name, total in self._sums.items()}
        self._sums.clear()
        self._counts.clear()
        return means


class Throughput:
    """Clips per second and the fraction of wall time spent waiting for data, between reports."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self._waiting = 0.0
        self._clips = 0

    def add(self, clips: int, data_wait_s: float) -> None:
        self._clips += clips
        self._waiting += data_wait_s

    def pop(self) -> dict[str, float]:
        """``clips_per_s`` and ``data_wait_frac`` since the last call, and reset."""
        now = time.perf_counter()
        elapsed = max(now - self._start, 1e-9)
        out = {"clips_per_s": self._clips / elapsed, "data_wait_frac": min(self._waiting / elapsed, 1.0)}
        self._start, self._waiting, self._clips = now, 0.0, 0
        return out


class MetricsLogger:
    """JSONL + TensorBoard + tqdm for rank 0; every method is a no-op on other ranks."""

    def __init__(
        self, run_dir: Path, *, enabled: bool, start_step: int, total_steps: int | None, progress: bool = True, desc: str = "pretrain"
    ) -> None:
        self.enabled = enabled
        self._file: TextIO | None = None
        self._writer = None
        self._bar = None
        if not enabled:
            return
        path = run_dir / METRICS_FILE
        truncate_metrics(path, start_step)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        from torch.utils.tensorboard import SummaryWriter

        # purge_step hides events an interrupted run wrote after the checkpoint we resume from
        self._writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=start_step + 1 if start_step else None)
        if progress:
            from tqdm import tqdm

            interactive = sys.stderr.isatty()
            self._bar = tqdm(
                total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, desc=desc,
                mininterval=PROGRESS_INTERVAL_S if interactive else LOG_FILE_PROGRESS_INTERVAL_S,
            )

    def log(self, step: int, split: str, values: Mapping[str, float]) -> None:
        """Record scalars of ``split`` ("train", "eval", ...) at optimiser step ``step``."""
        if not self.enabled:
            return
        clean = {name: (float(v) if math.isfinite(float(v)) else str(float(v))) for name, v in values.items()}
        record = {"step": step, "split": split, **clean, "time": round(time.time(), 3)}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for name, value in values.items():
            self._writer.add_scalar(f"{split}/{name}", float(value), step)
        self._writer.flush()

    def progress(self, step: int, postfix: Mapping[str, float] | None = None) -> None:
        """Move the progress bar to ``step``, showing ``postfix`` values."""
        if self._bar is None:
            return
        self._bar.update(step - self._bar.n)
        if postfix:
            self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)

    def message(self, text: str) -> None:
        """Print a line (above the progress bar) on rank 0."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            print(text, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._writer is not None:
            self._writer.close()
        if self._file is not None:
            self._file.close()
        self._bar = self._writer = self._file = None
