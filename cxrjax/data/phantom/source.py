"""Phantom study records and their grain source; registers the "phantom" dataset."""

from __future__ import annotations

from typing import Any

import numpy as np

from cxrjax.data import registry
from cxrjax.data.phantom import findings as findings_lib
from cxrjax.data.phantom import render
from cxrjax.data.phantom import reports

SPLITS = ("train", "val", "test")
# Split s uses the global study indices [s * SPLIT_STRIDE, s * SPLIT_STRIDE + num_studies).
SPLIT_STRIDE = 1_000_000_000


def generate_study(
  index: int,
  config: findings_lib.PhantomConfig = findings_lib.PhantomConfig(),
  findings: findings_lib.Findings | None = None,
) -> dict[str, Any]:
  """Study record (CONVENTIONS.md schema) of study `index`; images are uint8 [size, size].

  Args:
    index: global study index (>= 0); see PhantomSource for the split ranges.
    config: dataset settings.
    findings: override the sampled findings (same patient, pose, noise and wording otherwise).
  """
  if not isinstance(index, (int, np.integer)) or index < 0:
    raise ValueError(f"phantom study index must be a non-negative int, got {index!r}")
  index = int(index)
  if findings is None:
    findings = findings_lib.sample_findings(index, config)
  frontal, lateral = render.render_views(index, config, findings)
  report = reports.write_report(
    findings, findings_lib.study_rng(config, index, findings_lib.STREAM_TEXT), config.paraphrase
  )
  indication_rng = findings_lib.study_rng(config, index, findings_lib.STREAM_INDICATION)
  study_id = f"phantom-{index:06d}"
  return {
    "id": study_id,
    "images": [frontal, lateral],
    "image_ids": [f"{study_id}-frontal", f"{study_id}-lateral"],
    "views": list(findings_lib.VIEWS),
    "findings": report,
    "impression": reports.write_impression(findings),
    "indication": reports.INDICATIONS[int(indication_rng.integers(len(reports.INDICATIONS)))],
    "comparison": "None.",
    "mesh": findings.mesh(),
    "report": report,
  }


class PhantomSource:
  """Random-access source of phantom study records (grain `RandomAccessDataSource` protocol).

  Splits are disjoint ranges of global study indices: split s holds indices
  [s * SPLIT_STRIDE, s * SPLIT_STRIDE + num_studies) for s in (train, val, test).
  """

  def __init__(
    self,
    split: str = "train",
    num_studies: int = 1000,
    config: findings_lib.PhantomConfig = findings_lib.PhantomConfig(),
  ):
    if split not in SPLITS:
      raise ValueError(f"PhantomSource split must be one of {SPLITS}, got {split!r}")
    if not 0 < num_studies <= SPLIT_STRIDE:
      raise ValueError(f"PhantomSource num_studies must be in [1, {SPLIT_STRIDE}], got {num_studies}")
    self.split = split
    self.num_studies = int(num_studies)
    self.config = config
    self.offset = SPLITS.index(split) * SPLIT_STRIDE

  def __len__(self) -> int:
    return self.num_studies

  def _global_index(self, index: int) -> int:
    index = int(index)
    if not 0 <= index < self.num_studies:
      raise IndexError(f"PhantomSource({self.split!r}) index {index} out of range [0, {self.num_studies})")
    return self.offset + index

  def __getitem__(self, index: int) -> dict[str, Any]:
    return generate_study(self._global_index(index), self.config)

  def text_record(self, index: int) -> dict[str, Any]:
    """Study `index`'s record without drawing its images ("images" is absent): for cached features."""
    global_index = self._global_index(index)
    findings = findings_lib.sample_findings(global_index, self.config)
    return {
      "id": f"phantom-{global_index:06d}",
      "report": reports.generate_report(global_index, self.config),
      "mesh": findings.mesh(),
    }

  def reports(self) -> list[str]:
    """Every study's report, in order, without drawing the images (vocabularies, baselines)."""
    return [reports.generate_report(self.offset + index, self.config) for index in range(self.num_studies)]

  def oracle_reports(self) -> list[str]:
    """The findings oracle of every study, in the order of `reports()`: each study's true findings
    written with the most common phrasing (reports.oracle_report). Uncleaned, as `reports()`: a
    scorer cleans them as it cleans the references."""
    return [reports.generate_oracle_report(self.offset + index, self.config) for index in range(self.num_studies)]

  def __repr__(self) -> str:
    return f"PhantomSource(split={self.split!r}, num_studies={self.num_studies}, config={self.config})"


# The data config's split names -> PhantomSource's, and the field giving each split's size.
_SPLIT_NAMES = {"train": "train", "validation": "val", "test": "test"}
_SPLIT_SIZES = {"train": "num_train", "validation": "num_val", "test": "num_test"}


def make_source(data_config: Any, split: str) -> PhantomSource:
  """The phantom source of `split` ("train", "validation", "test") from a data config.

  Fields: "num_train", "num_val", "num_test" (studies per split), "image_size" (the generated size;
  "phantom_image_size" overrides it), optional "phantom_seed" (0) and "phantom_prevalences"
  ({finding: prevalence}, PhantomConfig's p_<finding>).
  """
  num_studies = int(registry.field(data_config, _SPLIT_SIZES[split]))
  image_size = registry.field(data_config, "phantom_image_size", None) or registry.field(data_config, "image_size")
  prevalences = {
    f"p_{name}": float(value)
    for name, value in dict(registry.field(data_config, "phantom_prevalences", None) or {}).items()
  }
  config = findings_lib.PhantomConfig(
    image_size=int(image_size), seed=int(registry.field(data_config, "phantom_seed", 0)), **prevalences
  )
  return PhantomSource(_SPLIT_NAMES[split], num_studies, config)


registry.register(
  registry.Dataset(
    name="phantom",
    make_source=make_source,
    num_views=len(findings_lib.VIEWS),
    label_names=lambda data_config: tuple(findings_lib.FINDING_NAMES),
  )
)
