"""The simple encoder-decoder (seeds 000/001): interface consistency, decoding, word vectors, training."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo
from tests import captioner_checks
from cxrjax import evaluate, models, train
from cxrjax.text import tokenizers as text, word_vectors
from cxrjax.models import lstm_captioner as lstm
from cxrjax.models.encoders import densenet

TINY = densenet.DenseNetConfig(block_sizes=(1, 1), growth_rate=4, stem_features=8, num_classes=0)
VOCAB = 13


@pytest.fixture(scope="module")
def model_and_variables():
  model = lstm.LSTMCaptioner(vocab_size=VOCAB, encoder=TINY, freeze_encoder=False, embed_dim=8,
                             hidden_dim=16, dropout_rate=0.3)
  images = jax.random.normal(jax.random.key(0), (3, 2, 32, 32, 3))
  variables = model.init({"params": jax.random.key(1), "dropout": jax.random.key(2)}, images,
                         jnp.zeros((3, 5), jnp.int32))
  # Larger output weights, so that greedy search produces varied words, not one repeated token.
  params = jax.tree.map(lambda x: x, variables["params"])
  params["decoder"]["output"]["kernel"] = params["decoder"]["output"]["kernel"] * 8.0
  return model, {"params": params, "batch_stats": variables["batch_stats"]}, images


def test_teacher_forcing_equals_stepping_decode_step(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.array([[2, 5, 6, 7, 3, 0], [2, 8, 3, 0, 0, 0], [2, 4, 4, 4, 4, 4]], jnp.int32)
  outputs = model.apply(variables, images, tokens)
  assert outputs["logits"].shape == (3, 6, VOCAB)
  assert outputs["attention"] is None
  memory = model.apply(variables, images, method="encode")
  cache = model.apply(variables, memory, method="init_cache")
  # The LSTM starts from the image vector (h0 = c0), which is also kept for the sum.
  np.testing.assert_array_equal(cache["hidden"], memory["image"])
  np.testing.assert_array_equal(cache["cell"], memory["image"])
  stepped = []
  for position in range(tokens.shape[1]):
    logits, cache, attention = model.apply(variables, tokens[:, position], cache, method="decode_step")
    assert attention is None
    stepped.append(logits)
  np.testing.assert_allclose(np.stack(stepped, axis=1), outputs["logits"], atol=1e-5)


def test_the_image_reaches_every_step(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.array([[2, 5, 6, 7]] * 3, jnp.int32)
  logits = model.apply(variables, images, tokens)["logits"]
  other = model.apply(variables, images[::-1], tokens)["logits"]
  for position in range(tokens.shape[1]):
    assert not np.allclose(logits[0, position], other[0, position], atol=1e-4)
  np.testing.assert_allclose(logits[1], other[1], atol=1e-5)  # The middle study is the same.


def test_dropout_acts_in_training_only(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.array([[2, 5, 6, 7]] * 3, jnp.int32)
  run = lambda key: model.apply(variables, images, tokens, train=True, rngs={"dropout": key},
                                mutable=["batch_stats"])[0]["logits"]
  assert not np.allclose(run(jax.random.key(0)), run(jax.random.key(1)))
  np.testing.assert_array_equal(model.apply(variables, images, tokens)["logits"],
                                model.apply(variables, images, tokens)["logits"])


def test_greedy_equals_beam_of_one(model_and_variables):
  captioner_checks.assert_greedy_equals_beam_of_one(*model_and_variables)

def test_config_sections_build_and_freeze_the_embedding():
  config = demo.get_config("smoke,model=lstm")
  assert models.frozen_prefixes(config.model) == ()
  config.model.update(freeze_embedding=True, freeze_encoder=True)
  assert set(models.frozen_prefixes(config.model)) == {"image_encoder", "decoder/embed"}
  model = models.build_model(config.model, 20)
  assert isinstance(model, lstm.LSTMCaptioner) and model.embed_dim == config.model.embed_dim
  from configs import iu_xray_lstm
  full = iu_xray_lstm.get_config("freeze")
  assert full.model.freeze_embedding and full.model.embed_dim == 300 and "word_vectors" in full.model
  assert models.build_model(iu_xray_lstm.get_config("smoke").model, 20).hidden_dim == 32


def test_word_vectors_of_the_wrong_size_or_for_a_model_without_embedding_are_clear_errors(tmp_path):
  config = demo.get_config("smoke,model=lstm")
  vocabulary = text.Vocabulary(tokens=text.SPECIAL_TOKENS + ("heart", "normal"))
  model = models.build_model(config.model, len(vocabulary))
  variables = model.init(jax.random.key(0), np.zeros((1, 2, 32, 32, 3), np.float32), np.zeros((1, 4), np.int32))
  (tmp_path / "five.txt").write_text("heart 1 2 3 4 5\n")
  config.model.word_vectors = str(tmp_path / "five.txt")
  with pytest.raises(word_vectors.WordVectorFileError, match="five.txt, line 1: 5-d vectors; 8-d"):
    models.load_pretrained(config.model, variables["params"], variables["batch_stats"], vocabulary)
  with pytest.raises(ValueError, match="no word embedding at decoder/embed/embedding"):
    models.load_pretrained(config.model, {"decoder": {}}, {}, vocabulary)


def _write_vectors(path, words, dim, seed=0):
  rng = np.random.default_rng(seed)
  lines = [f"{w} " + " ".join(f"{v:.6f}" for v in rng.normal(0, 0.5, dim)) for w in words]
  path.write_text("\n".join(lines) + "\n")
  return path


PHANTOM_WORDS = ("the", "heart", "is", "normal", "size", ".", "no", "pleural", "effusion", "lungs", "are")


def test_trains_and_evaluates_with_pretrained_trainable_vectors(tmp_path):
  config = demo.get_config("smoke,model=lstm")
  vectors = _write_vectors(tmp_path / "vectors.txt", PHANTOM_WORDS, config.model.embed_dim)
  config.model.word_vectors = str(vectors)
  train.train_and_evaluate(config, tmp_path / "run")
  output = evaluate.run_evaluation(tmp_path / "run", "test", meteor=False)
  assert output["scores"]["num_studies"] == config.data.num_test
  assert 0.0 <= output["scores"]["BLEU-4"] <= 1.0
  assert output["blind_baseline"]["report"]
  predictions = (tmp_path / "run/eval/test/predictions.jsonl").read_text().splitlines()
  assert len(predictions) == config.data.num_test
  assert set(json.loads(predictions[0])) == {"id", "reference", "generated"}
  # The embedding started from the file's vectors and, trainable, moved a little in 4 steps.
  _, _, vocabulary, state = evaluate.load_run(tmp_path / "run", train.LATEST)
  loaded, stats = word_vectors.load_word_vectors(vectors, vocabulary, dim=config.model.embed_dim)
  assert stats.found >= 8
  embedding = np.asarray(state.params["decoder"]["embed"]["embedding"])
  assert not np.array_equal(embedding, loaded)
  np.testing.assert_allclose(embedding, loaded, atol=0.05)
  # predict works with the simple model and says that it has no attention maps.
  from cxrjax import predict
  paths = captioner_checks.write_phantom_study(tmp_path / "study")
  result = predict.predict(str(tmp_path / "run"), paths, attention_dir=str(tmp_path / "maps"))
  assert isinstance(result["report"], str)
  assert result["attention_maps"] == "none: the lstm_captioner model has no attention"
  assert not (tmp_path / "maps").exists()



def test_frozen_pretrained_vectors_never_move(tmp_path):
  config = demo.get_config("smoke,model=lstm")
  vectors = _write_vectors(tmp_path / "vectors.txt", PHANTOM_WORDS, config.model.embed_dim, seed=1)
  config.model.update(word_vectors=str(vectors), freeze_embedding=True)
  train.train_and_evaluate(config, tmp_path / "run", stop_after_steps=2)
  _, _, vocabulary, halfway = evaluate.load_run(tmp_path / "run", train.LATEST)
  train.train_and_evaluate(config, tmp_path / "run")
  _, _, _, state = evaluate.load_run(tmp_path / "run", train.LATEST)
  assert (int(halfway.step), int(state.step)) == (2, 4)
  loaded, _ = word_vectors.load_word_vectors(vectors, vocabulary, dim=config.model.embed_dim)
  for variables in (halfway, state):
    np.testing.assert_array_equal(variables.params["decoder"]["embed"]["embedding"], loaded)
  # The rest of the decoder did train meanwhile.
  assert not np.allclose(state.params["decoder"]["output"]["kernel"],
                         halfway.params["decoder"]["output"]["kernel"])
