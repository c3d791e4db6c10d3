"""The captioning task's generation: which search a decode config runs, and the loss's padding mask."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cxrjax import decoding, models
from cxrjax.tasks import captioning
from cxrjax.text import tokenizers

VOCAB = tokenizers.WordVocabulary.build(["the heart is normal no effusion left right lung clear"], min_count=1)


@pytest.fixture(scope="module")
def model_and_variables():
  section = models.get("attention_captioner").smoke_config()
  model = models.build(section, len(VOCAB))
  images = jax.random.normal(jax.random.key(1), (3, 2, 32, 32, 3))
  variables = model.init(jax.random.key(0), images, jnp.zeros((3, 5), jnp.int32))
  return model, variables, images


def _search(model, variables, images, **kwargs):
  cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
  options = dict(start_id=VOCAB.start_id, end_id=VOCAB.end_id, pad_id=VOCAB.pad_id, max_length=12)
  step_fn = model.decoder_step_fn(variables)
  if kwargs.get("beam_size"):
    return decoding.beam_search(step_fn, cache, **options, **kwargs)[0][:, 0]
  return decoding.greedy_search(step_fn, cache, **options)[0]


def test_beam_of_one_with_a_length_penalty_runs_beam_search_not_greedy(model_and_variables):
  """Only beam 1 without a penalty is greedy's equal; with a penalty the config's beam search runs."""
  model, variables, images = model_and_variables
  for penalty in (0.0, 0.6, 2.0):
    decode = ml_collections.ConfigDict(dict(beam_size=1, max_length=12, length_penalty=penalty))
    generated = jax.jit(lambda v, x: captioning.generate(model, v, x, VOCAB, decode))(variables, images)
    expected = _search(model, variables, images, beam_size=1, length_penalty=penalty)
    np.testing.assert_array_equal(generated, expected)
  decode = ml_collections.ConfigDict(dict(beam_size=3, max_length=12, length_penalty=0.0))
  greedy = captioning.generate(model, variables, images, VOCAB, decode, greedy=True)
  np.testing.assert_array_equal(greedy, _search(model, variables, images))


def test_loss_ignores_padding_tokens_and_padding_studies(model_and_variables):
  model, variables, images = model_and_variables
  task = captioning.CaptioningTask(ml_collections.ConfigDict())
  tokens = np.array([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0], [2, 8, 9, 10, 11, 3]], np.int32)
  batch = {"images": images, "tokens": tokens, "mask": np.array([True, True, False])}
  loss, (_, aux) = task.loss(model, variables, batch, jax.random.key(0), VOCAB)
  assert float(aux["tokens"]) == 3 + 2  # Real targets of the two real studies (end tokens included).
  changed = dict(batch, tokens=tokens.copy())
  changed["tokens"][2] = [2, 4, 4, 4, 4, 3]  # The padding study's tokens do not count.
  changed_loss, _ = task.loss(model, variables, changed, jax.random.key(0), VOCAB)
  np.testing.assert_allclose(changed_loss, loss, rtol=1e-6)
