"""ChestX-ray14's label file, image folders and official lists: image records and patient-level splits.

The public layout, in one folder (`manual_dir`):
  Data_Entry_2017_v2020.csv or Data_Entry_2017.csv (either may be gzipped; v2020 is preferred
      when both exist): `Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,
      Patient Gender,View Position,...`; labels are `|`-separated, "No Finding" or findings.
  images*/: the PNGs, directly (images/00000001_000.png, the NIH box after extracting the
      tarballs) or one level down (images_001/images/..., the Kaggle copy).
  train_val_list.txt, test_list.txt: the official patient-wise split (86,524 / 25,596 names),
      in `manual_dir` or `manual_dir/official_split/`.
  chexnet_split/ (or labels/, arnoweng/CheXNet's ChestX-ray14/labels/): train_list.txt, val_list.txt,
      test_list.txt, the CheXNet reproduction lists (78,468 / 11,219 / 22,433 images): one image a line,
      `00000001_000.png 0 1 0 0 0 0 0 0 0 0 1 0 0 0`, the name then 14 labels 0/1, whitespace-separated, in
      FINDINGS order (CheXNet's; arnoweng/CheXNet's model.py CLASS_NAMES and read_data.py). A folder of their
      own: NIH's test_list.txt has the same name.

Records (one per image):
  "id": str                 the image index ("00000001_000.png")
  "images": [str]           one path (the study schema's list, with one frontal view)
  "image_ids": [str]        [id]
  "labels": float32 [C]     1.0 per finding, in `class_names(include_no_finding)` order: the 14
                            findings in CheXNet's order (FINDINGS), plus
                            "No Finding" as a 15th class when asked (AG-CNN, seed 004)
  "finding_labels": [str]   the file's labels as listed (["No Finding"] for none)
  "patient_id": str, "follow_up": int, "age": int, "gender": str, "view_position": str

Splits (image ids per "train" / "val" / "test"; no patient is in two splits):
  "official": test = test_list.txt; train_val_list.txt's patients are split 90/10 into
      train / val (`splits.random_split` over patient ids, seed 0): a seeded patient-level
      carve-out, as the official split has no validation part.
  "random":   a seeded patient-level 70/10/20 split over all patients (as CheXNet and AG-CNN
      split; they split at random, here by patient to avoid identity confounding).
  "chexnet":  train / val / test = the CheXNet reproduction lists. Checked against the 112,120-row
      Data_Entry_2017_v2020.csv: they cover every row, no image or patient is in two lists.
Every split scheme's summary (`split_lists`) counts the label file's rows in no list, with examples.

Labels of the chexnet lists. The stored labels are the label file's, for every config: the label file is
NIH's current labelling (v2020), the lists carry a copy made earlier, and one source of labels keeps the
configs differing in their split only. Where a list's 14 labels differ from the label file's, the image is
counted and listed (`split_lists["label_disagreements"]`, with up to 5 examples: image, list file and line,
the list's and the file's findings), and `cxrjax prepare` prints one warning line: never silently resolved.
Against Data_Entry_2017_v2020.csv, arnoweng/CheXNet's lists differ on 181 images (127 / 18 / 36 in train /
val / test), each a finding the v2020 file has and the list lacks (Pneumonia 78, Mass 36, ...).
`splits.random_split` orders ids by sha256(seed:id): assignment does not depend on file order.

Bad input:
  - a malformed label file (missing column, wrong field count, unknown or repeated label name,
    "No Finding" mixed with findings, bad patient id or age, repeated image index) raises
    `ChestXray14FormatError` naming the file and line;
  - an image in both official lists, or a patient in both, raises it too;
  - a chexnet list line without 15 fields, a label other than 0 or 1, an image not in the label file, an
    image repeated in a list or in two lists, a patient in two lists: `ChestXray14FormatError` naming the
    list file and the line;
  - a label row whose image file is not under `images*/`: an error by default
    (`missing_images="error"`, message naming the label file, the count and examples); with
    `missing_images="skip"` (a partial download) the row is skipped and counted in
    `ParseReport.skipped["missing_image"]`, never silently.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import os
import pathlib
import re
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.data import splits as split_lib
from cxrjax.core.errors import UserError

# CheXNet's class order (Rajpurkar et al. 2017): the 14 findings of ChestX-ray14.
FINDINGS = (
  "Atelectasis",
  "Cardiomegaly",
  "Effusion",
  "Infiltration",
  "Mass",
  "Nodule",
  "Pneumonia",
  "Pneumothorax",
  "Consolidation",
  "Edema",
  "Emphysema",
  "Fibrosis",
  "Pleural_Thickening",
  "Hernia",
)
NO_FINDING = "No Finding"
# Searched in this order: the v2020 relabelled file first.
LABEL_FILE_NAMES = (
  "Data_Entry_2017_v2020.csv",
  "Data_Entry_2017_v2020.csv.gz",
  "Data_Entry_2017.csv",
  "Data_Entry_2017.csv.gz",
)
TRAIN_VAL_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
# The CheXNet reproduction lists (arnoweng/CheXNet ChestX-ray14/labels/), per split, and where they are looked for.
CHEXNET_LISTS = {"train": "train_list.txt", "val": "val_list.txt", "test": "test_list.txt"}
CHEXNET_LIST_FOLDERS = ("chexnet_split", "labels")
SPLIT_SCHEMES = ("official", "random", "chexnet")
SPLIT_NAMES = ("train", "val", "test")
SPLIT_SEED = 0
OFFICIAL_VAL_FRACTION = 0.1
RANDOM_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
MISSING_IMAGE_POLICIES = ("error", "skip")

_REQUIRED_COLUMNS = (
  "Image Index",
  "Finding Labels",
  "Follow-up #",
  "Patient ID",
  "Patient Age",
  "Patient Gender",
  "View Position",
)
_AGE = re.compile(r"(\d+)Y?")  # v2020 and Kaggle: "58"; an early release wrote "058Y".
_MAX_EXAMPLES = 5


class ChestXray14FormatError(UserError):
  """A ChestX-ray14 source file that cannot be used; the message names the file (and line)."""


def class_names(include_no_finding: bool = False) -> tuple[str, ...]:
  """The label order: CheXNet's 14 findings, then "No Finding" when asked (15 classes)."""
  return FINDINGS + ((NO_FINDING,) if include_no_finding else ())


