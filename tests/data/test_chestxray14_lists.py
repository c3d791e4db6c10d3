"""ChestX-ray14's published split lists: the CheXNet reproduction lists (train/val/test_list.txt with 14 labels),
their checks against the real label file, and the images no list names (official lists too)."""

import argparse
import gzip
import json

import numpy as np
import pytest

from cxrjax.core import errors
from cxrjax.data import chestxray14
from cxrjax.data import prepare

FULL_LABELS = "nih_chestxray14/Data_Entry_2017_v2020.csv.gz"
# arnoweng/CheXNet's CLASS_NAMES (model.py), the column order of its lists: written out here, not imported.
LIST_ORDER = (
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
# Lines copied from arnoweng/CheXNet's ChestX-ray14/labels lists: four that agree with Data_Entry_2017_v2020
# (Fibrosis|Infiltration; Cardiomegaly|Effusion|Infiltration|Mass; Emphysema; Consolidation|Effusion|Mass|Nodule)
# and two that do not (v2020 adds Mass to the first and Pneumonia to the second).
REAL_AGREEING = [
  "00008473_011.png 0 0 0 1 0 0 0 0 0 0 0 1 0 0",
  "00011379_045.png 0 1 1 1 1 0 0 0 0 0 0 0 0 0",
  "00008473_002.png 0 0 0 0 0 0 0 0 0 0 1 0 0 0",
  "00011379_043.png 0 0 1 0 1 1 0 0 1 0 0 0 0 0",
]
REAL_DISAGREEING = ["00020065_008.png 0 0 0 0 0 0 0 0 0 0 0 0 0 0", "00022178_000.png 1 0 0 0 0 0 0 0 0 0 0 0 0 0"]
# The fixture's images per list in these tests (all 15 are one image per patient); 00026911_000 is in none.
ASSIGNMENT = {
  "train": [
    "00000129_000.png",
    "00001369_000.png",
    "00001933_000.png",
    "00002578_000.png",
    "00004296_000.png",
    "00004747_000.png",
    "00008386_000.png",
    "00009745_000.png",
  ],
  "val": ["00013125_000.png", "00013519_000.png", "00013911_000.png"],
  "test": ["00015649_000.png", "00022084_000.png", "00022178_000.png"],
}
UNLISTED = "00026911_000.png"


@pytest.fixture(scope="module")
def label_lines(shared_data):
  with gzip.open(shared_data / FULL_LABELS, "rt") as handle:
    lines = handle.read().splitlines()
  return lines[0], {line.split(",", 1)[0]: line for line in lines[1:]}


@pytest.fixture(scope="module")
def full_entries(shared_data):
  return chestxray14.read_label_file(shared_data / FULL_LABELS)


def _list_line(label_line: str) -> str:
  """A chexnet list line made from a label-file row's text (independent of the package's parsing)."""
  name, findings = label_line.split(",")[:2]
  return " ".join([name] + [str(int(f in findings.split("|"))) for f in LIST_ORDER])


@pytest.fixture()
def manual_dir(tmp_path, shared_data, label_lines):
  """The 15 real images, the label file restricted to them, and chexnet lists in chexnet_split/ made from their
  label-file rows, with 00022178_000's real (disagreeing) line and one deliberate flip in val."""
  header, by_name = label_lines
  source = shared_data / "nih_chestxray14"
  folder = tmp_path / "manual"
  (folder / "images").mkdir(parents=True)
  names = sorted(p.name for p in (source / "images").glob("*.png"))
  for name in names:
    (folder / "images" / name).symlink_to(source / "images" / name)
  (folder / "Data_Entry_2017_v2020.csv").write_text("\n".join([header] + [by_name[n] for n in names]) + "\n")
  lines = {split: [_list_line(by_name[n]) for n in images] for split, images in ASSIGNMENT.items()}
  lines["test"][2] = REAL_DISAGREEING[1]  # 00022178_000.png: the list lacks Pneumonia
  flipped = lines["val"][1].split()  # 00013519_000.png: Hernia added, Atelectasis dropped
  flipped[1 + LIST_ORDER.index("Hernia")], flipped[1 + LIST_ORDER.index("Atelectasis")] = "1", "0"
  lines["val"][1] = " ".join(flipped)
  _write_lists(folder / "chexnet_split", lines)
  return folder


def _write_lists(folder, lines):
  folder.mkdir(parents=True, exist_ok=True)
  for split, name in chestxray14.CHEXNET_LISTS.items():
    (folder / name).write_text("\n".join(lines[split]) + "\n")


def test_real_list_lines_agree_with_label_file_in_chexnet_order(full_entries, tmp_path):
  path = tmp_path / "train_list.txt"
  path.write_text("\n".join(REAL_AGREEING + REAL_DISAGREEING) + "\n")
  listed = chestxray14.read_labelled_list(path)
  assert [item.line for item in listed] == [1, 2, 3, 4, 5, 6]
  split, summary = chestxray14.chexnet_split(full_entries, {"train": listed}, {"train": path})
  assert split["train"] == sorted(line.split()[0] for line in REAL_AGREEING + REAL_DISAGREEING)
  assert summary["label_disagreements"] == 2
  assert summary["label_disagreement_examples"] == [
    "00020065_008.png (train_list.txt line 5: list No Finding, label file Mass)",
    "00022178_000.png (train_list.txt line 6: list Atelectasis, label file Atelectasis|Pneumonia)",
  ]
  assert summary["disagreements_by_finding"] == {"Mass: list 0, label file 1": 1, "Pneumonia: list 0, label file 1": 1}
  assert summary["unlisted"] == len(full_entries) - 6


def _warnings(stderr: str) -> list[str]:
  """prepare's warning lines (TFDS writes its progress bars on stderr too)."""
  return [line for line in stderr.splitlines() if line.startswith("cxrjax prepare chestxray14: warning:")]


def test_chexnet_build_end_to_end(manual_dir, tmp_path, label_lines, capsys):
  parser = argparse.ArgumentParser()
  prepare.add_chestxray14_arguments(parser)
  args = parser.parse_args(
    ["--manual-dir", str(manual_dir), "--data-dir", str(tmp_path / "tfds"), "--split", "chexnet"]
  )
  assert args.run(args) == 0
  captured = capsys.readouterr()
  summary = json.loads(captured.out.strip().splitlines()[-1])
  assert summary["dataset"] == "chestxray14/chexnet"
  assert summary["split_sizes"] == {"train": 8, "validation": 3, "test": 3}
  lists = summary["split_lists"]
  assert lists["list_images"] == {"train": 8, "val": 3, "test": 3}
  assert (lists["unlisted"], lists["unlisted_examples"]) == (1, [UNLISTED])
  assert summary["unassigned"] == 1  # the unlisted image is kept out of every split, counted
  assert lists["label_disagreements"] == 2
  assert lists["label_disagreement_examples"] == [
    # Findings in the lists' (CheXNet's) order.
    "00013519_000.png (val_list.txt line 2: list Infiltration|Nodule|Pneumothorax|Fibrosis|Hernia, label file "
    "Atelectasis|Infiltration|Nodule|Pneumothorax|Fibrosis)",
    "00022178_000.png (test_list.txt line 3: list Atelectasis, label file Atelectasis|Pneumonia)",
  ]
  warnings = _warnings(captured.err)
  assert len(warnings) == 2
  assert warnings[0].startswith(
    "cxrjax prepare chestxray14: warning: 2 images of the chestxray14/chexnet lists have labels that differ from "
  )
  assert "00013519_000.png" in warnings[0]
  assert warnings[1].endswith(
    f"1 images of {manual_dir / 'Data_Entry_2017_v2020.csv'} are in no list of "
    f"chestxray14/chexnet and in no split, e.g. {UNLISTED}"
  )

  # Stored: the label file's labels (not the lists'), each image in its list's split.
  _, by_name = label_lines
  for split, tfds_split in (("train", "train"), ("val", "validation"), ("test", "test")):
    source = chestxray14.ChestXray14Source(tmp_path / "tfds", "chexnet", tfds_split)
    records = [source[i] for i in range(len(source))]
    assert sorted(r["id"] for r in records) == sorted(ASSIGNMENT[split])
    for record in records:
      findings = by_name[record["id"]].split(",")[1]
      expected = [float(f in findings.split("|")) for f in LIST_ORDER]
      np.testing.assert_array_equal(record["labels"], expected)
  # A built dataset is reused, and warns again from its saved summary.
  reuse = parser.parse_args(["--data-dir", str(tmp_path / "tfds"), "--split", "chexnet"])
  assert prepare.run_chestxray14(reuse) == 0
  assert _warnings(capsys.readouterr().err) == warnings


ZEROS = " 0" * 14


@pytest.mark.parametrize(
  "split, index, line, message",
  [
    (
      "train",
      2,
      "00001933_000.png 0 0 0 0 0 0 0 0 1 0 0 0 0",
      r"expected an image name and 14 labels \(15 fields\), got 14",
    ),
    ("train", 0, "00000129_000.png,0,0,0,0,0,0,0,0,0,0,0,0,0,0", r"expected an image name .*, got 1"),
    (
      "val",
      1,
      "00013519_000.png 1 0 0 1 0 1 0 1 0 0 0 1 0 2",
      r"label '2' for Hernia of 00013519_000.png, expected 0 or 1",
    ),
    ("test", 0, "00015649_000.png 0 0 1 0 1 1 0 0 0 0 0 0 -1 0", r"label '-1' for Pleural_Thickening"),
    ("test", 1, "00099999_000.png" + ZEROS, r"image 00099999_000.png is not in .*Data_Entry_2017_v2020.csv"),
    ("test", 0, "00000129_000.png" + ZEROS, r"image 00000129_000.png is also in .*train_list.txt \(line 1\)"),
    ("train", 1, "00000129_000.png" + ZEROS, r"00000129_000.png repeats line 1"),
  ],
)
def test_bad_list_lines_name_file_and_line(manual_dir, tmp_path, capsys, split, index, line, message):
  path = manual_dir / "chexnet_split" / chestxray14.CHEXNET_LISTS[split]
  lines = path.read_text().splitlines()
  lines[index] = line
  path.write_text("\n".join(lines) + "\n")
  with pytest.raises(chestxray14.ChestXray14FormatError, match=f"^{path}: line {index + 1}: {message}"):
    chestxray14.split_with_summary(
      manual_dir,
      chestxray14.read_label_file(manual_dir / "Data_Entry_2017_v2020.csv"),
      "chexnet",
      label_path=manual_dir / "Data_Entry_2017_v2020.csv",
    )
  # As `cxrjax prepare chestxray14` runs it: one line, exit status 2, nothing built.
  parser = argparse.ArgumentParser()
  prepare.add_chestxray14_arguments(parser)
  args = parser.parse_args(
    ["--manual-dir", str(manual_dir), "--data-dir", str(tmp_path / "tfds"), "--split", "chexnet"]
  )
  assert errors.guarded("prepare", lambda: args.run(args)) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"cxrjax prepare: error: {path}: line {index + 1}: ")


