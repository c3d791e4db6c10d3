"""Seeds 000/001 simple encoder-decoder: pooled CheXNet features of two views -> LSTM initial state.

    pooled features of both views [batch, 2 * 1024]
      -> dropout -> Dense(hidden) + ReLU = image vector v            [batch, hidden]
    words (from <start>) -> embedding (pretrained GloVe / fastText rows, trainable or frozen)
      -> LSTM with initial state h0 = c0 = v                          [batch, length, hidden]
      -> + v (image and text added, as seed 000) -> dropout -> Dense  [batch, length, vocab]

The image vector is both the initial state and a term of every output, as seed 000's Keras model
passes `initial_state=[image_dense, image_dense]` and adds the Dense output to the LSTM's. The ReLU on
the image Dense is this implementation's choice (the seeds do not name one).

The captioner interface of models/base.py (`__call__`, `encode`, `init_cache`, `decode_step`) is kept
with one difference: there is no attention, so the attention outputs are None (`__call__`'s
"attention" entry and `decode_step`'s third output). None, not an empty array, is what
`cxrjax predict` reads as "this model has no attention maps"; decoding and evaluation never use it.

Pretrained word vectors and freezing are training options, not attributes: `config.init.word_vectors`
is written into `decoder/embed/embedding` (cxrjax/weights/pretrained.py) and a param group
`("decoder/embed/.*", None)` in `config.optimizer.param_groups` freezes it (seed 001).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import ml_collections

from cxrjax.models import base
from cxrjax.models.decoders.lstm import LSTMStep
from cxrjax.models.encoders import densenet
from cxrjax.models.encoders import image_encoder
from cxrjax.models.encoders.image_encoder import ImageEncoder


@base.FAMILIES.register("lstm_captioner")
class LSTMCaptioner(base.Captioner):
  """Seeds 000/001 baseline: pooled CheXNet features of both views -> Dense -> LSTM initial state.

  Attributes:
    vocab_size: output vocabulary, special tokens included.
    encoder: DenseNet architecture (DenseNet-121 for CheXNet weights; tiny ones in tests).
    freeze_encoder: run the encoder in inference mode without gradients (from the param groups).
    embed_dim: word embedding size (300 for GloVe 300d / fastText).
    hidden_dim: LSTM size, also the size of the image vector (its initial state).
    dropout_rate: on the pooled image features and before the output layer.
  """

  vocab_size: int
  encoder: densenet.DenseNetConfig = densenet.DENSENET121
  freeze_encoder: bool = True
  embed_dim: int = 300
  hidden_dim: int = 512
  dropout_rate: float = 0.2
  dtype: Any = jnp.float32

  pretrained_parts = {
    "encoder": base.PretrainedPart("densenet", ("image_encoder/densenet",)),
    "word_vectors": base.PretrainedPart("word_vectors", ("decoder/embed/embedding",)),
  }

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: int, is_frozen: base.IsFrozen):
    return cls(**image_encoder.captioner_fields(config, vocab_size, is_frozen))

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
      dict(
        name="lstm_captioner",
        encoder=densenet.tiny_config(),
        embed_dim=8,
        hidden_dim=16,
        dropout_rate=0.1,
        dtype="float32",
      )
    )

  def setup(self):
    self.image_encoder = ImageEncoder(self.encoder, frozen=self.freeze_encoder, dtype=self.dtype)
    self.image_dropout = nn.Dropout(self.dropout_rate)
    self.image_dense = nn.Dense(self.hidden_dim, dtype=self.dtype)
    self.decoder = LSTMStep(self.vocab_size, self.embed_dim, self.hidden_dim, self.dropout_rate, dtype=self.dtype)

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [batch, views, H, W, 3] -> {"image": [batch, hidden]} (the image vector)."""
    pooled = self.image_encoder(images, train=train)["pooled"]  # [batch, views * channels]
    pooled = self.image_dropout(pooled, deterministic=not train)
    return {"image": nn.relu(self.image_dense(pooled.astype(self.dtype))).astype(jnp.float32)}

  def init_cache(self, memory: dict[str, jax.Array]) -> dict[str, jax.Array]:
    """The LSTM state starts as the image vector (h0 = c0 = image), which is also kept for the sum."""
    image = memory["image"]
    return {"image": image, "cell": image, "hidden": image}

  def decode_step(
    self, tokens: jax.Array, cache: dict[str, jax.Array], position: jax.Array | None = None, train: bool = False
  ):
    """tokens [batch] -> (logits [batch, vocab], cache, None: no attention)."""
    del position  # The LSTM state carries it.
    (cell, hidden), logits = self.decoder((cache["cell"], cache["hidden"]), tokens, cache["image"], train)
    return logits, dict(cache, cell=cell, hidden=hidden), None

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Teacher forcing: images [batch, views, H, W, 3], tokens [batch, length]
    -> {"logits": [batch, length, vocab], "attention": None}."""
    cache = self.init_cache(self.encode(images, train=train))

    def step(decoder, carry, token):
      return decoder(carry, token, cache["image"], train)

    scan = nn.scan(
      step, variable_broadcast="params", split_rngs={"params": False, "dropout": True}, in_axes=1, out_axes=1
    )
    _, logits = scan(self.decoder, (cache["cell"], cache["hidden"]), tokens)  # [batch, length, vocab]
    return {"logits": logits, "attention": None}
