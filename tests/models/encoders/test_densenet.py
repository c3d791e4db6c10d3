"""DenseNet-121 in Flax: shapes, dtypes, train/eval batch norm, on tiny configurations."""

import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.encoders import densenet

TINY = densenet.DenseNetConfig(block_sizes=(2, 3), growth_rate=8, stem_features=16, num_classes=5)


def _init(config, dtype=jnp.float32, size=64):
  model = densenet.DenseNet(config, dtype=dtype)
  variables = model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)), train=False)
  return model, variables


def test_densenet121_has_the_published_size_and_outputs():
  model = densenet.DenseNet(densenet.DENSENET121)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  num_params = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
  # torchvision's densenet121 has 7,978,856 parameters with its 1000-way head (1024 * 1000 + 1000).
  assert num_params == 7_978_856 - 1_025_000 + 1024 * 14 + 14
  outputs = jax.eval_shape(model.apply, variables, jnp.zeros((2, 224, 224, 3)))
  assert outputs["feature_map"].shape == (2, 7, 7, 1024)
  assert outputs["pooled"].shape == (2, 1024)
  assert outputs["logits"].shape == (2, 14)
  assert [outputs[f"block{i}"].shape[1:] for i in range(1, 5)] == [
    (56, 56, 256),
    (28, 28, 512),
    (14, 14, 1024),
    (7, 7, 1024),
  ]
  assert densenet.DENSENET121.num_features == 1024


def test_tiny_config_outputs_and_pooled_is_mean_of_feature_map():
  model, variables = _init(TINY)
  images = jax.random.normal(jax.random.key(1), (3, 64, 64, 3))
  outputs = model.apply(variables, images)
  assert outputs["feature_map"].shape == (3, 8, 8, TINY.num_features)
  np.testing.assert_allclose(outputs["pooled"], outputs["feature_map"].mean(axis=(1, 2)), rtol=1e-5)
  assert outputs["logits"].shape == (3, 5)
  assert float(outputs["feature_map"].min()) >= 0.0  # After the final ReLU.


def test_no_head_when_num_classes_is_zero():
  config = densenet.DenseNetConfig(block_sizes=(1, 1), growth_rate=4, stem_features=8, num_classes=0)
  model, variables = _init(config)
  assert "classifier" not in variables["params"]
  assert "logits" not in model.apply(variables, jnp.zeros((1, 64, 64, 3)))


def test_bfloat16_compute_keeps_float32_parameters_and_is_close():
  model32, variables = _init(TINY)
  model16 = densenet.DenseNet(TINY, dtype=jnp.bfloat16)
  images = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
  out32, out16 = model32.apply(variables, images), model16.apply(variables, images)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert out16["feature_map"].dtype == jnp.bfloat16
  assert out16["logits"].dtype == jnp.float32
  np.testing.assert_allclose(out16["pooled"], out32["pooled"], rtol=0.1, atol=0.05)


def test_train_mode_uses_batch_statistics_and_updates_running_averages():
  model, variables = _init(TINY)
  images = 3.0 + jax.random.normal(jax.random.key(3), (4, 64, 64, 3))
  train_out, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
  eval_out = model.apply(variables, images, train=False)
  assert not np.allclose(train_out["pooled"], eval_out["pooled"])
  before = variables["batch_stats"]["norm0"]["mean"]
  after = updates["batch_stats"]["norm0"]["mean"]
  assert not np.allclose(before, after)


def test_config_round_trips_through_dict():
  assert densenet.DenseNetConfig.from_dict(TINY.to_dict()) == TINY
