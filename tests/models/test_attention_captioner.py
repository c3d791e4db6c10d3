"""The seeds' attention captioner: both attention scores and both initial states against their formulas,
teacher forcing against step-by-step decoding, attention over both views, a frozen encoder, decoding."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import iu_xray_attention
from cxrjax.core import recipes
from cxrjax import models
from cxrjax.core import optim
from cxrjax.models import attention_captioner
from cxrjax.models.decoders import attention_gru
from cxrjax.models.encoders import densenet
from tests.models import captioner_checks

TINY = densenet.config_from_section(densenet.tiny_config())
VOCABULARY = captioner_checks.word_vocabulary(tuple(f"word{i}" for i in range(7)))
# 32 px through the tiny two-block encoder (stride 8): 4x4 cells per view, two views.
IMAGE_SIZE, REGIONS_PER_VIEW = 32, 16
VARIANTS = [
  (attention, initial_state) for attention in attention_gru.ATTENTION_KINDS for initial_state in ("zeros", "pooled")
]


def _model(attention: str, initial_state: str, freeze_encoder: bool = False):
  return attention_captioner.AttentionCaptioner(
    vocab_size=len(VOCABULARY),
    encoder=TINY,
    freeze_encoder=freeze_encoder,
    region_dim=16,
    embed_dim=8,
    hidden_dim=16,
    attention=attention,
    attention_dim=16,
    dropout_rate=0.3,
    initial_state=initial_state,
  )


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{a}-{s}" for a, s in VARIANTS])
def model_and_variables(request):
  model = _model(*request.param)
  images = jax.random.normal(jax.random.key(0), (3, 2, IMAGE_SIZE, IMAGE_SIZE, 3))
  # Parameters whose random decoder says varied words (at most seeds greedy search repeats one word), so
  # that greedy search and the beam of one are compared on real sequences.
  variables = model.init(
    {"params": jax.random.key(16), "dropout": jax.random.key(2)}, images, jnp.zeros((3, 5), jnp.int32)
  )
  return model, variables, images


def test_teacher_forcing_equals_stepping_decode_step(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6, 7], [8], [4] * 5], 6))
  outputs = model.apply(variables, images, tokens)
  memory = model.apply(variables, images, method="encode")
  assert memory["regions"].shape == (3, 2 * REGIONS_PER_VIEW, 16)
  assert outputs["logits"].shape == (3, 6, len(VOCABULARY))
  assert outputs["attention"].shape == (3, 6, 2 * REGIONS_PER_VIEW)
  cache = model.apply(variables, memory, method="init_cache")
  stepped, weights = [], []
  for position in range(tokens.shape[1]):
    logits, cache, attention = model.apply(
      variables, tokens[:, position], cache, jnp.int32(position), method="decode_step"
    )
    stepped.append(logits)
    weights.append(attention)
  np.testing.assert_allclose(np.stack(stepped, axis=1), outputs["logits"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.stack(weights, axis=1), outputs["attention"], rtol=1e-5, atol=1e-6)
  # Through decoding.py's step function too (what greedy and beam search call).
  cache = model.apply(variables, memory, method="init_cache")
  step_fn = model.decoder_step_fn(variables)
  for position in range(tokens.shape[1]):
    logits, cache = step_fn(tokens[:, position], cache, jnp.int32(position))
    np.testing.assert_allclose(logits, outputs["logits"][:, position], rtol=1e-5, atol=1e-5)


def test_initial_state_is_zeros_or_the_projected_mean_region(model_and_variables):
  model, variables, images = model_and_variables
  memory = model.apply(variables, images, method="encode")
  state = np.asarray(model.apply(variables, memory, method="init_cache")["state"])
  if model.initial_state == "zeros":  # Seed 001: s1 is zeros.
    np.testing.assert_array_equal(state, np.zeros((3, model.hidden_dim), np.float32))
    assert "state_projection" not in variables["params"]
  else:  # Show, Attend and Tell: tanh(Dense(mean region)).
    projection = variables["params"]["state_projection"]
    mean = np.asarray(memory["regions"], np.float64).mean(axis=1)
    expected = np.tanh(mean @ np.asarray(projection["kernel"], np.float64) + np.asarray(projection["bias"]))
    np.testing.assert_allclose(state, expected, rtol=1e-5, atol=1e-6)
    assert np.abs(state[0] - state[1]).max() > 1e-4  # It depends on the study.


def test_attention_weights_are_distributions_over_all_regions_of_both_views(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6, 7]] * 3, 5))
  weights = np.asarray(model.apply(variables, images, tokens)["attention"])  # [batch, length, regions]
  assert weights.shape == (3, 5, 2 * REGIONS_PER_VIEW)
  assert (weights > 0).all()
  np.testing.assert_allclose(weights.sum(axis=-1), 1.0, rtol=1e-5)
  # Regions [0, 16) are the frontal view's cells, [16, 32) the lateral's (predict reshapes them so): a
  # different lateral view changes only the second half of the memory, and the weights of every step.
  other = images.at[:, 1].set(images[::-1, 1])
  memory, other_memory = (model.apply(variables, x, method="encode")["regions"] for x in (images, other))
  np.testing.assert_array_equal(memory[:, :REGIONS_PER_VIEW], other_memory[:, :REGIONS_PER_VIEW])
  assert np.abs(np.asarray(memory[0, REGIONS_PER_VIEW:] - other_memory[0, REGIONS_PER_VIEW:])).max() > 1e-4
  other_weights = np.asarray(model.apply(variables, other, tokens)["attention"])
  assert (np.abs(other_weights[0] - weights[0]).max(axis=-1) > 1e-6).all()


@pytest.mark.parametrize("kind", attention_gru.ATTENTION_KINDS)
def test_attention_scores_follow_their_formulas(kind):
  """bahdanau: v . tanh(W_q q + b + W_k k); concat: v . tanh(W [q; k] + b); softmax over regions."""
  module = attention_gru.Attention(kind, attention_dim=5)
  rng = np.random.default_rng(0)
  query = rng.normal(size=(2, 4)).astype(np.float32)
  regions = rng.normal(size=(2, 6, 3)).astype(np.float32)
  params = module.init(jax.random.key(0), query, regions, method=lambda m, q, r: m(q, m.project_keys(r), r))["params"]
  keys = module.apply({"params": params}, regions, method="project_keys")
  context, weights = module.apply({"params": params}, query, keys, regions)
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  if kind == "bahdanau":
    hidden = np.tanh(
      (query @ p["query_projection"]["kernel"] + p["query_projection"]["bias"])[:, None]
      + regions @ p["key_projection"]["kernel"]
    )
  else:
    joined = np.concatenate([np.broadcast_to(query[:, None], (2, 6, 4)), regions], axis=-1)
    hidden = np.tanh(joined @ p["concat_projection"]["kernel"] + p["concat_projection"]["bias"])
  scores = (hidden @ p["score"]["kernel"])[..., 0]
  expected = np.exp(scores - scores.max(-1, keepdims=True))
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(context, np.einsum("br,brd->bd", expected, regions), rtol=1e-5, atol=1e-6)


def _encoder_run(model, variables, images, train):
  """The image encoder's outputs (and its batch-statistics updates when `train`)."""
  return model.apply(
    variables, images, train, method=lambda m, x, t: m.image_encoder(x, train=t), mutable=["batch_stats"]
  )


