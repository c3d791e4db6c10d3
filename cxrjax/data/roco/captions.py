"""ROCOv2 and ROCO v1 captions, concepts and image locations, read into caption records.

Layouts (`detect_layout(manual_dir)`, or given):
  "rocov2_csv"      ROCOv2's official release (Zenodo): train_captions.csv, valid_captions.csv,
                    test_captions.csv (`ID,Caption`, RFC-4180 quoting: captions with commas,
                    quotes or newlines are quoted, quotes doubled), images train/<ID>.jpg,
                    valid/<ID>.jpg, test/<ID>.jpg (also <split>_images/<split>/, as the zip files
                    extract). Optional concepts: <split>_concepts.csv and
                    <split>_concepts_manual.csv (`ID,CUIs`, CUIs separated by ";").
  "rocov2_parquet"  the Hugging Face copy `eltorio/ROCOv2-radiology`: data/train-*.parquet,
                    data/validation-*.parquet, data/test-*.parquet (also directly in manual_dir),
                    columns image ({bytes, path} or bytes), image_id, caption, cui (list of str).
  "roco_v1"         ROCO v1 (github.com/razorx89/roco-dataset, its data/ folder or the folder
                    holding it): <split>/radiology/captions.txt (`ROCO_xxxxx<TAB> caption`),
                    keywords.txt, cuis.txt, semtypes.txt (`ROCO_xxxxx<TAB><TAB>v1<TAB>v2...`),
                    licences.txt (`ROCO_ID,PMC_ID,CC`), dlinks.txt, splits train / validation /
                    test; images in <split>/radiology/images/ named as the fetch script names
                    them, `<PMC id>_<figure file>` (licences.txt's second column), or <ROCO id>.jpg.

Captions are kept exactly as written (a leading space, straight or curly quotes included; v1's
space after the tab is part of the caption as the file has it): the pipeline's report cleaning
normalises them for training, the raw text stays available.

Caption records (one image each):
  "id": str, "image": the image (a path, or a ParquetImage), "report": the caption,
  "concepts": [CUI] ([] where the layout has none), "keywords": [str] (v1 only, else []),
  "licence": str (v1 only, else "").

What is read, kept and skipped is counted per split in a `SplitReport`, never silently:
  "empty_caption"    a caption that is empty or only whitespace;
  "duplicate_id"     an id seen before in the same split (the first is kept);
  "missing_image"    no image file (folder layouts) or no image bytes (parquet);
  "unreadable_image" an image that does not decode (found when the TFDS builder reads it).
A split file that is not there raises `MissingSplitError` naming it; a malformed file (wrong
header, a row with the wrong number of fields) raises `RocoFormatError` naming the file and line.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import contextlib
import csv
import dataclasses
import os
import pathlib
from typing import Any

import pyarrow as pa  # The Hugging Face parquet layout (pyarrow comes with tensorflow-datasets).
import pyarrow.parquet as pq

from cxrjax.core.errors import UserError

LAYOUTS = ("rocov2_csv", "rocov2_parquet", "roco_v1")
SPLITS = ("train", "validation", "test")
# Each layout's name for a split.
ROCOV2_CSV_SPLITS = {"train": "train", "validation": "valid", "test": "test"}
PARQUET_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
ROCO_V1_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
SKIP_REASONS = ("empty_caption", "duplicate_id", "missing_image", "unreadable_image")
MAX_EXAMPLES = 5


class RocoFormatError(UserError):
  """A ROCO source file that cannot be used; the message names the file (and line)."""


class MissingSplitError(RocoFormatError):
  """A split file (captions CSV, captions.txt or parquet files) that is not in the manual folder."""


@dataclasses.dataclass(frozen=True)
class ParquetImage:
  """Where a parquet layout's image is: row `row` of `path` (read when the dataset is built)."""

  path: str
  row: int


@dataclasses.dataclass
class SplitReport:
  """What was read, kept and skipped in one split, with up to MAX_EXAMPLES ids per reason.

  `selected_out` counts records left out by a subset (not a skip: they are fine, just not asked for).
  """

  split: str
  source: str
  num_read: int = 0
  num_kept: int = 0
  selected_out: int = 0
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, example_id: str) -> None:
    """Counts one skipped record (reason one of SKIP_REASONS)."""
    if reason not in SKIP_REASONS:
      raise ValueError(f"unknown skip reason {reason!r}")
    self.skipped[reason] = self.skipped.get(reason, 0) + 1
    examples = self.examples.setdefault(reason, [])
    if len(examples) < MAX_EXAMPLES:
      examples.append(example_id)

  def summary(self) -> str:
    """One line: read, kept, selected out and skipped by reason (with examples)."""
    skipped = sum(self.skipped.values())
    line = f"{self.split}: {self.num_read:,} read, {self.num_kept:,} kept, {skipped:,} skipped"
    if self.selected_out:
      line += f", {self.selected_out:,} not in the subset"
    reasons = [
      f"{reason} {count:,} (e.g. {', '.join(self.examples.get(reason, []))})"
      for reason, count in sorted(self.skipped.items())
    ]
    return line + (f" [{'; '.join(reasons)}]" if reasons else "") + f" from {self.source}"


