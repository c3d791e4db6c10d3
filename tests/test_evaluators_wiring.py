"""config.evaluators in training and evaluation: the demo's smoke run with a tiny random CheXbert labeler (written
as the release is and ported, tests/weights/test_chexbert_labeler.py) logs the clinical-efficacy scores at every
validation and can pick its best checkpoint by one; `cxrjax evaluate` writes the scores that evaluators.run gives
on the predictions it wrote, with the labeler checkpoint's SHA-256, and its flags add or replace evaluators; an
unknown evaluator, a missing labeler directory or an evaluator's score that validation cannot give is one line
before any training step."""

import csv
import hashlib
import json
import shutil

import orbax.checkpoint as ocp
import pytest
import transformers

from cxrjax import cli, evaluators
from cxrjax.jobs import evaluate, sweep, train
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import datasets
from cxrjax.core.errors import ConfigError
from cxrjax.weights import chexbert_labeler
from configs import demo
from tests.jobs.test_score import bert_dir  # noqa: F401  (the fixture: a tiny random BERT directory)
from tests.weights.test_chexbert_labeler import TINY, reference_ids, reference_model, save_release

CE_MICRO_F1 = "CE/uncertain_positive/all14/micro/F1"


def _labeler(directory, vocab, reports, seed):
  """A random CheXbert calibrated on `reports` (so that its labels vary between them), saved as chexbert.pth and
  ported into directory/labeler; (labeler directory, checkpoint)."""
  tokenizer = transformers.BertTokenizer(vocab=str(vocab))
  model = reference_model([reference_ids(tokenizer, text) for text in reports], seed=seed)
  checkpoint = save_release(model, directory / "chexbert.pth")
  chexbert_labeler.port(checkpoint, directory / "labeler", tokenizer=vocab, num_heads=TINY["num_attention_heads"])
  return directory / "labeler", checkpoint


@pytest.fixture(scope="module")
def smoke_config():
  config = demo.get_config("smoke")
  # Greedy at test time too, so that an evaluation of the validation split decodes as validation did.
  config.decode.beam_size = 1
  config.train.update(eval_every=2, checkpoint_every=2)
  return config


@pytest.fixture(scope="module")
def phantom_reports(smoke_config):
  source, _ = datasets.make_source(smoke_config.data, "train")
  return datasets.report_texts(source, smoke_config.data.cleaning)


@pytest.fixture(scope="module")
def labelers(tmp_path_factory, shared_data, phantom_reports):
  """Two labelers of different weights: the run's, and one `evaluate --labeler` puts in its place."""
  vocab = shared_data / "text" / "bert-base-uncased-vocab.txt"
  return [_labeler(tmp_path_factory.mktemp(f"chexbert{seed}"), vocab, phantom_reports, seed) for seed in (10, 11)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, smoke_config, labelers):
  """The smoke run with the first labeler in config.evaluators, its best checkpoint picked by CE micro F1."""
  config = smoke_config.copy_and_resolve_references()
  config.evaluators = dict(chexbert=dict(labeler=str(labelers[0][0]), batch_size=4))
  config.eval.best_metric = CE_MICRO_F1
  workdir = tmp_path_factory.mktemp("run")
  last = train.train_and_evaluate(config, workdir)
  return workdir, config, last


def _validations(workdir):
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [r for r in records if r["split"] == "val"]


def _predictions(path):
  rows = [json.loads(line) for line in path.read_text().splitlines()]
  return [r["id"] for r in rows], [r["reference"] for r in rows], [r["generated"] for r in rows]


def _sha256(path):
  return hashlib.sha256(path.read_bytes()).hexdigest()


