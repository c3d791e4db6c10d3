"""Every dataset, by name: the source of a split, its SourceInfo, and the training tokenizer.

The dataset packages register themselves (registry.py) when imported here; adding a dataset is its
package and one import line below.

  source, info = make_source(config.data, "train")        # "train", "validation" (or "val"), "test"
  tokenizer = load_or_build_tokenizer(config.data, source)
"""

from __future__ import annotations

from typing import Any

from etils import epath

from cxrjax.data import chestxray14  # noqa: F401  (registers "chestxray14")
from cxrjax.data import iu_xray  # noqa: F401  (registers "iu_xray")
from cxrjax.data import phantom  # noqa: F401  (registers "phantom")
from cxrjax.data import phantom_captions  # noqa: F401  (registers "phantom_captions")
from cxrjax.data import registry
from cxrjax.data import roco  # noqa: F401  (registers "rocov2" and "roco")
from cxrjax.text import cleaning as cleaning_lib
from cxrjax.text import tokenizers

DataConfigError = registry.DataConfigError
SourceInfo = registry.SourceInfo
SPLITS = registry.SPLITS
field = registry.field


def names() -> tuple[str, ...]:
  """The dataset names a data config may give."""
  return registry.names()


def dataset(name: str) -> registry.Dataset:
  """The registered dataset `name` (DataConfigError names the known ones)."""
  return registry.get(name)


def make_source(data_config: Any, split: str) -> tuple[Any, registry.SourceInfo]:
  """The random-access source of records of one split, and its SourceInfo.

  Args:
    data_config: config.data: "name" and the dataset's fields (its package's `make_source`).
    split: "train", "validation" (or "val") or "test".

  Raises:
    DataConfigError: unknown dataset or split, missing field; FileNotFoundError: a dataset that
      needs preparing is not prepared. Both before any data is read.
  """
  entry = registry.get(registry.field(data_config, "name"))
  split = registry.canonical_split(split)
  source = entry.make_source(data_config, split)
  return source, registry.SourceInfo(
    name=entry.name,
    split=split,
    num_examples=len(source),
    label_names=entry.label_names(data_config),
    num_views=int(registry.field(data_config, "num_views", None) or entry.num_views),
    vocabulary_path=entry.vocabulary_path(data_config),
  )


def label_names(data_config: Any) -> tuple[str, ...] | None:
  """The finding names of the batch's "labels" for this data config, or None (no fixed finding set)."""
  return registry.get(registry.field(data_config, "name")).label_names(data_config)


def cleaning_style(data_config: Any) -> str:
  """config.data.cleaning (default registry.DEFAULT_CLEANING), checked."""
  style = registry.field(data_config, "cleaning", registry.DEFAULT_CLEANING)
  if style not in cleaning_lib.CLEANING_STYLES:
    raise DataConfigError(f"unknown cleaning {style!r}; expected one of {cleaning_lib.CLEANING_STYLES}")
  return style


def report_texts(source: Any, cleaning: str) -> list[str]:
  """The cleaned reports of every record of `source`, in order, without decoding images.

  Uses `source.reports()` where the source has it (the phantom set draws no image for it); else
  reads records 0 .. len(source) - 1 by index (never relies on an error past the end: array_record
  raises ValueError, not IndexError).
  """
  if hasattr(source, "reports"):
    reports = source.reports()
  else:
    reports = [source[index]["report"] for index in range(len(source))]
  return [cleaning_lib.clean_report(report, cleaning) for report in reports]


def load_or_build_tokenizer(data_config: Any, train_source: Any) -> tokenizers.Tokenizer:
  """The tokenizer of a run.

  config.data.tokenizer, when set, is a file: a BERT WordPiece `vocab.txt` (`.txt`), a Hugging Face
  `tokenizer.json`, or a tokenizer saved by `save` (text.tokenizers.load). Otherwise a word
  vocabulary: the one `cxrjax prepare` saved (datasets with a prepared vocabulary, IU X-ray), checked
  against the config's cleaning and min count; else built from the cleaned reports of
  `train_source` (the training split), keeping words seen >= config.data.vocabulary_min_count
  (default 3) times.

  Raises:
    FileNotFoundError: a tokenizer file or prepared vocabulary that is not there (the message says
      how to make it); text.tokenizers.VocabularyFileError: one that does not fit the config.
  """
  style = cleaning_style(data_config)
  path = registry.field(data_config, "tokenizer", "")
  if path:
    path = epath.Path(path)  # Local or gs://.
    if not path.is_file():
      raise FileNotFoundError(f"config.data.tokenizer: no tokenizer file at {path}")
    if path.suffix == ".txt":
      return tokenizers.WordPieceTokenizer.from_vocab(path, cleaning_style=style)
    tokenizer = tokenizers.load(path)
    if tokenizer.cleaning_style is None:  # a Hugging Face tokenizer.json does not say
      return tokenizers.WordPieceTokenizer.from_tokenizer_json(path, cleaning_style=style)
    _check_cleaning(path, tokenizer, style)
    return tokenizer
  min_count = int(registry.field(data_config, "vocabulary_min_count", registry.DEFAULT_MIN_COUNT))
  entry = registry.get(registry.field(data_config, "name"))
  prepared = entry.vocabulary_path(data_config)
  if prepared is not None:
    rerun = (
      f"run `cxrjax prepare {entry.name} --manual-dir DIR --data-dir "
      f"{registry.field(data_config, 'data_dir', 'DIR')} --split "
      f"{registry.field(data_config, 'tfds_config', 'random')} --cleaning {style} "
      f"--min-count {min_count}`"
    )
    # IU X-ray prepares one vocabulary per choice of report sections.
    sections = registry.field(data_config, "report_sections", "")
    if sections:
      rerun = rerun[:-1] + f" --sections {sections}`"
    if not epath.Path(prepared).is_file():
      raise FileNotFoundError(f"no {entry.name} vocabulary at {prepared}: {rerun}")
    vocabulary = tokenizers.WordVocabulary.from_json(prepared)
    if vocabulary.cleaning_style != style or vocabulary.min_count != min_count:
      raise tokenizers.VocabularyFileError(
        f"{prepared}: built with cleaning {vocabulary.cleaning_style!r} and min count "
        f"{vocabulary.min_count}, but the config asks for {style!r} and {min_count}: {rerun}"
      )
    return vocabulary
  split = getattr(train_source, "split", "train")
  if train_source is None or split != "train":
    raise DataConfigError(
      f"the {entry.name} vocabulary is built from the training split's source, got {train_source!r}"
    )
  return tokenizers.WordVocabulary.build(report_texts(train_source, style), min_count=min_count, cleaning_style=style)


def _check_cleaning(path: epath.Path, tokenizer: tokenizers.Tokenizer, style: str) -> None:
  if tokenizer.cleaning_style != style:
    raise tokenizers.VocabularyFileError(
      f"{path}: saved for cleaning {tokenizer.cleaning_style!r}, but the config asks for {style!r}"
    )
