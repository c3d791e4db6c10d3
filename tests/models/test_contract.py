"""The contract every registered model family must keep, checked just by being in models.FAMILIES.

For each family's `smoke_config()`: it builds from its config section, initialises, gives a finite loss
and one jitted train step that moves its parameters; captioners also decode step by step exactly as
teacher forcing computes, their greedy search equals a beam of one, and a checkpoint round trip restores
the state bit for bit.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from cxrjax.core import recipes
from cxrjax.core import decoding, sharding
from cxrjax import models
from cxrjax.jobs import train
from cxrjax.run import workdir
from cxrjax.text import tokenizers

FAMILIES = sorted(models.FAMILIES)
CAPTIONERS = [name for name in FAMILIES if models.get(name).task == "captioning"]
IMAGE_SIZE, VIEWS, LENGTH, BATCH = 32, 2, 9, 2


def family_config(name: str) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = dict(name="phantom", image_size=IMAGE_SIZE, num_views=VIEWS, max_length=LENGTH)
  config.model = models.get(name).smoke_config()
  config.init = recipes.no_init()
  config.optimizer = recipes.adamw(1e-2, 0)
  config.train = dict(batch_size=BATCH, num_steps=10, seed=0)
  config.decode = dict(beam_size=1, max_length=LENGTH - 1, length_penalty=0.0, block_ngram_repeat=0)
  return config


@pytest.fixture(scope="module")
def tokenizer():
  return tokenizers.WordVocabulary.build(["the heart is normal no effusion left right lung clear"], min_count=1)


def random_batch(tokenizer, num_classes: int = 5) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  words = rng.integers(4, len(tokenizer), size=(BATCH, LENGTH - 2))
  tokens = np.concatenate(
    [np.full((BATCH, 1), tokenizer.start_id), words, np.full((BATCH, 1), tokenizer.end_id)], axis=1
  ).astype(np.int32)
  tokens[1, 4:] = tokenizer.pad_id  # A short report: the loss must mask its padding.
  tokens[1, 3] = tokenizer.end_id
  return {
    "images": rng.normal(size=(BATCH, VIEWS, IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.float32),
    "tokens": tokens,
    "labels": rng.integers(0, 2, size=(BATCH, num_classes)).astype(np.float32),
    "mask": np.ones((BATCH,), bool),
  }


def _built(name, tokenizer):
  config = family_config(name)
  components = workdir.build(config, tokenizer)
  state = jax.jit(lambda rng: workdir.init_state(components, rng))(jax.random.key(0))
  return name, config, components, state


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tokenizer):
  return _built(request.param, tokenizer)


@pytest.fixture(scope="module", params=CAPTIONERS)
def captioner(request, tokenizer):
  """The captioner families (classifiers have no decoder: the tests above cover them)."""
  return _built(request.param, tokenizer)


def test_every_family_describes_itself(family):
  name, config, components, _ = family
  family_class = models.get(name)
  assert family_class.task in ("captioning", "classification")
  assert isinstance(components.model, family_class)
  for part in family_class.pretrained_parts.values():
    assert part.kind in ("densenet", "hf_resnet", "word_vectors") and part.paths


def test_loss_is_finite_and_a_jitted_train_step_moves_the_parameters(family, tokenizer):
  _, config, components, state = family
  batch = random_batch(tokenizer, config.model.get("num_classes", 5))
  tx = components.make_optimizer(state.params)
  step = jax.jit(train.make_train_step(components, tx, dropout_seed=0))
  new_state, metrics = step(state, batch)
  assert np.isfinite(float(metrics["loss"])) and float(metrics["loss"]) > 0
  assert int(new_state.step) == 1
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new_state.params))]
  assert sum(moved) >= 0.5 * len(moved), f"only {sum(moved)} of {len(moved)} parameter tensors moved"


def test_checkpoint_round_trip_restores_the_state_exactly(family, tokenizer, tmp_path):
  _, config, components, state = family
  batch = random_batch(tokenizer, config.model.get("num_classes", 5))
  tx = components.make_optimizer(state.params)
  state, _ = jax.jit(train.make_train_step(components, tx, 0))(state, batch)  # Non-zero moments.
  manager = workdir.checkpoint_manager(tmp_path, "latest")
  workdir.save(manager, state, {"position": 3}, {"step": 1})
  manager.wait_until_finished()
  restored, data_state, meta = workdir.restore(manager, workdir.abstract_state(components, sharding.create_mesh()))
  assert data_state == {"position": 3} and meta == {"step": 1}
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@functools.partial(jax.jit, static_argnums=0)
def _initial_cache(model, variables, images):
  """The decoder's cache before the first token: the images encoded (jitted, as the searches run it)."""
  return model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")


