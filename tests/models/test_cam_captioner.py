"""Seed 000's chained-context-aggregation captioner: the flows against a NumPy oracle, odd map sizes,
trained batch norms, the captioner interface, decoding and a smoke training run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import demo, iu_xray_cam
from cxrjax.jobs import evaluate, inference, train
from cxrjax import models
from cxrjax.core import optim
from cxrjax.run import workdir
from cxrjax.models import cam_captioner
from cxrjax.models.encoders import densenet
from cxrjax.models.encoders.context_aggregation import ContextAggregation
from tests.models import captioner_checks

TINY = densenet.config_from_section(densenet.tiny_config())
VOCABULARY = captioner_checks.word_vocabulary(tuple(f"word{i}" for i in range(7)))


def _conv(x, kernel, bias):
  """'SAME' cross-correlation, as flax's Conv: x [h, w, in], kernel [k, k, in, out] -> [h, w, out]."""
  k = kernel.shape[0]
  padded = np.pad(x, ((k // 2, k // 2), (k // 2, k // 2), (0, 0)))
  out = np.zeros(x.shape[:2] + kernel.shape[-1:])
  for i in range(x.shape[0]):
    for j in range(x.shape[1]):
      out[i, j] = np.einsum("abc,abco->o", padded[i : i + k, j : j + k], kernel)
  return out + bias


def _oracle(feature_map, params, stats, factor, eps=1e-5):
  """CAM of one map [h, w, c], written out loop by loop (eval mode: running statistics)."""
  height, width, _ = feature_map.shape
  relu, sigmoid = lambda x: np.maximum(x, 0), lambda x: 1 / (1 + np.exp(-x))
  g, norm = params["global_flow"], stats["global_flow"]["norm"]
  pooled = feature_map.mean(axis=(0, 1))
  pooled = (pooled - norm["mean"]) / np.sqrt(norm["var"] + eps) * g["norm"]["scale"] + g["norm"]["bias"]
  global_context = relu(pooled) @ g["conv"]["kernel"][0, 0] + g["conv"]["bias"]  # [c]
  global_map = np.broadcast_to(global_context, feature_map.shape)
  inputs = np.concatenate([feature_map, global_map], axis=-1)
  rows, cols = -(-height // factor), -(-width // factor)  # ceil
  pooled_map = np.stack(
    [
      np.stack(
        [
          inputs[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor].mean(axis=(0, 1))  # real cells only
          for j in range(cols)
        ]
      )
      for i in range(rows)
    ]
  )
  c = params["context_flow"]
  fused = relu(_conv(pooled_map, c["fuse1"]["kernel"], c["fuse1"]["bias"]))
  fused = relu(_conv(fused, c["fuse2"]["kernel"], c["fuse2"]["bias"]))
  gate = relu(fused @ c["refine1"]["kernel"][0, 0] + c["refine1"]["bias"])
  gate = sigmoid(gate @ c["refine2"]["kernel"][0, 0] + c["refine2"]["bias"])
  refined = fused * gate + fused
  kernel = c["upsample"]["kernel"]  # [factor, factor, features, c]
  up = np.zeros((rows * factor, cols * factor, kernel.shape[-1]))
  for i in range(rows):
    for j in range(cols):
      for a in range(factor):
        for b in range(factor):
          # flax's ConvTranspose (transpose_kernel=False) applies the kernel spatially flipped.
          up[i * factor + a, j * factor + b] = refined[i, j] @ kernel[factor - 1 - a, factor - 1 - b]
  local_context = (up + c["upsample"]["bias"])[:height, :width]
  return global_map + local_context


@pytest.mark.parametrize("size, factor", [(7, 2), (4, 2), (7, 3)])
def test_context_aggregation_matches_a_loop_by_loop_oracle(size, factor):
  module = ContextAggregation(features=5, pool_factor=factor)
  feature_map = jax.random.uniform(jax.random.key(0), (2, size, size, 3))
  variables = module.init(jax.random.key(1), feature_map)
  # Non-trivial batch-norm parameters and running statistics, so that every term is exercised.
  keys = iter(jax.random.split(jax.random.key(2), len(jax.tree.leaves(variables["params"]))))
  params = jax.tree.map(lambda x: x + 0.3 * jax.random.normal(next(keys), x.shape), variables["params"])
  stats = {"global_flow": {"norm": {"mean": jnp.array([0.2, 0.5, 0.4]), "var": jnp.array([0.5, 2.0, 1.0])}}}
  output = module.apply({"params": params, "batch_stats": stats}, feature_map)
  assert output.shape == feature_map.shape
  to_numpy = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  for index in range(2):
    expected = _oracle(np.asarray(feature_map[index], np.float64), to_numpy(params), to_numpy(stats), factor)
    np.testing.assert_allclose(output[index], expected, rtol=1e-4, atol=1e-5)


def test_batch_norms_train_in_train_mode_and_eval_is_per_study():
  model = cam_captioner.CAMCaptioner(
    vocab_size=len(VOCABULARY),
    encoder=TINY,
    freeze_encoder=True,
    region_dim=16,
    embed_dim=8,
    hidden_dim=16,
    attention_dim=16,
    context_dim=8,
  )
  images = jax.random.normal(jax.random.key(0), (4, 2, 32, 32, 3))
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6]] * 4, 4))
  variables = jax.jit(model.init)(jax.random.key(1), images, tokens)
  train_mode = lambda v, x, t: model.apply(
    v, x, t, train=True, rngs={"dropout": jax.random.key(2)}, mutable=["batch_stats"]
  )
  _, updates = jax.jit(train_mode)(variables, images, tokens)
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed["context"])) and all(jax.tree.leaves(changed["region_norm"]))
  assert not any(jax.tree.leaves(changed["image_encoder"]))  # Frozen CheXNet keeps its statistics.
  # In eval mode the running statistics are used: a study's report does not depend on its batch.
  logits = jax.jit(lambda v, x, t: model.apply(v, x, t)["logits"])
  together = logits(variables, images, tokens)
  alone = logits(variables, images[1:2], tokens[1:2])
  np.testing.assert_allclose(together[1:2], alone, atol=1e-5)


