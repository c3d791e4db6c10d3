"""IU X-ray (Indiana University chest X-rays, Open-i): study records from its public layouts.

`load_studies(manual_dir)` detects the layout in `manual_dir` (or takes `layout=`):
  "openi":  NLMCXR_reports.tgz (or its extracted ecgen-radiology/*.xml) with the Open-i
            PNGs (CXR54_IM-2145-1001.png) in NLMCXR_png/ or images/, or NLMCXR_png.tgz
            (extracted once to `extract_dir`).
  "kaggle": indiana_reports.csv, indiana_projections.csv and images_normalized/
            (1_IM-0001-4001.dcm.png), also found under images/images_normalized/.
  "r2gen":  R2Gen's annotation.json and images/ (CXR2384_IM-0942/0.png).
Records follow the study schema of CONVENTIONS.md, plus "mesh_automatic" (the XML's
automatic MeSH terms, [] in the other layouts). Study ids are "CXR<n>" in all layouts.

Views. The DICOM metadata (nlmcxr_dicom_metadata.csv.gz) is not used: "View Position"
is empty for 2,586 of 7,469 images and says "PA" for 1,342 images that are lateral by
the Kaggle projection labels (one device writes "PA" on every image), and for the
1,254 images with neither a View Position nor a processing code no header field
separates the views (the series number comes closest, 13% wrong). The Kaggle labels
agree with the explicit DICOM lateral codes (LL, RL, LATERAL) on 866 of 867 images.
Views come from `indiana_projections.csv` (view
source "projections"; it labels 7,466 of the 7,470 Open-i images), found in
`manual_dir` or `manual_dir/kaggle_csv/`, or given. Without a label for both picked
images the rule "id_order" applies: the first image by id is taken as frontal and
the second as lateral (right for 89% of two-image studies by the Kaggle labels; a
single image is taken as frontal). R2Gen's files carry no view label: 0.png is taken
as frontal and 1.png as lateral ("r2gen_position"), an assumption; R2Gen itself
treats the two images alike.

Two images per study (`select_two_views`), image ids in sorted order: the first frontal
and the first lateral; when the labels show only one kind, the first two images; a
single image is repeated.

Issues are counted in a `ParseReport`, never dropped silently:
  "no_images": the report lists no image (always skipped);
  "images_not_found": none of the study's images is on disk (always skipped);
  "missing_image": some of its images are missing on disk: skipped, or with
      `keep_partial_images=True` the two views are picked among the present ones
      (CXR25 then keeps its frontal, repeated);
  "empty_report": the report sections (findings by default) are empty: skipped
      unless `keep_empty_reports=True`;
  "images_without_report" (Kaggle only): image rows whose uid has no report (counts
      image rows, not studies);
  "spreadsheet_error" (Kaggle only): a section holding an Excel error such as
      "#NAME?" (3 indications in the public CSV) is emptied; the study is kept.
A malformed file (XML, CSV, JSON) raises `IUXrayFormatError` naming the file.

TFDS. `IuXray` is the TFDS builder "iu_xray" (array_record, built and read without
TensorFlow), with two configs that differ only in the split:
  "iu_xray/random": the seeded 70/10/20 study split (`splits.random_split`, seed 0);
  "iu_xray/r2gen":  R2Gen's split from annotation.json (2,069/296/590 studies).
Build with `cxrjax prepare iu_xray` (cxrjax/data/prepare.py); read with `IUXraySource`.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import io
import json
import os
import pathlib
import re
import shutil
import tarfile
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds
import tqdm

from cxrjax.data import images as image_lib
from cxrjax.data import splits as split_lib

LAYOUTS = ("openi", "kaggle", "r2gen")
SECTIONS = ("findings", "impression", "indication", "comparison")
AUTO = "auto"
FRONTAL, LATERAL = "frontal", "lateral"
R2GEN_SPLITS = ("train", "val", "test")

_PathLike = str | os.PathLike
_MAX_EXAMPLES = 5
_KAGGLE_REPORT_COLUMNS = ("uid", "MeSH", "indication", "comparison", "findings", "impression")
_KAGGLE_PROJECTION_COLUMNS = ("uid", "filename", "projection")
_KAGGLE_SUFFIX = ".dcm.png"
# Excel replaced three indications starting with "+" or "-" ("+PPD. ...") by "#NAME?".
_SPREADSHEET_ERRORS = ("#NAME?", "#VALUE!", "#REF!")
# Open-i image ids: "CXR54_IM-2145-1001"; study 1 alone is "CXR1_1_IM-0001-3001".
_OPENI_IMAGE_ID = re.compile(r"CXR(\d+)(?:_\d+)?_(IM-.+)")


class IUXrayFormatError(ValueError):
  """A source file of IU X-ray that cannot be parsed; the message names the file."""


@dataclasses.dataclass
class ParseReport:
  """What `load_studies` read, kept and skipped, with up to 5 example ids per issue."""

  layout: str
  source: str
  num_studies: int = 0
  num_records: int = 0
  issues: dict[str, int] = dataclasses.field(default_factory=dict)  # kept or skipped
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # by first skip reason
  examples: dict[str, list[str]] = dataclasses.field(default_factory=dict)
  view_sources: dict[str, int] = dataclasses.field(default_factory=dict)  # kept studies

  def add_issue(self, reason: str, example: str) -> None:
    self.issues[reason] = self.issues.get(reason, 0) + 1
    examples = self.examples.setdefault(reason, [])
    if len(examples) < _MAX_EXAMPLES:
      examples.append(example)

  def summary(self) -> str:
    lines = [f"IU X-ray ({self.layout}, {self.source}): {self.num_studies} studies, "
             f"{self.num_records} records"]
    for reason, count in sorted(self.issues.items()):
      lines.append(f"  {reason}: {count} (skipped {self.skipped.get(reason, 0)}), "
                   f"e.g. {', '.join(self.examples.get(reason, []))}")
    lines.append(f"  view sources: {dict(sorted(self.view_sources.items()))}")
    return "\n".join(lines)


@dataclasses.dataclass
class _Study:
  """One study as read from a layout, before image checks and view selection."""

  uid: str
  sections: dict[str, str]
  mesh: list[str]
  mesh_automatic: list[str]
  image_paths: dict[str, pathlib.Path]  # image id -> file
  views: dict[str, str]  # image id -> "frontal" / "lateral", where labelled
  label_source: str  # the view source when the labels decide


def detect_layout(manual_dir: str | os.PathLike) -> str:
  """Returns "openi", "kaggle" or "r2gen" from the files at the top of `manual_dir`."""
  manual_dir = pathlib.Path(manual_dir)
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"IU X-ray folder not found: {manual_dir}")
  found = []
  if (manual_dir / "NLMCXR_reports.tgz").is_file() or (manual_dir / "ecgen-radiology").is_dir():
    found.append("openi")
  if (manual_dir / "indiana_reports.csv").is_file():
    found.append("kaggle")
  if (manual_dir / "annotation.json").is_file():
    found.append("r2gen")
  if not found:
    raise FileNotFoundError(
        f"no IU X-ray layout found in {manual_dir}: looked for NLMCXR_reports.tgz or "
        "ecgen-radiology/ (Open-i), indiana_reports.csv (Kaggle), annotation.json (R2Gen)")
  if len(found) > 1:
    raise ValueError(f"several IU X-ray layouts in {manual_dir} ({', '.join(found)}): "
                     "pass layout= to choose one")
  return found[0]


def load_studies(
    manual_dir: str | os.PathLike,
    *,
    layout: str | None = None,
    image_dir: str | os.PathLike | None = None,
    projections_csv: str | os.PathLike | None = AUTO,
    extract_dir: str | os.PathLike | None = None,
    report_sections: Sequence[str] = ("findings",),
    keep_empty_reports: bool = False,
    keep_partial_images: bool = False,
    check_images: bool = True,
) -> tuple[list[dict[str, Any]], ParseReport]:
  """Parses IU X-ray in `manual_dir` into study records, sorted by study number.

  Args:
    manual_dir: folder holding one layout (see the module docstring).
    layout: "openi", "kaggle" or "r2gen"; detected when None.
    image_dir: image folder (or NLMCXR_png.tgz for "openi"); the layout's default
      place under `manual_dir` when None.
    projections_csv: view labels for "openi" (indiana_projections.csv); AUTO looks in
      `manual_dir` and `manual_dir/kaggle_csv`; None uses the "id_order" rule only.
    extract_dir: where NLMCXR_png.tgz is extracted (default `manual_dir/NLMCXR_png`).
    report_sections: sections joined (by a space) into "report".
    keep_empty_reports: keep studies whose report is empty instead of skipping them.
    keep_partial_images: keep studies with some images missing on disk.
    check_images: check that image files exist (False: parse reports only).

  Returns:
    (records, report): the study records and the counts of what was skipped and why.
  """
  manual_dir = pathlib.Path(manual_dir)
  layout = layout or detect_layout(manual_dir)
  unknown_sections = set(report_sections) - {"findings", "impression"}
  if unknown_sections or not report_sections:
    raise ValueError(f"report_sections must be drawn from ('findings', 'impression'), "
                     f"got {tuple(report_sections)}")
  report = ParseReport(layout=layout, source=str(manual_dir))
  if layout == "openi":
    studies = _read_openi(manual_dir, image_dir, projections_csv, extract_dir, check_images, report)
  elif layout == "kaggle":
    studies = _read_kaggle(manual_dir, image_dir, check_images, report)
  elif layout == "r2gen":
    studies = _read_r2gen_layout(manual_dir, image_dir, check_images)
  else:
    raise ValueError(f"unknown IU X-ray layout {layout!r}; expected one of {LAYOUTS}")

  records = []
  for study in sorted(studies, key=lambda s: _study_number(s.uid)):
    record = _to_record(study, report_sections, keep_empty_reports, keep_partial_images,
                        check_images, report)
    if record is not None:
      records.append(record)
  report.num_studies = len(studies)
  report.num_records = len(records)
  return records, report


def select_two_views(image_ids: Sequence[str], views: Mapping[str, str]
                     ) -> tuple[list[str], list[str], bool]:
  """Picks the two view images of a study.

  Args:
    image_ids: the study's image ids (at least one).
    views: image id -> "frontal" / "lateral" for the labelled ones.

  Returns:
    (ids, views, labelled): two ids and their views; `labelled` is False when the
    "id_order" rule decided (first image frontal, second lateral).
  """
  if not image_ids:
    raise ValueError("a study needs at least one image")
  ordered = sorted(image_ids)
  frontals = [i for i in ordered if views.get(i) == FRONTAL]
  laterals = [i for i in ordered if views.get(i) == LATERAL]
  if frontals and laterals:
    chosen = [frontals[0], laterals[0]]
    return chosen, [FRONTAL, LATERAL], True
  chosen = (ordered * 2)[:2]  # the single image repeated
  if all(i in views for i in chosen):
    return chosen, [views[i] for i in chosen], True
  return chosen, [FRONTAL, FRONTAL] if len(ordered) == 1 else [FRONTAL, LATERAL], False


def r2gen_split(annotation_json: str | os.PathLike) -> dict[str, list[str]]:
  """R2Gen's split from its annotation.json: {"train", "val", "test"} -> study ids ("CXR2384")."""
  entries = _read_annotation(pathlib.Path(annotation_json))
  split = {name: [] for name in R2GEN_SPLITS}
  for split_name, entry in entries:
    split[split_name].append(_r2gen_study_uid(entry["id"], annotation_json))
  return split


