"""Tests for cxrjax.data.iu_xray on the real IU X-ray fixtures in ../shared/data/iu_xray."""

import json
import tarfile

import pytest

from cxrjax.data import iu_xray

REAL_PNGS = ("CXR54_IM-2145-1001", "CXR54_IM-2145-1002", "CXR303_IM-1404-1001", "CXR25_IM-1024-2001")


@pytest.fixture(scope="module")
def iu_dir(shared_data):
  return shared_data / "iu_xray"


@pytest.fixture(scope="module")
def openi_default(iu_dir):
  return iu_xray.load_studies(iu_dir)


@pytest.fixture(scope="module")
def openi_reports_only(iu_dir):
  return iu_xray.load_studies(iu_dir, check_images=False)


def _openi_subset(iu_dir, dest, numbers, image_dir="images"):
  """A small Open-i layout: the real XMLs of `numbers`, images linked from the fixture."""
  reports = dest / "ecgen-radiology"
  reports.mkdir(parents=True)
  with tarfile.open(iu_dir / "NLMCXR_reports.tgz") as tar:
    for number in numbers:
      member = tar.getmember(f"ecgen-radiology/{number}.xml")
      (reports / f"{number}.xml").write_bytes(tar.extractfile(member).read())
  if image_dir:
    (dest / image_dir).symlink_to(iu_dir / "images")
  return dest


def test_openi_counts_on_real_data(openi_default):
  records, report = openi_default
  assert report.layout == "openi"
  assert report.num_studies == 3955
  assert report.issues["no_images"] == 104
  assert report.issues["empty_report"] == 530  # 3,955 - 3,425 with findings
  assert report.issues["missing_image"] == 1 and report.examples["missing_image"] == ["CXR25"]
  assert report.issues["images_not_found"] == 3955 - 104 - 3
  assert sum(report.skipped.values()) + report.num_records == report.num_studies
  assert report.skipped["missing_image"] == 1  # skipped by default
  assert [r["id"] for r in records] == ["CXR54", "CXR303"]
  assert "missing_image: 1 (skipped 1), e.g. CXR25" in report.summary()


def test_openi_records_and_views(openi_default, iu_dir):
  records, report = openi_default
  cxr54, cxr303 = records
  assert cxr54["image_ids"] == ["CXR54_IM-2145-1001", "CXR54_IM-2145-1002"]
  assert cxr54["views"] == ["frontal", "lateral"]
  assert cxr54["images"] == [str(iu_dir / "images" / f"{i}.png") for i in cxr54["image_ids"]]
  assert cxr54["findings"].startswith("The lungs are clear bilaterally.")
  assert cxr54["report"] == cxr54["findings"]
  assert cxr54["impression"] == "No acute cardiopulmonary abnormality."
  assert cxr54["indication"] == "XXXX-year-old woman, prior to Enbrel therapy.."
  assert cxr54["comparison"] == "None."
  assert cxr54["mesh"] == [
    "Pulmonary Atelectasis/base/right/mild",
    "Aorta, Thoracic/tortuous",
    "Calcified Granuloma/scattered",
  ]
  assert "Thoracic Aorta" in cxr54["mesh_automatic"]
  # A single-image study: the frontal repeated.
  assert cxr303["image_ids"] == ["CXR303_IM-1404-1001"] * 2
  assert cxr303["views"] == ["frontal", "frontal"]
  assert report.view_sources == {"projections": 2}


def test_openi_all_reports_parse(openi_reports_only):
  records, report = openi_reports_only
  assert report.num_studies == 3955
  assert report.num_studies - report.issues["empty_report"] == 3425
  # 88 studies with findings list no image.
  assert report.num_records == len(records) == 3425 - 88
  assert report.view_sources == {"projections": 3337}
  assert all(len(r["images"]) == len(r["image_ids"]) == len(r["views"]) == 2 for r in records)
  pairs = [tuple(r["views"]) for r in records]
  assert pairs.count(("frontal", "lateral")) == 2943
  assert set(pairs) == {("frontal", "lateral"), ("frontal", "frontal"), ("lateral", "lateral")}
  assert all(r["report"] for r in records)
  assert records == sorted(records, key=lambda r: int(r["id"][3:]))


