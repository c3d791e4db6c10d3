"""The trainer on the smoke config: sharded steps on 8 simulated devices, exact resume, clear errors,
pretrained parts, cached features, evaluation output, throughput, TensorBoard and profiler files, and a
diverging run stopped before its bad state is saved."""

import gzip
import json
import struct

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from tensorboard.compat.proto import event_pb2

from cxrjax import cli
from cxrjax import evaluators as evaluators_lib
from cxrjax.jobs import evaluate, inference, train
from cxrjax.run import summaries, workdir as workdir_lib
from cxrjax.data import datasets, pipeline
from cxrjax.core.errors import ConfigError
from cxrjax.metrics import protocols
from cxrjax.models import base
from cxrjax.models.encoders import densenet
from cxrjax.tasks import evaluation
from cxrjax.weights import chexnet
from configs import demo


@pytest.fixture(scope="module")
def smoke_config():
  return demo.get_config("smoke")


def _state(workdir, checkpoint=workdir_lib.LATEST):
  return jax.device_get(workdir_lib.load_run(workdir, checkpoint, optimizer_state=True).state)


def _records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def _metrics(workdir):
  """metrics.jsonl without its wall-clock fields (throughput)."""
  return [
    {k: v for k, v in r.items() if not k.endswith("_per_s") and k != "flops_utilisation"} for r in _records(workdir)
  ]


def _event_scalars(directory):
  """{(tag, step): value} of every scalar in the event files under `directory`, read from their TFRecord
  framing: each record is its length (uint64), the length's CRC (4 bytes), an Event, the Event's CRC."""
  scalars = {}
  for path in sorted(directory.glob("events.out.tfevents.*")):
    data, offset = path.read_bytes(), 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset : offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
      offset += 16 + length
      for value in event.summary.value:
        scalars[value.tag, event.step] = value.simple_value
  return scalars


def _one_device_step_flops(config, workdir):
  """XLA's FLOP count of the train step compiled for one device with the whole global batch."""
  run = workdir_lib.load_run(workdir, workdir_lib.LATEST, optimizer_state=True)
  components = workdir_lib.build(config, run.tokenizer)
  source, _ = datasets.make_source(config.data, "train")
  batch = next(
    iter(evaluation.split_batches(config, source, components.task, train=True, batch_size=config.train.batch_size))
  )
  step = jax.jit(train.make_train_step(components, components.make_optimizer(run.state.params), config.train.seed))
  state = jax.device_put(jax.device_get(run.state), jax.devices()[0])
  numeric = {k: v for k, v in batch.items() if v.dtype.kind in "biuf"}
  return step.lower(state, numeric).compile().cost_analysis()["flops"]