def _to_record(study: _Study, report_sections: Sequence[str], keep_empty_reports: bool,
               keep_partial_images: bool, check_images: bool,
               report: ParseReport) -> dict[str, Any] | None:
  """Applies the image checks and view selection; None when the study is skipped."""
  listed = list(study.image_paths)
  present = [i for i in listed if study.image_paths[i].is_file()] if check_images else listed
  text = " ".join(study.sections[s] for s in report_sections if study.sections[s])
  skip_reasons = []
  if not listed:
    report.add_issue("no_images", study.uid)
    skip_reasons.append("no_images")
  elif not present:
    report.add_issue("images_not_found", study.uid)
    skip_reasons.append("images_not_found")
  elif len(present) < len(listed):
    report.add_issue("missing_image", study.uid)
    if not keep_partial_images:
      skip_reasons.append("missing_image")
  if not text:
    report.add_issue("empty_report", study.uid)
    if not keep_empty_reports:
      skip_reasons.append("empty_report")
  if skip_reasons:
    report.skipped[skip_reasons[0]] = report.skipped.get(skip_reasons[0], 0) + 1
    return None

  image_ids, views, labelled = select_two_views(present, study.views)
  view_source = study.label_source if labelled else "id_order"
  report.view_sources[view_source] = report.view_sources.get(view_source, 0) + 1
  return {
      "id": study.uid,
      "images": [str(study.image_paths[i]) for i in image_ids],
      "image_ids": image_ids,
      "views": views,
      **{section: study.sections[section] for section in SECTIONS},
      "mesh": study.mesh,
      "mesh_automatic": study.mesh_automatic,
      "report": text,
  }


