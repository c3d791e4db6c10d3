"""Connected components of binary masks inside jit (static shapes), and the box of the largest one.

Both work on 2x2 blocks of pixels rather than on pixels: any two pixels of a 2x2 block touch
(8-connectivity), so a block's foreground pixels always belong to one component, and labelling the
blocks (linked where foreground pixels of neighbouring blocks touch) labels the pixels exactly, with
a quarter of the nodes in every round (the block-based scheme of Grana et al., 2010).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Neighbour offsets (dy, dx) whose links are computed directly; the other four are their mirrors.
_FORWARD = ((0, 1), (1, 0), (1, 1), (1, -1))


def _shift(x: jax.Array, dy: int, dx: int, fill) -> jax.Array:
  """[batch, h, w] -> y with y[:, i, j] = x[:, i + dy, j + dx], `fill` outside."""
  _, height, width = x.shape
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
  return padded[:, 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]


class _Blocks(NamedTuple):
  """A batch of masks as 2x2 blocks; every field is [batch, ceil(h / 2), ceil(w / 2)]."""

  roots: jax.Array  # int32: flat block index of the first block (raster order) of the component
  pixels: jax.Array  # int32: foreground pixels in the block (0..4)
  first_pixel: jax.Array  # int32: flat pixel index of the block's first foreground pixel (h * w if none)


def _label_blocks(mask: jax.Array) -> tuple[_Blocks, jax.Array]:
  """Labels the 2x2 blocks of bool [batch, h, w] masks; also returns the number of hooking rounds.

  Union-find on flat block indices, in parallel: every foreground block starts pointing at the
  first block of its horizontal run (trees of depth one). Each round, every block finds the
  smallest label (root) among the blocks it is linked to, each root is hooked onto the smallest
  label found by any of its blocks (a segment-min; roots only ever point to smaller indices, so
  the trees stay a forest), and pointer jumping (`parent = parent[parent]` until nothing changes)
  flattens every tree. Rounds repeat while some block is linked to a smaller label. Pointer
  jumping makes long thin regions (snakes, spirals) cheap: plain min-label propagation needs as
  many rounds as the longest path inside a region; this needs a few.
  """
  batch, height, width = mask.shape
  if height * width >= np.iinfo(np.int32).max:
    raise ValueError(f"mask {mask.shape} has too many pixels for int32 labels")
  padded = jnp.pad(mask, ((0, 0), (0, height % 2), (0, width % 2)))
  top_left, top_right = padded[:, 0::2, 0::2], padded[:, 0::2, 1::2]
  bottom_left, bottom_right = padded[:, 1::2, 0::2], padded[:, 1::2, 1::2]
  block_height, block_width = top_left.shape[1:]
  num_blocks = block_height * block_width
  foreground = top_left | top_right | bottom_left | bottom_right

  # links[(dy, dx)]: the block touches its neighbour at (dy, dx). Side neighbours touch when both
  # facing columns (rows) have a foreground pixel, as all pixels of two facing pairs are adjacent;
  # diagonal neighbours only through their facing corner pixels.
  links = {
    (0, 1): (top_right | bottom_right) & _shift(top_left | bottom_left, 0, 1, False),
    (1, 0): (bottom_left | bottom_right) & _shift(top_left | top_right, 1, 0, False),
    (1, 1): bottom_right & _shift(top_left, 1, 1, False),
    (1, -1): bottom_left & _shift(top_right, 1, -1, False),
  }
  for dy, dx in _FORWARD:
    links[(-dy, -dx)] = _shift(links[(dy, dx)], -dy, -dx, False)

  def neighbour_min(parent: jax.Array) -> jax.Array:
    """[batch, blocks] -> [batch, blocks]: the smallest label among each block and its links."""
    labels = parent.reshape(batch, block_height, block_width)
    smallest = labels
    for (dy, dx), linked in links.items():
      smallest = jnp.minimum(smallest, jnp.where(linked, _shift(labels, dy, dx, num_blocks), num_blocks))
    return smallest.reshape(batch, num_blocks)

  def compress(parent: jax.Array) -> jax.Array:
    def jump(state):
      p, _ = state
      grand = jnp.take_along_axis(p, p, axis=1)
      return grand, jnp.any(grand != p)

    return jax.lax.while_loop(lambda state: state[1], jump, (parent, jnp.bool_(True)))[0]

  # Per-image indices with the batch as a batch dimension of every gather and segment-min, so
  # that a batch sharded over devices stays sharded (no cross-device indexing).
  segment_min = jax.vmap(lambda values, ids: jax.ops.segment_min(values, ids, num_segments=num_blocks))
  index = jnp.broadcast_to(
    jnp.arange(num_blocks, dtype=jnp.int32).reshape(1, block_height, block_width), foreground.shape
  )

  # Start from horizontal runs of linked blocks: every block points at the first block of its
  # run in its row (a running maximum of run starts), so the first round begins with shallow trees.
  starts = foreground & ~links[(0, -1)]
  run_start = jax.lax.cummax(jnp.where(starts, index, -1), axis=2)
  parent = jnp.where(foreground, run_start, index).reshape(batch, num_blocks)

  def not_done(state):
    parent, smallest, _ = state
    return jnp.any(smallest < parent)  # some block is linked to a smaller label

  def round_(state):
    parent, smallest, rounds = state  # [batch, blocks], every block pointing at its root
    # Hooking: each root takes the smallest label linked to any of its blocks (roots that no block
    # points to get the int32 maximum: no change). Background blocks are their own roots and their
    # "smallest" is themselves: a no-op.
    hooked = jnp.minimum(parent, segment_min(smallest, parent))
    parent = compress(jnp.minimum(hooked, smallest))
    return parent, neighbour_min(parent), rounds + 1

  parent, _, rounds = jax.lax.while_loop(not_done, round_, (parent, neighbour_min(parent), jnp.int32(0)))

  quarters = (top_left, top_right, bottom_left, bottom_right)
  pixels = sum(quarter.astype(jnp.int32) for quarter in quarters)
  # Flat pixel index of each quarter of each block; the smallest foreground one is the first.
  rows = 2 * jnp.arange(block_height, dtype=jnp.int32)[:, None]
  columns = 2 * jnp.arange(block_width, dtype=jnp.int32)[None, :]
  no_pixel = jnp.int32(height * width)
  first_pixel = no_pixel
  for quarter, (dy, dx) in zip(quarters, ((0, 0), (0, 1), (1, 0), (1, 1))):
    first_pixel = jnp.minimum(first_pixel, jnp.where(quarter, (rows + dy) * width + columns + dx, no_pixel))
  blocks = _Blocks(parent.reshape(batch, block_height, block_width), pixels, first_pixel)
  return blocks, rounds


def _to_pixels(block_values: jax.Array, height: int, width: int) -> jax.Array:
  """[batch, ceil(h / 2), ceil(w / 2)] -> [batch, h, w]: each block's value on its 2x2 pixels."""
  batch, block_height, block_width = block_values.shape
  expanded = jnp.broadcast_to(block_values[:, :, None, :, None], (batch, block_height, 2, block_width, 2))
  return expanded.reshape(batch, 2 * block_height, 2 * block_width)[:, :height, :width]


