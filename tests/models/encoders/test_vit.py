"""The Vision Transformer against transformers' GIT (CLIP) and BLIP vision towers on small random configs.

Every weight of the reference, LayerNorm gains and biases included, is drawn at random, so a layer that is
wired wrongly (pre- vs post-norm, the activation, q/k/v order, the class token's place) shows.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cxrjax.models.encoders import vit

SIZE, PATCH, WIDTH, LAYERS, HEADS, MLP = 32, 8, 24, 2, 3, 40


def randomize(model: torch.nn.Module, seed: int) -> None:
  """Every parameter ~ N(0, 0.3^2), LayerNorm gains ~ 1 + N(0, 0.3^2)."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      noise = 0.3 * torch.randn(tensor.shape, generator=generator)
      gain = ("norm" in name or "layrnorm" in name) and name.endswith("weight")
      tensor.copy_(1.0 + noise if gain else noise)


def to_flax_params(state: dict[str, np.ndarray], config: vit.ViTConfig, prefix: str, fused_qkv: bool) -> dict:
  """A transformers vision tower's tensors (CLIP names, or BLIP's qkv / projection) -> VisionTransformer params."""

  def dense(name):
    return {"kernel": state[f"{name}.weight"].T, "bias": state[f"{name}.bias"]}

  def norm(name):
    return {"scale": state[f"{name}.weight"], "bias": state[f"{name}.bias"]}

  embeddings = {
    "class_embedding": state[f"{prefix}embeddings.class_embedding"].reshape(-1),
    "patch_embedding": {"kernel": state[f"{prefix}embeddings.patch_embedding.weight"].transpose(2, 3, 1, 0)},
  }
  position = f"{prefix}embeddings.position_embedding"
  embeddings["position_embedding"] = (
    state[position].reshape(-1, config.hidden_size) if position in state else state[f"{position}.weight"]
  )
  if config.patch_bias:
    embeddings["patch_embedding"]["bias"] = state[f"{prefix}embeddings.patch_embedding.bias"]
  params = {"embeddings": embeddings, "post_layernorm": norm(f"{prefix}post_layernorm")}
  if config.pre_norm:
    params["pre_layrnorm"] = norm(f"{prefix}pre_layrnorm")
  for index in range(config.num_layers):
    layer = f"{prefix}encoder.layers.{index}"
    if fused_qkv:
      d = config.hidden_size
      weight, bias = state[f"{layer}.self_attn.qkv.weight"], state[f"{layer}.self_attn.qkv.bias"]
      attention = {
        name: {"kernel": weight[i * d : (i + 1) * d].T, "bias": bias[i * d : (i + 1) * d]}
        for i, name in enumerate(("q_proj", "k_proj", "v_proj"))
      }
      attention["out_proj"] = dense(f"{layer}.self_attn.projection")
    else:
      attention = {name: dense(f"{layer}.self_attn.{name}") for name in ("q_proj", "k_proj", "v_proj", "out_proj")}
    params[f"layers_{index}"] = {
      "layer_norm1": norm(f"{layer}.layer_norm1"),
      "layer_norm2": norm(f"{layer}.layer_norm2"),
      "self_attn": attention,
      "mlp": {"fc1": dense(f"{layer}.mlp.fc1"), "fc2": dense(f"{layer}.mlp.fc2")},
    }
  return params


def _compare(reference, config: vit.ViTConfig, prefix: str, fused_qkv: bool, seed: int):
  randomize(reference, seed)
  reference.eval()
  state = {name: tensor.numpy() for name, tensor in reference.state_dict().items()}
  images = np.random.default_rng(seed).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
  with torch.no_grad():
    expected = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).last_hidden_state.numpy()
  params = to_flax_params(state, config, prefix, fused_qkv)
  model = vit.VisionTransformer(config)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3))))["params"]
  assert jax.tree.structure(abstract) == jax.tree.structure(params)  # Every Flax parameter came from a tensor.
  assert sum(np.size(a) for a in jax.tree.leaves(params)) == sum(a.size for a in state.values())
  tokens = jax.jit(model.apply)({"params": params}, images)
  assert tokens.shape == (2, config.num_tokens, WIDTH) == expected.shape
  assert np.abs(expected).std() > 0.3  # A signal, not all zeros.
  np.testing.assert_allclose(np.asarray(tokens), expected, rtol=0, atol=2e-5)


