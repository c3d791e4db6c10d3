"""Tests for image preprocessing from config (cxrjax/data/transforms.py), against PIL recipes."""

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cxrjax.data import datasets
from cxrjax.data import images
from cxrjax.data import transforms

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _clip_recipe(path, size=224):
  """CLIP's image processor as DESIGN.md writes it: bicubic shortest side to `size` (long side
  int(size * long / short)), centre crop ((h - size) // 2, (w - size) // 2), / 255, CLIP mean/std."""
  image = Image.open(path).convert("RGB")
  width, height = image.size
  if width <= height:
    new = (size, int(size * height / width))
  else:
    new = (int(size * width / height), size)
  image = image.resize(new, Image.Resampling.BICUBIC)
  array = np.asarray(image)
  top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
  array = array[top:top + size, left:left + size]
  return (array.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def _config(**preprocessing):
  return ml_collections.ConfigDict(dict(
      data=dict(name="iu_xray", data_dir="", image_size=224),
      model=dict(encoder=dict(preprocessing=preprocessing) if preprocessing else dict(block_sizes=(1,)))))


def test_bicubic_shortest_side_crop_with_clip_statistics_matches_the_pil_recipe(shared_data, tmp_path):
  preprocessing = transforms.from_config(_config(normalization="clip", resize_filter="bicubic",
                                                 resize_rule="shortest_side_crop"))
  assert preprocessing.num_views == 2  # IU X-ray studies
  # Real Open-i PNGs (width 512, height above it) and a landscape crop of one, so both branches run.
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  landscape = tmp_path / "landscape.png"
  Image.fromarray(images.load_image(paths[0])[:300]).save(landscape)
  for path in paths + [landscape]:
    got = transforms.load_for_model(path, preprocessing)
    assert got.shape == (224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _clip_recipe(path), atol=1e-5)


def test_defaults_are_imagenet_bilinear_square(shared_data):
  config = _config()
  config.data.name = "chestxray14"
  preprocessing = transforms.from_config(config)
  assert (preprocessing.normalization, preprocessing.resize_filter, preprocessing.resize_rule,
          preprocessing.num_views, preprocessing.random_flip) == ("imagenet", "bilinear", "square", 1, False)
  path = shared_data / "iu_xray" / "images" / "CXR54_IM-2145-1001.png"
  expected = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
  expected = (np.asarray(expected).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  np.testing.assert_allclose(transforms.load_for_model(path, preprocessing), expected, atol=1e-5)
  config.data.num_views = 2
  assert transforms.from_config(config).num_views == 2


def test_train_crop_is_a_window_of_the_resized_image():
  image = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)
  preprocessing = transforms.Preprocessing(image_size=56, train_resize_size=64)
  resized = np.asarray(Image.fromarray(image).resize((106, 64), Image.Resampling.BILINEAR))  # int(64 * 150 / 90)
  for seed in range(5):
    crop = preprocessing.train_view(image, np.random.default_rng(seed))
    windows = [(top, left) for top in range(64 - 56 + 1) for left in range(106 - 56 + 1)
               if np.array_equal(resized[top:top + 56, left:left + 56], crop)]
    assert len(windows) == 1
  flipping = transforms.Preprocessing(image_size=56, train_resize_size=56, random_flip=True)
  flips = {flipping.train_view(image[:, :90], np.random.default_rng(seed))[:, 0, 0].tobytes() for seed in range(8)}
  assert len(flips) == 2  # train_resize_size == image_size: only the flip varies


def test_bad_preprocessing_is_named():
  with pytest.raises(ValueError, match="unknown resize_rule 'crop'"):
    transforms.from_config(_config(resize_rule="crop"))
  with pytest.raises(datasets.DataConfigError, match="unknown fields \\['mean'\\]"):
    transforms.from_config(_config(mean=0.5))
  with pytest.raises(ValueError, match="unknown normalization 'imagenet21k'"):
    transforms.Preprocessing(normalization="imagenet21k")


def test_random_rotation_rotates_before_the_crop_and_draws_only_when_asked(shared_data):
  """With rotation 0 the training view is the unrotated one, drawn from the same random numbers; with
  rotation it is PIL's rotation of the resized image by the drawn angle, then the same crop."""
  image = images.load_image(sorted((shared_data / "iu_xray" / "images").glob("*.png"))[0])
  plain = transforms.Preprocessing(image_size=64, random_flip=False)
  rotating = transforms.Preprocessing(image_size=64, random_flip=False, random_rotation=10.0)
  unrotated = plain.train_view(image, np.random.default_rng(3))
  np.testing.assert_array_equal(transforms.Preprocessing(image_size=64).train_view(image, np.random.default_rng(3)),
                                unrotated)
  rotated = rotating.train_view(image, np.random.default_rng(3))
  rng = np.random.default_rng(3)
  angle = rng.uniform(-10.0, 10.0)
  resized = np.asarray(Image.fromarray(plain.resize_shortest_side(image, plain.train_resize_size)).rotate(
      angle, resample=Image.Resampling.BILINEAR))
  top, left = int(rng.integers(0, resized.shape[0] - 63)), int(rng.integers(0, resized.shape[1] - 63))
  np.testing.assert_array_equal(rotated, resized[top:top + 64, left:left + 64])
  assert rotated.shape == (64, 64, 3) and not np.array_equal(rotated, unrotated)
