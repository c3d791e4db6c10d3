"""Reading a prepared iu_xray dataset: the grain source of a split; registers the "iu_xray" dataset."""

from __future__ import annotations

import os
from typing import Any

from cxrjax.data import registry
from cxrjax.data import tfds_common
from cxrjax.data.iu_xray import builder as builder_lib
from cxrjax.data.iu_xray import reports

NUM_VIEWS = 2  # frontal and lateral


class IUXraySource:
  """Random-access study records of one split of a prepared iu_xray dataset.

  A grain `RandomAccessDataSource`: records follow the study schema (str fields, lists
  of str) with "images" as two grayscale PNGs (bytes), decoded by the pipeline.
  "report" is made of `report_sections` (reports.REPORT_SECTIONS): "findings" (R2Gen's
  protocol, as built) or "findings_impression" (ReXrank's), joined by a space. A build
  from R2Gen's layout has no impressions (its reports are the findings alone): asking
  it for them is a DataConfigError, not a findings-only reference under another name.
  """

  def __init__(
    self, data_dir: str | os.PathLike, config: str = "random", split: str = "train", report_sections: str = "findings"
  ):
    if report_sections not in reports.REPORT_SECTIONS:
      raise registry.DataConfigError(
        f"config.data.report_sections={report_sections!r}: expected one of {sorted(reports.REPORT_SECTIONS)}"
      )
    builder, self._source = tfds_common.open_split(
      builder_lib.IuXray,
      data_dir,
      config,
      split,
      {"images": tfds_common.KeepEncoded()},
      f"cxrjax prepare iu_xray --manual-dir DIR --data-dir {data_dir} --split {config}",
    )
    self.config = config
    self.split = tfds_common.TO_TFDS_SPLIT.get(split, split)
    self.metadata = dict(builder.info.metadata)
    self.layout = self.metadata.get("build", {}).get("parse_report", {}).get("layout")
    if "impression" in reports.REPORT_SECTIONS[report_sections] and self.layout == "r2gen":
      raise registry.DataConfigError(
        f"config.data.report_sections={report_sections!r}: iu_xray/{config} in {data_dir} was built from "
        "R2Gen's annotation.json, whose reports are the findings alone (no impression); prepare it from the "
        "Open-i or Kaggle layout (R2Gen's split still applies with --split r2gen)"
      )
    self.report_sections = report_sections
    # Where the references come from, recorded beside every score (evaluate's metrics.json).
    self.references = {
      "dataset": builder_lib.TFDS_NAME,
      "split_family": config,
      "split": self.split,
      "report_sections": list(reports.REPORT_SECTIONS[report_sections]),
      "layout": self.layout,
    }

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[int(index)]
    record = {key: tfds_common.to_str(example[key]) for key in builder_lib.TEXT_FEATURES}
    record.update({key: [tfds_common.to_str(v) for v in example[key]] for key in builder_lib.TEXT_LIST_FEATURES})
    record["images"] = [bytes(png) for png in example["images"]]
    record["report"] = reports.join_sections(record, reports.REPORT_SECTIONS[self.report_sections])
    return record

  def __repr__(self) -> str:
    return f"IUXraySource(config={self.config!r}, split={self.split!r}, num_records={len(self)})"


def make_source(data_config: Any, split: str) -> IUXraySource:
  """The source of `split` from a data config: "data_dir" (given to `cxrjax prepare`),
  "tfds_config" ("random" or "r2gen", default "random") and "report_sections" ("findings",
  default, or "findings_impression")."""
  return IUXraySource(
    registry.field(data_config, "data_dir"),
    registry.field(data_config, "tfds_config", "random"),
    split,
    registry.field(data_config, "report_sections", "findings"),
  )


def prepared_vocabulary_path(data_config: Any) -> str:
  """The vocabulary `cxrjax prepare iu_xray` saved for the config's cleaning and report sections."""
  return str(
    builder_lib.vocabulary_path(
      registry.field(data_config, "data_dir"),
      registry.field(data_config, "tfds_config", "random"),
      registry.field(data_config, "cleaning", registry.DEFAULT_CLEANING),
      registry.field(data_config, "report_sections", "findings"),
    )
  )


registry.register(
  registry.Dataset(
    name="iu_xray", make_source=make_source, num_views=NUM_VIEWS, vocabulary_path=prepared_vocabulary_path
  )
)
