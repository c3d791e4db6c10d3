"""Classification metrics: multi-label AUROC, and scoring ChestX-ray14 prediction CSVs.

`multilabel_auroc`: per-class AUROC (rank-based, ties averaged, as scikit-learn's roc_auc_score)
and the mean over the classes that have both label values, less those reported beside the mean
(`outside_mean`: AG-CNN's "No Finding", so that its mean is the 14 findings' as `cxrjax auroc` gives).

Predictions are a CSV in the layout most ChestX-ray14 code writes:

  Image Index,prob_Atelectasis,prob_Cardiomegaly,...,prob_Hernia[,prob_No Finding]
  00000003_000.png,0.0123,0.2201,...

one row per image, a `prob_<Finding>` column for each of the 14 findings (any order; other
columns, e.g. prob_No Finding, are ignored). Labels come from Data_Entry_2017(_v2020).csv(.gz)
(parsed by data.chestxray14). `--images LIST` (e.g. test_list.txt) restricts scoring to the
listed images, each of which must have a prediction.

  cxrjax auroc --predictions preds.csv --labels Data_Entry_2017_v2020.csv.gz [--images test_list.txt]

Bad input raises `PredictionsError` naming the file: a missing column, a repeated image, a
probability that is not a number in [0, 1] (NaN included), an image absent from the label file,
a listed image without a prediction.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import math
import os
import pathlib
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from etils import epath

from cxrjax.core import files
from cxrjax.data import chestxray14
from cxrjax.core.errors import UserError

IMAGE_COLUMN = "Image Index"
PROB_PREFIX = "prob_"
_MAX_EXAMPLES = 5

AUROC_IMPLEMENTATION = "numpy rank-based AUROC (cxrjax): Mann-Whitney U with average ranks for tied scores"


# ----------------------------------------------------------------------------------------------
# AUROC.


def _binary_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
  """AUROC of one class from average ranks.

  Args:
    labels: bool [num_examples], holding both values.
    scores: float [num_examples].
  """
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # Tied scores share the mean of the 1-based ranks they span, which counts each positive-negative
  # tie as half a correct ordering, as the trapezoidal ROC area does.
  last_rank = np.cumsum(counts).astype(np.float64)
  mean_rank = last_rank - (counts - 1) / 2.0
  ranks = mean_rank[inverse]
  num_positive = int(labels.sum())
  num_negative = labels.size - num_positive
  positive_rank_sum = ranks[labels].sum()
  return float((positive_rank_sum - num_positive * (num_positive + 1) / 2.0) / (num_positive * num_negative))


def multilabel_auroc(
  labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str] | None = None, outside_mean: Sequence[str] = ()
) -> dict[str, Any]:
  """Per-class and mean AUROC for multi-label classification.

  Args:
    labels: 0/1 (or bool) ground truth, [num_examples, num_classes] (or [num_examples] for one
      class).
    scores: finite scores or probabilities, same shape.
    class_names: names of the classes (default "0", "1", ...).
    outside_mean: names of classes whose AUROC is reported in "per_class" but left out of "mean"
      (names not among the classes are ignored).

  Returns:
    {"per_class": {name: AUROC or nan}, "mean": mean over the classes with both label values, less
    `outside_mean` (nan if none), "excluded": {name: why it has no AUROC}, "note": text on what the
    mean covers, "implementation": str}.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.ndim == 1 and scores.ndim == 1:
    labels, scores = labels[:, None], scores[:, None]
  if labels.ndim != 2 or labels.shape != scores.shape:
    raise ValueError(
      f"labels {labels.shape} and scores {scores.shape} must share one shape [num_examples, num_classes]"
    )
  if labels.shape[0] == 0:
    raise ValueError("no examples to score")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f"labels must be 0/1, found values {np.unique(labels)[:10].tolist()}")
  if not np.isfinite(scores).all():
    raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite values")
  num_classes = labels.shape[1]
  names = [str(index) for index in range(num_classes)] if class_names is None else list(class_names)
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes")
  labels = labels.astype(bool)
  per_class, excluded = {}, {}
  for index, name in enumerate(names):
    num_positive = int(labels[:, index].sum())
    if num_positive in (0, labels.shape[0]):
      per_class[name] = float("nan")
      only = "positive" if num_positive else "negative"
      excluded[name] = f"only {only} labels ({labels.shape[0]} examples): AUROC undefined"
    else:
      per_class[name] = _binary_auroc(labels[:, index], scores[:, index])
  beside = [name for name in names if name in set(outside_mean)]
  defined = [value for name, value in per_class.items() if name not in excluded and name not in beside]
  mean = float(np.mean(defined)) if defined else float("nan")
  note = f"mean over {len(defined)} of {num_classes} classes"
  if beside:
    note += f"; reported beside the mean, not in it: {', '.join(beside)}"
  undefined = [name for name in excluded if name not in beside]
  if undefined:
    note += f"; excluded (one label value only): {', '.join(undefined)}"
  return {
    "per_class": per_class,
    "mean": mean,
    "excluded": excluded,
    "note": note,
    "implementation": AUROC_IMPLEMENTATION,
  }


