"""Clinical efficacy (CE): precision, recall, F1 and accuracy of generated reports' CheXpert observations.

Input: two label matrices [N, 14], float, for the generated and the reference reports, as the CheXbert (or
CheXpert) labeler gives them: per observation 1 positive, 0 negative, -1 uncertain, NaN blank (not mentioned),
columns in CheXbert's order (OBSERVATIONS):
  Enlarged Cardiomediastinum, Cardiomegaly, Lung Opacity, Lung Lesion, Edema, Consolidation, Pneumonia,
  Atelectasis, Pneumothorax, Pleural Effusion, Pleural Other, Fracture, Support Devices, No Finding.
(The CheXpert labeler's CSV has another column order, "No Finding" first: reorder its columns by name.)

Each matrix is made binary under an uncertain policy, then scored as a multi-label classification of the
generated labels against the reference labels, over an observation set. Names:

  CE/<policy>/<set>/<average>/<metric>      average: micro | macro | weighted | samples;
                                            metric: precision | recall | F1 | support
  CE/<policy>/<set>/<observation>/<metric>  per observation, e.g. CE/uncertain_positive/all14/Edema/F1
  CE/<policy>/<set>/subset_accuracy         exact match: the share of reports whose binary labels over the
                                            set all equal the reference's (scikit-learn's accuracy_score on
                                            multi-label input; f1chexbert's "accuracy")
  CE/<policy>/<set>/label_accuracy          the share of (report, observation) pairs that agree
                                            (1 - Hamming loss)

  policy: uncertain_positive (1 if positive or uncertain, else 0) or uncertain_negative (1 only if positive);
          blank is 0 under both.
  set:    all14 (the 14 observations, No Finding included) or top5 (Cardiomegaly, Edema, Consolidation,
          Atelectasis, Pleural Effusion: CheXpert's competition five, in that order).
  support: the number of positive reference labels (an average's support is their total).

Averages are scikit-learn's: micro pools true positives, false positives and false negatives over all
observations; macro is the unweighted mean of the per-observation scores; weighted weights them by support;
samples (example-based) scores each report's label row and averages over reports. Zero division is
`classification_report(..., zero_division=0)`'s: a precision with no predicted positive, a recall with no
reference positive, and an F1 with neither (2TP + FP + FN = 0) are 0, and these zeros enter macro, weighted and
samples means (an observation never positive in either, or a report with no positive on either side, pulls the
mean down). A weighted mean with zero total support is the unweighted mean.

Which published numbers are which (from the scoring code the papers point to; the papers' text rarely says):
  - f1chexbert (Delbrouck et al.'s ViLMedic; the package many recent MIMIC-CXR report-generation papers cite for
    "CheXbert F1"): CheXbert in "rrg" mode = uncertain_positive, blank 0; it reports scikit-learn's
    classification_report (default zero_division, which also gives 0) over all14 and top5, and exact-match
    accuracy over top5. Papers quoting its "micro / macro F1 over 14 / 5" therefore correspond to
    CE/uncertain_positive/{all14,top5}/{micro,macro}/F1 (checked in its code, not in each paper).
  - R2Gen (Chen et al. 2020) and the code copied from it (zhjohnchan/R2Gen compute_ce.py, R2GenCMN and many
    follow-ups): CheXpert labeler output with blank -> 0 and uncertain -> 0, i.e. uncertain_negative, over all
    14 columns; it prints micro and macro precision / recall / F1. Which of the two a paper's "CE precision /
    recall / F1" table holds is not stated in the code or, as far as found, in the papers: our
    CE/uncertain_negative/all14/{micro,macro}/* are both candidates; compare with care.
  - Example-based ("samples") CE is reported by some papers; which policy and labeler those used was not
    established here.
  Not verified: that the CheXpert / MIMIC-CXR leaderboards use uncertain_positive. The labeler also matters
  (CheXpert labeler vs CheXbert): numbers from different labelers or policies are not comparable.

Bad input raises `ClinicalLabelError` (a UserError): wrong shape, different row counts, a value that is not
1, 0, -1 or NaN. The module is pure numpy (no scikit-learn at run time; tests compare against it).
"""

from __future__ import annotations

import numpy as np

from cxrjax.core.errors import UserError

OBSERVATIONS = (
  "Enlarged Cardiomediastinum",
  "Cardiomegaly",
  "Lung Opacity",
  "Lung Lesion",
  "Edema",
  "Consolidation",
  "Pneumonia",
  "Atelectasis",
  "Pneumothorax",
  "Pleural Effusion",
  "Pleural Other",
  "Fracture",
  "Support Devices",
  "No Finding",
)
TOP5 = ("Cardiomegaly", "Edema", "Consolidation", "Atelectasis", "Pleural Effusion")
OBSERVATION_SETS = {"all14": OBSERVATIONS, "top5": TOP5}
UNCERTAIN_POLICIES = ("uncertain_positive", "uncertain_negative")
AVERAGES = ("micro", "macro", "weighted", "samples")
METRICS = ("precision", "recall", "F1")


class ClinicalLabelError(UserError):
  """A label matrix that is not [N, 14] of 1 / 0 / -1 / NaN; the message names it and the problem."""


