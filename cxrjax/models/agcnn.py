"""AG-CNN (Guan et al., 2018, "Diagnose like a Radiologist"; seed 004) in flax.linen.

Three branches over one batch of images `[batch, height, width, 3]`:
  global: DenseNet-121 over the whole image, global max pooling, Dense -> logits
  local:  the same architecture (its own weights) over the attention-guided crop of the image
  fusion: Dense over the two pooled 1024-d vectors, concatenated
The crop runs inside jit (`attention_crop`): the heatmap is the L1 norm over channels of the
global branch's last feature map, min-max normalised, bilinearly resized to the image and
thresholded (0.7); the largest 8-connected region of the mask (`label_components`, connected
components in JAX with static shapes) gives a box, and the box is resized to the crop size.

Differences from the seed's `get_local_images`, all deliberate:
  - The box includes the region's last row and column (the seed slices [min_y:max_y], dropping
    them, and a one-pixel-wide region gives an empty crop that tf.image.resize rejects).
  - The box comes from the region itself; the seed takes `argwhere(mask * image != 0)`, which
    drops region pixels whose (normalised) image value happens to be 0.
  - An empty mask (a constant heatmap: the seed divides 0 by 0) gives the whole image; the seed
    fails on it (min of an empty array).
  - Downscaling (a box larger than the crop) is antialiased (a triangle filter as wide as the
    scale, as PIL and `jax.image.scale_and_translate(antialias=True)` do); upscaling, the
    usual case at 224x224, is plain bilinear interpolation with half-pixel centres, as
    tf.image.resize's. The resize kernel only reads pixels inside the box (edge samples are
    renormalised), so the crop equals "slice the box, then resize it": a plain
    `scale_and_translate` of the whole image would blend the pixels just outside the box into
    the crop's border.

Training (three stages, run by the shared trainer): `AGCNN.__call__(images, train, stage)` always
computes every output, so one jitted step serves every stage. With `train=True`, `stage` puts
only its branch's batch norm in training mode and stops gradients into the branches before it:
  stage 1: global branch (loss on "global_logits")
  stage 2: local branch  (loss on "local_logits"; global branch in inference mode)
  stage 3: fusion        (loss on "fusion_logits"; both branches in inference mode)
`stage_loss` gives the stage's loss and `stage_param_labels` the "trained" / "frozen" labels for
`optax.multi_transform`, so that weight decay does not move the frozen branches.

Branch weights from CheXNet (`weights.chexnet.load_chexnet`): `init_branch_from_chexnet` copies
the DenseNet backbone into one branch (the heads stay: CheXNet's head reads average-pooled
features, AG-CNN's max-pooled ones, and AG-CNN has 15 classes).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.encoders import densenet

BRANCHES = ("global_branch", "local_branch")
STAGE_LOGITS = {1: "global_logits", 2: "local_logits", 3: "fusion_logits"}
STAGE_MODULES = {1: ("global_branch",), 2: ("local_branch",), 3: ("fusion_classifier",)}
DEFAULT_THRESHOLD = 0.7


# Connected components.


def label_components(mask: jax.Array, return_iterations: bool = False):
  """8-connected component labelling of a batch of binary masks, with static shapes.

  Union-find on flat pixel indices, in parallel: every foreground pixel starts pointing at the
  first pixel of its horizontal run (trees of depth one). Each round, every pixel finds the
  smallest label (root) in its 3x3 neighbourhood, each root is hooked onto the smallest label
  found by any of its pixels (a segment-min; roots only ever point to smaller indices, so the
  trees stay a forest), and pointer jumping (`parent = parent[parent]` until nothing changes)
  flattens every tree. Rounds repeat while some pixel sees a smaller label next to it. A
  component is then a single tree whose root is its first pixel in raster order: the labels
  number the components in the order `skimage.measure.label(connectivity=2)` does, up to the
  renumbering 1..K.

  Pointer jumping makes long thin regions (snakes, spirals) cheap: plain min-label propagation
  needs as many rounds as the longest path inside a region; this needs a few.

  Args:
    mask: bool [batch, height, width] (or [height, width]).
    return_iterations: also return the number of hooking rounds (int32 scalar).

  Returns:
    labels int32 of the mask's shape: 0 for background, else 1 + the flat index
    (`y * width + x`) of the component's first pixel in raster order.
  """
  squeeze = mask.ndim == 2
  mask = jnp.asarray(mask, bool)
  if squeeze:
    mask = mask[None]
  batch, height, width = mask.shape
  size = height * width
  if size >= np.iinfo(np.int32).max:
    raise ValueError(f"mask {mask.shape} has too many pixels for int32 labels")
  # Per-image indices with the batch as a batch dimension of every gather and segment-min, so
  # that a batch sharded over devices stays sharded (no cross-device indexing).
  index = jnp.broadcast_to(jnp.arange(size, dtype=jnp.int32).reshape(1, height, width), mask.shape)
  background = jnp.int32(size)  # larger than every label: never the minimum

  def neighbour_min(parent: jax.Array) -> jax.Array:
    """[batch, size] -> [batch, size]: the smallest label in each foreground pixel's 3x3."""
    labels = parent.reshape(batch, height, width)
    values = jnp.where(mask, labels, background)
    padded = jnp.pad(values, ((0, 0), (1, 1), (1, 1)), constant_values=size)
    smallest = values
    for dy in range(3):
      for dx in range(3):
        if (dy, dx) != (1, 1):
          smallest = jnp.minimum(smallest, padded[:, dy:dy + height, dx:dx + width])
    return jnp.where(mask, smallest, labels).reshape(batch, size)

  def compress(parent: jax.Array) -> jax.Array:
    def jump(state):
      p, _ = state
      grand = jnp.take_along_axis(p, p, axis=1)
      return grand, jnp.any(grand != p)
    return jax.lax.while_loop(lambda state: state[1], jump, (parent, jnp.bool_(True)))[0]

  segment_min = jax.vmap(lambda values, ids: jax.ops.segment_min(values, ids, num_segments=size))

  # Start from horizontal runs: every pixel points at the first pixel of its run in its row
  # (a running maximum of run starts), so the first round begins with shallow trees.
  starts = mask & ~jnp.pad(mask, ((0, 0), (0, 0), (1, 0)))[:, :, :width]
  run_start = jax.lax.cummax(jnp.where(starts, index, -1), axis=2)
  parent = jnp.where(mask, run_start, index).reshape(batch, size)

  def not_done(state):
    parent, smallest, _ = state
    return jnp.any(smallest < parent)  # some pixel sees a smaller label next to it

  def round_(state):
    parent, smallest, rounds = state  # [batch, size], every pixel pointing at its root
    # Hooking: each root takes the smallest label next to any of its pixels (roots that no pixel
    # points to get the int32 maximum: no change). Background pixels are their own roots and
    # their "smallest" is themselves: a no-op.
    hooked = jnp.minimum(parent, segment_min(smallest, parent))
    parent = compress(jnp.minimum(hooked, smallest))
    return parent, neighbour_min(parent), rounds + 1

  parent, _, rounds = jax.lax.while_loop(not_done, round_, (parent, neighbour_min(parent), jnp.int32(0)))
  labels = jnp.where(mask, parent.reshape(batch, height, width) + 1, 0)
  if squeeze:
    labels = labels[0]
  return (labels, rounds) if return_iterations else labels


