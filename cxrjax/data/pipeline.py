"""The grain input pipeline: one path from records to batches, for every dataset and every use.

  make_batches(config, split, train=...)     training, evaluation, feature caching, prediction
    source: datasets.make_source(config.data, split), or the `source` given (a list of records
            built from a user's image files, for prediction)
    -> grain.MapDataset.source(source)
    -> train: shuffle(seed), repeat()          a new order in every epoch, the same in every process
              this process's rows of each       each process reads only its rows: batch_size rows
              global batch                      of every global batch of batch_size * shard_count
    -> eval: [shard_index::shard_count]        each process reads its own records
    -> decode the views (images.py)            a path, PNG/JPEG bytes, or a uint8 array
                                               [H, W], [H, W, 1] or [H, W, 3]
    -> transforms.Preprocessing                eval: the encoder's resize rule; train: that view
                                               with config.data.augment on top (random crop,
                                               rotation, flip); then the encoder's normalisation
    -> clean (text.cleaning.clean_report), tokenise and pad the report (tokenizer.encode)
    -> batch: train drops the last partial batch (the data repeats, nothing is lost);
              eval pads the last batch and marks the real records in "mask"

Batch: the one place its schema is written down. A dict of numpy arrays:
  "images": float32 [batch, num_views, image_size, image_size, 3]  the views of each record (in
            the record's order: frontal, lateral), normalised by the encoder's statistics.
            With cached encoder features (records without "images") the batch holds
            "encoder_feature_map" float16 [batch, views, h, w, channels] and "encoder_pooled"
            float16 [batch, views * channels] in its place.
  "tokens": int32 [batch, max_length]  start w1 .. wn end pad .. (the tokenizer's ids). A report
            longer than max_length - 2 tokens keeps its first max_length - 2 and still ends
            with the end id. An empty report (after cleaning) is kept as start end.
  "mask":   bool [batch]  True for a real record. False only for the padding that fills the
            last eval batch (zero images, all-pad tokens, id ""), which must be left out of
            losses and metrics; every record of a split is in exactly one eval batch with mask
            True.
  "id":     numpy str array [batch] (dtype <U..)  record ids.
  "report": numpy str array [batch]  the cleaned report, untruncated: the reference that
            evaluation scores generated text against ("" for padding).
  "labels": float32 [batch, len(label_names)]  only when `label_names` is given: the record's
            own "labels" vector (ChestX-ray14), else 1 where a "mesh" tag names the finding (the
            part before the first "/"; the phantom's tags are "Effusion/left").
"tokens" and "report" are there only with a tokenizer (captioning).

Determinism. The order comes from grain's index shuffle (seed, epoch) and each record's
augmentation from a generator grain derives from the seed and the element's index in
the run's global stream, never from global state: the global batches depend only on the seed
and the source, whatever the number of processes, worker processes or read threads. `iter(dataset)` returns a grain
DatasetIterator whose `get_state()` is a JSON-serialisable dict; `set_state(state)` on a
fresh iterator of the same dataset resumes with exactly the batches an uninterrupted run
would have seen.

Bad input. A missing or corrupt image raises images.ImageError naming the file (or the
image id for encoded bytes) and the record id; a record is never skipped mid-run.

Usage (what the trainer calls):
  source, info = datasets.make_source(config.data, "train")
  tokenizer = datasets.load_or_build_tokenizer(config.data, source)
  dataset = make_batches(config, "train", train=True, tokenizer=tokenizer, source=source)
  iterator = iter(dataset); batch = next(iterator)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import dataclasses
import math
import os
from typing import Any

from absl import flags
import grain
import jax
import numpy as np

from cxrjax.data import datasets
from cxrjax.data import images
from cxrjax.data import transforms
from cxrjax.text import cleaning as cleaning_lib
from cxrjax.text import tokenizers


def make_batches(
  config: Any,
  split: str | None = None,
  *,
  train: bool,
  tokenizer: tokenizers.Tokenizer | None = None,
  source: Any = None,
  batch_size: int | None = None,
  shard_index: int | None = None,
  shard_count: int | None = None,
  rows: Sequence[int] | None = None,
  label_names: Sequence[str] | None = None,
  preprocessing: transforms.Preprocessing | None = None,
) -> grain.IterDataset:
  """The batches of one split (or of `source`) for training, evaluation, feature caching or prediction.

  Everything else comes from the run config: config.data (max_length, cleaning, read_threads,
  worker_count, num_views, image_size, augment), config.model.encoder.preprocessing
  (transforms.from_config), config.train.seed, and the batch size config.train.batch_size (train)
  or config.eval.batch_size (otherwise).

  Args:
    config: the whole run config.
    split: "train", "validation" (or "val") or "test"; ignored when `source` is given.
    train: shuffle, repeat, augment, drop the last partial batch; otherwise one pass in source
      order with the last batch padded.
    tokenizer: the run's tokenizer (datasets.load_or_build_tokenizer); None for image-only tasks.
    source: records to use instead of the split's (len and getitem; a list will do).
    batch_size: overrides the config's.
    shard_index, shard_count: this process's shard (default jax.process_index() / process_count()).
    rows: train: which rows of each global batch this process reads (make_dataset).
    label_names: finding names for "labels" (datasets.label_names(config.data)); None: no labels.
    preprocessing: the config's (transforms.from_config), as the caller derived it (the run's task).
  """
  data = config["data"]
  if source is None:
    if split is None:
      raise ValueError("make_batches needs a split or a source")
    source, _ = datasets.make_source(data, split)
  if batch_size is None:
    batch_size = int(config["train" if train else "eval"]["batch_size"])
  return make_dataset(
    source,
    tokenizer,
    preprocessing or transforms.from_config(config),
    batch_size=batch_size,
    max_length=_max_length(data, tokenizer),
    train=train,
    seed=int(config["train"].get("seed", 0)) if "train" in config else 0,
    shard_index=shard_index,
    shard_count=shard_count,
    rows=rows,
    cleaning=datasets.cleaning_style(data) if tokenizer is not None else None,
    label_names=label_names,
    worker_count=int(datasets.field(data, "worker_count", 0)),
    read_threads=int(datasets.field(data, "read_threads", 0)),
  )


def _max_length(data: Any, tokenizer: tokenizers.Tokenizer | None) -> int:
  return int(datasets.field(data, "max_length", 2)) if tokenizer is not None else 2


def batch_spec(
  config: Any,
  batch_size: int,
  tokenizer: tokenizers.Tokenizer | None = None,
  label_names: Sequence[str] | None = None,
  preprocessing: transforms.Preprocessing | None = None,
) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes and dtypes of the numeric arrays of make_batches' batches of `batch_size` rows (those that
  sharding.to_global puts on the devices), read from the schema's padding example, so without a record:
  what aot.py compiles the jitted steps for."""
  prepare = PrepareStudy(
    tokenizer=tokenizer,
    preprocessing=preprocessing or transforms.from_config(config),
    max_length=_max_length(config["data"], tokenizer),
    cleaning=None,
    train=False,
    label_names=tuple(label_names) if label_names is not None else None,
  )
  example = {key: np.asarray(value) for key, value in prepare.padding().items()}
  return {
    key: jax.ShapeDtypeStruct((batch_size, *value.shape), value.dtype)
    for key, value in example.items()
    if value.dtype.kind in "biuf"
  }