# Open-i layout.


def _read_openi(manual_dir: pathlib.Path, image_dir: _PathLike | None,
                projections_csv: _PathLike | None, extract_dir: _PathLike | None,
                check_images: bool, report: ParseReport) -> list[_Study]:
  reports_source = manual_dir / "NLMCXR_reports.tgz"
  if not reports_source.is_file():
    reports_source = manual_dir / "ecgen-radiology"
    if not reports_source.is_dir():
      raise FileNotFoundError(f"{manual_dir}: neither NLMCXR_reports.tgz nor ecgen-radiology/ found")
  report.source = str(reports_source)
  image_folder = _openi_image_folder(manual_dir, image_dir, extract_dir, check_images)
  views = {}
  if projections_csv == AUTO:
    projections_csv = next((p for p in (manual_dir / "indiana_projections.csv",
                                        manual_dir / "kaggle_csv" / "indiana_projections.csv")
                            if p.is_file()), None)
  if projections_csv is not None:
    views = _read_projections(pathlib.Path(projections_csv))
  studies, seen = [], {}
  for source, data in _iter_openi_xml(reports_source):
    study = _parse_openi_xml(data, source, image_folder)
    if study.uid in seen:
      raise IUXrayFormatError(f"{source}: study {study.uid} already read from {seen[study.uid]}")
    seen[study.uid] = source
    study.views = {i: views[_image_key(i)] for i in study.image_paths if _image_key(i) in views}
    studies.append(study)
  return studies


