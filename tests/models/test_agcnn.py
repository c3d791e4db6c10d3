"""AG-CNN: connected components and the attention crop in JAX against skimage / PIL, the model."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image
from skimage.measure import label as skimage_label

from cxrjax.data import images as image_lib
from cxrjax.models import agcnn
from cxrjax.models.encoders import densenet
from cxrjax.weights import chexnet

label_jit = jax.jit(lambda mask: agcnn.label_components(mask, return_iterations=True))
crop_jit = jax.jit(agcnn.attention_crop, static_argnames=("threshold", "out_size", "antialias"))
TINY = densenet.DenseNetConfig(block_sizes=(1, 1), growth_rate=4, stem_features=8, num_classes=0)


def _skimage_labels(masks: np.ndarray) -> np.ndarray:
  return np.stack([skimage_label(mask, connectivity=2, background=0) for mask in masks])


def _as_skimage(labels: np.ndarray) -> np.ndarray:
  """Our labels (1 + root index) renumbered 1..K in increasing order, per image."""
  out = np.zeros_like(labels)
  for index, image_labels in enumerate(labels):
    values = np.unique(image_labels[image_labels > 0])
    out[index][image_labels > 0] = np.searchsorted(values, image_labels[image_labels > 0]) + 1
  return out


def _check_labels(masks: np.ndarray) -> int:
  labels, rounds = label_jit(jnp.asarray(masks))
  labels = np.asarray(labels)
  np.testing.assert_array_equal(labels == 0, ~masks)
  # The root of a component is its first pixel in raster order, so renumbering 1..K in the order
  # of the roots is skimage's numbering exactly.
  np.testing.assert_array_equal(_as_skimage(labels), _skimage_labels(masks))
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


# Connected components.


@pytest.mark.parametrize("shape", [(17, 23), (64, 64)])
def test_labels_match_skimage_on_random_masks(shape):
  rng = np.random.default_rng(sum(shape))
  densities = (0.05, 0.2, 0.4, 0.5, 0.6, 0.9)
  masks = np.stack([rng.random(shape) < d for d in densities]
                   + [np.zeros(shape, bool), np.ones(shape, bool)])
  # Blobs: smoothed noise thresholded, as heatmaps give.
  noise = rng.random((3, shape[0] // 4 + 2, shape[1] // 4 + 2)).astype(np.float32)
  blobs = np.asarray(jax.image.resize(jnp.asarray(noise), (3, *shape), "bilinear")) > 0.6
  masks = np.concatenate([masks, blobs])
  # Many components in some masks (about one per 13 pixels at density 0.2).
  assert max(_skimage_labels(masks).max(axis=(1, 2))) > shape[0] * shape[1] / 20
  _check_labels(masks)


def test_labels_snake_and_spiral_need_few_rounds():
  masks = np.stack([_spiral(128), _snake(128), _spiral(128).T[::-1], _snake(128)[:, ::-1].T])
  assert all(skimage_label(m, connectivity=2).max() == 1 for m in masks)
  paths = [_longest_path(m) for m in masks]
  assert min(paths) > 4000  # plain min-label propagation would need this many rounds
  rounds = _check_labels(masks)
  assert rounds <= 8, rounds  # pointer jumping: a handful


def test_largest_component_and_box():
  mask = np.zeros((3, 12, 16), bool)
  mask[0, 1:3, 1:3] = True  # 4 pixels
  mask[0, 5:8, 9:15] = True  # 18: the largest
  mask[0, 10, 0] = True
  mask[1, 0:2, 10:12] = True  # two regions of 4: the first in raster order wins
  mask[1, 6:8, 2:4] = True
  mask[1, 3, 3] = True  # diagonal to nothing: a third region of 1
  region, found = jax.jit(agcnn.largest_component)(jnp.asarray(mask))
  boxes = np.asarray(agcnn.mask_bounding_box(region, found))
  assert np.asarray(found).tolist() == [True, True, False]
  np.testing.assert_array_equal(np.asarray(region[0]), np.pad(np.ones((3, 6), bool), ((5, 4), (9, 1))))
  np.testing.assert_array_equal(boxes, [[5, 9, 8, 15], [0, 10, 2, 12], [0, 0, 12, 16]])
  assert not np.asarray(region[2]).any()


# Heatmap and crop.


def _reference_heatmap(feature_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """The seed's heatmap in numpy: L1 over channels, min-max, bilinear up-sampling (PIL, half-pixel)."""
  l1 = np.abs(feature_map.astype(np.float64)).sum(-1)
  if l1.max() == l1.min():
    return np.zeros(size, np.float32)  # the seed: 0 / 0 = NaN everywhere, an empty mask
  l1 = (l1 - l1.min()) / (l1.max() - l1.min())
  return np.asarray(Image.fromarray(l1.astype(np.float32), mode="F").resize(size[::-1], Image.Resampling.BILINEAR))