def make_dataset(
  source: Any,
  tokenizer: tokenizers.Tokenizer | None,
  preprocessing: transforms.Preprocessing,
  *,
  batch_size: int,
  max_length: int,
  train: bool,
  seed: int = 0,
  shard_index: int | None = None,
  shard_count: int | None = None,
  rows: Sequence[int] | None = None,
  cleaning: str | None = None,
  label_names: Sequence[str] | None = None,
  worker_count: int = 0,
  read_threads: int = 0,
) -> grain.IterDataset:
  """make_batches with every argument explicit (the schema in the module docstring).

  Args:
    source: random-access source of records (len and getitem).
    tokenizer: the training tokenizer; None for image-only tasks (no "tokens", no "report").
    preprocessing: how views become model input (views per record included).
    batch_size: records per batch of this process (train: the global batch / shard_count).
    max_length: token sequence length, start and end included.
    train: shuffle, repeat forever, augment, drop the last partial batch; otherwise one
      pass in source order with the last batch padded.
    seed: seed of the shuffle and of the augmentation.
    shard_index, shard_count: this process's shard (default jax.process_index() and
      jax.process_count()). Train: shard i yields rows i * batch_size .. (i + 1) * batch_size - 1
      of each global batch of batch_size * shard_count. Eval: shard i reads records i,
      i + shard_count, ..., padded to the same number of batches in every shard, so every
      process runs the same number of steps.
    rows: train: the batch_size rows of each global batch this process reads instead of its block,
      increasing: those the mesh puts on its devices (sharding.process_rows), which a multi-host TPU
      slice scatters; ignored in evaluation.
    cleaning: report cleaning style; default the tokenizer's (they must agree).
    label_names: finding names for "labels"; None: no "labels".
    worker_count: grain worker processes (0: in this process; tests use 0).
    read_threads: threads producing batches in each process (0: none).

  Returns:
    a grain IterDataset; `iter()` gives an iterator with get_state() / set_state().
  """
  if batch_size < 1 or max_length < 2:
    raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size}, {max_length}")
  if len(source) == 0:
    raise ValueError(f"{source!r} has no record")
  cleaning = _check_cleaning(cleaning, tokenizer) if tokenizer is not None else None
  if shard_index is None or shard_count is None:
    shard_index = jax.process_index() if shard_index is None else shard_index
    shard_count = jax.process_count() if shard_count is None else shard_count
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"shard_index must be in [0, {shard_count}), got {shard_index}")

  prepare = PrepareStudy(
    tokenizer=tokenizer,
    preprocessing=preprocessing,
    max_length=max_length,
    cleaning=cleaning,
    train=train,
    label_names=tuple(label_names) if label_names is not None else None,
  )
  dataset = grain.MapDataset.source(source)
  if train:
    # One order and one set of augmentations for the whole run, whatever the number of processes: every
    # process shuffles the same indices (cheap) and reads, decodes and augments only its rows of each global
    # batch, so the global batches (and the trained model) do not depend on how many hosts feed them.
    order_seed = int(np.random.SeedSequence([seed, 0]).generate_state(1)[0])
    dataset = dataset.shuffle(seed=order_seed).repeat()
    dataset = dataset.random_map(prepare, seed=order_seed)
    dataset = _RowsOfGlobalBatches(dataset, batch_size, shard_index, shard_count, rows)
    dataset = dataset.batch(batch_size, drop_remainder=True, batch_fn=collate)
  else:
    dataset = dataset[shard_index::shard_count].map(prepare)
    per_shard = math.ceil(len(source) / shard_count)
    padded_length = math.ceil(per_shard / batch_size) * batch_size
    dataset = _PadToLength(dataset, padded_length, prepare.padding())
    dataset = dataset.batch(batch_size, drop_remainder=False, batch_fn=collate)

  # Whole batches are made by the read threads; the buffer holds a few of them.
  read_options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(2, 2 * read_threads))
  iter_dataset = dataset.to_iter_dataset(read_options)
  if worker_count > 0:
    _mark_absl_flags_parsed()
    iter_dataset = iter_dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
  return iter_dataset


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
  """Batches per process of an eval dataset (make_batches with train=False)."""
  return math.ceil(math.ceil(num_examples / shard_count) / batch_size)


