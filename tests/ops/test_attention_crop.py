"""AG-CNN's attention-guided crop inside jit against a numpy / skimage / PIL reference of the seed's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
from skimage.measure import label as skimage_label

from cxrjax.data import transforms
from cxrjax.models.encoders import densenet
from cxrjax.ops import attention_crop
from tests.ops.test_connected_components import check_labels, skimage_labels

crop_jit = jax.jit(attention_crop.attention_crop, static_argnames=("threshold", "out_size", "antialias"))


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
  piece = image[box[0] : box[2], box[1] : box[3]].astype(np.float32)
  crop = np.stack(
    [
      np.asarray(Image.fromarray(piece[..., c], mode="F").resize((out_size, out_size), Image.Resampling.BILINEAR))
      for c in range(piece.shape[-1])
    ],
    axis=-1,
  )
  return crop, np.array(box)


def _check_crop(images, feature_maps, threshold, out_size):
  crops, boxes, heatmaps, masks = crop_jit(
    jnp.asarray(images), jnp.asarray(feature_maps), threshold=threshold, out_size=out_size
  )
  for index in range(len(images)):
    heatmap = np.asarray(heatmaps[index])
    np.testing.assert_allclose(heatmap, _reference_heatmap(feature_maps[index], images.shape[1:3]), atol=2e-6)
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
  crop = np.asarray(attention_crop.crop_and_resize(jnp.asarray(image), jnp.array([[5, 5, 15, 15]]), 40))
  np.testing.assert_array_equal(crop, np.ones((1, 40, 40, 1), np.float32))


@pytest.mark.parametrize("out_size", [13, 24, 80])
@pytest.mark.parametrize("antialias", [True, False])
def test_gathered_taps_equal_dense_interpolation(out_size, antialias):
  # CPUs gather each output pixel's taps; other platforms multiply by dense interpolation matrices.
  rng = np.random.default_rng(out_size)
  images = jnp.asarray(rng.normal(size=(6, 56, 48, 3)).astype(np.float32))
  y0, x0 = rng.integers(0, 40, 6), rng.integers(0, 30, 6)
  boxes = np.stack([y0, x0, y0 + rng.integers(1, 17, 6), x0 + rng.integers(1, 19, 6)], axis=1)
  boxes[0], boxes[1], boxes[2] = [0, 0, 56, 48], [55, 0, 56, 48], [0, 47, 56, 48]  # whole image, one row, one column
  boxes = jnp.asarray(boxes, jnp.int32)
  taps, dense = (
    jax.jit(method, static_argnums=(2, 3, 4))(images, boxes, out_size, out_size + 3, antialias)
    for method in (attention_crop._crop_and_resize_taps, attention_crop._crop_and_resize_dense)
  )
  np.testing.assert_allclose(np.asarray(taps), np.asarray(dense), rtol=1e-5, atol=1e-6)


def test_attention_crop_keeps_the_batch_sharded():
  if jax.device_count() < 2:
    pytest.skip("needs several devices (conftest simulates 8 CPU devices)")
  mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.default_rng(0)
  images = rng.normal(size=(2 * jax.device_count(), 32, 32, 3)).astype(np.float32)
  feature_maps = np.maximum(rng.normal(size=(2 * jax.device_count(), 4, 4, 8)), 0).astype(np.float32)
  sharded = jax.jit(lambda x, f: attention_crop.attention_crop(x, f, out_size=16), in_shardings=(sharding, sharding))
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
  return np.stack([transforms.load_for_model(path, transforms.Preprocessing(image_size=224)) for path in paths])


def test_real_heatmap_masks_and_crops(real_images):
  """Heatmaps from a tiny random DenseNet's 7x7 feature maps of the 15 real images."""
  config = densenet.DenseNetConfig(block_sizes=(1, 1, 1, 1), growth_rate=8, stem_features=8, num_classes=0)
  model = densenet.DenseNet(config)
  variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
  feature_maps = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(real_images))["feature_map"])
  assert feature_maps.shape == (15, 7, 7, config.num_features)
  heatmaps = np.asarray(jax.jit(lambda f: attention_crop.attention_heatmap(f, (224, 224)))(jnp.asarray(feature_maps)))
  masks = np.concatenate([heatmaps > t for t in (0.3, 0.5, 0.7)])
  counts = skimage_labels(masks).max(axis=(1, 2))
  assert counts.max() >= 2 and masks.any(axis=(1, 2)).all()  # real masks with several regions
  check_labels(masks)
  _check_crop(real_images, feature_maps, 0.7, 224)