def test_runs_sharded_over_all_devices_and_writes_the_workdir(tmp_path, smoke_config):
  """... and its logs: throughput in metrics.jsonl, every logged number as a TensorBoard scalar, and the
  profiler trace of train.profile_steps."""
  assert jax.device_count() == 8, "tests expect XLA_FLAGS=--xla_force_host_platform_device_count=8"
  config = smoke_config.copy_and_resolve_references()
  config.train.profile_steps = (2, 3)
  val = train.train_and_evaluate(config, tmp_path)
  assert val["num_studies"] == config.data.num_val
  for name in ("config.json", "tokenizer.json", "metrics.jsonl", "checkpoints/latest", "checkpoints/best"):
    assert (tmp_path / name).exists(), name
  records = _metrics(tmp_path)
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == [2, 4]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train_records)
  assert [r["step"] for r in records if r["split"] == "val"] == [4]
  assert int(_state(tmp_path).step) == config.train.num_steps

  # Inference loads what it uses: the step, parameters and batch statistics of the full state, no optimizer
  # state (orbax's partial restore).
  full, inference = _state(tmp_path), jax.device_get(workdir_lib.load_run(tmp_path, workdir_lib.LATEST).state)
  assert inference.opt_state is None and jax.tree.leaves(full.opt_state)
  for x, y in zip(jax.tree.leaves(full.replace(opt_state=None)), jax.tree.leaves(inference), strict=True):
    np.testing.assert_array_equal(x, y)

  # Throughput: examples of the global batch per second; the achieved FLOP/s are the compiled step's
  # FLOPs (all 8 devices' programs) per second: about what one device running the whole batch counts.
  # No peak is known for CPUs: no utilisation.
  train_records = [r for r in _records(tmp_path) if r["split"] == "train"]
  flops_per_step = [r["flops_per_s"] / r["steps_per_s"] for r in train_records]
  np.testing.assert_allclose(flops_per_step, flops_per_step[0], rtol=1e-9)
  np.testing.assert_allclose(flops_per_step, _one_device_step_flops(config, tmp_path), rtol=0.25)
  for record in train_records:
    np.testing.assert_allclose(record["examples_per_s"], record["steps_per_s"] * config.train.batch_size)
    assert "flops_utilisation" not in record

  # TensorBoard: exactly the numbers of metrics.jsonl, at their steps.
  expected = {
    (summaries.tag(r["split"], name), r["step"]): float(np.float32(value))
    for r in _records(tmp_path)
    for name, value in r.items()
    if name not in ("split", "step") and isinstance(value, (int, float))
  }
  assert ("val/ROUGE-L__rouge-score_", 4) in expected and ("train/examples_per_s", 2) in expected
  assert _event_scalars(tmp_path / "tensorboard") == expected

  # The profiler trace of steps 2-3 holds executions of the train step.
  traces = list((tmp_path / "profile").glob("plugins/profile/*/*.trace.json.gz"))
  assert len(traces) == 1 and list(traces[0].parent.glob("*.xplane.pb"))
  events = json.loads(gzip.decompress(traces[0].read_bytes()))["traceEvents"]
  assert any("Execute (jit_train_step)" in event.get("name", "") for event in events)


def test_a_diverging_run_stops_at_a_check_with_its_last_finite_checkpoint(tmp_path, smoke_config, capsys):
  """A huge learning rate: the loss goes non-finite within a few steps. The check runs at log steps and
  before each checkpoint, so no non-finite state is ever saved; the error names the step and the workdir."""
  config = smoke_config.copy_and_resolve_references()
  config.optimizer.learning_rate = 1e30
  config.train.update(log_every=4, checkpoint_every=1)  # Checked before each checkpoint, not only at logs.
  with pytest.raises(train.TrainingDiverged) as raised:
    train.train_and_evaluate(config, tmp_path)
  bad_step = int(raised.value.args[0].split("of step ")[1].split()[0])
  assert str(tmp_path) in str(raised.value) and " is nan" in str(raised.value)
  assert f"checkpoints/latest keeps step {bad_step - 1}" in str(raised.value)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints" / "latest").iterdir() if p.name.isdigit())
  assert saved and saved[-1] == bad_step - 1 < config.train.num_steps
  kept = _state(tmp_path)
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(kept))
  assert not (tmp_path / "metrics.jsonl").read_text()  # Its one log step (4) was never reached.
  # The CLI prints it as one line.
  status = cli.main(
    [
      "train",
      "--config=configs/demo.py:smoke",
      f"--workdir={tmp_path}",
      "--config.optimizer.learning_rate=1e30",
      "--config.train.log_every=4",
      "--config.train.checkpoint_every=1",
    ]
  )
  error = capsys.readouterr().err.strip().splitlines()
  assert status == 2 and error[-1].startswith("cxrjax train: error: ") and "Traceback" not in "\n".join(error)