def test_openi_id_order_rule_without_labels(iu_dir, tmp_path):
  # Study 1 lists IM-0001-3001 (lateral by the Kaggle labels) and IM-0001-4001 (frontal).
  _openi_subset(iu_dir, tmp_path, [1, 54])
  labelled, _ = iu_xray.load_studies(
    tmp_path, check_images=False, projections_csv=iu_dir / "kaggle_csv" / "indiana_projections.csv"
  )
  assert labelled[0]["image_ids"] == ["CXR1_1_IM-0001-4001", "CXR1_1_IM-0001-3001"]
  assert labelled[0]["views"] == ["frontal", "lateral"]
  unlabelled, report = iu_xray.load_studies(tmp_path, check_images=False, projections_csv=None)
  assert unlabelled[0]["image_ids"] == ["CXR1_1_IM-0001-3001", "CXR1_1_IM-0001-4001"]
  assert unlabelled[0]["views"] == ["frontal", "lateral"]
  assert report.view_sources == {"id_order": 2}


def test_openi_keep_partial_matches_all_real_pngs(iu_dir, tmp_path):
  _openi_subset(iu_dir, tmp_path, [25, 54, 303])
  records, report = iu_xray.load_studies(
    tmp_path, keep_partial_images=True, projections_csv=iu_dir / "kaggle_csv" / "indiana_projections.csv"
  )
  assert [r["id"] for r in records] == ["CXR25", "CXR54", "CXR303"]
  assert report.issues == {"missing_image": 1} and report.skipped == {}
  cxr25 = records[0]
  assert cxr25["image_ids"] == ["CXR25_IM-1024-2001"] * 2
  assert cxr25["views"] == ["frontal", "frontal"]
  used = {image_id for r in records for image_id in r["image_ids"]}
  assert used == set(REAL_PNGS)
  assert all(p.endswith(".png") for r in records for p in r["images"])


def test_openi_images_from_tgz(iu_dir, tmp_path):
  manual = _openi_subset(iu_dir, tmp_path / "manual", [54, 303], image_dir=None)
  with tarfile.open(manual / "NLMCXR_png.tgz", "w:gz") as tar:
    for image_id in REAL_PNGS:
      tar.add(iu_dir / "images" / f"{image_id}.png", arcname=f"{image_id}.png")
  extract_dir = tmp_path / "extracted"
  records, _ = iu_xray.load_studies(manual, extract_dir=extract_dir)
  assert [r["id"] for r in records] == ["CXR54", "CXR303"]
  assert records[0]["images"][0] == str(extract_dir / "CXR54_IM-2145-1001.png")
  assert sorted(p.stem for p in extract_dir.iterdir()) == sorted(REAL_PNGS)
  # Extracted once: a second load reuses the folder.
  assert iu_xray.load_studies(manual, extract_dir=extract_dir)[0] == records


def test_openi_empty_findings_counted_and_optionally_kept(iu_dir, tmp_path):
  _openi_subset(iu_dir, tmp_path, [3, 54])  # CXR3 has no findings
  records, report = iu_xray.load_studies(tmp_path, check_images=False)
  assert [r["id"] for r in records] == ["CXR54"]
  assert report.issues == {"empty_report": 1} and report.skipped == {"empty_report": 1}
  assert report.examples["empty_report"] == ["CXR3"]
  records, report = iu_xray.load_studies(tmp_path, check_images=False, keep_empty_reports=True)
  assert [r["id"] for r in records] == ["CXR3", "CXR54"]
  assert records[0]["report"] == "" and records[0]["impression"]
  # With the impression as report, CXR3 has text.
  records, report = iu_xray.load_studies(tmp_path, check_images=False, report_sections=("findings", "impression"))
  assert [r["id"] for r in records] == ["CXR3", "CXR54"]
  assert records[1]["report"] == records[1]["findings"] + " " + records[1]["impression"]


@pytest.mark.parametrize(
  "content, message",
  [
    (b"<eCitation><uId id='CXR9'/><Abstract>", "malformed XML"),
    (b"<eCitation><Abstract/></eCitation>", "no <uId"),
  ],
)
def test_openi_bad_xml_names_file(iu_dir, tmp_path, content, message):
  _openi_subset(iu_dir, tmp_path, [54])
  (tmp_path / "ecgen-radiology" / "9.xml").write_bytes(content)
  with pytest.raises(iu_xray.IUXrayFormatError, match=message) as error:
    iu_xray.load_studies(tmp_path)
  assert "9.xml" in str(error.value)


def test_corrupt_reports_tgz(tmp_path):
  (tmp_path / "NLMCXR_reports.tgz").write_bytes(b"not a tar archive at all")
  with pytest.raises(iu_xray.IUXrayFormatError, match="NLMCXR_reports.tgz"):
    iu_xray.load_studies(tmp_path, check_images=False)


