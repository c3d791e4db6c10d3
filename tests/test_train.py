"""The trainer on the smoke config: sharded steps on 8 simulated devices, exact resume, clear errors,
pretrained parts, cached features and evaluation output."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from cxrjax import cli, evaluate, train, workdir as workdir_lib
from cxrjax.data import datasets, pipeline
from cxrjax.errors import ConfigError
from cxrjax.models.encoders import densenet
from cxrjax.weights import chexnet
from configs import demo


@pytest.fixture(scope="module")
def smoke_config():
  return demo.get_config("smoke")


def _state(workdir, checkpoint=workdir_lib.LATEST):
  return jax.device_get(workdir_lib.load_run(workdir, checkpoint).state)


def _metrics(workdir):
  """metrics.jsonl without its wall-clock field."""
  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [{k: v for k, v in r.items() if k != "steps_per_s"} for r in records]


def test_runs_sharded_over_all_devices_and_writes_the_workdir(tmp_path, smoke_config):
  assert jax.device_count() == 8, "tests expect XLA_FLAGS=--xla_force_host_platform_device_count=8"
  val = train.train_and_evaluate(smoke_config, tmp_path)
  assert val["num_studies"] == smoke_config.data.num_val
  for name in ("config.json", "tokenizer.json", "metrics.jsonl", "checkpoints/latest", "checkpoints/best"):
    assert (tmp_path / name).exists(), name
  records = _metrics(tmp_path)
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == [2, 4]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train_records)
  assert [r["step"] for r in records if r["split"] == "val"] == [4]
  assert int(_state(tmp_path).step) == smoke_config.train.num_steps


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
  status = cli.main(["train", "--config=configs/demo.py:smoke", f"--workdir={tmp_path}",
                     "--config.train.num_stepz=3"])
  assert status == 2
  assert "num_stepz" in capsys.readouterr().err
  assert not (tmp_path / "checkpoints").exists()


def test_unknown_dataset_or_unprepared_data_is_a_one_line_error(tmp_path, smoke_config, capsys):
  config = smoke_config.copy_and_resolve_references()
  config.data.name = "mimic_cxr"
  with pytest.raises(datasets.DataConfigError, match="mimic_cxr"):
    train.train_and_evaluate(config, tmp_path / "a")
  status = cli.main(["train", "--config=configs/iu_xray_attention.py:smoke", f"--workdir={tmp_path / 'b'}",
                     f"--config.data.data_dir={tmp_path / 'nothing_prepared'}"])
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
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats["image_encoder"]["densenet"],
               variables["batch_stats"])
  # The decoder did train: its output layer moved away from the initial values.
  components = workdir_lib.build(config, workdir_lib.load_tokenizer(tmp_path / "run"))
  initial = workdir_lib.init_state(components, jax.random.key(config.train.seed))
  assert not np.allclose(state.params["decoder"]["output"]["kernel"],
                         initial.params["decoder"]["output"]["kernel"])


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
  batch = next(iter(pipeline.make_batches(config, "train", train=False, tokenizer=run.tokenizer,
                                          batch_size=4, shard_index=0, shard_count=1)))
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