@dataclasses.dataclass(frozen=True)
class PrepareStudy:
  """One record -> one example of the batch schema (without the batch dimension).

  Called by grain as `prepare(record, rng)` (train, via random_map) or `prepare(record)`.
  """

  tokenizer: tokenizers.Tokenizer | None
  preprocessing: transforms.Preprocessing
  max_length: int
  cleaning: str | None
  train: bool
  label_names: tuple[str, ...] | None = None

  def __call__(self, record: Mapping[str, Any], rng: np.random.Generator | None = None) -> dict[str, Any]:
    study_id = str(record["id"])
    if "images" not in record:  # Cached encoder features stand for the images.
      example = {key: np.asarray(value) for key, value in record.items() if key.startswith("encoder_")}
      if not example:
        raise ValueError(f"study {study_id}: the record has neither images nor cached encoder features")
      return self._add_text_and_labels(dict(example, mask=np.True_, id=study_id), record, study_id)
    num_views = self.preprocessing.num_views
    if len(record["images"]) != num_views:
      raise ValueError(f"study {study_id}: expected {num_views} images, got {len(record['images'])}")
    if self.train and rng is None:
      raise ValueError("training augmentation needs the per-example rng (use random_map)")
    image_ids = record.get("image_ids") or [f"view {i}" for i in range(num_views)]
    views = [
      self.preprocessing(decode_view(image, study_id, image_id), rng if self.train else None)
      for image, image_id in zip(record["images"], image_ids)
    ]
    example = {"images": np.stack(views), "mask": np.True_, "id": study_id}
    return self._add_text_and_labels(example, record, study_id)

  def _add_text_and_labels(self, example: dict[str, Any], record: Mapping[str, Any], study_id: str) -> dict[str, Any]:
    if self.tokenizer is not None:
      cleaned = cleaning_lib.clean_report(record["report"], self.cleaning)
      example["tokens"] = np.asarray(self.tokenizer.encode(cleaned, self.max_length, pad=True), np.int32)
      example["report"] = cleaned
    if self.label_names is not None:
      example["labels"] = self._labels(record, study_id)
    return example

  def _labels(self, record: Mapping[str, Any], study_id: str) -> np.ndarray:
    """The record's own 0/1 "labels" vector (ChestX-ray14), else derived from its "mesh" tags."""
    if "labels" in record:
      labels = np.asarray(record["labels"], np.float32)
      if labels.shape != (len(self.label_names),):
        raise ValueError(
          f"study {study_id}: labels of shape {labels.shape}, expected "
          f"({len(self.label_names)},) for {self.label_names}"
        )
      return labels
    return finding_labels(record.get("mesh", []), self.label_names)

  def padding(self) -> dict[str, Any]:
    """The example that fills the last eval batch (mask False)."""
    size = self.preprocessing.image_size
    example = {
      "images": np.zeros((self.preprocessing.num_views, size, size, 3), np.float32),
      "mask": np.False_,
      "id": "",
    }
    if self.tokenizer is not None:
      example["tokens"] = np.full((self.max_length,), self.tokenizer.pad_id, np.int32)
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
  raise images.ImageError(
    f"study {study_id}: image {image_id} is a {type(image).__name__}; expected a path, encoded bytes or a numpy array"
  )


