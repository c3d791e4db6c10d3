"""Evaluators as configured units (big_vision's `evaluators/`): a registered name -> a class built from a
config section, that scores generated reports against their references.

    evaluator = evaluators.build("chexbert", dict(labeler=DIR, batch_size=64), mesh=mesh)
    evaluator(ids, references, generated)   # {"CE/uncertain_positive/all14/micro/F1": ..., ...}
    evaluator.provenance()                  # {"labeler": DIR, "checkpoint": ..., "sha256": <chexbert.pth's>}

A run names several in one section (big_vision's config.evals), each sub-section's `type` picking the class
(default: the sub-section's name):

    config.evaluators = dict(text=dict(protocol="r2gen", meteor=False), chexbert=dict(labeler=DIR))
    built = evaluators.from_config(config.evaluators, mesh=mesh)
    evaluators.run(built, ids, references, generated)   # {"num_studies", "scores", "provenance"}: metrics.json's

Registered (fields and defaults: each class's FIELDS; REQUIRED ones have no default):
  text       metrics/captioning.caption_metrics under a scoring protocol (metrics/protocols.py): protocol,
             meteor. Keys "BLEU-1" ... "CIDEr", "protocol", "implementations".
  chexbert   clinical efficacy: references and generated reports labelled by a CheXbert labeler directory
             (weights/chexbert_labeler.py; `cxrjax port-weights --format chexbert`) in jitted batches
             sharded over the mesh's 'data' axis, then metrics/clinical.clinical_efficacy on the label
             matrices: labeler, batch_size. Keys "CE/<policy>/<set>/...". Provenance: the labeler directory,
             the checkpoint it was ported from and that checkpoint's SHA-256.
  bertscore  evaluators/bertscore.BertScorer (bert-score's definitions) of a Hugging Face encoder directory, in
             jitted batches sharded over the mesh's 'data' axis: model, layer (None: bert-score's default for
             the model type), idf, baseline (a rescaling baseline file, or None), batch_size. Keys
             "BERTScore/P", "BERTScore/R", "BERTScore/F1": means over the predictions.
Scores of an evaluator named otherwise than its type (two labelers side by side) are prefixed "<name>/".

An evaluator is `Evaluator(config, mesh, where)`, `__call__(ids, references, generated, progress=None) ->
scores`, `provenance() -> dict` and HEADLINE, the keys a one-line summary shows (`headline`); `progress(k)`
says k more texts (references or generated) are done, 2N for N predictions. Adding one is a class here with
`@register("type")` above it: it adds the class to REGISTRY (cxrjax/registry.py's rule) and sets its `name`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from cxrjax import registry, sharding
from cxrjax.errors import ConfigError
from cxrjax.evaluators import bertscore
from cxrjax.metrics import captioning, clinical, protocols
from cxrjax.models import chexbert
from cxrjax.weights import chexbert_labeler

REQUIRED = object()  # A field without a default.
REGISTRY: registry.Registry[type] = registry.Registry("evaluator", "config.evaluators.<name>.type", ConfigError)
Progress = Callable[[int], None]


def register(name: str) -> Callable[[type], type]:
  """REGISTRY.register(name), also setting the class's `name`: `run` and `headline` read it to prefix the
  scores of an evaluator named otherwise than its type."""

  def add(cls: type) -> type:
    cls.name = name
    return REGISTRY.register(name)(cls)

  return add


def _fields(cls: type, config: Mapping[str, Any], where: str) -> dict[str, Any]:
  """`config` (a dict or ConfigDict section) checked against cls.FIELDS, defaults filled in; a ConfigError
  naming `where`.field for an unknown or missing field."""
  config = dict(config.to_dict() if hasattr(config, "to_dict") else config)
  config.pop("type", None)
  unknown = sorted(set(config) - set(cls.FIELDS))
  if unknown:
    raise ConfigError(f"{where}.{unknown[0]}: unknown field of the {cls.name} evaluator; it takes {sorted(cls.FIELDS)}")
  fields = {**cls.FIELDS, **config}
  missing = sorted(
    name for name, value in fields.items() if value is REQUIRED or value is None and cls.FIELDS[name] is REQUIRED
  )
  if missing:
    raise ConfigError(f"{where}.{missing[0]}: required by the {cls.name} evaluator")
  return fields


def _check_lengths(ids: Sequence[str], references: Sequence[str], generated: Sequence[str]) -> None:
  if not len(ids) == len(references) == len(generated):
    raise ValueError(
      f"{len(ids)} ids, {len(references)} references, {len(generated)} generated reports: one each per prediction"
    )


@register("text")
class Text:
  """Caption metrics of the generated reports, both sides normalised by one scoring protocol."""

  FIELDS = {"protocol": REQUIRED, "meteor": True}
  # The scores a one-line summary shows (the IU X-ray tables' columns); the evaluator returns more.
  HEADLINE = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

  def __init__(self, config: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None, where: str = "text"):
    del mesh  # Pure Python and host packages: nothing to shard.
    self.config = _fields(type(self), config, where)
    if self.config["protocol"] not in protocols.PROTOCOLS:
      raise ConfigError(
        f"{where}.protocol: unknown protocol {self.config['protocol']!r}; expected one of {sorted(protocols.PROTOCOLS)}"
      )

  def __call__(
    self, ids: Sequence[str], references: Sequence[str], generated: Sequence[str], progress: Progress | None = None
  ) -> dict[str, Any]:
    _check_lengths(ids, references, generated)
    scores = captioning.caption_metrics(
      list(references), list(generated), protocol=self.config["protocol"], meteor=self.config["meteor"]
    )
    if progress is not None:
      progress(2 * len(ids))
    return scores

  def provenance(self) -> dict[str, Any]:
    return {"protocol": self.config["protocol"], "meteor": self.config["meteor"]}


@register("chexbert")
class CheXbert:
  """Clinical efficacy from the CheXbert labels of the references and of the generated reports."""

  FIELDS = {"labeler": REQUIRED, "batch_size": 64}
  # f1chexbert's four F1s (uncertain as positive) and R2Gen's micro CE (uncertain as negative): clinical.py.
  HEADLINE = tuple(f"CE/uncertain_positive/{s}/{a}/F1" for s in ("all14", "top5") for a in ("micro", "macro")) + tuple(
    f"CE/uncertain_negative/all14/micro/{m}" for m in ("precision", "recall", "F1")
  )

  def __init__(self, config: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None, where: str = "chexbert"):
    self.config = _fields(type(self), config, where)
    if not isinstance(self.config["batch_size"], int) or self.config["batch_size"] < 1:
      raise ConfigError(f"{where}.batch_size: {self.config['batch_size']!r}; must be an integer of at least 1")
    self.labeler = chexbert_labeler.Labeler.load(self.config["labeler"], mesh=mesh)

  def labels(self, reports: Sequence[str], progress: Progress | None = None) -> np.ndarray:
    """reports -> float [N, 14] of 1 / 0 / -1 / NaN (label.py's CSV values, clinical.py's input)."""
    classes = self.labeler.classes(list(reports), self.config["batch_size"], progress)  # [N, 14]
    values = np.array([np.nan if value is None else value for value in chexbert.CLASS_VALUES])
    return values[classes]

  def __call__(
    self, ids: Sequence[str], references: Sequence[str], generated: Sequence[str], progress: Progress | None = None
  ) -> dict[str, Any]:
    _check_lengths(ids, references, generated)
    # One pass over both sides: batches of similar lengths, fewer padded rows.
    labels = self.labels(list(references) + list(generated), progress)
    return clinical.clinical_efficacy(labels[len(references) :], labels[: len(references)])

  def provenance(self) -> dict[str, Any]:
    return {
      "labeler": str(self.config["labeler"]),
      "checkpoint": self.labeler.source.get("file"),
      "sha256": self.labeler.source.get("sha256"),
      "batch_size": self.config["batch_size"],
    }


@register("bertscore")
class BERTScore:
  """BERTScore of the generated reports against their references (bert-score's P, R, F1, averaged)."""

  FIELDS = {"model": REQUIRED, "layer": None, "idf": False, "baseline": None, "batch_size": 64}
  HEADLINE = ("BERTScore/F1",)

  def __init__(self, config: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None, where: str = "bertscore"):
    self.config = _fields(type(self), config, where)
    if not isinstance(self.config["batch_size"], int) or self.config["batch_size"] < 1:
      raise ConfigError(f"{where}.batch_size: {self.config['batch_size']!r}; must be an integer of at least 1")
    self.mesh = mesh
    self.scorer = bertscore.BertScorer.from_directory(
      self.config["model"],
      num_layers=self.config["layer"],
      idf=bool(self.config["idf"]),
      baseline_file=self.config["baseline"],
    )

  def __call__(
    self, ids: Sequence[str], references: Sequence[str], generated: Sequence[str], progress: Progress | None = None
  ) -> dict[str, Any]:
    _check_lengths(ids, references, generated)
    rows = self.config["batch_size"]
    if self.mesh is not None:  # The scorer takes a multiple of the 'data' axis: every device gets equal rows.
      data = self.mesh.shape[sharding.DATA_AXIS]
      rows = -(-rows // data) * data
    result = self.scorer.score(list(generated), list(references), batch_size=rows, mesh=self.mesh)
    if progress is not None:
      progress(2 * len(ids))
    return {f"BERTScore/{name}": result[f"{name}_mean"] for name in ("P", "R", "F1")}

  def provenance(self) -> dict[str, Any]:
    return {
      "model": str(self.config["model"]),
      "model_type": self.scorer.model_type,
      "layer": self.scorer.num_layers,
      "idf": self.scorer.idf,
      "baseline": None if self.config["baseline"] is None else str(self.config["baseline"]),
      "batch_size": self.config["batch_size"],
    }


def build(kind: str, config: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None, where: str | None = None) -> Any:
  """The evaluator registered as `kind`, built from `config` (its fields); errors name `where`."""
  cls = REGISTRY.get(kind, field=None if where is None else f"{where}.type")
  return cls(config, mesh=mesh, where=where or kind)


def from_config(
  section: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None, where: str = "config.evaluators"
) -> dict[str, Any]:
  """{name: sub-section} (each sub-section's `type`, default its name, picks the class) -> {name: evaluator}."""
  section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  if not section:
    raise ConfigError(f"{where}: no evaluators; expected some of {sorted(REGISTRY)}")
  return {name: build(sub.get("type", name), sub, mesh, f"{where}.{name}") for name, sub in section.items()}


def run(
  evaluators: Mapping[str, Any],
  ids: Sequence[str],
  references: Sequence[str],
  generated: Sequence[str],
  progress: Progress | None = None,
) -> dict[str, Any]:
  """Every evaluator over the predictions -> {"num_studies", "scores": all scores in one dict, "provenance":
  {name: evaluator.provenance()}}. An evaluator named otherwise than its type has its keys prefixed."""
  _check_lengths(ids, references, generated)
  if len(set(ids)) != len(ids):
    raise ValueError("ids must be unique: one prediction per study")
  scores, provenance = {}, {}
  for name, evaluator in evaluators.items():
    prefix = "" if name == evaluator.name else f"{name}/"
    for key, value in evaluator(ids, references, generated, progress).items():
      if prefix + key in scores:
        raise ConfigError(f"evaluators: two give the score {prefix + key!r}; name one otherwise than its type")
      scores[prefix + key] = value
    provenance[name] = {"type": evaluator.name, **evaluator.provenance()}
  return {"num_studies": len(ids), "scores": scores, "provenance": provenance}


def headline(evaluators: Mapping[str, Any], scores: Mapping[str, Any]) -> dict[str, Any]:
  """The HEADLINE scores of every evaluator (prefixed as `run` prefixes them), for a one-line summary."""
  shown = {}
  for name, evaluator in evaluators.items():
    prefix = "" if name == evaluator.name else f"{name}/"
    shown.update({prefix + key: scores[prefix + key] for key in evaluator.HEADLINE if prefix + key in scores})
  return shown
