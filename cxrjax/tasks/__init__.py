"""Tasks: what the trainer, evaluation and prediction need to know about a kind of model.

  captioning:      report generators (models/*_captioner.py): masked token cross-entropy; generation
                   (greedy for validation, the config's beam search for evaluation) scored with text metrics.
  classification:  AG-CNN (models/agcnn.py) on multi-label findings: the stage's binary cross-entropy;
                   probabilities scored with per-class AUROC.

A task turns a batch (the schema at the top of data/pipeline.py) into the model's inputs and a loss, gives
the jitted per-batch prediction, turns gathered predictions into records, scores them and writes them.
cxrjax/tasks/evaluation.py runs a split through those for the trainer's validation and `cxrjax evaluate`.
"""

from typing import Any

from cxrjax import models
from cxrjax.tasks.captioning import CaptioningTask
from cxrjax.tasks.classification import ClassificationTask

TASKS = {"captioning": CaptioningTask, "classification": ClassificationTask}


def task_class(config: Any) -> type:
  """The task class of `config.model.name`'s family."""
  return TASKS[models.get(config.model.name).task]


def make(config: Any):
  """The task of `config.model.name`'s family."""
  return task_class(config)(config)
