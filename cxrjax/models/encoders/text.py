"""BERT-family text encoders (transformers' `BertModel`, `RobertaModel`, `DistilBertModel` without heads).

    embeddings: word + position (+ token type) embeddings, LayerNorm, dropout
    layers_0 ... layers_{N-1}: post-norm BertLayers (cxrjax/models/decoders/bert.py), self-attention only

The three families share this computation and differ only in
    positions          "absolute": 0, 1, ..., length - 1 (BERT, DistilBERT);
                       "padding_offset": pad_id + 1 + the count of non-pad tokens up to and including each
                       token, pad tokens at pad_id (RoBERTa: transformers' create_position_ids_from_input_ids,
                       computed from `tokens != pad_id`, not from the attention mask)
    type_vocab_size    rows of the token type table: BERT 2, RoBERTa 1, DistilBERT 0 (no table)
    epsilon            LayerNorm epsilon: BERT / DistilBERT 1e-12, RoBERTa 1e-5
and in their checkpoints' parameter names, which their importers map (cxrjax/weights/hf_text.py).

Parameter names (Flax path <- BertModel name):
    embeddings/{word,position,token_type}_embeddings/embedding   embeddings.*_embeddings.weight
    embeddings/norm                                              embeddings.LayerNorm
    layers_i/...                                                 encoder.layer.i... (decoders/bert.py's doc)
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models import partitioning
from cxrjax.models.decoders.bert import BertLayer
from cxrjax.models.partitioning import EMBED, VOCAB

POSITION_STYLES = ("absolute", "padding_offset")


def padding_offset_positions(tokens: jax.Array, pad_id: int) -> jax.Array:
  """RoBERTa's positions: tokens int32 [batch, length] -> [batch, length], pad_id + 1, pad_id + 2, ... over
  the non-pad tokens, pad_id at pad tokens (wherever they are)."""
  real = (tokens != pad_id).astype(jnp.int32)
  return jnp.cumsum(real, axis=-1) * real + pad_id


class TextEmbeddings(nn.Module):
  """Word + position (+ token type) embeddings, LayerNorm, dropout (`BertEmbeddings` with token types)."""

  vocab_size: int
  hidden_size: int
  max_positions: int
  type_vocab_size: int = 2
  epsilon: float = 1e-12
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    init = nn.initializers.normal(0.02)  # transformers' initializer_range.
    self.word_embeddings = nn.Embed(
      self.vocab_size, self.hidden_size, embedding_init=partitioning.logical(init, (VOCAB, EMBED))
    )
    self.position_embeddings = nn.Embed(
      self.max_positions, self.hidden_size, embedding_init=partitioning.logical(init, (None, EMBED))
    )
    if self.type_vocab_size:
      self.token_type_embeddings = nn.Embed(
        self.type_vocab_size, self.hidden_size, embedding_init=partitioning.logical(init, (None, EMBED))
      )
    self.norm = nn.LayerNorm(epsilon=self.epsilon, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(
    self, tokens: jax.Array, positions: jax.Array, token_types: jax.Array | None = None, train: bool = False
  ) -> jax.Array:
    """tokens, positions, token_types int32 [batch, length] (token_types None: all 0) -> [batch, length,
    hidden]."""
    x = self.word_embeddings(tokens) + self.position_embeddings(positions)
    if self.type_vocab_size:
      x = x + self.token_type_embeddings(jnp.zeros_like(tokens) if token_types is None else token_types)
    elif token_types is not None:
      raise ValueError("token_types given to embeddings without a token type table (type_vocab_size 0)")
    return self.dropout(self.norm(x.astype(self.dtype)), deterministic=not train)


class TextEncoder(nn.Module):
  """A BERT-family encoder (module doc): tokens and an attention mask -> hidden states.

  __call__(tokens, mask, token_types=None, output_hidden_states=False)
    tokens int32 [batch, length]; mask [batch, length] (1 / True: a real token that may be attended to,
    0: padding no query attends to; every row needs one real token); token_types int32 [batch, length] (None: all 0)
    -> the last hidden state [batch, length, hidden], or with `output_hidden_states` the pair (last,
    every hidden state [layers + 1, batch, length, hidden]: the embeddings' output, then each layer's,
    as transformers' `output_hidden_states`)
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int = 512
  type_vocab_size: int = 2
  positions: str = "absolute"
  pad_id: int = 0
  epsilon: float = 1e-12
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    if self.positions not in POSITION_STYLES:
      raise ValueError(f"positions {self.positions!r} is not one of {POSITION_STYLES}")
    self.embeddings = TextEmbeddings(
      self.vocab_size,
      self.hidden_size,
      self.max_positions,
      self.type_vocab_size,
      self.epsilon,
      self.dropout_rate,
      dtype=self.dtype,
    )
    self.layers = [
      BertLayer(
        self.hidden_size,
        self.num_heads,
        self.intermediate_size,
        epsilon=self.epsilon,
        dropout_rate=self.dropout_rate,
        attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype,
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
    if self.positions == "absolute":
      positions = jnp.broadcast_to(jnp.arange(tokens.shape[-1]), tokens.shape)
    else:
      positions = padding_offset_positions(tokens, self.pad_id)
    x = self.embeddings(tokens, positions, token_types, train)
    keys_mask = mask.astype(jnp.bool_)[:, None, None, :]  # [batch, 1, 1, length]: every query, every head.
    states = [x]
    for layer in self.layers:
      keys, values = layer.self_keys_values(x)
      x = layer(x, [(keys, values, keys_mask)], {}, train)
      states.append(x)
    return (x, jnp.stack(states)) if output_hidden_states else x