def finding_labels(mesh: Sequence[str], label_names: Sequence[str]) -> np.ndarray:
  """Multi-hot float32 [len(label_names)]: 1 where a tag's finding (before "/") is the name."""
  findings = {tag.split("/")[0] for tag in mesh}
  return np.array([name in findings for name in label_names], np.float32)


class _RowsOfGlobalBatches(grain.MapDataset):
  """This process's rows of the parent's global batches of rows * shard_count elements: element i is the
  parent's element (i // rows) * rows * shard_count + positions[i % rows], where `positions` are the rows
  that jax.make_array_from_process_local_data puts on this process's devices (sharding.process_rows); by
  default shard_index * rows .. (shard_index + 1) * rows - 1, as on CPU processes."""

  def __init__(
    self,
    parent: grain.MapDataset,
    rows: int,
    shard_index: int,
    shard_count: int,
    positions: Sequence[int] | None = None,
  ):
    super().__init__(parent)
    if positions is None:
      positions = range(shard_index * rows, (shard_index + 1) * rows)
    positions = tuple(int(p) for p in positions)
    if (
      len(positions) != rows
      or list(positions) != sorted(set(positions))
      or not (0 <= positions[0] and positions[-1] < rows * shard_count)
    ):
      raise ValueError(
        f"rows {list(positions)}: expected {rows} increasing rows of a global batch of {rows * shard_count}"
      )
    self._rows, self._shard_index, self._shard_count = rows, shard_index, shard_count
    self._positions = positions

  def __len__(self) -> int:
    return len(self._parent) // self._shard_count

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, row = divmod(index, self._rows)
    return self._parent[step * self._rows * self._shard_count + self._positions[row]]

  def __str__(self) -> str:
    return (
      f"_RowsOfGlobalBatches(rows={self._rows}, shard={self._shard_index}/{self._shard_count}, "
      f"positions={list(self._positions)})"
    )


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


def _check_cleaning(cleaning: str | None, tokenizer: tokenizers.Tokenizer) -> str:
  style = getattr(tokenizer, "cleaning_style", None)
  if cleaning is None:
    if style is None:
      raise ValueError(f"{tokenizer!r} does not say its cleaning: pass cleaning=")
    return style
  if cleaning not in cleaning_lib.CLEANING_STYLES:
    raise ValueError(f"unknown cleaning {cleaning!r}; expected one of {cleaning_lib.CLEANING_STYLES}")
  if style is not None and style != cleaning:
    raise ValueError(f"cleaning {cleaning!r} differs from the tokenizer's {style!r}")
  return cleaning


def _mark_absl_flags_parsed() -> None:
  """grain worker processes read absl flags: mark them parsed where no absl app did."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
