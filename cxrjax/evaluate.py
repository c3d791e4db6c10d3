"""Jitted batch report generation over a split, then captioning metrics.

  cxrjax evaluate --workdir DIR --split val|test [--checkpoint best|latest] [--beam-size 3]

writes DIR/eval/<split>/predictions.jsonl (id, reference, generated) and DIR/eval/<split>/metrics.json
(BLEU-1..4 as pycocoevalcap computes them, sacreBLEU, METEOR, ROUGE-L, CIDEr, each with the name of its
implementation, plus the blind baseline: the most common training report scored the same way).
"""

import collections
import json
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from jax.sharding import NamedSharding, PartitionSpec as P

from cxrjax import decoding, models, train
from cxrjax.metrics import captioning as metrics
from cxrjax.models import attention_captioner as captioner
from cxrjax.data import pipeline
from cxrjax.text import tokenizers as text


class ReportGenerator:
  """Encodes a batch of studies and decodes their reports in one jitted program.

  `greedy=True` is used for the quick validation of the training loop; evaluation uses the beam
  search of `decode_config` (beam_size, max_length, length_penalty, block_ngram_repeat).
  """

  def __init__(self, model, vocabulary: text.Vocabulary, decode_config: ml_collections.ConfigDict,
               greedy: bool = False):
    self.model, self.vocabulary = model, vocabulary
    self.decode_config, self.greedy = decode_config, greedy
    self._generate = jax.jit(self._generate_tokens)

  def _generate_tokens(self, variables, images: jax.Array) -> jax.Array:
    """images [batch, views, H, W, 3] -> tokens int32 [batch, max_length] (no start token)."""
    model, cfg = self.model, self.decode_config
    memory = model.apply(variables, images, method="encode")
    cache = model.apply(variables, memory, method="init_cache")

    step_fn = captioner.decoder_step_fn(model, variables)
    options = dict(start_id=text.START_ID, end_id=text.END_ID, max_length=cfg.max_length,
                   pad_id=text.PAD_ID, block_ngram_repeat=cfg.block_ngram_repeat)
    if self.greedy or cfg.beam_size == 1:
      tokens, _ = decoding.greedy_search(step_fn, cache, **options)
      return tokens
    tokens, _ = decoding.beam_search(step_fn, cache, beam_size=cfg.beam_size,
                                     length_penalty=cfg.length_penalty, **options)
    return tokens[:, 0]  # [batch, max_length]: the best beam

  def __call__(self, state: train.TrainState, images: np.ndarray) -> list[str]:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    tokens = np.asarray(self._generate(variables, images))
    return [self.vocabulary.decode(row) for row in tokens]


def evaluate_source(generator: ReportGenerator, state: train.TrainState, source, config,
                    max_examples: int | None = None, meteor: bool = False) -> dict[str, Any]:
  """Generates a report for every study of `source` (or its first `max_examples`); returns
  {"scores": {...}, "predictions": [{"id", "reference", "generated"}]}."""
  if max_examples:
    source = pipeline.Subset(source, max_examples)
  dataset = pipeline.make_dataset(
      source, generator.vocabulary, batch_size=config.eval.batch_size, image_size=config.data.image_size,
      max_length=config.data.max_length, train=False, seed=0, cleaning=config.data.cleaning,
      shard_index=0, shard_count=1)  # Every process decodes the whole split (no cross-host gather).
  predictions = []
  for batch in dataset:
    generated = generator(state, batch["images"])
    for keep, study_id, reference, hypothesis in zip(batch["mask"], batch["id"], batch["report"], generated):
      if keep:
        predictions.append({"id": str(study_id), "reference": str(reference), "generated": hypothesis})
  references = [p["reference"] for p in predictions]
  scores = metrics.caption_metrics(references, [p["generated"] for p in predictions], meteor=meteor)
  scores["num_studies"] = len(predictions)
  return {"scores": scores, "predictions": predictions}