def test_validation_logs_the_evaluators_scores_and_picks_the_best_checkpoint_by_one(trained):
  workdir, config, last = trained
  validations = _validations(workdir)
  assert [v["step"] for v in validations] == [2, 4]
  for validation in validations:
    for key in evaluators.chexbert.CheXbert.HEADLINE:
      assert 0.0 <= validation[key] <= 1.0, key
    assert "BLEU-4" in validation and "num_studies" in validation  # The task's scores stay beside them.
  assert last[CE_MICRO_F1] == validations[-1][CE_MICRO_F1]
  # The best checkpoint is the validation with the highest CE micro F1 (the first of equals), and says so.
  values = [v[CE_MICRO_F1] for v in validations]
  best_step = validations[values.index(max(values))]["step"]
  manager = workdir_lib.checkpoint_manager(workdir, workdir_lib.BEST, create=False)
  meta = manager.restore(manager.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
  manager.close()
  assert manager.latest_step() == best_step
  assert meta == {"step": best_step, CE_MICRO_F1: max(values)}


def test_evaluate_writes_the_scores_evaluators_run_gives_on_its_predictions(trained, labelers, capsys):
  workdir, config, _ = trained
  labeler, checkpoint = labelers[0]
  # The validation split from the last checkpoint: the predictions validation scored at step 4.
  assert (
    cli.main(["evaluate", "--workdir", str(workdir), "--split", "val", "--checkpoint", "latest", "--no-meteor"]) == 0
  )
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  written = json.loads((workdir / "eval/val/metrics.json").read_text())
  ids, references, generated = _predictions(workdir / "eval/val/predictions.jsonl")
  built = evaluators.from_config(dict(chexbert=dict(labeler=str(labeler))))
  expected = evaluators.run(built, evaluators.Predictions(ids, references, generated))
  ce = {key: value for key, value in written["scores"].items() if key.startswith("CE/")}
  assert ce == expected["scores"] and len(ce) > 100
  assert written["evaluators"]["chexbert"]["sha256"] == _sha256(checkpoint)
  assert written["evaluators"]["chexbert"]["type"] == "chexbert"
  assert written["scores"]["num_studies"] == len(ids) == config.data.num_val
  assert "BLEU-4" in written["scores"] and "BERTScore/F1" not in written["scores"]
  assert summary["model"][CE_MICRO_F1] == written["scores"][CE_MICRO_F1]
  # Validation scored the same predictions of the same checkpoint.
  last_validation = _validations(workdir)[-1]
  for key in evaluators.chexbert.CheXbert.HEADLINE + ("BLEU-4",):
    assert written["scores"][key] == pytest.approx(last_validation[key], abs=1e-12), key


def test_evaluate_flags_replace_and_add_evaluators(trained, labelers, bert_dir, capsys):
  workdir, _, _ = trained
  other, other_checkpoint = labelers[1]
  assert _sha256(other_checkpoint) != _sha256(labelers[0][1])
  assert (
    cli.main(
      [
        "evaluate",
        "--workdir",
        str(workdir),
        "--split",
        "test",
        "--no-meteor",
        "--labeler",
        str(other),
        "--bertscore-model",
        str(bert_dir),
        "--bertscore-layer",
        "2",
      ]
    )
    == 0
  )
  capsys.readouterr()
  written = json.loads((workdir / "eval/test/metrics.json").read_text())
  ids, references, generated = _predictions(workdir / "eval/test/predictions.jsonl")
  built = evaluators.from_config(dict(chexbert=dict(labeler=str(other)), bertscore=dict(model=str(bert_dir), layer=2)))
  expected = evaluators.run(built, evaluators.Predictions(ids, references, generated))["scores"]
  assert {key: written["scores"][key] for key in expected} == pytest.approx(expected, abs=1e-6)
  assert written["evaluators"]["chexbert"]["sha256"] == _sha256(other_checkpoint)
  assert written["evaluators"]["bertscore"]["layer"] == 2
  assert set(written["evaluators"]) == {"text", "baselines", "findings_oracle", "chexbert", "bertscore"}


def test_a_sweep_tabulates_the_evaluators_scores_and_plots_their_validation_curve(trained, tmp_path):
  """The trained run as a finished sweep run (evaluated, so the sweep trains nothing): its table has the CE
  scores of metrics.json, its curve the CE micro F1 of every validation, by their names."""
  workdir, config, _ = trained
  run_dir = tmp_path / "sweep" / "base" / "seed_0"
  shutil.copytree(workdir, run_dir)
  written = evaluate.evaluate(str(run_dir), "test", meteor=False, baselines_too=False)
  table = sweep.sweep(config, str(tmp_path / "sweep"), seeds=1)
  assert table[0][f"{CE_MICRO_F1}_mean"] == written["scores"][CE_MICRO_F1]
  rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
  assert float(rows[0][f"{CE_MICRO_F1}_mean"]) == pytest.approx(written["scores"][CE_MICRO_F1])
  assert sweep._validation_curve(run_dir, config.eval.best_metric) == [
    (v["step"], v[CE_MICRO_F1]) for v in _validations(workdir)
  ]
  assert (tmp_path / "sweep" / "curves.png").stat().st_size > 0


@pytest.mark.parametrize(
  "overrides, message",
  [
    (["--config.evaluators.chexbert.labeler={missing}"], "missing_labeler"),
    (
      ["--config.evaluators.rouge.labeler={labeler}"],
      "config.evaluators.rouge.type='rouge': unknown evaluator; known: auroc, baselines, bertscore, chexbert, "
      "findings_oracle, text",
    ),
    (
      ["--config.evaluators.chexbert.labeler={labeler}", "--config.evaluators.chexbert.batch=4"],
      "config.evaluators.chexbert.batch: unknown field",
    ),
    (
      ["--config.evaluators.auroc.stages=train"],
      "config.evaluators.auroc: the auroc evaluator scores finding probabilities; attention_captioner predicts",
    ),
    (["--config.eval.best_metric=BERTScore/F1"], "config.evaluators has no evaluator that gives it"),
    (
      ["--config.evaluators.chexbert.labeler={labeler}", "--config.eval.best_metric=CE/uncertain_positive/all14/F1"],
      "not a headline score of config.evaluators",
    ),
    (["--config.evaluators.chexbert"], "expected --config.evaluators.NAME.FIELD=VALUE"),
  ],
)
def test_a_bad_evaluator_is_one_line_before_any_training_step(tmp_path, labelers, capsys, overrides, message):
  workdir = tmp_path / "run"
  values = dict(labeler=labelers[0][0], missing=tmp_path / "missing_labeler")
  status = cli.main(
    ["train", "--config=configs/demo.py:smoke", f"--workdir={workdir}", *(item.format(**values) for item in overrides)]
  )
  error = capsys.readouterr().err
  assert status == 2
  assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
  assert message in error
  assert not workdir.exists()  # Refused before the run wrote a file, let alone trained a step.


def test_an_evaluators_headline_score_is_accepted_as_the_best_metric(tmp_path, labelers):
  """The check itself: the configured evaluators' headline keys pass (prefixed when named otherwise than the
  type), task scores pass as before, an evaluator-like name that validation does not give is refused."""
  built = evaluators.from_config(dict(ce=dict(type="chexbert", labeler=str(labelers[0][0]))))
  train.check_best_metric("ce/" + CE_MICRO_F1, built)
  train.check_best_metric("BLEU-4", built)
  train.check_best_metric("mean_AUROC", {})
  for metric in (CE_MICRO_F1, "ce/CE/none", "BERTScore/F1"):
    with pytest.raises(ConfigError, match="not a headline score"):
      train.check_best_metric(metric, built)
