"""Classification scores for fine-tuning and the linear probe, computed with scikit-learn.

* ``accuracy``: single-label: fraction of clips whose top-scoring class is the true class.
  Multi-label: fraction whose top-scoring class is one of the true classes (SSAST's "acc").
* ``mAP``: mean over classes of the average precision (area under the precision-recall curve, one
  class against the rest): the AudioSet/FSD50K headline metric.
* ``mAUC``: mean over classes of the area under the ROC curve.
* ``d_prime``: ``sqrt(2) * Phi^-1(mAUC)`` (Phi^-1 the standard normal quantile), as SSAST/AST
  report it: the separation, in standard deviations, of two unit-variance Gaussians with that AUC.
* ``per_class_ap``: class name -> AP.

A class without positives (or, for AUC, without negatives) has no AP (AUC) and is left out of the
means; ``classes_without_positives`` counts them. Scores may be logits or probabilities: every
metric only uses their order within a class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def d_prime(auc: float) -> float:
    """Sensitivity index of an ROC AUC: ``sqrt(2) * norm.ppf(auc)``."""
    from scipy.stats import norm

    return float(math.sqrt(2.0) * norm.ppf(auc))


def classification_scores(
    scores: np.ndarray, targets: np.ndarray, *, multilabel: bool, class_names: Sequence[str] | None = None
) -> dict[str, object]:
    """Metrics of ``scores`` (N, C) against multi-hot/one-hot ``targets`` (N, C) (see the module docstring)."""
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be (clips, classes), got {scores.shape} and {targets.shape}")
    if scores.shape[0] == 0:
        raise ValueError("no clips to score")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinite values")
    names = list(class_names) if class_names is not None else [str(i) for i in range(scores.shape[1])]
    if len(names) != scores.shape[1]:
        raise ValueError(f"{len(names)} class names for {scores.shape[1]} score columns")
    truth = targets > 0.5
    top = scores.argmax(axis=1)
    if multilabel:
        accuracy = float(truth[np.arange(len(top)), top].mean())
    else:
        if not (truth.sum(axis=1) == 1).all():
            raise ValueError("single-label targets need exactly one positive class per clip")
        accuracy = float(accuracy_score(truth.argmax(axis=1), top))
    per_class_ap: dict[str, float] = {}
    aucs: list[float] = []
    for c, name in enumerate(names):
        positives = int(truth[:, c].sum())
        if positives == 0:
            per_class_ap[name] = float("nan")
            continue
        per_class_ap[name] = float(average_precision_score(truth[:, c], scores[:, c]))
        if positives < len(truth):
            aucs.append(float(roc_auc_score(truth[:, c], scores[:, c])))
    valid_ap = [ap for ap in per_class_ap.values() if not math.isnan(ap)]
    mean_auc = float(np.mean(aucs)) if aucs else float("nan")
    return {
        "accuracy": accuracy,
        "mAP": float(np.mean(valid_ap)) if valid_ap else float("nan"),
        "mAUC": mean_auc,
        "d_prime": d_prime(mean_auc) if aucs else float("nan"),
        "per_class_ap": per_class_ap,
        "classes_without_positives": scores.shape[1] - len(valid_ap),
        "clips": int(scores.shape[0]),
    }