def test_patient_in_two_lists(full_entries, tmp_path, label_lines):
  # Two real images of patient 8473 (00008473_002 and _011), one per list.
  _, by_name = label_lines
  paths = {"train": tmp_path / "train_list.txt", "val": tmp_path / "val_list.txt"}
  paths["train"].write_text(_list_line(by_name["00000129_000.png"]) + "\n" + REAL_AGREEING[2] + "\n")
  paths["val"].write_text(REAL_AGREEING[0] + "\n")
  lists = {split: chestxray14.read_labelled_list(path) for split, path in paths.items()}
  with pytest.raises(
    chestxray14.ChestXray14FormatError,
    match=rf"^{paths['val']}: line 1: patient 8473 \(00008473_011.png\) is also in "
    rf"{paths['train']} \(00008473_002.png, line 2\)",
  ):
    chestxray14.chexnet_split(full_entries, lists, paths)


def test_missing_lists_and_folder_choice(manual_dir):
  entries = chestxray14.read_label_file(manual_dir / "Data_Entry_2017_v2020.csv")
  (manual_dir / "chexnet_split").rename(manual_dir / "labels")  # arnoweng/CheXNet's folder name
  assert chestxray14.find_chexnet_lists(manual_dir)["val"] == manual_dir / "labels" / "val_list.txt"
  (manual_dir / "labels" / "val_list.txt").unlink()
  with pytest.raises(FileNotFoundError, match="the chexnet split needs train_list.txt, val_list.txt, test_list.txt"):
    chestxray14.split_with_summary(manual_dir, entries, "chexnet")


def test_official_and_random_count_unlisted_images(shared_data, tmp_path, label_lines):
  header, by_name = label_lines
  names = ASSIGNMENT["test"]
  label_file = tmp_path / "Data_Entry_2017_v2020.csv"
  # A row the official lists do not name (a made-up image of a made-up patient).
  label_file.write_text(
    "\n".join([header] + [by_name[n] for n in names] + ["00099999_000.png,Mass,0,99999,50,M,PA,1,1,0.1,0.1"]) + "\n"
  )
  entries = chestxray14.read_label_file(label_file)
  split, summary = chestxray14.split_with_summary(shared_data / "nih_chestxray14", entries, "official")
  assert (summary["unlisted"], summary["unlisted_examples"]) == (1, ["00099999_000.png"])
  assert summary["list_images"] == {"train_val": 86_524, "test": 25_596}
  assert summary["listed_not_in_label_file"] == 86_524 + 25_596 - len(names)
  assert sorted(i for ids in split.values() for i in ids) == sorted(names)
  _, summary = chestxray14.split_with_summary(shared_data / "nih_chestxray14", entries, "random")
  assert summary["unlisted"] == 0
