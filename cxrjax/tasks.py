"""What the trainer needs to know about a kind of model, in one object per task.

  captioning:      report generators (captioner.py, lstm.py, context.py): masked token cross-entropy,
                   greedy-decoded validation BLEU.
  classification:  AG-CNN (agcnn.py) on multi-label findings: the stage's binary cross-entropy,
                   validation AUROC.

A task turns a batch (the schema at the top of data/pipeline.py) into the model's inputs and a loss,
says which parameters a stage leaves frozen, and scores a validation split. The trainer stays generic.
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cxrjax.metrics import captioning as metrics
from cxrjax.data import pipeline
from cxrjax.text import tokenizers as text


def model_images(batch: dict[str, Any]) -> Any:
  """The batch's images [batch, views, H, W, 3], or its cached encoder features as the dict that
  captioner.ImageEncoder takes in their place."""
  from cxrjax import features
  if "images" in batch:
    return batch["images"]
  return {key: batch[features.BATCH_PREFIX + key] for key in features.FEATURE_KEYS}


class CaptioningTask:
  """Teacher-forced report generation: inputs tokens[:, :-1], targets tokens[:, 1:]."""
  name = "captioning"
  uses_vocabulary = True

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self._generator = None

  def sample_batch(self) -> dict[str, np.ndarray]:
    size, length = self.config.data.image_size, self.config.data.max_length
    return {"images": np.zeros((1, 2, size, size, 3), np.float32), "tokens": np.zeros((1, length), np.int32)}

  def init(self, model, rngs: dict[str, jax.Array]) -> dict[str, Any]:
    sample = self.sample_batch()
    return model.init(rngs, sample["images"], sample["tokens"][:, :-1])

  def loss(self, model, variables: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array):
    """Cross-entropy over real tokens only (pad = 0 masked, as both seeds do)."""
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]  # [batch, length - 1] each
    outputs, updates = model.apply(variables, model_images(batch), inputs, train=True,
                                   rngs={"dropout": rng}, mutable=["batch_stats"])
    mask = (targets != text.PAD_ID).astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"].astype(jnp.float32), targets)
    num_tokens = mask.sum()
    loss = (losses * mask).sum() / jnp.maximum(num_tokens, 1.0)
    return loss, (updates.get("batch_stats", {}), {"tokens": num_tokens})

  def frozen_prefixes(self) -> tuple[str, ...]:
    from cxrjax import models
    return models.frozen_prefixes(self.config.model)

  def load_pretrained(self, params: Any, batch_stats: Any, vocabulary) -> tuple[Any, Any]:
    from cxrjax import models
    return models.load_pretrained(self.config.model, params, batch_stats, vocabulary)

  def validate(self, model, state, source, vocabulary) -> dict[str, float]:
    from cxrjax import evaluate
    if self._generator is None:  # Kept, so that its jitted search compiles once per run.
      self._generator = evaluate.ReportGenerator(model, vocabulary, self.config.decode, greedy=True)
    result = evaluate.evaluate_source(self._generator, state, source, self.config,
                                      max_examples=self.config.eval.get("max_val_examples"))
    return result["scores"]


class ClassificationTask:
  """AG-CNN's staged multi-label training on the first view of each record (the frontal image)."""
  name = "classification"
  uses_vocabulary = False

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.stage = int(config.model.stage)
    self._predict = None

  def sample_batch(self) -> dict[str, np.ndarray]:
    size = self.config.data.image_size
    return {"images": np.zeros((1, self.config.data.get("num_views", 1), size, size, 3), np.float32)}

  def init(self, model, rngs: dict[str, jax.Array]) -> dict[str, Any]:
    return model.init(rngs, self.sample_batch()["images"][:, 0])

  def loss(self, model, variables: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array):
    from cxrjax.models import agcnn
    del rng  # AG-CNN has no dropout.
    outputs, updates = model.apply(variables, batch["images"][:, 0], train=True, stage=self.stage,
                                   mutable=["batch_stats"])
    loss = agcnn.stage_loss(outputs, batch["labels"], self.stage, mask=batch.get("mask"))
    return loss, (updates.get("batch_stats", {}), {})

  def frozen_prefixes(self) -> tuple[str, ...]:
    from cxrjax.models import agcnn
    trained = agcnn.STAGE_MODULES[self.stage]
    return tuple(name for name in ("global_branch", "local_branch", "fusion_classifier")
                 if name not in trained)

  def load_pretrained(self, params: Any, batch_stats: Any, vocabulary) -> tuple[Any, Any]:
    """`model.init_from`: the best checkpoint of the previous stage's workdir (stages 2 and 3);
    else `model.encoder_weights`: ported CheXNet weights in both branches' backbones."""
    del vocabulary
    model_config = self.config.model
    if model_config.get("init_from"):
      from cxrjax import evaluate
      previous, _, _, state = evaluate.load_run(model_config.init_from)
      if previous.model.get("stage", 0) >= self.stage:
        raise ValueError(f"{model_config.init_from}: holds stage {previous.model.get('stage')}; "
                         f"stage {self.stage} starts from an earlier stage")
      if jax.tree.structure(state.params) != jax.tree.structure(params):
        raise ValueError(f"{model_config.init_from}: its AG-CNN differs from this config's")
      return state.params, state.batch_stats
    if model_config.get("encoder_weights"):
      from cxrjax.models import agcnn
      from cxrjax.weights import chexnet
      _, chexnet_variables, _ = chexnet.load_chexnet(model_config.encoder_weights)
      variables = agcnn.init_branch_from_chexnet({"params": params, "batch_stats": batch_stats},
                                                 chexnet_variables)
      return variables["params"], variables["batch_stats"]
    return params, batch_stats

  def probabilities(self, model, state, source, label_names) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, probabilities [n, classes] of this stage's branch, labels [n, classes]) over `source`."""
    from cxrjax.models import agcnn
    logits_key = agcnn.STAGE_LOGITS[self.stage]
    if self._predict is None:
      self._predict = jax.jit(lambda variables, images: jax.nn.sigmoid(
          model.apply(variables, images[:, 0])[logits_key]))
    dataset = pipeline.make_dataset(
        source, None, batch_size=self.config.eval.batch_size, image_size=self.config.data.image_size,
        max_length=2, train=False, label_names=label_names, shard_index=0, shard_count=1,
        num_views=self.config.data.get("num_views", 1))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    ids, probabilities, labels = [], [], []
    for batch in dataset:
      keep = batch["mask"]
      ids.extend(str(i) for i in batch["id"][keep])
      probabilities.append(np.asarray(self._predict(variables, batch["images"]))[keep])
      labels.append(batch["labels"][keep])
    return ids, np.concatenate(probabilities), np.concatenate(labels)

  def validate(self, model, state, source, vocabulary, label_names=None) -> dict[str, float]:
    del vocabulary
    label_names = label_names or pipeline.make_source(self.config.data, "val")[1].label_names
    if self.config.eval.get("max_val_examples"):
      source = pipeline.Subset(source, self.config.eval.max_val_examples)
    _, probabilities, labels = self.probabilities(model, state, source, label_names)
    return auroc_scores(labels, probabilities, label_names)


def auroc_scores(labels: np.ndarray, probabilities: np.ndarray, label_names) -> dict[str, Any]:
  """{"mean_AUROC", "AUROC/<class>"...} over the classes (those with one label value are excluded)."""
  result = metrics.multilabel_auroc(labels, probabilities, class_names=list(label_names))
  scores = {"mean_AUROC": float(result["mean"]), "num_examples": int(labels.shape[0])}
  scores.update({f"AUROC/{name}": float(value) for name, value in result["per_class"].items()})
  if result.get("note"):
    scores["note"] = result["note"]
  return scores


TASKS = {"captioning": CaptioningTask, "classification": ClassificationTask}


def make_task(config: ml_collections.ConfigDict):
  from cxrjax import models
  return TASKS[models.task_of(config.model)](config)
