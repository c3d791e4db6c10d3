"""BERT layers against transformers' (`BlipTextLayer`, the BERT layer of BLIP's text model, which GIT's
layers equal in shape and arithmetic), on small random configs with every weight drawn at random:
teacher forcing under arbitrary masks, and one-token steps with a prefilled prefix in the KV cache."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from transformers.models.blip import modeling_blip_text

from cxrjax.models.decoders import bert

HIDDEN, HEADS, INTERMEDIATE, LAYERS, MEMORY_DIM, EPS = 24, 3, 40, 2, 20, 1e-6


def _torch_layers(cross_attention: bool, seed: int):
  config = transformers.BlipTextConfig(
    hidden_size=HIDDEN,
    num_attention_heads=HEADS,
    intermediate_size=INTERMEDIATE,
    num_hidden_layers=LAYERS,
    encoder_hidden_size=MEMORY_DIM,
    layer_norm_eps=EPS,
    is_decoder=cross_attention,
    hidden_act="gelu",
    hidden_dropout_prob=0.0,
    attention_probs_dropout_prob=0.0,
  )
  torch.manual_seed(seed)
  layers = torch.nn.ModuleList([modeling_blip_text.BlipTextLayer(config, i) for i in range(LAYERS)]).eval()
  with torch.no_grad():
    for name, tensor in layers.named_parameters():
      # LayerNorm gains near 1, everything else around 0, all random, so that no tensor can be dropped.
      tensor.copy_(torch.randn_like(tensor) * 0.3 + (1.0 if name.endswith("LayerNorm.weight") else 0.0))
  return layers


def _dense(linear) -> dict:
  return {"kernel": linear.weight.detach().numpy().T, "bias": linear.bias.detach().numpy()}


def _norm(layer_norm) -> dict:
  return {"scale": layer_norm.weight.detach().numpy(), "bias": layer_norm.bias.detach().numpy()}


def _attention(attention) -> dict:
  return {
    "query": _dense(attention.self.query),
    "key": _dense(attention.self.key),
    "value": _dense(attention.self.value),
    "output": _dense(attention.output.dense),
    "norm": _norm(attention.output.LayerNorm),
  }


def _params(layers) -> dict:
  params = {}
  for index, layer in enumerate(layers):
    params[f"layers_{index}"] = {
      "attention": _attention(layer.attention),
      "intermediate": _dense(layer.intermediate.dense),
      "output": _dense(layer.output.dense),
      "output_norm": _norm(layer.output.LayerNorm),
    }
    if hasattr(layer, "crossattention"):
      params[f"layers_{index}"]["crossattention"] = _attention(layer.crossattention)
  return {"params": jax.tree.map(jnp.asarray, params)}


def _torch_forward(layers, x: np.ndarray, mask: np.ndarray, memory: np.ndarray | None) -> np.ndarray:
  hidden = torch.from_numpy(x)
  additive = torch.from_numpy(np.where(mask, 0.0, torch.finfo(torch.float32).min).astype(np.float32))
  with torch.no_grad():
    for layer in layers:
      hidden = layer(
        hidden, encoder_hidden_states=None if memory is None else torch.from_numpy(memory), attention_mask=additive
      )
  return hidden.numpy()


def _prefix_mask(prefix: int, length: int, causal_prefix: bool) -> np.ndarray:
  """[1, 1, length, length]: prefix queries see the prefix (causally or all of it), later queries the
  whole prefix and earlier tokens (GIT's mask when the prefix is all-visible)."""
  mask = np.tril(np.ones((length, length), bool))
  if not causal_prefix:
    mask[:prefix, :prefix] = True
  return mask[None, None]


@pytest.mark.parametrize("cross_attention,causal_prefix", [(False, False), (True, True)])
def test_teacher_forcing_and_cached_steps_match_transformers(cross_attention, causal_prefix):
  batch, prefix, decoded, regions = 2, 4, 5, 7
  length = prefix + decoded
  layers = _torch_layers(cross_attention, seed=int(cross_attention))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(batch, length, HIDDEN)).astype(np.float32)
  memory = rng.normal(size=(batch, regions, MEMORY_DIM)).astype(np.float32) if cross_attention else None
  mask = _prefix_mask(prefix, length, causal_prefix)
  expected = _torch_forward(layers, x, mask, memory)
  stack = bert.BertStack(LAYERS, HIDDEN, HEADS, INTERMEDIATE, cross_attention=cross_attention, epsilon=EPS)
  variables = _params(layers)
  init = stack.init(jax.random.key(0), x, mask, memory)
  assert jax.tree.structure(init) == jax.tree.structure(variables)  # Every parameter mapped, none extra.
  assert jax.tree.map(jnp.shape, init) == jax.tree.map(jnp.shape, variables)

  teacher_forced = stack.apply(variables, x, mask, memory)
  np.testing.assert_allclose(np.asarray(teacher_forced), expected, rtol=0, atol=1e-4)
  # A mask matters: the same layers without it differ.
  assert np.abs(np.asarray(stack.apply(variables, x, None, memory)) - expected).max() > 1e-2

  # Prefill the prefix, then one decoded token per step into a cache longer than needed.
  cache, prefix_outputs = stack.apply(
    variables, batch, decoded + 3, memory, x[:, :prefix], mask[..., :prefix, :prefix], method="init_cache"
  )
  np.testing.assert_allclose(np.asarray(prefix_outputs), expected[:, :prefix], rtol=0, atol=1e-4)
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape[0] == batch  # decoding.py's [batch, ...] leaves.
  step = jax.jit(lambda v, token, c, p: stack.apply(v, token, c, p, method="step"))
  for position in range(decoded):
    y, cache = step(variables, x[:, prefix + position], cache, jnp.int32(position))
    np.testing.assert_allclose(np.asarray(y), expected[:, prefix + position], rtol=0, atol=1e-4)


