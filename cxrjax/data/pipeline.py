"""The grain input pipeline: one path from study records to batches, for every dataset.

  source: random access to study records       iu_xray.IUXraySource (a prepared TFDS
                                               dataset) or phantom.PhantomSource
    -> grain.MapDataset.source(source)
    -> [shard_index::shard_count]              each process reads its own studies
    -> train: shuffle(seed), repeat()          a new order in every epoch
    -> decode both views (images.py)           a path, PNG/JPEG bytes, or a uint8 array
                                               [H, W], [H, W, 1] or [H, W, 3]
    -> train: resize the shorter side to resize_size = round(image_size * 8 / 7), keeping
              the aspect ratio; random crop image_size x image_size; random horizontal flip
              (R2Gen: Resize(256), RandomCrop(224), RandomHorizontalFlip(), each view drawn
              independently)
       eval:  resize to image_size x image_size (R2Gen: Resize((224, 224)))
    -> ImageNet normalisation (images.normalize)
    -> clean (text.clean_report), tokenise and pad the report (Vocabulary.encode)
    -> batch: train drops the last partial batch (the data repeats, nothing is lost);
              eval pads the last batch and marks the real studies in "mask"

Batch: the one place its schema is written down. A dict of numpy arrays:
  "images": float32 [batch, 2, image_size, image_size, 3]  the two views of each study (in
            the record's order: frontal, lateral), ImageNet-normalised.
            With cached encoder features (cxrjax/features.py; records without "images") the
            batch holds "encoder_feature_map" float16 [batch, 2, h, w, channels] and
            "encoder_pooled" float16 [batch, 2 * channels] in its place.
  "tokens": int32 [batch, max_length]  <start> w1 .. wn <end> <pad> .. (ids of text.py:
            <pad> 0, <unk> 1, <start> 2, <end> 3). A report longer than max_length - 2
            words keeps its first max_length - 2 words and still ends with <end>
            (Vocabulary.encode). An empty report (after cleaning) is kept as <start> <end>:
            the IU X-ray parser skips empty reports unless asked to keep them.
  "mask":   bool [batch]  True for a real study. False only for the padding that fills
            the last eval batch (zero images, all-<pad> tokens, id ""), which must be left
            out of losses and metrics; every study of a split is in exactly one eval batch
            with mask True.
  "id":     numpy str array [batch] (dtype <U..)  study ids.
  "report": numpy str array [batch]  the cleaned report, untruncated: the reference that
            evaluation scores generated text against ("" for padding).
  "labels": float32 [batch, len(label_names)]  only when `label_names` is given: 1 where a
            "mesh" tag of the study names the finding (the part before the first "/"; the
            phantom's tags are "Effusion/left"), for classifiers.

Determinism. The order comes from grain's index shuffle (seed, epoch) and each study's
random crop and flip from a generator grain derives from the seed and the element's index,
never from global state: the batches depend only on the seed, the source and the shard,
whatever the number of worker processes or read threads. `iter(dataset)` returns a grain
DatasetIterator whose `get_state()` is a JSON-serialisable dict; `set_state(state)` on a
fresh iterator of the same dataset resumes with exactly the batches an uninterrupted run
would have seen.

Bad input. A missing or corrupt image raises images.ImageError naming the file (or the
image id for encoded bytes) and the study id; a study is never skipped mid-run.

Usage (what the trainer calls):
  source, info = make_source(config.data, "train")
  vocabulary = load_or_build_vocabulary(config.data, source)
  dataset = make_dataset(source, vocabulary, batch_size=16, image_size=224, max_length=60,
                         train=True, seed=0, label_names=info.label_names)
  iterator = iter(dataset); batch = next(iterator)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import os
from typing import Any

import grain
import numpy as np

from cxrjax.data import chestxray14
from cxrjax.data import images
from cxrjax.data import iu_xray
from cxrjax.data import phantom
from cxrjax.text import tokenizers as text

DATASETS = ("phantom", "iu_xray", "chestxray14")
SPLITS = ("train", "validation", "test")
NUM_VIEWS = 2  # Report datasets: frontal and lateral. ChestX-ray14 has one view per image.
# R2Gen resizes to 256 before cropping 224.
RESIZE_RATIO = 8 / 7
# Aliases accepted by make_source: the names splits.py, R2Gen and phantom.py use.
_SPLIT_ALIASES = {"val": "validation", "valid": "validation"}
_PHANTOM_SPLITS = {"train": "train", "validation": "val", "test": "test"}
_PHANTOM_SIZES = {"train": "num_train", "validation": "num_val", "test": "num_test"}
# Phantom reports do not depend on the image size (phantom.py): the vocabulary is built from
# studies drawn at the smallest size, several times faster.
DEFAULT_MIN_COUNT = 3  # R2Gen's threshold


class DataConfigError(ValueError):
  """A data config that names an unknown dataset or split, or lacks a field."""


@dataclasses.dataclass(frozen=True)
class SourceInfo:
  """What make_source knows about a split.

  Attributes:
    name: "phantom" or "iu_xray".
    split: "train", "validation" or "test".
    num_examples: studies in the split.
    label_names: finding names for the batch's "labels" (phantom.FINDING_NAMES), or None
      when the dataset has no fixed finding set (IU X-ray's MeSH terms are free-form).
    vocabulary_path: where the prepared vocabulary is (IU X-ray), None for the phantom set.
  """

  name: str
  split: str
  num_examples: int
  label_names: tuple[str, ...] | None
  vocabulary_path: str | None


def make_source(data_config: Any, split: str) -> tuple[Any, SourceInfo]:
  """The random-access source of study records of one split, and its SourceInfo.

  Args:
    data_config: a ConfigDict (or mapping) with "name" ("phantom" or "iu_xray") and:
      phantom: "num_train", "num_val", "num_test" (studies per split), "image_size"
        (generated size; "phantom_image_size" overrides it), optional "phantom_seed" (0);
      iu_xray: "data_dir" (the TFDS data dir given to `cxrjax prepare`) and
        "tfds_config" ("random" or "r2gen").
    split: "train", "validation" (or "val") or "test".

  Raises:
    DataConfigError: unknown dataset or split, missing field; FileNotFoundError: the
      IU X-ray dataset is not prepared. Both before any data is read.
  """
  name = _get(data_config, "name")
  split = _SPLIT_ALIASES.get(split, split)
  if split not in SPLITS:
    raise DataConfigError(f"unknown split {split!r}; expected one of {SPLITS} (or 'val')")
  if name == "phantom":
    num_studies = int(_get(data_config, _PHANTOM_SIZES[split]))
    image_size = _get(data_config, "phantom_image_size", None) or _get(data_config, "image_size")
    prevalences = {f"p_{name}": float(value)
                   for name, value in dict(_get(data_config, "phantom_prevalences", None) or {}).items()}
    config = phantom.PhantomConfig(image_size=int(image_size),
                                   seed=int(_get(data_config, "phantom_seed", 0)), **prevalences)
    source = phantom.PhantomSource(_PHANTOM_SPLITS[split], num_studies, config)
    return source, SourceInfo(name=name, split=split, num_examples=len(source),
                              label_names=tuple(phantom.FINDING_NAMES), vocabulary_path=None)
  if name == "iu_xray":
    data_dir = _get(data_config, "data_dir")
    tfds_config = _get(data_config, "tfds_config", "random")
    cleaning = _get(data_config, "cleaning", "seed001")
    source = iu_xray.IUXraySource(data_dir, tfds_config, split)
    return source, SourceInfo(
        name=name, split=split, num_examples=len(source), label_names=None,
        vocabulary_path=str(iu_xray.vocabulary_path(data_dir, tfds_config, cleaning)))
  if name == "chestxray14":
    source = chestxray14.ChestXray14Source(
        _get(data_config, "data_dir"), _get(data_config, "tfds_config", "official"), split,
        include_no_finding=bool(_get(data_config, "include_no_finding", False)))
    return source, SourceInfo(name=name, split=split, num_examples=len(source),
                              label_names=tuple(source.class_names), vocabulary_path=None)
  raise DataConfigError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def load_or_build_vocabulary(data_config: Any, train_source: Any) -> text.Vocabulary:
  """The word vocabulary of the training split.

  phantom: built from the cleaned reports of `train_source` (the phantom training split),
  keeping words seen >= data_config.vocabulary_min_count (default 3) times.
  iu_xray: the one `cxrjax prepare` saved (iu_xray.vocabulary_path), checked against the
  config's cleaning style and min count.
  """
  name = _get(data_config, "name")
  cleaning = _get(data_config, "cleaning", "seed001")
  if cleaning not in text.CLEANING_STYLES:
    raise DataConfigError(f"unknown cleaning {cleaning!r}; expected one of {text.CLEANING_STYLES}")
  min_count = int(_get(data_config, "vocabulary_min_count", DEFAULT_MIN_COUNT))
  if name == "phantom":
    if not isinstance(train_source, phantom.PhantomSource) or train_source.split != "train":
      raise DataConfigError(f"the phantom vocabulary is built from the phantom training source, "
                            f"got {train_source!r}")
    reports = (text.clean_report(report, cleaning) for report in train_source.reports())
    return text.Vocabulary.build(reports, min_count=min_count, cleaning_style=cleaning)
  if name == "iu_xray":
    tfds_config = _get(data_config, "tfds_config", "random")
    path = iu_xray.vocabulary_path(_get(data_config, "data_dir"), tfds_config, cleaning)
    rerun = (f"run `cxrjax prepare iu_xray --manual-dir DIR --data-dir {_get(data_config, 'data_dir')} "
             f"--split {tfds_config} --cleaning {cleaning} --min-count {min_count}`")
    if not path.is_file():
      raise FileNotFoundError(f"no IU X-ray vocabulary at {path}: {rerun}")
    vocabulary = text.Vocabulary.from_json(path)
    if vocabulary.cleaning_style != cleaning or vocabulary.min_count != min_count:
      raise text.VocabularyFileError(
          f"{path}: built with cleaning {vocabulary.cleaning_style!r} and min count "
          f"{vocabulary.min_count}, but the config asks for {cleaning!r} and {min_count}: {rerun}")
    return vocabulary
  raise DataConfigError(f"unknown dataset {name!r}; expected one of {DATASETS}")


def make_dataset(
    source: Any,
    vocabulary: text.Vocabulary | None,
    *,
    batch_size: int,
    image_size: int,
    max_length: int,
    train: bool,
    seed: int = 0,
    shard_index: int | None = None,
    shard_count: int | None = None,
    cleaning: str | None = None,
    label_names: Sequence[str] | None = None,
    random_flip: bool = True,
    resize_size: int | None = None,
    worker_count: int = 0,
    read_threads: int = 0,
    num_views: int = NUM_VIEWS,
) -> grain.IterDataset:
  """The batched dataset of `source` (the schema in the module docstring).

  Args:
    source: random-access source of study records (len and getitem).
    vocabulary: the training vocabulary; None for image-only tasks (no "tokens", no "report").
    batch_size: studies per batch (per process).
    image_size: side of the square images given to the model.
    max_length: token sequence length, <start> and <end> included.
    train: shuffle, repeat forever, augment, drop the last partial batch; otherwise one
      pass in source order with the last batch padded.
    seed: seed of the shuffle and of the augmentation.
    shard_index, shard_count: this process's shard (default jax.process_index() and
      jax.process_count()); shard i reads studies i, i + shard_count, ... Eval shards are
      padded to the same number of batches, so every process runs the same number of steps.
    cleaning: report cleaning style; default the vocabulary's (they must agree).
    label_names: finding names for "labels" (SourceInfo.label_names); None: no "labels".
    random_flip: flip views horizontally at random in training (R2Gen does). A flipped
      chest X-ray shows the heart on the wrong side and the report's "left" and "right"
      no longer match: turn off where the text names sides.
    resize_size: training resize of the shorter side (default round(image_size * 8 / 7)).
    worker_count: grain worker processes (0: in this process; tests use 0).
    read_threads: threads producing batches in each process (0: none).
    num_views: images per record (2 for the report datasets, 1 for ChestX-ray14).

  Returns:
    a grain IterDataset; `iter()` gives an iterator with get_state() / set_state().
  """
  if batch_size < 1 or image_size < 1 or max_length < 2:
    raise ValueError(f"batch_size and image_size must be >= 1 and max_length >= 2, got "
                     f"{batch_size}, {image_size}, {max_length}")
  if len(source) == 0:
    raise ValueError(f"{source!r} has no study")
  cleaning = _check_cleaning(cleaning, vocabulary) if vocabulary is not None else None
  if shard_index is None or shard_count is None:
    import jax  # pylint: disable=g-import-not-at-top  (only for the default shard)
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")
  resize_size = resize_size or round(image_size * RESIZE_RATIO)
  if train and resize_size < image_size:
    raise ValueError(f"resize_size ({resize_size}) must be >= image_size ({image_size})")

  prepare = PrepareStudy(vocabulary=vocabulary, image_size=image_size, max_length=max_length,
                         cleaning=cleaning, train=train, random_flip=random_flip,
                         resize_size=resize_size,
                         label_names=tuple(label_names) if label_names is not None else None,
                         num_views=num_views)
  dataset = grain.MapDataset.source(source)[shard_index::shard_count]
  if train:
    if len(dataset) == 0:
      raise ValueError(f"shard {shard_index} of {shard_count} of {source!r} has no study")
    # Per-shard seeds, so that shards do not draw the same crops for their i-th studies.
    shard_seed = int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])
    dataset = dataset.shuffle(seed=shard_seed).repeat()
    dataset = dataset.random_map(prepare, seed=shard_seed)
    dataset = dataset.batch(batch_size, drop_remainder=True, batch_fn=collate)
  else:
    dataset = dataset.map(prepare)
    per_shard = math.ceil(len(source) / shard_count)
    padded_length = math.ceil(per_shard / batch_size) * batch_size
    dataset = _PadToLength(dataset, padded_length, prepare.padding())
    dataset = dataset.batch(batch_size, drop_remainder=False, batch_fn=collate)

  # Whole batches are made by the read threads; the buffer holds a few of them.
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=max(2, 2 * read_threads))
  iter_dataset = dataset.to_iter_dataset(read_options)
  if worker_count > 0:
    _mark_absl_flags_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter_dataset


def report_texts(source: Any, cleaning: str) -> list[str]:
  """The cleaned reports of every study of `source`, without decoding images where it can."""
  reports = source.reports() if hasattr(source, "reports") else [record["report"] for record in source]
  return [text.clean_report(report, cleaning) for report in reports]


class Subset:
  """The first `num_examples` studies of a source (a quick validation subset)."""

  def __init__(self, source: Any, num_examples: int):
    self.source, self.num_examples = source, min(int(num_examples), len(source))

  def __len__(self) -> int:
    return self.num_examples

  def __getitem__(self, index: int) -> Any:
    if not 0 <= index < self.num_examples:
      raise IndexError(f"index {index} out of range [0, {self.num_examples})")
    return self.source[index]

  def __repr__(self) -> str:
    return f"Subset({self.source!r}, {self.num_examples})"


def eval_num_batches(num_examples: int, batch_size: int, shard_count: int = 1) -> int:
  """Batches per process of an eval dataset (make_dataset with train=False)."""
  return math.ceil(math.ceil(num_examples / shard_count) / batch_size)


@dataclasses.dataclass(frozen=True)
class PrepareStudy:
  """One study record -> one example of the batch schema (without the batch dimension).

  Called by grain as `prepare(record, rng)` (train, via random_map) or `prepare(record)`.
  """

  vocabulary: text.Vocabulary | None
  image_size: int
  max_length: int
  cleaning: str | None
  train: bool
  random_flip: bool = True
  resize_size: int | None = None
  label_names: tuple[str, ...] | None = None
  num_views: int = NUM_VIEWS

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator | None = None
               ) -> dict[str, Any]:
    study_id = str(record["id"])
    if "images" not in record:  # Cached encoder features (cxrjax/features.py) stand for the images.
      example = {key: np.asarray(value) for key, value in record.items() if key.startswith("encoder_")}
      if not example:
        raise ValueError(f"study {study_id}: the record has neither images nor cached encoder features")
      return self._add_text_and_labels(dict(example, mask=np.True_, id=study_id), record, study_id)
    if len(record["images"]) != self.num_views:
      raise ValueError(f"study {study_id}: expected {self.num_views} images, got {len(record['images'])}")
    if self.train and rng is None:
      raise ValueError("training augmentation needs the per-example rng (use random_map)")
    image_ids = record.get("image_ids") or [f"view {i}" for i in range(self.num_views)]
    views = []
    for image, image_id in zip(record["images"], image_ids):
      view = decode_view(image, study_id, image_id)  # uint8 [H, W, 3]
      if self.train:
        view = _random_crop_and_flip(view, self.image_size, self.resize_size, self.random_flip, rng)
      else:
        view = images.resize(view, self.image_size, self.image_size)
      views.append(view)
    example = {"images": images.normalize(np.stack(views)), "mask": np.True_, "id": study_id}
    return self._add_text_and_labels(example, record, study_id)

  def _add_text_and_labels(self, example: dict[str, Any], record: Mapping[str, Any], study_id: str
                           ) -> dict[str, Any]:
    if self.vocabulary is not None:
      cleaned = text.clean_report(record["report"], self.cleaning)
      example["tokens"] = np.asarray(self.vocabulary.encode(cleaned, self.max_length, pad=True), np.int32)
      example["report"] = cleaned
    if self.label_names is not None:
      example["labels"] = self._labels(record, study_id)
    return example

  def _labels(self, record: Mapping[str, Any], study_id: str) -> np.ndarray:
    """The record's own 0/1 "labels" vector (ChestX-ray14), else derived from its "mesh" tags."""
    if "labels" in record:
      labels = np.asarray(record["labels"], np.float32)
      if labels.shape != (len(self.label_names),):
        raise ValueError(f"study {study_id}: labels of shape {labels.shape}, expected "
                         f"({len(self.label_names)},) for {self.label_names}")
      return labels
    return finding_labels(record.get("mesh", []), self.label_names)

  def padding(self) -> dict[str, Any]:
    """The example that fills the last eval batch (mask False)."""
    example = {"images": np.zeros((self.num_views, self.image_size, self.image_size, 3), np.float32),
               "mask": np.False_, "id": ""}
    if self.vocabulary is not None:
      example["tokens"] = np.zeros((self.max_length,), np.int32)
      example["report"] = ""
    if self.label_names is not None:
      example["labels"] = np.zeros((len(self.label_names),), np.float32)
    return example