def _per_component(reduce, values: jax.Array, roots: jax.Array) -> jax.Array:
  """segment_sum / segment_min of block values [batch, bh, bw] by root -> [batch, bh * bw] (at the roots)."""
  batch, block_height, block_width = roots.shape
  num_blocks = block_height * block_width
  return jax.vmap(lambda v, ids: reduce(v, ids, num_segments=num_blocks))(
    values.reshape(batch, num_blocks), roots.reshape(batch, num_blocks)
  )


def label_components(mask: jax.Array, return_iterations: bool = False):
  """8-connected component labelling of a batch of binary masks, with static shapes.

  The labels number the components in the order `skimage.measure.label(connectivity=2)` does, up
  to the renumbering 1..K.

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
  blocks, rounds = _label_blocks(mask)
  component_first = _per_component(jax.ops.segment_min, blocks.first_pixel, blocks.roots)
  first = jnp.take_along_axis(component_first, blocks.roots.reshape(batch, -1), axis=1)
  labels = jnp.where(mask, _to_pixels(first.reshape(blocks.roots.shape), height, width) + 1, 0)
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
  _, height, width = mask.shape
  blocks, _ = _label_blocks(mask)
  # Sizes and first pixels at the roots' indices; background blocks are roots of size 0.
  sizes = _per_component(jax.ops.segment_sum, blocks.pixels, blocks.roots)
  firsts = _per_component(jax.ops.segment_min, blocks.first_pixel, blocks.roots)
  largest = (sizes == jnp.max(sizes, axis=1, keepdims=True)) & (sizes > 0)
  root = jnp.argmin(jnp.where(largest, firsts, height * width), axis=1)  # [batch]
  region = mask & _to_pixels(blocks.roots == root[:, None, None], height, width)
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
