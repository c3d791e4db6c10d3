"""`cxrjax evaluate`: a workdir's checkpoint over a split, scored by its task; files written by process 0.

  cxrjax evaluate --workdir DIR --split val|test [--checkpoint best|latest] [--beam-size 3]
                  [--leaderboard-json PATH] [--labeler DIR] [--bertscore-model DIR [--bertscore-layer N ...]]

writes DIR/eval/<split>/metrics.json and the task's predictions: report generators predictions.jsonl
(id, reference, generated) and metrics.json with BLEU-1..4 (as pycocoevalcap), sacreBLEU, METEOR, ROUGE-L,
CIDEr (each naming its implementation, and the scoring protocol that normalised the references and the texts
alike: metrics/protocols.py) and the image-free baselines of metrics/baselines.py scored the same way (the
most common training report, and the best constant report chosen on training data alone; on phantoms also
the findings oracle, the report written from each study's true findings); classifiers predictions.csv
(`cxrjax auroc` scores it against the label file) and per-class AUROC. metrics.json's "references" says
where the references came from, where the source says (IU X-ray: the dataset, split family "r2gen" or
"random", split, report sections, layout).

IU X-ray's published protocols: R2Gen's tables score findings only on R2Gen's split; the ReXrank leaderboard
scores findings + impression on R2Gen's 590 test studies. The report sections are the run's
config.data.report_sections (configs/iu_xray_*.py: `sections=findings_impression`). `leaderboard_json` (the
CLI's --leaderboard-json PATH) also writes the predictions as ReXrank's prediction file
(data/iu_xray/rexrank.py: its form and where it was read), whole or not at all; a run that is not R2Gen's test
split with findings + impression is refused before any prediction, one line naming the field.

Evaluators (cxrjax/evaluators/: CheXbert clinical efficacy, BERTScore): the run's config.evaluators section
(cxrjax/config.py), with the sections `evaluators` adds (the CLI's --labeler DIR and --bertscore-model DIR),
built once over the run's mesh and run on the predictions after the task's own scores; their scores join
metrics.json's "scores" and their provenance (the labeler checkpoint's SHA-256) is its "evaluators". The text
metrics stay the task's: a "text" evaluator under the name "text" would score them twice and is refused (one
named otherwise, e.g. coco=dict(type="text", protocol="coco"), adds its scores prefixed "coco/").
"""

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from cxrjax import evaluators as evaluators_lib
from cxrjax import files, sharding, tasks, workdir as workdir_lib
from cxrjax.data import datasets, pipeline
from cxrjax.data.iu_xray import rexrank
from cxrjax.errors import ConfigError, UserError
from cxrjax.metrics import baselines
from cxrjax.metrics import captioning as caption_metrics
from cxrjax.metrics import protocols as caption_protocols
from cxrjax.tasks import evaluation
from cxrjax.text import cleaning as text_cleaning


class EvaluationError(UserError):
  """Evaluation options that do not fit the arguments' limits or the workdir's model."""


def text_baselines(data_config, references: list[str], reference_source: Any, meteor: bool) -> dict[str, Any]:
  """What an answer that ignores the images scores on `references`, and (phantoms) what reading the
  images perfectly would score: {"most_common_report", "best_constant_report"[, "findings_oracle"]}, chosen
  and scored under the dataset's scoring protocol, as the model is (metrics/protocols.py)."""
  train_source, _ = datasets.make_source(data_config, "train")
  cleaning = data_config.cleaning
  protocol = caption_protocols.protocol_for(data_config)
  train_reports = datasets.report_texts(train_source, cleaning)
  result = {}
  most_common, share = baselines.most_common_report(train_reports, protocol=protocol)
  best_constant, train_bleu4 = baselines.best_constant_report(train_reports, protocol=protocol)
  for name, report, extra in (
    ("most_common_report", most_common, {"share_of_training_reports": share}),
    ("best_constant_report", best_constant, {"training_BLEU-4": train_bleu4}),
  ):
    result[name] = {
      "report": report,
      **extra,
      "scores": caption_metrics.caption_metrics(
        references, [report] * len(references), protocol=protocol, meteor=meteor
      ),
    }
  if hasattr(reference_source, "oracle_reports"):
    oracle = [text_cleaning.clean_report(r, cleaning) for r in reference_source.oracle_reports()]
    result["findings_oracle"] = {
      "scores": caption_metrics.caption_metrics(references, oracle, protocol=protocol, meteor=meteor)
    }
  return result


