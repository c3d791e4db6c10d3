"""Per-class AUROC of a classifier's probabilities (metrics/classification.py), and their mean over the
findings: what a classifier's run scores by default (tasks/classification.py)."""

from typing import Any

import numpy as np

from cxrjax.data import chestxray14
from cxrjax.evaluators import base
from cxrjax.metrics import classification

# Classes whose AUROC is reported beside mean_AUROC, not in it: AG-CNN's 15th class "No Finding" is the
# absence of the findings, and the published AG-CNN / CheXNet means (and `cxrjax auroc`) are over the 14
# findings; a mean over 15 would neither compare with them nor select the same checkpoint.
OUTSIDE_MEAN = (chestxray14.NO_FINDING,)


def auroc_scores(labels: np.ndarray, probabilities: np.ndarray, label_names) -> dict[str, Any]:
  """{"mean_AUROC", "AUROC/<class>"..., "num_examples"}: the mean over the findings with both label values,
  the AUROC of every class (OUTSIDE_MEAN's too, beside the mean)."""
  result = classification.multilabel_auroc(
    labels, probabilities, class_names=list(label_names), outside_mean=OUTSIDE_MEAN
  )
  scores = {"mean_AUROC": float(result["mean"]), "num_examples": int(labels.shape[0])}
  scores.update({f"AUROC/{name}": float(value) for name, value in result["per_class"].items()})
  if result.get("note"):
    scores["note"] = result["note"]
  return scores


@base.register("auroc")
class AUROC(base.Evaluator):
  """Per-class AUROC and mean_AUROC of the predictions' probabilities against their labels."""

  KIND = "findings"
  HEADLINE = ("mean_AUROC",)

  def __call__(self, predictions: base.Predictions, progress: base.Progress | None = None) -> dict[str, Any]:
    scores = auroc_scores(predictions.labels, predictions.probabilities, predictions.label_names)
    if progress is not None:
      progress(len(predictions.ids))
    return scores
