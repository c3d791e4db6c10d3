"""Tests for image preprocessing from config (cxrjax/data/transforms.py), against PIL recipes: the evaluation
view of each resize rule, and each config family's training view on real images of every shape."""

import dataclasses
import importlib
import json

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cxrjax.core import config as config_lib
from cxrjax.run import workdir
from cxrjax.data import datasets
from cxrjax.data import images
from cxrjax.data import pipeline
from cxrjax.data import transforms

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# Every config family of configs/ (demo: the main job's attention captioner on phantoms).
FAMILIES = (
  "demo",
  "iu_xray_attention",
  "iu_xray_lstm",
  "iu_xray_cam",
  "chestxray14_agcnn",
  "rocov2_graph",
  "roco_git",
  "roco_blip",
)
NO_AUGMENTATION = dict(random_crop=False, flip=False, rotation=0.0)


def _clip_recipe(image, size=224):
  """CLIP's image processor as DESIGN.md writes it: bicubic shortest side to `size` (long side
  int(size * long / short)), centre crop ((h - size) // 2, (w - size) // 2), / 255, CLIP mean/std."""
  image = Image.fromarray(image)
  width, height = image.size
  if width <= height:
    new = (size, int(size * height / width))
  else:
    new = (int(size * width / height), size)
  array = np.asarray(image.resize(new, Image.Resampling.BICUBIC))
  top, left = (array.shape[0] - size) // 2, (array.shape[1] - size) // 2
  array = array[top : top + size, left : left + size]
  return (array.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def _blip_recipe(image, size=384):
  """BLIP's image processor as DESIGN.md writes it: bicubic straight to size x size, / 255, CLIP mean/std."""
  array = np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BICUBIC))
  return (array.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD


def _shortest_side(image, size, resample):
  """torchvision's Resize(size) with PIL: the shorter side to size, the longer to int(size * long / short)."""
  height, width = image.shape[:2]
  new = (int(size * width / height), size) if height <= width else (size, int(size * height / width))
  return np.asarray(Image.fromarray(image).resize(new, resample))


def _config(augment=None, **preprocessing):
  data = dict(name="iu_xray", data_dir="", image_size=224)
  if augment is not None:
    data["augment"] = augment
  return ml_collections.ConfigDict(
    dict(data=data, model=dict(encoder=dict(preprocessing=preprocessing) if preprocessing else dict(block_sizes=(1,))))
  )


def _family_config(name: str, arg: str = "") -> ml_collections.ConfigDict:
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(arg) if arg else module.get_config()


@pytest.fixture(scope="module")
def views(shared_data):
  """Real views of the shapes the families meet (uint8 [H, W, 3]): the 492x512 Open-i PNG, a wide (362x512)
  and a tall (633x512) one, and a very wide (400x1024) and a very tall (1024x300) crop of a 1024x1024
  ChestX-ray14 image (ROCOv2 has every aspect ratio: CT, MRI, ultrasound)."""
  iu = shared_data / "iu_xray" / "images"
  nih = images.load_image(shared_data / "nih_chestxray14" / "images" / "00000129_000.png")
  result = {
    "492x512": images.load_image(iu / "CXR303_IM-1404-1001.png"),
    "wide": images.load_image(iu / "CXR54_IM-2145-1001.png"),
    "tall": images.load_image(iu / "CXR54_IM-2145-1002.png"),
    "very wide": np.ascontiguousarray(nih[300:700]),
    "very tall": np.ascontiguousarray(nih[:, 350:650]),
  }
  assert {name: view.shape[:2] for name, view in result.items()} == {
    "492x512": (492, 512),
    "wide": (362, 512),
    "tall": (633, 512),
    "very wide": (400, 1024),
    "very tall": (1024, 300),
  }
  return result


def _windows(resized, crop):
  """The (top, left) of every window of `resized` equal to `crop`."""
  size = crop.shape[0]
  height, width = resized.shape[0] - size + 1, resized.shape[1] - size + 1
  return [
    (top, left)
    for top in range(height)
    for left in range(width)
    if np.array_equal(resized[top : top + size, left : left + size], crop)
  ]


@pytest.mark.parametrize("name", FAMILIES)
def test_training_view_with_augmentation_off_is_the_evaluation_view(name, views):
  """Each family's config with data.augment turned off: the pipeline's training example (PrepareStudy with the
  per-example rng, as grain's random_map calls it) holds exactly the views evaluation and prediction see."""
  config = _family_config(name)
  config.data.augment.update(NO_AUGMENTATION)
  preprocessing = transforms.from_config(config)
  assert preprocessing.augment == transforms.Augmentation()
  train = pipeline.PrepareStudy(None, preprocessing, max_length=2, cleaning=None, train=True)
  evaluate = pipeline.PrepareStudy(None, preprocessing, max_length=2, cleaning=None, train=False)
  size, num_views, shapes = preprocessing.image_size, preprocessing.num_views, list(views)
  for index in range(len(shapes)):
    study = [views[shapes[(index + k) % len(shapes)]] for k in range(num_views)]
    record = {"id": f"study {index}", "images": study}
    trained = train(record, np.random.default_rng(index))["images"]
    evaluated = evaluate(record)["images"]
    assert trained.shape == evaluated.shape == (num_views, size, size, 3)
    np.testing.assert_array_equal(trained, evaluated)
    for view, image in zip(evaluated, record["images"]):  # What prediction and the web server compute.
      np.testing.assert_array_equal(view, preprocessing(image))


def test_git_and_blip_train_on_their_image_processors_views(views):
  """Seed 002 fine-tunes on the processors' output: GIT's CLIP resize + centre crop, BLIP's bicubic 384
  squash; no crop the processor does not take, no flip, for any draw."""
  for name, recipe in (("roco_git", _clip_recipe), ("roco_blip", _blip_recipe)):
    preprocessing = transforms.from_config(_family_config(name))
    assert preprocessing.augment == transforms.Augmentation(), name
    for shape, view in views.items():
      expected = recipe(view)
      for seed in range(3):
        got = preprocessing(view, np.random.default_rng(seed))
        assert got.shape == expected.shape, (name, shape)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=f"{name} {shape}")


