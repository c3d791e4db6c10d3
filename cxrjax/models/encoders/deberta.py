"""DeBERTa (v1) text encoder: transformers' `DebertaModel` without heads (microsoft/deberta-base, -large, -xlarge
and their -mnli fine-tunings, bert-score's DeBERTa encoders).

    embeddings      word (+ absolute position when position_biased_input) (+ token type) embeddings,
                    LayerNorm, padding positions zeroed, dropout
    rel_embeddings  [2 * span_max, hidden] embeddings of relative distances, shared by every layer
                    (span_max = max_relative_positions, or max_positions when that is < 1)
    layers_i        post-norm layers (BERT's shape) whose self-attention is disentangled:

  score(i, j) = q_i . k_j + q_i . Kr[r(i, j)] + k_j . Qr[r(i, j)]     (each / sqrt(head_dim * (1 + terms)))
                content     c2p: content -> position   p2c: position -> content
  with q = in_proj's query + q_bias, k = in_proj's key (no bias), v = in_proj's value + v_bias,
  Kr = pos_proj(table) (no bias), Qr = pos_q_proj(table), table = rel_embeddings rows span_max - span ..
  span_max + span - 1 (span = min(length, span_max)) and r(i, j) = clip(i - j + span, 0, 2 span - 1): a
  distance of span or more is read as the table's last (first) row. `pos_att_type` picks the terms.

Masking, as transformers: query i may attend to key j only when both are real tokens; a padding query sees
no key, its scores all float32's minimum, so its weights are uniform over every key (its states are
defined, as there, but no score uses them). Dropout is that of transformers but for the relative table's
(`pos_dropout`, not applied: the encoder serves scoring). LayerNorms compute the variance from the centred values
(DebertaLayerNorm's two passes), eps 1e-7 in the released models.

Parameter names (Flax path <- DebertaModel name; cxrjax/weights/hf_text.py maps them):
    embeddings/{word,position,token_type}_embeddings   embeddings.*_embeddings.weight
    embeddings/norm                                    embeddings.LayerNorm
    rel_embeddings/embedding                           encoder.rel_embeddings.weight
    layers_i/attention/{in_proj,q_bias,v_bias,pos_proj,pos_q_proj}   encoder.layer.i.attention.self.*
    layers_i/attention/{output,norm}                   ...attention.output.{dense,LayerNorm}
    layers_i/{intermediate,output,output_norm}         ...{intermediate.dense,output.dense,output.LayerNorm}
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models import partitioning
from cxrjax.models.partitioning import EMBED, HEADS, MLP, VOCAB

POSITION_TERMS = ("c2p", "p2c")


def _layer_norm(epsilon: float, dtype: Any) -> nn.LayerNorm:
  # DebertaLayerNorm: mean((x - mean)^2), not E[x^2] - mean^2 (flax's fast variance).
  return nn.LayerNorm(epsilon=epsilon, dtype=dtype, use_fast_variance=False)


def relative_index(length: int, span: int) -> jax.Array:
  """r(i, j) = clip(i - j + span, 0, 2 span - 1) int32 [length, length]: the row of the span's table that
  query i reads for key j."""
  offsets = jnp.arange(length)[:, None] - jnp.arange(length)[None, :]
  return jnp.clip(offsets + span, 0, 2 * span - 1)


class DebertaEmbeddings(nn.Module):
  """`DebertaEmbeddings` (embedding_size = hidden_size: no projection)."""

  vocab_size: int
  hidden_size: int
  max_positions: int
  type_vocab_size: int = 0
  position_biased_input: bool = True
  epsilon: float = 1e-7
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    init = nn.initializers.normal(0.02)  # transformers' initializer_range.
    self.word_embeddings = nn.Embed(
      self.vocab_size, self.hidden_size, embedding_init=partitioning.logical(init, (VOCAB, EMBED))
    )
    if self.position_biased_input:
      self.position_embeddings = nn.Embed(
        self.max_positions, self.hidden_size, embedding_init=partitioning.logical(init, (None, EMBED))
      )
    if self.type_vocab_size:
      self.token_type_embeddings = nn.Embed(
        self.type_vocab_size, self.hidden_size, embedding_init=partitioning.logical(init, (None, EMBED))
      )
    self.norm = _layer_norm(self.epsilon, self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(
    self, tokens: jax.Array, mask: jax.Array, token_types: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """tokens int32 [batch, length], mask [batch, length] (0: padding), token_types int32 or None (all 0)
    -> [batch, length, hidden], zero at padding."""
    x = self.word_embeddings(tokens)
    if self.position_biased_input:
      x = x + self.position_embeddings(jnp.arange(tokens.shape[-1]))[None]
    if self.type_vocab_size:
      x = x + self.token_type_embeddings(jnp.zeros_like(tokens) if token_types is None else token_types)
    elif token_types is not None:
      raise ValueError("token_types given to embeddings without a token type table (type_vocab_size 0)")
    x = self.norm(x.astype(self.dtype)) * mask[..., None].astype(self.dtype)
    return self.dropout(x, deterministic=not train)


class DisentangledAttention(nn.Module):
  """`DebertaAttention`: disentangled self-attention (module doc), then the output projection, dropout and
  LayerNorm of the residual sum (`DebertaSelfOutput`)."""

  hidden_size: int
  num_heads: int
  pos_att_type: tuple[str, ...] = POSITION_TERMS
  epsilon: float = 1e-7
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
    unknown = set(self.pos_att_type) - set(POSITION_TERMS)
    if unknown:
      raise ValueError(f"pos_att_type {sorted(unknown)} not among {POSITION_TERMS}")

    def projection(features, use_bias=True):
      return nn.Dense(
        features,
        use_bias=use_bias,
        dtype=self.dtype,
        kernel_init=partitioning.logical(nn.linear.default_kernel_init, (EMBED, HEADS)),
        bias_init=partitioning.logical(nn.initializers.zeros_init(), (HEADS,)),
      )

    # Per head, in_proj's output holds that head's query, key and value rows in turn ([heads, 3, head_dim]).
    self.in_proj = projection(3 * self.hidden_size, use_bias=False)
    bias_init = partitioning.logical(nn.initializers.zeros_init(), (HEADS,))
    self.q_bias = self.param("q_bias", bias_init, (self.hidden_size,))
    self.v_bias = self.param("v_bias", bias_init, (self.hidden_size,))
    if "c2p" in self.pos_att_type:
      self.pos_proj = projection(self.hidden_size, use_bias=False)
    if "p2c" in self.pos_att_type:
      self.pos_q_proj = projection(self.hidden_size)
    self.output = partitioning.dense(self.hidden_size, (HEADS, EMBED), self.dtype)
    self.norm = _layer_norm(self.epsilon, self.dtype)
    self.attention_dropout = nn.Dropout(self.attention_dropout_rate)
    self.dropout = nn.Dropout(self.dropout_rate)

  def _heads(self, y: jax.Array) -> jax.Array:
    """[..., length, hidden] (length >= 1) -> [..., heads, length, head_dim]."""
    split = y.reshape(*y.shape[:-1], self.num_heads, -1)
    return jnp.moveaxis(split, -2, -3)

  def __call__(
    self, x: jax.Array, mask: jax.Array, table: jax.Array | None, index: jax.Array | None, train: bool = False
  ) -> jax.Array:
    """x [batch, length, hidden]; mask bool [batch, length] (True: a real token); table [2 span, hidden]
    (the relative embeddings' rows of this length's span) and index int32 [length, length] (r(i, j)), both
    None without relative attention -> [batch, length, hidden]."""
    batch, length, _ = x.shape
    head_dim = self.hidden_size // self.num_heads
    qkv = self.in_proj(x).reshape(batch, length, self.num_heads, 3, head_dim)
    queries, keys, values = (jnp.moveaxis(qkv[..., part, :], 2, 1) for part in range(3))  # [batch, heads, length, d]
    queries = queries + self.q_bias.reshape(self.num_heads, 1, head_dim)  # Per head, every position.
    values = values + self.v_bias.reshape(self.num_heads, 1, head_dim)
    # One scale for every term: the sum of 1 + len(terms) products keeps the variance of one.
    scale = jnp.sqrt(jnp.float32(head_dim * (1 + len(self.pos_att_type))))
    queries = (queries / scale).astype(jnp.float32)
    keys = keys.astype(jnp.float32)
    scores = jnp.einsum("bhqd,bhkd->bhqk", queries, keys)
    if table is not None:
      rows = (batch, self.num_heads, length, length)
      if "c2p" in self.pos_att_type:
        position_keys = self._heads(self.pos_proj(table)).astype(jnp.float32)  # [heads, 2 span, d]
        by_distance = jnp.einsum("bhqd,hrd->bhqr", queries, position_keys)  # Each query against every distance.
        scores = scores + jnp.take_along_axis(by_distance, jnp.broadcast_to(index, rows), axis=-1)
      if "p2c" in self.pos_att_type:
        position_queries = self._heads(self.pos_q_proj(table)).astype(jnp.float32) / scale
        by_distance = jnp.einsum("bhkd,hrd->bhkr", keys, position_queries)  # Each key against every distance.
        # Key j reads row r(i, j) for query i: gathered along the keys' rows, then turned to [query, key].
        gathered = jnp.take_along_axis(by_distance, jnp.broadcast_to(index.T, rows), axis=-1)
        scores = scores + jnp.swapaxes(gathered, -1, -2)
    allowed = mask[:, None, :, None] & mask[:, None, None, :]  # [batch, 1, length, length]
    scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)  # Not -inf: padding rows stay finite.
    weights = self.attention_dropout(jax.nn.softmax(scores, axis=-1), deterministic=not train)
    context = jnp.einsum("bhqk,bhkd->bqhd", weights.astype(self.dtype), values.astype(self.dtype))
    context = context.reshape(batch, length, self.hidden_size)
    return self.norm(x + self.dropout(self.output(context), deterministic=not train))


class DebertaLayer(nn.Module):
  """`DebertaLayer`: disentangled attention, then the post-norm feed-forward block (exact GELU)."""

  hidden_size: int
  num_heads: int
  intermediate_size: int
  pos_att_type: tuple[str, ...] = POSITION_TERMS
  epsilon: float = 1e-7
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    self.attention = DisentangledAttention(
      self.hidden_size,
      self.num_heads,
      self.pos_att_type,
      self.epsilon,
      self.dropout_rate,
      self.attention_dropout_rate,
      self.dtype,
    )
    self.intermediate = partitioning.dense(self.intermediate_size, (EMBED, MLP), self.dtype)
    self.output = partitioning.dense(self.hidden_size, (MLP, EMBED), self.dtype)
    self.output_norm = _layer_norm(self.epsilon, self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(
    self, x: jax.Array, mask: jax.Array, table: jax.Array | None, index: jax.Array | None, train: bool = False
  ) -> jax.Array:
    """As DisentangledAttention.__call__: x [batch, length, hidden] -> the same shape."""
    x = self.attention(x, mask, table, index, train)
    hidden = nn.gelu(self.intermediate(x), approximate=False)
    return self.output_norm(x + self.dropout(self.output(hidden), deterministic=not train))


class DebertaEncoder(nn.Module):
  """A DeBERTa (v1) encoder (module doc): tokens and an attention mask -> hidden states, with the interface of
  text.TextEncoder.

  __call__(tokens, mask, token_types=None, output_hidden_states=False)
    tokens int32 [batch, length]; mask [batch, length] (1 / True: a real token, 0: padding; every row needs
    one real token); token_types int32 [batch, length] (None: all 0)
    -> the last hidden state [batch, length, hidden], or with `output_hidden_states` the pair (last, every
    hidden state [layers + 1, batch, length, hidden]: the embeddings' output, then each layer's)
  `max_positions` bounds the length only through the absolute position table (position_biased_input);
  the relative distances are clipped at `span_max` whatever the length.
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int = 512
  type_vocab_size: int = 0
  position_biased_input: bool = True
  relative_attention: bool = False
  max_relative_positions: int = -1
  pos_att_type: tuple[str, ...] = ()
  pad_id: int = 0
  epsilon: float = 1e-7
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @property
  def span_max(self) -> int:
    """The largest relative distance the table tells apart (transformers: max_position_embeddings when
    max_relative_positions < 1)."""
    return self.max_relative_positions if self.max_relative_positions >= 1 else self.max_positions

  def setup(self):
    self.embeddings = DebertaEmbeddings(
      self.vocab_size,
      self.hidden_size,
      self.max_positions,
      self.type_vocab_size,
      self.position_biased_input,
      self.epsilon,
      self.dropout_rate,
      self.dtype,
    )
    # Without relative attention the position terms have no table: the layers are plain attention.
    terms = tuple(self.pos_att_type) if self.relative_attention else ()
    if self.relative_attention:
      self.rel_embeddings = nn.Embed(
        2 * self.span_max,
        self.hidden_size,
        embedding_init=partitioning.logical(nn.initializers.normal(0.02), (None, EMBED)),
      )
    self.layers = [
      DebertaLayer(
        self.hidden_size,
        self.num_heads,
        self.intermediate_size,
        terms,
        self.epsilon,
        self.dropout_rate,
        self.attention_dropout_rate,
        self.dtype,
      )
      for _ in range(self.num_layers)
    ]

  def __call__(
    self,
    tokens: jax.Array,
    mask: jax.Array,
    token_types: jax.Array | None = None,
    output_hidden_states: bool = False,
    train: bool = False,
  ):
    length = tokens.shape[-1]
    mask = mask.astype(jnp.bool_)
    x = self.embeddings(tokens, mask, token_types, train)
    table = index = None
    if self.relative_attention:
      span = min(length, self.span_max)  # Static: the rows a sequence of this length can reach.
      table = self.rel_embeddings.embedding[self.span_max - span : self.span_max + span].astype(self.dtype)
      index = relative_index(length, span)
    states = [x]
    for layer in self.layers:
      x = layer(x, mask, table, index, train)
      states.append(x)
    return (x, jnp.stack(states)) if output_hidden_states else x
