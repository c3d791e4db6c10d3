"""Connected components of binary masks inside jit against skimage.measure.label (8-connectivity)."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage.measure import label as skimage_label

from cxrjax.ops import connected_components

label_jit = jax.jit(lambda mask: connected_components.label_components(mask, return_iterations=True))


def skimage_labels(masks: np.ndarray) -> np.ndarray:
  return np.stack([skimage_label(mask, connectivity=2, background=0) for mask in masks])


def _as_skimage(labels: np.ndarray) -> np.ndarray:
  """Our labels (1 + root index) renumbered 1..K in increasing order, per image."""
  out = np.zeros_like(labels)
  for index, image_labels in enumerate(labels):
    values = np.unique(image_labels[image_labels > 0])
    out[index][image_labels > 0] = np.searchsorted(values, image_labels[image_labels > 0]) + 1
  return out


def check_labels(masks: np.ndarray) -> int:
  labels, rounds = label_jit(jnp.asarray(masks))
  labels = np.asarray(labels)
  np.testing.assert_array_equal(labels == 0, ~masks)
  # The root of a component is its first pixel in raster order, so renumbering 1..K in the order
  # of the roots is skimage's numbering exactly.
  np.testing.assert_array_equal(_as_skimage(labels), skimage_labels(masks))
  return int(rounds)


def _spiral(size: int) -> np.ndarray:
  """A one-pixel-wide square spiral, arms two pixels apart (one 8-connected region)."""
  mask = np.zeros((size, size), bool)
  y, x, direction = 0, 0, 0
  steps = ((0, 1), (1, 0), (0, -1), (-1, 0))
  mask[y, x] = True
  turns = 0
  while turns < 2:
    dy, dx = steps[direction]
    ahead, beyond = (y + dy, x + dx), (y + 2 * dy, x + 2 * dx)
    inside = lambda p: 0 <= p[0] < size and 0 <= p[1] < size
    if inside(ahead) and not mask[ahead] and (not inside(beyond) or not mask[beyond]):
      y, x = ahead
      mask[y, x] = True
      turns = 0
    else:
      direction, turns = (direction + 1) % 4, turns + 1
  return mask


def _snake(size: int) -> np.ndarray:
  """Rows 0, 2, 4, ... joined at alternating ends (a boustrophedon)."""
  mask = np.zeros((size, size), bool)
  mask[::2] = True
  mask[1::4, -1] = True
  mask[3::4, 0] = True
  return mask


def _longest_path(mask: np.ndarray) -> int:
  """Breadth-first distance (8-neighbourhood) from the first pixel to the farthest one."""
  start = tuple(np.argwhere(mask)[0])
  distance, queue = {start: 0}, collections.deque([start])
  while queue:
    y, x = queue.popleft()
    for dy in (-1, 0, 1):
      for dx in (-1, 0, 1):
        p = (y + dy, x + dx)
        if 0 <= p[0] < mask.shape[0] and 0 <= p[1] < mask.shape[1] and mask[p] and p not in distance:
          distance[p] = distance[(y, x)] + 1
          queue.append(p)
  return max(distance.values())


@pytest.mark.parametrize("shape", [(17, 23), (64, 64)])
def test_labels_match_skimage_on_random_masks(shape):
  rng = np.random.default_rng(sum(shape))
  densities = (0.05, 0.2, 0.4, 0.5, 0.6, 0.9)
  masks = np.stack([rng.random(shape) < d for d in densities] + [np.zeros(shape, bool), np.ones(shape, bool)])
  # Blobs: smoothed noise thresholded, as heatmaps give.
  noise = rng.random((3, shape[0] // 4 + 2, shape[1] // 4 + 2)).astype(np.float32)
  blobs = np.asarray(jax.image.resize(jnp.asarray(noise), (3, *shape), "bilinear")) > 0.6
  masks = np.concatenate([masks, blobs])
  # Many components in some masks (about one per 13 pixels at density 0.2).
  assert max(skimage_labels(masks).max(axis=(1, 2))) > shape[0] * shape[1] / 20
  check_labels(masks)


def test_labels_snake_and_spiral_need_few_rounds():
  masks = np.stack([_spiral(128), _snake(128), _spiral(128).T[::-1], _snake(128)[:, ::-1].T])
  assert all(skimage_label(m, connectivity=2).max() == 1 for m in masks)
  paths = [_longest_path(m) for m in masks]
  assert min(paths) > 4000  # plain min-label propagation would need this many rounds
  rounds = check_labels(masks)
  assert rounds <= 8, rounds  # pointer jumping: a handful


def test_largest_component_and_box():
  mask = np.zeros((3, 12, 16), bool)
  mask[0, 1:3, 1:3] = True  # 4 pixels
  mask[0, 5:8, 9:15] = True  # 18: the largest
  mask[0, 10, 0] = True
  mask[1, 0:2, 10:12] = True  # two regions of 4: the first in raster order wins
  mask[1, 6:8, 2:4] = True
  mask[1, 3, 3] = True  # diagonal to nothing: a third region of 1
  region, found = jax.jit(connected_components.largest_component)(jnp.asarray(mask))
  boxes = np.asarray(connected_components.mask_bounding_box(region, found))
  assert np.asarray(found).tolist() == [True, True, False]
  np.testing.assert_array_equal(np.asarray(region[0]), np.pad(np.ones((3, 6), bool), ((5, 4), (9, 1))))
  np.testing.assert_array_equal(boxes, [[5, 9, 8, 15], [0, 10, 2, 12], [0, 0, 12, 16]])
  assert not np.asarray(region[2]).any()


def test_largest_component_ties_follow_pixel_order_not_block_order():
  # Equal sizes: the region at (0, 6) comes first in raster order, though the other one's 2x2
  # block (0, 0) comes before block (0, 3).
  mask = np.zeros((1, 6, 10), bool)
  mask[0, 1, 0:2] = True
  mask[0, 0, 6:8] = True
  region, found = jax.jit(connected_components.largest_component)(jnp.asarray(mask))
  expected = np.zeros_like(mask)
  expected[0, 0, 6:8] = True
  np.testing.assert_array_equal(np.asarray(region), expected)
  assert bool(found[0])


def test_labels_across_block_borders():
  """Every way two pixels of neighbouring 2x2 blocks can touch, with odd sizes (padded blocks)."""
  masks = []
  for y, x in np.ndindex(4, 4):  # a pixel at each position of a 2x2 block pair's neighbourhood
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1), (0, 2), (2, 0), (2, 2)):
      mask = np.zeros((7, 9), bool)
      mask[1 + y, 2 + x] = mask[1 + y + dy, 2 + x + dx] = True
      masks.append(mask)
  check_labels(np.stack(masks))