def detect_layout(manual_dir: str | os.PathLike) -> str:
  """The layout in `manual_dir` (see the module docstring); RocoFormatError when none is recognised."""
  folder = pathlib.Path(manual_dir)
  if any((folder / f"{name}_captions.csv").is_file() for name in ROCOV2_CSV_SPLITS.values()):
    return "rocov2_csv"
  if _parquet_dir(folder) is not None:
    return "rocov2_parquet"
  if _roco_v1_dir(folder) is not None:
    return "roco_v1"
  raise RocoFormatError(
    f"{folder}: no ROCO layout found: expected ROCOv2's <split>_captions.csv, the Hugging Face "
    f"data/<split>-*.parquet files, or ROCO v1's <split>/radiology/captions.txt"
  )


def load_split(
  manual_dir: str | os.PathLike, split: str, layout: str | None = None
) -> tuple[list[dict[str, Any]], SplitReport]:
  """The caption records of one split ("train", "validation", "test") and what was skipped.

  Folder layouts check that each image file exists ("missing_image"); parquet layouts that each row
  has image bytes. Whether an image decodes is checked by the TFDS builder ("unreadable_image").
  """
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
  folder = pathlib.Path(manual_dir)
  layout = layout or detect_layout(folder)
  if layout == "rocov2_csv":
    rows, report = _rocov2_csv_rows(folder, split)
  elif layout == "rocov2_parquet":
    rows, report = _parquet_rows(folder, split)
  elif layout == "roco_v1":
    rows, report = _roco_v1_rows(folder, split)
  else:
    raise ValueError(f"unknown ROCO layout {layout!r}; expected one of {LAYOUTS}")
  return keep_records(rows, report), report


def keep_records(rows: Iterator[dict[str, Any]], report: SplitReport) -> list[dict[str, Any]]:
  """The rows kept: skips empty captions, repeated ids and missing images, counting each in `report`."""
  records, seen = [], set()
  for row in rows:
    report.num_read += 1
    if row["id"] in seen:
      report.skip("duplicate_id", row["id"])
    elif not row["report"].strip():
      report.skip("empty_caption", row["id"])
    elif row["image"] is None:
      report.skip("missing_image", row["id"])
    else:
      records.append(row)
    seen.add(row["id"])
  report.num_kept = len(records)
  return records


# ROCOv2, official release.


def read_rocov2_captions(path: str | os.PathLike) -> list[tuple[str, str]]:
  """(ID, Caption) rows of a ROCOv2 captions CSV, captions exactly as written (RFC-4180 quoting)."""
  return [(row[0], row[1]) for row in _read_csv(path, ("ID", "Caption"))]


def read_rocov2_concepts(path: str | os.PathLike) -> dict[str, list[str]]:
  """ID -> CUIs of a ROCOv2 concepts CSV (`ID,CUIs`, CUIs separated by ";")."""
  return {row[0]: [cui.strip() for cui in row[1].split(";") if cui.strip()] for row in _read_csv(path, ("ID", "CUIs"))}