def test_teacher_forcing_equals_step_by_step_decoding(captioner, tokenizer):
  _, _, components, state = captioner
  model, variables = components.model, state.variables()
  batch = random_batch(tokenizer)
  inputs = batch["tokens"][:, :-1]
  forced = jax.jit(model.apply)(variables, batch["images"], inputs)["logits"]  # [batch, length, vocab]
  cache = _initial_cache(model, variables, batch["images"])
  step_fn = jax.jit(model.decoder_step_fn(variables))
  stepped = []
  for position in range(inputs.shape[1]):
    logits, cache = step_fn(jnp.asarray(inputs[:, position]), cache, jnp.int32(position))
    stepped.append(logits)
  np.testing.assert_allclose(np.stack(stepped, axis=1), forced, rtol=1e-5, atol=1e-5)


def test_greedy_search_equals_a_beam_of_one(captioner, tokenizer):
  _, _, components, state = captioner
  model, variables = components.model, state.variables()
  images = random_batch(tokenizer)["images"]
  options = dict(start_id=tokenizer.start_id, end_id=tokenizer.end_id, pad_id=tokenizer.pad_id, max_length=8)

  @jax.jit
  def search(images):
    cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
    step_fn = model.decoder_step_fn(variables)
    greedy, greedy_scores = decoding.greedy_search(step_fn, cache, **options)
    beams, beam_scores = decoding.beam_search(step_fn, cache, beam_size=1, length_penalty=0.0, **options)
    return greedy, greedy_scores, beams[:, 0], beam_scores[:, 0]

  greedy, greedy_scores, beam, beam_scores = search(images)
  np.testing.assert_array_equal(greedy, beam)
  np.testing.assert_allclose(greedy_scores, beam_scores, rtol=1e-5)


def test_a_decode_of_the_longest_length_a_family_allows_equals_teacher_forcing(captioner, tokenizer):
  """models.max_decode_length is exact: a decode of that many tokens feeds positions 0 .. limit - 1, each step
  equal to teacher forcing, and one step more no longer is (its KV cache write is clamped: what the commands
  refuse). A recurrent decoder has no limit (checked over 3 * LENGTH steps)."""
  name, config, components, state = captioner
  model, variables = components.model, state.variables()
  limit = models.max_decode_length(config.model)
  field = models.get(name).decode_limit_field
  assert (limit is None) == (field is None) and (limit is None or limit == config.model[field])
  steps = 3 * LENGTH if limit is None else limit + 1
  rng = np.random.default_rng(1)
  words = rng.integers(4, len(tokenizer), (BATCH, steps - 1))
  inputs = np.concatenate([np.full((BATCH, 1), tokenizer.start_id), words], axis=1).astype(np.int32)  # [batch, steps]
  images = random_batch(tokenizer)["images"]
  forced = jax.jit(model.apply)(variables, images, inputs)["logits"]  # [batch, steps, vocab]
  cache = _initial_cache(model, variables, images)
  step_fn = jax.jit(model.decoder_step_fn(variables))
  stepped = []
  for position in range(steps):
    logits, cache = step_fn(jnp.asarray(inputs[:, position]), cache, jnp.int32(position))
    stepped.append(logits)
  stepped = np.stack(stepped, axis=1)
  allowed = steps if limit is None else limit
  np.testing.assert_allclose(stepped[:, :allowed], forced[:, :allowed], rtol=1e-5, atol=1e-5)
  if limit is not None:
    assert not np.allclose(stepped[:, limit], forced[:, limit], rtol=1e-3, atol=1e-3)
