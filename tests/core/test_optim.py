"""The optimizer of config.optimizer: gradient accumulation (optax.MultiSteps) equals one step on the
k-times larger batch, through the trainer's own train step; a bfloat16 model trains with float32
parameters and a float32 loss."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from cxrjax import models
from cxrjax.core import optim
from cxrjax.jobs import train
from cxrjax.run import workdir as workdir_lib
from cxrjax.core.errors import ConfigError
from cxrjax.tasks import captioning
from cxrjax.text import tokenizers


def _optimizer_config(**overrides) -> ml_collections.ConfigDict:
  # Warm-up, a cosine decay, weight decay and an active clip: each would tell updates counted in
  # batches from updates counted in optimizer steps, or a clipped sum from a clipped mean.
  return ml_collections.ConfigDict(
    {
      **dict(
        name="adamw",
        learning_rate=3e-2,
        schedule="cosine",
        warmup_steps=2,
        final_lr_fraction=0.1,
        weight_decay=1e-2,
        grad_clip_norm=0.5,
        b1=0.9,
        b2=0.999,
      ),
      **overrides,
    }
  )


class _Regressor(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(1)(nn.tanh(nn.Dense(8)(x)))[:, 0]


@dataclasses.dataclass
class _RegressionTask:
  """Mean squared error over the batch, with the captioning task's loss signature."""

  def loss(self, model, variables, batch, rng):
    del rng
    error = model.apply({"params": variables["params"]}, batch["x"]) - batch["y"]
    return jnp.mean(error**2), ({}, {})


def _train(accumulate_steps: int, batches: list[dict[str, np.ndarray]], num_steps: int):
  model = _Regressor()
  params = model.init(jax.random.key(0), batches[0]["x"])["params"]
  config = _optimizer_config(accumulate_steps=accumulate_steps)
  tx = optim.make_optimizer(config, params, num_steps)
  components = workdir_lib.Components(task=_RegressionTask(), model=model, make_optimizer=None, frozen_modules={})
  step = jax.jit(train.make_train_step(components, tx, dropout_seed=0))
  state = workdir_lib.TrainState(step=jnp.array(0, jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params))
  history = []
  for batch in batches:
    state, _ = step(state, batch)
    history.append(jax.device_get(state.params))
  return history


def test_accumulated_gradients_equal_one_step_on_the_doubled_batch():
  rng = np.random.default_rng(0)
  updates, half = 4, 6
  x = rng.normal(size=(updates, 2 * half, 3)).astype(np.float32)
  y = (np.sin(x).sum(-1) + 0.1 * rng.normal(size=(updates, 2 * half))).astype(np.float32)
  doubled = [{"x": x[u], "y": y[u]} for u in range(updates)]
  halves = [{"x": x[u, s], "y": y[u, s]} for u in range(updates) for s in (slice(0, half), slice(half, None))]
  # train.num_steps counts batches: 4 doubled batches or 8 halves, 4 updates either way.
  big_steps = _train(1, doubled, num_steps=updates)
  accumulated = _train(2, halves, num_steps=2 * updates)
  for u in range(updates):
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6), accumulated[2 * u + 1], big_steps[u]
    )
    # The first batch of each pair only accumulates: the parameters do not move.
    before = accumulated[2 * u - 1] if u else None
    if before is not None:
      jax.tree.map(np.testing.assert_array_equal, accumulated[2 * u], before)
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(), big_steps[-1], big_steps[0]))
  assert max(moved) > 1e-3
  # Two half batches without accumulation are two updates: a different result.
  plain = _train(1, halves[:2], num_steps=2 * updates)
  assert not all(np.allclose(a, b, atol=1e-5) for a, b in zip(jax.tree.leaves(plain[1]), jax.tree.leaves(big_steps[0])))


@pytest.mark.parametrize("every_k", [2, 3])
def test_accumulate_gradients_equals_optax_multisteps(every_k):
  """optim.accumulate_gradients (the optimizer under lax.cond on the k-th batch only) gives optax.MultiSteps'
  updates and states at every call, through clipping, AdamW on a cosine schedule and a frozen group."""
  params = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 4))},
    "dense": {"kernel": jnp.ones((4, 5)), "bias": jnp.zeros(5)},
    "frozen": {"kernel": jnp.ones((2, 2))},
  }
  config = _optimizer_config(warmup_steps=0, param_groups=(("frozen/.*", None), ("dense/.*", 0.5), (".*", 1.0)))
  config.accumulate_steps = 1
  inner = optim.make_optimizer(config, params, 40)
  ours, reference = optim.accumulate_gradients(inner, every_k), optax.MultiSteps(inner, every_k)
  ours_state, reference_state = ours.init(params), reference.init(params)
  update, reference_update = jax.jit(ours.update), jax.jit(reference.update)
  rng = np.random.default_rng(0)
  for call in range(3 * every_k + 1):
    grads = jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape) * 3, jnp.float32), params)
    updates, ours_state = update(grads, ours_state, params)
    expected, reference_state = reference_update(grads, reference_state, params)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      (updates, ours_state),
      (expected, reference_state),
    )
    assert any(np.any(leaf != 0) for leaf in jax.tree.leaves(updates)) == (call % every_k == every_k - 1)
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("every_k", [1, 3])
def test_apply_gradients_equals_optax_multisteps_then_apply_updates(every_k):
  """optim.apply_gradients (the train step's: parameters left as they are between updates, inside the
  accumulation's lax.cond) gives the parameters and states of optax.MultiSteps' updates added by
  optax.apply_updates, at every batch; every_k 1 is a plain optimizer."""
  params = {"dense": {"kernel": jnp.ones((4, 5)), "bias": jnp.zeros(5)}, "frozen": {"kernel": jnp.ones((2, 2))}}
  config = _optimizer_config(warmup_steps=0, param_groups=(("frozen/.*", None), (".*", 1.0)))
  config.accumulate_steps = every_k
  ours = optim.make_optimizer(config, params, 40)
  config.accumulate_steps = 1
  inner = optim.make_optimizer(config, params, 40 // every_k)
  reference = optax.MultiSteps(inner, every_k) if every_k > 1 else inner
  apply = jax.jit(lambda grads, state, params: optim.apply_gradients(ours, grads, state, params))
  reference_update = jax.jit(reference.update)
  ours_params, ours_state, reference_params, reference_state = params, ours.init(params), params, reference.init(params)
  rng = np.random.default_rng(1)
  for _ in range(3 * every_k + 1):
    grads = jax.tree.map(lambda leaf: jnp.asarray(rng.normal(size=leaf.shape) * 3, jnp.float32), params)
    ours_params, ours_state = apply(grads, ours_state, ours_params)
    updates, reference_state = reference_update(grads, reference_state, reference_params)
    reference_params = optax.apply_updates(reference_params, updates)
    jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
      (ours_params, ours_state),
      (reference_params, reference_state),
    )
  assert not np.allclose(ours_params["dense"]["kernel"], params["dense"]["kernel"])


