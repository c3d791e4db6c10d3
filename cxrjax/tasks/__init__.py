"""Tasks: what the trainer, evaluation and prediction need to know about a kind of model (tasks/base.Task).

  captioning:      report generators (models/*_captioner.py, GIT, BLIP): masked token cross-entropy;
                   generation (greedy for validation, the config's beam search for evaluation) scored with
                   text metrics.
  classification:  AG-CNN and CheXNet on multi-label findings: the family's binary cross-entropy;
                   probabilities scored with per-class AUROC.

A task is built complete by `make`, with the run's tokenizer (report generators) or label names
(classifiers), and never changed. It turns a batch (the schema at the top of data/pipeline.py) into the
model's inputs and a loss, gives the one jittable prediction of a batch (`predict_fn(model, options)`) and
its results, turns gathered predictions into records, scores them and writes them.
cxrjax/tasks/evaluation.py runs a split through those for the trainer's validation and `cxrjax evaluate`.
"""

from collections.abc import Sequence
from typing import Any

from cxrjax import models
from cxrjax.core import registry
from cxrjax.core.errors import ConfigError
from cxrjax.tasks.base import Options, Task
from cxrjax.tasks.captioning import CaptioningTask
from cxrjax.tasks.classification import ClassificationTask

TASKS: registry.Registry[type] = registry.Registry("task", "a model family's task", ConfigError)
TASKS.add(CaptioningTask.name, CaptioningTask)
TASKS.add(ClassificationTask.name, ClassificationTask)


def task_class(config: Any, family: type | None = None) -> type:
  """The task class of `config.model.name`'s family (`family`, where the caller has looked it up already)."""
  family = models.get(config.model.name) if family is None else family
  return TASKS.get(family.task)


def make(
  config: Any,
  tokenizer: Any = None,
  label_names: Sequence[str] | None = None,
  preprocessing: Any = None,
  family: type | None = None,
) -> Task:
  """The task of `config.model.name`'s family, complete: report generators with their `tokenizer`,
  classifiers with their `label_names` (the findings in the order of the model's outputs); `preprocessing`
  (data/transforms.py) where it is not the config's; `family` (the model family class) where the caller has
  it: the task carries it, so that its users look the family up no more."""
  family = models.get(config.model.name) if family is None else family
  cls = task_class(config, family)
  if cls.uses_tokenizer:
    return cls(config, tokenizer, preprocessing=preprocessing, family=family)
  labels = tuple(label_names) if label_names is not None else None
  return cls(config, labels, preprocessing=preprocessing, family=family)
