"""Seeds 000/001 attention model: CheXNet regions of both views -> projection -> attention GRU.

    images [batch, views, H, W, 3] -> DenseNet per view -> views * h * w regions (2 x 7 x 7 = 98 at 224)
      -> Dense(region_dim) + ReLU -> dropout                                  [batch, regions, region_dim]
    words (from the start token) -> embedding -> attention over the regions with the previous state
      (Bahdanau or Luong "concat") -> GRU on [context; embedding] -> Dense over [state; context]

Config (configs/iu_xray_attention.py, configs/demo.py): `model.encoder` is the DenseNet section (plus its
image `preprocessing`); the other fields are this module's attributes. Pretrained CheXNet weights come from
`config.init.encoder`; whether CheXNet is frozen from `config.optimizer.param_groups`.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxrjax.models import base
from cxrjax.models.decoders.attention_gru import AttentionGRUStep
from cxrjax.models.encoders import densenet
from cxrjax.models.encoders import image_encoder
from cxrjax.models.encoders.image_encoder import ImageEncoder


@base.FAMILIES.register("attention_captioner")
class AttentionCaptioner(base.Captioner):
  """Seeds 000/001 attention model: CheXNet regions of both views -> projection -> attention GRU.

  Attributes:
    vocab_size: output vocabulary, special tokens included.
    encoder: DenseNet architecture (DenseNet-121 for CheXNet weights; tiny ones in tests).
    freeze_encoder: run the encoder in inference mode without gradients (set by `from_config` from the
      optimizer's param_groups: the seeds freeze CheXNet).
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

  pretrained_parts = {"encoder": base.PretrainedPart("densenet", ("image_encoder/densenet",))}

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int, is_frozen: base.IsFrozen):
    return cls(**image_encoder.captioner_fields(config, vocab_size, is_frozen))

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
      dict(
        name="attention_captioner",
        encoder=densenet.tiny_config(),
        region_dim=16,
        embed_dim=8,
        hidden_dim=16,
        attention="concat",
        attention_dim=16,
        dropout_rate=0.1,
        initial_state="zeros",
        dtype="float32",
      )
    )

  def setup(self):
    if self.initial_state not in ("zeros", "pooled"):
      raise ValueError(f"initial_state must be 'zeros' or 'pooled', got {self.initial_state!r}")
    self.image_encoder = ImageEncoder(self.encoder, frozen=self.freeze_encoder, dtype=self.dtype)
    self.region_projection = nn.Dense(self.region_dim, dtype=self.dtype)
    self.region_dropout = nn.Dropout(self.dropout_rate)
    self.decoder = AttentionGRUStep(
      self.vocab_size,
      self.embed_dim,
      self.hidden_dim,
      self.attention,
      self.attention_dim,
      self.dropout_rate,
      dtype=self.dtype,
    )
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

  def decode_step(
    self, tokens: jax.Array, cache: dict[str, jax.Array], position: jax.Array | None = None, train: bool = False
  ):
    """tokens [batch] -> (logits [batch, vocab], cache, attention [batch, regions]); the GRU state
    carries the position."""
    del position
    state, (logits, weights) = self.decoder(cache["state"], tokens, cache["keys"], cache["regions"], train)
    return logits, dict(cache, state=state.astype(jnp.float32)), weights

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Teacher forcing: images [batch, views, H, W, 3], tokens [batch, length] -> logits, attention."""
    cache = self.init_cache(self.encode(images, train=train))

    def step(decoder, state, token):
      return decoder(state, token, cache["keys"], cache["regions"], train)

    scan = nn.scan(
      step, variable_broadcast="params", split_rngs={"params": False, "dropout": True}, in_axes=1, out_axes=1
    )
    _, (logits, weights) = scan(self.decoder, cache["state"], tokens)  # [batch, length, ...]
    return {"logits": logits, "attention": weights}