def test_steps_without_a_prefix_match_causal_teacher_forcing():
  length = 6
  layers = _torch_layers(True, seed=2)
  rng = np.random.default_rng(1)
  x = rng.normal(size=(1, length, HIDDEN)).astype(np.float32)
  memory = rng.normal(size=(1, 3, MEMORY_DIM)).astype(np.float32)
  expected = _torch_forward(layers, x, bert.causal_mask(length), memory)
  stack = bert.BertStack(LAYERS, HIDDEN, HEADS, INTERMEDIATE, cross_attention=True, epsilon=EPS)
  variables = _params(layers)
  cache, none = stack.apply(variables, 1, length, memory, method="init_cache")
  assert none is None and "prefix_keys" not in cache["layers_0"]
  for position in range(length):
    y, cache = stack.apply(variables, x[:, position], cache, jnp.int32(position), method="step")
    np.testing.assert_allclose(np.asarray(y), expected[:, position], rtol=0, atol=1e-4)


def test_embeddings_match_transformers_and_attend_is_the_tied_decoder():
  config = transformers.BlipTextConfig(
    vocab_size=30, hidden_size=HIDDEN, max_position_embeddings=16, layer_norm_eps=EPS, hidden_dropout_prob=0.0
  )
  torch.manual_seed(3)
  reference = modeling_blip_text.BlipTextEmbeddings(config).eval()
  with torch.no_grad():
    for tensor in reference.parameters():
      tensor.copy_(torch.randn_like(tensor))
  tokens = np.array([[1, 5, 29, 0, 7]], np.int32)
  with torch.no_grad():
    expected = reference(torch.from_numpy(tokens).long()).numpy()
  embeddings = bert.BertEmbeddings(30, HIDDEN, 16, epsilon=EPS)
  variables = {
    "params": {
      "word_embeddings": {"embedding": jnp.asarray(reference.word_embeddings.weight.detach().numpy())},
      "position_embeddings": {"embedding": jnp.asarray(reference.position_embeddings.weight.detach().numpy())},
      "norm": {
        "scale": jnp.asarray(reference.LayerNorm.weight.detach().numpy()),
        "bias": jnp.asarray(reference.LayerNorm.bias.detach().numpy()),
      },
    }
  }
  assert jax.tree.map(jnp.shape, embeddings.init(jax.random.key(0), tokens, jnp.arange(5))) == jax.tree.map(
    jnp.shape, variables
  )
  got = embeddings.apply(variables, tokens, jnp.arange(5))
  np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=1e-5)
  hidden = np.random.default_rng(2).normal(size=(2, HIDDEN)).astype(np.float32)
  np.testing.assert_allclose(
    np.asarray(embeddings.apply(variables, hidden, method="attend")),
    hidden @ reference.word_embeddings.weight.detach().numpy().T,
    rtol=0,
    atol=1e-5,
  )