def test_bad_accumulate_steps_is_a_config_error():
  params = {"w": jnp.zeros((2, 2))}
  for bad in (0, 1.5, "2"):
    with pytest.raises(ConfigError, match="accumulate_steps"):
      optim.make_optimizer(_optimizer_config(accumulate_steps=bad), params, 10)


def test_bfloat16_model_trains_with_float32_parameters_and_loss():
  vocab = tokenizers.WordVocabulary.build(["the heart is normal no effusion left right lung clear"], min_count=1)
  images = jax.random.normal(jax.random.key(1), (2, 1, 32, 32, 3))
  tokens = np.array([[vocab.start_id, 5, 6, 7, vocab.end_id, 0], [vocab.start_id, 8, 9, vocab.end_id, 0, 0]], np.int32)
  batch = {"images": images, "tokens": tokens}
  task = captioning.CaptioningTask(ml_collections.ConfigDict({"train": {"label_smoothing": 0.1}}), vocab)
  results = {}
  params = None
  for dtype in ("float32", "bfloat16"):
    section = models.get("git").smoke_config()
    section.dtype = dtype
    section.dropout_rate = section.attention_dropout_rate = 0.0
    model = models.build(section, len(vocab))
    if params is None:  # One set of float32 parameters for both models.
      params = model.init(jax.random.key(0), images, tokens[:, :-1])["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    tx = optim.make_optimizer(_optimizer_config(warmup_steps=0, learning_rate=1e-3), params, 10)
    components = workdir_lib.Components(task=task, model=model, make_optimizer=None, frozen_modules={})
    step = jax.jit(train.make_train_step(components, tx, dropout_seed=0))
    state = workdir_lib.TrainState(
      step=jnp.array(0, jnp.int32), params=params, batch_stats={}, opt_state=tx.init(params)
    )
    state, metrics = step(state, batch)
    assert metrics["loss"].dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
    results[dtype] = (float(metrics["loss"]), jax.device_get(state.params))
  (loss32, params32), (loss16, params16) = results["float32"], results["bfloat16"]
  assert np.isfinite(loss16) and loss16 == pytest.approx(loss32, rel=2e-2)
  assert loss16 != loss32  # bfloat16 really computed
  # The first AdamW update is about lr * sign(gradient): both models move the parameters alike.
  deltas32 = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(params32), jax.tree.leaves(params))])
  deltas16 = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(params16), jax.tree.leaves(params))])
  assert np.corrcoef(deltas32, deltas16)[0, 1] > 0.9


@pytest.mark.parametrize("warmup_steps", [0, 3])
def test_linear_schedule_equals_transformers_get_linear_schedule_with_warmup(warmup_steps):
  """schedule="linear" with final_lr_fraction 0 (roco_git/roco_blip, as seed 002's Trainer) gives the
  learning rate of transformers' scheduler at every step, warm-up included."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  num_steps, peak = 20, 5e-5
  optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=peak)
  scheduler = transformers.get_linear_schedule_with_warmup(optimizer, warmup_steps, num_steps)
  expected = []
  for _ in range(num_steps + 1):
    expected.append(optimizer.param_groups[0]["lr"])
    optimizer.step()
    scheduler.step()
  schedule = optim.make_schedule(
    _optimizer_config(learning_rate=peak, schedule="linear", warmup_steps=warmup_steps, final_lr_fraction=0.0),
    num_steps,
  )
  np.testing.assert_allclose([float(schedule(step)) for step in range(num_steps + 1)], expected, rtol=1e-6, atol=1e-12)


def test_roco_configs_decay_linearly_as_seed_002s_trainer():
  from configs import roco_blip, roco_git  # pylint: disable=g-import-not-at-top

  for module in (roco_git, roco_blip):
    assert module.get_config().optimizer.schedule == "linear"
