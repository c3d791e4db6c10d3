"""Evaluators as configured units (big_vision's `evaluators/`): a registered type -> a class built from a
config section, that scores a split's predictions (evaluators/base.py says what an evaluator is).

    built = evaluators.for_run(config, "evaluate", mesh)      # the task's defaults + config.evaluators
    result = evaluators.run(built, evaluators.Predictions.from_records(records, data=config.data))
    result["scores"], result["baselines"], result["provenance"]   # metrics.json's sections

A run's evaluators are its task's defaults (report generators: "text" under the dataset's scoring protocol,
and for `evaluate` the image-free "baselines" and the "findings_oracle"; classifiers: "auroc") and its
config.evaluators section (big_vision's config.evals): {name: sub-section}, each sub-section's `type` picking
the class (default: the sub-section's name), its `stages` where it runs ("train": validation, which can pick
the best checkpoint by its headline scores; "evaluate": `cxrjax evaluate`). In training (`evaluate` ignores
them: its --split says what it scores) each also has a cadence and a split (jobs/train.py):
  every_steps  the validations it runs at: those whose step is a multiple of it, a multiple of train.eval_every
               (default: every validation); the validation at the last step runs every evaluator
  split        the split whose predictions it scores: "validation" (also "val"; the default) or "test";
               each split is predicted once per validation for all the evaluators due on it, and scored in
               its own metrics.jsonl records ("split": "val" as ever, "test"). eval.best_metric must be a
               score of an evaluator that runs at every validation on the validation split.
A sub-section named as a default changes that default's fields (config.evaluators.text.meteor=True), or drops
it (None):

    config.evaluators = dict(chexbert=dict(labeler=DIR), coco=dict(type="text", protocol="coco"),
                             test_text=dict(type="text", protocol="r2gen", split="test", every_steps=1000))

Registered (fields and defaults: each class's FIELDS; REQUIRED ones have no default):
  text             evaluators/text.py: caption metrics under a scoring protocol: protocol, meteor.
  chexbert         evaluators/chexbert.py: clinical efficacy from a CheXbert labeler: labeler, batch_size.
  bertscore        evaluators/bertscore.py: BERTScore with a Hugging Face encoder: model, layer, idf, baseline,
                   batch_size.
  baselines        evaluators/baselines.py: the most common and the best constant training report ("evaluate").
  findings_oracle  evaluators/baselines.py: the report of each study's true findings (phantom sets; "evaluate").
  auroc            evaluators/auroc.py: per-class AUROC and mean_AUROC of a classifier.
Scores of an evaluator named otherwise than its type (two labelers side by side) are prefixed "<name>/".
Adding one is a module here with its `@base.register` class, and its import below.
"""

from collections.abc import Mapping
from typing import Any

from cxrjax import tasks
from cxrjax.core.errors import ConfigError
from cxrjax.evaluators import auroc  # noqa: F401  (registers "auroc")
from cxrjax.evaluators import baselines  # noqa: F401  (registers "baselines", "findings_oracle")
from cxrjax.evaluators import bertscore  # noqa: F401  (registers "bertscore")
from cxrjax.evaluators import chexbert  # noqa: F401  (registers "chexbert")
from cxrjax.evaluators import text  # noqa: F401  (registers "text")
from cxrjax.evaluators.base import KINDS, REGISTRY, STAGES, Predictions, Progress


def build(kind: str, config: Mapping[str, Any], mesh: Any = None, where: str | None = None) -> Any:
  """The evaluator registered as `kind`, built from `config` (its fields); errors name `where`."""
  cls = REGISTRY.get(kind, field=None if where is None else f"{where}.type")
  return cls(config, mesh=mesh, where=where or kind)


def _as_dict(section: Any) -> dict[str, Any]:
  return dict(section.to_dict() if hasattr(section, "to_dict") else section or {})


