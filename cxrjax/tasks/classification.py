"""Multi-label finding classification (AG-CNN, CheXNet): the family's binary cross-entropy, probabilities,
AUROC and predictions.csv in the `Image Index,prob_<Finding>,...` layout that `cxrjax auroc` scores."""

import dataclasses
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np

from cxrjax import models
from cxrjax.data import transforms
from cxrjax.core.errors import ConfigError
from cxrjax.metrics import classification as classification_metrics
from cxrjax.tasks import base


@dataclasses.dataclass(frozen=True)
class ClassificationTask:
  """Multi-label findings on the first view of each record (the frontal image)."""

  name: ClassVar[str] = "classification"
  uses_tokenizer: ClassVar[bool] = False
  best_metric_default: ClassVar[str] = "mean_AUROC"
  host_fields: ClassVar[tuple[str, ...]] = ("id",)

  config: ml_collections.ConfigDict
  label_names: tuple[str, ...]  # the findings, in the order of the model's outputs
  tokenizer: None = None  # Classifiers read no text.
  preprocessing: transforms.Preprocessing | None = None  # None: the config's (transforms.from_config)
  family: Any = None  # the model family class (models/base.Family); None: config.model.name's, if any

  def __post_init__(self):
    # Derived once, here (a config without data, e.g. for a loss alone, has none); batches and samples read it.
    if self.preprocessing is None and self.config.get("data") is not None:
      object.__setattr__(self, "preprocessing", transforms.from_config(self.config))
    if self.family is None and self.config.get("model") is not None:
      object.__setattr__(self, "family", models.get(self.config.model.name))
    if self.label_names is None or not len(self.label_names):
      raise ValueError("a classifier's task needs its label names")
    if self.tokenizer is not None:
      raise ValueError("a classifier reads no text")
    object.__setattr__(self, "label_names", tuple(self.label_names))

  def sample_inputs(self) -> tuple[np.ndarray]:
    """Zero images [1, S, S, 3]: the classifier reads one view."""
    size = self.preprocessing.image_size
    return (np.zeros((1, size, size, 3), np.float32),)

  def init_variables(self, model, rngs: dict[str, jax.Array]) -> dict[str, Any]:
    return model.init(rngs, *self.sample_inputs())

  def loss(self, model, variables: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array):
    del rng  # The classifiers have no dropout.
    outputs, updates = model.apply(variables, batch["images"][:, 0], train=True, mutable=["batch_stats"])
    loss = model.loss(outputs, batch["labels"], mask=batch.get("mask"))
    return loss, (updates.get("batch_stats", {}), {})

  def options(
    self,
    *,
    greedy: bool = False,
    beam_size: int | None = None,
    max_length: int | None = None,
    attention: bool = False,
    flags: bool = False,
  ) -> base.Options:
    """Classifiers take `attention` only (the family's heatmap); decoding options are a ConfigError."""
    given = [
      name for name, value in (("greedy", greedy), ("beam_size", beam_size), ("max_length", max_length)) if value
    ]
    if given:
      names = ", ".join(f"--{n.replace('_', '-')}" if flags else n for n in given)
      raise ConfigError(f"the {self.config.model.name} model is a classifier; decoding options ({names}) do not apply")
    return base.Options(attention=attention)

  def predict_fn(self, model, options: base.Options) -> base.PredictFn:
    """(variables, batch) -> the family's predictions ({"probabilities": [batch, classes], ...}; `options`'
    attention adds the family's heatmap) and the batch's "labels" where it has them. To jit."""

    def predict(variables, batch):
      outputs = model.predictions(model.apply(variables, batch["images"][:, 0]), attention=options.attention)
      if "labels" in batch:
        outputs["labels"] = batch["labels"]
      return outputs

    return predict

  def attention_fn(self, model) -> None:
    """None: a classifier's attention (AG-CNN's heatmap) comes with its prediction (options.attention)."""
    del model
    return None

  def results(self, outputs: dict[str, np.ndarray], options: base.Options) -> list[dict[str, Any]]:
    """Per row: {"probabilities": {finding: p}[, "box": (y0, x0, y1, x1) in the view's pixels][, with
    options.attention: "heatmap" float32 [H, W] and "local_image" float32 [crop, crop, 3], or "heatmap" None
    where the family has none]}."""
    results = []
    for index, probabilities in enumerate(np.asarray(outputs["probabilities"])):
      result: dict[str, Any] = {
        "probabilities": {n: round(float(p), 6) for n, p in zip(self.label_names, probabilities)},
      }
      if "boxes" in outputs:
        result["box"] = [int(b) for b in outputs["boxes"][index]]
      if options.attention:
        result["heatmap"] = None if "heatmap" not in outputs else np.asarray(outputs["heatmap"][index], np.float32)
        if "local_images" in outputs:
          result["local_image"] = np.asarray(outputs["local_images"][index], np.float32)
      results.append(result)
    return results

  def records(self, outputs: dict[str, np.ndarray], host: dict[str, list[str]]) -> list[dict]:
    return [
      {"id": image_id, "probabilities": probabilities, "labels": labels}
      for image_id, probabilities, labels in zip(host["id"], outputs["probabilities"], outputs["labels"])
    ]

  evaluator_kind: ClassVar[str] = "findings"  # What its predictions are, for evaluators (evaluators/base.py).

  @staticmethod
  def default_evaluators(config: ml_collections.ConfigDict, stage: str, meteor: bool | None = None) -> dict:
    """Per-class AUROC and mean_AUROC, in validation and `evaluate` alike."""
    del config, stage, meteor
    return {"auroc": {"type": "auroc"}}

  def write(self, out_dir, records: list[dict]) -> None:
    classification_metrics.write_predictions_csv(
      out_dir / "predictions.csv",
      [r["id"] for r in records],
      np.stack([r["probabilities"] for r in records]),
      list(self.label_names),
    )