def largest_component(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The largest 8-connected region of each mask.

  Ties go to the region whose first pixel comes first in raster order (skimage's label order,
  then `np.argmax`, as the seed does).

  Args:
    mask: bool [batch, height, width].

  Returns:
    (region bool [batch, height, width], found bool [batch]: False for an empty mask).
  """
  mask = jnp.asarray(mask, bool)
  batch, height, width = mask.shape
  labels = label_components(mask).reshape(batch, height * width)  # 0 or 1 + root index
  # Component sizes at their roots' indices; background pixels add 0.
  sizes = jax.vmap(lambda ids, weights: jax.ops.segment_sum(weights, ids, num_segments=height * width))(
      jnp.maximum(labels - 1, 0), mask.reshape(batch, -1).astype(jnp.int32))
  root = jnp.argmax(sizes, axis=1)  # the first root among equal sizes
  region = (labels == (root + 1)[:, None]).reshape(batch, height, width)
  return region, jnp.any(mask, axis=(1, 2))


def mask_bounding_box(region: jax.Array, found: jax.Array) -> jax.Array:
  """Boxes of masks, int32 [batch, 4] as (y0, x0, y1, x1), half-open (`image[y0:y1, x0:x1]`).

  A mask with `found` False gives the whole image (0, 0, height, width).
  """
  batch, height, width = region.shape
  rows, columns = jnp.any(region, axis=2), jnp.any(region, axis=1)
  y0 = jnp.argmax(rows, axis=1)
  y1 = height - jnp.argmax(rows[:, ::-1], axis=1)
  x0 = jnp.argmax(columns, axis=1)
  x1 = width - jnp.argmax(columns[:, ::-1], axis=1)
  box = jnp.stack([y0, x0, y1, x1], axis=1).astype(jnp.int32)
  whole = jnp.array([0, 0, height, width], jnp.int32)
  return jnp.where(found[:, None], box, whole)


# Heatmap and crop.


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


def _resize_weights(start: jax.Array, stop: jax.Array, in_size: int, out_size: int,
                    antialias: bool) -> jax.Array:
  """Linear-interpolation weights [out_size, in_size] from the pixels [start, stop) to out_size.

  Half-pixel centres; the triangle kernel widens to 1/scale when shrinking with `antialias`;
  pixels outside [start, stop) get no weight and each row is renormalised (edge handling as in
  PIL and jax.image.scale_and_translate, which equals clamping when enlarging).
  """
  start = start.astype(jnp.float32)
  inv_scale = (stop.astype(jnp.float32) - start) / out_size
  # Input coordinate (in pixel-index units) of each output pixel centre.
  sample = (jnp.arange(out_size, dtype=jnp.float32) + 0.5) * inv_scale + start - 0.5
  width = jnp.maximum(inv_scale, 1.0) if antialias else 1.0
  position = jnp.arange(in_size, dtype=jnp.float32)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(sample[:, None] - position[None, :]) / width)
  inside = (position >= start) & (position < stop.astype(jnp.float32))
  weights = jnp.where(inside[None, :], weights, 0.0)
  return weights / jnp.sum(weights, axis=1, keepdims=True)


def crop_and_resize(images: jax.Array, boxes: jax.Array, out_size: int | tuple[int, int],
                    antialias: bool = True) -> jax.Array:
  """`images[b, y0:y1, x0:x1]` resized to out_size, for every b, with static shapes.

  Separable, as two batched matrix products with per-image interpolation matrices (rows, then
  columns), as jax.image.scale_and_translate computes: the MXU's work on TPUs. (On CPU, gathering
  the 2 taps each output pixel needs measured no faster at 224x224.)

  Args:
    images: [batch, height, width, channels].
    boxes: int32 [batch, 4] (y0, x0, y1, x1), half-open, non-empty.
    out_size: side, or (height, width), of the crops.
    antialias: widen the kernel when a box is shrunk (see `_resize_weights`).

  Returns:
    float32 [batch, out_height, out_width, channels].
  """
  out_h, out_w = (out_size, out_size) if isinstance(out_size, int) else out_size
  _, height, width, _ = images.shape
  weights = jax.vmap(_resize_weights, in_axes=(0, 0, None, None, None))
  rows = weights(boxes[:, 0], boxes[:, 2], height, out_h, antialias)  # [batch, out_h, height]
  columns = weights(boxes[:, 1], boxes[:, 3], width, out_w, antialias)  # [batch, out_w, width]
  # HIGHEST: float32 interpolation on TPUs too (their default rounds matmul inputs to bfloat16).
  precision = jax.lax.Precision.HIGHEST
  resized = jnp.einsum("boh,bhwc->bowc", rows, images.astype(jnp.float32), precision=precision)
  return jnp.einsum("bpw,bowc->bopc", columns, resized, precision=precision)


class AttentionCrop(NamedTuple):
  """What `attention_crop` returns (a tuple: `crops, boxes, heatmaps, masks = ...`)."""

  crops: jax.Array  # float32 [batch, out, out, 3]
  boxes: jax.Array  # int32 [batch, 4] (y0, x0, y1, x1), half-open
  heatmaps: jax.Array  # float32 [batch, height, width] in [0, 1]
  masks: jax.Array  # bool [batch, height, width]: the largest region (all False: none found)


def attention_crop(images: jax.Array, feature_maps: jax.Array, threshold: float = DEFAULT_THRESHOLD,
                   out_size: int | None = 224, antialias: bool = True) -> AttentionCrop:
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


# Model.


class Branch(nn.Module):
  """A DenseNet backbone, global max pooling over its last feature map, and a Dense head.

  Returns {"logits": [batch, num_classes], "pooled": float32 [batch, features],
  "feature_map": [batch, h, w, features]}.
  """
  backbone: densenet.DenseNetConfig = densenet.DENSENET121
  num_classes: int = 15
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    config = dataclasses.replace(self.backbone, num_classes=0)
    features = densenet.DenseNet(config, dtype=self.dtype, param_dtype=self.param_dtype,
                                 name="backbone")(images, train=train)
    feature_map = features["feature_map"]
    pooled = jnp.max(feature_map.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
                      name="classifier")(pooled)
    return {"logits": logits, "pooled": pooled, "feature_map": feature_map}


class AGCNN(nn.Module):
  """Global, local and fusion branches over images `[batch, height, width, 3]`.

  Attributes:
    backbone: DenseNet architecture of both branches (DenseNet-121; tests use tiny ones).
    num_classes: 15 in seed 004 (14 findings + "No Finding"), 14 for CheXNet's classes.
    threshold: heatmap threshold of the attention mask.
    crop_size: side of the local images; None: the input's height.
    antialias: antialias crops that shrink (see `crop_and_resize`).

  Returns (a dict):
    "global_logits", "local_logits", "fusion_logits": float32 [batch, num_classes] (sigmoid at
        prediction time),
    "heatmap": float32 [batch, height, width], "boxes": int32 [batch, 4] (y0, x0, y1, x1),
    "local_images": float32 [batch, crop, crop, 3],
    "global_pooled", "local_pooled": float32 [batch, features].
  """
  backbone: densenet.DenseNetConfig = densenet.DENSENET121
  num_classes: int = 15
  threshold: float = DEFAULT_THRESHOLD
  crop_size: int | None = None
  antialias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False, stage: int | None = None
               ) -> dict[str, jax.Array]:
    """`train` with `stage` None trains every branch end to end (batch norm of both in training
    mode, gradients everywhere); with a stage, as the module docstring says."""
    if stage not in (None, 1, 2, 3):
      raise ValueError(f"stage must be 1, 2, 3 or None, got {stage!r}")
    train_global = train and stage in (None, 1)
    train_local = train and stage in (None, 2)
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    global_out = Branch(self.backbone, self.num_classes, name="global_branch", **dtypes)(
        images, train=train_global)
    feature_map, global_pooled = global_out["feature_map"], global_out["pooled"]
    if train and stage in (2, 3):
      feature_map, global_pooled = jax.lax.stop_gradient((feature_map, global_pooled))
    crop = attention_crop(images, feature_map, self.threshold, self.crop_size, self.antialias)
    local_images = jax.lax.stop_gradient(crop.crops)
    local_out = Branch(self.backbone, self.num_classes, name="local_branch", **dtypes)(
        local_images.astype(images.dtype), train=train_local)
    local_pooled = local_out["pooled"]
    if train and stage == 3:
      local_pooled = jax.lax.stop_gradient(local_pooled)
    fusion_logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype,
                             name="fusion_classifier")(
                                 jnp.concatenate([global_pooled, local_pooled], axis=-1))
    return {
        "global_logits": global_out["logits"],
        "local_logits": local_out["logits"],
        "fusion_logits": fusion_logits,
        "heatmap": crop.heatmaps,
        "boxes": crop.boxes,
        "local_images": local_images,
        "global_pooled": global_pooled,
        "local_pooled": local_pooled,
    }


def stage_loss(outputs: dict[str, jax.Array], labels: jax.Array, stage: int,
               mask: jax.Array | None = None) -> jax.Array:
  """Mean binary cross-entropy of the stage's logits against 0/1 labels [batch, num_classes].

  `mask` (bool [batch]) leaves padding examples out.
  """
  logits = outputs[STAGE_LOGITS[stage]].astype(jnp.float32)
  labels = labels.astype(jnp.float32)
  # log(sigmoid(z)) = -softplus(-z), log(1 - sigmoid(z)) = -softplus(z): stable for large |z|.
  per_example = jnp.mean(labels * jax.nn.softplus(-logits) + (1 - labels) * jax.nn.softplus(logits),
                         axis=-1)
  if mask is None:
    return jnp.mean(per_example)
  weights = mask.astype(jnp.float32)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def stage_param_labels(params: Any, stage: int | None) -> Any:
  """"trained" / "frozen" per parameter leaf for a stage (None: all trained), for
  `optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)`."""
  trained = None if stage is None else STAGE_MODULES[stage]

  def label(path, _):
    top = path[0].key if hasattr(path[0], "key") else str(path[0])
    return "trained" if trained is None or top in trained else "frozen"

  return jax.tree_util.tree_map_with_path(label, params)


def init_branch_from_chexnet(variables: dict[str, Any], chexnet_variables: dict[str, Any],
                             branches: str | tuple[str, ...] = BRANCHES) -> dict[str, Any]:
  """Copies a CheXNet / DenseNet backbone (`load_chexnet(...)[1]`) into AG-CNN branch(es).

  Args:
    variables: AG-CNN variables ({"params", "batch_stats"}), e.g. from `AGCNN(...).init`.
    chexnet_variables: DenseNet variables; the "classifier" head, if any, is not used.
    branches: "global_branch", "local_branch" or both.

  Returns:
    New variables (the inputs are not modified).

  Raises:
    ValueError: the backbones differ (names or shapes listed): build AGCNN with
      `backbone=config` from `load_chexnet` (its bn_epsilon included).
  """
  branches = (branches,) if isinstance(branches, str) else tuple(branches)
  unknown = set(branches) - set(BRANCHES)
  if unknown:
    raise ValueError(f"unknown branches {sorted(unknown)}; expected some of {BRANCHES}")
  source = {}
  for collection in ("params", "batch_stats"):
    flat = flax.traverse_util.flatten_dict(chexnet_variables.get(collection, {}))
    source.update({(collection, *path): value for path, value in flat.items()
                   if path[0] != "classifier"})
  flat_variables = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables))
  updated = dict(flat_variables)
  for branch in branches:
    target = {(path[0], *path[3:]): path for path in flat_variables
              if path[1:3] == (branch, "backbone")}
    missing, unexpected = sorted(set(target) - set(source)), sorted(set(source) - set(target))
    shapes = [f"{'/'.join(k)}: {np.shape(source[k])} vs {np.shape(flat_variables[target[k]])}"
              for k in set(target) & set(source)
              if np.shape(source[k]) != np.shape(flat_variables[target[k]])]
    if missing or unexpected or shapes:
      raise ValueError(
          f"the CheXNet variables do not fit the {branch} backbone: missing {missing[:5]} "
          f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), shapes {shapes[:5]}")
    for key, path in target.items():
      updated[path] = jnp.asarray(source[key], flat_variables[path].dtype)
  return flax.traverse_util.unflatten_dict(updated)


# Figure.


def _to_display(image: np.ndarray) -> np.ndarray:
  """uint8 as is; float (e.g. ImageNet-normalised) min-max scaled; gray -> RGB. -> uint8 [H, W, 3]."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    image = np.repeat(image[..., None], 3, axis=-1)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an image [H, W], [H, W, 1] or [H, W, 3], got {image.shape}")
  if image.dtype == np.uint8:
    return image
  image = image.astype(np.float64)
  if not np.isfinite(image).all():
    raise ValueError("the image holds non-finite values")
  low, high = image.min(), image.max()
  scaled = (image - low) / (high - low) if high > low else np.zeros_like(image)
  return np.round(scaled * 255).astype(np.uint8)


