"""AG-CNN's attention-guided crop inside jit: heatmap of a feature map, mask, largest region, box, resize."""

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from cxrjax.ops.connected_components import largest_component, mask_bounding_box

DEFAULT_THRESHOLD = 0.7


def attention_heatmap(feature_maps: jax.Array, size: tuple[int, int]) -> jax.Array:
  """L1 norm over channels, min-max normalised per image, bilinearly resized to `size`.

  Args:
    feature_maps: [batch, h, w, channels] (the global branch's last feature map).
    size: (height, width) of the images.

  Returns:
    float32 [batch, height, width] in [0, 1]; all zeros for a constant L1 map (the seed's 0/0).
  """
  l1 = jnp.sum(jnp.abs(feature_maps.astype(jnp.float32)), axis=-1)  # [batch, h, w]
  low = jnp.min(l1, axis=(1, 2), keepdims=True)
  spread = jnp.max(l1, axis=(1, 2), keepdims=True) - low
  heatmap = jnp.where(spread > 0, (l1 - low) / jnp.where(spread > 0, spread, 1.0), 0.0)
  return jax.image.resize(heatmap, (heatmap.shape[0], *size), method="bilinear")


def _resize_kernel(start: jax.Array, stop: jax.Array, out_size: int, antialias: bool):
  """Where each of out_size pixels samples the pixels [start, stop), and the kernel's half-width.

  Half-pixel centres; the triangle kernel widens to 1/scale when shrinking with `antialias`.
  Returns (sample float32 [out_size] in input pixel-index units, half-width float32 scalar).
  """
  start = start.astype(jnp.float32)
  inv_scale = (stop.astype(jnp.float32) - start) / out_size
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale + start - 0.5
  return sample, (jnp.maximum(inv_scale, 1.0) if antialias else jnp.float32(1.0))


def _triangle(sample: jax.Array, position: jax.Array, width: jax.Array, start: jax.Array, stop: jax.Array) -> jax.Array:
  """Weights of input pixels `position` for output samples `sample` (broadcast), normalised over the
  last axis; pixels outside [start, stop) get no weight (edge handling as in PIL and
  jax.image.scale_and_translate, which equals clamping when enlarging)."""
  position = position.astype(jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(sample - position) / width)
  inside = (position >= start.astype(jnp.float32)) & (position < stop.astype(jnp.float32))
  weights = jnp.where(inside, weights, 0.0)
  return weights / jnp.sum(weights, axis=-1, keepdims=True)


def _resize_weights(start: jax.Array, stop: jax.Array, in_size: int, out_size: int, antialias: bool) -> jax.Array:
  """Linear-interpolation weights [out_size, in_size] from the pixels [start, stop) to out_size."""
  sample, width = _resize_kernel(start, stop, out_size, antialias)
  return _triangle(sample[:, None], jnp.arange(in_size)[None, :], width, start, stop)


def _resize_taps(
  start: jax.Array, stop: jax.Array, in_size: int, out_size: int, antialias: bool
) -> tuple[jax.Array, jax.Array]:
  """The same interpolation as `_resize_weights`, as the few input pixels each output pixel reads.

  Returns (positions int32 [out_size, taps] within [0, in_size), weights float32 [out_size, taps]).
  The kernel reaches the pixels strictly within `width` of the sample: at most ceil(2 * width),
  and width is largest for a box that spans the image, so `taps` is static.
  """
  sample, width = _resize_kernel(start, stop, out_size, antialias)
  taps = math.ceil(2 * max(in_size / out_size, 1.0)) if antialias else 2
  first = jnp.floor(sample - width).astype(jnp.int32) + 1  # the first pixel strictly inside
  position = first[:, None] + jnp.arange(taps, dtype=jnp.int32)[None, :]
  weights = _triangle(sample[:, None], position, width, start, stop)
  # Positions past the image have no weight (outside the box); clip them for the gather.
  return jnp.clip(position, 0, in_size - 1), weights


def _crop_and_resize_dense(images: jax.Array, boxes: jax.Array, out_h: int, out_w: int, antialias: bool) -> jax.Array:
  """Two batched matrix products with per-image interpolation matrices (rows, then columns), as
  jax.image.scale_and_translate computes: the MXU's work on TPUs."""
  _, height, width, _ = images.shape
  weights = jax.vmap(_resize_weights, in_axes=(0, 0, None, None, None))
  rows = weights(boxes[:, 0], boxes[:, 2], height, out_h, antialias)  # [batch, out_h, height]
  columns = weights(boxes[:, 1], boxes[:, 3], width, out_w, antialias)  # [batch, out_w, width]
  # HIGHEST: float32 interpolation on TPUs too (their default rounds matmul inputs to bfloat16).
  precision = jax.lax.Precision.HIGHEST
  resized = jnp.einsum("boh,bhwc->bowc", rows, images.astype(jnp.float32), precision=precision)
  return jnp.einsum("bpw,bowc->bopc", columns, resized, precision=precision)


