"""A transformer decoder as PyTorch's `nn.TransformerDecoder` of default `nn.TransformerDecoderLayer`s, with a
KV cache for decoding one token at a time.

Each layer is post-norm (norm_first=False), ReLU, dropout everywhere PyTorch puts it, layer norm eps 1e-5,
no final norm:

    x = norm1(x + dropout(self_attn(x, x, x, causal mask)))
    x = norm2(x + dropout(multihead_attn(x, memory, memory)))
    x = norm3(x + dropout(linear2(dropout(relu(linear1(x))))))

Attention keeps PyTorch's fused input projection: one `in_proj_kernel` [d_model, 3 * d_model] whose
column blocks project queries, keys and values (the transpose of `in_proj_weight`), so checkpoints map
one to one (cxrjax/weights/seed003.py). Kernels carry logical axis names for sharding
(models/partitioning.py).

The cache of a layer, all leaves [batch, ...] as cxrjax/core/decoding.py needs:
    self_keys, self_values    [batch, heads, cache_length, head_dim]  the past tokens' keys and values,
                              written at `position` (slots after it are masked out)
    cross_keys, cross_values  [batch, heads, regions, head_dim]       the memory's, computed once
"""

from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from cxrjax.core import decoding
from cxrjax.models import partitioning
from cxrjax.models.partitioning import EMBED, HEADS, MLP


