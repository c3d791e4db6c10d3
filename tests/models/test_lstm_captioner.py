"""The simple encoder-decoder (seeds 000/001): interface consistency, decoding, word vectors, training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, iu_xray_lstm
from cxrjax.jobs import evaluate, inference, train
from cxrjax import models
from cxrjax.core import optim
from cxrjax.run import workdir
from cxrjax.core.errors import ConfigError
from cxrjax.models import attention_captioner, lstm_captioner
from cxrjax.models.encoders import densenet
from cxrjax.text import word_vectors
from cxrjax.weights import pretrained
from tests.models import captioner_checks

TINY = densenet.config_from_section(densenet.tiny_config())
VOCABULARY = captioner_checks.word_vocabulary(tuple(f"word{i}" for i in range(9)))


@pytest.fixture(scope="module")
def model_and_variables():
  model = lstm_captioner.LSTMCaptioner(
    vocab_size=len(VOCABULARY), encoder=TINY, freeze_encoder=False, embed_dim=8, hidden_dim=16, dropout_rate=0.3
  )
  images = jax.random.normal(jax.random.key(0), (3, 2, 32, 32, 3))
  variables = model.init(
    {"params": jax.random.key(1), "dropout": jax.random.key(2)}, images, jnp.zeros((3, 5), jnp.int32)
  )
  # Larger output weights, so that greedy search produces varied words, not one repeated token.
  params = jax.tree.map(lambda x: x, variables["params"])
  params["decoder"]["output"]["kernel"] = params["decoder"]["output"]["kernel"] * 8.0
  return model, {"params": params, "batch_stats": variables["batch_stats"]}, images


def test_teacher_forcing_equals_stepping_decode_step(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6, 7], [8], [4] * 5], 6))
  outputs = model.apply(variables, images, tokens)
  assert outputs["logits"].shape == (3, 6, len(VOCABULARY))
  assert outputs["attention"] is None
  memory = model.apply(variables, images, method="encode")
  cache = model.apply(variables, memory, method="init_cache")
  # The LSTM starts from the image vector (h0 = c0), which is also kept for the sum.
  np.testing.assert_array_equal(cache["hidden"], memory["image"])
  np.testing.assert_array_equal(cache["cell"], memory["image"])
  stepped = []
  for position in range(tokens.shape[1]):
    logits, cache, attention = model.apply(
      variables, tokens[:, position], cache, jnp.int32(position), method="decode_step"
    )
    assert attention is None
    stepped.append(logits)
  np.testing.assert_allclose(np.stack(stepped, axis=1), outputs["logits"], atol=1e-5)


def test_the_image_reaches_every_step(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6, 7]] * 3, 4))
  logits = model.apply(variables, images, tokens)["logits"]
  other = model.apply(variables, images[::-1], tokens)["logits"]
  for position in range(tokens.shape[1]):
    assert not np.allclose(logits[0, position], other[0, position], atol=1e-4)
  np.testing.assert_allclose(logits[1], other[1], atol=1e-5)  # The middle study is the same.


def test_dropout_acts_in_training_only(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6, 7]] * 3, 4))
  run = lambda key: model.apply(variables, images, tokens, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[
    0
  ]["logits"]
  assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))
  np.testing.assert_array_equal(
    model.apply(variables, images, tokens)["logits"], model.apply(variables, images, tokens)["logits"]
  )


def test_greedy_equals_beam_of_one(model_and_variables):
  captioner_checks.assert_greedy_equals_beam_of_one(*model_and_variables, VOCABULARY)


def test_config_sections_build_and_freeze_the_embedding():
  config = demo.get_config("smoke,model=lstm")
  model = models.build(config.model, 20, optim.frozen_predicate(config.optimizer))
  assert isinstance(model, lstm_captioner.LSTMCaptioner) and model.embed_dim == config.model.embed_dim
  assert not model.freeze_encoder  # The demo trains its encoder (no pretrained phantom weights).
  full = iu_xray_lstm.get_config("freeze")
  model = models.build(full.model, 20, optim.frozen_predicate(full.optimizer))
  assert model.freeze_encoder and model.embed_dim == 300 and "word_vectors" in full.init
  # Seed 001: the embedding and CheXNet are frozen, everything else trains.
  params = jax.eval_shape(
    model.init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, 2, 224, 224, 3), jnp.float32),
    jax.ShapeDtypeStruct((1, 4), jnp.int32),
  )["params"]
  labels = optim.parameter_labels(full.optimizer, params)
  assert set(jax.tree.leaves(labels["decoder"]["embed"])) == {optim.FROZEN}
  assert set(jax.tree.leaves(labels["image_encoder"])) == {optim.FROZEN}
  assert optim.FROZEN not in jax.tree.leaves({k: v for k, v in labels["decoder"].items() if k != "embed"})
  assert optim.FROZEN not in jax.tree.leaves(labels["image_dense"])
  trainable = iu_xray_lstm.get_config()  # Seed 000: the embedding trains.
  assert set(jax.tree.leaves(optim.parameter_labels(trainable.optimizer, params)["decoder"]["embed"])) == {"rate=1.0"}
  assert models.build(iu_xray_lstm.get_config("smoke").model, 20).hidden_dim == 32


def test_word_vectors_of_the_wrong_size_or_for_a_model_without_embedding_are_clear_errors(tmp_path):
  config = demo.get_config("smoke,model=lstm")
  vocabulary = captioner_checks.word_vocabulary(("heart", "normal"))
  model = models.build(config.model, len(vocabulary))
  variables = model.init(jax.random.key(0), np.zeros((1, 2, 32, 32, 3), np.float32), np.zeros((1, 4), np.int32))
  (tmp_path / "five.txt").write_text("heart 1 2 3 4 5\n")
  config.init.word_vectors = str(tmp_path / "five.txt")
  with pytest.raises(word_vectors.WordVectorFileError, match="five.txt, line 1: 5-d vectors; 8-d"):
    pretrained.initialize(config.init, lstm_captioner.LSTMCaptioner, variables, vocabulary)
  with pytest.raises(ConfigError, match="AttentionCaptioner model has no such pretrained part"):
    pretrained.initialize(config.init, attention_captioner.AttentionCaptioner, variables, vocabulary)
  with pytest.raises(
    ConfigError, match="config.init.word_vectors: the model has no parameters at 'decoder/embed/embedding'"
  ):
    pretrained.initialize(config.init, lstm_captioner.LSTMCaptioner, {"params": {"decoder": {}}}, vocabulary)


def _write_vectors(path, words, dim, seed=0):
  rng = np.random.default_rng(seed)
  lines = [f"{w} " + " ".join(f"{v:.6f}" for v in rng.normal(0, 0.5, dim)) for w in words]
  path.write_text("\n".join(lines) + "\n")
  return path


PHANTOM_WORDS = ("the", "heart", "is", "normal", "size", ".", "no", "pleural", "effusion", "lungs", "are")


def test_trains_and_evaluates_with_pretrained_trainable_vectors(tmp_path):
  config = demo.get_config("smoke,model=lstm")
  vectors = _write_vectors(tmp_path / "vectors.txt", PHANTOM_WORDS, config.model.embed_dim)
  config.init.word_vectors = str(vectors)
  train.train_and_evaluate(config, tmp_path / "run")
  output = evaluate.evaluate(str(tmp_path / "run"), "test", meteor=False)
  assert output["scores"]["num_studies"] == config.data.num_test
  assert 0.0 <= output["scores"]["BLEU-4"] <= 1.0
  assert output["baselines"]["most_common_report"]["report"]
  predictions = (tmp_path / "run/eval/test/predictions.jsonl").read_text().splitlines()
  assert len(predictions) == config.data.num_test
  assert set(json.loads(predictions[0])) == {"id", "reference", "generated"}
  # The embedding started from the file's vectors and, trainable, moved a little in 4 steps.
  run = workdir.load_run(tmp_path / "run", workdir.LATEST)
  loaded, stats = word_vectors.load_word_vectors(vectors, run.tokenizer, dim=config.model.embed_dim)
  assert stats.found >= 8
  embedding = np.asarray(run.state.params["decoder"]["embed"]["embedding"])
  assert not np.array_equal(embedding, loaded)
  np.testing.assert_allclose(embedding, loaded, atol=0.05)
  # predict works with the simple model and says that it has no attention maps.
  predictor = inference.Predictor.from_workdir(str(tmp_path / "run"))
  paths = captioner_checks.write_phantom_study(tmp_path / "study")
  result = predictor.predict_report(paths, attention_dir=str(tmp_path / "maps"))
  assert isinstance(result["report"], str)
  assert predictor.attention(predictor.load_views(paths)[0], np.array([4, 5], np.int32)) is None
  if result["token_ids"]:
    assert result["attention_maps"] == "none: the lstm_captioner model has no attention"
  else:
    assert result["attention_maps"] == "none: the generated report is empty"
  assert not (tmp_path / "maps").exists()


def test_frozen_pretrained_vectors_never_move(tmp_path):
  config = demo.get_config("smoke,model=lstm")
  vectors = _write_vectors(tmp_path / "vectors.txt", PHANTOM_WORDS, config.model.embed_dim, seed=1)
  config.init.word_vectors = str(vectors)
  config.optimizer.param_groups = (("decoder/embed/.*", None), (".*", 1.0))  # Seed 001.
  train.train_and_evaluate(config, tmp_path / "run", stop_after_steps=2)
  halfway = workdir.load_run(tmp_path / "run", workdir.LATEST)
  train.train_and_evaluate(config, tmp_path / "run")
  end = workdir.load_run(tmp_path / "run", workdir.LATEST)
  assert (int(halfway.state.step), int(end.state.step)) == (2, 4)
  loaded, _ = word_vectors.load_word_vectors(vectors, halfway.tokenizer, dim=config.model.embed_dim)
  for run in (halfway, end):
    np.testing.assert_array_equal(run.state.params["decoder"]["embed"]["embedding"], loaded)
  # The rest of the decoder did train meanwhile.
  assert not np.allclose(
    end.state.params["decoder"]["output"]["kernel"], halfway.state.params["decoder"]["output"]["kernel"]
  )