def test_matches_the_git_vision_tower():
  reference = transformers.GitVisionModel(
    transformers.GitVisionConfig(
      hidden_size=WIDTH,
      intermediate_size=MLP,
      num_hidden_layers=LAYERS,
      num_attention_heads=HEADS,
      image_size=SIZE,
      patch_size=PATCH,
      layer_norm_eps=1e-5,
      hidden_act="quick_gelu",
    )
  )
  config = vit.ViTConfig(
    image_size=SIZE,
    patch_size=PATCH,
    hidden_size=WIDTH,
    num_layers=LAYERS,
    num_heads=HEADS,
    mlp_dim=MLP,
    layer_norm_eps=1e-5,
    activation="quick_gelu",
    patch_bias=False,
    pre_norm=True,
  )
  _compare(reference, config, "vision_model.", fused_qkv=False, seed=0)


def test_matches_the_blip_vision_tower():
  reference = transformers.BlipVisionModel(
    transformers.BlipVisionConfig(
      hidden_size=WIDTH,
      intermediate_size=MLP,
      num_hidden_layers=LAYERS,
      num_attention_heads=HEADS,
      image_size=SIZE,
      patch_size=PATCH,
      layer_norm_eps=1e-6,
      hidden_act="gelu",
    )
  )
  config = vit.ViTConfig(
    image_size=SIZE,
    patch_size=PATCH,
    hidden_size=WIDTH,
    num_layers=LAYERS,
    num_heads=HEADS,
    mlp_dim=MLP,
    layer_norm_eps=1e-6,
    activation="gelu",
    patch_bias=True,
    pre_norm=False,
  )
  _compare(reference, config, "", fused_qkv=True, seed=1)


def test_published_sizes_and_config_round_trip():
  model = vit.VisionTransformer(vit.CLIP_B16)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
  with torch.device("meta"):  # Shapes only: git-base's image_encoder (transformers' defaults).
    reference = transformers.GitVisionModel(transformers.GitVisionConfig())
  assert sum(leaf.size for leaf in jax.tree.leaves(variables)) == sum(p.numel() for p in reference.parameters())
  assert jax.eval_shape(model.apply, variables, jnp.zeros((2, 224, 224, 3))).shape == (2, 197, 768)
  assert vit.BLIP_B16_384.num_tokens == 577
  section = dict(vit.BLIP_B16_384.to_dict(), preprocessing={"normalization": "clip"})
  assert vit.config_from_section(section) == vit.BLIP_B16_384
  with pytest.raises(ValueError, match="unknown fields"):
    vit.ViTConfig.from_dict({"hidden": 3})
  with pytest.raises(ValueError, match="activation"):
    vit.ViTConfig(activation="relu")


def test_other_image_sizes_are_refused_and_bfloat16_keeps_float32_parameters():
  config = vit.ViTConfig(**vit.tiny_config())
  model = vit.VisionTransformer(config, dtype=jnp.bfloat16)
  variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  images = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  out16 = model.apply(variables, images)
  out32 = vit.VisionTransformer(config).apply(variables, images)
  assert out16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16, np.float32), out32, atol=0.1)
  with pytest.raises(ValueError, match="reads 32x32"):
    model.apply(variables, jnp.zeros((1, 48, 48, 3)))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_attention_per_example_equals_the_batched_products(dtype):
  # CPUs run large attentions one example at a time (vit.CPU_PER_EXAMPLE_SCORES_BYTES); the numbers are the
  # batched products', and the choice is made for the scores' size.
  rng = np.random.default_rng(0)
  queries, keys, values = (jnp.asarray(rng.normal(size=(3, 2, 40, 8)), dtype) for _ in range(3))
  batched = vit._attend(queries, keys, values, dtype)
  np.testing.assert_allclose(
    np.asarray(vit._attend_per_example(queries, keys, values, dtype), np.float32),
    np.asarray(batched, np.float32),
    rtol=1e-6,
    atol=1e-6,
  )
  large = jax.make_jaxpr(lambda *x: vit.attention(*x, dtype))(*(jnp.zeros((1, 12, 577, 64), dtype),) * 3)
  small = jax.make_jaxpr(lambda *x: vit.attention(*x, dtype))(*(jnp.zeros((1, 12, 197, 64), dtype),) * 3)
  assert "platform_index" in str(large) and "platform_index" not in str(small)