def build_evaluators(
  config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
  """The evaluators of config.evaluators plus `extra`'s sections (same name: `extra`'s replaces the config's),
  built over `mesh`; {} when there are none. A ConfigError (before any prediction) for a classifier, a text
  evaluator that would score the task's text metrics twice, or whatever evaluators.from_config refuses."""
  section = config.get("evaluators") or {}
  section = {**(section.to_dict() if hasattr(section, "to_dict") else dict(section)), **dict(extra or {})}
  if not section:
    return {}
  if not tasks.task_class(config).uses_tokenizer:
    raise ConfigError(
      f"config.evaluators.{next(iter(section))}: {config.model.name} is a classifier; evaluators "
      "score generated reports"
    )
  text = section.get("text")
  if isinstance(text, Mapping) and text.get("type", "text") == "text":
    raise ConfigError(
      "config.evaluators.text: the task already scores the text metrics under "
      "config.data.caption_protocol; to score them under another protocol too, name the evaluator "
      "otherwise (e.g. coco=dict(type='text', protocol='coco'): scores prefixed 'coco/')"
    )
  return evaluators_lib.from_config(section, mesh=mesh)


def run_evaluators(
  built: Mapping[str, Any], records: list[dict], scores: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
  """The evaluators over a report generator's records -> (`scores` with theirs added, their provenance).
  A score the task already gave is an error, not overwritten."""
  result = evaluators_lib.run(
    built, [str(r["id"]) for r in records], [r["reference"] for r in records], [r["generated"] for r in records]
  )
  both = sorted(set(scores) & set(result["scores"]))
  if both:
    raise ConfigError(
      f"config.evaluators: the score {both[0]!r} is the task's too; name the evaluator otherwise "
      "than its type (its scores are then prefixed with its name)"
    )
  return {**scores, **result["scores"]}, result["provenance"]


def evaluate(
  workdir: str,
  split: str,
  checkpoint: str = workdir_lib.BEST,
  beam_size: int | None = None,
  max_examples: int | None = None,
  meteor: bool = True,
  baselines_too: bool = True,
  data_dir: str | None = None,
  leaderboard_json: str | None = None,
  evaluators: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
  """Scores `split` with the run's task, writes DIR/eval/<split>/ (process 0), returns metrics.json's dict.
  `data_dir` replaces the config's prepared-dataset folder; `leaderboard_json` is where to write ReXrank's IU
  X-ray prediction file too (rexrank.check_run lists what it refuses); `evaluators`: {name: section} added to
  the run's config.evaluators (module doc)."""
  for flag, value in (("--beam-size", beam_size), ("--max-examples", max_examples)):
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise EvaluationError(f"{flag} {value!r}: must be an integer of at least 1")
  run = workdir_lib.load_run(workdir, checkpoint)
  config, task = run.config, run.task
  if beam_size is not None and config.get("decode") is None:
    raise EvaluationError(
      f"--beam-size {beam_size}: {workdir} holds a classifier ({config.model.name}), which "
      "writes no text; --beam-size is for report generators"
    )
  # The run's prediction (report generators: its search, or another beam size), checked before any data is
  # read: a decode past the model's KV cache is refused.
  options = task.options(beam_size=beam_size, flags=True)
  data_config = ml_collections.ConfigDict(config.data.to_dict())  # The run's config, and the task, stay as read.
  if data_dir is not None:
    data_config.data_dir = str(data_dir)
  if leaderboard_json is not None:  # Before any prediction.
    if config.get("decode") is None:
      raise EvaluationError(
        f"--leaderboard-json: {workdir} holds a classifier ({config.model.name}); the "
        f"{rexrank.LEADERBOARD} file holds generated reports"
      )
    rexrank.check_run(data_config, split, max_examples)
  # Built once, before any prediction: a missing labeler directory fails before the split is decoded.
  built = build_evaluators(config, run.mesh, evaluators)
  source, info = datasets.make_source(data_config, split)
  full_source = source
  if leaderboard_json is not None:
    rexrank.check_source(source)
  if task.label_names is not None and tuple(info.label_names or ()) != task.label_names:
    raise EvaluationError(
      f"{workdir_lib.absolute_path(workdir) / workdir_lib.LABELS_FILE}: the run's findings {list(task.label_names)} "
      f"are not those of the {split} split ({list(info.label_names or ())})"
    )
  if max_examples:
    source = pipeline.Subset(source, max_examples)
  predict = evaluation.jit_predict(
    task, run.model, options, run.mesh, jax.tree.map(lambda a: a.sharding, run.state.variables())
  )
  records = evaluation.predict_split(
    task,
    run.state.variables(),
    source,
    config,
    mesh=run.mesh,
    predict=predict,
    batch_size=config.eval.batch_size,
  )
  output = {
    "split": split,
    "checkpoint": checkpoint,
    "step": int(run.state.step),
    "scores": task.score(records, meteor=meteor),
  }
  if built:
    output["scores"], output["evaluators"] = run_evaluators(built, records, output["scores"])
  if getattr(full_source, "references", None) is not None:
    output["references"] = full_source.references
  if task.uses_tokenizer:
    output["decode"] = dict(config.decode.to_dict(), **options.describe())
    if baselines_too:
      output["baselines"] = text_baselines(data_config, [r["reference"] for r in records], source, meteor)
  if config.model.get("stage"):
    output["stage"] = config.model.stage
  leaderboard = None
  if leaderboard_json is not None:  # Built on every process, so that a bad pairing fails everywhere alike.
    leaderboard = rexrank.leaderboard_predictions(full_source, records)
    output["leaderboard_json"] = {
      "leaderboard": rexrank.LEADERBOARD,
      "path": str(leaderboard_json),
      "num_studies": len(leaderboard),
    }
  if sharding.is_lead_process():
    out_dir = workdir_lib.eval_dir(workdir, split)
    out_dir.mkdir(parents=True, exist_ok=True)
    task.write(out_dir, records)
    if leaderboard is not None:
      files.write_json(leaderboard_json, leaderboard, indent=2)  # Whole or not at all.
    files.write_json(out_dir / "metrics.json", output, indent=2)  # Whole or not at all.
  return output