def _openi_image_folder(manual_dir: pathlib.Path, image_dir: _PathLike | None,
                        extract_dir: _PathLike | None, check_images: bool) -> pathlib.Path:
  """The folder of Open-i PNGs; extracts NLMCXR_png.tgz when that is what there is."""
  extract_dir = pathlib.Path(extract_dir) if extract_dir else manual_dir / "NLMCXR_png"
  if image_dir is not None:
    image_dir = pathlib.Path(image_dir)
    if image_dir.is_file() and image_dir.name.endswith((".tgz", ".tar.gz", ".tar")):
      return _extract_pngs(image_dir, extract_dir)
    if check_images and not image_dir.is_dir():
      raise FileNotFoundError(f"IU X-ray image folder not found: {image_dir}")
    return image_dir
  for folder in (manual_dir / "NLMCXR_png", manual_dir / "images"):
    if folder.is_dir():
      return folder
  if (manual_dir / "NLMCXR_png.tgz").is_file():
    return _extract_pngs(manual_dir / "NLMCXR_png.tgz", extract_dir)
  if check_images:
    raise FileNotFoundError(
        f"no Open-i images in {manual_dir}: looked for NLMCXR_png/, images/ and NLMCXR_png.tgz "
        "(or pass image_dir=, or check_images=False)")
  return manual_dir / "NLMCXR_png"


def _extract_pngs(tgz: pathlib.Path, dest: pathlib.Path) -> pathlib.Path:
  """Extracts the PNGs of `tgz` flat into `dest` once (via a .partial folder)."""
  if dest.is_dir():
    return dest
  partial = dest.with_name(dest.name + ".partial")
  shutil.rmtree(partial, ignore_errors=True)
  partial.mkdir(parents=True)
  try:
    with tarfile.open(tgz, "r:*") as tar:
      for member in tar:
        if member.isfile() and member.name.lower().endswith(".png"):
          # Written by base name only, so no member can escape `dest`.
          with tar.extractfile(member) as src, open(partial / os.path.basename(member.name), "wb") as dst:
            shutil.copyfileobj(src, dst)
  except (tarfile.TarError, EOFError, OSError) as e:
    raise IUXrayFormatError(f"{tgz}: cannot extract the images ({e})") from e
  partial.rename(dest)
  return dest


def _iter_openi_xml(source: pathlib.Path) -> Iterator[tuple[str, bytes]]:
  """Yields (name, bytes) of each report XML, in archive order (gzip cannot seek back)."""
  if source.is_dir():
    for path in sorted(source.glob("*.xml")):
      yield str(path), path.read_bytes()
    return
  try:
    with tarfile.open(source, "r:*") as tar:
      for member in tar:
        if member.isfile() and member.name.endswith(".xml"):
          yield f"{source}:{member.name}", tar.extractfile(member).read()
  except (tarfile.TarError, EOFError) as e:
    raise IUXrayFormatError(f"{source}: not a readable tar archive ({e})") from e


def _parse_openi_xml(data: bytes, source: str, image_folder: pathlib.Path) -> _Study:
  try:
    root = ET.fromstring(data)
  except ET.ParseError as e:
    raise IUXrayFormatError(f"{source}: malformed XML ({e})") from e
  uid_element = root.find("uId")
  uid = uid_element.get("id") if uid_element is not None else None
  if not uid:
    raise IUXrayFormatError(f"{source}: no <uId id=...> element")
  sections = dict.fromkeys(SECTIONS, "")
  for element in root.iter("AbstractText"):
    label = (element.get("Label") or "").lower()
    if label in sections:
      sections[label] = "".join(element.itertext()).strip()
  image_ids = []
  for element in root.iter("parentImage"):
    if not element.get("id"):
      raise IUXrayFormatError(f"{source}: <parentImage> without an id")
    image_ids.append(element.get("id"))
  return _Study(
      uid=uid, sections=sections,
      mesh=[e.text.strip() for e in root.findall("MeSH/major") if e.text and e.text.strip()],
      mesh_automatic=[e.text.strip() for e in root.findall("MeSH/automatic")
                      if e.text and e.text.strip()],
      image_paths={i: image_folder / f"{i}.png" for i in image_ids}, views={},
      label_source="projections")


