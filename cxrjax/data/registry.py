"""The dataset registry: a dataset's name -> how to make the source of a split, and what it knows about it.

A dataset is one package whose source module, beside its `make_source`, adds its description to `DATASETS`
(cxrjax/core/registry.py's rule, for a plug-in that is a value rather than a class or function):

    registry.register(registry.Dataset(name="iu_xray", make_source=make_source, num_views=NUM_VIEWS))

(`DATASETS.add` under the description's own name), and one import line in data/datasets.py, which makes
sources from a data config. This module imports no dataset, so that every dataset package can import it.
"""

from __future__ import annotations

from collections.abc import Callable
import dataclasses
from typing import Any

from cxrjax.core import registry as registry_lib
from cxrjax.core.errors import UserError

SPLITS = ("train", "validation", "test")
# Accepted for "validation": the name splits.py, R2Gen and the phantom set use.
SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
# Report cleaning and vocabulary threshold when a data config does not set them (R2Gen's, which the
# IU X-ray configs use and `cxrjax prepare iu_xray` builds by default).
DEFAULT_CLEANING = "r2gen"
DEFAULT_MIN_COUNT = 3


class DataConfigError(UserError):
  """A data config that names an unknown dataset or split, or lacks a field."""


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What the registry knows about the source of one split.

  Attributes:
    name: the dataset ("phantom", "iu_xray", "chestxray14").
    split: "train", "validation" or "test".
    num_examples: records in the split.
    label_names: finding names for the batch's "labels", or None where the dataset has no fixed
      finding set (IU X-ray's MeSH terms are free-form).
    num_views: images per record (2: frontal and lateral studies; 1: ChestX-ray14 images).
    vocabulary_path: the vocabulary `cxrjax prepare` saved for the config's cleaning (IU X-ray), or
      None where the vocabulary is built from the training reports (the phantom set).
  """

  name: str
  split: str
  num_examples: int
  label_names: tuple[str, ...] | None
  num_views: int
  vocabulary_path: str | None


def _no_labels(data_config: Any) -> None:
  del data_config
  return None


def _no_prepared_vocabulary(data_config: Any) -> None:
  del data_config
  return None


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A registered dataset.

  Attributes:
    name: the data config's `name`.
    make_source: (data_config, split) -> random-access source of records (len and getitem), split
      one of SPLITS; raises DataConfigError or FileNotFoundError before reading data.
    num_views: images per record, the default of config.data.num_views.
    label_names: data_config -> the finding names of "labels", or None.
    vocabulary_path: data_config -> where the prepared vocabulary is, or None (built from the
      training split's reports).
  """

  name: str
  make_source: Callable[[Any, str], Any]
  num_views: int
  label_names: Callable[[Any], tuple[str, ...] | None] = _no_labels
  vocabulary_path: Callable[[Any], str | None] = _no_prepared_vocabulary


DATASETS: registry_lib.Registry[Dataset] = registry_lib.Registry("dataset", "config.data.name", DataConfigError)


def register(dataset: Dataset) -> Dataset:
  """Adds `dataset` to DATASETS under its name (once: a second dataset of the same name is an error)."""
  DATASETS.add(dataset.name, dataset)
  return dataset


def names() -> tuple[str, ...]:
  """The registered dataset names, sorted."""
  return tuple(sorted(DATASETS))


def get(name: str) -> Dataset:
  """The registered dataset `name`; DataConfigError names the known ones."""
  return DATASETS.get(name)


def canonical_split(split: str) -> str:
  """ "train", "validation" (also "val") or "test"; DataConfigError for anything else."""
  split = SPLIT_ALIASES.get(split, split)
  if split not in SPLITS:
    raise DataConfigError(f"unknown split {split!r}; expected one of {SPLITS} (or 'val')")
  return split


def field(config: Any, key: str, *default: Any) -> Any:
  """config[key] for a ConfigDict or mapping; without a default, a DataConfigError names a missing field."""
  try:
    value = config[key]
  except (KeyError, AttributeError):
    if default:
      return default[0]
    raise DataConfigError(f"data config has no {key!r} (fields: {sorted(config.keys())})") from None
  return value
