"""IU X-ray's public layouts (Open-i, Kaggle, R2Gen) parsed into study records.

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
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import pathlib
import re
import shutil
import tarfile
import xml.etree.ElementTree as ET
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any
from cxrjax.core.errors import UserError

LAYOUTS = ("openi", "kaggle", "r2gen")
SECTIONS = ("findings", "impression", "indication", "comparison")
AUTO = "auto"
FRONTAL, LATERAL = "frontal", "lateral"
R2GEN_SPLITS = ("train", "val", "test")
# config.data.report_sections: the sections of a study's reference report, joined by a space. "findings" is
# R2Gen's protocol (its annotation.json reports are the findings alone); "findings_impression" is ReXrank's
# (its IU X-ray ground truth is "Findings: <findings> Impression: <impression>").
REPORT_SECTIONS = {"findings": ("findings",), "findings_impression": ("findings", "impression")}

_PathLike = str | os.PathLike
_MAX_EXAMPLES = 5
_KAGGLE_REPORT_COLUMNS = ("uid", "MeSH", "indication", "comparison", "findings", "impression")
_KAGGLE_PROJECTION_COLUMNS = ("uid", "filename", "projection")
_KAGGLE_SUFFIX = ".dcm.png"
# Excel replaced three indications starting with "+" or "-" ("+PPD. ...") by "#NAME?".
_SPREADSHEET_ERRORS = ("#NAME?", "#VALUE!", "#REF!")
# Open-i image ids: "CXR54_IM-2145-1001"; study 1 alone is "CXR1_1_IM-0001-3001".
_OPENI_IMAGE_ID = re.compile(r"CXR(\d+)(?:_\d+)?_(IM-.+)")


class IUXrayFormatError(UserError):
  """A source file of IU X-ray that cannot be parsed; the message names the file."""


@dataclasses.dataclass
class ParseReport:
  """What `load_studies` read, kept and skipped, with up to 5 example ids per issue."""

  layout: str
  source: str
  image_dir: str = ""  # where the images were looked for
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
    lines = [
      f"IU X-ray ({self.layout}, {self.source}): {self.num_studies} studies, "
      f"{self.num_records} records; images in {self.image_dir}"
    ]
    for reason, count in sorted(self.issues.items()):
      lines.append(
        f"  {reason}: {count} (skipped {self.skipped.get(reason, 0)}), e.g. {', '.join(self.examples.get(reason, []))}"
      )
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
      "ecgen-radiology/ (Open-i), indiana_reports.csv (Kaggle), annotation.json (R2Gen)"
    )
  if len(found) > 1:
    raise ValueError(f"several IU X-ray layouts in {manual_dir} ({', '.join(found)}): pass layout= to choose one")
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
    raise ValueError(f"report_sections must be drawn from ('findings', 'impression'), got {tuple(report_sections)}")
  report = ParseReport(layout=layout, source=str(manual_dir))
  if layout == "openi":
    studies = _read_openi(manual_dir, image_dir, projections_csv, extract_dir, check_images, report)
  elif layout == "kaggle":
    studies = _read_kaggle(manual_dir, image_dir, check_images, report)
  elif layout == "r2gen":
    studies = _read_r2gen_layout(manual_dir, image_dir, check_images, report)
  else:
    raise ValueError(f"unknown IU X-ray layout {layout!r}; expected one of {LAYOUTS}")

  records = []
  for study in sorted(studies, key=lambda s: _study_number(s.uid)):
    record = _to_record(study, report_sections, keep_empty_reports, keep_partial_images, check_images, report)
    if record is not None:
      records.append(record)
  report.num_studies = len(studies)
  report.num_records = len(records)
  return records, report


def select_two_views(image_ids: Sequence[str], views: Mapping[str, str]) -> tuple[list[str], list[str], bool]:
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


def r2gen_study_ids(annotation_json: str | os.PathLike) -> dict[str, str]:
  """R2Gen's id of every study in its annotation.json: {"CXR2384": "CXR2384_IM-0942", ...}. Taken from the
  file, not derived from image ids: R2Gen names 9 studies after one of two image series ("CXR212_IM-0746-1001")
  and study 1 "CXR1_1_IM-0001", which no rule over the Open-i or Kaggle image ids reproduces."""
  return {
    _r2gen_study_uid(entry["id"], annotation_json): entry["id"]
    for _, entry in _read_annotation(pathlib.Path(annotation_json))
  }


def join_sections(record: Mapping[str, Any], report_sections: Sequence[str]) -> str:
  """The report of `record` made of `report_sections` (non-empty ones, joined by a space)."""
  return " ".join(record[s] for s in report_sections if record[s])


def _to_record(
  study: _Study,
  report_sections: Sequence[str],
  keep_empty_reports: bool,
  keep_partial_images: bool,
  check_images: bool,
  report: ParseReport,
) -> dict[str, Any] | None:
  """Applies the image checks and view selection; None when the study is skipped."""
  listed = list(study.image_paths)
  present = [i for i in listed if study.image_paths[i].is_file()] if check_images else listed
  text = join_sections(study.sections, report_sections)
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


def _read_openi(
  manual_dir: pathlib.Path,
  image_dir: _PathLike | None,
  projections_csv: _PathLike | None,
  extract_dir: _PathLike | None,
  check_images: bool,
  report: ParseReport,
) -> list[_Study]:
  reports_source = manual_dir / "NLMCXR_reports.tgz"
  if not reports_source.is_file():
    reports_source = manual_dir / "ecgen-radiology"
    if not reports_source.is_dir():
      raise FileNotFoundError(f"{manual_dir}: neither NLMCXR_reports.tgz nor ecgen-radiology/ found")
  report.source = str(reports_source)
  image_folder = _openi_image_folder(manual_dir, image_dir, extract_dir, check_images)
  report.image_dir = str(image_folder)
  views = {}
  if projections_csv == AUTO:
    projections_csv = next(
      (
        p
        for p in (manual_dir / "indiana_projections.csv", manual_dir / "kaggle_csv" / "indiana_projections.csv")
        if p.is_file()
      ),
      None,
    )
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


def _openi_image_folder(
  manual_dir: pathlib.Path, image_dir: _PathLike | None, extract_dir: _PathLike | None, check_images: bool
) -> pathlib.Path:
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
      "(or pass image_dir=, or check_images=False)"
    )
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
      _read_to_end(tar)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise IUXrayFormatError(f"{tgz}: cannot extract the images, a corrupt or truncated archive ({e})") from e
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
      _read_to_end(tar)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
    raise IUXrayFormatError(f"{source}: not a readable tar archive, or a corrupt or truncated one ({e})") from e


def _read_to_end(tar: tarfile.TarFile) -> None:
  """Reads the compressed stream past the archive's end marker: tarfile stops there, before gzip's CRC
  (or bzip2's, xz's check) at the end of the file, so a corrupted byte would otherwise pass unnoticed."""
  while tar.fileobj.read(1 << 20):
    pass


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
    uid=uid,
    sections=sections,
    mesh=[e.text.strip() for e in root.findall("MeSH/major") if e.text and e.text.strip()],
    mesh_automatic=[e.text.strip() for e in root.findall("MeSH/automatic") if e.text and e.text.strip()],
    image_paths={i: image_folder / f"{i}.png" for i in image_ids},
    views={},
    label_source="projections",
  )


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
      raise IUXrayFormatError(f"{path}:{line}: projection {row['projection']!r} is not Frontal or Lateral")
    views[_kaggle_stem(row["filename"], path, line)] = view
  return views


# Kaggle layout.


def _read_kaggle(
  manual_dir: pathlib.Path, image_dir: _PathLike | None, check_images: bool, report: ParseReport
) -> list[_Study]:
  reports_csv = manual_dir / "indiana_reports.csv"
  projections_csv = manual_dir / "indiana_projections.csv"
  if not projections_csv.is_file():
    raise FileNotFoundError(f"{projections_csv} not found (the Kaggle layout needs it beside indiana_reports.csv)")
  report.source = str(reports_csv)
  if image_dir is None:
    candidates = (manual_dir / "images_normalized", manual_dir / "images" / "images_normalized")
    image_dir = next((c for c in candidates if c.is_dir()), None)
    if image_dir is None:
      if check_images:
        raise FileNotFoundError(
          f"no Kaggle images in {manual_dir}: looked for images_normalized/ "
          "and images/images_normalized/ (or pass image_dir=, or "
          "check_images=False)"
        )
      image_dir = candidates[0]
  image_dir = pathlib.Path(image_dir)
  if check_images and not image_dir.is_dir():
    raise FileNotFoundError(f"IU X-ray image folder not found: {image_dir}")
  report.image_dir = str(image_dir)

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
      uid=uid,
      sections=sections,
      mesh=[t.strip() for t in (row["MeSH"] or "").split(";") if t.strip()],
      mesh_automatic=[],
      image_paths={},
      views={},
      label_source="projections",
    )
  for line, row in _read_csv(projections_csv, _KAGGLE_PROJECTION_COLUMNS):
    uid = f"CXR{row['uid'].strip()}"
    filename = row["filename"].strip()
    if uid not in studies:
      report.add_issue("images_without_report", filename)
      continue
    image_id = f"CXR{_kaggle_stem(filename, projections_csv, line)}"
    view = row["projection"].strip().lower()
    if view not in (FRONTAL, LATERAL):
      raise IUXrayFormatError(f"{projections_csv}:{line}: projection {row['projection']!r} is not Frontal or Lateral")
    studies[uid].image_paths[image_id] = image_dir / filename
    studies[uid].views[image_id] = view
  return list(studies.values())


def _kaggle_stem(filename: str, path: pathlib.Path, line: int) -> str:
  filename = filename.strip()
  if not filename.endswith(_KAGGLE_SUFFIX):
    raise IUXrayFormatError(f"{path}:{line}: file name {filename!r} does not end in {_KAGGLE_SUFFIX}")
  return filename[: -len(_KAGGLE_SUFFIX)]


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


def _read_r2gen_layout(
  manual_dir: pathlib.Path, image_dir: _PathLike | None, check_images: bool, report: ParseReport
) -> list[_Study]:
  annotation = manual_dir / "annotation.json"
  image_dir = pathlib.Path(image_dir) if image_dir is not None else manual_dir / "images"
  report.image_dir = str(image_dir)
  if check_images and not image_dir.is_dir():
    raise FileNotFoundError(f"R2Gen image folder not found: {image_dir} (or pass image_dir=, or check_images=False)")
  studies = []
  for _, entry in _read_annotation(annotation):
    paths = {str(pathlib.PurePosixPath(p).with_suffix("")): image_dir / p for p in entry["image_path"]}
    studies.append(
      _Study(
        uid=_r2gen_study_uid(entry["id"], annotation),
        sections={"findings": entry["report"].strip(), "impression": "", "indication": "", "comparison": ""},
        mesh=[],
        mesh_automatic=[],
        image_paths=paths,
        views={i: v for i, v in zip(paths, (FRONTAL, LATERAL))},
        label_source="r2gen_position",
      )
    )
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
      if not (
        isinstance(entry, dict)
        and isinstance(entry.get("id"), str)
        and isinstance(entry.get("report"), str)
        and isinstance(entry.get("image_path"), list)
        and entry["image_path"]
        and all(isinstance(p, str) for p in entry["image_path"])
      ):
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
