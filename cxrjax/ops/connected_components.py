"""Connected components of binary masks inside jit (static shapes), and the box of the largest one."""

import jax
import jax.numpy as jnp
import numpy as np


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
