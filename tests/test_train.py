"""The trainer on the smoke config: sharded steps on 8 simulated devices, exact resume, clear errors,
and evaluation output."""

import json

import jax
import numpy as np
import pytest

from cxrjax import cli, evaluate, train
from configs import demo


@pytest.fixture(scope="module")
def smoke_config():
  return demo.get_config("smoke")


def _params(workdir, checkpoint=train.LATEST):
  _, _, _, state = evaluate.load_run(workdir, checkpoint)
  return jax.device_get(state)


def test_runs_sharded_over_all_devices_and_writes_the_workdir(tmp_path, smoke_config):
  assert jax.device_count() == 8, "tests expect XLA_FLAGS=--xla_force_host_platform_device_count=8"
  val = train.train_and_evaluate(smoke_config, tmp_path)
  assert val["num_studies"] == smoke_config.data.num_val
  for name in ("config.json", "vocabulary.json", "metrics.jsonl", "checkpoints/latest", "checkpoints/best"):
    assert (tmp_path / name).exists(), name
  records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train_records] == [2, 4]
  assert all(np.isfinite(r["loss"]) and r["loss"] > 0 for r in train_records)
  assert [r["step"] for r in records if r["split"] == "val"] == [4]
  assert int(_params(tmp_path).step) == smoke_config.train.num_steps


def test_resumed_run_ends_with_exactly_the_parameters_of_an_uninterrupted_run(tmp_path, smoke_config):
  train.train_and_evaluate(smoke_config, tmp_path / "straight")
  train.train_and_evaluate(smoke_config, tmp_path / "resumed", stop_after_steps=2)
  assert int(_params(tmp_path / "resumed").step) == 2
  train.train_and_evaluate(smoke_config, tmp_path / "resumed")
  straight, resumed = _params(tmp_path / "straight"), _params(tmp_path / "resumed")
  assert int(resumed.step) == 4
  jax.tree.map(np.testing.assert_array_equal, straight.params, resumed.params)
  jax.tree.map(np.testing.assert_array_equal, straight.opt_state, resumed.opt_state)


def test_workdir_of_another_model_is_refused_before_compute(tmp_path, smoke_config):
  (tmp_path / "config.json").write_text(json.dumps({"model": {"name": "lstm_captioner"}, "data": {}}))
  with pytest.raises(train.ConfigError, match="another model configuration"):
    train.train_and_evaluate(smoke_config, tmp_path)


def test_cli_rejects_unknown_config_keys(tmp_path, capsys):
  status = cli.main(["train", "--config=configs/demo.py:smoke", f"--workdir={tmp_path}",
                     "--config.train.num_stepz=3"])
  assert status == 2
  assert "num_stepz" in capsys.readouterr().err
  assert not (tmp_path / "checkpoints").exists()


