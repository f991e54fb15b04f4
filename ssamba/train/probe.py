"""Linear probe of frozen encoders: embed every clip once (cached), fit logistic regression, report accuracy or mAP.

The `ssamba probe` command (its options and examples) is :mod:`ssamba.commands.probe`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssamba.audio.fbank import MILLISECONDS_PER_SECOND, FeatureConfig
from ssamba.defaults import DEFAULT_BATCH_SIZE, DEFAULT_C_GRID, DEFAULT_WINDOW_SECONDS, default_cache_dir
from ssamba.data.labelled import LabelledClip, LabelledSet, SkippedClip, load_clip_waveform, read_labelled, validate
from ssamba.train.scores import classification_scores

INNER_FOLDS = 3
MAX_ITER = 1000
CACHE_FORMAT = "ssamba-probe-cache/1"
RANDOM_PREFIX = "random:"
LOGMEL = "logmel"


# ------------------------------------------------------------------------------------- embedders


@dataclass(frozen=True)
class Readout:
    """Which encoder output becomes the clip embedding."""

    layer: str = "last"
    """'last', 'all' (per-block means concatenated) or a 1-based block (pair) number."""
    pooling: str = "mean"
    """'mean' over patch tokens, 'cls', 'both' (concatenated), or 'freq': per frequency row of patches, the mean
    over the time columns inside the clip (not its padding), the rows concatenated (rows x dim numbers)."""
    clip: str = "pad"
    """'pad': pad/crop every clip to the input length; 'windows': average over sliding windows."""


class EncoderEmbedder:
    """A frozen encoder plus its feature recipe, reading out one vector per clip."""

    def __init__(self, name: str, encoder: torch.nn.Module, features: FeatureConfig, readout: Readout, digest: str, device: str) -> None:
        from ssamba.interop.embed import WindowedEncoder

        self.name = name
        self.encoder = encoder.eval().to(device)
        self.features = features
        self.readout = readout
        self.device = device
        self.windowed = WindowedEncoder(self.encoder, features)
        states = encoder.num_hidden_states
        if readout.layer not in ("last", "all"):
            if not readout.layer.isdigit() or not 1 <= int(readout.layer) <= states:
                raise ValueError(f"--layer must be 'last', 'all' or a block number 1..{states} for {name}, got {readout.layer!r}")
        if readout.pooling in ("cls", "both") and encoder.cls_index is None:
            raise ValueError(f"--pooling {readout.pooling} needs a CLS token; {name} has none")
        self.space = {"encoder": digest, "features": features.to_dict(), "readout": dataclasses.asdict(readout)}

    def prepare(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised input windows (W, T, F) of a waveform and each window's time columns inside the clip,
        which are also its weight in the clip average."""
        if wave.shape[0] < self.features.frame_length_samples:
            raise SkippedClip(f"too_short: {wave.shape[0]} samples, less than one analysis frame")
        if self.readout.clip == "pad":
            columns = min(self.windowed.columns_per_window, self.windowed.columns_in_clip(wave.shape[0]))
            return self.features.features(wave)[None], torch.tensor([float(columns)])
        prepared = self.windowed.prepare(wave)
        count = prepared.windows.shape[0]
        columns = torch.full((count,), float(self.windowed.columns_per_window))
        columns[-1] = prepared.columns - (count - 1) * self.windowed.columns_per_window
        return prepared.windows, columns

    def _pool(self, tokens: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        if self.readout.pooling == "freq":
            return self._frequency_rows(self.encoder.patch_tokens(tokens), columns)
        parts = []
        if self.readout.pooling in ("mean", "both"):
            parts.append(self.encoder.patch_tokens(tokens).mean(dim=1))
        if self.readout.pooling in ("cls", "both"):
            parts.append(tokens[:, self.encoder.cls_index])
        return torch.cat(parts, dim=-1)

    def _frequency_rows(self, patches: torch.Tensor, columns: torch.Tensor | None) -> torch.Tensor:
        """(B, rows x cols, D) frequency-major patch tokens -> (B, rows x D): each row's mean over its first
        ``columns`` time columns (all of them when None)."""
        rows, cols = self.encoder.grid
        grid = patches.reshape(patches.shape[0], rows, cols, -1)
        if columns is None:
            columns = torch.full((grid.shape[0],), cols)
        inside = (torch.arange(cols, device=grid.device) < columns.to(grid.device)[:, None]).to(grid.dtype)
        summed = (grid * inside[:, None, :, None]).sum(dim=2)
        return (summed / inside.sum(dim=1)[:, None, None]).flatten(1)

    @torch.no_grad()
    def embed_windows(self, windows: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """(W, T, F) normalised windows -> (W, dim) float32 on the CPU; ``columns`` (W,): each window's time
        columns inside the clip, which ``--pooling freq`` averages over (all columns when None)."""
        batch = windows.to(self.device)
        layer = self.readout.layer
        if layer == "last":
            return self._pool(self.encoder(batch), columns).float().cpu()
        states = self.encoder.hidden_states(batch)
        chosen = states if layer == "all" else [states[int(layer) - 1]]
        return torch.cat([self._pool(state, columns) for state in chosen], dim=-1).float().cpu()


class LogmelEmbedder:
    """Hand-crafted baseline: per-mel-bin mean, standard deviation and mean |frame-to-frame change| of a
    64-bin log-mel (3 x 64 numbers), order-free statistics as in the usual log-mel + logistic regression baseline."""

    name = LOGMEL
    mel_bins = 64
    statistics = ("mean", "std", "mean_abs_delta")

    def __init__(self) -> None:
        self.features = FeatureConfig(num_mel_bins=self.mel_bins)
        self.space = {"encoder": LOGMEL, "features": self.features.to_dict(), "statistics": list(self.statistics)}

    def prepare(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.shape[0] < self.features.frame_length_samples:
            raise SkippedClip(f"too_short: {wave.shape[0]} samples, less than one analysis frame")
        return self.features.raw_fbank(wave)[None], torch.ones(1)

    def embed_windows(self, windows: torch.Tensor, columns: torch.Tensor | None = None) -> torch.Tensor:
        """(W, frames, bins) raw log-mel -> (W, 3 x bins); a one-frame clip has no change (zeros). The
        statistics cover the whole clip, so ``columns`` is not used."""
        change = (windows[:, 1:] - windows[:, :-1]).abs()
        mean_change = change.mean(dim=1) if windows.shape[1] > 1 else torch.zeros_like(windows[:, 0])
        return torch.cat([windows.mean(dim=1), windows.std(dim=1, correction=0), mean_change], dim=-1).float()


Embedder = EncoderEmbedder | LogmelEmbedder


def _state_digest(config: dict[str, Any], state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _parse_overrides(text: str, spec: str) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--encoder {spec}: expected field=value overrides after the preset, got {item!r}")
        try:
            overrides[name.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name.strip()] = value.strip()
    return overrides


def random_checkpoint(spec: str, seed: int, target_length: int | None = None):
    """A randomly initialised encoder (seeded) for ``random:PRESET[:field=value,...]``, as a Checkpoint."""
    from ssamba.interop.checkpoints import Checkpoint
    from ssamba.models.encoder import AudioMambaEncoder, preset_config

    preset, _, overrides = spec[len(RANDOM_PREFIX):].partition(":")
    fields = _parse_overrides(overrides, spec)
    if target_length is not None:
        fields["target_length"] = target_length
    config = preset_config(preset, **fields)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = AudioMambaEncoder(config)
    features = FeatureConfig(num_mel_bins=config.num_mel_bins, target_length=config.target_length)
    return Checkpoint(layout="ssamba-train", source=Path(spec), encoder_config=config, encoder_state=encoder.state_dict(), features=features)


def load_embedder(spec: str, readout: Readout, *, seed: int = 0, target_length: int | None = None,
                  window_seconds: float = DEFAULT_WINDOW_SECONDS, device: str = "cpu") -> Embedder:
    """The embedder for an ``--encoder`` value (checkpoint path, ``random:PRESET[:overrides]`` or ``logmel``)."""
    from ssamba.interop.checkpoints import adapt_checkpoint, read_checkpoint

    if spec == LOGMEL:
        return LogmelEmbedder()
    if readout.clip == "windows":
        if target_length is not None:
            raise ValueError("--target-length applies to --clip pad; --clip windows uses --window-seconds")
        if window_seconds <= 0:
            raise ValueError(f"--window-seconds must be positive, got {window_seconds}")
    if spec.startswith(RANDOM_PREFIX):
        checkpoint = random_checkpoint(spec, seed, target_length)
    else:
        checkpoint = read_checkpoint(spec)
    if readout.clip == "windows":
        target_length = round(window_seconds * MILLISECONDS_PER_SECOND / checkpoint.features.frame_shift_ms)
    checkpoint = adapt_checkpoint(checkpoint, target_length=target_length)
    encoder = checkpoint.build_encoder()
    digest = _state_digest(checkpoint.encoder_config.to_dict(), checkpoint.encoder_state)
    return EncoderEmbedder(spec, encoder, checkpoint.features, readout, digest, device)


# ----------------------------------------------------------------------------------------- cache


class EmbeddingCache:
    """One ``.npy`` per clip under ``root/<space digest>/``; the space is the encoder + features + readout."""

    def __init__(self, root: Path | None, space: dict[str, Any]) -> None:
        self.folder: Path | None = None
        if root is not None:
            text = json.dumps({"format": CACHE_FORMAT, **space}, sort_keys=True, default=str)
            self.folder = Path(root) / hashlib.sha256(text.encode()).hexdigest()[:24]
            self.folder.mkdir(parents=True, exist_ok=True)
            (self.folder / "space.json").write_text(text + "\n", encoding="utf-8")

    def _file(self, clip: LabelledClip) -> Path | None:
        if self.folder is None:
            return None
        try:
            stat = os.stat(clip.path)
        except OSError:
            return None
        key = json.dumps([str(clip.path), stat.st_size, stat.st_mtime_ns, clip.start, clip.end, clip.key])
        name = hashlib.sha256(key.encode()).hexdigest()
        return self.folder / name[:2] / f"{name}.npy"

    def get(self, clip: LabelledClip) -> np.ndarray | None:
        path = self._file(clip)
        if path is None or not path.is_file():
            return None
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            return None  # a damaged entry is recomputed

    def put(self, clip: LabelledClip, vector: np.ndarray) -> None:
        path = self._file(clip)
        if path is None:
            return
        path.parent.mkdir(exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as handle:
            np.save(handle, vector, allow_pickle=False)
        os.replace(tmp, path)


@dataclass
class EmbeddingRun:
    """Embeddings of a set: ``vectors`` (N, dim), NaN rows for skipped clips."""

    vectors: np.ndarray
    embedded: int
    cached: int
    skipped: dict[int, str]
    seconds: float

    @property
    def clips_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 and self.embedded else float("nan")


def embed_set(data: LabelledSet, embedder: Embedder, cache: EmbeddingCache, batch_size: int = DEFAULT_BATCH_SIZE,
              progress: bool = True) -> EmbeddingRun:
    """Embed every clip (cache first), ``batch_size`` windows per forward pass; skip and count bad clips."""
    from tqdm import tqdm

    sample_rate = embedder.features.sample_rate
    vectors: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
    embedded = cached = 0
    started = time.perf_counter()
    bar = tqdm(total=len(data), unit="clip", desc=f"embedding ({embedder.name})", disable=not progress, file=sys.stderr)

    def flush() -> None:
        nonlocal embedded
        if not pending:
            return
        if len({tuple(w.shape[1:]) for _, w, _ in pending}) == 1:
            windows = torch.cat([w for _, w, _ in pending]).split(batch_size)
            columns = torch.cat([c for _, _, c in pending]).split(batch_size)
            outputs = torch.cat([embedder.embed_windows(chunk, cols) for chunk, cols in zip(windows, columns)])
        else:  # inputs of different lengths (the log-mel baseline reads whole clips)
            outputs = torch.cat([embedder.embed_windows(w, c) for _, w, c in pending])
        start = 0
        for index, clip_windows, weights in pending:
            count = clip_windows.shape[0]
            vector = ((outputs[start : start + count] * weights[:, None]).sum(0) / weights.sum()).numpy()
            vectors[index] = vector
            cache.put(data.clips[index], vector)
            start += count
        embedded += len(pending)
        bar.update(len(pending))
        elapsed = time.perf_counter() - started
        bar.set_postfix(clips_per_s=f"{embedded / elapsed:.1f}", skipped=len(skipped))
        pending.clear()

    for index, clip in enumerate(data.clips):
        hit = cache.get(clip)
        if hit is not None:
            vectors[index] = hit
            cached += 1
            bar.update(1)
            continue
        try:
            windows, weights = embedder.prepare(load_clip_waveform(clip, sample_rate))
        except SkippedClip as problem:
            skipped[index] = str(problem)
            bar.update(1)
            continue
        pending.append((index, windows, weights))
        if sum(w.shape[0] for _, w, _ in pending) >= batch_size:
            flush()
    flush()
    bar.close()
    seconds = time.perf_counter() - started
    if not vectors:
        raise ValueError(f"{data.source}: no clip could be embedded ({len(skipped)} skipped)")
    dim = next(iter(vectors.values())).shape[0]
    matrix = np.full((len(data), dim), np.nan, np.float32)
    for index, vector in vectors.items():
        matrix[index] = vector
    return EmbeddingRun(matrix, embedded, cached, skipped, seconds)


# ----------------------------------------------------------------------------------- evaluations


@dataclass
class Evaluation:
    """One fit: clip indices to train on, to choose C on (None: inner folds), and to report."""

    name: str
    train: np.ndarray
    valid: np.ndarray | None
    test: dict[str, np.ndarray]


def _check_no_leak(data: LabelledSet, evaluation: Evaluation) -> None:
    train_groups = {data.clips[i].group: data.clips[i].row for i in evaluation.train if data.clips[i].group is not None}
    for split, indices in [("valid", evaluation.valid if evaluation.valid is not None else [])] + list(evaluation.test.items()):
        for i in indices:
            group = data.clips[i].group
            if group is not None and group in train_groups:
                raise ValueError(
                    f"{data.source} row {data.clips[i].row}: group {group!r} is in {evaluation.name} {split} and in its "
                    f"training clips (row {train_groups[group]}); a group must stay on one side"
                )


def make_plan(data: LabelledSet, folds: int | None = None, seed: int = 0) -> list[Evaluation]:
    """The fits the manifest asks for (see the module docstring); errors name the empty fold or leaking group."""
    indices = np.arange(len(data))
    if data.splits:
        if folds is not None:
            raise ValueError(f"{data.source}: has a split column; --folds is for manifests without one")
        by_split = {s: indices[[c.split == s for c in data.clips]] for s in data.splits}
        if "train" not in by_split:
            raise ValueError(f"{data.source}: no clip has split 'train'")
        reported = {s: by_split[s] for s in ("valid", "test") if s in by_split}
        if not reported:
            raise ValueError(f"{data.source}: needs a valid or test split to report on, found only train")
        plan = [Evaluation("split", by_split["train"], by_split.get("valid"), reported)]
    elif data.fold_ids():
        ids = data.fold_ids()
        if folds is not None and folds != len(ids):
            expected = [str(i) for i in range(1, folds + 1)]
            data.check_folds(expected)  # names the empty fold
            raise ValueError(f"{data.source}: --folds {folds} but the fold column has {len(ids)} folds: {', '.join(ids)}")
        if len(ids) < 2:
            raise ValueError(f"{data.source}: cross-validation needs at least 2 folds, the fold column has {ids}")
        fold_of = np.array([c.fold for c in data.clips])
        plan = [Evaluation(f"fold {f}", indices[fold_of != f], None, {"test": indices[fold_of == f]}) for f in ids]
    else:
        if folds is None:
            raise ValueError(f"{data.source}: no split or fold column; pass --folds N to cross-validate")
        plan = [Evaluation(f"fold {k + 1}", train, None, {"test": test}) for k, (train, test) in enumerate(_group_folds(data, folds, seed))]
    for evaluation in plan:
        _check_no_leak(data, evaluation)
    return plan


def _group_folds(data: LabelledSet, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    if folds < 2:
        raise ValueError(f"--folds must be >= 2, got {folds}")
    groups = data.groups()
    distinct = len(set(groups))
    if distinct < folds:
        raise ValueError(f"{data.source}: --folds {folds} but only {distinct} groups; fold {distinct + 1} would be empty")
    if data.multilabel:
        splitter = GroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(data)), groups=groups))
    else:
        splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
        splits = list(splitter.split(np.zeros(len(data)), data.label_indices(), groups))
    for k, (_, test) in enumerate(splits):
        if len(test) == 0:
            raise ValueError(f"{data.source}: fold {k + 1} of {folds} is empty")
    return splits


# ----------------------------------------------------------------------------------------- fitting


def _model(multilabel: bool, seed: int):
    """Logistic regression (one-vs-rest for multi-label); single-label models warm-start along the C path."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    if multilabel:
        return OneVsRestClassifier(LogisticRegression(max_iter=MAX_ITER, random_state=seed))
    return LogisticRegression(max_iter=MAX_ITER, random_state=seed, warm_start=True)


def _fit_path(x: np.ndarray, y: np.ndarray, multilabel: bool, c_grid: Sequence[float], seed: int):
    """Standardise on ``x``, then fit for each C in increasing order; yields (C, scaler, model)."""
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    features = scaler.transform(x)
    labels = y if multilabel else y.argmax(axis=1)
    model = _model(multilabel, seed)
    for c in sorted(c_grid):
        model.set_params(**{"estimator__C" if multilabel else "C": c})
        yield c, scaler, model.fit(features, labels)


def _scores(model, x: np.ndarray, num_classes: int, multilabel: bool) -> np.ndarray:
    """(N, classes) probabilities; classes absent from training get 0."""
    probabilities = model.predict_proba(x)
    if multilabel:
        return probabilities
    out = np.zeros((x.shape[0], num_classes))
    out[:, model.classes_] = probabilities
    return out


def _headline(scores: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """The selection metric alone (one scikit-learn call: its per-call checks dominate small fits)."""
    from sklearn.metrics import accuracy_score, average_precision_score

    truth = targets > 0.5
    if not multilabel:
        return float(accuracy_score(truth.argmax(axis=1), scores.argmax(axis=1)))
    present = truth.any(axis=0)
    return float(average_precision_score(truth[:, present], scores[:, present], average="macro")) if present.any() else float("nan")


def _ranked(score: float) -> float:
    """A selection score for ranking: NaN (no positives to score) below every number."""
    return -math.inf if math.isnan(score) else score


def fit_probe(
    x: np.ndarray, y: np.ndarray, *, multilabel: bool, valid: tuple[np.ndarray, np.ndarray] | None = None,
    groups: Sequence[str] | None = None, c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0,
) -> tuple[Any, Any, float, dict[float, float]]:
    """Choose C on ``valid`` (or by inner group folds of the training set), refit on the training set.

    Returns (scaler, model, chosen C, {C: selection score}); the score is accuracy (single-label) or mAP.
    Ties go to the smaller C (stronger regularisation). The refit walks the same C path up to the chosen C
    as the selection did (single-label fits warm-start along it, and a weakly regularised fit depends on
    where it starts), so with a ``valid`` split the returned model is the one that scored ``selection[C]``.
    """
    from sklearn.model_selection import GroupKFold

    if not multilabel and len(np.unique(y.argmax(axis=1))) < 2:
        raise ValueError("the training clips hold a single class; a classifier needs at least two")
    if valid is not None:
        held_out = [(x, y, valid[0], valid[1])]
    else:
        group_ids = list(groups) if groups is not None else [str(i) for i in range(len(x))]
        inner = GroupKFold(n_splits=min(INNER_FOLDS, len(set(group_ids))), shuffle=True, random_state=seed)
        held_out = [(x[t], y[t], x[h], y[h]) for t, h in inner.split(x, groups=group_ids)
                    if multilabel or len(np.unique(y[t].argmax(axis=1))) > 1]
    results: dict[float, list[float]] = {c: [] for c in c_grid}
    for x_fit, y_fit, x_held, y_held in held_out:
        for c, scaler, model in _fit_path(x_fit, y_fit, multilabel, c_grid, seed):
            results[c].append(_headline(_scores(model, scaler.transform(x_held), y.shape[1], multilabel), y_held, multilabel))
    selection = {c: float(np.mean(v)) if v else float("nan") for c, v in results.items()}
    best = max(c_grid, key=lambda c: (_ranked(selection[c]), -c))
    *_, (_, scaler, model) = _fit_path(x, y, multilabel, [c for c in c_grid if c <= best], seed)
    return scaler, model, best, selection


def run_probe(data: LabelledSet, vectors: np.ndarray | Mapping[str, np.ndarray], plan: list[Evaluation], *,
              multilabel: bool, c_grid: Sequence[float] = DEFAULT_C_GRID, seed: int = 0,
              fit_threads: int = 1) -> dict[str, Any]:
    """Fit and score every evaluation of ``plan`` on ``vectors`` (rows of skipped clips are NaN, left out).

    ``vectors`` is one (N, dim) matrix, or readout name -> matrix: then each evaluation fits every readout
    and keeps the one whose chosen C scores best on the selection split (the valid split or inner folds,
    as for C; ties go to the first readout), recorded as the evaluation's ``readout``.
    """
    from sklearn.exceptions import ConvergenceWarning
    from threadpoolctl import threadpool_limits

    readouts = dict(vectors) if isinstance(vectors, Mapping) else {"": vectors}
    targets = data.targets()
    usable = np.logical_and.reduce([~np.isnan(matrix).any(axis=1) for matrix in readouts.values()])
    groups = data.groups()
    metric = "mAP" if multilabel else "accuracy"
    results, headline = [], {}
    started = time.perf_counter()
    # One BLAS/OpenMP thread: the fits are small, and spinning thread pools made them ~10x slower on a busy 2-core machine.
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(fit_threads):
        warnings.simplefilter("always", ConvergenceWarning)
        for evaluation in plan:
            train = evaluation.train[usable[evaluation.train]]
            valid = None if evaluation.valid is None or not len(evaluation.valid) else evaluation.valid[usable[evaluation.valid]]
            fits = {
                name: fit_probe(matrix[train], targets[train], multilabel=multilabel,
                                valid=None if valid is None else (matrix[valid], targets[valid]),
                                groups=[groups[i] for i in train], c_grid=c_grid, seed=seed)
                for name, matrix in readouts.items()
            }
            won = {name: selection[c] for name, (_, _, c, selection) in fits.items()}  # each readout's best C's score
            chosen = max(won, key=lambda name: _ranked(won[name]))
            scaler, model, c, selection = fits[chosen]
            entry: dict[str, Any] = {"name": evaluation.name, "C": c, "selection": {str(k): v for k, v in selection.items()},
                                     "train_clips": int(len(train))}
            if len(readouts) > 1:
                entry["readout"] = chosen
                entry["readout_selection"] = won
            for split, indices in evaluation.test.items():
                kept = indices[usable[indices]]
                scores = _scores(model, scaler.transform(readouts[chosen][kept]), len(data.classes), multilabel)
                entry[split] = classification_scores(scores, targets[kept], multilabel=multilabel, class_names=data.classes)
                headline.setdefault(split, []).append(entry[split][metric])
            results.append(entry)
    fit_seconds = time.perf_counter() - started
    summary = {
        split: {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "values": values}
        for split, values in headline.items()
    }
    not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {"metric": metric, "evaluations": results, "summary": summary, "fit_seconds": fit_seconds, "fits_not_converged": not_converged}


# --------------------------------------------------------------------------------------------- CLI


def _read_manifests(specs: Sequence[str], class_table: str | None) -> LabelledSet:
    """``--manifest`` values: one file, or several ``SPLIT=FILE`` (e.g. SSAST JSON lists) merged."""
    if len(specs) == 1 and "=" not in specs[0]:
        return read_labelled(specs[0], class_table=class_table)
    parts = []
    for spec in specs:
        split, sep, path = spec.partition("=")
        if not sep:
            raise ValueError(f"--manifest {spec}: with several manifests, write each as SPLIT=FILE (train=..., valid=..., test=...)")
        parts.append(read_labelled(path, class_table=class_table, split=split))
    classes = parts[0].classes if class_table else sorted({c for part in parts for c in part.classes})
    merged = LabelledSet([clip for part in parts for clip in part.clips], classes, any(p.multilabel for p in parts),
                         parts[0].source, parts[0].display_names)
    validate(merged)
    return merged


def _format_summary(name: str, result: dict[str, Any]) -> str:
    parts = [f"{split} {s['mean']:.4f} ± {s['std']:.4f}" + (f" over {len(s['values'])}" if len(s["values"]) > 1 else "")
             for split, s in result["summary"].items()]
    chosen = [evaluation["readout"] for evaluation in result["evaluations"] if "readout" in evaluation]
    picks = f" (readout {', '.join(f'{r} x{chosen.count(r)}' for r in dict.fromkeys(chosen))})" if chosen else ""
    return f"{name}: {result['metric']} " + "; ".join(parts) + picks


def _embed_readouts(spec: str, readouts: list[Readout], data: LabelledSet, args: argparse.Namespace,
                    cache_root: Path | None) -> dict[str, EmbeddingRun]:
    """Embed every clip once per readout of an ``--encoder`` (the log-mel statistics have one readout, ``logmel``)."""
    runs = {}
    for readout in readouts[:1] if spec == LOGMEL else readouts:
        embedder = load_embedder(spec, readout, seed=args.seed, target_length=args.target_length,
                                 window_seconds=args.window_seconds, device=args.device)
        run = embed_set(data, embedder, EmbeddingCache(cache_root, embedder.space), args.batch_size,
                        progress=not args.quiet)
        name = LOGMEL if spec == LOGMEL else readout.layer
        print(f"{spec} ({name}): embedded {run.embedded} clips in {run.seconds:.1f} s "
              f"({run.clips_per_second:.1f} clips/s), {run.cached} from the cache, {len(run.skipped)} skipped",
              file=sys.stderr)
        for index, reason in list(run.skipped.items())[:10]:
            print(f"  skipped {data.clips[index].name} (row {data.clips[index].row}): {reason}", file=sys.stderr)
        runs[name] = run
    return runs


def main(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    data = _read_manifests(args.manifest, args.class_table)
    if data.multilabel and args.task == "single":
        raise ValueError(f"{data.source}: some clips have several labels; use --task multilabel")
    multilabel = args.task == "multilabel" or data.multilabel
    plan = make_plan(data, args.folds, args.seed)
    if len(set(args.layer)) != len(args.layer):
        raise ValueError(f"--layer lists a readout twice: {' '.join(args.layer)}")
    readouts = [Readout(layer=layer, pooling=args.pooling, clip=args.clip) for layer in args.layer]
    cache_root = None if args.no_cache else Path(args.cache) if args.cache else default_cache_dir()
    report: dict[str, Any] = {
        "manifest": args.manifest, "clips": len(data), "classes": data.classes, "task": "multilabel" if multilabel else "single",
        "readout": {"layers": list(args.layer), "pooling": args.pooling, "clip": args.clip},
        "seed": args.seed, "encoders": [],
    }
    lines = []
    for spec in args.encoder:
        runs = _embed_readouts(spec, readouts, data, args, cache_root)
        result = run_probe(data, {name: run.vectors for name, run in runs.items()}, plan,
                           multilabel=multilabel, c_grid=args.c_grid, seed=args.seed)
        skipped = {index: reason for run in runs.values() for index, reason in run.skipped.items()}
        result.update({
            "encoder": spec,
            "readouts": {name: {"dim": int(run.vectors.shape[1]), "embedded": run.embedded, "cached": run.cached,
                                "embed_seconds": run.seconds, "clips_per_second": run.clips_per_second}
                         for name, run in runs.items()},
            "skipped": {data.clips[i].name: reason for i, reason in skipped.items()},
        })
        report["encoders"].append(result)
        lines.append(_format_summary(spec, result) + f" (fit {result['fit_seconds']:.1f} s)")
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1, default=float) + "\n", encoding="utf-8")
    os.replace(tmp, output)
    print("\n".join(lines))
    print(f"results: {output}")
    return 0