@dataclasses.dataclass(frozen=True)
class LabelEntry:
  """One row of Data_Entry_2017*.csv."""

  image_index: str
  findings: tuple[str, ...]  # () for "No Finding"
  patient_id: str
  follow_up: int
  age: int
  gender: str
  view_position: str
  line: int  # line in the label file (header = 1), for messages


def labels_vector(findings: Iterable[str], include_no_finding: bool = False) -> np.ndarray:
  """Findings -> float32 [14] or [15] multi-hot in `class_names` order ("No Finding" = none)."""
  names = class_names(include_no_finding)
  vector = np.zeros(len(names), np.float32)
  findings = tuple(findings)
  for finding in findings:
    vector[FINDINGS.index(finding)] = 1.0
  if include_no_finding and not findings:
    vector[-1] = 1.0
  return vector


def _open_text(path: pathlib.Path):
  if path.suffix == ".gz":
    return gzip.open(path, "rt", newline="", encoding="utf-8")
  return open(path, newline="", encoding="utf-8")


def read_label_file(path: str | os.PathLike) -> list[LabelEntry]:
  """Parses Data_Entry_2017(_v2020).csv(.gz) into one LabelEntry per row, in file order.

  Raises:
    FileNotFoundError: no such file.
    ChestXray14FormatError: a malformed header or row (names the file and the line).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: label file not found")
  entries, seen = [], {}
  try:
    with _open_text(path) as handle:
      reader = csv.reader(handle)
      header = next(reader, None)
      if header is None:
        raise ChestXray14FormatError(f"{path}: empty file, expected a header with {_REQUIRED_COLUMNS}")
      # The 2017 file's header ends with a comma (an unnamed empty column).
      while header and not header[-1].strip():
        header.pop()
      missing = [c for c in _REQUIRED_COLUMNS if c not in header]
      if missing:
        raise ChestXray14FormatError(f"{path}: line 1: missing columns {missing}; found {header}")
      column = {name: header.index(name) for name in _REQUIRED_COLUMNS}
      for row in reader:
        line = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
          continue  # a blank line (e.g. at the end)
        while len(row) > len(header) and not row[-1].strip():
          row.pop()
        if len(row) != len(header):
          raise ChestXray14FormatError(
            f"{path}: line {line}: expected {len(header)} fields, got {len(row)}: {row[:3]}..."
          )
        entry = _parse_row(row, column, path, line)
        if entry.image_index in seen:
          raise ChestXray14FormatError(
            f"{path}: line {line}: image {entry.image_index} repeats line {seen[entry.image_index]}"
          )
        seen[entry.image_index] = line
        entries.append(entry)
  except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error, csv.Error) as error:
    raise ChestXray14FormatError(f"{path}: cannot be read as a CSV file ({error})") from error
  if not entries:
    raise ChestXray14FormatError(f"{path}: no rows after the header")
  return entries


def _parse_row(row: list[str], column: Mapping[str, int], path: pathlib.Path, line: int) -> LabelEntry:
  where = f"{path}: line {line}"
  image_index = row[column["Image Index"]].strip()
  if not image_index or "/" in image_index or "\\" in image_index:
    raise ChestXray14FormatError(f"{where}: bad Image Index {image_index!r}")
  names = [name.strip() for name in row[column["Finding Labels"]].split("|")]
  if NO_FINDING in names:
    if len(names) > 1:
      raise ChestXray14FormatError(f"{where}: {NO_FINDING!r} listed with findings: {names}")
    findings = ()
  else:
    unknown = [name for name in names if name not in FINDINGS]
    if unknown:
      raise ChestXray14FormatError(f"{where}: unknown label name(s) {unknown}; known: {list(FINDINGS) + [NO_FINDING]}")
    if len(set(names)) != len(names):
      raise ChestXray14FormatError(f"{where}: repeated label name in {names}")
    findings = tuple(names)
  patient_id = row[column["Patient ID"]].strip()
  if not patient_id.isdigit():
    raise ChestXray14FormatError(f"{where}: Patient ID {patient_id!r} is not a number")
  follow_up = row[column["Follow-up #"]].strip()
  if not follow_up.isdigit():
    raise ChestXray14FormatError(f"{where}: Follow-up # {follow_up!r} is not a number")
  age = _AGE.fullmatch(row[column["Patient Age"]].strip())
  if age is None:
    raise ChestXray14FormatError(f"{where}: Patient Age {row[column['Patient Age']]!r} is not a number")
  return LabelEntry(
    image_index=image_index,
    findings=findings,
    patient_id=str(int(patient_id)),
    follow_up=int(follow_up),
    age=int(age.group(1)),
    gender=row[column["Patient Gender"]].strip(),
    view_position=row[column["View Position"]].strip(),
    line=line,
  )


def read_image_list(path: str | os.PathLike) -> list[str]:
  """Image names, one per line (train_val_list.txt, test_list.txt); blank lines ignored."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: image list not found")
  names, seen = [], {}
  with _open_text(path) as handle:
    for line, text in enumerate(handle, start=1):
      name = text.strip()
      if not name:
        continue
      if "," in name or " " in name:
        raise ChestXray14FormatError(f"{path}: line {line}: expected one image name, got {name!r}")
      if name in seen:
        raise ChestXray14FormatError(f"{path}: line {line}: {name} repeats line {seen[name]}")
      seen[name] = line
      names.append(name)
  return names