def test_seed003_trains_on_flipped_and_rotated_squashes(views):
  """Seed 003: Resize((224, 224)), random horizontal flip, rotation of up to 10 degrees; no crop. (The
  angle is drawn first and the flip applied last: a flip then a rotation by a is a rotation by -a then the
  flip, and the angle is symmetric, so the views have the seed's distribution.)"""
  preprocessing = transforms.from_config(_family_config("rocov2_graph"))
  assert preprocessing.augment == transforms.Augmentation(flip=True, rotation=10.0)
  flips = set()
  for shape, view in views.items():
    squash = Image.fromarray(view).resize((224, 224), Image.Resampling.BILINEAR)
    for seed in range(4):
      rng = np.random.default_rng(seed)
      angle = rng.uniform(-10.0, 10.0)
      expected = np.asarray(squash.rotate(angle, resample=Image.Resampling.BILINEAR))
      flipped = rng.random() < 0.5
      flips.add(flipped)
      expected = expected[:, ::-1] if flipped else expected
      np.testing.assert_array_equal(
        preprocessing.train_view(view, np.random.default_rng(seed)), expected, err_msg=f"{shape} seed {seed}"
      )
  assert flips == {True, False}


@pytest.mark.parametrize(
  "name, flip",
  [("iu_xray_attention", False), ("iu_xray_lstm", False), ("iu_xray_cam", False), ("chestxray14_agcnn", True)],
)
def test_r2gen_and_agcnn_train_on_random_crops_of_a_256_resize(name, flip, views):
  """IU X-ray (R2Gen: Resize(256), RandomCrop(224); unflipped, the reports name sides) and AG-CNN (256,
  random 224 crop, random flip): each training view is a 224 window of the shorter side resized to 256."""
  preprocessing = transforms.from_config(_family_config(name))
  assert preprocessing.augment == transforms.Augmentation(random_crop=True, flip=flip)
  assert preprocessing.crop_resize == 256
  resized = _shortest_side(views["492x512"], 256, Image.Resampling.BILINEAR)
  assert resized.shape == (256, 266, 3)
  flips, corners = set(), set()
  for seed in range(6):
    crop = preprocessing.train_view(views["492x512"], np.random.default_rng(seed))
    windows = _windows(resized, crop)
    flips.add(not windows)
    windows = windows or _windows(resized, crop[:, ::-1])
    assert len(windows) == 1, seed
    corners.update(windows)
  assert flips == ({True, False} if flip else {False}) and len(corners) > 1