@pytest.mark.parametrize(
  "param_groups", [recipes.FROZEN_ENCODER, recipes.TRAINED_EVERYWHERE], ids=["frozen", "trained"]
)
def test_a_frozen_encoder_gets_no_gradient_and_runs_batch_norm_in_inference_mode(param_groups):
  section = attention_captioner.AttentionCaptioner.smoke_config()  # concat, zeros: the IU configs'
  frozen = param_groups == recipes.FROZEN_ENCODER
  is_frozen = optim.frozen_predicate(ml_collections.ConfigDict({"param_groups": param_groups}))
  model = models.build(section, len(VOCABULARY), is_frozen)
  assert isinstance(model, attention_captioner.AttentionCaptioner) and model.freeze_encoder == frozen
  images = 2.0 + jax.random.normal(jax.random.key(0), (4, 2, IMAGE_SIZE, IMAGE_SIZE, 3))
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6, 7], [8], [4] * 5, [9, 10]], 7))
  variables = jax.jit(model.init)(jax.random.key(1), images, tokens[:, :-1])  # Jitted: op by op is slow.

  def loss_fn(params):
    outputs, updates = model.apply(
      {"params": params, "batch_stats": variables["batch_stats"]},
      images,
      tokens[:, :-1],
      train=True,
      rngs={"dropout": jax.random.key(2)},
      mutable=["batch_stats"],
    )
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"], tokens[:, 1:])
    return losses.mean(), updates["batch_stats"]

  grads, batch_stats = jax.jit(jax.grad(loss_fn, has_aux=True))(variables["params"])
  encoder_grads = jax.tree.leaves(grads["image_encoder"])
  assert all(not np.asarray(g).any() for g in encoder_grads) == frozen
  if not frozen:
    assert sum(bool(np.asarray(g).any()) for g in encoder_grads) >= 0.5 * len(encoder_grads)
  for name in ("region_projection", "decoder"):  # The rest of the model trains either way.
    assert optax.tree.norm(grads[name]) > 0
  stats_moved = [
    not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(batch_stats))
  ]
  assert (not any(stats_moved)) if frozen else all(stats_moved)
  # Inference mode: a frozen encoder's training-mode outputs are its evaluation-mode outputs, bit for bit.
  (train_out, _), (eval_out, _) = (_encoder_run(model, variables, images, t) for t in (True, False))
  same = np.array_equal(train_out["regions"], eval_out["regions"])
  assert same == frozen


def test_iu_xray_configs_give_98_regions_of_512_at_224_and_freeze_chexnet():
  for attention in attention_gru.ATTENTION_KINDS:
    config = iu_xray_attention.get_config(f"attention={attention}")
    model = models.build(config.model, 100, optim.frozen_predicate(config.optimizer))
    assert (model.attention, model.initial_state, model.freeze_encoder) == (attention, "zeros", True)
  images = jax.ShapeDtypeStruct((1, 2, 224, 224, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, 5), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)  # Traced, not compiled.
  memory = jax.eval_shape(lambda v, i: model.apply(v, i, method="encode"), variables, images)
  assert memory["regions"].shape == (1, 98, 512)
  assert variables["params"]["decoder"]["attend"]["concat_projection"]["kernel"].shape == (512 + 512, 512)
  smoke = iu_xray_attention.get_config("smoke,attention=concat")
  assert models.build(smoke.model, 100).attention == "concat"


def test_unknown_attention_or_initial_state_is_a_clear_error():
  images, tokens = jnp.zeros((1, 2, IMAGE_SIZE, IMAGE_SIZE, 3)), jnp.zeros((1, 3), jnp.int32)
  with pytest.raises(ValueError, match="unknown attention 'dot'"):
    _model("dot", "zeros").init(jax.random.key(0), images, tokens)
  with pytest.raises(ValueError, match="initial_state must be 'zeros' or 'pooled', got 'mean'"):
    _model("concat", "mean").init(jax.random.key(0), images, tokens)


def test_greedy_equals_beam_of_one(model_and_variables):
  captioner_checks.assert_greedy_equals_beam_of_one(*model_and_variables, VOCABULARY)
