"""Salesforce BLIP's captioner (transformers' `BlipForConditionalGeneration`): a ViT, and a BERT decoder that
cross-attends to every image token.

    images [batch, views, H, W, 3] -> view 0 -> ViT (`image_encoder`: patch conv with bias, class token,
      position embedding, no pre-norm, pre-norm layers with exact GELU, `post_layernorm`)
                                                                   memory [batch, 1 + (H/P)^2, vision width]
    decoder input [prompt_ids..., caption tokens...] -> `embeddings` (word + position, LayerNorm)
      -> post-norm BERT layers (`decoder`: causal self-attention, cross-attention to the memory,
         feed-forward; cxrjax/models/decoders/bert.py)
      -> head: `head_dense` -> exact GELU -> `head_norm` -> the word table's transpose (tied) + `output_bias`
                                                                   logits [batch, length, vocab]

The prompt. BLIP captions after a text prompt ("a picture of"): transformers' `generate(pixel_values,
input_ids)` feeds [DEC] a picture of, then generates. `prompt_ids` holds those ids, from the start token
([DEC] 30522, 1037, 3861, 1997); () means no prompt (the caption follows the tokens' own start token). With a
prompt, teacher forcing runs [prompt_ids, caption tokens after the start token] and returns the logits of
the positions that predict caption tokens only, so the captioning loss never sees the prompt (BLIP's
recipe masks it); decoding prefills the KV cache with prompt_ids[:-1] (`init_cache`) and `decode_step` at
position 0 feeds prompt_ids[-1] in place of the start token, its position embedding offset by the prefix.
The trainer, decoding and the tokenizer stay as for any captioner: `tokens` are [start] caption [end].

Config (`model` section): `encoder` is the ViT section (cxrjax/models/encoders/vit.py, plus its image
`preprocessing`); the other fields are this module's attributes, filled from config.json by
cxrjax/weights/hf_blip.py. Whether the ViT is frozen comes from `config.optimizer.param_groups`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxrjax.core.errors import ConfigError
from cxrjax.models import base, partitioning
from cxrjax.models.decoders import bert
from cxrjax.models.encoders import vit
from cxrjax.models.partitioning import VOCAB


@base.FAMILIES.register("blip")
class BlipCaptioner(base.Captioner):
  """BLIP's captioner; see the module doc. Names of transformers' BlipTextConfig fields in brackets.

  Attributes:
    vocab_size: output vocabulary, BLIP's added [DEC] and [ENC] included [vocab_size].
    encoder: the ViT (blip-base: 384 x 384, patch 16, width 768).
    freeze_encoder: the ViT passes no gradient (set by `from_config` from the optimizer's param_groups).
    hidden_size, num_heads, num_layers, intermediate_size: the text decoder [hidden_size,
      num_attention_heads, num_hidden_layers, intermediate_size].
    layer_norm_eps: the text LayerNorms' epsilon [layer_norm_eps].
    max_positions: rows of the text position table [max_position_embeddings].
    dropout_rate, attention_dropout_rate: [hidden_dropout_prob, attention_probs_dropout_prob].
    prompt_ids: the decoder's ids before the caption, from the start token (module doc); () for none.
    cache_length: decoded positions the KV cache holds (at least config.decode.max_length).
  """

  vocab_size: int
  encoder: vit.ViTConfig = vit.BLIP_B16_384
  freeze_encoder: bool = False
  hidden_size: int = 768
  num_heads: int = 12
  num_layers: int = 12
  intermediate_size: int = 3072
  layer_norm_eps: float = 1e-12
  max_positions: int = 512
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  prompt_ids: tuple[int, ...] = ()
  cache_length: int = 64
  dtype: Any = jnp.float32

  decode_limit_field = "cache_length"  # Decoding feeds positions 0 .. max_length - 1 into the KV cache.

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int, is_frozen: base.IsFrozen):
    fields = base.module_fields(config, exclude=("encoder", "prompt_ids"))
    prompt_ids = tuple(int(i) for i in config.prompt_ids)
    if any(not 0 <= i < vocab_size for i in prompt_ids):
      # An id past the embedding table reads NaN (JAX's out-of-bounds gather fill): a run would train on
      # NaN losses. BLIP's prompt needs its vocabulary (bert-base-uncased with [DEC] and [ENC]: 30524).
      raise ConfigError(
        f"config.model.prompt_ids={list(prompt_ids)}: ids outside the vocabulary of {vocab_size} "
        "tokens; give the tokenizer the prompt was written for (config.data.tokenizer)"
      )
    return cls(
      vocab_size=vocab_size,
      encoder=vit.config_from_section(config.encoder),
      freeze_encoder=is_frozen("image_encoder"),
      prompt_ids=prompt_ids,
      **fields,
    )

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    # A two-token prompt (the start token and id 4), so that the contract test runs the prompt's path.
    encoder = dict(
      vit.tiny_config(),
      activation="gelu",
      patch_bias=True,
      pre_norm=False,
      layer_norm_eps=1e-6,
      preprocessing=dict(normalization="clip", resize_filter="bicubic", resize_rule="square"),
    )
    return ml_collections.ConfigDict(
      dict(
        name="blip",
        encoder=encoder,
        hidden_size=24,
        num_heads=2,
        num_layers=2,
        intermediate_size=32,
        layer_norm_eps=1e-12,
        max_positions=32,
        dropout_rate=0.1,
        attention_dropout_rate=0.1,
        prompt_ids=(2, 4),
        cache_length=16,
        dtype="float32",
      )
    )

  def setup(self):
    prefix = max(len(self.prompt_ids) - 1, 0)
    if prefix + self.cache_length > self.max_positions:
      raise ValueError(
        f"the prompt's {prefix} prefix tokens and cache_length {self.cache_length} exceed "
        f"max_positions {self.max_positions}"
      )
    self.image_encoder = vit.VisionTransformer(self.encoder, dtype=self.dtype)
    self.embeddings = bert.BertEmbeddings(
      self.vocab_size, self.hidden_size, self.max_positions, self.layer_norm_eps, self.dropout_rate, dtype=self.dtype
    )
    self.decoder = bert.BertStack(
      self.num_layers,
      self.hidden_size,
      self.num_heads,
      self.intermediate_size,
      cross_attention=True,
      epsilon=self.layer_norm_eps,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.attention_dropout_rate,
      dtype=self.dtype,
    )
    self.head_dense = nn.Dense(self.hidden_size, dtype=self.dtype)
    self.head_norm = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype)
    self.output_bias = self.param(
      "output_bias", partitioning.logical(nn.initializers.zeros, (VOCAB,)), (self.vocab_size,), jnp.float32
    )

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [batch, views, H, W, 3] (view 0 is used) -> {"memory": [batch, image tokens, vision width]}."""
    memory = self.image_encoder(images[:, 0])
    if self.freeze_encoder:
      memory = jax.lax.stop_gradient(memory)
    return {"memory": memory.astype(jnp.float32)}

  def _logits(self, x: jax.Array) -> jax.Array:
    """Decoder outputs [..., hidden] -> logits [..., vocab] (float32)."""
    x = self.head_norm(nn.gelu(self.head_dense(x), approximate=False))
    return self.embeddings.attend(x).astype(jnp.float32) + self.output_bias

  def _prefix(self) -> tuple[int, ...]:
    """The tokens before the first decoded one: the prompt without its last token."""
    return self.prompt_ids[:-1]

  def init_cache(self, memory: dict[str, jax.Array]) -> dict[str, Any]:
    """-> {"layers_N": the decoder layer's KV cache} (bert.py): cross-attention keys and values of the
    memory, and the prompt's prefix prefilled."""
    memory = memory["memory"]
    batch, prefix = memory.shape[0], self._prefix()
    if not prefix:
      return self.decoder.init_cache(batch, self.cache_length, memory)[0]
    tokens = jnp.broadcast_to(jnp.asarray(prefix, jnp.int32), (batch, len(prefix)))
    x = self.embeddings(tokens, jnp.arange(len(prefix)))
    return self.decoder.init_cache(batch, self.cache_length, memory, x, bert.causal_mask(len(prefix)))[0]

  def decode_step(
    self, tokens: jax.Array, cache: dict[str, Any], position: jax.Array | None = None, train: bool = False
  ):
    """tokens [batch] at `position` (int32 scalar < cache_length; 0: the start token, replaced by the
    prompt's last token when there is a prompt) -> (logits [batch, vocab], cache, None)."""
    if position is None:
      raise ValueError("BlipCaptioner.decode_step needs the token's position (its KV cache slot)")
    if self.prompt_ids:
      tokens = jnp.where(position == 0, jnp.int32(self.prompt_ids[-1]), tokens)
    x = self.embeddings(tokens, jnp.full(tokens.shape, len(self._prefix()) + position, jnp.int32), train=train)
    x, cache = self.decoder.step(x, cache, position, train=train)
    return self._logits(x), cache, None

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> dict[str, Any]:
    """Teacher forcing: images [batch, views, H, W, 3], tokens [batch, length] (from the start token) ->
    {"logits": [batch, length, vocab] (logits[:, t] predicts the token after tokens[:, t]), "attention": None}."""
    memory = self.encode(images, train=train)["memory"]
    prefix = self._prefix()
    if self.prompt_ids:  # [prompt_ids, tokens after the start token]: the prompt replaces the start token.
      prompt = jnp.broadcast_to(jnp.asarray(self.prompt_ids, jnp.int32), (tokens.shape[0], len(self.prompt_ids)))
      tokens = jnp.concatenate([prompt, tokens[:, 1:]], axis=1)  # [batch, len(prefix) + length]
    length = tokens.shape[1]
    if length > self.max_positions:  # An index past the position table would read NaN, not fail.
      raise ValueError(f"{length} decoder positions (prompt included) exceed max_positions {self.max_positions}")
    x = self.embeddings(tokens, jnp.arange(length), train=train)
    x = self.decoder(x, bert.causal_mask(length), memory, train=train)
    return {"logits": self._logits(x[:, len(prefix) :]), "attention": None}
