"""GIT (Wang et al., 2022): a CLIP ViT whose image tokens prefix a self-attention text decoder, as
transformers' `GitForCausalLM` (microsoft/git-base).

    images [batch, views, S, S, 3] -> view 0 -> CLIP ViT (`image_encoder`, post_layernorm on all tokens)
      -> `visual_projection` Dense + `visual_projection_norm` LayerNorm      image tokens [batch, I, hidden]
                                                                           (I = (S/P)^2 + 1: 197 for git-base)
    tokens (from [CLS]) -> word + position embeddings (text positions from 0) -> LayerNorm (`embeddings`)
                                                                           text [batch, length, hidden]
    [image tokens; text] -> post-norm BERT layers (`text_decoder`, exact GELU) with GIT's mask: image queries see
      every image key and no text; text queries see every image key and the text up to themselves
      -> the text rows -> untied `output` Dense                           logits [batch, length, vocab]

Decoding: `init_cache` runs the image tokens through the layers once (they never see text, so their
outputs do not depend on it) and keeps every layer's image keys and values as the cache's prefix
(cxrjax/models/decoders/bert.py); each `decode_step` then adds one text token at `position` (0: [CLS]).
`cache_length` text positions fit the cache, so `config.decode.max_length` must not exceed it.

Config (`model` section): `encoder` is the ViT section (models/encoders/vit.py, plus its image
`preprocessing`); the other fields are this module's attributes. The importer
(cxrjax/weights/hf_git.py) fills them from a checkpoint's config.json; whether the ViT is frozen comes
from `config.optimizer.param_groups` ("image_encoder/.*").
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxrjax.models import base, partitioning
from cxrjax.models.decoders import bert
from cxrjax.models.encoders import vit
from cxrjax.models.partitioning import EMBED, VOCAB


@base.FAMILIES.register("git")
class GitCaptioner(base.Captioner):
  """GIT; see the module doc. Sizes as microsoft/git-base by default.

  Attributes:
    vocab_size: output vocabulary, special tokens included (git-base: bert-base-uncased's 30522).
    encoder: the CLIP ViT.
    freeze_encoder: run the ViT without gradients (from the optimizer's param_groups).
    hidden_size, num_layers, num_heads, intermediate_size: the text decoder's (transformers' GitConfig).
    max_positions: rows of the text position table (max_position_embeddings).
    layer_norm_eps: the text LayerNorms' epsilon (embeddings and layers; GitConfig.layer_norm_eps).
    projection_eps: the visual projection's LayerNorm epsilon (GitVisionConfig.layer_norm_eps).
    dropout_rate, attention_dropout_rate: hidden_dropout_prob, attention_probs_dropout_prob (training).
    cache_length: text positions the KV cache holds.
  """

  vocab_size: int
  encoder: vit.ViTConfig = vit.CLIP_B16
  freeze_encoder: bool = False
  hidden_size: int = 768
  num_layers: int = 6
  num_heads: int = 12
  intermediate_size: int = 3072
  max_positions: int = 1024
  layer_norm_eps: float = 1e-12
  projection_eps: float = 1e-5
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  cache_length: int = 64
  dtype: Any = jnp.float32

  decode_limit_field = "cache_length"  # Decoding feeds positions 0 .. max_length - 1 into the KV cache.

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int, is_frozen: base.IsFrozen):
    return cls(
      vocab_size=vocab_size,
      encoder=vit.config_from_section(config.encoder),
      freeze_encoder=is_frozen("image_encoder"),
      **base.module_fields(config, exclude=("encoder",)),
    )

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
      dict(
        name="git",
        encoder=vit.tiny_config(),
        hidden_size=24,
        num_layers=2,
        num_heads=2,
        intermediate_size=48,
        max_positions=32,
        layer_norm_eps=1e-12,
        projection_eps=1e-5,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        cache_length=16,
        dtype="float32",
      )
    )

  def setup(self):
    if self.cache_length > self.max_positions:
      raise ValueError(f"cache_length {self.cache_length} exceeds max_positions {self.max_positions}")
    self.image_encoder = vit.VisionTransformer(self.encoder, dtype=self.dtype)
    self.visual_projection = nn.Dense(self.hidden_size, dtype=self.dtype)
    self.visual_projection_norm = nn.LayerNorm(epsilon=self.projection_eps, dtype=self.dtype)
    self.embeddings = bert.BertEmbeddings(
      self.vocab_size,
      self.hidden_size,
      self.max_positions,
      epsilon=self.layer_norm_eps,
      dropout_rate=self.dropout_rate,
      dtype=self.dtype,
    )
    self.text_decoder = bert.BertStack(
      self.num_layers,
      self.hidden_size,
      self.num_heads,
      self.intermediate_size,
      cross_attention=False,
      epsilon=self.layer_norm_eps,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      dtype=self.dtype,
    )
    self.output = partitioning.dense(self.vocab_size, (EMBED, VOCAB), self.dtype)

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [batch, views, S, S, 3] (view 0 is used) -> {"image_tokens": [batch, I, hidden]}."""
    features = self.image_encoder(images[:, 0])  # [batch, I, vision hidden]
    if self.freeze_encoder:
      features = jax.lax.stop_gradient(features)
    image_tokens = self.visual_projection_norm(self.visual_projection(features))
    return {"image_tokens": image_tokens.astype(jnp.float32)}

  def init_cache(self, memory: dict[str, jax.Array], train: bool = False) -> dict[str, Any]:
    """-> {"layers_N": {"prefix_keys", "prefix_values" (the image tokens'), "self_keys", "self_values"}}."""
    image_tokens = memory["image_tokens"].astype(self.dtype)
    cache, _ = self.text_decoder.init_cache(image_tokens.shape[0], self.cache_length, prefix=image_tokens, train=train)
    return cache

  def decode_step(
    self, tokens: jax.Array, cache: dict[str, Any], position: jax.Array | None = None, train: bool = False
  ):
    """tokens [batch] at text `position` (int32 scalar, < cache_length) -> (logits [batch, vocab], cache,
    None)."""
    if position is None:
      raise ValueError("GitCaptioner.decode_step needs the token's position (its KV cache slot)")
    x = self.embeddings(tokens, jnp.full(tokens.shape, position, jnp.int32), train=train)  # [batch, hidden]
    x, cache = self.text_decoder.step(x, cache, position, train=train)
    return self.output(x).astype(jnp.float32), cache, None

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> dict[str, Any]:
    """Teacher forcing: images [batch, views, S, S, 3], tokens [batch, length] -> {"logits": [batch,
    length, vocab] (the text positions only), "attention": None}."""
    image_tokens = self.encode(images, train=train)["image_tokens"].astype(self.dtype)
    num_image, length = image_tokens.shape[1], tokens.shape[1]
    text = self.embeddings(tokens, jnp.arange(length)[None, :], train=train)  # [batch, length, hidden]
    x = jnp.concatenate([image_tokens, text.astype(self.dtype)], axis=1)  # [batch, I + length, hidden]
    x = self.text_decoder(x, git_mask(num_image, length), train=train)
    return {"logits": self.output(x[:, num_image:]).astype(jnp.float32), "attention": None}


def git_mask(num_image: int, length: int) -> jax.Array:
  """[1, 1, I + length, I + length] bool (True: may attend): every query sees the image keys; text
  queries also see the text up to themselves; image queries see no text."""
  total = num_image + length
  query, key = jnp.arange(total)[:, None], jnp.arange(total)[None, :]
  text_query = query >= num_image
  allowed = (key < num_image) | (text_query & (key <= query))
  return allowed[None, None]
