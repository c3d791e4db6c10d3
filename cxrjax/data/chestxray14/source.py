"""Reading a prepared chestxray14 dataset: the grain source of a split; registers "chestxray14"."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from cxrjax.data import registry
from cxrjax.data import tfds_common
from cxrjax.data.chestxray14 import builder as builder_lib
from cxrjax.data.chestxray14 import labels as labels_lib

NUM_VIEWS = 1  # one frontal image per record


class ChestXray14Source:
  """Random-access image records of one split of a prepared chestxray14 dataset.

  A grain `RandomAccessDataSource` (no TensorFlow). Records follow the schema of labels.py, with
  "images" = [the grayscale PNG's bytes] (decoded by the pipeline) and "labels" float32 [14], or
  [15] with `include_no_finding`.
  """

  def __init__(
    self, data_dir: str | os.PathLike, config: str = "official", split: str = "train", include_no_finding: bool = False
  ):
    _, self._source = tfds_common.open_split(
      builder_lib.Chestxray14,
      data_dir,
      config,
      split,
      {"image": tfds_common.KeepEncoded()},
      f"cxrjax prepare chestxray14 --manual-dir DIR --data-dir {data_dir} --split {config}",
    )
    self.config, self.split = config, tfds_common.TO_TFDS_SPLIT.get(split, split)
    self.include_no_finding = include_no_finding
    self.class_names = labels_lib.class_names(include_no_finding)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[int(index)]
    labels = np.asarray(example["labels"], np.float32)
    image_id = tfds_common.to_str(example["id"])
    return {
      "id": image_id,
      "images": [bytes(example["image"])],
      "image_ids": [image_id],
      "labels": labels if self.include_no_finding else labels[: len(labels_lib.FINDINGS)],
      "finding_labels": [tfds_common.to_str(v) for v in example["finding_labels"]],
      "patient_id": tfds_common.to_str(example["patient_id"]),
      "follow_up": int(example["follow_up"]),
      "age": int(example["age"]),
      "gender": tfds_common.to_str(example["gender"]),
      "view_position": tfds_common.to_str(example["view_position"]),
    }

  def __repr__(self) -> str:
    return f"ChestXray14Source(config={self.config!r}, split={self.split!r}, num_records={len(self)})"


def make_source(data_config: Any, split: str) -> ChestXray14Source:
  """The source of `split` from a data config: "data_dir", "tfds_config" ("official" or "random",
  default "official") and "include_no_finding" (15 classes; default False)."""
  return ChestXray14Source(
    registry.field(data_config, "data_dir"),
    registry.field(data_config, "tfds_config", "official"),
    split,
    include_no_finding=bool(registry.field(data_config, "include_no_finding", False)),
  )


def label_names(data_config: Any) -> tuple[str, ...]:
  """The classes of "labels": the 14 findings, plus "No Finding" with include_no_finding."""
  return labels_lib.class_names(bool(registry.field(data_config, "include_no_finding", False)))


registry.register(
  registry.Dataset(name="chestxray14", make_source=make_source, num_views=NUM_VIEWS, label_names=label_names)
)