# ----------------------------------------------------------------------------------------------
# ChestX-ray14 prediction CSVs and the `cxrjax auroc` command.


class PredictionsError(UserError):
  """A predictions, labels or list file that cannot be scored; the message names the file."""


def read_predictions_csv(
  path: str | os.PathLike, class_names: Sequence[str] = chestxray14.FINDINGS
) -> tuple[list[str], np.ndarray]:
  """Reads `Image Index,prob_<name>,...` -> (image ids, float64 [num_images, len(class_names)])."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: predictions file not found")
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
      ids, rows = _read_prediction_rows(csv.reader(handle), path, class_names)
  except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, csv.Error) as error:
    kind = "gzip-compressed CSV" if path.suffix == ".gz" else "UTF-8 CSV"
    raise PredictionsError(f"{path}: cannot be read as a {kind} file ({error})") from None
  if not ids:
    raise PredictionsError(f"{path}: no prediction rows")
  return ids, np.asarray(rows, np.float64)


def _read_prediction_rows(
  reader, path: pathlib.Path, class_names: Sequence[str]
) -> tuple[list[str], list[list[float]]]:
  """(ids, rows) of a predictions CSV's reader, read to its end (a gzip file's checksum is then checked)."""
  ids, rows, seen = [], [], {}
  header = [name.strip() for name in next(reader, [])]
  wanted = [IMAGE_COLUMN] + [PROB_PREFIX + name for name in class_names]
  missing = [name for name in wanted if name not in header]
  if missing:
    raise PredictionsError(f"{path}: missing columns {missing}; the header is {header}")
  repeated = sorted({name for name in wanted if header.count(name) > 1})
  if repeated:
    raise PredictionsError(f"{path}: repeated columns {repeated}")
  columns = [header.index(name) for name in wanted]
  for row in reader:
    line = reader.line_num
    if not row or (len(row) == 1 and not row[0].strip()):
      continue
    if len(row) != len(header):
      raise PredictionsError(f"{path}: line {line}: expected {len(header)} fields, got {len(row)}")
    image_id = row[columns[0]].strip()
    if not image_id:
      raise PredictionsError(f"{path}: line {line}: empty {IMAGE_COLUMN}")
    if image_id in seen:
      raise PredictionsError(f"{path}: line {line}: image {image_id} repeats line {seen[image_id]}")
    seen[image_id] = line
    values = []
    for name, column in zip(wanted[1:], columns[1:]):
      text = row[column].strip()
      try:
        value = float(text)
      except ValueError:
        raise PredictionsError(f"{path}: line {line}: {name} = {text!r} is not a number") from None
      if not (0.0 <= value <= 1.0):  # also false for NaN
        raise PredictionsError(f"{path}: line {line}: {name} = {text!r} is not a probability in [0, 1]")
      values.append(value)
    ids.append(image_id)
    rows.append(values)
  return ids, rows


def write_predictions_csv(
  path: str | os.PathLike, image_ids: Sequence[str], probabilities: Any, class_names: Sequence[str]
) -> epath.Path:
  """Writes probabilities [num_images, num_classes] as `Image Index,prob_<name>,...`."""
  probabilities = np.asarray(probabilities, np.float64)
  image_ids = [str(i) for i in image_ids]
  if probabilities.shape != (len(image_ids), len(class_names)):
    raise ValueError(
      f"probabilities {probabilities.shape} must be [{len(image_ids)} images, {len(class_names)} classes]"
    )
  if len(set(image_ids)) != len(image_ids):
    raise ValueError("image ids repeat")
  bad = ~((probabilities >= 0) & (probabilities <= 1))
  if bad.any():
    row, column = np.argwhere(bad)[0]
    raise ValueError(
      f"{int(bad.sum())} values are not probabilities in [0, 1] (NaN included), e.g. "
      f"{image_ids[row]} {class_names[column]} = {probabilities[row, column]}"
    )
  path = epath.Path(path)  # Local or gs:// (an evaluation workdir's eval/<split>/).
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.open_atomic(path, "w", newline="", encoding="utf-8") as handle:  # Whole or not at all.
    writer = csv.writer(handle)
    writer.writerow([IMAGE_COLUMN] + [PROB_PREFIX + name for name in class_names])
    for image_id, row in zip(image_ids, probabilities):
      writer.writerow([image_id] + [format(float(value), ".8g") for value in row])
  return path


def score_predictions(
  predictions_csv: str | os.PathLike, labels_csv: str | os.PathLike, images_list: str | os.PathLike | None = None
) -> dict[str, Any]:
  """Per-class AUROC and their mean over the 14 findings (multilabel_auroc).

  Args:
    predictions_csv: `Image Index,prob_<Finding>,...` (module docstring).
    labels_csv: Data_Entry_2017(_v2020).csv(.gz).
    images_list: optional file of image names (one a line) to score; default: every predicted image.

  Returns:
    {"per_class": {finding: AUROC}, "mean": float, "num_images": int, "positives": {finding: int},
    "excluded", "note", "implementation" (from multilabel_auroc), "predictions", "labels", "images"}.
  """
  predictions_csv, labels_csv = pathlib.Path(predictions_csv), pathlib.Path(labels_csv)
  ids, probabilities = read_predictions_csv(predictions_csv)
  try:
    entries = chestxray14.read_label_file(labels_csv)
  except chestxray14.ChestXray14FormatError as error:
    raise PredictionsError(str(error)) from error
  findings = {entry.image_index: entry.findings for entry in entries}
  row_of = {image_id: index for index, image_id in enumerate(ids)}
  if images_list is not None:
    images_list = pathlib.Path(images_list)
    try:
      scored = chestxray14.read_image_list(images_list)
    except chestxray14.ChestXray14FormatError as error:
      raise PredictionsError(str(error)) from error
    if not scored:
      raise PredictionsError(f"{images_list}: lists no image")
    without = [name for name in scored if name not in row_of]
    if without:
      raise PredictionsError(
        f"{predictions_csv}: no prediction for {len(without)} of the {len(scored)} "
        f"images in {images_list}, e.g. {without[:_MAX_EXAMPLES]}"
      )
  else:
    scored = ids
  unlabelled = [name for name in scored if name not in findings]
  if unlabelled:
    raise PredictionsError(
      f"{labels_csv}: has no row for {len(unlabelled)} of the {len(scored)} scored "
      f"images (from {predictions_csv}), e.g. {unlabelled[:_MAX_EXAMPLES]}"
    )
  labels = np.stack([chestxray14.labels_vector(findings[name]) for name in scored])
  scores = probabilities[[row_of[name] for name in scored]]
  result = multilabel_auroc(labels, scores, class_names=chestxray14.FINDINGS)
  result.update(
    {
      "num_images": len(scored),
      "positives": {name: int(count) for name, count in zip(chestxray14.FINDINGS, labels.sum(0))},
      "predictions": str(predictions_csv),
      "labels": str(labels_csv),
      "images": None if images_list is None else str(images_list),
    }
  )
  return result


def _run(args: argparse.Namespace) -> int:
  result = score_predictions(args.predictions, args.labels, args.images)  # Errors: cxrjax.core.errors.guarded.
  # JSON has no NaN: a class without both label values is null (and named in "excluded").
  clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}
  clean["per_class"] = {k: (None if math.isnan(v) else v) for k, v in result["per_class"].items()}
  print(json.dumps(clean))
  return 0


def add_parser(commands: Any) -> argparse.ArgumentParser:
  """Adds `cxrjax auroc` to an argparse sub-parsers object (`parser.add_subparsers()`)."""
  parser = commands.add_parser(
    "auroc", help="per-class AUROC of ChestX-ray14 predictions (a CSV of prob_<Finding> columns)"
  )
  parser.add_argument("--predictions", required=True, help="CSV: Image Index,prob_<Finding>,...")
  parser.add_argument("--labels", required=True, help="Data_Entry_2017(_v2020).csv(.gz)")
  parser.add_argument("--images", default=None, help="optional list of images to score (test_list.txt)")
  parser.set_defaults(run=_run)
  return parser
