"""CheXNet (Rajpurkar et al., 2017): DenseNet-121 with a sigmoid head over the 14 ChestX-ray14 findings.

The family of ported CheXNet weights (`cxrjax port-weights`, weights/chexnet.py), which `classify` and `serve
--weights` predict with through the classification task like any trained classifier; it also trains from a
config (model.name "chexnet", an `encoder` DenseNet section and num_classes).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxrjax.models import base
from cxrjax.models.encoders import densenet


@base.FAMILIES.register("chexnet")
class CheXNet(base.Classifier):
  """images [batch, H, W, 3] -> DenseNet's outputs (module doc of models/encoders/densenet.py), "logits"
  [batch, classes] among them. The DenseNet's variables sit under "densenet"."""

  backbone: densenet.DenseNetConfig = densenet.DENSENET121
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: None, is_frozen: base.IsFrozen):
    del vocab_size, is_frozen
    dtype = base.module_fields(dict(dtype=config.get("dtype", "float32")))["dtype"]
    return cls(backbone=densenet.config_from_section(config.encoder, num_classes=config.num_classes), dtype=dtype)

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(name="chexnet", encoder=densenet.tiny_config(), num_classes=5))

  @staticmethod
  def wrap(variables: dict[str, Any]) -> dict[str, Any]:
    """A DenseNet's variables (weights/chexnet.load_chexnet) -> this module's."""
    return {collection: {"densenet": tree} for collection, tree in variables.items()}

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    return densenet.DenseNet(self.backbone, dtype=self.dtype, name="densenet")(images, train=train)