def collate(examples: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks examples into a batch: arrays along a new first axis, ids as a str array."""
  return {key: np.stack([example[key] for example in examples]) for key in examples[0]}


def decode_view(image: Any, study_id: str, image_id: str) -> np.ndarray:
  """One view of a record -> uint8 [H, W, 3], whatever form the source gives it in.

  Args:
    image: a path (str or os.PathLike), encoded PNG/JPEG bytes, or a uint8/uint16 array
      [H, W], [H, W, 1] or [H, W, 3].
    study_id, image_id: named in errors.

  Raises:
    images.ImageError naming the study and the file (or the image id for bytes).
  """
  try:
    if isinstance(image, (str, os.PathLike)):
      return images.load_image(image)
    if isinstance(image, (bytes, bytearray, memoryview)):
      return images.decode_image(bytes(image), f"{image_id} (encoded image)")
    if isinstance(image, np.ndarray):
      return images.to_rgb_uint8(image, f"{image_id} (array)")
  except images.ImageError as error:
    raise images.ImageError(f"study {study_id}: {error}") from error
  raise images.ImageError(f"study {study_id}: image {image_id} is a {type(image).__name__}; expected "
                          "a path, encoded bytes or a numpy array")


def finding_labels(mesh: Sequence[str], label_names: Sequence[str]) -> np.ndarray:
  """Multi-hot float32 [len(label_names)]: 1 where a tag's finding (before "/") is the name."""
  findings = {tag.split("/")[0] for tag in mesh}
  return np.array([name in findings for name in label_names], np.float32)


def _random_crop_and_flip(image: np.ndarray, image_size: int, resize_size: int, random_flip: bool,
                          rng: np.random.Generator) -> np.ndarray:
  """uint8 [H, W, 3] -> [image_size, image_size, 3]: shorter side to resize_size, random crop, flip."""
  height, width = image.shape[:2]
  # As torchvision's Resize(int): the shorter side becomes resize_size, the longer one is truncated.
  if height <= width:
    new_height, new_width = resize_size, max(resize_size, int(resize_size * width / height))
  else:
    new_height, new_width = max(resize_size, int(resize_size * height / width)), resize_size
  image = images.resize(image, new_height, new_width)
  top = int(rng.integers(0, new_height - image_size + 1))
  left = int(rng.integers(0, new_width - image_size + 1))
  image = image[top:top + image_size, left:left + image_size]
  if random_flip and rng.random() < 0.5:
    image = image[:, ::-1]
  return image


class _PadToLength(grain.MapDataset):
  """The parent's elements, then copies of `padding` up to `length` elements."""

  def __init__(self, parent: grain.MapDataset, length: int, padding: Any):
    super().__init__(parent)
    if length < len(parent):
      raise ValueError(f"cannot pad {len(parent)} elements to {length}")
    self._length = length
    self._parent_length = len(parent)
    self._padding = padding

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    index %= self._length
    return self._parent[index] if index < self._parent_length else self._padding

  def __str__(self) -> str:
    return f"_PadToLength(length={self._length})"


def _check_cleaning(cleaning: str | None, vocabulary: text.Vocabulary) -> str:
  if cleaning is None:
    return vocabulary.cleaning_style or "seed001"
  if cleaning not in text.CLEANING_STYLES:
    raise ValueError(f"unknown cleaning {cleaning!r}; expected one of {text.CLEANING_STYLES}")
  if vocabulary.cleaning_style is not None and vocabulary.cleaning_style != cleaning:
    raise ValueError(f"cleaning {cleaning!r} differs from the vocabulary's "
                     f"{vocabulary.cleaning_style!r}")
  return cleaning


def _get(config: Any, key: str, *default: Any) -> Any:
  """config[key] for a ConfigDict or mapping; a DataConfigError names a missing field."""
  try:
    value = config[key]
  except (KeyError, AttributeError):
    if default:
      return default[0]
    raise DataConfigError(f"data config has no {key!r} (fields: {sorted(config.keys())})") from None
  return value


def _mark_absl_flags_parsed() -> None:
  """grain worker processes read absl flags: mark them parsed where no absl app did."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
