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

Scores are the run's evaluators' (cxrjax/evaluators/, evaluators.for_run at stage "evaluate"): its task's
defaults (report generators: the text metrics under the dataset's protocol with METEOR, the image-free
baselines and, on phantoms, the findings oracle; classifiers: AUROC), its config.evaluators section
(cxrjax/core/config.py) and the sections `evaluators` adds (the CLI's --labeler DIR and --bertscore-model DIR),
built once over the run's mesh before any prediction. Their scores are metrics.json's "scores", the baselines'
its "baselines", and their provenance (e.g. the labeler checkpoint's SHA-256) its "evaluators".
"""

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections

from cxrjax import evaluators as evaluators_lib
from cxrjax.core import files, sharding
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import datasets, pipeline
from cxrjax.data.iu_xray import rexrank
from cxrjax.core.errors import UserError
from cxrjax.tasks import evaluation


class EvaluationError(UserError):
  """Evaluation options that do not fit the arguments' limits or the workdir's model."""


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
  built = evaluators_lib.for_run(config, "evaluate", run.mesh, extra=evaluators, meteor=meteor, task_class=type(task))
  if not baselines_too:
    built = {name: evaluator for name, evaluator in built.items() if evaluator.SECTION != "baselines"}
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
  predictions = evaluators_lib.Predictions.from_records(
    records, label_names=task.label_names, data=data_config, source=source
  )
  scored = evaluators_lib.run(built, predictions)
  output = {
    "split": split,
    "checkpoint": checkpoint,
    "step": int(run.state.step),
    "scores": scored["scores"],
    "evaluators": scored["provenance"],
  }
  if getattr(full_source, "references", None) is not None:
    output["references"] = full_source.references
  if task.uses_tokenizer:
    output["decode"] = dict(config.decode.to_dict(), **options.describe())
  if "baselines" in scored:
    output["baselines"] = scored["baselines"]
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