def test_resumed_run_ends_exactly_as_an_uninterrupted_run(tmp_path, smoke_config):
  """Parameters, batch-norm statistics, optimizer state, the best checkpoint and its value, and every
  logged number equal those of a run that was never interrupted."""
  config = smoke_config.copy_and_resolve_references()
  config.train.update(eval_every=2)  # A validation before and after the interruption.
  train.train_and_evaluate(config, tmp_path / "straight")
  train.train_and_evaluate(config, tmp_path / "resumed", stop_after_steps=2)
  assert int(_state(tmp_path / "resumed").step) == 2
  train.train_and_evaluate(config, tmp_path / "resumed")
  for checkpoint in (workdir_lib.LATEST, workdir_lib.BEST):
    straight, resumed = _state(tmp_path / "straight", checkpoint), _state(tmp_path / "resumed", checkpoint)
    assert int(resumed.step) == int(straight.step)
    assert jax.tree.leaves(straight.batch_stats), "the smoke model has batch norm: its statistics are compared"
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
      np.testing.assert_array_equal(a, b)
  metas = []
  for run in ("straight", "resumed"):
    manager = workdir_lib.checkpoint_manager(tmp_path / run, workdir_lib.LATEST, create=False)
    metas.append(manager.restore(manager.latest_step(), args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta)
    manager.close()
  assert metas[0] == metas[1] and np.isfinite(metas[0]["best_value"])
  assert _metrics(tmp_path / "straight") == _metrics(tmp_path / "resumed")


def test_workdir_of_another_model_is_refused_before_compute(tmp_path, smoke_config):
  (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "lstm_captioner"}, "data": {}}))
  with pytest.raises(ConfigError, match="another model configuration"):
    train.train_and_evaluate(smoke_config, tmp_path)


def test_cli_rejects_unknown_config_keys(tmp_path, capsys):
  status = cli.main(["train", "--config=configs/demo.py:smoke", f"--workdir={tmp_path}", "--config.train.num_stepz=3"])
  assert status == 2
  assert "num_stepz" in capsys.readouterr().err
  assert not (tmp_path / "checkpoints").exists()


def test_unknown_dataset_or_unprepared_data_is_a_one_line_error(tmp_path, smoke_config, capsys):
  config = smoke_config.copy_and_resolve_references()
  config.data.name = "mimic_cxr"
  with pytest.raises(datasets.DataConfigError, match="mimic_cxr"):
    train.train_and_evaluate(config, tmp_path / "a")
  status = cli.main(
    [
      "train",
      "--config=configs/iu_xray_attention.py:smoke",
      f"--workdir={tmp_path / 'b'}",
      f"--config.data.data_dir={tmp_path / 'nothing_prepared'}",
    ]
  )
  error = capsys.readouterr().err
  assert status == 2 and "Traceback" not in error
  assert "nothing_prepared" in error and "cxrjax prepare" in error
  assert not (tmp_path / "b" / "checkpoints").exists()


