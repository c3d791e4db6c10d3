"""Clinical efficacy against scikit-learn's classification_report (zero_division=0), its accuracy_score and
hamming_loss, on random labeler output with the edge cases (blank and uncertain values, an observation never
positive in the references, empty rows)."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, classification_report, hamming_loss

from cxrjax.core import errors
from cxrjax.metrics import clinical

POLICIES = clinical.UNCERTAIN_POLICIES
SETS = tuple(clinical.OBSERVATION_SETS)
SKLEARN_AVERAGES = {"micro": "micro avg", "macro": "macro avg", "weighted": "weighted avg", "samples": "samples avg"}
SKLEARN_METRICS = {"precision": "precision", "recall": "recall", "F1": "f1-score", "support": "support"}


def _labeler_output(rng: np.random.Generator, rows: int, blank: float = 0.5) -> np.ndarray:
  """float [rows, 14]: NaN (blank) with probability `blank`, else 1, 0 or -1."""
  values = rng.choice(np.array([1.0, 0.0, -1.0]), size=(rows, 14), p=[0.4, 0.35, 0.25])
  values[rng.random((rows, 14)) < blank] = np.nan
  return values


def _reference_binary(labels: np.ndarray, policy: str) -> np.ndarray:
  """The policy written out cell by cell, independent of clinical.binarize."""
  out = np.zeros(labels.shape, np.int64)
  for (row, column), value in np.ndenumerate(labels):
    if value == 1 or (policy == "uncertain_positive" and value == -1):
      out[row, column] = 1
  return out


def _cases():
  rng = np.random.default_rng(22)
  cases = {}
  generated, reference = _labeler_output(rng, 40), _labeler_output(rng, 40)
  cases["random"] = (generated, reference)
  generated, reference = _labeler_output(rng, 30), _labeler_output(rng, 30)
  # All-empty rows: blank on both sides, blank on one side, all-negative on the other.
  generated[0:3], reference[0:3] = np.nan, np.nan
  generated[3], reference[3] = np.nan, 1.0
  generated[4], reference[4] = 0.0, np.nan
  # An observation never positive (nor uncertain) in the references but predicted, and one never anywhere.
  cardiomegaly, fracture = clinical.OBSERVATIONS.index("Cardiomegaly"), clinical.OBSERVATIONS.index("Fracture")
  reference[:, cardiomegaly] = np.where(rng.random(30) < 0.5, 0.0, np.nan)
  generated[5:10, cardiomegaly] = 1.0
  reference[:, fracture] = np.nan
  generated[:, fracture] = 0.0
  cases["edges"] = (generated, reference)
  # Mostly blank (sparse like real reports), and a single report.
  cases["sparse"] = (_labeler_output(rng, 25, blank=0.9), _labeler_output(rng, 25, blank=0.9))
  cases["one_row"] = (_labeler_output(rng, 1), _labeler_output(rng, 1))
  # No reference positive at all under either policy: weighted has zero total support.
  cases["no_reference_positive"] = (_labeler_output(rng, 6), np.where(rng.random((6, 14)) < 0.5, 0.0, np.nan))
  return cases


CASES = _cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_equals_sklearn_classification_report(case):
  generated, reference = CASES[case]
  scores = clinical.clinical_efficacy(generated, reference)
  expected_keys = set()
  for policy in POLICIES:
    y_pred, y_true = _reference_binary(generated, policy), _reference_binary(reference, policy)
    for set_name in SETS:
      names = clinical.OBSERVATION_SETS[set_name]
      columns = [clinical.OBSERVATIONS.index(n) for n in names]
      true, pred = y_true[:, columns], y_pred[:, columns]
      report = classification_report(true, pred, target_names=list(names), output_dict=True, zero_division=0)
      prefix = f"CE/{policy}/{set_name}"
      for ours, theirs in [*((n, n) for n in names), *SKLEARN_AVERAGES.items()]:
        for metric, sk_metric in SKLEARN_METRICS.items():
          key = f"{prefix}/{ours}/{metric}"
          expected_keys.add(key)
          assert scores[key] == pytest.approx(report[theirs][sk_metric], abs=1e-12, rel=0), key
      assert scores[f"{prefix}/subset_accuracy"] == pytest.approx(accuracy_score(true, pred), abs=1e-12)
      assert scores[f"{prefix}/label_accuracy"] == pytest.approx(1 - hamming_loss(true, pred), abs=1e-12)
      expected_keys |= {f"{prefix}/subset_accuracy", f"{prefix}/label_accuracy"}
  assert set(scores) == expected_keys  # every figure named, nothing else


def test_edge_case_values():
  # The zero-division rules made visible on the "edges" case, beside the sklearn comparison.
  generated, reference = CASES["edges"]
  scores = clinical.clinical_efficacy(generated, reference)
  for policy in POLICIES:
    prefix = f"CE/{policy}/all14"
    assert scores[f"{prefix}/Cardiomegaly/support"] == 0
    assert scores[f"{prefix}/Cardiomegaly/precision"] == 0.0  # 5 predicted, none true
    assert scores[f"{prefix}/Fracture/F1"] == 0.0 and scores[f"{prefix}/Fracture/support"] == 0
  # uncertain -1 counts as positive only under uncertain_positive.
  one = np.full((1, 14), np.nan)
  one[0, clinical.OBSERVATIONS.index("Edema")] = -1.0
  positive = clinical.clinical_efficacy(one, one)
  assert positive["CE/uncertain_positive/top5/Edema/F1"] == 1.0
  assert positive["CE/uncertain_negative/top5/Edema/F1"] == 0.0
  assert positive["CE/uncertain_negative/top5/Edema/support"] == 0


@pytest.mark.parametrize("case", sorted(CASES))
def test_perfect_prediction_scores_one_where_defined(case):
  _, reference = CASES[case]
  scores = clinical.clinical_efficacy(reference, reference)
  for policy in POLICIES:
    binary = _reference_binary(reference, policy)
    for set_name, names in clinical.OBSERVATION_SETS.items():
      columns = [clinical.OBSERVATIONS.index(n) for n in names]
      true = binary[:, columns]
      prefix = f"CE/{policy}/{set_name}"
      for index, name in enumerate(names):
        if true[:, index].any():  # defined: some positive reference (and so prediction)
          assert scores[f"{prefix}/{name}/F1"] == 1.0, (prefix, name)
      if true.any():
        for average in ("micro", "weighted"):
          assert scores[f"{prefix}/{average}/F1"] == 1.0
      if true.any(0).all():
        assert scores[f"{prefix}/macro/F1"] == 1.0
      if true.any(1).all():
        assert scores[f"{prefix}/samples/F1"] == 1.0
      assert scores[f"{prefix}/subset_accuracy"] == 1.0 and scores[f"{prefix}/label_accuracy"] == 1.0


def test_bad_input_one_line_naming_the_matrix():
  good = np.zeros((3, 14))
  with pytest.raises(clinical.ClinicalLabelError, match=r"generated labels: expected a \[N, 14\] .* shape \(3, 13\)"):
    clinical.clinical_efficacy(np.zeros((3, 13)), good)
  bad = good.copy()
  bad[2, clinical.OBSERVATIONS.index("Pneumonia")] = 2.0  # CheXbert's raw class index, not the -1/0/1 convention
  with pytest.raises(clinical.ClinicalLabelError, match=r"reference labels: row 2, Pneumonia: value 2.0 is not"):
    clinical.clinical_efficacy(good, bad)
  with pytest.raises(clinical.ClinicalLabelError, match="generated labels have 2 rows, reference labels 3"):
    clinical.clinical_efficacy(np.zeros((2, 14)), good)
  with pytest.raises(clinical.ClinicalLabelError, match="0 rows"):
    clinical.clinical_efficacy(np.zeros((0, 14)), np.zeros((0, 14)))
  assert issubclass(clinical.ClinicalLabelError, errors.UserError)
  assert "\n" not in str(pytest.raises(clinical.ClinicalLabelError, clinical.check_labels, bad).value)


def test_runtime_does_not_import_sklearn():
  import subprocess
  import sys

  code = (
    "import sys, numpy as np; from cxrjax.metrics import clinical; "
    "clinical.clinical_efficacy(np.ones((2, 14)), np.zeros((2, 14))); "
    "print('sklearn' in sys.modules)"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert result.stdout.strip() == "False"