@pytest.mark.parametrize(
  "spec", ["demo", "demo:model=cam", "roco_git:demo", "roco_blip:demo", "rocov2_graph:demo", "rocov2_graph:demo,smoke"]
)
def test_phantom_demos_train_as_their_numbers_were_measured(spec, views):
  """The demos on phantoms keep the training view their published numbers came from, draw for draw: the
  shorter side to round(S * 8 / 7), a window at rng.integers(top), rng.integers(left), never flipped."""
  config = _family_config(*spec.split(":"))
  preprocessing = transforms.from_config(config)
  size = preprocessing.image_size
  assert preprocessing.augment == transforms.Augmentation(random_crop=True)
  assert preprocessing.crop_resize == round(size * 8 / 7)
  for shape, view in views.items():
    for seed in range(2):
      rng = np.random.default_rng(seed)
      resized = _shortest_side(view, preprocessing.crop_resize, transforms.RESIZE_FILTERS[preprocessing.resize_filter])
      top = int(rng.integers(0, resized.shape[0] - size + 1))
      left = int(rng.integers(0, resized.shape[1] - size + 1))
      np.testing.assert_array_equal(
        preprocessing.train_view(view, np.random.default_rng(seed)),
        resized[top : top + size, left : left + size],
        err_msg=f"{shape} seed {seed}",
      )


def test_old_workdir_configs_read_as_they_trained(tmp_path, views):
  """A workdir's config.json from before `data.augment` (random_flip, train_resize_size, random_rotation; the
  random crop always taken) loads with the augmentation it trained with and the same evaluation view; a new
  config survives config.json unchanged."""
  new = _family_config("roco_git")
  old = new.to_dict()
  del old["data"]["augment"]
  old["data"].update(random_flip=False, train_resize_size=224)  # What roco_chest_experiment wrote.
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / workdir.CONFIG_FILE).write_text(json.dumps(old))
  loaded = transforms.from_config(workdir.read_config(tmp_path / "old"))
  assert loaded.augment == transforms.Augmentation(random_crop=True, crop_resize=224)
  assert loaded == dataclasses.replace(transforms.from_config(new), augment=loaded.augment)
  view = views["very wide"]  # 224 x 573 after the resize: the old random window, not the centre crop.
  np.testing.assert_array_equal(loaded.eval_view(view), transforms.from_config(new).eval_view(view))
  crop = loaded.train_view(view, np.random.default_rng(0))
  assert _windows(_shortest_side(view, 224, Image.Resampling.BICUBIC), crop)
  old = _family_config("rocov2_graph").to_dict()
  del old["data"]["augment"]
  old["data"].update(random_flip=True, random_rotation=10.0)
  assert transforms.from_config(ml_collections.ConfigDict(old)).augment == transforms.Augmentation(
    random_crop=True, flip=True, rotation=10.0
  )
  for name in FAMILIES:
    config = _family_config(name)
    (tmp_path / name).mkdir()
    (tmp_path / name / workdir.CONFIG_FILE).write_text(config.to_json())
    assert transforms.from_config(workdir.read_config(tmp_path / name)) == transforms.from_config(config), name


def test_bad_augmentation_is_one_line_naming_the_field():
  cases = [
    (
      dict(random_crop=True, crop_resize=200),
      r"data\.augment\.crop_resize \(200\) must be >= data\.image_size \(224\)",
    ),
    (dict(flip="yes"), r"data\.augment\.flip must be true or false, got 'yes'"),
    (dict(random_crop=1), r"data\.augment\.random_crop must be true or false"),
    (dict(rotation=-5.0), r"data\.augment\.rotation must be degrees in \[0, 180\], got -5\.0"),
    (dict(crop_resize=25.6), r"data\.augment\.crop_resize must be an int >= 0"),
    (dict(crop=True), r"data\.augment has unknown fields \['crop'\]; known: random_crop, crop_resize,"),
    (True, r"data\.augment must be a section with fields random_crop, crop_resize, flip, rotation"),
  ]
  for augment, message in cases:
    with pytest.raises(datasets.DataConfigError, match=message) as error:
      transforms.from_config(_config(augment=augment))
    assert "\n" not in str(error.value)
  config = _config(augment=dict(flip=True))
  config.data.random_flip = True  # An old field beside the new section: which one would count?
  with pytest.raises(
    datasets.DataConfigError, match=r"^data\.random_flip is replaced by data\.augment\.flip; remove it$"
  ):
    transforms.from_config(config)
  # The old fields are gone from the configs, so an old command line's override is refused by name.
  with pytest.raises(config_lib.ConfigError, match="unknown config field 'random_flip' in config.data"):
    config_lib.check_overrides(_family_config("iu_xray_attention"), ["--config.data.random_flip=True"])


