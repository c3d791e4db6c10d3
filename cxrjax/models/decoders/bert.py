"""Post-norm BERT layers (Hugging Face `BertLayer`), with a KV cache for decoding one token at a time.

BLIP's text decoder (self-attention, cross-attention over the image tokens, feed-forward) and GIT's text
layers (self-attention over [image tokens; text], feed-forward) are stacks of this layer:

    x = attention.norm(x + dropout(attention.output(self_attention(x, x, x, mask))))
    x = cross_attention.norm(x + dropout(cross_attention.output(attention(x, memory, memory))))   (optional)
    x = output_norm(x + dropout(output(gelu(intermediate(x)))))                         (exact, erf GELU)

Parameter names follow transformers' modules one to one (cxrjax/weights/hf_*.py map them):
    attention/{query,key,value,output}     attention.self.{query,key,value}, attention.output.dense
    attention/norm                         attention.output.LayerNorm
    crossattention/...                     crossattention.* (the same shape; key / value read the memory)
    intermediate, output, output_norm      intermediate.dense, output.dense, output.LayerNorm
Kernels and embeddings carry logical axis names for sharding (models/partitioning.py).

The cache of a layer, all leaves [batch, ...] as cxrjax/core/decoding.py needs:
    self_keys, self_values      [batch, cache_length, heads, head_dim]  the decoded tokens' keys and values,
                                written at `position` (slots after it are masked out)
    prefix_keys, prefix_values  [batch, prefix, heads, head_dim]       a prefilled prefix (GIT's image tokens,
                                BLIP's prompt) that every decoded token sees; absent without a prefix
    cross_keys, cross_values    [batch, regions, heads, head_dim]      the memory's, computed once
The prefix is kept apart from the decoded slots so that `position` counts decoded tokens only and the
prefix length is the shape of its entries; scores over both are joined before one softmax, so attention
equals one over [prefix; decoded tokens].
"""

from typing import Any

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

from cxrjax.core import decoding
from cxrjax.models import partitioning
from cxrjax.models.partitioning import EMBED, HEADS, MLP, VOCAB

Cache = dict[str, jax.Array]


def causal_mask(length: int) -> jax.Array:
  """[1, 1, length, length] bool: query i may attend to keys 0..i."""
  return jnp.tril(jnp.ones((length, length), jnp.bool_))[None, None]


class BertAttention(nn.Module):
  """`BertAttention`: query / key / value projections, scaled dot products, dropout on the weights, then
  the output projection, dropout and LayerNorm of the residual sum (`BertSelfOutput`)."""

  hidden_size: int
  num_heads: int
  epsilon: float = 1e-12
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    self.query = partitioning.dense(self.hidden_size, (EMBED, HEADS), self.dtype)
    self.key = partitioning.dense(self.hidden_size, (EMBED, HEADS), self.dtype)
    self.value = partitioning.dense(self.hidden_size, (EMBED, HEADS), self.dtype)
    self.output = partitioning.dense(self.hidden_size, (HEADS, EMBED), self.dtype)
    self.norm = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype)
    self.attention_dropout = nn.Dropout(self.attention_dropout_rate)
    self.dropout = nn.Dropout(self.dropout_rate)

  def _heads(self, y: jax.Array) -> jax.Array:
    """[batch, length, hidden] -> [batch, heads, length, head_dim]."""
    return decoding.split_heads(y, self.num_heads)

  def queries(self, x: jax.Array) -> jax.Array:
    return self._heads(self.query(x))

  def keys_values(self, source: jax.Array) -> tuple[jax.Array, jax.Array]:
    """source [batch, length, source_dim] -> keys, values [batch, heads, length, head_dim] (float32)."""
    return (self._heads(self.key(source)).astype(jnp.float32), self._heads(self.value(source)).astype(jnp.float32))

  def __call__(self, x: jax.Array, blocks: list[tuple[jax.Array, jax.Array, Any]], train: bool = False) -> jax.Array:
    """x [batch, q, hidden] attends over key/value blocks [(keys, values, mask)] (keys / values [batch, heads,
    k_i, head_dim], mask broadcasting to [batch, heads, q, k_i], True: may attend, or None), joined by
    one softmax; then the output projection and LayerNorm of the residual sum -> [batch, q, hidden]."""
    queries = self.queries(x)
    head_dim = self.hidden_size // self.num_heads
    scale = 1.0 / jnp.sqrt(jnp.float32(head_dim))
    scores = []
    for keys, _, mask in blocks:
      # Keys may have fewer rows than the queries: beam search's Shared entries (decoding.py).
      block = decoding.attention_scores(queries.astype(jnp.float32), keys.astype(jnp.float32)) * scale
      if mask is not None:
        block = jnp.where(mask, block, -jnp.inf)  # Every query sees at least one key: no NaN rows.
      scores.append(block)
    weights = jax.nn.softmax(jnp.concatenate(scores, axis=-1), axis=-1)  # [batch, heads, q, sum k_i]
    weights = self.attention_dropout(weights, deterministic=not train)
    context, start = 0.0, 0
    for keys, values, _ in blocks:
      part = weights[..., start : start + keys.shape[2]]
      context = context + decoding.attention_context(part.astype(self.dtype), values.astype(self.dtype))
      start += keys.shape[2]
    return self.norm(x + self.dropout(self.output(decoding.merge_heads(context)), deterministic=not train))