def _image_key(image_id: str) -> str | None:
  """Open-i image id -> the Kaggle file stem ("CXR1_1_IM-0001-3001" -> "1_IM-0001-3001")."""
  match = _OPENI_IMAGE_ID.fullmatch(image_id)
  return f"{match[1]}_{match[2]}" if match else None


def _read_projections(path: pathlib.Path) -> dict[str, str]:
  """indiana_projections.csv -> {"1_IM-0001-4001": "frontal", ...}."""
  views = {}
  for line, row in _read_csv(path, _KAGGLE_PROJECTION_COLUMNS):
    view = row["projection"].strip().lower()
    if view not in (FRONTAL, LATERAL):
      raise IUXrayFormatError(f"{path}:{line}: projection {row['projection']!r} is not "
                              "Frontal or Lateral")
    views[_kaggle_stem(row["filename"], path, line)] = view
  return views


# Kaggle layout.


def _read_kaggle(manual_dir: pathlib.Path, image_dir: _PathLike | None, check_images: bool,
                 report: ParseReport) -> list[_Study]:
  reports_csv = manual_dir / "indiana_reports.csv"
  projections_csv = manual_dir / "indiana_projections.csv"
  if not projections_csv.is_file():
    raise FileNotFoundError(f"{projections_csv} not found (the Kaggle layout needs it beside "
                            "indiana_reports.csv)")
  report.source = str(reports_csv)
  if image_dir is None:
    candidates = (manual_dir / "images_normalized", manual_dir / "images" / "images_normalized")
    image_dir = next((c for c in candidates if c.is_dir()), None)
    if image_dir is None:
      if check_images:
        raise FileNotFoundError(f"no Kaggle images in {manual_dir}: looked for images_normalized/ "
                                "and images/images_normalized/ (or pass image_dir=, or "
                                "check_images=False)")
      image_dir = candidates[0]
  image_dir = pathlib.Path(image_dir)
  if check_images and not image_dir.is_dir():
    raise FileNotFoundError(f"IU X-ray image folder not found: {image_dir}")

  studies = {}
  for line, row in _read_csv(reports_csv, _KAGGLE_REPORT_COLUMNS):
    uid = f"CXR{row['uid'].strip()}"
    if uid in studies:
      raise IUXrayFormatError(f"{reports_csv}:{line}: uid {row['uid']} appears twice")
    sections = {s: (row[s] or "").strip() for s in SECTIONS}
    for section, value in sections.items():
      if value in _SPREADSHEET_ERRORS:
        report.add_issue("spreadsheet_error", uid)
        sections[section] = ""
    studies[uid] = _Study(
        uid=uid, sections=sections,
        mesh=[t.strip() for t in (row["MeSH"] or "").split(";") if t.strip()],
        mesh_automatic=[], image_paths={}, views={}, label_source="projections")
  for line, row in _read_csv(projections_csv, _KAGGLE_PROJECTION_COLUMNS):
    uid = f"CXR{row['uid'].strip()}"
    filename = row["filename"].strip()
    if uid not in studies:
      report.add_issue("images_without_report", filename)
      continue
    image_id = f"CXR{_kaggle_stem(filename, projections_csv, line)}"
    view = row["projection"].strip().lower()
    if view not in (FRONTAL, LATERAL):
      raise IUXrayFormatError(f"{projections_csv}:{line}: projection {row['projection']!r} is "
                              "not Frontal or Lateral")
    studies[uid].image_paths[image_id] = image_dir / filename
    studies[uid].views[image_id] = view
  return list(studies.values())


def _kaggle_stem(filename: str, path: pathlib.Path, line: int) -> str:
  filename = filename.strip()
  if not filename.endswith(_KAGGLE_SUFFIX):
    raise IUXrayFormatError(f"{path}:{line}: file name {filename!r} does not end in {_KAGGLE_SUFFIX}")
  return filename[:-len(_KAGGLE_SUFFIX)]


def _read_csv(path: pathlib.Path, columns: Sequence[str]) -> Iterator[tuple[int, dict[str, str]]]:
  """Yields (line number, row) after checking the header has `columns`."""
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f)
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
      raise IUXrayFormatError(f"{path}: missing columns {missing} (header: {reader.fieldnames})")
    for row in reader:
      if None in row or any(row[c] is None for c in columns):
        raise IUXrayFormatError(f"{path}:{reader.line_num}: wrong number of fields")
      yield reader.line_num, row


# R2Gen layout.


