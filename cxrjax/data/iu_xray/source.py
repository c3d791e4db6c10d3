"""Reading a prepared iu_xray dataset: the grain source of a split; registers the "iu_xray" dataset."""

from __future__ import annotations

import os
from typing import Any

from cxrjax.data import registry
from cxrjax.data import tfds_common
from cxrjax.data.iu_xray import builder as builder_lib

NUM_VIEWS = 2  # frontal and lateral


class IUXraySource:
  """Random-access study records of one split of a prepared iu_xray dataset.

  A grain `RandomAccessDataSource`: records follow the study schema (str fields, lists
  of str) with "images" as two grayscale PNGs (bytes), decoded by the pipeline.
  """

  def __init__(self, data_dir: str | os.PathLike, config: str = "random", split: str = "train"):
    builder, self._source = tfds_common.open_split(
        builder_lib.IuXray, data_dir, config, split, {"images": tfds_common.KeepEncoded()},
        f"cxrjax prepare iu_xray --manual-dir DIR --data-dir {data_dir} --split {config}")
    self.config = config
    self.split = tfds_common.TO_TFDS_SPLIT.get(split, split)
    self.metadata = dict(builder.info.metadata)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[int(index)]
    record = {key: tfds_common.to_str(example[key]) for key in builder_lib.TEXT_FEATURES}
    record.update({key: [tfds_common.to_str(v) for v in example[key]] for key in builder_lib.TEXT_LIST_FEATURES})
    record["images"] = [bytes(png) for png in example["images"]]
    return record

  def __repr__(self) -> str:
    return f"IUXraySource(config={self.config!r}, split={self.split!r}, num_records={len(self)})"


def make_source(data_config: Any, split: str) -> IUXraySource:
  """The source of `split` from a data config: "data_dir" (given to `cxrjax prepare`) and
  "tfds_config" ("random" or "r2gen", default "random")."""
  return IUXraySource(registry.field(data_config, "data_dir"),
                      registry.field(data_config, "tfds_config", "random"), split)


def prepared_vocabulary_path(data_config: Any) -> str:
  """The vocabulary `cxrjax prepare iu_xray` saved for the config's cleaning."""
  return str(builder_lib.vocabulary_path(
      registry.field(data_config, "data_dir"), registry.field(data_config, "tfds_config", "random"),
      registry.field(data_config, "cleaning", registry.DEFAULT_CLEANING)))


registry.register(registry.Dataset(name="iu_xray", make_source=make_source, num_views=NUM_VIEWS,
                                   vocabulary_path=prepared_vocabulary_path))
