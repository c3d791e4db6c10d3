"""A Vision Transformer: the image tower of GIT (CLIP ViT) and of BLIP, as transformers builds them.

    images [batch, H, W, 3] (H = W = image_size)
      -> patch convolution P x P, stride P (`embeddings/patch_embedding`; a bias in BLIP, none in CLIP)
         -> patches in row-major order                                     [batch, (H/P) * (W/P), hidden]
      -> the class token first, then + the learned position embedding      [batch, 1 + (H/P) * (W/P), hidden]
      -> `pre_layrnorm` (CLIP only: `pre_norm`)
      -> `num_layers` pre-norm layers:
           x = x + out_proj(attention(q_proj, k_proj, v_proj of layer_norm1(x)))
           x = x + mlp/fc2(activation(mlp/fc1(layer_norm2(x))))
      -> `post_layernorm` over every token                                 [batch, 1 + (H/P) * (W/P), hidden]

Activation: CLIP's quick GELU x * sigmoid(1.702 x), or BLIP's exact (erf) GELU. Queries, keys and values
are separate Dense layers (the BLIP importer splits BLIP's fused `qkv`). Neither tower uses dropout
(both Hugging Face configs set attention_dropout 0 and have no hidden dropout), so there is none here.
Module names follow transformers' CLIP layout so that importers map them one to one. Kernels and
embeddings carry logical axis names for sharding (models/partitioning.py).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.core import decoding
from cxrjax.models import partitioning

# MLP_UNITS: `MLP` names this module's feed-forward block.
from cxrjax.models.partitioning import EMBED, HEADS, MLP as MLP_UNITS

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclasses.dataclass(frozen=True)
class ViTConfig:
  """Architecture hyper-parameters (transformers' GitVisionConfig / BlipVisionConfig names in brackets).

  Attributes:
    image_size: side of the square input [image_size].
    patch_size: side of a patch [patch_size].
    hidden_size: token width [hidden_size].
    num_layers: encoder layers [num_hidden_layers].
    num_heads: attention heads [num_attention_heads].
    mlp_dim: feed-forward width [intermediate_size].
    layer_norm_eps: every LayerNorm's epsilon [layer_norm_eps].
    activation: "quick_gelu" (CLIP) or "gelu" (exact erf GELU; BLIP) [hidden_act].
    patch_bias: the patch convolution has a bias (BLIP) or not (CLIP).
    pre_norm: a LayerNorm before the layers (CLIP's `pre_layrnorm`; BLIP has none).
  """

  image_size: int = 224
  patch_size: int = 16
  hidden_size: int = 768
  num_layers: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  layer_norm_eps: float = 1e-5
  activation: str = "quick_gelu"
  patch_bias: bool = False
  pre_norm: bool = True

  def __post_init__(self):
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ViTConfig: unknown activation {self.activation!r}; expected one of {ACTIVATIONS}")
    if self.image_size % self.patch_size:
      raise ValueError(f"ViTConfig: image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"ViTConfig: hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")

  @property
  def num_tokens(self) -> int:
    """Output tokens: the class token and one per patch (197 for 224 / 16)."""
    return 1 + (self.image_size // self.patch_size) ** 2

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ViTConfig":
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"ViTConfig: unknown fields {sorted(unknown)}; known: {sorted(known)}")
    return cls(**values)


# microsoft/git-base's image tower (CLIP ViT-B/16) and Salesforce/blip-image-captioning-base's.
CLIP_B16 = ViTConfig()
BLIP_B16_384 = ViTConfig(image_size=384, activation="gelu", patch_bias=True, pre_norm=False)


def config_from_section(section: Any) -> ViTConfig:
  """A model config's `encoder` section (a dict or ConfigDict; its `preprocessing` is not architecture)."""
  return ViTConfig.from_dict({k: v for k, v in dict(section).items() if k != "preprocessing"})


def tiny_config() -> dict[str, Any]:
  """A small ViT for smoke tests (32 x 32 inputs, 17 tokens)."""
  return ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_layers=2, num_heads=2, mlp_dim=32).to_dict()


def quick_gelu(x: jax.Array) -> jax.Array:
  return x * jax.nn.sigmoid(1.702 * x)


# On CPUs, attention runs one example at a time once an example's float32 scores [heads, tokens, tokens]
# pass this size, so that they stay in the caches: at BLIP's 577 tokens (16 MiB an example) that halved
# the attention's time on a 2-core Xeon; at GIT's 197 tokens (1.8 MiB) the batched products were faster.
CPU_PER_EXAMPLE_SCORES_BYTES = 4 * 2**20


def _attend(queries: jax.Array, keys: jax.Array, values: jax.Array, dtype: Any) -> jax.Array:
  """Softmax attention over [batch, heads, tokens, head_dim] queries, keys, values -> like queries.
  Scores and softmax in float32, as transformers'."""
  scores = jnp.einsum("bhqd,bhkd->bhqk", queries.astype(jnp.float32), keys.astype(jnp.float32))
  weights = jax.nn.softmax(scores * queries.shape[-1] ** -0.5, axis=-1)
  return jnp.einsum("bhqk,bhkd->bhqd", weights.astype(dtype), values.astype(dtype))


def _attend_per_example(queries: jax.Array, keys: jax.Array, values: jax.Array, dtype: Any) -> jax.Array:
  """`_attend`, one example after another (lax.map): the same numbers, an example's scores at a time."""
  one = lambda example: _attend(*(x[None] for x in example), dtype)[0]
  return jax.lax.map(one, (queries, keys, values))


def attention(queries: jax.Array, keys: jax.Array, values: jax.Array, dtype: Any) -> jax.Array:
  """`_attend`; on CPUs per example where an example's scores are large (CPU_PER_EXAMPLE_SCORES_BYTES)."""
  _, heads, tokens, _ = queries.shape
  if heads * tokens * keys.shape[2] * 4 <= CPU_PER_EXAMPLE_SCORES_BYTES:
    return _attend(queries, keys, values, dtype)
  return jax.lax.platform_dependent(
    queries, keys, values, cpu=lambda *x: _attend_per_example(*x, dtype), default=lambda *x: _attend(*x, dtype)
  )


class SelfAttention(nn.Module):
  """Bidirectional multi-head self attention with separate q / k / v projections and `out_proj`."""

  hidden_size: int
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [batch, tokens, hidden] -> same shape."""
    # [batch, heads, tokens, head_dim]: heads first, so that the products batch over the leading axes (with
    # tokens first, XLA:CPU transposed queries and keys for every product: 4x the attention's time at 197 tokens).
    split = lambda y: decoding.split_heads(y, self.num_heads)
    queries = split(partitioning.dense(self.hidden_size, (EMBED, HEADS), self.dtype, name="q_proj")(x))
    keys = split(partitioning.dense(self.hidden_size, (EMBED, HEADS), self.dtype, name="k_proj")(x))
    values = split(partitioning.dense(self.hidden_size, (EMBED, HEADS), self.dtype, name="v_proj")(x))
    context = attention(queries, keys, values, self.dtype)
    output = partitioning.dense(self.hidden_size, (HEADS, EMBED), self.dtype, name="out_proj")
    return output(decoding.merge_heads(context))


class EncoderLayer(nn.Module):
  """One pre-norm layer (module doc)."""

  config: ViTConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    config = self.config
    norm = lambda name: nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=self.dtype, name=name)
    attention = SelfAttention(config.hidden_size, config.num_heads, dtype=self.dtype, name="self_attn")
    x = x + attention(norm("layer_norm1")(x))
    return x + MLP(config, dtype=self.dtype, name="mlp")(norm("layer_norm2")(x))


class MLP(nn.Module):
  """fc1 -> activation -> fc2."""

  config: ViTConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    config = self.config
    hidden = partitioning.dense(config.mlp_dim, (EMBED, MLP_UNITS), self.dtype, name="fc1")(x)
    # Flax's nn.gelu defaults to the tanh approximation; transformers' "gelu" is the exact one.
    hidden = quick_gelu(hidden) if config.activation == "quick_gelu" else nn.gelu(hidden, approximate=False)
    return partitioning.dense(config.hidden_size, (MLP_UNITS, EMBED), self.dtype, name="fc2")(hidden)


class Embeddings(nn.Module):
  """Patch embedding, class token first, plus the position embedding."""

  config: ViTConfig
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images [batch, S, S, 3] -> [batch, 1 + (S/P)^2, hidden]."""
    config = self.config
    if images.shape[1:3] != (config.image_size, config.image_size):
      raise ValueError(
        f"VisionTransformer: images of {images.shape[1]}x{images.shape[2]}; this ViT reads "
        f"{config.image_size}x{config.image_size} (set data.image_size to the encoder's image_size)"
      )
    init = nn.initializers.normal(0.02)  # transformers' initializer_range.
    patches = nn.Conv(
      config.hidden_size,
      (config.patch_size, config.patch_size),
      strides=config.patch_size,
      padding="VALID",
      use_bias=config.patch_bias,
      dtype=self.dtype,
      name="patch_embedding",
      kernel_init=partitioning.logical(init, (None, None, None, EMBED)),
    )(images)
    batch = patches.shape[0]
    patches = patches.reshape(batch, -1, config.hidden_size)  # Row-major, as torch's flatten(2).
    class_embedding = self.param(
      "class_embedding", partitioning.logical(init, (EMBED,)), (config.hidden_size,), jnp.float32
    )
    position_embedding = self.param(
      "position_embedding",
      partitioning.logical(init, (None, EMBED)),
      (config.num_tokens, config.hidden_size),
      jnp.float32,
    )
    class_tokens = jnp.broadcast_to(class_embedding.astype(patches.dtype), (batch, 1, config.hidden_size))
    tokens = jnp.concatenate([class_tokens, patches], axis=1)
    return tokens + position_embedding.astype(tokens.dtype)[None]


class VisionTransformer(nn.Module):
  """images [batch, S, S, 3] (normalised) -> tokens [batch, 1 + (S/P)^2, hidden] (module doc)."""

  config: ViTConfig = CLIP_B16
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    config = self.config
    norm = lambda name: nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=self.dtype, name=name)
    x = Embeddings(config, dtype=self.dtype, name="embeddings")(images.astype(self.dtype))
    if config.pre_norm:
      x = norm("pre_layrnorm")(x)  # transformers' spelling.
    for index in range(config.num_layers):
      x = EncoderLayer(config, dtype=self.dtype, name=f"layers_{index}")(x)
    return norm("post_layernorm")(x)
