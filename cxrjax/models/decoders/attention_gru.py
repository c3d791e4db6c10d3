"""The seeds' attention decoder step: additive attention over image regions, then a GRU."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ATTENTION_KINDS = ("bahdanau", "concat")


class Attention(nn.Module):
  """Additive attention of a decoder state over image regions.

  "bahdanau": score = v . tanh(W_q q + W_k k)  (Bahdanau et al. 2015), keys projected once per study;
  "concat":   score = v . tanh(W [q; k])       (Luong et al. 2015, global attention, "concat" score),
              computed literally on the concatenation, as seed 000 describes it.
  """

  kind: str
  attention_dim: int
  dtype: Any = jnp.float32

  def setup(self):
    if self.kind not in ATTENTION_KINDS:
      raise ValueError(f"unknown attention {self.kind!r}; expected one of {ATTENTION_KINDS}")
    if self.kind == "bahdanau":
      self.key_projection = nn.Dense(self.attention_dim, use_bias=False, dtype=self.dtype)
      self.query_projection = nn.Dense(self.attention_dim, dtype=self.dtype)
    else:
      self.concat_projection = nn.Dense(self.attention_dim, dtype=self.dtype)
    self.score = nn.Dense(1, use_bias=False, dtype=self.dtype)

  def project_keys(self, regions: jax.Array) -> jax.Array:
    """[batch, regions, dim] -> what `__call__` takes as keys (projected once for Bahdanau)."""
    return self.key_projection(regions) if self.kind == "bahdanau" else regions

  def __call__(self, query: jax.Array, keys: jax.Array, regions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """query [batch, hidden], keys from project_keys, regions [batch, regions, dim]
    -> (context [batch, dim], weights [batch, regions])."""
    if self.kind == "bahdanau":
      hidden = jnp.tanh(keys + self.query_projection(query)[:, None, :])  # [batch, regions, attention]
    else:
      tiled = jnp.broadcast_to(query[:, None, :], keys.shape[:2] + query.shape[-1:])  # [batch, regions, hidden]
      hidden = jnp.tanh(self.concat_projection(jnp.concatenate([tiled, keys], axis=-1)))
    scores = self.score(hidden)[..., 0].astype(jnp.float32)  # [batch, regions]
    weights = jax.nn.softmax(scores, axis=-1)
    context = jnp.einsum("br,brd->bd", weights, regions.astype(jnp.float32))  # [batch, dim]
    return context, weights


class AttentionGRUStep(nn.Module):
  """The seeds' one-step decoder: embed the previous word, attend over the regions with the previous
  state, GRU on [context; embedding], then a Dense over the vocabulary from [state; context]."""

  vocab_size: int
  embed_dim: int
  hidden_dim: int
  attention: str
  attention_dim: int
  dropout_rate: float
  dtype: Any = jnp.float32

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.embed_dim)
    self.attend = Attention(self.attention, self.attention_dim, dtype=self.dtype)
    self.gru = nn.GRUCell(self.hidden_dim, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.output = nn.Dense(self.vocab_size, dtype=jnp.float32)

  def project_keys(self, regions: jax.Array) -> jax.Array:
    return self.attend.project_keys(regions)

  def __call__(
    self, state: jax.Array, tokens: jax.Array, keys: jax.Array, regions: jax.Array, train: bool
  ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """state [batch, hidden], tokens [batch] -> (state, (logits [batch, vocab], weights [batch, regions]))."""
    embedded = self.embed(tokens)  # [batch, embed]
    context, weights = self.attend(state, keys, regions)
    state, _ = self.gru(state, jnp.concatenate([context, embedded], axis=-1).astype(self.dtype))
    features = self.dropout(jnp.concatenate([state, context], axis=-1), deterministic=not train)
    return state, (self.output(features), weights)
