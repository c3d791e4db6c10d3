"""The LSTM decoder step of the simple encoder-decoder (seeds 000/001)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class LSTMStep(nn.Module):
  """One decoder step: embed the previous word, advance the LSTM, add the image vector, predict."""

  vocab_size: int
  embed_dim: int
  hidden_dim: int
  dropout_rate: float
  dtype: Any = jnp.float32

  def setup(self):
    self.embed = nn.Embed(self.vocab_size, self.embed_dim)
    self.lstm = nn.OptimizedLSTMCell(self.hidden_dim, dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)
    self.output = nn.Dense(self.vocab_size, dtype=jnp.float32)

  def __call__(
    self, carry: tuple[jax.Array, jax.Array], tokens: jax.Array, image: jax.Array, train: bool
  ) -> tuple[tuple[jax.Array, jax.Array], jax.Array]:
    """carry (c, h) [batch, hidden] each, tokens [batch], image [batch, hidden]
    -> (carry, logits [batch, vocab])."""
    embedded = self.embed(tokens).astype(self.dtype)  # [batch, embed]
    (cell, hidden), outputs = self.lstm(carry, embedded)
    features = self.dropout(outputs.astype(jnp.float32) + image, deterministic=not train)
    carry = (cell.astype(jnp.float32), hidden.astype(jnp.float32))
    return carry, self.output(features)
