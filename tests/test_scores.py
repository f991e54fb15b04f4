"""Classification scores against scikit-learn's reference computations on fixed predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import average_precision_score, roc_auc_score

from ssamba.train.scores import classification_scores, d_prime

SCORES = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.4], [0.2, 0.1, 0.7], [0.6, 0.5, 0.3], [0.1, 0.4, 0.35], [0.2, 0.3, 0.9]])
LABELS = np.array([0, 1, 2, 1, 2, 0])


def test_single_label_scores_match_sklearn() -> None:
    targets = np.eye(3)[LABELS]
    result = classification_scores(SCORES, targets, multilabel=False, class_names=["a", "b", "c"])
    # argmax predictions 0,1,2,0,1,2 against 0,1,2,1,2,0: three right
    assert result["accuracy"] == 0.5
    aps = [average_precision_score(targets[:, c], SCORES[:, c]) for c in range(3)]
    aucs = [roc_auc_score(targets[:, c], SCORES[:, c]) for c in range(3)]
    assert result["per_class_ap"] == pytest.approx(dict(zip("abc", aps)), abs=1e-12)
    assert result["mAP"] == pytest.approx(np.mean(aps), abs=1e-12)
    assert result["mAP"] == pytest.approx(average_precision_score(targets, SCORES, average="macro"), abs=1e-12)
    assert result["mAUC"] == pytest.approx(roc_auc_score(targets, SCORES, average="macro"), abs=1e-12)
    assert result["d_prime"] == pytest.approx(math.sqrt(2) * norm.ppf(np.mean(aucs)), abs=1e-12)
    assert result["classes_without_positives"] == 0 and result["clips"] == 6


def test_multilabel_scores_and_classes_without_positives() -> None:
    targets = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 1, 1, 0], [0, 1, 0, 0], [1, 0, 1, 0]])
    scores = np.column_stack([SCORES, np.linspace(0, 1, 6)])
    result = classification_scores(scores, targets, multilabel=True)
    top = scores.argmax(1)
    assert result["accuracy"] == pytest.approx(np.mean([targets[i, top[i]] for i in range(6)]))
    assert math.isnan(result["per_class_ap"]["3"]) and result["classes_without_positives"] == 1
    reference = average_precision_score(targets[:, :3], scores[:, :3], average="macro")
    assert result["mAP"] == pytest.approx(reference, abs=1e-12)
    assert result["mAUC"] == pytest.approx(roc_auc_score(targets[:, :3], scores[:, :3], average="macro"), abs=1e-12)


def test_d_prime_formula_and_known_values() -> None:
    assert d_prime(0.5) == 0.0
    # AUC = Phi(d / sqrt(2)) for two unit Gaussians d apart
    assert d_prime(norm.cdf(1.0 / math.sqrt(2))) == pytest.approx(1.0, abs=1e-12)
    assert d_prime(0.9) == pytest.approx(1.8123876, abs=1e-6)


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValueError, match="exactly one positive"):
        classification_scores(SCORES, np.ones((6, 3)), multilabel=False)
    with pytest.raises(ValueError, match=r"must both be \(clips, classes\)"):
        classification_scores(SCORES, np.eye(3), multilabel=False)
    with pytest.raises(ValueError, match="NaN"):
        classification_scores(np.full((6, 3), np.nan), np.eye(3)[LABELS], multilabel=False)