@pytest.fixture(scope="module")
def model_and_variables():
  model = cam_captioner.CAMCaptioner(
    vocab_size=len(VOCABULARY),
    encoder=TINY,
    freeze_encoder=False,
    region_dim=16,
    embed_dim=8,
    hidden_dim=16,
    attention_dim=16,
    context_dim=8,
    initial_state="pooled",
  )
  images = jax.random.normal(jax.random.key(0), (3, 2, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images, jnp.zeros((3, 5), jnp.int32))
  params = jax.tree.map(lambda x: x, variables["params"])
  params["decoder"]["output"]["kernel"] = params["decoder"]["output"]["kernel"] * 8.0  # Varied words.
  return model, {"params": params, "batch_stats": variables["batch_stats"]}, images


def test_teacher_forcing_equals_stepping_decode_step(model_and_variables):
  model, variables, images = model_and_variables
  tokens = jnp.asarray(captioner_checks.framed(VOCABULARY, [[5, 6, 7], [8], [4] * 5], 6))
  outputs = jax.jit(model.apply)(variables, images, tokens)
  memory = jax.jit(lambda v, x: model.apply(v, x, method="encode"))(variables, images)
  # 32 px through the two-block encoder (stride 8): 4x4 maps per view, so 32 regions of region_dim.
  assert memory["regions"].shape == (3, 32, 16)
  assert outputs["attention"].shape == (3, 6, 32)
  cache = jax.jit(lambda v, m: model.apply(v, m, method="init_cache"))(variables, memory)
  step = jax.jit(lambda v, t, c, p: model.apply(v, t, c, p, method="decode_step"))
  stepped, weights = [], []
  for position in range(tokens.shape[1]):
    logits, cache, attention = step(variables, tokens[:, position], cache, jnp.int32(position))
    stepped.append(logits)
    weights.append(attention)
  np.testing.assert_allclose(np.stack(stepped, axis=1), outputs["logits"], atol=1e-5)
  np.testing.assert_allclose(np.stack(weights, axis=1), outputs["attention"], atol=1e-6)


def test_greedy_equals_beam_of_one(model_and_variables):
  captioner_checks.assert_greedy_equals_beam_of_one(*model_and_variables, VOCABULARY)


def test_iu_xray_config_gives_98_regions_of_512_at_224():
  config = iu_xray_cam.get_config()
  model = models.build(config.model, 100, optim.frozen_predicate(config.optimizer))
  assert isinstance(model, cam_captioner.CAMCaptioner) and model.pool_factor == 2
  assert model.freeze_encoder and model.initial_state == "zeros"  # Frozen CheXNet, as the seed.
  images = jax.ShapeDtypeStruct((1, 2, 224, 224, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, 5), jnp.int32)
  variables = jax.eval_shape(model.init, jax.random.key(0), images, tokens)  # Traced, not compiled.
  memory = jax.eval_shape(lambda v, i: model.apply(v, i, method="encode"), variables, images)
  assert memory["regions"].shape == (1, 98, 512)
  upsample = variables["params"]["context"]["context_flow"]["upsample"]["kernel"]
  assert upsample.shape == (2, 2, 512, 1024)  # Back to CheXNet's 1024 filters.


def test_smoke_training_and_evaluation(tmp_path):
  config = demo.get_config("smoke,model=cam")
  assert config.model.name == "cam_captioner"
  train.train_and_evaluate(config, tmp_path)
  output = evaluate.evaluate(str(tmp_path), "test", meteor=False)
  assert output["scores"]["num_studies"] == config.data.num_test
  assert 0.0 <= output["scores"]["BLEU-4"] <= 1.0 and output["baselines"]["most_common_report"]["report"]
  state = workdir.load_run(tmp_path, workdir.LATEST).state
  assert int(state.step) == config.train.num_steps
  # The context flow's batch norm kept its updates: its running mean left the initial zeros.
  assert np.abs(state.batch_stats["context"]["global_flow"]["norm"]["mean"]).max() > 0
  # predict draws the CAM model's attention over both views' regions.
  predictor = inference.Predictor.from_workdir(str(tmp_path))
  paths = captioner_checks.write_phantom_study(tmp_path / "study")
  images, _ = predictor.load_views(paths)
  words = "the heart is normal"
  tokens = np.array(predictor.tokenizer.encode(words)[1:-1], np.int32)
  assert predictor.tokenizer.decode(tokens) == words
  maps = predictor.attention(images, tokens)
  assert maps.shape[:2] == (4, 2)
  np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)