def find_label_file(manual_dir: str | os.PathLike) -> pathlib.Path:
  """The label file in `manual_dir` (see LABEL_FILE_NAMES for the order of preference)."""
  manual_dir = pathlib.Path(manual_dir)
  for name in LABEL_FILE_NAMES:
    if (manual_dir / name).is_file():
      return manual_dir / name
  raise FileNotFoundError(f"no ChestX-ray14 label file in {manual_dir}: looked for {LABEL_FILE_NAMES}")


def find_official_lists(manual_dir: str | os.PathLike) -> tuple[pathlib.Path, pathlib.Path]:
  """(train_val_list.txt, test_list.txt), in `manual_dir` or `manual_dir/official_split`."""
  manual_dir = pathlib.Path(manual_dir)
  for folder in (manual_dir, manual_dir / "official_split"):
    if (folder / TRAIN_VAL_LIST).is_file() and (folder / TEST_LIST).is_file():
      return folder / TRAIN_VAL_LIST, folder / TEST_LIST
  raise FileNotFoundError(
    f"the official split needs {TRAIN_VAL_LIST} and {TEST_LIST} in {manual_dir} or {manual_dir / 'official_split'}"
  )


def index_images(manual_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Image name -> path for the PNGs in `manual_dir/images*/` and `manual_dir/images*/images/`."""
  manual_dir = pathlib.Path(manual_dir)
  folders = sorted(p for p in manual_dir.glob("images*") if p.is_dir())
  if not folders:
    raise FileNotFoundError(f"no images*/ folder in {manual_dir} (expected images/ or images_001/ ...)")
  found = {}
  for folder in folders:
    for directory in (folder, folder / "images"):
      if not directory.is_dir():
        continue
      with os.scandir(directory) as entries:
        for entry in entries:
          if entry.name.lower().endswith(".png") and entry.is_file():
            if entry.name in found:
              raise ChestXray14FormatError(
                f"image {entry.name} is in two folders: {found[entry.name]} and {entry.path}"
              )
            found[entry.name] = pathlib.Path(entry.path)
  return found


@dataclasses.dataclass
class ParseReport:
  """What `load_records` read, kept and skipped, with up to 5 example ids per reason."""

  label_file: str
  num_rows: int = 0
  num_records: int = 0
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, example: str) -> None:
    self.skipped[reason] = self.skipped.get(reason, 0) + 1
    examples = self.examples.setdefault(reason, [])
    if len(examples) < _MAX_EXAMPLES:
      examples.append(example)

  def summary(self) -> str:
    lines = [f"ChestX-ray14 ({self.label_file}): {self.num_rows} rows, {self.num_records} records"]
    for reason, count in sorted(self.skipped.items()):
      lines.append(f"  skipped {reason}: {count}, e.g. {', '.join(self.examples[reason])}")
    return "\n".join(lines)


def to_record(entry: LabelEntry, image_path: str | os.PathLike, include_no_finding: bool = False) -> dict[str, Any]:
  """One LabelEntry and its image file -> a record (the schema in the module docstring)."""
  return {
    "id": entry.image_index,
    "images": [str(image_path)],
    "image_ids": [entry.image_index],
    "labels": labels_vector(entry.findings, include_no_finding),
    "finding_labels": list(entry.findings) or [NO_FINDING],
    "patient_id": entry.patient_id,
    "follow_up": entry.follow_up,
    "age": entry.age,
    "gender": entry.gender,
    "view_position": entry.view_position,
  }


def load_records(
  manual_dir: str | os.PathLike,
  *,
  include_no_finding: bool = False,
  missing_images: str = "error",
  label_file: str | os.PathLike | None = None,
) -> tuple[list[dict[str, Any]], ParseReport]:
  """Parses the ChestX-ray14 layout in `manual_dir` into records, in label-file order.

  Args:
    manual_dir: the folder with the label file and images*/ (module docstring).
    include_no_finding: 15 classes (the 14 findings + "No Finding") instead of 14.
    missing_images: "error" (default) or "skip" (count and skip rows without an image file).
    label_file: the label file; found in `manual_dir` when None.

  Returns:
    (records, report).
  """
  if missing_images not in MISSING_IMAGE_POLICIES:
    raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {missing_images!r}")
  label_path = pathlib.Path(label_file) if label_file is not None else find_label_file(manual_dir)
  return records_from_entries(
    read_label_file(label_path),
    manual_dir,
    label_path,
    include_no_finding=include_no_finding,
    missing_images=missing_images,
  )


def records_from_entries(
  entries: Sequence[LabelEntry],
  manual_dir: str | os.PathLike,
  label_path: str | os.PathLike,
  *,
  include_no_finding: bool = False,
  missing_images: str = "error",
) -> tuple[list[dict[str, Any]], ParseReport]:
  """`load_records` for entries already read from `label_path` (named in messages)."""
  if missing_images not in MISSING_IMAGE_POLICIES:
    raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {missing_images!r}")
  paths = index_images(manual_dir)
  report = ParseReport(label_file=str(label_path), num_rows=len(entries))
  missing = [entry for entry in entries if entry.image_index not in paths]
  if missing and missing_images == "error":
    examples = ", ".join(f"{e.image_index} (line {e.line})" for e in missing[:_MAX_EXAMPLES])
    raise FileNotFoundError(
      f"{label_path}: {len(missing)} of {len(entries)} listed images are not under "
      f"{manual_dir}/images*/, e.g. {examples}; pass missing_images='skip' to skip them (counted)"
    )
  records = []
  for entry in entries:
    if entry.image_index not in paths:
      report.skip("missing_image", entry.image_index)
      continue
    records.append(to_record(entry, paths[entry.image_index], include_no_finding))
  report.num_records = len(records)
  return records, report


def _check_unique_images(entries: Sequence[LabelEntry]) -> None:
  seen = set()
  for entry in entries:
    if entry.image_index in seen:
      raise ValueError(f"image {entry.image_index} is given twice")
    seen.add(entry.image_index)


def patient_split(
  entries: Sequence[LabelEntry], fractions: Mapping[str, float] | None = None, seed: int = SPLIT_SEED
) -> dict[str, list[str]]:
  """A seeded patient-level split (default 70/10/20 train/val/test) -> image ids per split.

  The patients are split by `splits.random_split` (fractions of patients, not of images);
  every image goes where its patient goes.
  """
  _check_unique_images(entries)
  by_patient: dict[str, list[str]] = {}
  for entry in entries:
    by_patient.setdefault(entry.patient_id, []).append(entry.image_index)
  patient_splits = split_lib.random_split(by_patient, fractions or RANDOM_FRACTIONS, seed=seed)
  return {
    name: sorted(image for patient in patients for image in by_patient[patient])
    for name, patients in patient_splits.items()
  }


def official_split(
  entries: Sequence[LabelEntry],
  train_val: Sequence[str],
  test: Sequence[str],
  val_fraction: float = OFFICIAL_VAL_FRACTION,
  seed: int = SPLIT_SEED,
  list_names: tuple[str, str] = (TRAIN_VAL_LIST, TEST_LIST),
) -> dict[str, list[str]]:
  """The official train_val / test split with a seeded patient-level validation carve-out.

  Args:
    entries: the label file's rows; images of the lists that are not among them are left out,
      and entries in neither list are in no split (the caller counts both).
    train_val, test: the official lists' image names.
    val_fraction: fraction of the train_val patients that form "val".
    seed: seed of the carve-out.
    list_names: the lists' file names, for messages.

  Returns:
    {"train", "val", "test"} -> sorted image ids.

  Raises:
    ChestXray14FormatError: an image in both lists, or a patient with images in both.
  """
  _check_unique_images(entries)
  test_set = set(test)
  both = sorted(set(train_val) & test_set)
  if both:
    raise ChestXray14FormatError(
      f"{len(both)} images are in both {list_names[0]} and {list_names[1]}, e.g. {both[:_MAX_EXAMPLES]}"
    )
  train_val_set = set(train_val)
  patients_of = {"train_val": {}, "test": {}}
  for entry in entries:
    part = "test" if entry.image_index in test_set else "train_val" if entry.image_index in train_val_set else None
    if part:
      patients_of[part].setdefault(entry.patient_id, []).append(entry.image_index)
  shared = sorted(set(patients_of["train_val"]) & set(patients_of["test"]), key=int)
  if shared:
    raise ChestXray14FormatError(
      f"{len(shared)} patients have images in both {list_names[0]} and {list_names[1]}, e.g. "
      f"patient {shared[0]}: {patients_of['train_val'][shared[0]][:2]} and {patients_of['test'][shared[0]][:2]}"
    )
  carve = split_lib.random_split(
    patients_of["train_val"], {"train": 1.0 - val_fraction, "val": val_fraction}, seed=seed
  )
  images_of = patients_of["train_val"]
  return {
    "train": sorted(image for patient in carve["train"] for image in images_of[patient]),
    "val": sorted(image for patient in carve["val"] for image in images_of[patient]),
    "test": sorted(image for images in patients_of["test"].values() for image in images),
  }


def find_chexnet_lists(manual_dir: str | os.PathLike) -> dict[str, pathlib.Path]:
  """Split name -> the CheXNet list (train_list.txt ...), in `manual_dir/chexnet_split/` or `manual_dir/labels/`."""
  manual_dir = pathlib.Path(manual_dir)
  for folder in (manual_dir / name for name in CHEXNET_LIST_FOLDERS):
    if all((folder / name).is_file() for name in CHEXNET_LISTS.values()):
      return {split: folder / name for split, name in CHEXNET_LISTS.items()}
  raise FileNotFoundError(
    f"the chexnet split needs {', '.join(CHEXNET_LISTS.values())} in one of "
    f"{', '.join(str(manual_dir / name) for name in CHEXNET_LIST_FOLDERS)}"
  )


@dataclasses.dataclass(frozen=True)
class ListedImage:
  """One line of a labelled list (CheXNet's format): the image, its 14 labels in FINDINGS order, the line."""

  image_index: str
  labels: tuple[int, ...]
  line: int


def read_labelled_list(path: str | os.PathLike) -> list[ListedImage]:
  """Parses a CheXNet list: `name l1 ... l14` per line (whitespace-separated, labels 0/1); blank lines ignored.

  Raises:
    FileNotFoundError: no such file.
    ChestXray14FormatError: a line without 15 fields, a label other than 0 / 1, a repeated image (file, line).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: image list not found")
  listed, seen = [], {}
  try:
    with _open_text(path) as handle:
      for line, text in enumerate(handle, start=1):
        fields = text.split()
        if not fields:
          continue
        if len(fields) != 1 + len(FINDINGS):
          raise ChestXray14FormatError(
            f"{path}: line {line}: expected an image name and {len(FINDINGS)} labels "
            f"({1 + len(FINDINGS)} fields), got {len(fields)}: {text.strip()[:80]!r}"
          )
        name, values = fields[0], fields[1:]
        for finding, value in zip(FINDINGS, values):
          if value not in ("0", "1"):
            raise ChestXray14FormatError(
              f"{path}: line {line}: label {value!r} for {finding} of {name}, expected 0 or 1"
            )
        if name in seen:
          raise ChestXray14FormatError(f"{path}: line {line}: {name} repeats line {seen[name]}")
        seen[name] = line
        listed.append(ListedImage(name, tuple(int(v) for v in values), line))
  except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, zlib.error) as error:
    raise ChestXray14FormatError(f"{path}: cannot be read as a text file ({error})") from error
  return listed


def _findings_text(labels: Sequence[int]) -> str:
  return "|".join(f for f, v in zip(FINDINGS, labels) if v) or NO_FINDING


def _unlisted(entries: Sequence[LabelEntry], listed: set[str]) -> dict[str, Any]:
  """The label file's rows in no list: a count and examples (for the summary)."""
  unlisted = [e.image_index for e in entries if e.image_index not in listed]
  return {"unlisted": len(unlisted), "unlisted_examples": unlisted[:_MAX_EXAMPLES]}


def chexnet_split(
  entries: Sequence[LabelEntry],
  lists: Mapping[str, Sequence[ListedImage]],
  list_paths: Mapping[str, str | os.PathLike],
  label_path: str | os.PathLike = "the label file",
) -> tuple[dict[str, list[str]], dict[str, Any]]:
  """The CheXNet lists as a split, checked against the label file.

  Args:
    entries: the label file's rows.
    lists: "train" / "val" / "test" -> the parsed list (read_labelled_list).
    list_paths: the same keys -> the list files, for messages.
    label_path: the label file, for messages.

  Returns:
    (split, summary): split name -> sorted image ids; summary {"lists", "list_images", "unlisted",
    "unlisted_examples", "label_disagreements", "label_disagreement_examples", "disagreements_by_finding"}.

  Raises:
    ChestXray14FormatError: an image not in the label file, in two lists, or a patient in two lists (names the
      list file and line).
  """
  _check_unique_images(entries)
  by_image = {entry.image_index: entry for entry in entries}
  where: dict[str, tuple[str, int]] = {}  # image -> (split, line)
  patient_split_of: dict[str, tuple[str, str, int]] = {}  # patient -> (split, image, line)
  disagreements, examples, by_finding = 0, [], {}
  for split, listed in lists.items():
    path = list_paths[split]
    for item in listed:
      entry = by_image.get(item.image_index)
      if entry is None:
        raise ChestXray14FormatError(f"{path}: line {item.line}: image {item.image_index} is not in {label_path}")
      if item.image_index in where:
        other, other_line = where[item.image_index]
        raise ChestXray14FormatError(
          f"{path}: line {item.line}: image {item.image_index} is also in {list_paths[other]} (line {other_line})"
        )
      where[item.image_index] = (split, item.line)
      previous = patient_split_of.setdefault(entry.patient_id, (split, item.image_index, item.line))
      if previous[0] != split:
        raise ChestXray14FormatError(
          f"{path}: line {item.line}: patient {entry.patient_id} ({item.image_index}) is also in "
          f"{list_paths[previous[0]]} ({previous[1]}, line {previous[2]}): the lists must be patient-disjoint"
        )
      expected = labels_vector(entry.findings).astype(int)
      if tuple(expected) != item.labels:
        disagreements += 1
        for finding, listed_value, file_value in zip(FINDINGS, item.labels, expected):
          if listed_value != file_value:
            key = f"{finding}: list {listed_value}, label file {file_value}"
            by_finding[key] = by_finding.get(key, 0) + 1
        if len(examples) < _MAX_EXAMPLES:
          examples.append(
            f"{item.image_index} ({pathlib.Path(path).name} line {item.line}: list "
            f"{_findings_text(item.labels)}, label file {_findings_text(expected)})"
          )
  split_ids = {split: sorted(item.image_index for item in lists.get(split, ())) for split in SPLIT_NAMES}
  summary = {
    "lists": {split: str(list_paths[split]) for split in lists},
    "list_images": {split: len(listed) for split, listed in lists.items()},
    **_unlisted(entries, set(where)),
    "label_disagreements": disagreements,
    "label_disagreement_examples": examples,
    "disagreements_by_finding": dict(sorted(by_finding.items(), key=lambda kv: (-kv[1], kv[0]))),
  }
  return split_ids, summary


def split_with_summary(
  manual_dir: str | os.PathLike,
  entries: Sequence[LabelEntry],
  scheme: str,
  seed: int = SPLIT_SEED,
  label_path: str | os.PathLike = "the label file",
) -> tuple[dict[str, list[str]], dict[str, Any]]:
  """The split of `scheme` over `entries` and what its lists held: (split name -> image ids, summary).

  The summary always has "unlisted" (label-file rows in no split) and "unlisted_examples"; the list schemes
  add "lists" and "list_images"; "chexnet" adds the label disagreements (chexnet_split).
  """
  if scheme == "official":
    train_val_path, test_path = find_official_lists(manual_dir)
    train_val, test = read_image_list(train_val_path), read_image_list(test_path)
    split = official_split(entries, train_val, test, seed=seed, list_names=(str(train_val_path), str(test_path)))
    known = {entry.image_index for entry in entries}
    summary = {
      "lists": {"train_val": str(train_val_path), "test": str(test_path)},
      "list_images": {"train_val": len(train_val), "test": len(test)},
      # Official names absent from the label file are left out (official_split); counted here.
      "listed_not_in_label_file": sum(name not in known for name in (*train_val, *test)),
    }
  elif scheme == "random":
    split, summary = patient_split(entries, seed=seed), {}
  elif scheme == "chexnet":
    paths = find_chexnet_lists(manual_dir)
    return chexnet_split(entries, {name: read_labelled_list(path) for name, path in paths.items()}, paths, label_path)
  else:
    raise ValueError(f"unknown ChestX-ray14 split {scheme!r}; expected one of {SPLIT_SCHEMES}")
  summary.update(_unlisted(entries, {image for ids in split.values() for image in ids}))
  return split, summary


def split_image_ids(
  manual_dir: str | os.PathLike, entries: Sequence[LabelEntry], scheme: str, seed: int = SPLIT_SEED
) -> dict[str, list[str]]:
  """The split of `scheme` ("official", "random" or "chexnet") over `entries`: split name -> image ids."""
  return split_with_summary(manual_dir, entries, scheme, seed)[0]