def test_layout_detection_errors(iu_dir, tmp_path):
  with pytest.raises(FileNotFoundError, match="NLMCXR_reports.tgz.*indiana_reports.csv.*annotation.json"):
    iu_xray.load_studies(tmp_path)
  with pytest.raises(FileNotFoundError, match="not found"):
    iu_xray.load_studies(tmp_path / "absent")
  _openi_subset(iu_dir, tmp_path, [54], image_dir=None)
  with pytest.raises(FileNotFoundError, match="NLMCXR_png/, images/ and NLMCXR_png.tgz"):
    iu_xray.load_studies(tmp_path)
  (tmp_path / "annotation.json").symlink_to(iu_dir / "r2gen" / "annotation.json")
  with pytest.raises(ValueError, match="several IU X-ray layouts.*layout="):
    iu_xray.load_studies(tmp_path)
  assert iu_xray.load_studies(tmp_path, layout="openi", check_images=False)[1].num_records == 1
  with pytest.raises(ValueError, match="report_sections"):
    iu_xray.load_studies(tmp_path, layout="openi", report_sections=("indication",))


@pytest.fixture(scope="module")
def kaggle_reports_only(iu_dir):
  return iu_xray.load_studies(iu_dir / "kaggle_csv", check_images=False)


def test_kaggle_matches_openi(kaggle_reports_only, openi_reports_only):
  records, report = kaggle_reports_only
  assert report.layout == "kaggle"
  assert report.num_studies == 3851  # the 104 studies without images are not in the CSV
  # Excel turned three indications starting with "+" or "-" into "#NAME?": emptied, counted.
  assert report.issues == {"empty_report": 514, "spreadsheet_error": 3}
  assert report.examples["spreadsheet_error"] == ["CXR1555", "CXR3477", "CXR3784"]
  assert len(records) == 3337
  openi = {r["id"]: r for r in openi_reports_only[0]}
  assert set(openi) == {r["id"] for r in records}
  for record in records:
    other = openi[record["id"]]
    for key in ("views", "findings", "impression", "comparison", "mesh", "report"):
      assert record[key] == other[key], (record["id"], key)
    if record["id"] in report.examples["spreadsheet_error"]:
      assert record["indication"] == "" and other["indication"][0] in "+-"
    else:
      assert record["indication"] == other["indication"], record["id"]
    # Kaggle names drop the "CXR" prefix and study 1's "_1".
    assert record["image_ids"] == [i.replace("CXR1_1_", "CXR1_") for i in other["image_ids"]]


def test_kaggle_with_images(iu_dir, tmp_path):
  for name in ("indiana_reports.csv", "indiana_projections.csv"):
    (tmp_path / name).symlink_to(iu_dir / "kaggle_csv" / name)
  images = tmp_path / "images" / "images_normalized"
  images.mkdir(parents=True)
  for image_id in REAL_PNGS:
    (images / f"{image_id[3:]}.dcm.png").symlink_to(iu_dir / "images" / f"{image_id}.png")
  records, report = iu_xray.load_studies(tmp_path)
  assert [r["id"] for r in records] == ["CXR54", "CXR303"]
  assert records[0]["images"] == [str(images / "54_IM-2145-1001.dcm.png"), str(images / "54_IM-2145-1002.dcm.png")]
  assert records[0]["image_ids"] == ["CXR54_IM-2145-1001", "CXR54_IM-2145-1002"]
  assert report.examples["missing_image"] == ["CXR25"]
  assert report.skipped["images_not_found"] == 3851 - 3


def test_kaggle_bad_csv_names_file(tmp_path):
  (tmp_path / "indiana_reports.csv").write_text("uid,findings\n1,clear\n")
  (tmp_path / "indiana_projections.csv").write_text("uid,filename,projection\n")
  with pytest.raises(iu_xray.IUXrayFormatError, match="indiana_reports.csv: missing columns"):
    iu_xray.load_studies(tmp_path, check_images=False)
  (tmp_path / "indiana_reports.csv").write_text(
    "uid,MeSH,indication,comparison,findings,impression\n1,normal,,,clear,\n"
  )
  (tmp_path / "indiana_projections.csv").write_text("uid,filename,projection\n1,1_IM-0001-4001.dcm.png,Oblique\n")
  with pytest.raises(iu_xray.IUXrayFormatError, match="indiana_projections.csv:2: .*Oblique"):
    iu_xray.load_studies(tmp_path, check_images=False)
  (tmp_path / "indiana_projections.csv").write_text(
    "uid,filename,projection\n1,1_IM-0001-4001.dcm.png,Frontal\n7,7_IM-0001-1001.dcm.png,Lateral\n"
  )
  records, report = iu_xray.load_studies(tmp_path, check_images=False)
  assert [r["image_ids"] for r in records] == [["CXR1_IM-0001-4001"] * 2]
  assert report.issues == {"images_without_report": 1}