def blind_baseline(config: ml_collections.ConfigDict, references: list[str],
                   meteor: bool = False) -> dict[str, Any]:
  """Scores of always writing the most common (cleaned) training report: what text alone achieves."""
  train_source, _ = pipeline.make_source(config.data, "train")
  reports = pipeline.report_texts(train_source, cleaning=config.data.cleaning)
  counts = collections.Counter(reports)
  most_common = min(counts, key=lambda report: (-counts[report], report))  # Ties: alphabetical.
  scores = metrics.caption_metrics(references, [most_common] * len(references), meteor=meteor)
  return {"report": most_common, "share_of_training_reports": counts[most_common] / len(reports),
          "scores": scores}


def load_run(workdir: str | epath.Path, checkpoint: str = train.BEST):
  """(config, model, vocabulary or None, state) of a training workdir's `best` or `latest` checkpoint."""
  import orbax.checkpoint as ocp
  from cxrjax import tasks
  workdir = epath.Path(workdir)
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path}: not found; is {workdir} a `cxrjax train` workdir?")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  task = tasks.make_task(config)
  vocabulary = text.Vocabulary.from_json(workdir / "vocabulary.json") if task.uses_vocabulary else None
  model = models.build_model(config.model, len(vocabulary) if vocabulary else None)
  replicated = NamedSharding(train.create_mesh(), P())
  tx_fn = lambda params: train.make_optimizer(config, params, task.frozen_prefixes())
  abstract = jax.eval_shape(lambda rng: train.init_state(model, task, tx_fn, rng), jax.random.key(0))
  abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), abstract)
  directory = train.absolute_path(workdir / "checkpoints" / checkpoint)
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  if manager.latest_step() is None:
    raise FileNotFoundError(f"{directory}: no checkpoint")
  state, _, _ = train.restore(manager, abstract)
  manager.close()
  return config, model, vocabulary, state


def evaluate_classifier(workdir: str | epath.Path, split: str, checkpoint: str = train.BEST,
                        max_examples: int | None = None) -> dict[str, Any]:
  """AG-CNN: per-class AUROC and their mean (written to metrics.json) and predictions.csv in the
  common `Image Index,prob_<Finding>,...` layout, which `cxrjax auroc` scores against the label file."""
  from cxrjax import auroc, tasks
  config, model, _, state = load_run(workdir, checkpoint)
  task = tasks.make_task(config)
  source, info = pipeline.make_source(config.data, split)
  if max_examples:
    source = pipeline.Subset(source, max_examples)
  ids, probabilities, labels = task.probabilities(model, state, source, info.label_names)
  out_dir = epath.Path(workdir) / "eval" / split
  out_dir.mkdir(parents=True, exist_ok=True)
  auroc.write_predictions_csv(out_dir / "predictions.csv", ids, probabilities, list(info.label_names))
  output = {"split": split, "checkpoint": checkpoint, "step": int(state.step), "stage": task.stage,
            "scores": tasks.auroc_scores(labels, probabilities, info.label_names)}
  (out_dir / "metrics.json").write_text(json.dumps(output, indent=2) + "\n")
  return output


def run_evaluation(workdir: str | epath.Path, split: str, checkpoint: str = train.BEST,
                   beam_size: int | None = None, max_examples: int | None = None,
                   meteor: bool = True) -> dict[str, Any]:
  """The `cxrjax evaluate` job: writes predictions.jsonl and metrics.json; returns the metrics.
  (Classifiers: `evaluate_classifier`.)"""
  config, model, vocabulary, state = load_run(workdir, checkpoint)
  if beam_size is not None:
    config.decode.beam_size = beam_size
  source, _ = pipeline.make_source(config.data, split)
  generator = ReportGenerator(model, vocabulary, config.decode)
  result = evaluate_source(generator, state, source, config, max_examples=max_examples, meteor=meteor)
  references = [p["reference"] for p in result["predictions"]]
  output = {"split": split, "checkpoint": checkpoint, "step": int(state.step),
            "decode": config.decode.to_dict(), "scores": result["scores"],
            "blind_baseline": blind_baseline(config, references, meteor=meteor)}
  out_dir = epath.Path(workdir) / "eval" / split
  out_dir.mkdir(parents=True, exist_ok=True)
  with (out_dir / "predictions.jsonl").open("w") as handle:
    for prediction in result["predictions"]:
      handle.write(json.dumps(prediction) + "\n")
  (out_dir / "metrics.json").write_text(json.dumps(output, indent=2) + "\n")
  return output
