"""Seed 003's graph captioner: its parts against PyTorch (torch.roll graph propagation, nn.TransformerDecoder,
ResNet-50's layout), and KV-cached decoding against teacher forcing. The whole model against the seed's
PyTorch class, through the importer, is tests/weights/test_seed003.py."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from cxrjax.core import decoding
from cxrjax.models import graph_captioner
from cxrjax.models.decoders import transformer
from cxrjax.models.encoders import resnet
from tests.models import captioner_checks
from tests.weights.torch_seed003 import GraphPropagationLayer

Family = graph_captioner.GraphCaptioner


def _smoke_model(vocab_size=20, is_frozen=lambda module_path: False, **overrides):
  config = Family.smoke_config()
  config.update(overrides)
  return Family.from_config(config, vocab_size, is_frozen)


def _init(model, images, tokens):
  return jax.jit(model.init)(jax.random.key(0), images, tokens)


def test_graph_propagation_equals_the_seeds_torch_roll_loop():
  torch.manual_seed(0)
  reference = GraphPropagationLayer(8, window_size=3, max_steps=3)
  x = torch.randn(2, 49, 8) * 0.7
  with torch.no_grad():
    expected = reference(x).numpy()
  params = {
    "params": {
      "msg_linear": {
        "kernel": reference.msg_linear.weight.detach().numpy().T,
        "bias": reference.msg_linear.bias.detach().numpy(),
      }
    }
  }
  result = graph_captioner.GraphPropagation(window=3, steps=3).apply(params, x.numpy())
  assert 0 < np.mean(np.abs(expected) == 1.0) < 0.5  # Some, not most, tokens clipped by hardtanh.
  np.testing.assert_allclose(result, expected, rtol=0, atol=1e-6)


def _decoder_params(reference: torch.nn.TransformerDecoder) -> dict:
  """nn.TransformerDecoder's tensors -> TransformerDecoder params (Linear weights transposed)."""
  state = {name: tensor.detach().numpy() for name, tensor in reference.state_dict().items()}
  params = {}
  for index in range(len(reference.layers)):
    prefix = f"layers.{index}."
    layer = {}
    for attention in ("self_attn", "multihead_attn"):
      layer[attention] = {
        "in_proj_kernel": state[prefix + attention + ".in_proj_weight"].T,
        "in_proj_bias": state[prefix + attention + ".in_proj_bias"],
        "out_proj": {
          "kernel": state[prefix + attention + ".out_proj.weight"].T,
          "bias": state[prefix + attention + ".out_proj.bias"],
        },
      }
    for linear in ("linear1", "linear2"):
      layer[linear] = {"kernel": state[prefix + linear + ".weight"].T, "bias": state[prefix + linear + ".bias"]}
    for norm in ("norm1", "norm2", "norm3"):
      layer[norm] = {"scale": state[prefix + norm + ".weight"], "bias": state[prefix + norm + ".bias"]}
    params[f"layers_{index}"] = layer
  return {"params": params}


def test_the_decoder_equals_torch_transformer_decoder_forced_and_step_by_step():
  torch.manual_seed(0)
  layer = torch.nn.TransformerDecoderLayer(d_model=16, nhead=4, dim_feedforward=24, batch_first=True)
  reference = torch.nn.TransformerDecoder(layer, num_layers=2).eval()
  with torch.no_grad():
    for parameter in reference.parameters():  # Non-trivial biases and norms, not PyTorch's zeros and ones.
      parameter.add_(torch.randn_like(parameter) * 0.2)
  x, memory = torch.randn(3, 7, 16), torch.randn(3, 5, 16)
  mask = torch.triu(torch.ones(7, 7) * float("-inf"), diagonal=1)
  with torch.no_grad():
    expected = reference(tgt=x, memory=memory, tgt_mask=mask).numpy()
  decoder = transformer.TransformerDecoder(num_layers=2, d_model=16, num_heads=4, ff_dim=24, dropout_rate=0.1)
  params = _decoder_params(reference)
  forced = decoder.apply(params, x.numpy(), decoder.apply(params, memory.numpy(), method="cross_cache"))
  np.testing.assert_allclose(forced, expected, rtol=0, atol=1e-5)

  cache = decoder.apply(params, memory.numpy(), 10, method="init_cache")
  assert cache["layers_1"]["self_keys"].shape == (3, 4, 10, 4)  # [batch, heads, cache_length, head_dim]
  assert decoding.shared_value(cache["layers_1"]["cross_keys"]).shape == (3, 4, 5, 4)
  step = jax.jit(lambda x, cache, position: decoder.apply(params, x, cache, position, method="step"))
  for position in range(7):
    y, cache = step(x.numpy()[:, position], cache, jnp.int32(position))
    np.testing.assert_allclose(y, expected[:, position], rtol=0, atol=1e-5)