def _reference_crop(image: np.ndarray, heatmap: np.ndarray, threshold: float, out_size: int):
  """Per image, as the seed: skimage labels, the largest region's box (last row and column
  included), slice, resize with PIL (bilinear, antialiased when shrinking); whole image if empty."""
  labelled = skimage_label(heatmap > threshold, connectivity=2)
  if labelled.max() == 0:
    box = (0, 0, *image.shape[:2])
  else:
    largest = np.argmax(np.bincount(labelled.ravel())[1:]) + 1
    ys, xs = np.nonzero(labelled == largest)
    box = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
  piece = image[box[0]:box[2], box[1]:box[3]].astype(np.float32)
  crop = np.stack([np.asarray(Image.fromarray(piece[..., c], mode="F").resize(
      (out_size, out_size), Image.Resampling.BILINEAR)) for c in range(piece.shape[-1])], axis=-1)
  return crop, np.array(box)


def _check_crop(images, feature_maps, threshold, out_size):
  crops, boxes, heatmaps, masks = crop_jit(jnp.asarray(images), jnp.asarray(feature_maps),
                                           threshold=threshold, out_size=out_size)
  for index in range(len(images)):
    heatmap = np.asarray(heatmaps[index])
    np.testing.assert_allclose(heatmap, _reference_heatmap(feature_maps[index], images.shape[1:3]),
                               atol=2e-6)
    # The reference thresholds our heatmap, so that a value within rounding of the threshold
    # cannot make the two disagree.
    crop, box = _reference_crop(images[index], heatmap, threshold, out_size)
    np.testing.assert_array_equal(np.asarray(boxes[index]), box)
    np.testing.assert_allclose(np.asarray(crops[index]), crop, rtol=1e-5, atol=3e-5)  # PIL: float32 passes
    region = np.asarray(masks[index])
    if region.any():
      assert skimage_label(region, connectivity=2).max() == 1
      assert not (region & ~(heatmap > threshold)).any()
  return np.asarray(boxes)


@pytest.mark.parametrize("out_size", [24, 80])  # shrinking (antialiased) and enlarging
def test_attention_crop_matches_numpy_reference(out_size):
  rng = np.random.default_rng(out_size)
  images = rng.normal(size=(5, 56, 48, 3)).astype(np.float32)
  feature_maps = np.maximum(rng.normal(size=(5, 7, 6, 32)), 0).astype(np.float32)
  feature_maps[3] = 1.0  # constant: empty mask, the whole image
  boxes = _check_crop(images, feature_maps, 0.7, out_size)
  np.testing.assert_array_equal(boxes[3], [0, 0, 56, 48])
  assert len({tuple(b) for b in boxes}) == 5


def test_crop_equals_slice_then_resize_at_the_border():
  # A box with bright pixels just outside: a crop that sampled the whole image would blend them in.
  image = np.zeros((1, 20, 20, 1), np.float32)
  image[0, 5:15, 5:15] = 1.0
  crop = np.asarray(agcnn.crop_and_resize(jnp.asarray(image), jnp.array([[5, 5, 15, 15]]), 40))
  np.testing.assert_array_equal(crop, np.ones((1, 40, 40, 1), np.float32))


def test_attention_crop_keeps_the_batch_sharded():
  if jax.device_count() < 2:
    pytest.skip("needs several devices (conftest simulates 8 CPU devices)")
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2 * jax.device_count(), 32, 32, 3)).astype(np.float32)
  feature_maps = np.maximum(rng.normal(size=(2 * jax.device_count(), 4, 4, 8)), 0).astype(np.float32)
  sharded = jax.jit(lambda x, f: agcnn.attention_crop(x, f, out_size=16), in_shardings=(sharding, sharding))
  hlo = sharded.lower(images, feature_maps).compile().as_text()
  # Per-image indexing: only the loops' "done" flags are reduced across devices.
  assert "all-gather" not in hlo and "all-to-all" not in hlo and "collective-permute" not in hlo
  result = sharded(jax.device_put(images, sharding), jax.device_put(feature_maps, sharding))
  assert result.crops.sharding.spec == jax.sharding.PartitionSpec("data")
  expected = crop_jit(jnp.asarray(images), jnp.asarray(feature_maps), threshold=0.7, out_size=16)
  np.testing.assert_array_equal(np.asarray(result.boxes), np.asarray(expected.boxes))
  np.testing.assert_allclose(np.asarray(result.crops), np.asarray(expected.crops), atol=1e-6)