def _jet(values: np.ndarray) -> np.ndarray:
  """A jet-like colour map: [H, W] in [0, 1] -> uint8 [H, W, 3] (blue, cyan, yellow, red)."""
  v = np.clip(values, 0.0, 1.0)[..., None]
  red = np.clip(1.5 - np.abs(4 * v - 3), 0, 1)
  green = np.clip(1.5 - np.abs(4 * v - 2), 0, 1)
  blue = np.clip(1.5 - np.abs(4 * v - 1), 0, 1)
  return np.round(np.concatenate([red, green, blue], axis=-1) * 255).astype(np.uint8)


def render_attention_figure(image: np.ndarray, heatmap: np.ndarray, box: Any, local_image: np.ndarray,
                            path: str | pathlib.Path, title: str | None = None) -> pathlib.Path:
  """Writes a PNG for `predict-agcnn`: the global image with the crop box, the heatmap overlay
  (with the box), and the local image, side by side (PIL only).

  Args:
    image: the global image, [H, W] or [H, W, 3]; uint8, or float (min-max scaled for display).
    heatmap: [H, W] in [0, 1] (AGCNN's "heatmap").
    box: (y0, x0, y1, x1), half-open, in image pixels.
    local_image: the crop, as `image`; shown at height H.
    path: the PNG to write (folders are created).
    title: optional text drawn above the panels (e.g. the top findings).

  Returns:
    The path written.
  """
  from PIL import Image, ImageDraw
  rgb = _to_display(image)
  height, width = rgb.shape[:2]
  heatmap = np.asarray(heatmap, np.float64)
  if heatmap.shape != (height, width):
    raise ValueError(f"heatmap {heatmap.shape} does not match the image {(height, width)}")
  y0, x0, y1, x1 = (int(v) for v in np.asarray(box).reshape(-1))
  if not (0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width):
    raise ValueError(f"box {(y0, x0, y1, x1)} is not a non-empty box inside {(height, width)}")
  overlay = np.round(0.55 * rgb + 0.45 * _jet(heatmap)).astype(np.uint8)
  local = Image.fromarray(_to_display(local_image))
  local = local.resize((max(1, round(local.width * height / local.height)), height),
                       Image.Resampling.BILINEAR)
  line = max(1, round(min(height, width) / 112))
  panels = []
  for array in (rgb, overlay):
    panel = Image.fromarray(array)
    ImageDraw.Draw(panel).rectangle([x0, y0, x1 - 1, y1 - 1], outline=(255, 40, 40), width=line)
    panels.append(panel)
  panels.append(local)
  gap, top = max(2, width // 64), 0
  if title:
    top = max(14, height // 16)
  figure = Image.new("RGB", (sum(p.width for p in panels) + gap * (len(panels) - 1), height + top),
                     (255, 255, 255))
  x = 0
  for panel in panels:
    figure.paste(panel, (x, top))
    x += panel.width + gap
  if title:
    ImageDraw.Draw(figure).text((4, 1), title, fill=(0, 0, 0))
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  figure.save(path, format="PNG")
  return path