class BertLayer(nn.Module):
  """`BertLayer` (post-norm), with `cross_attention` over a memory when set; see the module doc."""

  hidden_size: int
  num_heads: int
  intermediate_size: int
  cross_attention: bool = False
  epsilon: float = 1e-12
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    attention = dict(
      hidden_size=self.hidden_size,
      num_heads=self.num_heads,
      epsilon=self.epsilon,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      dtype=self.dtype,
    )
    self.attention = BertAttention(**attention)
    if self.cross_attention:
      self.crossattention = BertAttention(**attention)
    self.intermediate = partitioning.dense(self.intermediate_size, (EMBED, MLP), self.dtype)
    self.output = partitioning.dense(self.hidden_size, (MLP, EMBED), self.dtype)
    self.output_norm = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def cross_keys_values(self, memory: jax.Array) -> Cache:
    """memory [batch, regions, memory_dim] -> {"cross_keys", "cross_values"} [batch, heads, regions, head_dim]."""
    keys, values = self.crossattention.keys_values(memory)
    return {"cross_keys": keys, "cross_values": values}

  def self_keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.attention.keys_values(x)

  def __call__(
    self, x: jax.Array, self_blocks: list[tuple[jax.Array, jax.Array, Any]], cache: Cache, train: bool = False
  ) -> jax.Array:
    """x [batch, q, hidden]; `self_blocks`: the self-attention's (keys, values, mask) blocks (x's own keys
    included by the caller); `cache`: the cross entries (when `cross_attention`). -> y like x."""
    x = self.attention(x, self_blocks, train)
    if self.cross_attention:
      x = self.crossattention(
        x, [(decoding.shared_value(cache["cross_keys"]), decoding.shared_value(cache["cross_values"]), None)], train
      )
    hidden = nn.gelu(self.intermediate(x), approximate=False)
    return self.output_norm(x + self.dropout(self.output(hidden), deterministic=not train))