@pytest.fixture(scope="module")
def real_images(shared_data):
  paths = sorted((shared_data / "nih_chestxray14/images").glob("*.png"))
  assert len(paths) == 15
  return np.stack([image_lib.load_for_model(path, 224) for path in paths])


def test_real_heatmap_masks_and_crops(real_images):
  """Heatmaps from a tiny random DenseNet's 7x7 feature maps of the 15 real images."""
  config = densenet.DenseNetConfig(block_sizes=(1, 1, 1, 1), growth_rate=8, stem_features=8, num_classes=0)
  model = densenet.DenseNet(config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  feature_maps = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(real_images))["feature_map"])
  assert feature_maps.shape == (15, 7, 7, config.num_features)
  heatmaps = np.asarray(jax.jit(lambda f: agcnn.attention_heatmap(f, (224, 224)))(jnp.asarray(feature_maps)))
  masks = np.concatenate([heatmaps > t for t in (0.3, 0.5, 0.7)])
  counts = _skimage_labels(masks).max(axis=(1, 2))
  assert counts.max() >= 2 and masks.any(axis=(1, 2)).all()  # real masks with several regions
  _check_labels(masks)
  _check_crop(real_images, feature_maps, 0.7, 224)


# The model.


@pytest.fixture(scope="module")
def tiny_model():
  model = agcnn.AGCNN(backbone=TINY, num_classes=15, crop_size=24)
  images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images)
  return model, variables, images


def test_agcnn_outputs(tiny_model):
  model, variables, images = tiny_model
  out = jax.jit(model.apply)(variables, images)
  shapes = {name: value.shape for name, value in out.items()}
  assert shapes == {"global_logits": (3, 15), "local_logits": (3, 15), "fusion_logits": (3, 15),
                    "heatmap": (3, 32, 32), "boxes": (3, 4), "local_images": (3, 24, 24, 3),
                    "global_pooled": (3, TINY.num_features), "local_pooled": (3, TINY.num_features)}
  params, stats = variables["params"], variables["batch_stats"]
  branch = agcnn.Branch(TINY, 15)

  @jax.jit
  def by_parts(images):
    """The three branches called one by one, with the crop in between."""
    global_out = branch.apply({"params": params["global_branch"], "batch_stats": stats["global_branch"]},
                              images)
    crop = agcnn.attention_crop(images, global_out["feature_map"], 0.7, 24)
    local_out = branch.apply({"params": params["local_branch"], "batch_stats": stats["local_branch"]},
                             crop.crops)
    fusion = params["fusion_classifier"]
    joined = jnp.concatenate([global_out["pooled"], local_out["pooled"]], axis=-1)
    return global_out, crop, local_out, joined @ fusion["kernel"] + fusion["bias"]

  global_out, crop, local_out, fusion_logits = by_parts(images)
  np.testing.assert_allclose(global_out["pooled"], global_out["feature_map"].max(axis=(1, 2)))
  np.testing.assert_allclose(out["global_logits"], global_out["logits"], atol=1e-5)
  np.testing.assert_array_equal(out["boxes"], crop.boxes)
  np.testing.assert_allclose(out["local_images"], crop.crops, atol=1e-5)
  np.testing.assert_allclose(out["local_logits"], local_out["logits"], atol=1e-4)
  np.testing.assert_allclose(out["fusion_logits"], fusion_logits, atol=1e-4)
  assert params["fusion_classifier"]["kernel"].shape == (2 * TINY.num_features, 15)
  assert len({tuple(box) for box in np.asarray(out["boxes"]).tolist()}) > 1