def test_bicubic_shortest_side_crop_with_clip_statistics_matches_the_pil_recipe(shared_data, tmp_path):
  preprocessing = transforms.from_config(
    _config(augment={}, normalization="clip", resize_filter="bicubic", resize_rule="shortest_side_crop")
  )
  assert preprocessing.num_views == 2  # IU X-ray studies
  # Real Open-i PNGs (width 512, height above it) and a landscape crop of one, so both branches run.
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  landscape = tmp_path / "landscape.png"
  Image.fromarray(images.load_image(paths[0])[:300]).save(landscape)
  for path in paths + [landscape]:
    got = transforms.load_for_model(path, preprocessing)
    assert got.shape == (224, 224, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, _clip_recipe(images.load_image(path)), atol=1e-5)


def test_defaults_are_imagenet_bilinear_square_and_no_augmentation(shared_data):
  config = _config(augment={})
  config.data.name = "chestxray14"
  preprocessing = transforms.from_config(config)
  assert (
    preprocessing.normalization,
    preprocessing.resize_filter,
    preprocessing.resize_rule,
    preprocessing.num_views,
    preprocessing.augment,
  ) == ("imagenet", "bilinear", "square", 1, transforms.Augmentation())
  path = shared_data / "iu_xray" / "images" / "CXR54_IM-2145-1001.png"
  expected = Image.open(path).convert("RGB").resize((224, 224), Image.Resampling.BILINEAR)
  expected = (np.asarray(expected).astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
  np.testing.assert_allclose(transforms.load_for_model(path, preprocessing), expected, atol=1e-5)
  config.data.num_views = 2
  assert transforms.from_config(config).num_views == 2


def test_train_crop_is_a_window_of_the_resized_image():
  image = np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8)
  preprocessing = transforms.Preprocessing(
    image_size=56, augment=transforms.Augmentation(random_crop=True, crop_resize=64)
  )
  resized = np.asarray(Image.fromarray(image).resize((106, 64), Image.Resampling.BILINEAR))  # 64 * 150 / 90
  for seed in range(5):
    crop = preprocessing.train_view(image, np.random.default_rng(seed))
    assert len(_windows(resized, crop)) == 1
  flipping = transforms.Preprocessing(image_size=56, augment=transforms.Augmentation(flip=True))
  evaluation = flipping.eval_view(image)
  flips = {flipping.train_view(image, np.random.default_rng(seed)).tobytes() for seed in range(8)}
  assert flips == {evaluation.tobytes(), evaluation[:, ::-1].tobytes()}  # Only the flip varies.


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
  plain = transforms.Preprocessing(image_size=64, augment=transforms.Augmentation(random_crop=True))
  rotating = transforms.Preprocessing(image_size=64, augment=transforms.Augmentation(random_crop=True, rotation=10.0))
  unrotated = plain.train_view(image, np.random.default_rng(3))
  rotated = rotating.train_view(image, np.random.default_rng(3))
  rng = np.random.default_rng(3)
  angle = rng.uniform(-10.0, 10.0)
  resized = np.asarray(
    Image.fromarray(plain.resize_shortest_side(image, plain.crop_resize)).rotate(
      angle, resample=Image.Resampling.BILINEAR
    )
  )
  top, left = int(rng.integers(0, resized.shape[0] - 63)), int(rng.integers(0, resized.shape[1] - 63))
  np.testing.assert_array_equal(rotated, resized[top : top + 64, left : left + 64])
  assert rotated.shape == (64, 64, 3) and not np.array_equal(rotated, unrotated)
