"""What the TFDS builders of IU X-ray and ChestX-ray14 share: splits, grayscale PNGs, building, reading.

Both datasets are TFDS `GeneratorBasedBuilder`s written as array_record and read without TensorFlow
(`builder.as_data_source`). Their records are grouped into the TFDS splits "train", "validation" and
"test" from a split of ids ("train", "val", "test": splits.py's and R2Gen's names); an empty split
stops the build with `EmptySplitError`, whose message says what was read and what is missing. Images
are stored as 8-bit grayscale PNGs (chest X-rays have one channel; RGB files with equal channels are
common) and served as their PNG bytes, decoded by the pipeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import io
import os
import pathlib
from typing import Any

import numpy as np
from etils import epath
from PIL import Image
import tensorflow_datasets as tfds

from cxrjax.data import images as image_lib
from cxrjax.data import splits as split_lib
from cxrjax.core.errors import UserError

TFDS_SPLITS = ("train", "validation", "test")
# splits.random_split and R2Gen name the validation split "val"; TFDS "validation".
TO_TFDS_SPLIT = {"train": "train", "val": "validation", "test": "test"}
# Example ids kept per counted issue in a build's metadata.
MAX_EXAMPLES = 5
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class EmptySplitError(UserError):
  """A build whose split would hold no record (too few records read, e.g. a partial image download).

  The message is one line naming the split and what is missing; `counts` is the text of what the
  parser read, kept and skipped (printed before the message by `cxrjax prepare`).
  """

  def __init__(self, message: str, counts: str = ""):
    super().__init__(message)
    self.counts = counts
    self.details = counts  # errors.guarded prints it before the message.


def group_by_split(
  records: Sequence[Mapping[str, Any]], split_ids: Mapping[str, Sequence[str]]
) -> tuple[dict[str, list[Mapping[str, Any]]], list[Mapping[str, Any]], dict[str, int]]:
  """Groups records into the TFDS splits by their "id".

  Args:
    records: the kept records.
    split_ids: "train" / "val" / "test" -> ids (ids absent from `records` are counted, not an error).

  Returns:
    (by_split, unassigned, not_kept): TFDS split -> records; the records in no split; TFDS split ->
    how many of its ids have no record (skipped by the parser or absent from the source).
  """
  grouped = split_lib.apply_split(records, split_ids)
  unassigned = grouped.pop(split_lib.UNASSIGNED, [])
  kept = {record["id"] for record in records}
  not_kept = {TO_TFDS_SPLIT[name]: sum(i not in kept for i in ids) for name, ids in split_ids.items()}
  by_split = {TO_TFDS_SPLIT[name]: split_records for name, split_records in grouped.items()}
  return by_split, unassigned, not_kept


def empty_split(by_split: Mapping[str, Sequence[Any]]) -> str | None:
  """The first TFDS split without records, or None when every split has some."""
  return next((name for name in TFDS_SPLITS if not by_split.get(name)), None)


def add_example(build: dict[str, Any], key: str, examples_key: str, example_id: str) -> None:
  """Counts one event in build[key] and keeps its id in build[examples_key] (at most MAX_EXAMPLES)."""
  build[key] += 1
  examples = build[examples_key]
  if len(examples) < MAX_EXAMPLES:
    examples.append(example_id)


def is_gray8_png(path: str | os.PathLike) -> bool:
  """Whether a file is an 8-bit grayscale PNG, from its IHDR chunk (no decoding)."""
  with open(path, "rb") as handle:
    head = handle.read(26)
  # Signature (8), IHDR length (4) and type (4), width (4), height (4), bit depth, colour type.
  return len(head) == 26 and head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 8 and head[25] == 0


def gray_png(path: str | os.PathLike) -> tuple[bytes, bool]:
  """An image file as 8-bit grayscale PNG bytes, and whether its channels differed.

  Equal channels are kept as they are; colour is converted to ITU-R 601 luma (PIL's "L").
  """
  rgb = image_lib.load_image(path)  # uint8 [H, W, 3]; names the file when it cannot be read
  is_colour = not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]))
  gray = Image.fromarray(rgb).convert("L") if is_colour else Image.fromarray(rgb[..., 0])
  buffer = io.BytesIO()
  gray.save(buffer, format="PNG")
  return buffer.getvalue(), is_colour


class RemoteDataDirError(UserError):
  """`cxrjax prepare --data-dir gs://...`: the dataset files can only be written to a local folder."""


def check_local_data_dir(data_dir: str | os.PathLike, name: str) -> None:
  """Raises RemoteDataDirError for a URL: `name`'s array_record files can only be written to a local folder
  (array_record 0.8's writer opens local files only; its reader reads gs:// itself)."""
  if "://" in str(data_dir):
    raise RemoteDataDirError(
      f"--data-dir {data_dir}: {name} is written as array_record files, which need a local folder; "
      f"prepare it into a local --data-dir, then copy that folder's {name.split('/')[0]}/ to the bucket "
      f"(gcloud storage cp -r): training and evaluation read prepared datasets from gs:// directly"
    )


class KeepEncoded(tfds.decode.SkipDecoding):
  """Leaves images as PNG bytes (cxrjax decodes them with images.py, in the pipeline).

  tfds 4.9.10's SkipDecoding has no NumPy path for a feature inside a Sequence
  (`decode_batch_example_np`), which a multi-image Sequence needs.
  """

  def decode_batch_example_np(self, batch: np.ndarray) -> list[bytes]:
    return list(batch)


def dataset_dir(
  data_dir: str | os.PathLike, builder_class: type[tfds.core.GeneratorBasedBuilder], config: str
) -> epath.Path:
  """The folder of a prepared dataset: DATA_DIR/<name>/<config>/<version> (local or gs://: TFDS and
  array_record read gs:// themselves)."""
  configs = tuple(c.name for c in builder_class.BUILDER_CONFIGS)
  if config not in configs:
    raise ValueError(f"unknown {builder_class.name} config {config!r}; expected one of {configs}")
  return epath.Path(data_dir) / builder_class.name / config / str(builder_class.VERSION)


def build(
  builder: tfds.core.GeneratorBasedBuilder, manual_dir: str | os.PathLike | None, progress: bool = False
) -> None:
  """Builds `builder`'s dataset from `manual_dir`, unless it is built (`manual_dir` may then be None).

  Raises:
    FileNotFoundError: not built and no manual folder (the message gives the download instructions).
  """
  name = f"{builder.name}/{builder.builder_config.name}"
  if not (epath.Path(builder.data_dir) / "dataset_info.json").is_file():
    check_local_data_dir(builder.data_dir, name)
  if not (epath.Path(builder.data_dir) / "dataset_info.json").is_file():
    if manual_dir is None:
      raise FileNotFoundError(f"{name} is not built in {builder.data_dir}: pass --manual-dir")
    if not pathlib.Path(manual_dir).is_dir():
      raise FileNotFoundError(f"manual folder not found: {manual_dir}\n{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
  if progress:
    tfds.disable_progress_bar()  # the builder shows its own bar, with totals
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir is not None else None)
  )


def open_split(
  builder_class: type[tfds.core.GeneratorBasedBuilder],
  data_dir: str | os.PathLike,
  config: str,
  split: str,
  decoders: Mapping[str, Any],
  prepare_command: str,
) -> tuple[tfds.core.GeneratorBasedBuilder, Any]:
  """(builder, random-access data source) of one split of a prepared dataset.

  Args:
    builder_class, data_dir, config: the dataset (DATA_DIR/<name>/<config>/<version>).
    split: "train", "validation" (or "val") or "test".
    decoders: TFDS decoders, e.g. {"image": KeepEncoded()}.
    prepare_command: the command that builds it, named when it is not built.

  Raises:
    FileNotFoundError: not prepared; ValueError: unknown config or split.
  """
  folder = dataset_dir(data_dir, builder_class, config)
  name = f"{builder_class.name}/{config}"
  if not (folder / "dataset_info.json").is_file():
    raise FileNotFoundError(
      f"{name} is not prepared in {data_dir} (no {folder / 'dataset_info.json'}): run `{prepare_command}`"
    )
  builder = builder_class(config=config, data_dir=data_dir)
  split = TO_TFDS_SPLIT.get(split, split)
  if split not in builder.info.splits:
    raise ValueError(f"{name} has no split {split!r}; it has {sorted(builder.info.splits)}")
  return builder, builder.as_data_source(split=split, decoders=dict(decoders))


def to_str(value: bytes | str) -> str:
  """A TFDS text feature (bytes from array_record) as str."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