def _read_r2gen_layout(manual_dir: pathlib.Path, image_dir: _PathLike | None,
                       check_images: bool) -> list[_Study]:
  annotation = manual_dir / "annotation.json"
  image_dir = pathlib.Path(image_dir) if image_dir is not None else manual_dir / "images"
  if check_images and not image_dir.is_dir():
    raise FileNotFoundError(f"R2Gen image folder not found: {image_dir} (or pass image_dir=, "
                            "or check_images=False)")
  studies = []
  for _, entry in _read_annotation(annotation):
    paths = {str(pathlib.PurePosixPath(p).with_suffix("")): image_dir / p
             for p in entry["image_path"]}
    studies.append(_Study(
        uid=_r2gen_study_uid(entry["id"], annotation),
        sections={"findings": entry["report"].strip(), "impression": "", "indication": "",
                  "comparison": ""},
        mesh=[], mesh_automatic=[], image_paths=paths,
        views={i: v for i, v in zip(paths, (FRONTAL, LATERAL))}, label_source="r2gen_position"))
  return studies


def _read_annotation(path: pathlib.Path) -> list[tuple[str, dict[str, Any]]]:
  """annotation.json -> [(split name, entry)], checked for shape and repeated studies."""
  if not path.is_file():
    raise FileNotFoundError(f"R2Gen annotation file not found: {path}")
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise IUXrayFormatError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(data, dict) or set(data) != set(R2GEN_SPLITS):
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise IUXrayFormatError(f"{path}: expected an object with keys {R2GEN_SPLITS}, got {keys}")
  entries, seen = [], {}
  for split_name in R2GEN_SPLITS:
    if not isinstance(data[split_name], list):
      raise IUXrayFormatError(f"{path}: {split_name!r} must be a list of entries")
    for index, entry in enumerate(data[split_name]):
      where = f"{path}: {split_name}[{index}]"
      if not (isinstance(entry, dict) and isinstance(entry.get("id"), str)
              and isinstance(entry.get("report"), str)
              and isinstance(entry.get("image_path"), list) and entry["image_path"]
              and all(isinstance(p, str) for p in entry["image_path"])):
        raise IUXrayFormatError(f"{where}: expected {{id: str, report: str, image_path: [str, ...]}}")
      uid = _r2gen_study_uid(entry["id"], path)
      if uid in seen:
        raise IUXrayFormatError(f"{where}: study {uid} already in {seen[uid]}")
      seen[uid] = f"{split_name}[{index}]"
      entries.append((split_name, entry))
  return entries


def _r2gen_study_uid(entry_id: str, path: _PathLike) -> str:
  """ "CXR2384_IM-0942" -> "CXR2384"."""
  uid = entry_id.split("_")[0]
  if not re.fullmatch(r"CXR\d+", uid):
    raise IUXrayFormatError(f"{path}: id {entry_id!r} does not start with CXR<number>_")
  return uid


def _study_number(uid: str) -> tuple[int, str]:
  digits = re.search(r"\d+", uid)
  return (int(digits[0]) if digits else -1, uid)


# TFDS builder.

TFDS_NAME = "iu_xray"
TFDS_CONFIGS = ("random", "r2gen")
TFDS_SPLITS = ("train", "validation", "test")
RANDOM_SPLIT_SEED = 0
# splits.random_split and R2Gen name the validation split "val"; TFDS "validation".
_TO_TFDS_SPLIT = {"train": "train", "val": "validation", "test": "test"}
_TEXT_FEATURES = ("id", "findings", "impression", "indication", "comparison", "report")
_TEXT_LIST_FEATURES = ("image_ids", "views", "mesh", "mesh_automatic")


