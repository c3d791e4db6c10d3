"""What every evaluator shares: the registry, the predictions they score, and checked config fields.

An evaluator is a class registered by `@register("type")` in its own module of this package:
  FIELDS     {field: default} of its config sub-section (REQUIRED: no default); every evaluator also takes
             COMMON_FIELDS: `stages`, where it runs: "train" (validation, which can pick the best checkpoint by
             its scores) and / or "evaluate" (`cxrjax evaluate`), default its STAGES; and, for training only
             (`cxrjax evaluate` ignores them: its --split and every call say what it scores), `every_steps`:
             the validations it runs at, those whose step is a multiple of it (None: every validation; the
             trainer refuses one that is not a multiple of train.eval_every, and the last step's validation runs
             every evaluator), and `split`: the split whose predictions it scores, "validation" (also "val"; None:
             the validation split, whose scores are metrics.jsonl's "val" records) or "test"
  KIND       what it scores: "text" (generated reports against references) or "findings" (probabilities
             against 0/1 labels)
  SECTION    where its result goes in metrics.json: "scores" (one flat dict, its keys prefixed "<name>/" when
             it is named otherwise than its type) or another key (e.g. "baselines"), merged there as it is
  HEADLINE   the score keys a one-line summary shows (and validation's best checkpoint can be chosen by)
  __init__(config, mesh, where), __call__(predictions, progress=None) -> dict, provenance() -> dict
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.core import registry
from cxrjax.core.errors import ConfigError
from cxrjax.data import registry as data_registry

REQUIRED = object()  # A field without a default.
COMMON_FIELDS = ("stages", "every_steps", "split")  # Taken by every evaluator (module docstring).
REGISTRY: registry.Registry[type] = registry.Registry("evaluator", "config.evaluators.<name>.type", ConfigError)
STAGES = ("train", "evaluate")
KINDS = {"text": "generated reports", "findings": "finding probabilities"}
Progress = Callable[[int], None]


def register(name: str) -> Callable[[type], type]:
  """REGISTRY.register(name), also setting the class's `name`: `run` and `headline` read it to prefix the
  scores of an evaluator named otherwise than its type."""

  def add(cls: type) -> type:
    cls.name = name
    return REGISTRY.register(name)(cls)

  return add


@dataclasses.dataclass(frozen=True)
class Predictions:
  """What evaluators score, one entry per study in split order: texts (report generators) or probabilities
  and labels (classifiers), with what some evaluators read beside them."""

  ids: Sequence[str]
  references: Sequence[str] | None = None  # report generators: the references, as the dataset cleans them
  generated: Sequence[str] | None = None
  probabilities: np.ndarray | None = None  # classifiers: float [N, classes]
  labels: np.ndarray | None = None  # 0/1 [N, classes]
  label_names: Sequence[str] | None = None
  data: Any = None  # the run's data config: the image-free baselines read its training split
  source: Any = None  # the scored split's source: the findings oracle reads its true findings

  def __post_init__(self):
    lengths = {"ids": len(self.ids)}
    lengths.update(
      {
        n: len(getattr(self, n))
        for n in ("references", "generated", "probabilities", "labels")
        if getattr(self, n) is not None
      }
    )
    if len(set(lengths.values())) != 1:
      raise ValueError(f"{lengths}: one of each per prediction")
    if len(set(self.ids)) != len(self.ids):
      raise ValueError("ids must be unique: one prediction per study")

  @property
  def kind(self) -> str:
    return "text" if self.generated is not None else "findings"

  @classmethod
  def from_records(cls, records: Sequence[Mapping[str, Any]], **context: Any) -> "Predictions":
    """A task's records ({"id", "reference", "generated"} or {"id", "probabilities", "labels"}) -> Predictions;
    `context`: label_names, data, source."""
    ids = [str(r["id"]) for r in records]
    if records and "generated" in records[0]:
      return cls(ids, [r["reference"] for r in records], [r["generated"] for r in records], **context)
    stack = lambda key: np.stack([r[key] for r in records]) if records else np.zeros((0, 0))  # noqa: E731
    return cls(ids, probabilities=stack("probabilities"), labels=stack("labels"), **context)


def scored_split(value: Any, where: str) -> str:
  """An evaluator's `split` -> "validation" or "test" (data/registry.py's names; "val" is "validation"); a
  ConfigError naming `where` for anything else. Training predicts no training split: its records in
  metrics.jsonl are the loss's, and its scores would be in-sample."""
  split = data_registry.SPLIT_ALIASES.get(value, value) if isinstance(value, str) else value
  if split not in ("validation", "test"):
    raise ConfigError(f"{where}: {value!r}; expected 'validation' (also 'val') or 'test'")
  return split


def fields(cls: type, config: Mapping[str, Any], where: str) -> dict[str, Any]:
  """`config` (a dict or ConfigDict section) checked against cls.FIELDS and COMMON_FIELDS, defaults filled in; a
  ConfigError naming `where`.field for an unknown, missing or bad field."""
  config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  config.pop("type", None)
  stages = config.pop("stages", cls.STAGES)
  stages = (stages,) if isinstance(stages, str) else tuple(stages)
  if not stages or set(stages) - set(STAGES):
    raise ConfigError(f"{where}.stages: {list(stages)}; expected some of {list(STAGES)}")
  every_steps, split = config.pop("every_steps", None), config.pop("split", None)
  if every_steps is not None:
    positive_int(every_steps, f"{where}.every_steps")
  if split is not None:
    split = scored_split(split, f"{where}.split")
  unknown = sorted(set(config) - set(cls.FIELDS))
  if unknown:
    raise ConfigError(
      f"{where}.{unknown[0]}: unknown field of the {cls.name} evaluator; it takes "
      f"{sorted([*cls.FIELDS, *COMMON_FIELDS])}"
    )
  values = {**cls.FIELDS, **config}
  missing = sorted(
    name for name, value in values.items() if value is REQUIRED or value is None and cls.FIELDS[name] is REQUIRED
  )
  if missing:
    raise ConfigError(f"{where}.{missing[0]}: required by the {cls.name} evaluator")
  return dict(values, stages=stages, every_steps=every_steps, split=split)


def positive_int(value: Any, where: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ConfigError(f"{where}: {value!r}; must be an integer of at least 1")
  return value


class Evaluator:
  """Defaults of the members every evaluator has (module docstring)."""

  name: str
  FIELDS: dict[str, Any] = {}
  KIND = "text"
  SECTION = "scores"
  STAGES = STAGES
  HEADLINE: tuple[str, ...] = ()

  def __init__(self, config: Mapping[str, Any], mesh: Any = None, where: str | None = None):
    del mesh
    self.config = fields(type(self), config, where or self.name)

  @property
  def stages(self) -> tuple[str, ...]:
    return self.config["stages"]

  @property
  def every_steps(self) -> int | None:
    """In training: the validations it runs at, those of a step that is a multiple (None: every one)."""
    return self.config["every_steps"]

  @property
  def split(self) -> str | None:
    """In training: the split it scores, "validation" or "test" (None: the validation split)."""
    return self.config["split"]

  def provenance(self) -> dict[str, Any]:
    return {}