def _read_csv(path: str | os.PathLike, header: Sequence[str]) -> list[list[str]]:
  path = pathlib.Path(path)
  # utf-8-sig: a byte order mark (spreadsheet exports) is not part of the first column's name.
  with open(path, newline="", encoding="utf-8-sig") as handle:
    reader = csv.reader(handle, strict=True)
    try:
      rows = list(reader)
    except csv.Error as error:
      raise RocoFormatError(f"{path}: line {reader.line_num}: malformed CSV ({error})") from None
    except UnicodeDecodeError as error:
      raise RocoFormatError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None
  if not rows or [name.strip().lower() for name in rows[0]] != [name.lower() for name in header]:
    raise RocoFormatError(
      f"{path}: expected the header {','.join(header)}, got {','.join(rows[0]) if rows else 'an empty file'}"
    )
  for number, row in enumerate(rows[1:], start=2):
    if len(row) != len(header):
      raise RocoFormatError(f"{path}: row {number}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
  return rows[1:]


def _rocov2_csv_rows(folder: pathlib.Path, split: str) -> tuple[Iterator[dict[str, Any]], SplitReport]:
  name = ROCOV2_CSV_SPLITS[split]
  path = folder / f"{name}_captions.csv"
  if not path.is_file():
    raise MissingSplitError(f"{path}: split file not found (the ROCOv2 {split} captions)")
  captions = read_rocov2_captions(path)
  concepts: dict[str, list[str]] = {}
  for suffix in ("concepts", "concepts_manual"):  # optional; the manual ones add to the others
    concepts_path = folder / f"{name}_{suffix}.csv"
    if concepts_path.is_file():
      for image_id, cuis in read_rocov2_concepts(concepts_path).items():
        concepts[image_id] = list(dict.fromkeys(concepts.get(image_id, []) + cuis))
  image_dirs = [folder / name, folder / f"{name}_images" / name, folder / f"{name}_images"]

  def rows():
    for image_id, caption in captions:
      image = next((d / f"{image_id}.jpg" for d in image_dirs if (d / f"{image_id}.jpg").is_file()), None)
      yield {
        "id": image_id,
        "image": str(image) if image else None,
        "report": caption,
        "concepts": concepts.get(image_id, []),
        "keywords": [],
        "licence": "",
      }

  return rows(), SplitReport(split=split, source=str(path))


# ROCOv2, Hugging Face parquet files.


def _parquet_dir(folder: pathlib.Path) -> pathlib.Path | None:
  for candidate in (folder / "data", folder):
    if candidate.is_dir() and any(candidate.glob("*.parquet")):
      return candidate
  return None


def parquet_files(folder: str | os.PathLike, split: str) -> list[pathlib.Path]:
  """The parquet files of `split` in the Hugging Face layout, sorted (MissingSplitError if none)."""
  folder = pathlib.Path(folder)
  data = _parquet_dir(folder) or folder / "data"
  files = sorted(data.glob(f"{PARQUET_SPLITS[split]}-*.parquet"))
  if not files:
    raise MissingSplitError(
      f"{data / (PARQUET_SPLITS[split] + '-*.parquet')}: split file not found (the ROCOv2 {split} parquet files)"
    )
  return files


def _parquet_rows(folder: pathlib.Path, split: str) -> tuple[Iterator[dict[str, Any]], SplitReport]:
  files = parquet_files(folder, split)

  def rows():
    for path in files:
      table = _open_parquet(path)
      names = set(table.schema_arrow.names)
      missing = {"image", "image_id", "caption"} - names
      if missing:
        raise RocoFormatError(f"{path}: no column {', '.join(sorted(missing))} (has {sorted(names)})")
      columns = ["image_id", "caption"] + (["cui"] if "cui" in names else [])
      text = table.read(columns=columns).to_pydict()
      has_image = _parquet_has_image(table)
      for row, image_id in enumerate(text["image_id"]):
        yield {
          "id": str(image_id),
          "report": text["caption"][row] or "",
          "image": ParquetImage(str(path), row) if has_image[row] else None,
          "concepts": list(text["cui"][row] or []) if "cui" in text else [],
          "keywords": [],
          "licence": "",
        }

  return rows(), SplitReport(split=split, source=str(files[0].parent / f"{PARQUET_SPLITS[split]}-*.parquet"))


def _open_parquet(path: str | os.PathLike) -> pq.ParquetFile:
  try:
    return pq.ParquetFile(path)
  except (pa.ArrowInvalid, OSError) as error:
    raise RocoFormatError(f"{path}: not a readable parquet file ({error})") from None


def _parquet_has_image(table: Any) -> list[bool]:
  """Per row: whether the image column holds bytes (reads the column, one row group at a time)."""
  has_image = []
  for group in range(table.num_row_groups):
    column = table.read_row_group(group, columns=["image"]).column("image")
    if pa.types.is_struct(column.type):
      column = column.combine_chunks().field("bytes")
    has_image.extend(value is not None and len(value) > 0 for value in column.to_pylist())
  return has_image


def read_parquet_images(path: str | os.PathLike) -> Iterator[bytes | None]:
  """The image bytes of every row of a parquet file, in order, one row group at a time."""
  table = _open_parquet(path)
  for group in range(table.num_row_groups):
    column = table.read_row_group(group, columns=["image"]).column("image").combine_chunks()
    if pa.types.is_struct(column.type):
      column = column.field("bytes")
    yield from column.to_pylist()


# ROCO v1.


def _roco_v1_dir(folder: pathlib.Path) -> pathlib.Path | None:
  for candidate in (folder, folder / "data"):
    if any((candidate / name / "radiology" / "captions.txt").is_file() for name in ROCO_V1_SPLITS.values()):
      return candidate
  return None


@contextlib.contextmanager
def _open_text(path: pathlib.Path) -> Iterator[Any]:
  """A UTF-8 text file's lines; a decoding error anywhere in it is a RocoFormatError naming the file."""
  with open(path, encoding="utf-8", newline="\n") as handle:
    try:
      yield handle
    except UnicodeDecodeError as error:
      raise RocoFormatError(f"{path}: not UTF-8 text (byte {error.start}: {error.reason})") from None


def read_roco_v1_captions(path: str | os.PathLike) -> list[tuple[str, str]]:
  """(ROCO id, caption) rows of a ROCO v1 captions.txt (`ROCO_xxxxx<TAB> caption`), caption as written."""
  path = pathlib.Path(path)
  rows = []
  with _open_text(path) as handle:
    for number, line in enumerate(handle, start=1):
      line = line.rstrip("\r\n")
      if not line:
        continue
      if "\t" not in line:
        raise RocoFormatError(f"{path}: line {number}: expected `ROCO_xxxxx<TAB> caption`, got {line[:60]!r}")
      image_id, caption = line.split("\t", 1)
      rows.append((image_id, caption))
  return rows


def read_roco_v1_lists(path: str | os.PathLike) -> dict[str, list[str]]:
  """ROCO id -> values of a ROCO v1 keywords.txt / cuis.txt / semtypes.txt (tab-separated, empty
  fields dropped; semtypes alternate code and name)."""
  path = pathlib.Path(path)
  values = {}
  with _open_text(path) as handle:
    for line in handle:
      fields = line.rstrip("\r\n").split("\t")
      if fields[0]:
        values[fields[0]] = [field.strip() for field in fields[1:] if field.strip()]
  return values


def read_roco_v1_licences(path: str | os.PathLike) -> dict[str, tuple[str, str]]:
  """ROCO id -> (image file name, licence) of a ROCO v1 licences.txt (`ROCO_ID,PMC_ID,CC`)."""
  return {row[0]: (row[1], row[2]) for row in _read_csv(path, ("ROCO_ID", "PMC_ID", "CC"))}


def _roco_v1_rows(folder: pathlib.Path, split: str) -> tuple[Iterator[dict[str, Any]], SplitReport]:
  root = _roco_v1_dir(folder) or folder
  radiology = root / ROCO_V1_SPLITS[split] / "radiology"
  path = radiology / "captions.txt"
  if not path.is_file():
    raise MissingSplitError(f"{path}: split file not found (the ROCO v1 {split} captions)")
  captions = read_roco_v1_captions(path)
  optional = lambda name, read: read(radiology / name) if (radiology / name).is_file() else {}
  keywords = optional("keywords.txt", read_roco_v1_lists)
  cuis = optional("cuis.txt", read_roco_v1_lists)
  licences = optional("licences.txt", read_roco_v1_licences)
  image_dir = radiology / "images"

  def rows():
    for image_id, caption in captions:
      file_name, licence = licences.get(image_id, ("", ""))
      candidates = ([image_dir / file_name] if file_name else []) + [image_dir / f"{image_id}.jpg"]
      image = next((candidate for candidate in candidates if candidate.is_file()), None)
      yield {
        "id": image_id,
        "image": str(image) if image else None,
        "report": caption,
        "concepts": cuis.get(image_id, []),
        "keywords": keywords.get(image_id, []),
        "licence": licence,
      }

  return rows(), SplitReport(split=split, source=str(path))


def iter_split_captions(manual_dir: str | os.PathLike, split: str, layout: str | None = None) -> list[dict[str, Any]]:
  """Every row of a split as read (no image check, nothing skipped): for caption statistics."""
  folder = pathlib.Path(manual_dir)
  layout = layout or detect_layout(folder)
  readers = {"rocov2_csv": _rocov2_csv_rows, "rocov2_parquet": _parquet_rows, "roco_v1": _roco_v1_rows}
  if layout not in readers:
    raise ValueError(f"unknown ROCO layout {layout!r}; expected one of {LAYOUTS}")
  rows, _ = readers[layout](folder, split)
  return list(rows)