def test_unknown_dataset_or_missing_split_is_a_clear_error(tmp_path, smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.data.name = "mimic_cxr"
  with pytest.raises(Exception, match="mimic_cxr"):
    train.train_and_evaluate(config, tmp_path / "a")
  config = demo.get_config("smoke")
  config.data.update(name="iu_xray", data_dir=str(tmp_path / "nothing_prepared"), tfds_config="random")
  with pytest.raises(FileNotFoundError, match="nothing_prepared.*cxrjax prepare"):
    train.train_and_evaluate(config, tmp_path / "b")
  assert not (tmp_path / "b").exists()


def test_evaluate_writes_predictions_and_named_metrics(tmp_path, smoke_config, capsys):
  train.train_and_evaluate(smoke_config, tmp_path)
  assert cli.main(["evaluate", "--workdir", str(tmp_path), "--split", "test", "--no-meteor"]) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["num_studies"] == smoke_config.data.num_test
  predictions = [json.loads(line) for line in (tmp_path / "eval/test/predictions.jsonl").read_text().splitlines()]
  assert len(predictions) == smoke_config.data.num_test
  assert set(predictions[0]) == {"id", "reference", "generated"}
  assert len({p["id"] for p in predictions}) == len(predictions)
  written = json.loads((tmp_path / "eval/test/metrics.json").read_text())
  for name in ("BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr", "sacreBLEU"):
    assert 0.0 <= written["scores"][name] <= 10.0
    assert name.split("-")[0] in " ".join(written["scores"]["implementations"]) or \
        name in written["scores"]["implementations"]
  assert written["blind_baseline"]["report"]


def test_imported_frozen_encoder_is_loaded_and_never_moves(tmp_path, smoke_config):
  from cxrjax import models
  from cxrjax.models.encoders import densenet
  from cxrjax.weights import chexnet
  config = smoke_config.copy_and_resolve_references()
  encoder = models.encoder_config(config.model.encoder)
  head_config = densenet.DenseNetConfig(**{**encoder.to_dict(), "num_classes": 14})
  variables = densenet.DenseNet(head_config).init(jax.random.key(7), np.zeros((1, 32, 32, 3), np.float32))
  chexnet.save_chexnet(tmp_path / "chexnet", variables, head_config, source={"format": "test"})
  config.model.update(freeze_encoder=True, encoder_weights=str(tmp_path / "chexnet"))
  train.train_and_evaluate(config, tmp_path / "run")
  state = _params(tmp_path / "run")
  imported = {k: v for k, v in variables["params"].items() if k != "classifier"}
  jax.tree.map(np.testing.assert_array_equal, state.params["image_encoder"]["densenet"], imported)
  jax.tree.map(np.testing.assert_array_equal, state.batch_stats["image_encoder"]["densenet"],
               variables["batch_stats"])
  # The decoder did train: its output layer moved away from the initial values.
  _, model, _, _ = evaluate.load_run(tmp_path / "run")
  from cxrjax import tasks
  task = tasks.make_task(config)
  initial = train.init_state(model, task, lambda p: train.make_optimizer(config, p), jax.random.key(config.train.seed))
  assert not np.allclose(state.params["decoder"]["output"]["kernel"],
                         initial.params["decoder"]["output"]["kernel"])


def test_cached_encoder_features_match_the_encoder_and_train(tmp_path, smoke_config):
  from cxrjax.data import pipeline
  config = smoke_config.copy_and_resolve_references()
  config.model.update(freeze_encoder=True, cache_features=True)
  train.train_and_evaluate(config, tmp_path, stop_after_steps=2)
  cache = tmp_path / "features" / "train.npz"
  with np.load(cache) as cached:
    ids, feature_map = cached["ids"], cached["feature_map"]
  assert len(ids) == config.data.num_train and feature_map.dtype == np.float16
  # The cache holds what the frozen encoder computes for the un-augmented images.
  _, model, vocabulary, state = evaluate.load_run(tmp_path, train.LATEST)
  source, _ = pipeline.make_source(config.data, "train")
  batch = next(iter(pipeline.make_dataset(source, vocabulary, batch_size=4, image_size=config.data.image_size,
                                          max_length=config.data.max_length, train=False,
                                          shard_index=0, shard_count=1)))
  direct = model.apply({"params": state.params, "batch_stats": state.batch_stats}, batch["images"],
                       method=lambda m, x: m.image_encoder(x))
  assert list(batch["id"]) == list(ids[:4])
  np.testing.assert_allclose(feature_map[:4], direct["feature_map"], rtol=1e-2, atol=1e-3)
  # Resuming reuses the cache (same file, not rewritten) and finishes the run.
  written = cache.stat().st_mtime_ns
  train.train_and_evaluate(config, tmp_path)
  assert cache.stat().st_mtime_ns == written
  assert int(_params(tmp_path).step) == config.train.num_steps


def test_cached_features_need_a_frozen_encoder(tmp_path, smoke_config):
  config = smoke_config.copy_and_resolve_references()
  config.model.update(freeze_encoder=False, cache_features=True)
  with pytest.raises(train.ConfigError, match="freeze_encoder"):
    train.train_and_evaluate(config, tmp_path)