def test_evaluate_writes_predictions_named_metrics_and_baselines(tmp_path, smoke_config, capsys):
  train.train_and_evaluate(smoke_config, tmp_path)
  assert cli.main(["evaluate", "--workdir", str(tmp_path), "--split", "test", "--no-meteor"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["num_studies"] == smoke_config.data.num_test
  assert set(summary) >= {"model", "most_common_report", "best_constant_report", "findings_oracle"}
  predictions = [json.loads(line) for line in (tmp_path / "eval/test/predictions.jsonl").read_text().splitlines()]
  assert len(predictions) == smoke_config.data.num_test
  assert set(predictions[0]) == {"id", "reference", "generated"}
  assert len({p["id"] for p in predictions}) == len(predictions)
  source, _ = datasets.make_source(smoke_config.data, "test")
  assert [p["reference"] for p in predictions] == datasets.report_texts(source, smoke_config.data.cleaning)
  written = json.loads((tmp_path / "eval/test/metrics.json").read_text())
  for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "sacreBLEU"):
    assert 0.0 <= written["scores"][name] <= 10.0
  assert written["baselines"]["most_common_report"]["report"]
  # The oracle writes each study's true findings: it beats both constant answers.
  oracle = written["baselines"]["findings_oracle"]["scores"]["BLEU-4"]
  assert oracle > written["baselines"]["best_constant_report"]["scores"]["BLEU-4"]


def test_evaluation_scores_every_study_once_whatever_the_batch_size(tmp_path, smoke_config):
  """8 test studies in eval batches of 3 (not a multiple of the 8 devices): none lost or doubled."""
  train.train_and_evaluate(smoke_config, tmp_path)
  outputs = []
  for batch_size in (3, 8):
    config = workdir_lib.read_config(tmp_path)
    config.eval.batch_size = batch_size
    (tmp_path / "config.json").write_text(config.to_json(indent=2))
    evaluate.evaluate(str(tmp_path), "test", meteor=False, baselines_too=False)
    outputs.append((tmp_path / "eval/test/predictions.jsonl").read_text())
  assert outputs[0] == outputs[1]
  assert len(outputs[0].splitlines()) == smoke_config.data.num_test


def _chexnet_weights(directory, encoder_section):
  encoder = densenet.config_from_section(encoder_section, num_classes=14)
  variables = densenet.DenseNet(encoder).init(jax.random.key(7), np.zeros((1, 32, 32, 3), np.float32))
  chexnet.save_chexnet(directory, variables, encoder, source={"format": "test"})
  return variables


def test_imported_frozen_encoder_is_loaded_and_never_moves(tmp_path, smoke_config):
  config = smoke_config.copy_and_resolve_references()
  variables = _chexnet_weights(tmp_path / "chexnet", config.model.encoder)
  config.init.encoder = str(tmp_path / "chexnet")
  config.optimizer.param_groups = (("image_encoder/.*", None), (".*", 1.0))
  train.train_and_evaluate(config, tmp_path / "run")
  state = _state(tmp_path / "run")
  imported = {k: v for k, v in variables["params"].items() if k != "classifier"}
  jax.tree.map(np.testing.assert_array_equal, state.params["image_encoder"]["densenet"], imported)
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats["image_encoder"]["densenet"], variables["batch_stats"])
  # The decoder did train: its output layer moved away from the initial values.
  components = workdir_lib.build(config, workdir_lib.load_tokenizer(tmp_path / "run"))
  initial = workdir_lib.init_state(components, jax.random.key(config.train.seed))
  assert not np.allclose(state.params["decoder"]["output"]["kernel"], initial.params["decoder"]["output"]["kernel"])