def test_r2gen_layout_and_split(iu_dir):
  records, report = iu_xray.load_studies(iu_dir / "r2gen", check_images=False)
  assert report.layout == "r2gen" and report.num_studies == len(records) == 2955
  assert report.view_sources == {"r2gen_position": 2955}
  split = iu_xray.r2gen_split(iu_dir / "r2gen" / "annotation.json")
  assert {name: len(ids) for name, ids in split.items()} == {"train": 2069, "val": 296, "test": 590}
  all_ids = [i for ids in split.values() for i in ids]
  assert len(set(all_ids)) == 2955 and set(all_ids) == {r["id"] for r in records}
  assert split["train"][0] == "CXR2384"
  first = next(r for r in records if r["id"] == "CXR2384")
  assert first["image_ids"] == ["CXR2384_IM-0942/0", "CXR2384_IM-0942/1"]
  assert first["images"][1] == str(iu_dir / "r2gen" / "images" / "CXR2384_IM-0942" / "1.png")
  assert first["findings"].startswith("The heart size and pulmonary vascularity appear")


def test_r2gen_with_images(iu_dir, tmp_path):
  (tmp_path / "annotation.json").symlink_to(iu_dir / "r2gen" / "annotation.json")
  study = tmp_path / "images" / "CXR54_IM-2145"
  study.mkdir(parents=True)
  (study / "0.png").symlink_to(iu_dir / "images" / "CXR54_IM-2145-1001.png")
  (study / "1.png").symlink_to(iu_dir / "images" / "CXR54_IM-2145-1002.png")
  records, report = iu_xray.load_studies(tmp_path)
  assert [r["id"] for r in records] == ["CXR54"]
  assert records[0]["views"] == ["frontal", "lateral"]
  assert report.skipped == {"images_not_found": 2954}


@pytest.mark.parametrize(
  "content, message",
  [
    ("{", "not valid JSON"),
    (json.dumps({"train": []}), "expected an object with keys"),
    (
      json.dumps(
        {
          "train": [{"id": "CXR1_IM-0001", "report": "a", "image_path": ["x/0.png"]}],
          "val": [{"id": "CXR1_IM-0002", "report": "b", "image_path": ["y/0.png"]}],
          "test": [],
        }
      ),
      "study CXR1 already in train",
    ),
    (
      json.dumps({"train": [{"id": "X1", "report": "a", "image_path": ["x/0.png"]}], "val": [], "test": []}),
      "does not start with CXR",
    ),
    (json.dumps({"train": [{"id": "CXR1_IM-0001", "report": "a"}], "val": [], "test": []}), "expected {id"),
  ],
)
def test_r2gen_bad_annotation_names_file(tmp_path, content, message):
  path = tmp_path / "annotation.json"
  path.write_text(content)
  with pytest.raises(iu_xray.IUXrayFormatError, match=message) as error:
    iu_xray.r2gen_split(path)
  assert str(path) in str(error.value)


def test_select_two_views():
  views = {"a-1": "lateral", "a-2": "frontal", "a-3": "frontal", "a-4": "lateral"}
  assert iu_xray.select_two_views(["a-4", "a-3", "a-2", "a-1"], views) == (["a-2", "a-1"], ["frontal", "lateral"], True)
  assert iu_xray.select_two_views(["a-4", "a-1"], views) == (["a-1", "a-4"], ["lateral", "lateral"], True)
  assert iu_xray.select_two_views(["a-4"], views) == (["a-4", "a-4"], ["lateral", "lateral"], True)
  assert iu_xray.select_two_views(["b-2", "b-1"], {}) == (["b-1", "b-2"], ["frontal", "lateral"], False)
  assert iu_xray.select_two_views(["b-1"], {}) == (["b-1", "b-1"], ["frontal", "frontal"], False)
  with pytest.raises(ValueError):
    iu_xray.select_two_views([], {})


def test_missing_image_folder_given(iu_dir, tmp_path):
  _openi_subset(iu_dir, tmp_path, [54], image_dir=None)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    iu_xray.load_studies(tmp_path, image_dir=tmp_path / "nowhere")