class BertStack(nn.Module):
  """`num_layers` BertLayers (`layers_0`...), no final norm (transformers' `BertEncoder`).

  __call__(x, mask, memory)                 teacher forcing: x [batch, length, hidden], mask broadcasting
                                            to [batch, heads, length, length] (True: may attend; None: all),
                                            memory [batch, regions, memory_dim] for the cross-attention
                                            -> [batch, length, hidden]
  cross_cache(memory)                       -> {"layers_N": {"cross_keys", "cross_values"}}
  init_cache(batch_size, cache_length, memory=None, prefix=None, prefix_mask=None)
                                            -> (cache {"layers_N": the layer's cache, module doc}, the
                                            prefix's outputs [batch, prefix, hidden] or None); the prefix
                                            [batch, prefix, hidden] runs teacher-forced with prefix_mask
                                            and its keys / values become every layer's prefix entries
  step(x, cache, position)                  x [batch, hidden], the decoded token at `position` (int32
                                            scalar < cache_length; it sees the whole prefix and decoded
                                            tokens 0..position) -> (y [batch, hidden], cache)
  """

  num_layers: int
  hidden_size: int
  num_heads: int
  intermediate_size: int
  cross_attention: bool = False
  epsilon: float = 1e-12
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.layers = [
      BertLayer(
        self.hidden_size,
        self.num_heads,
        self.intermediate_size,
        self.cross_attention,
        self.epsilon,
        self.dropout_rate,
        self.attention_dropout_rate,
        dtype=self.dtype,
      )
      for _ in range(self.num_layers)
    ]

  def cross_cache(self, memory: jax.Array | None) -> dict[str, Cache]:
    """memory [batch, regions, memory_dim] -> every layer's cross-attention keys and values (float32)."""
    if not self.cross_attention:
      return {f"layers_{index}": {} for index in range(self.num_layers)}
    if memory is None:
      raise ValueError("BertStack with cross_attention needs a memory")
    return {f"layers_{index}": layer.cross_keys_values(memory) for index, layer in enumerate(self.layers)}

  def _run(self, x: jax.Array, mask: Any, cross: dict[str, Cache], train: bool) -> tuple[jax.Array, list]:
    """Teacher forcing; also returns every layer's keys and values of x."""
    keys_values = []
    for index, layer in enumerate(self.layers):
      keys, values = layer.self_keys_values(x)
      keys_values.append((keys, values))
      x = layer(x, [(keys, values, mask)], cross[f"layers_{index}"], train)
    return x, keys_values

  def __call__(self, x: jax.Array, mask: Any = None, memory: jax.Array | None = None, train: bool = False) -> jax.Array:
    return self._run(x, mask, self.cross_cache(memory), train)[0]

  def init_cache(
    self,
    batch_size: int,
    cache_length: int,
    memory: jax.Array | None = None,
    prefix: jax.Array | None = None,
    prefix_mask: Any = None,
    train: bool = False,
  ) -> tuple[dict[str, Cache], jax.Array | None]:
    head_dim = self.hidden_size // self.num_heads
    empty = jnp.zeros((batch_size, self.num_heads, cache_length, head_dim), jnp.float32)
    cache = {name: dict(cross, self_keys=empty, self_values=empty) for name, cross in self.cross_cache(memory).items()}
    outputs = None
    if prefix is not None:
      outputs, keys_values = self._run(prefix, prefix_mask, cache, train)
      for index, (keys, values) in enumerate(keys_values):
        cache[f"layers_{index}"].update(prefix_keys=keys, prefix_values=values)
    # The memory's and the prefix's entries are only read by the steps, alike in every beam.
    read_only = lambda name: name.startswith(("cross_", "prefix_"))
    cache = {
      layer: {name: decoding.Shared(value) if read_only(name) else value for name, value in entries.items()}
      for layer, entries in cache.items()
    }
    return cache, outputs

  def step(
    self, x: jax.Array, cache: dict[str, Cache], position: jax.Array, train: bool = False
  ) -> tuple[jax.Array, dict[str, Cache]]:
    x = x[:, None, :]  # [batch, 1, hidden]
    new_cache = {}
    for index, layer in enumerate(self.layers):
      layer_cache = cache[f"layers_{index}"]
      keys, values = layer.self_keys_values(x)
      start = (0, 0, position, 0)
      keys = lax.dynamic_update_slice(layer_cache["self_keys"], keys.astype(jnp.float32), start)
      values = lax.dynamic_update_slice(layer_cache["self_values"], values.astype(jnp.float32), start)
      layer_cache = dict(layer_cache, self_keys=keys, self_values=values)
      blocks = [(keys, values, (jnp.arange(keys.shape[2]) <= position)[None, None, None, :])]
      if "prefix_keys" in layer_cache:
        blocks.insert(
          0,
          (
            decoding.shared_value(layer_cache["prefix_keys"]),
            decoding.shared_value(layer_cache["prefix_values"]),
            None,
          ),
        )
      x = layer(x, blocks, layer_cache, train)
      new_cache[f"layers_{index}"] = layer_cache
    return x[:, 0], new_cache


class BertEmbeddings(nn.Module):
  """Word + absolute position embeddings, LayerNorm, dropout (BLIP's and GIT's text embeddings; no token
  types). `attend(x)` is the transpose of the word table (a tied output layer)."""

  vocab_size: int
  hidden_size: int
  max_positions: int
  epsilon: float = 1e-12
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    # N(0, 0.02) as transformers' BERT initialisation (initializer_range).
    init = nn.initializers.normal(0.02)
    self.word_embeddings = nn.Embed(
      self.vocab_size, self.hidden_size, embedding_init=partitioning.logical(init, (VOCAB, EMBED))
    )
    self.position_embeddings = nn.Embed(
      self.max_positions, self.hidden_size, embedding_init=partitioning.logical(init, (None, EMBED))
    )
    self.norm = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, tokens: jax.Array, positions: jax.Array, train: bool = False) -> jax.Array:
    """tokens, positions int32 [...] (broadcasting) -> [..., hidden]."""
    x = self.word_embeddings(tokens) + self.position_embeddings(positions)
    return self.dropout(self.norm(x.astype(self.dtype)), deterministic=not train)

  def attend(self, x: jax.Array) -> jax.Array:
    """x [..., hidden] -> [..., vocab]: x times the word table's transpose."""
    return jnp.dot(x.astype(self.dtype), self.word_embeddings.embedding.T.astype(self.dtype))