def test_resnet50_has_the_layout_and_size_of_transformers_resnet_model():
  reference = transformers.ResNetModel(transformers.ResNetConfig())
  expected = sum(t.numel() for name, t in reference.state_dict().items() if not name.endswith("num_batches_tracked"))
  variables = jax.eval_shape(lambda: resnet.ResNet().init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == expected
  features = jax.eval_shape(lambda v: resnet.ResNet().apply(v, jnp.zeros((2, 224, 224, 3))), variables)
  assert features.shape == (2, 7, 7, 2048)
  stages = {key.split("_")[0] for key in variables["params"] if key.startswith("stage")}
  assert [sum(key.startswith(f"{stage}_") for key in variables["params"]) for stage in sorted(stages)] == [3, 4, 6, 3]


def test_kv_cached_steps_equal_teacher_forcing_and_use_only_the_first_view():
  model = _smoke_model()
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2, 2, 32, 32, 3)).astype(np.float32)
  tokens = rng.integers(0, 20, size=(2, 12)).astype(np.int32)
  variables = _init(model, images, tokens)
  forced = model.apply(variables, images, tokens)["logits"]
  assert forced.shape == (2, 12, 20)
  other_lateral = images.copy()
  other_lateral[:, 1] = 0.0
  np.testing.assert_array_equal(model.apply(variables, other_lateral, tokens)["logits"], forced)

  cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
  step = jax.jit(model.decoder_step_fn(variables))
  stepped = []
  for position in range(tokens.shape[1]):
    logits, cache = step(jnp.asarray(tokens[:, position]), cache, jnp.int32(position))
    stepped.append(logits)
  np.testing.assert_allclose(np.stack(stepped, axis=1), forced, rtol=0, atol=1e-5)


def test_greedy_search_equals_a_beam_of_one():
  tokenizer = captioner_checks.word_vocabulary(tuple(f"word{i}" for i in range(16)))
  model = _smoke_model(len(tokenizer))
  images = np.random.default_rng(1).normal(size=(3, 1, 32, 32, 3)).astype(np.float32)
  variables = _init(model, images, np.zeros((3, 4), np.int32))
  captioner_checks.assert_greedy_equals_beam_of_one(model, variables, images, tokenizer)


def test_a_frozen_encoder_keeps_its_statistics_and_passes_no_gradient():
  images = np.random.default_rng(0).normal(size=(2, 1, 32, 32, 3)).astype(np.float32)
  tokens = np.ones((2, 5), np.int32)

  def encoder_update(model):
    variables = _init(model, images, tokens)

    def loss(params):
      outputs, updates = model.apply(
        {"params": params, "batch_stats": variables["batch_stats"]},
        images,
        tokens,
        train=True,
        mutable=["batch_stats"],
        rngs={"dropout": jax.random.key(1)},
      )
      return jnp.mean(outputs["logits"] ** 2), updates

    # Jitted: the ResNet's gradient run op by op takes most of a minute on CPU.
    grads, updates = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), updates["batch_stats"], variables["batch_stats"])
    return jax.tree.leaves(grads["image_encoder"]), jax.tree.leaves(moved), grads

  frozen_grads, frozen_moved, grads = encoder_update(_smoke_model(is_frozen=lambda path: path == "image_encoder"))
  assert all(np.all(g == 0) for g in frozen_grads) and not any(frozen_moved)
  assert np.any(grads["vis_proj"]["kernel"] != 0)
  trained_grads, trained_moved, _ = encoder_update(_smoke_model())
  assert all(np.any(g != 0) for g in trained_grads) and all(trained_moved)


def test_bad_settings_are_refused():
  images, tokens = np.zeros((1, 1, 32, 32, 3), np.float32), np.zeros((1, 3), np.int32)
  with pytest.raises(ValueError, match="cache_length 40 exceeds max_positions 32"):
    _init(_smoke_model(cache_length=40), images, tokens)
  with pytest.raises(ValueError, match="d_model 16 is not divisible by num_heads 3"):
    _init(_smoke_model(num_heads=3), images, tokens)
  model = _smoke_model()
  variables = _init(model, images, tokens)
  cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
  with pytest.raises(ValueError, match="needs the token's position"):
    model.apply(variables, jnp.zeros((1,), jnp.int32), cache, method="decode_step")
  with pytest.raises(ValueError, match="unknown ResNetConfig fields"):
    Family.from_config(
      ml_collections.ConfigDict(dict(Family.smoke_config().to_dict(), encoder=dict(width=3))), 20, lambda path: False
    )
