"""Image preprocessing from config: resizing, training augmentation and normalisation, in one place.

`Preprocessing` says how a decoded view (uint8 [H, W, 3], images.py) becomes model input
(float32 [image_size, image_size, 3]); the pipeline, evaluation and prediction all use it, built by
`from_config(config)` from:
  config.data.image_size, config.data.num_views (default: the dataset's), config.data.random_flip,
  config.model.encoder.preprocessing: {"normalization": "imagenet" | "clip",
                                       "resize_filter": "bilinear" | "bicubic",
                                       "resize_rule": "square" | "shortest_side_crop"}
  (each defaults to imagenet / bilinear / square when absent).

Evaluation (and prediction) resize rules:
  "square":             straight to image_size x image_size (CheXNet; R2Gen's Resize((224, 224)));
  "shortest_side_crop": the shortest side to image_size, the long side to int(image_size * long /
                        short), then the centre crop ((h - S) // 2, (w - S) // 2) (CLIP's and GIT's
                        image processor).
Training: the shorter side to train_resize_size (default round(image_size * 8 / 7), R2Gen's
Resize(256) for 224), a random image_size crop, and a random horizontal flip where `random_flip`
(R2Gen: RandomCrop(224), RandomHorizontalFlip(), each view drawn independently).
Then pixels / 255, minus the mean, over the standard deviation of the named statistics.
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
# R2Gen resizes to 256 before cropping 224.
TRAIN_RESIZE_RATIO = 8 / 7


@dataclasses.dataclass(frozen=True)
class Preprocessing:
  """How views become model input (the module docstring).

  Attributes:
    image_size: side S of the square model input.
    normalization: a key of NORMALIZATIONS.
    resize_filter: "bilinear" or "bicubic" (PIL's, antialiased when shrinking).
    resize_rule: "square" or "shortest_side_crop" (evaluation and prediction).
    num_views: images per example (2: frontal and lateral studies; 1: single images).
    random_flip: training flips views horizontally at random. A flipped chest X-ray shows the heart
      on the wrong side and the report's "left" and "right" no longer match: off where text names sides.
    train_resize_size: training resize of the shorter side (default round(S * 8 / 7)).
    random_rotation: training rotates each view by a uniform angle in [-random_rotation, random_rotation]
      degrees (bilinear, corners filled black) before the crop; 0: never (seed 003 uses 10).
  """

  image_size: int = 224
  normalization: str = "imagenet"
  resize_filter: str = "bilinear"
  resize_rule: str = "square"
  num_views: int = 1
  random_flip: bool = False
  train_resize_size: int | None = None
  random_rotation: float = 0.0

  def __post_init__(self):
    if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 1:
      raise ValueError(f"image_size must be a positive int, got {self.image_size!r}")
    for name, value, allowed in (("normalization", self.normalization, tuple(NORMALIZATIONS)),
                                 ("resize_filter", self.resize_filter, tuple(RESIZE_FILTERS)),
                                 ("resize_rule", self.resize_rule, RESIZE_RULES)):
      if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; expected one of {allowed}")
    if self.num_views < 1:
      raise ValueError(f"num_views must be >= 1, got {self.num_views}")
    if self.train_resize_size is None:
      object.__setattr__(self, "train_resize_size", round(self.image_size * TRAIN_RESIZE_RATIO))
    if self.train_resize_size < self.image_size:
      raise ValueError(f"train_resize_size ({self.train_resize_size}) must be >= image_size "
                       f"({self.image_size})")

  @property
  def mean(self) -> np.ndarray:
    return np.array(NORMALIZATIONS[self.normalization][0], np.float32)

  @property
  def std(self) -> np.ndarray:
    return np.array(NORMALIZATIONS[self.normalization][1], np.float32)

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
    return image[top:top + size, left:left + size]

  def train_view(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [S, S, 3]: shorter side to train_resize_size, random rotation, random crop,
    random flip."""
    size = self.image_size
    image = self.resize_shortest_side(image, self.train_resize_size)
    if self.random_rotation:  # Drawn only when asked, so that runs without rotation draw as before.
      angle = float(rng.uniform(-self.random_rotation, self.random_rotation))
      image = np.asarray(Image.fromarray(image).rotate(angle, resample=Image.Resampling.BILINEAR))
    top = int(rng.integers(0, image.shape[0] - size + 1))
    left = int(rng.integers(0, image.shape[1] - size + 1))
    image = image[top:top + size, left:left + size]
    if self.random_flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return image

  def normalize(self, image: np.ndarray) -> np.ndarray:
    """uint8 [..., 3] -> float32 [..., 3]: scaled to [0, 1], then mean/std normalised."""
    return (image.astype(np.float32) / 255.0 - self.mean) / self.std

  def __call__(self, image: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """One decoded view uint8 [H, W, 3] -> float32 [S, S, 3]; with `rng`, the training augmentation."""
    view = self.eval_view(image) if rng is None else self.train_view(image, rng)
    return self.normalize(view)


def from_config(config: Any) -> Preprocessing:
  """The Preprocessing of a run config (the module docstring lists the fields read)."""
  data = config["data"]
  encoder = _section(_section(config, "model"), "encoder")
  preprocessing = dict(_section(encoder, "preprocessing"))
  unknown = set(preprocessing) - {"normalization", "resize_filter", "resize_rule"}
  if unknown:
    raise datasets.DataConfigError(f"model.encoder.preprocessing has unknown fields {sorted(unknown)}; "
                                   "known: normalization, resize_filter, resize_rule")
  num_views = datasets.field(data, "num_views", None)
  if num_views is None:
    num_views = datasets.dataset(datasets.field(data, "name")).num_views
  return Preprocessing(
      image_size=int(datasets.field(data, "image_size")),
      normalization=preprocessing.get("normalization", "imagenet"),
      resize_filter=preprocessing.get("resize_filter", "bilinear"),
      resize_rule=preprocessing.get("resize_rule", "square"),
      num_views=int(num_views),
      random_flip=bool(datasets.field(data, "random_flip", False)),
      train_resize_size=datasets.field(data, "train_resize_size", None),
      random_rotation=float(datasets.field(data, "random_rotation", 0.0)))


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