class IuXray(tfds.core.GeneratorBasedBuilder):
  """IU X-ray study records as a TFDS dataset (array_record; no TensorFlow needed).

  Each example is one study record (the schema of CONVENTIONS.md, plus "mesh_automatic"),
  its two view images stored as 8-bit grayscale PNGs ([H, W, 1]). The source images
  (Open-i PNGs are RGB with three equal channels) are decoded with images.load_image and
  re-encoded as grayscale; an image whose channels differ is converted to luma (ITU-R
  601) and counted ("colour_images"). The report is the findings section; studies are
  skipped as `load_studies` documents (no image on disk, empty findings), and what was
  skipped, and why, is kept in `info.metadata["build"]`.
  """

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Study records from the Open-i, Kaggle or R2Gen layouts."}
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(
          name="random",
          description=f"Seeded random study split: 70% train, 10% validation, 20% test "
                      f"(splits.random_split, seed {RANDOM_SPLIT_SEED})."),
      tfds.core.BuilderConfig(
          name="r2gen",
          description="R2Gen's study split (Chen et al., EMNLP 2020) from its annotation.json; "
                      "kept studies outside it are counted as unassigned."),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put one of the IU X-ray layouts in the manual folder (--manual-dir):
  Open-i: NLMCXR_reports.tgz (or its extracted ecgen-radiology/) and the PNGs, as
    NLMCXR_png.tgz or extracted into NLMCXR_png/ or images/
    (https://openi.nlm.nih.gov/faq#collection); indiana_projections.csv from the
    Kaggle layout beside them (or in kaggle_csv/) labels the views.
  Kaggle: indiana_reports.csv, indiana_projections.csv and images_normalized/
    (https://www.kaggle.com/datasets/raddar/chest-xrays-indiana-university).
  R2Gen: annotation.json and images/ (https://github.com/zhjohnchan/R2Gen).
The "r2gen" config also needs R2Gen's annotation.json, in the manual folder or in its
r2gen/ subfolder.
"""

  def __init__(self, *, num_threads: int | None = None, progress: bool = False, **kwargs):
    """`num_threads` encode images in parallel (default: CPU count, at most 8);
    `progress` shows a tqdm bar per split. Other arguments go to TFDS's builder."""
    kwargs.setdefault("file_format", "array_record")
    self._num_threads = num_threads or min(8, os.cpu_count() or 1)
    self._progress = progress
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
        builder=self,
        description="Indiana University chest X-ray studies (Open-i): two views and the report.",
        features=tfds.features.FeaturesDict({
            "id": text,
            "images": tfds.features.Sequence(
                tfds.features.Image(shape=(None, None, 1), encoding_format="png"), length=2),
            "image_ids": tfds.features.Sequence(text, length=2),
            "views": tfds.features.Sequence(text, length=2),
            "findings": text,
            "impression": text,
            "indication": text,
            "comparison": text,
            "mesh": tfds.features.Sequence(text),
            "mesh_automatic": tfds.features.Sequence(text),
            "report": text,
        }),
        homepage="https://openi.nlm.nih.gov/faq#collection",
        citation="""\
@article{demner2016preparing,
  title={Preparing a collection of radiology examinations for distribution and retrieval},
  author={Demner-Fushman, Dina and Kohli, Marc D and Rosenman, Marc B and Shooshan, Sonya E
          and Rodriguez, Laritza and Antani, Sameer and Thoma, George R and McDonald, Clement J},
  journal={Journal of the American Medical Informatics Association},
  volume={23}, number={2}, pages={304--310}, year={2016}
}""",
        license="CC BY-NC-ND 4.0",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    records, parse_report = load_studies(manual_dir)
    if self.builder_config.name == "r2gen":
      split_ids = r2gen_split(_find_r2gen_annotation(manual_dir))
    else:
      split_ids = split_lib.random_split([r["id"] for r in records], seed=RANDOM_SPLIT_SEED)
    grouped = split_lib.apply_split(records, split_ids)
    unassigned = grouped.pop(split_lib.UNASSIGNED, [])
    kept = {r["id"] for r in records}
    not_kept = {_TO_TFDS_SPLIT[name]: sum(i not in kept for i in ids) for name, ids in split_ids.items()}
    by_split = {_TO_TFDS_SPLIT[name]: split_records for name, split_records in grouped.items()}
    for name in TFDS_SPLITS:
      if not by_split[name]:
        raise ValueError(f"iu_xray/{self.builder_config.name}: split {name!r} has no study "
                         f"({len(records)} studies kept from {manual_dir}); a dataset needs "
                         "studies in every split")
    # Saved with the dataset (metadata.json), so `cxrjax prepare` can report it later.
    self.info.metadata["build"] = {
        "config": self.builder_config.name,
        "parse_report": dataclasses.asdict(parse_report),
        "split_sizes": {name: len(by_split[name]) for name in TFDS_SPLITS},
        "unassigned": len(unassigned),
        "unassigned_examples": [r["id"] for r in unassigned[:_MAX_EXAMPLES]],
        "split_studies_not_kept": not_kept,
        "colour_images": 0,
        "colour_image_examples": [],
    }
    return {name: self._generate_examples(by_split[name], name) for name in TFDS_SPLITS}

  def _generate_examples(self, records: Sequence[Mapping[str, Any]], split: str):
    build = self.info.metadata["build"]
    pool = concurrent.futures.ThreadPoolExecutor(self._num_threads)
    try:
      encoded = pool.map(_encode_study_images, records)
      for record, (pngs, colour_ids) in tqdm.tqdm(
          zip(records, encoded), total=len(records), desc=f"iu_xray/{self.builder_config.name} "
          f"{split}", unit=" studies", disable=not self._progress):
        for image_id in colour_ids:
          build["colour_images"] += 1
          if len(build["colour_image_examples"]) < _MAX_EXAMPLES:
            build["colour_image_examples"].append(image_id)
        example = {key: record[key] for key in _TEXT_FEATURES + _TEXT_LIST_FEATURES}
        example["images"] = pngs
        yield record["id"], example
    finally:
      # After an error, the queued studies are dropped instead of encoded.
      pool.shutdown(wait=True, cancel_futures=True)


def _find_r2gen_annotation(manual_dir: pathlib.Path) -> pathlib.Path:
  for path in (manual_dir / "annotation.json", manual_dir / "r2gen" / "annotation.json"):
    if path.is_file():
      return path
  raise FileNotFoundError(f"the iu_xray/r2gen config needs R2Gen's annotation.json in {manual_dir} "
                          f"or {manual_dir / 'r2gen'}")


def _encode_study_images(record: Mapping[str, Any]) -> tuple[list[bytes], list[str]]:
  """The study's two images as grayscale PNG bytes, and the ids of those that had colour."""
  cache, colour_ids = {}, []
  for path, image_id in zip(record["images"], record["image_ids"]):
    if path not in cache:  # a single image repeated is encoded once
      try:
        cache[path], is_colour = _grayscale_png(path)
      except image_lib.ImageError as error:
        raise image_lib.ImageError(f"study {record['id']}: {error}") from error
      if is_colour:
        colour_ids.append(image_id)
  return [cache[path] for path in record["images"]], colour_ids


def _grayscale_png(path: str) -> tuple[bytes, bool]:
  """An image file as 8-bit grayscale PNG bytes, and whether its channels differed."""
  rgb = image_lib.load_image(path)  # uint8 [H, W, 3]; names the file when it cannot be read
  is_colour = not (np.array_equal(rgb[..., 0], rgb[..., 1])
                   and np.array_equal(rgb[..., 0], rgb[..., 2]))
  gray = Image.fromarray(rgb).convert("L") if is_colour else Image.fromarray(rgb[..., 0])
  buffer = io.BytesIO()
  gray.save(buffer, format="PNG")
  return buffer.getvalue(), is_colour


class _KeepEncoded(tfds.decode.SkipDecoding):
  """Leaves images as PNG bytes (cxrjax decodes them in images.py, in the pipeline).

  tfds 4.9.10's SkipDecoding has no NumPy path for a feature inside a Sequence
  (`decode_batch_example_np`), which the two-image Sequence needs.
  """

  def decode_batch_example_np(self, batch: np.ndarray) -> list[bytes]:
    return list(batch)


def dataset_dir(data_dir: str | os.PathLike, config: str = "random") -> pathlib.Path:
  """The folder of a prepared dataset: DATA_DIR/iu_xray/<config>/<version>."""
  if config not in TFDS_CONFIGS:
    raise ValueError(f"unknown iu_xray config {config!r}; expected one of {TFDS_CONFIGS}")
  return pathlib.Path(data_dir) / TFDS_NAME / config / str(IuXray.VERSION)


def vocabulary_path(data_dir: str | os.PathLike, config: str = "random",
                    cleaning: str = "seed001") -> pathlib.Path:
  """Where `cxrjax prepare` saves the training vocabulary: <dataset_dir>/vocabulary.<cleaning>.json."""
  return dataset_dir(data_dir, config) / f"vocabulary.{cleaning}.json"


class IUXraySource:
  """Random-access study records of one split of a prepared iu_xray dataset.

  A grain `RandomAccessDataSource`: records follow the study schema (str fields, lists
  of str) with "images" as two grayscale PNGs (bytes), decoded by the pipeline.
  """

  def __init__(self, data_dir: str | os.PathLike, config: str = "random", split: str = "train"):
    folder = dataset_dir(data_dir, config)
    if not (folder / "dataset_info.json").is_file():
      raise FileNotFoundError(
          f"iu_xray/{config} is not prepared in {data_dir} (no {folder / 'dataset_info.json'}): run "
          f"`cxrjax prepare iu_xray --manual-dir DIR --data-dir {data_dir} --split {config}`")
    builder = IuXray(config=config, data_dir=data_dir)
    if split not in builder.info.splits:
      raise ValueError(f"iu_xray/{config} has no split {split!r}; it has {sorted(builder.info.splits)}")
    self.config = config
    self.split = split
    self.metadata = dict(builder.info.metadata)
    self._source = builder.as_data_source(split=split, decoders={"images": _KeepEncoded()})

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[int(index)]
    record = {key: _to_str(example[key]) for key in _TEXT_FEATURES}
    record.update({key: [_to_str(v) for v in example[key]] for key in _TEXT_LIST_FEATURES})
    record["images"] = [bytes(png) for png in example["images"]]
    return record

  def __repr__(self) -> str:
    return f"IUXraySource(config={self.config!r}, split={self.split!r}, num_records={len(self)})"


def _to_str(value: bytes | str) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)
