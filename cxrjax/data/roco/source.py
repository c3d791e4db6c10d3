"""Reading a prepared rocov2 or roco dataset: the grain source of a split; registers both datasets."""

from __future__ import annotations

import os
from typing import Any

from cxrjax.data import registry
from cxrjax.data import tfds_common
from cxrjax.data.roco import builder as builder_lib

NUM_VIEWS = 1  # one image per caption


class RocoSource:
  """Random-access caption records of one split of a prepared rocov2 or roco dataset.

  A grain `RandomAccessDataSource`: records {"id", "images": [the encoded image bytes],
  "image_ids": [id], "report": the caption as written, "concepts": [CUI], "keywords": [str],
  "licence": str}; the pipeline decodes the image and cleans the caption.
  """

  def __init__(self, dataset: str, data_dir: str | os.PathLike, subset: str = "all", split: str = "train"):
    builder, self._source = tfds_common.open_split(
      builder_lib.BUILDERS[dataset],
      data_dir,
      subset,
      split,
      {"image": tfds_common.KeepEncoded()},
      f"cxrjax prepare {dataset} --manual-dir DIR --data-dir {data_dir}"
      + (f" --subset {subset}" if subset != "all" else ""),
    )
    self.dataset, self.subset = dataset, subset
    self.split = tfds_common.TO_TFDS_SPLIT.get(split, split)
    self.metadata = dict(builder.info.metadata)

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[int(index)]
    record = {key: tfds_common.to_str(example[key]) for key in builder_lib.TEXT_FEATURES}
    record.update({key: [tfds_common.to_str(v) for v in example[key]] for key in builder_lib.TEXT_LIST_FEATURES})
    record["images"] = [bytes(example["image"])]
    record["image_ids"] = [record["id"]]
    return record

  def __repr__(self) -> str:
    return (
      f"RocoSource(dataset={self.dataset!r}, subset={self.subset!r}, split={self.split!r}, num_records={len(self)})"
    )


def _source_maker(dataset: str):
  def make_source(data_config: Any, split: str) -> RocoSource:
    """The source of `split` from a data config: "data_dir" (given to `cxrjax prepare`) and "subset"
    ("all" or "chest_xray", default "all")."""
    return RocoSource(
      dataset, registry.field(data_config, "data_dir"), registry.field(data_config, "subset", "all"), split
    )

  return make_source


for _name in builder_lib.BUILDERS:
  registry.register(registry.Dataset(name=_name, make_source=_source_maker(_name), num_views=NUM_VIEWS))
