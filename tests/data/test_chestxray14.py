"""ChestX-ray14 parsing, splits and the TFDS builder (on the 15 real images)."""

import argparse
import collections
import gzip
import io
import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from cxrjax.core import errors
from cxrjax.data import chestxray14
from cxrjax.data import images as image_lib
from cxrjax.data import prepare
from cxrjax.models.encoders import densenet

FULL_LABELS = "nih_chestxray14/Data_Entry_2017_v2020.csv.gz"
HEADER = (
  "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
  "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


@pytest.fixture(scope="module")
def full_entries(shared_data):
  return chestxray14.read_label_file(shared_data / FULL_LABELS)


@pytest.fixture(scope="module")
def label_lines(shared_data):
  """Image index -> its row in the real label file (text)."""
  with gzip.open(shared_data / FULL_LABELS, "rt") as handle:
    lines = handle.read().splitlines()
  assert lines[0] == HEADER
  return {line.split(",", 1)[0]: line for line in lines[1:]}


@pytest.fixture()
def manual_dir(tmp_path, shared_data, label_lines):
  """The public layout with the 15 real images: images/ (linked), label CSV restricted to them."""
  source = shared_data / "nih_chestxray14"
  folder = tmp_path / "manual"
  (folder / "images").mkdir(parents=True)
  names = sorted(p.name for p in (source / "images").glob("*.png"))
  assert len(names) == 15
  for name in names:
    (folder / "images" / name).symlink_to(source / "images" / name)
  (folder / "Data_Entry_2017_v2020.csv").write_text("\n".join([HEADER] + [label_lines[name] for name in names]) + "\n")
  for name in ("train_val_list.txt", "test_list.txt"):
    (folder / name).symlink_to(source / "official_split" / name)
  return folder


def _write(path: pathlib.Path, rows: list[str], header: str = HEADER) -> pathlib.Path:
  path.write_text("\n".join([header] + rows) + "\n")
  return path


# Labels.


def test_class_order_is_chexnet_plus_no_finding():
  assert chestxray14.class_names() == densenet.CHEXNET_CLASSES
  assert chestxray14.class_names(True) == densenet.CHEXNET_CLASSES + ("No Finding",)
  np.testing.assert_array_equal(
    chestxray14.labels_vector(["Mass", "Hernia"]), np.eye(14, dtype=np.float32)[[4, 13]].sum(0)
  )
  np.testing.assert_array_equal(
    chestxray14.labels_vector([], include_no_finding=True), np.eye(15, dtype=np.float32)[14]
  )
  assert chestxray14.labels_vector(["Edema"], include_no_finding=True)[14] == 0


def test_full_label_file(full_entries):
  assert len(full_entries) == 112_120
  counts = collections.Counter(f for e in full_entries for f in e.findings)
  # The label counts of Data_Entry_2017_v2020 (NIH's README gives the same table).
  assert counts["Infiltration"] == 19_894 and counts["Hernia"] == 227 and counts["Effusion"] == 13_317
  assert sum(not e.findings for e in full_entries) == 60_361
  assert len({e.patient_id for e in full_entries}) == 30_805
  first = full_entries[1]
  assert (
    first.image_index,
    first.findings,
    first.patient_id,
    first.follow_up,
    first.age,
    first.gender,
    first.view_position,
    first.line,
  ) == ("00000001_001.png", ("Cardiomegaly", "Emphysema"), "1", 1, 58, "M", "PA", 3)


def _patients(entries, ids):
  patient_of = {e.image_index: e.patient_id for e in entries}
  return {patient_of[i] for i in ids}


def test_official_split_is_patient_disjoint(shared_data, full_entries):
  split = chestxray14.split_image_ids(shared_data / "nih_chestxray14", full_entries, "official")
  lists = shared_data / "nih_chestxray14/official_split"
  test_list = chestxray14.read_image_list(lists / "test_list.txt")
  train_val = chestxray14.read_image_list(lists / "train_val_list.txt")
  assert split["test"] == sorted(test_list)
  assert sorted(split["train"] + split["val"]) == sorted(train_val)
  patients = {name: _patients(full_entries, ids) for name, ids in split.items()}
  for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
    assert not patients[first] & patients[second], (first, second)
  val_share = len(patients["val"]) / (len(patients["train"]) + len(patients["val"]))
  assert abs(val_share - 0.1) < 0.001
  # Seeded: the same again, another seed another carve-out.
  again = chestxray14.official_split(full_entries, train_val, test_list)
  assert again == split
  other = chestxray14.official_split(full_entries, train_val, test_list, seed=1)
  assert other["val"] != split["val"] and other["test"] == split["test"]


def test_random_split_is_patient_disjoint(shared_data, full_entries):
  split = chestxray14.split_image_ids(shared_data / "nih_chestxray14", full_entries, "random")
  assert sorted(i for ids in split.values() for i in ids) == sorted(e.image_index for e in full_entries)
  patients = {name: _patients(full_entries, ids) for name, ids in split.items()}
  total = sum(len(p) for p in patients.values())
  assert total == 30_805
  for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
    assert not patients[first] & patients[second], (first, second)
  for name, fraction in (("train", 0.7), ("val", 0.1), ("test", 0.2)):
    assert abs(len(patients[name]) / total - fraction) < 0.001, name
  # The assignment does not depend on the file's row order.
  assert chestxray14.patient_split(full_entries[::-1]) == split


def test_official_split_rejects_patient_in_both_lists(tmp_path):
  entries = chestxray14.read_label_file(
    _write(
      tmp_path / "labels.csv",
      ["00000001_000.png,Mass,0,1,50,M,PA,1,1,0.1,0.1", "00000001_001.png,No Finding,1,1,50,M,PA,1,1,0.1,0.1"],
    )
  )
  with pytest.raises(chestxray14.ChestXray14FormatError, match="patients have images in both"):
    chestxray14.official_split(entries, ["00000001_000.png"], ["00000001_001.png"])
  with pytest.raises(chestxray14.ChestXray14FormatError, match="images are in both"):
    chestxray14.official_split(entries, ["00000001_000.png"], ["00000001_000.png"])


def test_2017_layout_trailing_comma_and_gzip(tmp_path):
  # The first release: a trailing comma on every line, ages like "058Y".
  path = tmp_path / "Data_Entry_2017.csv.gz"
  with gzip.open(path, "wt") as handle:
    handle.write(HEADER + ",\n00000001_000.png,Cardiomegaly|Effusion,0,1,058Y,M,PA,2682,2749,0.143,0.143,\n")
  [entry] = chestxray14.read_label_file(path)
  assert entry.findings == ("Cardiomegaly", "Effusion") and entry.age == 58
  assert chestxray14.find_label_file(tmp_path) == path
  _write(tmp_path / "Data_Entry_2017_v2020.csv", ["00000001_000.png,Mass,0,1,58,M,PA,1,1,0.1,0.1"])
  assert chestxray14.find_label_file(tmp_path).name == "Data_Entry_2017_v2020.csv"


@pytest.mark.parametrize(
  "row, message",
  [
    ("00000001_000.png,Infiltrate,0,1,50,M,PA,1,1,0.1,0.1", r"line 3: unknown label name\(s\) \['Infiltrate'\]"),
    ("00000001_000.png,No Finding|Mass,0,1,50,M,PA,1,1,0.1,0.1", "line 3: 'No Finding' listed with"),
    ("00000001_000.png,Mass|Mass,0,1,50,M,PA,1,1,0.1,0.1", "line 3: repeated label name"),
    ("00000001_000.png,Mass,0,1,50,M,PA", "line 3: expected 11 fields, got 7"),
    ("00000001_000.png,Mass,0,x1,50,M,PA,1,1,0.1,0.1", "line 3: Patient ID 'x1'"),
    ("00000001_000.png,Mass,0,1,fifty,M,PA,1,1,0.1,0.1", "line 3: Patient Age 'fifty'"),
    ("00000002_000.png,Mass,0,2,50,M,PA,1,1,0.1,0.1", "line 3: image 00000002_000.png repeats line 2"),
  ],
)
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
  path = _write(tmp_path / "labels.csv", ["00000002_000.png,Edema,0,2,40,F,AP,1,1,0.1,0.1", row])
  with pytest.raises(chestxray14.ChestXray14FormatError, match=message) as error:
    chestxray14.read_label_file(path)
  assert str(path) in str(error.value)


def test_missing_columns_and_files(tmp_path):
  path = _write(tmp_path / "labels.csv", ["00000001_000.png,Mass,1"], header="Image Index,Finding Labels,Age")
  with pytest.raises(chestxray14.ChestXray14FormatError, match=r"line 1: missing columns \['Follow-up #'"):
    chestxray14.read_label_file(path)
  with pytest.raises(FileNotFoundError, match="label file not found"):
    chestxray14.read_label_file(tmp_path / "nothing.csv")
  with pytest.raises(FileNotFoundError, match="no ChestX-ray14 label file"):
    chestxray14.find_label_file(tmp_path / "elsewhere")


def test_records_missing_image_error_or_counted_skip(manual_dir):
  label_file = manual_dir / "Data_Entry_2017_v2020.csv"
  with open(label_file, "a") as handle:
    handle.write("00099999_000.png,Mass,0,99999,50,M,PA,1,1,0.1,0.1\n")
  with pytest.raises(FileNotFoundError, match=r"1 of 16 listed images are not under .*00099999_000.png \(line 17\)"):
    chestxray14.load_records(manual_dir)
  records, report = chestxray14.load_records(manual_dir, missing_images="skip", include_no_finding=True)
  assert report.num_rows == 16 and report.num_records == 15
  assert report.skipped == {"missing_image": 1} and report.examples["missing_image"] == ["00099999_000.png"]
  by_id = {r["id"]: r for r in records}
  record = by_id["00004747_000.png"]  # Emphysema|Fibrosis|Hernia|Infiltration|Pleural_Thickening
  assert record["finding_labels"] == ["Emphysema", "Fibrosis", "Hernia", "Infiltration", "Pleural_Thickening"]
  assert record["labels"].dtype == np.float32 and record["labels"].shape == (15,)
  assert [chestxray14.class_names(True)[i] for i in np.flatnonzero(record["labels"])] == [
    "Infiltration",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
  ]
  assert by_id["00000129_000.png"]["labels"].tolist() == [0.0] * 14 + [1.0]
  assert record["images"] == [str(manual_dir / "images" / "00004747_000.png")]
  assert (record["patient_id"], record["age"], record["gender"], record["view_position"]) == ("4747", 82, "M", "PA")


def test_kaggle_image_folders(tmp_path, shared_data):
  for index, name in enumerate(("00000129_000.png", "00001369_000.png")):
    folder = tmp_path / f"images_{index + 1:03d}" / "images"
    folder.mkdir(parents=True)
    (folder / name).symlink_to(shared_data / "nih_chestxray14/images" / name)
  found = chestxray14.index_images(tmp_path)
  assert found == {
    "00000129_000.png": tmp_path / "images_001/images/00000129_000.png",
    "00001369_000.png": tmp_path / "images_002/images/00001369_000.png",
  }
  (tmp_path / "images").mkdir()
  (tmp_path / "images" / "00000129_000.png").symlink_to(shared_data / "nih_chestxray14/images/00000129_000.png")
  with pytest.raises(chestxray14.ChestXray14FormatError, match="is in two folders"):
    chestxray14.index_images(tmp_path)


# TFDS.


def test_tfds_builder_on_real_images(manual_dir, tmp_path, label_lines):
  data_dir = tmp_path / "tfds"
  summary = chestxray14.prepare_chestxray14(manual_dir, data_dir, split="official")
  # 12 of the 15 images are in test_list.txt; the 3 train_val patients are carved 2 / 1.
  assert summary["split_sizes"] == {"train": 2, "validation": 1, "test": 12}
  assert summary["converted_images"] == 2  # the two RGBA files
  assert sorted(summary["converted_image_examples"]) == ["00001369_000.png", "00002578_000.png"]
  assert summary["unassigned"] == 0 and summary["parse_report"]["skipped"] == {}
  # Every label-file row is in an official list; the lists' other names are not in this label file (counted).
  lists = summary["split_lists"]
  assert (lists["unlisted"], lists["list_images"]) == (0, {"train_val": 86_524, "test": 25_596})
  assert lists["listed_not_in_label_file"] == 86_524 + 25_596 - 15

  seen = {}
  for split in ("train", "validation", "test"):
    source = chestxray14.ChestXray14Source(data_dir, "official", split, include_no_finding=True)
    for index in range(len(source)):
      record = source[index]
      assert record["id"] not in seen
      seen[record["id"]] = split
      fields = label_lines[record["id"]].split(",")
      assert record["patient_id"] == fields[3] and record["age"] == int(fields[4])
      assert record["finding_labels"] == fields[1].split("|")
      expected = chestxray14.labels_vector(
        [] if fields[1] == "No Finding" else fields[1].split("|"), include_no_finding=True
      )
      np.testing.assert_array_equal(record["labels"], expected)
      decoded = np.asarray(Image.open(io.BytesIO(record["images"][0])))
      original = image_lib.load_image(manual_dir / "images" / record["id"])
      assert decoded.ndim == 2 and decoded.shape == (1024, 1024)
      np.testing.assert_array_equal(decoded, original[..., 0])
  assert len(seen) == 15
  patients = collections.defaultdict(set)
  for image_id, split in seen.items():
    patients[label_lines[image_id].split(",")[3]].add(split)
  assert all(len(splits) == 1 for splits in patients.values())
  # 14 classes on request; the gray PNGs are stored byte for byte.
  source = chestxray14.ChestXray14Source(data_dir, "official", "test")
  record = next(source[i] for i in range(len(source)) if source[i]["id"] == "00008386_000.png")
  assert record["labels"].shape == (14,)
  assert record["images"][0] == (manual_dir / "images/00008386_000.png").read_bytes()


def test_prepare_hook_random_split(manual_dir, tmp_path, capsys):
  parser = argparse.ArgumentParser()
  prepare.add_chestxray14_arguments(parser)
  args = parser.parse_args(["--manual-dir", str(manual_dir), "--data-dir", str(tmp_path / "tfds"), "--split", "random"])
  assert args.run(args) == 0
  summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert summary["dataset"] == "chestxray14/random"
  # 15 patients: floor(0.7 * 15) = 10 train, floor(0.1 * 15) = 1 validation, 4 test.
  assert summary["split_sizes"] == {"train": 10, "validation": 1, "test": 4}
  # A built dataset needs no manual folder.
  reuse = parser.parse_args(["--data-dir", str(tmp_path / "tfds"), "--split", "random"])
  assert prepare.run_chestxray14(reuse) == 0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["split_sizes"] == summary["split_sizes"]
  with pytest.raises(FileNotFoundError, match="not prepared"):
    chestxray14.ChestXray14Source(tmp_path / "tfds", "official", "train")
  bad = parser.parse_args(["--manual-dir", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path / "x")])
  assert errors.guarded("prepare", lambda: bad.run(bad)) == 2  # As `cxrjax prepare chestxray14` runs it.
  assert "cxrjax prepare: error: manual folder not found" in capsys.readouterr().err