def check_labels(labels, name: str = "labels") -> np.ndarray:
  """Labeler output -> float64 [N, 14]; raises ClinicalLabelError naming `name` and the problem."""
  array = np.asarray(labels, dtype=np.float64)
  if array.ndim != 2 or array.shape[1] != len(OBSERVATIONS):
    raise ClinicalLabelError(
      f"{name}: expected a [N, {len(OBSERVATIONS)}] label matrix (CheXbert's observations), got shape {array.shape}"
    )
  known = np.isnan(array) | np.isin(array, (1.0, 0.0, -1.0))
  if not known.all():
    row, column = np.argwhere(~known)[0]
    raise ClinicalLabelError(
      f"{name}: row {row}, {OBSERVATIONS[column]}: value {float(array[row, column])} is not "
      f"1 (positive), 0 (negative), -1 (uncertain) or NaN (blank); "
      f"{int((~known).sum())} such values"
    )
  return array


def binarize(labels: np.ndarray, policy: str) -> np.ndarray:
  """float [N, C] of 1 / 0 / -1 / NaN -> bool [N, C] under `policy` (blank NaN is False under both)."""
  if policy == "uncertain_positive":
    return (labels == 1) | (labels == -1)
  if policy == "uncertain_negative":
    return labels == 1
  raise ValueError(f"unknown uncertain policy {policy!r}; expected one of {UNCERTAIN_POLICIES}")


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
  """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
  numerator, denominator = np.asarray(numerator, np.float64), np.asarray(denominator, np.float64)
  return np.divide(
    numerator, denominator, out=np.zeros(np.broadcast(numerator, denominator).shape), where=denominator != 0
  )


def _scores(tp: np.ndarray, predicted: np.ndarray, actual: np.ndarray) -> dict[str, np.ndarray]:
  """Precision, recall and F1 from true positives, predicted and reference positive counts (any shape)."""
  return {"precision": _divide(tp, predicted), "recall": _divide(tp, actual), "F1": _divide(2 * tp, predicted + actual)}


def multilabel_report(y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
  """classification_report(y_true, y_pred, zero_division=0)'s figures, plus the two accuracies, flat.

  Args:
    y_true, y_pred: bool [N, C] reference and generated labels.
    names: the C column names.

  Returns:
    {"<name or average>/<metric>": value, "subset_accuracy": ..., "label_accuracy": ...}, metric in
    precision / recall / F1 / support.
  """
  y_true, y_pred = np.asarray(y_true, bool), np.asarray(y_pred, bool)
  if y_true.shape != y_pred.shape or y_true.ndim != 2 or y_true.shape[1] != len(names):
    raise ValueError(f"expected two [N, {len(names)}] matrices, got {y_true.shape} and {y_pred.shape}")
  if y_true.shape[0] == 0:
    raise ClinicalLabelError("no reports to score (0 rows)")
  both = y_true & y_pred
  tp, predicted, actual = both.sum(0), y_pred.sum(0), y_true.sum(0)  # [C] each
  per_label = _scores(tp, predicted, actual)
  total = int(actual.sum())
  weights = actual if total else np.ones_like(actual)  # zero total support: the plain mean (scikit-learn)
  averaged = {
    "micro": {k: float(v) for k, v in _scores(tp.sum(), predicted.sum(), actual.sum()).items()},
    "macro": {k: float(v.mean()) for k, v in per_label.items()},
    "weighted": {k: float(np.average(v, weights=weights)) for k, v in per_label.items()},
    "samples": {k: float(v.mean()) for k, v in _scores(both.sum(1), y_pred.sum(1), y_true.sum(1)).items()},
  }
  report = {}
  for index, name in enumerate(names):
    for metric in METRICS:
      report[f"{name}/{metric}"] = float(per_label[metric][index])
    report[f"{name}/support"] = int(actual[index])
  for average, scores in averaged.items():
    for metric in METRICS:
      report[f"{average}/{metric}"] = scores[metric]
    report[f"{average}/support"] = total
  report["subset_accuracy"] = float((y_true == y_pred).all(1).mean())
  report["label_accuracy"] = float((y_true == y_pred).mean())
  return report


def clinical_efficacy(
  generated,
  reference,
  policies: tuple[str, ...] = UNCERTAIN_POLICIES,
  observation_sets: tuple[str, ...] = tuple(OBSERVATION_SETS),
) -> dict[str, float]:
  """Every CE figure (module docstring) of generated against reference labels.

  Args:
    generated, reference: labeler output, float [N, 14] of 1 / 0 / -1 / NaN in OBSERVATIONS order.
    policies: uncertain policies to score (default both).
    observation_sets: "all14" and / or "top5" (default both).

  Returns:
    {"CE/<policy>/<set>/...": value}: floats, supports as ints.
  """
  generated = check_labels(generated, "generated labels")
  reference = check_labels(reference, "reference labels")
  if generated.shape[0] != reference.shape[0]:
    raise ClinicalLabelError(
      f"generated labels have {generated.shape[0]} rows, reference labels "
      f"{reference.shape[0]}: one row per report on both sides"
    )
  scores = {}
  for policy in policies:
    y_pred, y_true = binarize(generated, policy), binarize(reference, policy)
    for set_name in observation_sets:
      if set_name not in OBSERVATION_SETS:
        raise ValueError(f"unknown observation set {set_name!r}; expected one of {tuple(OBSERVATION_SETS)}")
      names = OBSERVATION_SETS[set_name]
      columns = [OBSERVATIONS.index(name) for name in names]
      for key, value in multilabel_report(y_true[:, columns], y_pred[:, columns], names).items():
        scores[f"CE/{policy}/{set_name}/{key}"] = value
  return scores
