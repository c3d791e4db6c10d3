"""The CheXNet image encoder of the report generators: one DenseNet over every view of a study."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cxrjax.models import base
from cxrjax.models.encoders import densenet


class ImageEncoder(nn.Module):
  """DenseNet-121 (CheXNet) over each view; returns every view's feature-map cells as regions.

  images [batch, views, H, W, 3] -> {"regions": [batch, views * h * w, channels] (2 x 7 x 7 = 98
  regions of 1024 at 224x224), "pooled": [batch, views * channels] (views concatenated, as the seeds),
  "feature_map": [batch, views, h, w, channels] (the same cells as maps, for spatial encoders)}.
  A frozen encoder (the seeds' default) runs its batch norm in inference mode and passes no gradient.
  `images` may also be the cached outputs of a frozen encoder, {"feature_map", "pooled"} as
  cxrjax/tasks/feature_cache.py stores them; then no DenseNet runs (the parameters still exist, as `init` with
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
      flat_images, train=train and not self.frozen
    )
    feature_map = outputs["feature_map"]  # [batch * views, h, w, channels]
    _, height, width, channels = feature_map.shape
    regions = feature_map.reshape(batch, views * height * width, channels)  # [batch, regions, channels]
    pooled = outputs["pooled"].reshape(batch, views * channels)  # [batch, views * channels]
    result = {
      "regions": regions.astype(jnp.float32),
      "pooled": pooled,
      "feature_map": feature_map.reshape((batch, views) + feature_map.shape[1:]),
    }
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


def captioner_fields(config, vocab_size: int, is_frozen: base.IsFrozen) -> dict[str, Any]:
  """The attributes of a captioner over this encoder from its config section: the DenseNet of
  `config.encoder`, frozen when the optimizer's param_groups freeze "image_encoder", and the rest."""
  return dict(
    vocab_size=vocab_size,
    encoder=densenet.config_from_section(config.encoder),
    freeze_encoder=is_frozen("image_encoder"),
    **base.module_fields(config, exclude=("encoder",)),
  )