def test_stages_train_only_their_branch(tiny_model):
  model, variables, images = tiny_model
  labels = jnp.asarray(np.random.default_rng(0).integers(0, 2, (3, 15)), jnp.float32)

  def loss(params, stage):
    out, updates = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images,
                               train=True, stage=stage, mutable=["batch_stats"])
    return agcnn.stage_loss(out, labels, stage), updates["batch_stats"]

  grads = jax.jit(lambda p: {s: jax.grad(loss, has_aux=True)(p, s) for s in (1, 2, 3)})(variables["params"])
  for stage, trained in ((1, "global_branch"), (2, "local_branch"), (3, "fusion_classifier")):
    stage_grads, stats = grads[stage]
    for name in ("global_branch", "local_branch", "fusion_classifier"):
      norm = optax.tree.norm(stage_grads[name])
      assert (norm > 0) == (name == trained), (stage, name, norm)
    for name in agcnn.BRANCHES:  # batch-norm statistics move only in the trained branch
      moved = optax.tree.norm(jax.tree.map(jnp.subtract, stats[name], variables["batch_stats"][name]))
      assert (moved > 0) == (name == trained), (stage, name)
    labels_tree = agcnn.stage_param_labels(variables["params"], stage)
    assert {name: set(jax.tree.leaves(tree)) for name, tree in labels_tree.items()} == {
        name: {"trained" if name == trained else "frozen"} for name in variables["params"]}


def test_stage_loss_is_bce():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 15)) * 5, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, (4, 15)), jnp.float32)
  expected = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
  assert agcnn.stage_loss({"local_logits": logits}, labels, 2) == pytest.approx(float(expected), rel=1e-5)
  mask = jnp.array([True, True, False, False])
  expected = optax.sigmoid_binary_cross_entropy(logits[:2], labels[:2]).mean()
  assert agcnn.stage_loss({"fusion_logits": logits}, labels, 3, mask) == pytest.approx(float(expected), rel=1e-5)


def test_init_branch_from_chexnet(tiny_model, tmp_path):
  model, variables, images = tiny_model
  config = densenet.DenseNetConfig(**{**TINY.to_dict(), "num_classes": 14})
  net = densenet.DenseNet(config)
  chexnet_variables = jax.jit(net.init)(jax.random.key(7), jnp.zeros((1, 32, 32, 3)))
  chexnet.save_chexnet(tmp_path / "weights", chexnet_variables, config, source={"test": True})
  loaded_config, loaded, _ = chexnet.load_chexnet(tmp_path / "weights")
  updated = agcnn.init_branch_from_chexnet(variables, loaded, "global_branch")
  branch = agcnn.Branch(loaded_config, 15)

  @jax.jit
  def feature_maps(images):
    ours = branch.apply({"params": updated["params"]["global_branch"],
                         "batch_stats": updated["batch_stats"]["global_branch"]}, images)
    return ours["feature_map"], net.apply(chexnet_variables, images)["feature_map"]

  ours, theirs = feature_maps(images)
  np.testing.assert_allclose(ours, theirs, atol=1e-6)
  # The local branch and every head are untouched.
  for path in (("params", "local_branch"), ("params", "global_branch", "classifier"),
               ("params", "fusion_classifier"), ("batch_stats", "local_branch")):
    before, after = variables, updated
    for key in path:
      before, after = before[key], after[key]
    assert all(jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b), before, after)))
  deeper = densenet.DenseNet(densenet.DenseNetConfig(block_sizes=(1, 2), growth_rate=4, stem_features=8))
  deeper_variables = jax.jit(deeper.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  with pytest.raises(ValueError, match="do not fit the local_branch backbone: missing .* unexpected"):
    agcnn.init_branch_from_chexnet(variables, deeper_variables, "local_branch")


def test_render_attention_figure(tmp_path, real_images):
  image = real_images[0]
  heatmap = np.tile(np.linspace(0, 1, 224, dtype=np.float32), (224, 1))
  local = np.asarray(agcnn.crop_and_resize(jnp.asarray(image[None]), jnp.array([[20, 100, 180, 224]]), 224))[0]
  path = agcnn.render_attention_figure(image, heatmap, (20, 100, 180, 224), local, tmp_path / "f" / "a.png",
                                       title="Effusion 0.91")
  figure = np.asarray(Image.open(path).convert("RGB"))
  top = figure.shape[0] - 224
  assert figure.shape[0] > 224 and figure.shape[1] == 3 * 224 + 2 * 3
  assert tuple(figure[top + 20, 150]) == (255, 40, 40)  # the box's top edge on the global image
  assert tuple(figure[top + 100, 227 + 100]) == (255, 40, 40)  # ... and on the overlay (left edge x=100)
  # The overlay is red where the heatmap is 1, blue where it is 0.
  right, left = figure[top + 5, 227 + 220].astype(int), figure[top + 5, 227 + 2].astype(int)
  assert right[0] > right[2] and left[2] > left[0]
  with pytest.raises(ValueError, match="not a non-empty box"):
    agcnn.render_attention_figure(image, heatmap, (10, 10, 10, 20), local, tmp_path / "b.png")
