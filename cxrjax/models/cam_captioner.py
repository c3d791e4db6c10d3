"""Seed 000's custom model: chained context aggregation (CAM) over CheXNet maps, then the attention GRU.

Per view, on CheXNet's third-last-layer output (DenseNet "feature_map", [h, w, channels], 7x7x1024 at
224x224), after the Chained Context Aggregation Module of CaC-Net (Tang et al. 2020), one context flow:

  global flow:  global average pool -> batch norm -> ReLU -> 1x1 conv (channels) -> upsample to h x w
  context flow: concat(feature map, global flow) -> average pool by `pool_factor`
                -> 3x3 conv -> 3x3 conv                      (context fusion; no channel shuffle)
                -> fused * sigmoid(1x1 conv(ReLU(1x1 conv(fused)))) + fused   (context refinement)
                -> transposed conv back to h x w and `channels` filters
  output:       global flow + context flow                                        [h, w, channels]

then both views' cells (views * h * w regions) -> Dense(region_dim, 512 in the seed) -> batch norm
-> dropout -> the attention decoder of attention_captioner.py (the same GRU, attention and entry points).

Choices the seed leaves open, made here:
  * A 7x7 map does not divide by 2, so the pooling pads the end to N * ceil(h / N) and averages only
    the real cells of the last, partial windows (count_include_pad=False); the transposed conv (kernel N,
    stride N: each pooled cell spread back over the cells it averaged) gives N * ceil(h / N) rows,
    cropped to h. With N=2: 7x7 -> 4x4 -> 8x8 -> 7x7.
  * Upsampling the global flow's 1x1 map is a broadcast: every interpolation of one cell is that cell.
  * ReLU follows each 3x3 conv, so that the two do not collapse into one linear map.
  * The flows' weights are shared by the two views (as the image encoder's are), and their batch
    norms train: in train mode `batch_stats` is mutable, which the trainer provides.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

import ml_collections

from cxrjax.models import base
from cxrjax.models.attention_captioner import AttentionCaptioner
from cxrjax.models.encoders.context_aggregation import BN_MOMENTUM, ContextAggregation


@base.FAMILIES.register("cam_captioner")
class CAMCaptioner(AttentionCaptioner):
  """Seed 000's final model: the attention captioner with the context-aggregation encoder.

  Attributes (beyond AttentionCaptioner's; region_dim is the seed's Dense 512):
    context_dim: width of the context flow's convolutions.
    pool_factor: the context flow's average pooling factor N (see the module doc for odd maps).
  """

  context_dim: int = 512
  pool_factor: int = 2

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
      dict(
        AttentionCaptioner.smoke_config(),
        name="cam_captioner",
        attention="bahdanau",
        initial_state="pooled",
        context_dim=8,
        pool_factor=2,
      )
    )

  def setup(self):
    super().setup()
    self.context = ContextAggregation(self.context_dim, self.pool_factor, dtype=self.dtype)
    self.region_norm = nn.BatchNorm(momentum=BN_MOMENTUM, dtype=self.dtype)

  def encode(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """images [batch, views, H, W, 3] -> {"regions": [batch, views * h * w, region_dim], "keys"}."""
    feature_map = self.image_encoder(images, train=train)["feature_map"]  # [batch, views, h, w, channels]
    batch, views, height, width, channels = feature_map.shape
    context = self.context(feature_map.reshape((batch * views, height, width, channels)), train=train)
    regions = context.reshape((batch, views * height * width, channels))  # both views' cells
    regions = self.region_norm(self.region_projection(regions), use_running_average=not train)
    regions = self.region_dropout(regions, deterministic=not train).astype(jnp.float32)
    return {"regions": regions, "keys": self.decoder.project_keys(regions)}
