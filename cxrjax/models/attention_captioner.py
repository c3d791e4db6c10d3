"""Report generators over two views: the CheXNet image encoder and the seed-000/001 attention decoder.

Every captioner here exposes the same four entry points (used by the trainer and by decoding.py):

  __call__(images, tokens, train)  teacher forcing: images [batch, views, H, W, 3], tokens [batch, length]
                                   (the input words, from <start>) -> {"logits": [batch, length, vocab],
                                   "attention": [batch, length, regions]}
  encode(images, train)            -> memory, a dict of [batch, ...] arrays (image features)
  init_cache(memory)               -> cache, the decoder state plus the memory, [batch, ...] leaves
  decode_step(tokens, cache)       -> (logits [batch, vocab], cache, attention [batch, regions]):
                                   one step, the step function of greedy and beam search

so that the same trainer, decoder and evaluation serve every model family.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models.encoders import densenet

ATTENTION_KINDS = ("bahdanau", "concat")


def decoder_step_fn(model, variables):
  """`decode_step` of a captioner as decoding.py's step function `(tokens, cache, position) ->
  (logits, cache)` (recurrent decoders carry their position in their state)."""
  def step_fn(tokens, cache, position):
    del position
    logits, cache, _ = model.apply(variables, tokens, cache, method="decode_step")
    return logits, cache
  return step_fn


class ImageEncoder(nn.Module):
  """DenseNet-121 (CheXNet) over each view; returns every view's feature-map cells as regions.

  images [batch, views, H, W, 3] -> {"regions": [batch, views * h * w, channels] (2 x 7 x 7 = 98
  regions of 1024 at 224x224), "pooled": [batch, views * channels] (views concatenated, as the seeds),
  "feature_map": [batch, views, h, w, channels] (the same cells as maps, for spatial encoders)}.
  A frozen encoder (the seeds' default) runs its batch norm in inference mode and passes no gradient.
  `images` may also be the cached outputs of a frozen encoder, {"feature_map", "pooled"} as
  cxrjax/features.py stores them; then no DenseNet runs (the parameters still exist, as `init` with
  images created them).
  """
  config: densenet.DenseNetConfig
  frozen: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array | dict[str, jax.Array], train: bool = False) -> dict[str, jax.Array]:
    if isinstance(images, dict):
      return self._from_cached(images)
    batch, views = images.shape[:2]
    flat_images = images.reshape((batch * views,) + images.shape[2:])  # [batch * views, H, W, 3]
    outputs = densenet.DenseNet(self.config, dtype=self.dtype, name="densenet")(
        flat_images, train=train and not self.frozen)
    feature_map = outputs["feature_map"]  # [batch * views, h, w, channels]
    _, height, width, channels = feature_map.shape
    regions = feature_map.reshape(batch, views * height * width, channels)  # [batch, regions, channels]
    pooled = outputs["pooled"].reshape(batch, views * channels)  # [batch, views * channels]
    result = {"regions": regions.astype(jnp.float32), "pooled": pooled,
              "feature_map": feature_map.reshape((batch, views) + feature_map.shape[1:])}
    if self.frozen:
      result = jax.tree.map(jax.lax.stop_gradient, result)
    return result

  def _from_cached(self, cached: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """{"feature_map": [batch, views, h, w, channels], "pooled": [batch, views * channels]} -> outputs."""
    if not self.frozen:
      raise ValueError("cached encoder features need a frozen encoder")
    feature_map = cached["feature_map"].astype(jnp.float32)
    batch, views, height, width, channels = feature_map.shape
    regions = feature_map.reshape(batch, views * height * width, channels)  # [batch, regions, channels]
    return {"regions": regions, "pooled": cached["pooled"].astype(jnp.float32), "feature_map": feature_map}


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

  def __call__(self, state: jax.Array, tokens: jax.Array, keys: jax.Array, regions: jax.Array,
               train: bool) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    """state [batch, hidden], tokens [batch] -> (state, (logits [batch, vocab], weights [batch, regions]))."""
    embedded = self.embed(tokens)  # [batch, embed]
    context, weights = self.attend(state, keys, regions)
    state, _ = self.gru(state, jnp.concatenate([context, embedded], axis=-1).astype(self.dtype))
    features = self.dropout(jnp.concatenate([state, context], axis=-1), deterministic=not train)
    return state, (self.output(features), weights)


class AttentionCaptioner(nn.Module):
  """Seeds 000/001 attention model: CheXNet regions of both views -> projection -> attention GRU.

  Attributes:
    vocab_size: output vocabulary, special tokens included.
    encoder: DenseNet architecture (DenseNet-121 for CheXNet weights; tiny ones in tests).
    freeze_encoder: the seeds freeze CheXNet; False fine-tunes it.
    attention: "bahdanau" or "concat" (Luong global attention); see `Attention`.
    initial_state: "zeros" (seed 001: s1 is zeros) or "pooled" (tanh(Dense(mean region)), Show, Attend
      and Tell's initialisation).
  """
  vocab_size: int
  encoder: densenet.DenseNetConfig = densenet.DENSENET121
  freeze_encoder: bool = True
  region_dim: int = 512
  embed_dim: int = 300
  hidden_dim: int = 512
  attention: str = "bahdanau"
  attention_dim: int = 512
  dropout_rate: float = 0.2
  initial_state: str = "zeros"
  dtype: Any = jnp.float32

  def setup(self):
    if self.initial_state not in ("zeros", "pooled"):
      raise ValueError(f"initial_state must be 'zeros' or 'pooled', got {self.initial_state!r}")
    self.image_encoder = ImageEncoder(self.encoder, frozen=self.freeze_encoder, dtype=self.dtype)
    self.region_projection = nn.Dense(self.region_dim, dtype=self.dtype)
    self.region_dropout = nn.Dropout(self.dropout_rate)
    self.decoder = AttentionGRUStep(
        self.vocab_size, self.embed_dim, self.hidden_dim, self.attention, self.attention_dim,
        self.dropout_rate, dtype=self.dtype)
    if self.initial_state == "pooled":
      self.state_projection = nn.Dense(self.hidden_dim, dtype=self.dtype)

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [batch, views, H, W, 3] -> {"regions": [batch, regions, region_dim], "keys": [...]}."""
    features = self.image_encoder(images, train=train)
    regions = nn.relu(self.region_projection(features["regions"]))  # [batch, regions, region_dim]
    regions = self.region_dropout(regions, deterministic=not train).astype(jnp.float32)
    return {"regions": regions, "keys": self.decoder.project_keys(regions)}

  def init_cache(self, memory: dict[str, jax.Array]) -> dict[str, jax.Array]:
    regions = memory["regions"]
    if self.initial_state == "zeros":
      state = jnp.zeros((regions.shape[0], self.hidden_dim), jnp.float32)
    else:
      state = jnp.tanh(self.state_projection(regions.mean(axis=1))).astype(jnp.float32)
    return dict(memory, state=state)

  def decode_step(self, tokens: jax.Array, cache: dict[str, jax.Array], train: bool = False):
    """tokens [batch] -> (logits [batch, vocab], cache, attention [batch, regions])."""
    state, (logits, weights) = self.decoder(cache["state"], tokens, cache["keys"], cache["regions"], train)
    return logits, dict(cache, state=state.astype(jnp.float32)), weights

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Teacher forcing: images [batch, views, H, W, 3], tokens [batch, length] -> logits, attention."""
    cache = self.init_cache(self.encode(images, train=train))

    def step(decoder, state, token):
      return decoder(state, token, cache["keys"], cache["regions"], train)

    scan = nn.scan(step, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
                   in_axes=1, out_axes=1)
    _, (logits, weights) = scan(self.decoder, cache["state"], tokens)  # [batch, length, ...]
    return {"logits": logits, "attention": weights}
