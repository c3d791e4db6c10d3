"""Chained context aggregation (CaC-Net's global flow + context flow) over DenseNet feature maps (seed 000)."""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# The DenseNet's convention (flax: new = momentum * old + (1 - momentum) * batch).
BN_MOMENTUM = 0.9


class GlobalFlow(nn.Module):
  """feature_map [n, h, w, channels] -> global context [n, h, w, channels]."""

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feature_map: jax.Array, train: bool) -> jax.Array:
    channels = feature_map.shape[-1]
    pooled = jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2), keepdims=True)  # [n, 1, 1, channels]
    pooled = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, dtype=self.dtype, name="norm")(pooled)
    pooled = nn.Conv(channels, (1, 1), dtype=self.dtype, name="conv")(nn.relu(pooled))
    return jnp.broadcast_to(pooled, feature_map.shape[:3] + (channels,))


class ContextFlow(nn.Module):
  """(feature_map, global context) [n, h, w, channels] each -> local context [n, h, w, channels].

  Attributes:
    features: width of the convolutions inside the flow (the fused features).
    pool_factor: N, the average pooling's window and stride.
  """

  features: int
  pool_factor: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feature_map: jax.Array, global_context: jax.Array) -> jax.Array:
    _, height, width, channels = feature_map.shape
    factor = (self.pool_factor, self.pool_factor)
    inputs = jnp.concatenate([feature_map, global_context.astype(feature_map.dtype)], axis=-1)
    # [n, ceil(h / N), ceil(w / N), 2 * channels]: padded at the end only (not "SAME", which centres
    # the windows for N >= 3), so that window i covers cells N*i.. as the upsampling assumes; partial
    # windows average their real cells only.
    padding = ((0, -height % self.pool_factor), (0, -width % self.pool_factor))
    pooled = nn.avg_pool(inputs, factor, strides=factor, padding=padding, count_include_pad=False)
    fused = nn.relu(nn.Conv(self.features, (3, 3), dtype=self.dtype, name="fuse1")(pooled))
    fused = nn.relu(nn.Conv(self.features, (3, 3), dtype=self.dtype, name="fuse2")(fused))
    gate = nn.relu(nn.Conv(self.features, (1, 1), dtype=self.dtype, name="refine1")(fused))
    gate = nn.sigmoid(nn.Conv(self.features, (1, 1), dtype=self.dtype, name="refine2")(gate))
    refined = fused * gate + fused
    # [n, N * ceil(h / N), N * ceil(w / N), channels] -> crop to [n, h, w, channels].
    upsampled = nn.ConvTranspose(channels, factor, strides=factor, padding="VALID", dtype=self.dtype, name="upsample")(
      refined
    )
    return upsampled[:, :height, :width]


class ContextAggregation(nn.Module):
  """CAM with one context flow: feature_map [n, h, w, channels] -> global + local context, same shape."""

  features: int
  pool_factor: int = 2
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, feature_map: jax.Array, train: bool = False) -> jax.Array:
    if self.pool_factor < 1:
      raise ValueError(f"pool_factor must be >= 1, got {self.pool_factor}")
    global_context = GlobalFlow(dtype=self.dtype, name="global_flow")(feature_map, train)
    local_context = ContextFlow(self.features, self.pool_factor, dtype=self.dtype, name="context_flow")(
      feature_map, global_context
    )
    return global_context + local_context