def _crop_and_resize_taps(images: jax.Array, boxes: jax.Array, out_h: int, out_w: int, antialias: bool) -> jax.Array:
  """Gathers the few rows (then columns) each output pixel reads: on CPUs the dense products do
  ~100x the arithmetic (a 224x224 matrix per image where 2 taps per pixel are non-zero)."""
  _, height, width, _ = images.shape
  taps = jax.vmap(_resize_taps, in_axes=(0, 0, None, None, None))
  row_positions, row_weights = taps(boxes[:, 0], boxes[:, 2], height, out_h, antialias)  # [batch, out_h, taps]
  column_positions, column_weights = taps(boxes[:, 1], boxes[:, 3], width, out_w, antialias)
  take = jax.vmap(lambda image, at: jnp.take(image, at, axis=0, mode="clip"))

  def resize_leading(x, positions, weights):
    """[batch, n, m, c] -> [batch, out, m, c] along axis 1. One gather per tap, summed as it goes:
    XLA fuses each gather into the sum instead of writing a [batch, out, taps, m, c] array."""
    return sum(weights[:, :, k, None, None] * take(x, positions[:, :, k]) for k in range(positions.shape[-1]))

  resized = resize_leading(images.astype(jnp.float32), row_positions, row_weights)  # [batch, out_h, width, c]
  # Columns as rows of the transpose: gathering whole rows is faster than 3-float pixels.
  resized = resize_leading(jnp.swapaxes(resized, 1, 2), column_positions, column_weights)
  return jnp.swapaxes(resized, 1, 2)  # [batch, out_h, out_w, c]


def crop_and_resize(
  images: jax.Array, boxes: jax.Array, out_size: int | tuple[int, int], antialias: bool = True
) -> jax.Array:
  """`images[b, y0:y1, x0:x1]` resized to out_size, for every b, with static shapes.

  Separable linear interpolation; on CPUs by gathering each output pixel's taps, elsewhere as
  dense matrix products (both compute the same weights; `lax.platform_dependent` picks one when
  lowering).

  Args:
    images: [batch, height, width, channels].
    boxes: int32 [batch, 4] (y0, x0, y1, x1), half-open, non-empty.
    out_size: side, or (height, width), of the crops.
    antialias: widen the kernel when a box is shrunk (see `_resize_kernel`).

  Returns:
    float32 [batch, out_height, out_width, channels].
  """
  out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
  resize = lambda method: functools.partial(method, out_h=out_h, out_w=out_w, antialias=antialias)
  return jax.lax.platform_dependent(
    images, boxes, cpu=resize(_crop_and_resize_taps), default=resize(_crop_and_resize_dense)
  )


class AttentionCrop(NamedTuple):
  """What `attention_crop` returns (a tuple: `crops, boxes, heatmaps, masks = ...`)."""

  crops: jax.Array  # float32 [batch, out, out, 3]
  boxes: jax.Array  # int32 [batch, 4] (y0, x0, y1, x1), half-open
  heatmaps: jax.Array  # float32 [batch, height, width] in [0, 1]
  masks: jax.Array  # bool [batch, height, width]: the largest region (all False: none found)


def attention_crop(
  images: jax.Array,
  feature_maps: jax.Array,
  threshold: float = DEFAULT_THRESHOLD,
  out_size: int | None = 224,
  antialias: bool = True,
) -> AttentionCrop:
  """AG-CNN's attention-guided crop, batched, inside jit.

  Args:
    images: [batch, height, width, 3], any value range (normalised images are fine).
    feature_maps: [batch, h, w, channels] of the global branch for these images.
    threshold: heatmap values strictly above it form the mask (0.7 in AG-CNN).
    out_size: side of the crops; None keeps the images' height (square crops).
    antialias: see `crop_and_resize`.

  Returns:
    AttentionCrop(crops, boxes, heatmaps, masks). A mask with no pixel above the threshold
    (e.g. a constant heatmap) gives the whole image as the box.
  """
  _, height, width, _ = images.shape
  heatmaps = attention_heatmap(jax.lax.stop_gradient(feature_maps), (height, width))
  region, found = largest_component(heatmaps > threshold)
  boxes = mask_bounding_box(region, found)
  crops = crop_and_resize(images, boxes, height if out_size is None else out_size, antialias)
  return AttentionCrop(crops, boxes, heatmaps, region)