def from_config(section: Mapping[str, Any], mesh: Any = None, where: str = "config.evaluators") -> dict[str, Any]:
  """{name: sub-section} (each sub-section's `type`, default its name, picks the class) -> {name: evaluator}."""
  section = _as_dict(section)
  if not section:
    raise ConfigError(f"{where}: no evaluators; expected some of {sorted(REGISTRY)}")
  return {name: build(sub.get("type", name), sub, mesh, f"{where}.{name}") for name, sub in section.items()}


def for_run(
  config: Any,
  stage: str,
  mesh: Any = None,
  extra: Mapping[str, Any] | None = None,
  meteor: bool | None = None,
  task_class: type | None = None,
) -> dict[str, Any]:
  """The evaluators a run of `config` uses at `stage` ("train": validation; "evaluate"): its task's defaults
  (tasks/*.default_evaluators; `meteor` sets the text metrics' METEOR) updated by config.evaluators and then
  `extra` (same name: fields merged; None: dropped), those whose `stages` hold `stage`, built over `mesh`.
  A ConfigError, before any prediction, for a section the run's predictions cannot feed (a text evaluator on a
  classifier) or whatever `build` refuses. `task_class`: the run's task class where the caller has it (else
  looked up from config.model.name)."""
  if stage not in STAGES:
    raise ValueError(f"stage {stage!r}; expected one of {STAGES}")
  task_class = tasks.task_class(config) if task_class is None else task_class
  section = task_class.default_evaluators(config, stage, meteor)
  configured = {**_as_dict(config.get("evaluators")), **_as_dict(extra)}
  for name, sub in configured.items():
    if sub is None:
      section.pop(name, None)
    else:
      section[name] = {**section.get(name, {}), **_as_dict(sub)}
  built = {}
  for name, sub in section.items():
    where = f"config.evaluators.{name}"
    evaluator = build(sub.get("type", name), sub, mesh, where)
    if evaluator.KIND != task_class.evaluator_kind:
      raise ConfigError(
        f"{where}: the {evaluator.name} evaluator scores {KINDS[evaluator.KIND]}; {config.model.name} "
        f"predicts {KINDS[task_class.evaluator_kind]}"
      )
    if stage in evaluator.stages:
      built[name] = evaluator
  return built


def run(evaluators: Mapping[str, Any], predictions: Predictions, progress: Progress | None = None) -> dict[str, Any]:
  """Every evaluator over the predictions -> {"num_studies", "scores": the flat scores of every evaluator of
  SECTION "scores" (prefixed "<name>/" where it is named otherwise than its type), each other SECTION's results
  merged under its name (e.g. "baselines"), "provenance": {name: {"type", ...}}}."""
  result: dict[str, Any] = {"num_studies": len(predictions.ids), "scores": {}, "provenance": {}}
  for name, evaluator in evaluators.items():
    if evaluator.KIND != predictions.kind:
      raise ConfigError(
        f"evaluators.{name}: the {evaluator.name} evaluator cannot score {predictions.kind} predictions"
      )
    output = evaluator(predictions, progress)
    if evaluator.SECTION == "scores":
      prefix = "" if name == evaluator.name else f"{name}/"
      for key, value in output.items():
        if prefix + key in result["scores"]:
          raise ConfigError(f"evaluators: two give the score {prefix + key!r}; name one otherwise than its type")
        result["scores"][prefix + key] = value
    else:
      result.setdefault(evaluator.SECTION, {}).update(output)
    result["provenance"][name] = {"type": evaluator.name, **evaluator.provenance()}
  return result


def headline(evaluators: Mapping[str, Any], scores: Mapping[str, Any]) -> dict[str, Any]:
  """The HEADLINE scores of every evaluator (prefixed as `run` prefixes them), for a one-line summary."""
  shown = {}
  for name, evaluator in evaluators.items():
    prefix = "" if name == evaluator.name else f"{name}/"
    shown.update({prefix + key: scores[prefix + key] for key in evaluator.HEADLINE if prefix + key in scores})
  return shown
