"""Phantom caption records and their grain source; registers the "phantom_captions" dataset."""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrjax.data import registry
from cxrjax.data.phantom import findings as findings_lib
from cxrjax.data.phantom import render
from cxrjax.data.phantom import source as phantom_source
from cxrjax.data.phantom_captions import captions

NUM_VIEWS = 1  # the frontal view


def generate_image_record(
  index: int, config: findings_lib.PhantomConfig = findings_lib.PhantomConfig()
) -> dict[str, Any]:
  """Record of image `index`: {"id", "images": [frontal uint8 [size, size]], "image_ids", "report"
  (the caption), "mesh"}. The image is the frontal view of phantom study `index`."""
  if not isinstance(index, (int, np.integer)) or index < 0:
    raise ValueError(f"phantom caption index must be a non-negative int, got {index!r}")
  index = int(index)
  findings = findings_lib.sample_findings(index, config)
  frontal, _ = render.render_views(index, config, findings)
  image_id = f"phantom-caption-{index:06d}"
  return {
    "id": image_id,
    "images": [frontal],
    "image_ids": [image_id],
    "report": captions.generate_caption(index, config),
    "mesh": findings.mesh(),
  }


class PhantomCaptionSource:
  """Random-access source of phantom caption records (grain `RandomAccessDataSource` protocol).

  Splits are the phantom set's disjoint index ranges: split s holds indices
  [s * SPLIT_STRIDE, s * SPLIT_STRIDE + num_images) for s in ("train", "val", "test").
  """

  def __init__(
    self,
    split: str = "train",
    num_images: int = 1000,
    config: findings_lib.PhantomConfig = findings_lib.PhantomConfig(),
  ):
    if split not in phantom_source.SPLITS:
      raise ValueError(f"PhantomCaptionSource split must be one of {phantom_source.SPLITS}, got {split!r}")
    if not 0 < num_images <= phantom_source.SPLIT_STRIDE:
      raise ValueError(
        f"PhantomCaptionSource num_images must be in [1, {phantom_source.SPLIT_STRIDE}], got {num_images}"
      )
    self.split, self.num_images, self.config = split, int(num_images), config
    self.offset = phantom_source.SPLITS.index(split) * phantom_source.SPLIT_STRIDE

  def __len__(self) -> int:
    return self.num_images

  def _global_index(self, index: int) -> int:
    index = int(index)
    if not 0 <= index < self.num_images:
      raise IndexError(f"PhantomCaptionSource({self.split!r}) index {index} out of range [0, {self.num_images})")
    return self.offset + index

  def __getitem__(self, index: int) -> dict[str, Any]:
    return generate_image_record(self._global_index(index), self.config)

  def reports(self) -> list[str]:
    """Every image's caption, in order, without drawing the images (vocabularies, baselines)."""
    return [captions.generate_caption(self.offset + index, self.config) for index in range(self.num_images)]

  def oracle_reports(self) -> list[str]:
    """The findings oracle of every image, in the order of `reports()`: each image's true findings
    with the most common phrasing (captions.oracle_caption). Uncleaned, as `reports()`."""
    return [captions.generate_oracle_caption(self.offset + index, self.config) for index in range(self.num_images)]

  def __repr__(self) -> str:
    return f"PhantomCaptionSource(split={self.split!r}, num_images={self.num_images}, config={self.config})"


def make_source(data_config: Any, split: str) -> PhantomCaptionSource:
  """The source of `split` ("train", "validation", "test") from a data config, with the phantom set's
  fields (phantom.source.make_source): "num_train", "num_val", "num_test", "image_size" (or
  "phantom_image_size"), optional "phantom_seed" and "phantom_prevalences"."""
  studies = phantom_source.make_source(data_config, split)  # draws nothing: reads the fields
  return PhantomCaptionSource(studies.split, studies.num_studies, studies.config)


registry.register(
  registry.Dataset(
    name="phantom_captions",
    make_source=make_source,
    num_views=NUM_VIEWS,
    label_names=lambda data_config: tuple(findings_lib.FINDING_NAMES),
  )
)