class MultiHeadAttention(nn.Module):
  """`torch.nn.MultiheadAttention` (batch_first): fused input projection, scaled dot products, dropout on
  the attention weights, output projection `out_proj`."""

  d_model: int
  num_heads: int
  dropout_rate: float
  dtype: Any = jnp.float32

  def setup(self):
    if self.d_model % self.num_heads:
      raise ValueError(f"d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
    # Xavier-uniform over [d_model, 3 * d_model] and zero bias, as PyTorch initialises in_proj_weight.
    self.in_proj_kernel = self.param(
      "in_proj_kernel",
      partitioning.logical(nn.initializers.xavier_uniform(), (EMBED, HEADS)),
      (self.d_model, 3 * self.d_model),
      jnp.float32,
    )
    self.in_proj_bias = self.param(
      "in_proj_bias", partitioning.logical(nn.initializers.zeros, (HEADS,)), (3 * self.d_model,), jnp.float32
    )
    self.out_proj = partitioning.dense(self.d_model, (HEADS, EMBED), self.dtype)
    self.attention_dropout = nn.Dropout(self.dropout_rate)

  def _project(self, x: jax.Array, block: int) -> jax.Array:
    """x [batch, length, d_model] -> [batch, heads, length, head_dim] with column block 0, 1 or 2
    (query, key, value) of the fused projection."""
    columns = slice(block * self.d_model, (block + 1) * self.d_model)
    kernel = self.in_proj_kernel[:, columns].astype(self.dtype)
    y = jnp.dot(x.astype(self.dtype), kernel) + self.in_proj_bias[columns].astype(self.dtype)
    return decoding.split_heads(y, self.num_heads)

  def query(self, x: jax.Array) -> jax.Array:
    return self._project(x, 0)

  def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """x [batch, length, d_model] -> keys, values [batch, heads, length, head_dim]."""
    return self._project(x, 1), self._project(x, 2)

  def attend(
    self, queries: jax.Array, keys: jax.Array, values: jax.Array, mask: jax.Array | None, train: bool
  ) -> jax.Array:
    """queries [batch, heads, q, head_dim], keys / values [batch, heads, k, head_dim], mask broadcasting to
    [batch, heads, q, k] (True: may attend) -> [batch, q, d_model]."""
    head_dim = queries.shape[-1]
    # Keys may have fewer rows than the queries: beam search's Shared entries (decoding.py).
    scores = decoding.attention_scores(queries.astype(jnp.float32), keys.astype(jnp.float32))
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    if mask is not None:
      scores = jnp.where(mask, scores, -jnp.inf)  # Every query sees at least one key: no NaN rows.
    weights = self.attention_dropout(jax.nn.softmax(scores, axis=-1), deterministic=not train)
    context = decoding.attention_context(weights.astype(self.dtype), values.astype(self.dtype))
    return self.out_proj(decoding.merge_heads(context))


class DecoderLayer(nn.Module):
  """`torch.nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, batch_first=True)`: see the module doc."""

  d_model: int
  num_heads: int
  ff_dim: int
  dropout_rate: float
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  def setup(self):
    attention = dict(d_model=self.d_model, num_heads=self.num_heads, dropout_rate=self.dropout_rate, dtype=self.dtype)
    self.self_attn = MultiHeadAttention(**attention)
    self.multihead_attn = MultiHeadAttention(**attention)
    self.linear1 = partitioning.dense(self.ff_dim, (EMBED, MLP), self.dtype)
    self.linear2 = partitioning.dense(self.d_model, (MLP, EMBED), self.dtype)
    self.norm1 = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype)
    self.norm2 = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype)
    self.norm3 = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def cross_keys_values(self, memory: jax.Array) -> dict[str, jax.Array]:
    """memory [batch, regions, d_model] -> {"cross_keys", "cross_values"} [batch, heads, regions, head_dim]."""
    keys, values = self.multihead_attn.keys_values(memory)
    return {"cross_keys": keys, "cross_values": values}

  def __call__(
    self, x: jax.Array, cache: dict[str, jax.Array], position: jax.Array | None = None, train: bool = False
  ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Teacher forcing (position None): x [batch, length, d_model], causal self attention over x; the
    cache's self entries are ignored and returned unchanged. A step (position: int32 scalar): x [batch, 1,
    d_model] is the token at `position`; its keys and values are written into the cache's self entries.
    Returns (y like x, cache)."""
    deterministic = not train
    queries = self.self_attn.query(x)
    keys, values = self.self_attn.keys_values(x)
    if position is None:
      length = x.shape[1]
      mask = jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]  # [1, 1, q, k]
    else:
      start = (0, 0, position, 0)
      keys = lax.dynamic_update_slice(cache["self_keys"], keys.astype(cache["self_keys"].dtype), start)
      values = lax.dynamic_update_slice(cache["self_values"], values.astype(cache["self_values"].dtype), start)
      cache = dict(cache, self_keys=keys, self_values=values)
      mask = (jnp.arange(keys.shape[2]) <= position)[None, None, None, :]  # [1, 1, 1, cache_length]
    x = self.norm1(
      x + self.dropout(self.self_attn.attend(queries, keys, values, mask, train), deterministic=deterministic)
    )
    cross = self.multihead_attn.attend(
      self.multihead_attn.query(x),
      decoding.shared_value(cache["cross_keys"]),
      decoding.shared_value(cache["cross_values"]),
      None,
      train,
    )
    x = self.norm2(x + self.dropout(cross, deterministic=deterministic))
    hidden = self.dropout(nn.relu(self.linear1(x)), deterministic=deterministic)
    x = self.norm3(x + self.dropout(self.linear2(hidden), deterministic=deterministic))
    return x, cache


class TransformerDecoder(nn.Module):
  """`num_layers` DecoderLayers (`layers_0`...), no final norm (nn.TransformerDecoder's default).

  cross_cache(memory)                     -> {"layers_N": {"cross_keys", "cross_values"}}
  init_cache(memory, cache_length)        -> {"layers_N": the layer's cache (module doc)}
  __call__(x, cross_cache)                teacher forcing: x [batch, length, d_model] -> same shape
  step(x, cache, position)                x [batch, d_model] at `position` -> (y [batch, d_model], cache)
  """

  num_layers: int
  d_model: int
  num_heads: int
  ff_dim: int
  dropout_rate: float
  epsilon: float = 1e-5
  dtype: Any = jnp.float32

  def setup(self):
    self.layers = [
      DecoderLayer(self.d_model, self.num_heads, self.ff_dim, self.dropout_rate, self.epsilon, dtype=self.dtype)
      for _ in range(self.num_layers)
    ]

  def cross_cache(self, memory: jax.Array) -> dict[str, dict[str, jax.Array]]:
    """memory [batch, regions, d_model] -> every layer's cross-attention keys and values (float32)."""
    return {
      f"layers_{index}": jax.tree.map(lambda a: a.astype(jnp.float32), layer.cross_keys_values(memory))
      for index, layer in enumerate(self.layers)
    }

  def init_cache(self, memory: jax.Array, cache_length: int) -> dict[str, dict[str, jax.Array]]:
    """memory [batch, regions, d_model] -> the cache of every layer, self entries zero."""
    head_dim = self.d_model // self.num_heads
    empty = jnp.zeros((memory.shape[0], self.num_heads, cache_length, head_dim), jnp.float32)
    # The memory's keys and values are only read by the steps, alike in every beam (decoding.Shared).
    return {
      name: dict(jax.tree.map(decoding.Shared, cross), self_keys=empty, self_values=empty)
      for name, cross in self.cross_cache(memory).items()
    }

  def __call__(self, x: jax.Array, cache: dict[str, dict[str, jax.Array]], train: bool = False) -> jax.Array:
    """Teacher forcing; `cache` needs only the cross entries (`cross_cache`)."""
    for index, layer in enumerate(self.layers):
      x, _ = layer(x, cache[f"layers_{index}"], None, train)
    return x

  def step(
    self, x: jax.Array, cache: dict[str, dict[str, jax.Array]], position: jax.Array, train: bool = False
  ) -> tuple[jax.Array, dict[str, dict[str, jax.Array]]]:
    x = x[:, None, :]  # [batch, 1, d_model]
    new_cache = {}
    for index, layer in enumerate(self.layers):
      x, new_cache[f"layers_{index}"] = layer(x, cache[f"layers_{index}"], position, train)
    return x[:, 0], new_cache
