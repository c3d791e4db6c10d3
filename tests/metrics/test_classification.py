"""Tests for cxrjax.metrics.classification's AUROC against scikit-learn. (Its prediction-CSV
scoring runs on the real ChestX-ray14 label file in tests/test_chestxray14.py.)"""

import numpy as np
import pytest
from sklearn import metrics as sklearn_metrics

from cxrjax.metrics import classification


def test_multilabel_auroc_matches_sklearn():
  rng = np.random.default_rng(0)
  num_examples, num_classes = 200, 6
  labels = (rng.random((num_examples, num_classes)) < [0.5, 0.1, 0.3, 0.02, 0.0, 1.0]).astype(int)
  scores = labels * 0.4 + rng.random((num_examples, num_classes))
  scores[:, 2] = np.round(scores[:, 2], 1)  # Many tied scores.
  scores[:, 1] = 0.5  # All tied.
  names = ["Atelectasis", "Cardiomegaly", "Effusion", "Hernia", "Never", "Always"]
  result = classification.multilabel_auroc(labels, scores, names)
  expected = {}
  for index, name in enumerate(names[:4]):
    expected[name] = sklearn_metrics.roc_auc_score(labels[:, index], scores[:, index])
    assert result["per_class"][name] == pytest.approx(expected[name], abs=1e-12), name
  assert result["per_class"]["Cardiomegaly"] == pytest.approx(0.5)
  assert np.isnan(result["per_class"]["Never"]) and np.isnan(result["per_class"]["Always"])
  assert set(result["excluded"]) == {"Never", "Always"}
  assert "only negative" in result["excluded"]["Never"]
  assert "only positive" in result["excluded"]["Always"]
  assert result["mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
  assert "4 of 6 classes" in result["note"] and "Never, Always" in result["note"]
  # A single class as 1-D arrays.
  single = classification.multilabel_auroc(labels[:, 0], scores[:, 0])
  assert single["mean"] == pytest.approx(expected["Atelectasis"], abs=1e-12)


def test_classes_outside_the_mean_keep_their_auroc_beside_it():
  rng = np.random.default_rng(1)
  labels = (rng.random((100, 3)) < [0.3, 0.5, 0.0]).astype(int)
  scores = labels * 0.5 + rng.random((100, 3))
  result = classification.multilabel_auroc(
    labels, scores, ["Mass", "No Finding", "Hernia"], outside_mean=("No Finding", "Absent")
  )
  assert result["per_class"]["No Finding"] == pytest.approx(
    sklearn_metrics.roc_auc_score(labels[:, 1], scores[:, 1]), abs=1e-12
  )
  assert result["mean"] == pytest.approx(result["per_class"]["Mass"], abs=1e-12)  # Hernia undefined.
  assert result["note"] == (
    "mean over 1 of 3 classes; reported beside the mean, not in it: No Finding; excluded (one label value only): Hernia"
  )


def test_multilabel_auroc_rejects_bad_input():
  with pytest.raises(ValueError, match="share one shape"):
    classification.multilabel_auroc(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="labels must be 0/1"):
    classification.multilabel_auroc(np.array([[0, 2], [1, 0]]), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="non-finite"):
    classification.multilabel_auroc(np.array([[0], [1]]), np.array([[0.1], [np.nan]]))
  with pytest.raises(ValueError, match="2 class names for 1 classes"):
    classification.multilabel_auroc(np.array([[0], [1]]), np.array([[0.1], [0.2]]), ["a", "b"])
  all_excluded = classification.multilabel_auroc(np.zeros((3, 2)), np.zeros((3, 2)))
  assert np.isnan(all_excluded["mean"]) and "mean over 0 of 2 classes" in all_excluded["note"]
