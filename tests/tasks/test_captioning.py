"""The captioning task's generation: which search a decode config runs, and the loss's padding mask."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cxrjax.core import decoding
from cxrjax import models
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
  task = captioning.CaptioningTask(ml_collections.ConfigDict(), VOCAB)
  tokens = np.array([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0], [2, 8, 9, 10, 11, 3]], np.int32)
  batch = {"images": images, "tokens": tokens, "mask": np.array([True, True, False])}
  loss, (_, aux) = task.loss(model, variables, batch, jax.random.key(0))
  assert float(aux["tokens"]) == 3 + 2  # Real targets of the two real studies (end tokens included).
  changed = dict(batch, tokens=tokens.copy())
  changed["tokens"][2] = [2, 4, 4, 4, 4, 3]  # The padding study's tokens do not count.
  changed_loss, _ = task.loss(model, variables, changed, jax.random.key(0))
  np.testing.assert_allclose(changed_loss, loss, rtol=1e-6)


def test_label_smoothing_smooths_real_targets_only(model_and_variables):
  model, variables, images = model_and_variables
  tokens = np.array([[2, 5, 6, 3, 0, 0], [2, 7, 3, 0, 0, 0], [2, 8, 9, 10, 11, 3]], np.int32)
  batch = {"images": images, "tokens": tokens}
  rng = jax.random.key(0)
  outputs, _ = model.apply(
    variables, images, tokens[:, :-1], train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
  )
  logits = np.asarray(outputs["logits"], np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  targets, vocab = tokens[:, 1:], logits.shape[-1]
  real = targets != VOCAB.pad_id
  plain = None
  for smoothing in (0.0, 0.1, 0.3):
    task = captioning.CaptioningTask(ml_collections.ConfigDict({"train": {"label_smoothing": smoothing}}), VOCAB)
    loss, (_, aux) = task.loss(model, variables, batch, rng)
    # (1 - a) on the target plus a / vocab on every token, averaged over the real targets.
    labels = (1 - smoothing) * np.eye(vocab)[targets] + smoothing / vocab
    expected = -(labels * log_probs).sum(-1)[real].mean()
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    nll = -np.take_along_axis(log_probs, targets[..., None], -1)[..., 0][real].mean()
    np.testing.assert_allclose(float(aux["token_nll"]), nll, rtol=1e-5)  # Unsmoothed.
    assert float(aux["tokens"]) == real.sum()
    plain = float(loss) if smoothing == 0 else plain
    assert smoothing == 0 or abs(float(loss) - plain) > 1e-3
  default_loss, _ = captioning.CaptioningTask(ml_collections.ConfigDict(), VOCAB).loss(model, variables, batch, rng)
  np.testing.assert_allclose(float(default_loss), plain, rtol=1e-6)


def test_hf_normalization_routes_to_transformers_beam_search(model_and_variables):
  """decode.length_normalization reaches beam search; beam 1 with "hf" is greedy (as transformers'
  num_beams=1) whatever the penalty, and the scores and token log-probabilities come back."""
  model, variables, images = model_and_variables
  for beam_size, normalization, penalty in ((3, "hf", 1.0), (3, "gnmt", 0.6), (1, "hf", 1.0)):
    decode = ml_collections.ConfigDict(
      dict(beam_size=beam_size, max_length=12, length_penalty=penalty, length_normalization=normalization)
    )
    outputs = jax.jit(lambda v, x, d=decode: captioning.search(model, v, x, VOCAB, d))(variables, images)
    cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
    options = dict(
      start_id=VOCAB.start_id, end_id=VOCAB.end_id, pad_id=VOCAB.pad_id, max_length=12, return_token_log_probs=True
    )
    step_fn = model.decoder_step_fn(variables)
    if beam_size == 1:
      tokens, scores, token_log_probs = decoding.greedy_search(step_fn, cache, **options)
    else:
      tokens, scores, token_log_probs = (
        x[:, 0]
        for x in decoding.beam_search(
          step_fn, cache, beam_size=beam_size, length_penalty=penalty, length_normalization=normalization, **options
        )
      )
    np.testing.assert_array_equal(outputs["tokens"], tokens)
    np.testing.assert_allclose(outputs["scores"], scores, rtol=1e-5)
    np.testing.assert_allclose(outputs["token_log_probs"], token_log_probs, rtol=1e-5, atol=1e-6)
    lengths = np.asarray(decoding.sequence_lengths(tokens, VOCAB.end_id))
    if normalization == "hf":  # sum of the token log-probabilities / length ** penalty
      expected = np.asarray(token_log_probs).sum(-1) / (lengths**penalty if beam_size > 1 else 1)
      np.testing.assert_allclose(outputs["scores"], expected, rtol=1e-5)
