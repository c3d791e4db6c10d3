"""Image preprocessing from config: the evaluation view, training augmentation, normalisation, in one place.

`Preprocessing` says how a decoded view (uint8 [H, W, 3], images.py) becomes model input
(float32 [image_size, image_size, 3]); the pipeline, evaluation and prediction all use it, built by
`from_config(config)` from:
  config.data.image_size, config.data.num_views (default: the dataset's),
  config.model.encoder.preprocessing: {"normalization": "imagenet" | "clip",
                                       "resize_filter": "bilinear" | "bicubic",
                                       "resize_rule": "square" | "shortest_side_crop"}
  (each defaults to imagenet / bilinear / square when absent),
  config.data.augment: {"random_crop": bool, "crop_resize": int, "flip": bool, "rotation": float}
  (training only; an absent field is off: random_crop False, crop_resize 0, flip False, rotation 0.0).

The evaluation view (evaluation, prediction, serving), by the resize rule:
  "square":             straight to image_size x image_size (CheXNet; R2Gen's Resize((224, 224)); BLIP's
                        processor: bicubic to 384 x 384);
  "shortest_side_crop": the shortest side to image_size, the long side to int(image_size * long /
                        short), then the centre crop ((h - S) // 2, (w - S) // 2) (CLIP's and GIT's
                        image processor).
The training view is the evaluation view with data.augment's augmentations on top, each view of a study
drawn independently; with all of them off it is the evaluation view, pixel for pixel:
  random_crop: the shorter side to crop_resize (0: round(image_size * 8 / 7), R2Gen's Resize(256) for
               224), then a random image_size x image_size window, in place of the resize rule (R2Gen's
               Resize(256) + RandomCrop(224); on ChestX-ray14's square images also AG-CNN's 256x256 resize
               + random 224 crop);
  rotation:    a uniform angle in [-rotation, rotation] degrees, bilinear, corners black (seed 003's
               RandomRotation(10)): the evaluation view rotated, or with random_crop the resized image
               before its window is taken;
  flip:        a horizontal flip with probability 1/2, last. A flipped chest X-ray shows the heart on the
               wrong side and a report's "left" and "right" no longer match: off where the text names sides.
Random numbers are drawn in that order (angle, window top and left, flip), each only when its
augmentation is on. Then pixels / 255, minus the mean, over the standard deviation of the named statistics.

A data section without `augment` is read as the configs before it meant it (old workdirs' config.json):
a random crop of the shorter side resized to data.train_resize_size (default as crop_resize 0), flipped
where data.random_flip, rotated by data.random_rotation. Those fields beside `augment` are refused.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from PIL import Image

from cxrjax.data import datasets
from cxrjax.data import images

# ImageNet's, which CheXNet and every torchvision/Keras backbone here were trained with; CLIP's
# (OpenAI CLIP, used by GIT and BLIP).
NORMALIZATIONS = {
  "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
  "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}
RESIZE_FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
RESIZE_RULES = ("square", "shortest_side_crop")
# R2Gen resizes to 256 before its random 224 crop: crop_resize 0 means round(image_size * 8 / 7).
CROP_RESIZE_RATIO = 8 / 7
AUGMENT_FIELDS = ("random_crop", "crop_resize", "flip", "rotation")
# The data fields of configs written before `data.augment` (read for old workdirs, refused beside it).
LEGACY_AUGMENT_FIELDS = {"random_flip": "flip", "train_resize_size": "crop_resize", "random_rotation": "rotation"}


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """Training augmentation, config.data.augment (the module docstring); the default is none.

  Attributes:
    random_crop: a random image_size window of the shorter side resized to crop_resize, in place of the
      resize rule.
    crop_resize: that resize; 0: round(image_size * 8 / 7).
    flip: a horizontal flip with probability 1/2.
    rotation: the largest rotation in degrees (a uniform angle in [-rotation, rotation]); 0: none.
  """

  random_crop: bool = False
  crop_resize: int = 0
  flip: bool = False
  rotation: float = 0.0

  def __post_init__(self):
    for name in ("random_crop", "flip"):
      if not isinstance(getattr(self, name), (bool, np.bool_)):
        raise datasets.DataConfigError(f"data.augment.{name} must be true or false, got {getattr(self, name)!r}")
    if (
      isinstance(self.crop_resize, bool) or not isinstance(self.crop_resize, (int, np.integer)) or self.crop_resize < 0
    ):
      raise datasets.DataConfigError(
        f"data.augment.crop_resize must be an int >= 0 (0: round(image_size * 8 / 7)), got {self.crop_resize!r}"
      )
    if (
      isinstance(self.rotation, bool)
      or not isinstance(self.rotation, (int, float, np.number))
      or not 0 <= self.rotation <= 180
    ):
      raise datasets.DataConfigError(f"data.augment.rotation must be degrees in [0, 180], got {self.rotation!r}")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How views become model input (the module docstring).

  Attributes:
    image_size: side S of the square model input.
    normalization: a key of NORMALIZATIONS.
    resize_filter: "bilinear" or "bicubic" (PIL's, antialiased when shrinking).
    resize_rule: "square" or "shortest_side_crop" (the evaluation view).
    num_views: images per example (2: frontal and lateral studies; 1: single images).
    augment: what training adds to the evaluation view (default: nothing).
  """

  image_size: int = 224
  normalization: str = "imagenet"
  resize_filter: str = "bilinear"
  resize_rule: str = "square"
  num_views: int = 1
  augment: Augmentation = Augmentation()

  def __post_init__(self):
    if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 1:
      raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
    for name, value, allowed in (
      ("normalization", self.normalization, tuple(NORMALIZATIONS)),
      ("resize_filter", self.resize_filter, tuple(RESIZE_FILTERS)),
      ("resize_rule", self.resize_rule, RESIZE_RULES),
    ):
      if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
    if self.num_views < 1:
      raise ValueError(f"num_views must be >= 1, got {self.num_views}")
    if not isinstance(self.augment, Augmentation):
      raise TypeError(f"augment must be an Augmentation, got {type(self.augment).__name__}")
    if self.augment.random_crop and self.crop_resize < self.image_size:
      raise datasets.DataConfigError(
        f"data.augment.crop_resize ({self.crop_resize}) must be >= "
        f"data.image_size ({self.image_size}): the crop is a window of it"
      )

  @property
  def mean(self) -> np.ndarray:
    return np.array(NORMALIZATIONS[self.normalization][0], np.float32)

  @property
  def std(self) -> np.ndarray:
    return np.array(NORMALIZATIONS[self.normalization][1], np.float32)

  @property
  def crop_resize(self) -> int:
    """The shorter side's size before the random crop (augment.crop_resize, 0: round(S * 8 / 7))."""
    return int(self.augment.crop_resize) or round(self.image_size * CROP_RESIZE_RATIO)

  def resize(self, image: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [H, W, 3] -> [height, width, 3] with the resize filter; a no-op when the size matches."""
    if image.shape[:2] == (height, width):
      return image
    return np.asarray(Image.fromarray(image).resize((width, height), RESIZE_FILTERS[self.resize_filter]))

  def resize_shortest_side(self, image: np.ndarray, size: int) -> np.ndarray:
    """The shorter side to `size`, the longer to int(size * long / short) (torchvision's Resize(int))."""
    height, width = image.shape[:2]
    if height <= width:
      return self.resize(image, size, max(size, int(size * width / height)))
    return self.resize(image, max(size, int(size * height / width)), size)

  def eval_view(self, image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [S, S, 3] by the resize rule."""
    size = self.image_size
    if self.resize_rule == "square":
      return self.resize(image, size, size)
    image = self.resize_shortest_side(image, size)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    return image[top : top + size, left : left + size]

  def train_view(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [S, S, 3]: the evaluation view (or, with random_crop, the resize before the
    crop), then rotation, the random window and the flip, each where `augment` asks for it."""
    size, augment = self.image_size, self.augment
    if augment.random_crop:  # The crop brings its own resize.
      image = self.resize_shortest_side(image, self.crop_resize)
    else:  # Training starts from exactly what evaluation sees.
      image = self.eval_view(image)
    if augment.rotation:  # Drawn only when asked, so that runs without rotation draw as they always did.
      angle = float(rng.uniform(-augment.rotation, augment.rotation))
      image = np.asarray(Image.fromarray(image).rotate(angle, resample=Image.Resampling.BILINEAR))
    if augment.random_crop:
      top = int(rng.integers(0, image.shape[0] - size + 1))
      left = int(rng.integers(0, image.shape[1] - size + 1))
      image = image[top : top + size, left : left + size]
    if augment.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return image

  def normalize(self, image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 [..., 3]: scaled to [0, 1], then mean/std normalised."""
    return (image.astype(np.float32) / 255.0 - self.mean) / self.std

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """One decoded view uint8 [H, W, 3] -> float32 [S, S, 3]; with `rng`, the training view."""
    view = self.eval_view(image) if rng is None else self.train_view(image, rng)
    return self.normalize(view)


def from_config(config: Any) -> Preprocessing:
  """The Preprocessing of a run config (the module docstring lists the fields read)."""
  data = config["data"]
  encoder = _section(_section(config, "model"), "encoder")
  preprocessing = dict(_section(encoder, "preprocessing"))
  unknown = set(preprocessing) - {"normalization", "resize_filter", "resize_rule"}
  if unknown:
    raise datasets.DataConfigError(
      f"model.encoder.preprocessing has unknown fields {sorted(unknown)}; "
      "known: normalization, resize_filter, resize_rule"
    )
  num_views = datasets.field(data, "num_views", None)
  if num_views is None:
    num_views = datasets.dataset(datasets.field(data, "name")).num_views
  return Preprocessing(
    image_size=int(datasets.field(data, "image_size")),
    normalization=preprocessing.get("normalization", "imagenet"),
    resize_filter=preprocessing.get("resize_filter", "bilinear"),
    resize_rule=preprocessing.get("resize_rule", "square"),
    num_views=int(num_views),
    augment=augmentation_from_config(data),
  )


def augmentation_from_config(data: Any) -> Augmentation:
  """config.data.augment as an Augmentation; a data section without it, as its legacy fields meant it."""
  legacy = [name for name in LEGACY_AUGMENT_FIELDS if datasets.field(data, name, None) is not None]
  augment = datasets.field(data, "augment", None)
  if augment is None:  # Configs before `augment` always took the random crop.
    return Augmentation(
      random_crop=True,
      crop_resize=datasets.field(data, "train_resize_size", None) or 0,
      flip=datasets.field(data, "random_flip", False),
      rotation=datasets.field(data, "random_rotation", 0.0),
    )
  if legacy:
    raise datasets.DataConfigError(
      f"data.{legacy[0]} is replaced by data.augment.{LEGACY_AUGMENT_FIELDS[legacy[0]]}; remove it"
    )
  if not hasattr(augment, "keys"):
    raise datasets.DataConfigError(
      f"data.augment must be a section with fields {', '.join(AUGMENT_FIELDS)}; got {augment!r}"
    )
  unknown = sorted(set(augment.keys()) - set(AUGMENT_FIELDS))
  if unknown:
    raise datasets.DataConfigError(f"data.augment has unknown fields {unknown}; known: {', '.join(AUGMENT_FIELDS)}")
  return Augmentation(**{name: augment[name] for name in augment.keys()})


def load_for_model(path: str | os.PathLike, preprocessing: Preprocessing) -> np.ndarray:
  """One image file -> float32 [S, S, 3], as evaluation transforms a view (for prediction).

  Raises images.ImageError naming the file when it is missing or cannot be decoded.
  """
  return preprocessing(images.load_image(path))


def _section(config: Any, key: str) -> Any:
  """config[key], or {} where the config has no such section."""
  try:
    value = config[key]
  except (KeyError, AttributeError):
    return {}
  return value if value is not None else {}