def test_init_keys_the_family_lacks_are_refused(tmp_path, smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.init.word_vectors = str(tmp_path / "vectors.txt")  # The attention captioner has no such part.
  with pytest.raises(ConfigError, match="word_vectors.*no such pretrained part"):
    train.train_and_evaluate(config, tmp_path / "run")


def test_cached_encoder_features_match_the_encoder_and_train(tmp_path, smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.optimizer.param_groups = (("image_encoder/.*", None), (".*", 1.0))
  config.train.cache_features = True
  train.train_and_evaluate(config, tmp_path, stop_after_steps=2)
  cache = tmp_path / "features" / "train.npz"
  with np.load(cache) as cached:
    ids, feature_map = cached["ids"], cached["feature_map"]
  assert len(ids) == config.data.num_train and feature_map.dtype == np.float16
  # The cache holds what the frozen encoder computes for the un-augmented images.
  run = workdir_lib.load_run(tmp_path, workdir_lib.LATEST)
  batch = next(
    iter(
      pipeline.make_batches(
        config, "train", train=False, tokenizer=run.tokenizer, batch_size=4, shard_index=0, shard_count=1
      )
    )
  )
  direct = run.model.apply(run.state.variables(), batch["images"], method=lambda m, x: m.image_encoder(x))
  assert list(batch["id"]) == list(ids[:4])
  np.testing.assert_allclose(feature_map[:4], direct["feature_map"], rtol=1e-2, atol=1e-3)
  # Resuming reuses the cache (same file, not rewritten) and finishes the run.
  written = cache.stat().st_mtime_ns
  train.train_and_evaluate(config, tmp_path)
  assert cache.stat().st_mtime_ns == written
  assert int(_state(tmp_path).step) == config.train.num_steps


def test_cached_features_need_a_frozen_encoder(tmp_path, smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.train.cache_features = True
  with pytest.raises(ConfigError, match="frozen image encoder"):
    train.train_and_evaluate(config, tmp_path)


def test_a_partly_frozen_encoder_is_refused_before_compute(tmp_path, smoke_config):
  """The encoder runs frozen (inference-mode batch norm) only when all of it is frozen: freezing some of
  its tensors would let its batch statistics move under frozen weights."""
  config = smoke_config.copy_and_resolve_references()
  config.optimizer.param_groups = (("image_encoder/densenet/conv0/.*", None), (".*", 1.0))
  with pytest.raises(ConfigError, match="freeze part of 'image_encoder'"):
    train.train_and_evaluate(config, tmp_path)
  assert not (tmp_path / "checkpoints").exists()


def test_each_path_looks_the_model_family_up_once(tmp_path, smoke_config, monkeypatch):
  """Config facts derived once: train, evaluate and predict (as serve) each look config.model.name's family up
  once and pass it on (the task carries it), not once per helper."""
  lookups = []
  get = base.FAMILIES.get
  monkeypatch.setattr(base.FAMILIES, "get", lambda name, field=None: lookups.append(name) or get(name, field))

  def looked_up_once(path):
    assert lookups == [smoke_config.model.name], path
    lookups.clear()

  config = smoke_config.copy_and_resolve_references()
  config.train.update(num_steps=2, eval_every=2)
  train.train_and_evaluate(config, tmp_path)
  looked_up_once("train")
  evaluate.evaluate(str(tmp_path), "test", max_examples=2, meteor=False, baselines_too=False)
  looked_up_once("evaluate")
  predictor = inference.Predictor.from_workdir(str(tmp_path))
  size = config.data.image_size
  predictor.predict(np.zeros((1, predictor.num_views, size, size, 3), np.float32), predictor.options(greedy=True))
  looked_up_once("predict")


def test_evaluators_run_at_their_cadence_on_their_split_each_split_predicted_once(tmp_path, smoke_config, monkeypatch):
  """Validations at steps 2, 4, 6 (train.eval_every 2); two text evaluators on the test split every 4 steps run at
  step 4 and at the last step, over the whole test split (8 studies; validation is cut to 4), with one prediction of
  each split per validation. `cxrjax evaluate` ignores their cadence and split."""
  config = smoke_config.copy_and_resolve_references()
  config.train.update(num_steps=6, eval_every=2, checkpoint_every=2)
  config.eval.max_val_examples = 4
  protocol = protocols.protocol_for(config.data)
  test_text = dict(type="text", protocol=protocol, meteor=False, split="test", every_steps=4)
  config.evaluators = dict(test_text=test_text, test_text2=dict(test_text, every_steps=4))
  predicted = []
  predict_split = evaluation.predict_split
  monkeypatch.setattr(
    evaluation,
    "predict_split",
    lambda task, variables, source, *a, **k: (
      predicted.append(len(source)) or predict_split(task, variables, source, *a, **k)
    ),
  )
  train.train_and_evaluate(config, tmp_path)
  records = _records(tmp_path)
  val = [r for r in records if r["split"] == "val"]
  test = [r for r in records if r["split"] == "test"]
  assert [r["step"] for r in val] == [2, 4, 6] and [r["step"] for r in test] == [4, 6]
  assert all(r["num_studies"] == 4 and "test_text/BLEU-4" not in r for r in val)
  for record in test:
    assert record["test_text/num_studies"] == record["test_text2/num_studies"] == config.data.num_test
    assert record["test_text/BLEU-4"] == record["test_text2/BLEU-4"] and "BLEU-4" not in record
  assert predicted == [4, 4, 8, 4, 8]  # Per validation: the validation split, then the test split once.
  assert json.loads((tmp_path / workdir_lib.EVALUATORS_FILE).read_text()) == {
    "text": {"type": "text", "split": "validation", "every_steps": 2, "protocol": protocol, "meteor": False},
    "test_text": {"type": "text", "split": "test", "every_steps": 4, "protocol": protocol, "meteor": False},
    "test_text2": {"type": "text", "split": "test", "every_steps": 4, "protocol": protocol, "meteor": False},
  }
  written = evaluate.evaluate(str(tmp_path), "validation", max_examples=2, meteor=False, baselines_too=False)
  assert written["scores"]["test_text/num_studies"] == written["scores"]["num_studies"] == 2


@pytest.mark.parametrize(
  "overrides, message",
  [
    (
      ["--config.evaluators.text.every_steps=6"],
      "config.evaluators.text.every_steps=6: not a multiple of train.eval_every=4",
    ),
    (["--config.evaluators.text.every_steps=0"], "config.evaluators.text.every_steps: 0; must be an integer"),
    (["--config.evaluators.text.split=train"], "config.evaluators.text.split: 'train'; expected 'validation'"),
    (["--config.evaluators.text.split=dev"], "config.evaluators.text.split: 'dev'; expected 'validation'"),
    (
      ["--config.evaluators.text.every_steps=8"],
      "config.eval.best_metric='BLEU-4': scored by config.evaluators.text, which does not run at every validation",
    ),
    (
      ["--config.evaluators.text.split=test"],
      "config.eval.best_metric='BLEU-4': scored by config.evaluators.text, which does not run at every validation",
    ),
  ],
)
def test_a_bad_evaluator_cadence_or_split_is_one_line_before_training(tmp_path, capsys, overrides, message):
  workdir = tmp_path / "run"
  status = cli.main(["train", "--config=configs/demo.py:smoke", f"--workdir={workdir}", *overrides])
  error = capsys.readouterr().err
  assert status == 2 and len(error.strip().splitlines()) == 1 and message in error, error
  assert not workdir.exists()


def test_the_best_metric_needs_an_evaluator_at_every_validation_of_the_validation_split():
  text = dict(protocol="r2gen", meteor=False)
  train.check_best_metric("BLEU-4", evaluators_lib.from_config(dict(text=text)), 4)
  train.check_best_metric("BLEU-4", evaluators_lib.from_config(dict(text=dict(text, every_steps=4, split="val"))), 4)
  for sparse in (dict(every_steps=8), dict(split="test")):
    built = evaluators_lib.from_config(dict(text=dict(text, **sparse)))
    with pytest.raises(ConfigError, match="does not run at every validation"):
      train.check_best_metric("ROUGE-L", built, 4)
  # A score of an evaluator named otherwise is its evaluator's: the validation split's text still picks.
  built = evaluators_lib.from_config(dict(text=text, test_text=dict(text, type="text", split="test")))
  train.check_best_metric("BLEU-4", built, 4)
  with pytest.raises(ConfigError, match="config.evaluators.test_text, which does not run"):
    train.check_best_metric("test_text/BLEU-4", built, 4)


def test_logged_perplexity_is_exp_of_the_mean_token_loss_over_the_logged_steps():
  """Two steps of 10 and 30 tokens with mean token losses 1 and 3: the log's token loss is their
  token-weighted mean (2.5) and its perplexity exp(2.5), not the mean of exp(1) and exp(3)."""
  steps = [{"loss": 1.0, "tokens": 10.0, "token_nll": 1.0}, {"loss": 3.0, "tokens": 30.0, "token_nll": 3.0}]
  summary = train.summarize_steps(steps)
  assert summary["loss"] == 2.0  # Other metrics: the mean over steps.
  np.testing.assert_allclose(summary["token_nll"], 2.5)
  np.testing.assert_allclose(summary["perplexity"], np.exp(2.5))
  assert "perplexity" not in train.summarize_steps([{"loss": 1.0}])  # Classifiers log no tokens.
