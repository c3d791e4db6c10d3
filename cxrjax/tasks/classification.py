"""Multi-label finding classification (AG-CNN): the stage's binary cross-entropy, probabilities, AUROC
and predictions.csv in the `Image Index,prob_<Finding>,...` layout that `cxrjax auroc` scores."""

from typing import Any

import jax
import ml_collections
import numpy as np

from cxrjax.data import chestxray14, transforms
from cxrjax.metrics import classification as classification_metrics
from cxrjax.models import agcnn


class ClassificationTask:
  """Multi-label findings on the first view of each record (the frontal image)."""

  name = "classification"
  uses_tokenizer = False
  best_metric_default = "mean_AUROC"
  host_fields = ("id",)

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.label_names: tuple[str, ...] | None = None  # Set by whoever makes the batches (SourceInfo).

  def sample_inputs(self) -> tuple[np.ndarray]:
    """Zero images [1, S, S, 3]: the classifier reads one view."""
    size = transforms.from_config(self.config).image_size
    return (np.zeros((1, size, size, 3), np.float32),)

  def init_variables(self, model, rngs: dict[str, jax.Array]) -> dict[str, Any]:
    return model.init(rngs, *self.sample_inputs())

  def loss(self, model, variables: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array, tokenizer=None):
    del rng, tokenizer  # AG-CNN has no dropout and no text.
    outputs, updates = model.apply(variables, batch["images"][:, 0], train=True, mutable=["batch_stats"])
    loss = agcnn.stage_loss(outputs, batch["labels"], model.stage or 3, mask=batch.get("mask"))
    return loss, (updates.get("batch_stats", {}), {})

  def predict_fn(self, model, tokenizer=None, greedy: bool = False, decode: Any = None):
    """(variables, batch) -> {"probabilities": [batch, classes], "labels": [batch, classes]}."""
    del tokenizer, greedy, decode
    logits_key = model.stage_logits()

    def predict(variables, batch):
      outputs = model.apply(variables, batch["images"][:, 0])
      return {"probabilities": jax.nn.sigmoid(outputs[logits_key]), "labels": batch["labels"]}

    return predict

  def records(self, outputs: dict[str, np.ndarray], host: dict[str, list[str]], tokenizer=None) -> list[dict]:
    return [
      {"id": image_id, "probabilities": probabilities, "labels": labels}
      for image_id, probabilities, labels in zip(host["id"], outputs["probabilities"], outputs["labels"])
    ]

  def score(self, records: list[dict], meteor: bool = False) -> dict[str, Any]:
    del meteor
    labels = np.stack([r["labels"] for r in records])
    probabilities = np.stack([r["probabilities"] for r in records])
    return auroc_scores(labels, probabilities, self.label_names)

  def write(self, out_dir, records: list[dict]) -> None:
    classification_metrics.write_predictions_csv(
      out_dir / "predictions.csv",
      [r["id"] for r in records],
      np.stack([r["probabilities"] for r in records]),
      list(self.label_names),
    )


# Classes whose AUROC is reported beside mean_AUROC, not in it: AG-CNN's 15th class "No Finding" is the
# absence of the findings, and the published AG-CNN / CheXNet means (and `cxrjax auroc`) are over the 14
# findings; a mean over 15 would neither compare with them nor select the same checkpoint.
OUTSIDE_MEAN = (chestxray14.NO_FINDING,)


def auroc_scores(labels: np.ndarray, probabilities: np.ndarray, label_names) -> dict[str, Any]:
  """{"mean_AUROC", "AUROC/<class>"...}: the mean over the findings with both label values, the AUROC of
  every class (OUTSIDE_MEAN's too, beside the mean)."""
  result = classification_metrics.multilabel_auroc(
    labels, probabilities, class_names=list(label_names), outside_mean=OUTSIDE_MEAN
  )
  scores = {"mean_AUROC": float(result["mean"]), "num_examples": int(labels.shape[0])}
  scores.update({f"AUROC/{name}": float(value) for name, value in result["per_class"].items()})
  if result.get("note"):
    scores["note"] = result["note"]
  return scores
