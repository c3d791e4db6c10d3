"""Seed 003: ResNet-50 feature map -> graph propagation over its cells -> transformer decoder.

    images [batch, views, H, W, 3] -> view 0 -> ResNet (`image_encoder`)   [batch, h, w, 2048] (7x7 at 224)
      -> cells in row-major order -> `vis_proj` Dense                      [batch, h * w, d_model]
      -> graph propagation, `graph_steps` times with one shared Dense `graph_layer/msg_linear`:
           x = hardtanh(x + msg_linear(mean of x rolled by -1, 0, +1 along the cells))
                                                                            memory [batch, h * w, d_model]
    tokens (from the start token) -> `embedding` + `pos_encoder` (a learned [max_positions, d_model] table)
      -> post-norm transformer decoder (cross attention over the memory) -> `fc_out`   [batch, length, vocab]

Parameter names follow the seed's PyTorch module names so that its checkpoint imports one to one
(cxrjax/weights/seed003.py). Decoding runs with a KV cache (cxrjax/models/decoders/transformer.py) of
`cache_length` positions: decoding may feed positions 0 .. cache_length - 1, so `config.decode.max_length`
must not exceed it.

Config (`model` section): `encoder` is the ResNet section (plus its image `preprocessing`); the other
fields are this module's attributes. A pretrained Hugging Face ResNetModel directory comes from
`config.init.encoder`; whether the ResNet is frozen from `config.optimizer.param_groups` ("image_encoder/.*").
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxrjax.models import base, partitioning
from cxrjax.models.decoders import transformer
from cxrjax.models.encoders import resnet
from cxrjax.models.partitioning import EMBED, VOCAB


class GraphPropagation(nn.Module):
  """The seed's `GraphPropagationLayer`: `steps` rounds of x = hardtanh(x + Dense(mean of the `window`
  neighbours along the token axis, wrapping around as torch.roll)); one Dense shared by every round."""

  window: int = 3
  steps: int = 3
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x [batch, tokens, dim] -> same shape."""
    message = nn.Dense(x.shape[-1], dtype=self.dtype, name="msg_linear")
    half = self.window // 2
    for _ in range(self.steps):
      neighbours = jnp.stack([jnp.roll(x, shift, axis=1) for shift in range(-half, half + 1)], axis=2)
      x = jnp.clip(x + message(neighbours.mean(axis=2)), -1.0, 1.0)
    return x


@base.FAMILIES.register("graph_captioner")
class GraphCaptioner(base.Captioner):
  """Seed 003's captioner; see the module doc.

  Attributes:
    vocab_size: output vocabulary, special tokens included.
    encoder: ResNet architecture (ResNet-50 for microsoft/resnet-50 weights; tiny ones in tests).
    freeze_encoder: run the ResNet in inference mode without gradients (set by `from_config` from the
      optimizer's param_groups; the seed trains it).
    max_positions: rows of the position table (the seed's 2000).
    cache_length: positions the KV cache holds (the seed generates at most 80 tokens).
  """

  vocab_size: int
  encoder: resnet.ResNetConfig = resnet.RESNET50
  freeze_encoder: bool = False
  d_model: int = 512
  num_heads: int = 8
  num_layers: int = 4
  ff_dim: int = 1024
  dropout_rate: float = 0.1
  graph_window: int = 3
  graph_steps: int = 3
  max_positions: int = 2000
  cache_length: int = 80
  dtype: Any = jnp.float32

  decode_limit_field = "cache_length"  # Decoding feeds positions 0 .. max_length - 1 into the KV cache.
  pretrained_parts = {"encoder": base.PretrainedPart("hf_resnet", ("image_encoder",))}

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int, is_frozen: base.IsFrozen):
    return cls(
      vocab_size=vocab_size,
      encoder=resnet.config_from_section(config.encoder),
      freeze_encoder=is_frozen("image_encoder"),
      **base.module_fields(config, exclude=("encoder",)),
    )

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
      dict(
        name="graph_captioner",
        encoder=resnet.tiny_config(),
        d_model=16,
        num_heads=2,
        num_layers=2,
        ff_dim=32,
        dropout_rate=0.1,
        graph_window=3,
        graph_steps=3,
        max_positions=32,
        cache_length=16,
        dtype="float32",
      )
    )

  def setup(self):
    if self.cache_length > self.max_positions:
      raise ValueError(f"cache_length {self.cache_length} exceeds max_positions {self.max_positions}")
    self.image_encoder = resnet.ResNet(self.encoder, dtype=self.dtype)
    self.vis_proj = nn.Dense(self.d_model, dtype=self.dtype)
    self.graph_layer = GraphPropagation(self.graph_window, self.graph_steps, dtype=self.dtype)
    # N(0, 1) as torch.nn.Embedding and the seed's torch.randn position table.
    self.embedding = nn.Embed(
      self.vocab_size, self.d_model, embedding_init=partitioning.logical(nn.initializers.normal(1.0), (VOCAB, EMBED))
    )
    self.pos_encoder = self.param(
      "pos_encoder",
      partitioning.logical(nn.initializers.normal(1.0), (None, EMBED)),
      (self.max_positions, self.d_model),
      jnp.float32,
    )
    self.decoder = transformer.TransformerDecoder(
      self.num_layers, self.d_model, self.num_heads, self.ff_dim, self.dropout_rate, dtype=self.dtype
    )
    self.fc_out = partitioning.dense(self.vocab_size, (EMBED, VOCAB), self.dtype)

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [batch, views, H, W, 3] (view 0 is used) -> {"memory": [batch, h * w, d_model]}."""
    feature_map = self.image_encoder(images[:, 0], train=train and not self.freeze_encoder)
    if self.freeze_encoder:
      feature_map = jax.lax.stop_gradient(feature_map)
    batch, height, width, channels = feature_map.shape
    cells = feature_map.reshape(batch, height * width, channels)  # Row-major, as the seed's permute+reshape.
    memory = self.graph_layer(self.vis_proj(cells))
    return {"memory": memory.astype(jnp.float32)}

  def init_cache(self, memory: dict[str, jax.Array]) -> dict[str, Any]:
    """-> {"layers_N": the decoder layer's KV cache} (cxrjax/models/decoders/transformer.py)."""
    return self.decoder.init_cache(memory["memory"], self.cache_length)

  def _embed(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
    return (self.embedding(tokens) + jnp.take(self.pos_encoder, positions, axis=0)).astype(self.dtype)

  def decode_step(
    self, tokens: jax.Array, cache: dict[str, Any], position: jax.Array | None = None, train: bool = False
  ):
    """tokens [batch] at `position` (int32 scalar, < cache_length) -> (logits [batch, vocab], cache, None)."""
    if position is None:
      raise ValueError("GraphCaptioner.decode_step needs the token's position (its KV cache slot)")
    x = self._embed(tokens, jnp.full(tokens.shape, position, jnp.int32))  # [batch, d_model]
    x, cache = self.decoder.step(x, cache, position, train=train)
    return self.fc_out(x).astype(jnp.float32), cache, None

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> dict[str, Any]:
    """Teacher forcing: images [batch, views, H, W, 3], tokens [batch, length] -> {"logits": [batch,
    length, vocab], "attention": None}."""
    memory = self.encode(images, train=train)["memory"]
    x = self._embed(tokens, jnp.arange(tokens.shape[1]))  # [batch, length, d_model]
    x = self.decoder(x, self.decoder.cross_cache(memory), train=train)
    return {"logits": self.fc_out(x).astype(jnp.float32), "attention": None}
