"""ROCOv2 and ROCO v1: parsing the real caption files, the chest X-ray subset, the TFDS builders.

The fixtures hold captions and no images: the layouts built here use the real captions and small
JPEGs written from the real chest X-ray PNGs of the IU X-ray and ChestX-ray14 fixtures.
"""

import csv
import io
import json
import pathlib
import re

from PIL import Image
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from cxrjax.data import datasets
from cxrjax.data import images as image_lib
from cxrjax.data import pipeline
from cxrjax.data import prepare
from cxrjax.data import roco
from cxrjax.data import tfds_common
from cxrjax.data import transforms
from cxrjax.core.errors import UserError

HEAD30 = "rocov2/test_captions.head30.csv"


@pytest.fixture(scope="module")
def jpegs(shared_data):
  """Small real JPEGs (bytes): the fixture's chest X-ray PNGs, shrunk to 40 x 40 and JPEG-encoded."""
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png")) + sorted(
    (shared_data / "nih_chestxray14" / "images").glob("*.png")
  )
  out = []
  for path in paths:
    buffer = io.BytesIO()
    Image.fromarray(image_lib.load_image(path)).resize((40, 40)).save(buffer, format="JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


@pytest.fixture(scope="module")
def head30_lines(shared_data):
  """The fixture's raw data lines (each row is one line: no caption spans lines)."""
  lines = (shared_data / HEAD30).read_text(encoding="utf-8").splitlines(keepends=True)
  assert lines[0].strip() == "ID,Caption" and len(lines) == 31
  return lines[1:]


# Parsing the real files.


def test_rocov2_captions_kept_as_written(shared_data):
  path = shared_data / HEAD30
  rows = roco.read_rocov2_captions(path)
  # An independent RFC-4180 reader (Arrow's), with no whitespace stripping.
  table = pa_csv.read_csv(
    path, convert_options=pa_csv.ConvertOptions(column_types={"ID": pa.string(), "Caption": pa.string()})
  )
  assert rows == list(zip(table.column("ID").to_pylist(), table.column("Caption").to_pylist()))
  captions = dict(rows)
  assert len(rows) == 30 and rows[0][0] == "ROCOv2_2023_test_000001"
  leading = [i for i, c in rows if c.startswith(" ")]
  assert leading == ["ROCOv2_2023_test_000021", "ROCOv2_2023_test_000022", "ROCOv2_2023_test_000030"]
  assert captions["ROCOv2_2023_test_000030"].startswith(" The typical chest X-ray finding")
  assert "\u201cstring of pearls\u201d" in captions["ROCOv2_2023_test_000011"]
  # A quoted caption holding commas is one field, without its quotes.
  raw = (shared_data / HEAD30).read_text(encoding="utf-8")
  quoted = re.search(r'^ROCOv2_2023_test_000006,"(.*)"$', raw, re.MULTILINE).group(1)
  assert captions["ROCOv2_2023_test_000006"] == quoted and "," in quoted


def test_rocov2_doubled_quotes_and_newlines(tmp_path, shared_data):
  rows = roco.read_rocov2_captions(shared_data / HEAD30)[:4]
  # Captions with straight quotes (the curly ones of row 11 made straight) and a line break.
  rows += [
    ("quoted", roco.read_rocov2_captions(shared_data / HEAD30)[10][1].replace("\u201c", '"').replace("\u201d", '"')),
    ("two_lines", rows[0][1] + "\n" + rows[1][1]),
  ]
  path = tmp_path / "test_captions.csv"
  with open(path, "w", newline="", encoding="utf-8") as handle:
    writer = csv.writer(handle)
    writer.writerow(["ID", "Caption"])
    writer.writerows(rows)
  assert '""string of pearls""' in path.read_text(encoding="utf-8")
  assert roco.read_rocov2_captions(path) == rows


def test_rocov2_malformed_files(tmp_path, head30_lines):
  bad_header = tmp_path / "a.csv"
  bad_header.write_text("Id;Caption\n" + head30_lines[0], encoding="utf-8")
  with pytest.raises(roco.RocoFormatError, match=r"a\.csv: expected the header ID,Caption"):
    roco.read_rocov2_captions(bad_header)
  extra_field = tmp_path / "b.csv"
  extra_field.write_text("ID,Caption\n" + head30_lines[0] + head30_lines[1].rstrip("\n") + ",extra\n", encoding="utf-8")
  with pytest.raises(roco.RocoFormatError, match=r"b\.csv: row 3: expected 2 fields"):
    roco.read_rocov2_captions(extra_field)


def test_roco_v1_real_captions_and_lists(shared_data):
  folder = shared_data / "roco"
  assert roco.detect_layout(folder) == "roco_v1"
  for split, expected_rows in (("test", 8179), ("validation", 8180)):
    radiology = folder / split / "radiology"
    lines = (radiology / "captions.txt").read_text(encoding="utf-8").splitlines()
    rows = roco.iter_split_captions(folder, split)
    assert len(rows) == len(lines) == expected_rows
    for row, line in zip(rows, lines):
      assert line == f"{row['id']}\t{row['report']}"  # the caption as written, leading space included
    assert all(row["report"].startswith(" ") for row in rows)
    assert all(row["image"] is None for row in rows)  # the fixture has no images
    licences = roco.read_roco_v1_licences(radiology / "licences.txt")
    assert len(licences) == expected_rows
  first = roco.iter_split_captions(folder, "test")[0]
  assert first["id"] == "ROCO_00001" and first["report"] == " Axial MRI (coronal view)."
  assert first["keywords"] == ["axial", "coronal", "mri", "view"] and first["concepts"] == []
  second = roco.iter_split_captions(folder, "test")[1]
  assert second["concepts"][:2] == ["C0040395", "C0011334"] and second["licence"] == "CC BY-NC-ND"


def test_missing_split_file_is_one_line_naming_it(shared_data, tmp_path):
  with pytest.raises(roco.MissingSplitError, match=r"roco/train/radiology/captions\.txt: split file not found"):
    roco.load_split(shared_data / "roco", "train")
  (tmp_path / "train_captions.csv").write_text("ID,Caption\n", encoding="utf-8")
  with pytest.raises(roco.MissingSplitError, match=r"valid_captions\.csv: split file not found") as error:
    roco.load_split(tmp_path, "validation")
  assert isinstance(error.value, UserError) and "\n" not in str(error.value)
  (tmp_path / "data").mkdir()
  (tmp_path / "train_captions.csv").unlink()
  pq.write_table(
    pa.table({"image_id": ["a"], "caption": ["b"], "image": [b"c"]}), tmp_path / "data" / "train-00000-of-00001.parquet"
  )
  with pytest.raises(roco.MissingSplitError, match=r"data/test-\*\.parquet: split file not found"):
    roco.load_split(tmp_path, "test")


# The chest X-ray subset.


def test_chest_xray_subset_counts_on_real_captions(shared_data):
  counts, phrase_counts = {}, {}
  for split in ("test", "validation"):
    rows = roco.iter_split_captions(shared_data / "roco", split)
    chosen = [row for row in rows if roco.is_chest_xray(row["report"], row["concepts"])]
    counts[split] = len(chosen)
    phrase_counts[split] = sum(roco.CHEST_XRAY_PHRASE in row["report"].lower() for row in rows)
    for row in chosen:  # every chosen caption names a chest radiograph and no other modality
      assert re.search(r"chest|thora|CXR", row["report"], re.IGNORECASE)
      assert not re.search(r"\b(CT|MRI)\b|computed tomograph|ultraso", row["report"])
    # The deck's phrase, where no other modality is named, is always chosen.
    for row in rows:
      if (
        roco.CHEST_XRAY_PHRASE in row["report"].lower()
        and not roco.chest.OTHER_MODALITY.search(row["report"])
        and not set(row["concepts"]) & roco.chest.OTHER_MODALITY_CUIS.keys()
      ):
        assert roco.is_chest_xray(row["report"], row["concepts"]), row
  print(f"chest_xray subset on ROCO v1 radiology: {counts}; literal 'chest x-ray': {phrase_counts}")
  # The counts chest.py documents (the deck: about 200 / 200 for the phrase alone).
  assert counts == {"test": 401, "validation": 398}
  assert phrase_counts == {"test": 199, "validation": 222}


def test_chest_rule_cases():
  assert roco.is_chest_xray("Chest X-ray showing a large left-sided pneumothorax.")
  assert roco.is_chest_xray(" PA chest radiograph: cardiomegaly.")
  assert roco.is_chest_xray("X-ray of the chest on admission.")
  assert roco.is_chest_xray("Initial CXR.")
  assert not roco.is_chest_xray("Chest CT showing a mass.")
  assert not roco.is_chest_xray("Coronary chest X-ray computed tomography (mediastinal window).")
  assert not roco.is_chest_xray("Abdominal X-ray. SEMS was placed.")
  # Concepts: another modality vetoes; curated plain X-ray + chest selects whatever the caption.
  assert not roco.is_chest_xray("Chest X-ray.", ["C0040405"])
  assert roco.is_chest_xray("PA view on admission.", [roco.PLAIN_XRAY_CUI, roco.CHEST_CUI], curated_concepts=True)
  assert not roco.is_chest_xray("PA view on admission.", [roco.PLAIN_XRAY_CUI, roco.CHEST_CUI])


# Building: the official ROCOv2 layout, the parquet layout and ROCO v1, with real JPEGs.


def _rocov2_layout(folder: pathlib.Path, lines, jpegs) -> dict[str, list[str]]:
  """Official layout from the real rows: train 1-14, valid 15-22, test 23-30, plus bad rows.

  train: row 2 repeated (duplicate id), an empty caption, row 5 without its image, row 7's image
  truncated (unreadable). Returns split -> ids with a good image and caption, in order.
  """
  folder.mkdir()
  parts = {"train": lines[:14], "valid": lines[14:22], "test": lines[22:]}
  parts["train"] = parts["train"] + [lines[1], "ROCOv2_2023_empty_000001,\n"]
  kept, count = {}, 0
  for name, rows in parts.items():
    (folder / f"{name}_captions.csv").write_text("ID,Caption\n" + "".join(rows), encoding="utf-8")
    (folder / name).mkdir()
    kept[name] = []
    for row in rows:
      image_id = row.split(",", 1)[0]
      data = jpegs[count % len(jpegs)]
      count += 1
      if image_id == "ROCOv2_2023_test_000005":
        continue  # missing image
      if image_id == "ROCOv2_2023_test_000007":
        data = data[: len(data) // 3]  # truncated JPEG
      (folder / name / f"{image_id}.jpg").write_bytes(data)
      if image_id not in kept[name] and image_id not in ("ROCOv2_2023_test_000007", "ROCOv2_2023_empty_000001"):
        kept[name].append(image_id)
  (folder / "train_concepts.csv").write_text(
    "ID,CUIs\nROCOv2_2023_test_000001,C0040405;C0817096\nROCOv2_2023_test_000008,C1306645;C0817096\n", encoding="utf-8"
  )
  return {"train": kept["train"], "validation": kept["valid"], "test": kept["test"]}


@pytest.fixture(scope="module")
def rocov2_build(tmp_path_factory, head30_lines, jpegs):
  manual = tmp_path_factory.mktemp("rocov2") / "manual"
  kept = _rocov2_layout(manual, head30_lines, jpegs)
  data_dir = tmp_path_factory.mktemp("tfds")
  summary = roco.prepare("rocov2", manual, data_dir, num_threads=2)
  return manual, data_dir, kept, summary


def test_rocov2_build_counts_and_skips(rocov2_build, head30_lines):
  manual, _, kept, summary = rocov2_build
  assert summary["dataset"] == "rocov2/all" and summary["layout"] == "rocov2_csv"
  assert summary["split_sizes"] == {split: len(ids) for split, ids in kept.items()}
  train = summary["splits"]["train"]
  assert train["num_read"] == 16 and train["num_kept"] == len(kept["train"]) == 12
  assert train["skipped"] == {"duplicate_id": 1, "empty_caption": 1, "missing_image": 1, "unreadable_image": 1}
  assert train["examples"]["duplicate_id"] == ["ROCOv2_2023_test_000002"]
  assert train["examples"]["missing_image"] == ["ROCOv2_2023_test_000005"]
  assert train["examples"]["unreadable_image"][0].startswith("ROCOv2_2023_test_000007 (")
  assert "ROCOv2_2023_test_000007.jpg" in train["examples"]["unreadable_image"][0]
  assert summary["splits"]["validation"]["skipped"] == {} and summary["splits"]["test"]["num_read"] == 8
  text = roco.format_summary(summary)
  assert "train: 16 read, 12 kept, 4 skipped" in text
  assert json.loads(text.splitlines()[-1]) == json.loads(json.dumps(summary))


def test_rocov2_source_records(rocov2_build, shared_data):
  manual, data_dir, kept, _ = rocov2_build
  captions = dict(roco.read_rocov2_captions(shared_data / HEAD30))
  source, info = datasets.make_source({"name": "rocov2", "data_dir": str(data_dir)}, "validation")
  assert (info.num_views, info.num_examples, info.label_names) == (1, len(kept["validation"]), None)
  assert [source[i]["id"] for i in range(len(source))] == kept["validation"]
  for index in range(len(source)):
    record = source[index]
    assert record["report"] == captions[record["id"]]  # leading spaces and quotes intact
    assert record["images"] == [(manual / "valid" / f"{record['id']}.jpg").read_bytes()]
    assert record["image_ids"] == [record["id"]]
  train, _ = datasets.make_source({"name": "rocov2", "data_dir": str(data_dir)}, "train")
  by_id = {train[i]["id"]: train[i] for i in range(len(train))}
  assert by_id["ROCOv2_2023_test_000001"]["concepts"] == ["C0040405", "C0817096"]
  assert by_id["ROCOv2_2023_test_000002"]["concepts"] == []


def test_rocov2_pipeline_with_wordpiece(rocov2_build, shared_data):
  _, data_dir, _, _ = rocov2_build
  data = {
    "name": "rocov2",
    "data_dir": str(data_dir),
    "cleaning": "none",
    "tokenizer": str(shared_data / "text" / "bert-base-uncased-vocab.txt"),
  }
  source, _ = datasets.make_source(data, "test")
  tokenizer = datasets.load_or_build_tokenizer(data, source)
  batches = list(
    pipeline.make_dataset(
      source,
      tokenizer,
      transforms.Preprocessing(image_size=32),
      batch_size=4,
      max_length=80,
      train=False,
      cleaning="none",
      shard_index=0,
      shard_count=1,
    )
  )
  assert batches[0]["images"].shape == (4, 1, 32, 32, 3) and batches[0]["tokens"].shape == (4, 80)
  assert batches[0]["tokens"][0, 0] == tokenizer.encode("", 80)[0]
  assert sum(int(batch["mask"].sum()) for batch in batches) == len(source)


def test_parquet_layout_gives_the_same_records(rocov2_build, tmp_path):
  manual, data_dir, kept, _ = rocov2_build
  hf = tmp_path / "hf"
  (hf / "data").mkdir(parents=True)
  for split, name in (("train", "train"), ("validation", "valid"), ("test", "test")):
    rows = roco.read_rocov2_captions(manual / f"{name}_captions.csv")
    images = [
      {
        "bytes": (manual / name / f"{i}.jpg").read_bytes() if (manual / name / f"{i}.jpg").is_file() else None,
        "path": f"{i}.jpg",
      }
      for i, _ in rows
    ]
    table = pa.table(
      {
        "image": images,
        "image_id": [i for i, _ in rows],
        "caption": [c for _, c in rows],
        "cui": [["C1306645", "C0817096"] if i.endswith(("08", "16")) else [] for i, _ in rows],
      }
    )
    half = (len(rows) + 1) // 2  # two files per split, small row groups
    pq.write_table(table.slice(0, half), hf / "data" / f"{split}-00000-of-00002.parquet", row_group_size=3)
    pq.write_table(table.slice(half), hf / "data" / f"{split}-00001-of-00002.parquet", row_group_size=3)
  assert roco.detect_layout(hf) == "rocov2_parquet"
  parquet_dir = tmp_path / "tfds"
  summary = roco.prepare("rocov2", hf, parquet_dir, num_threads=2)
  assert summary["layout"] == "rocov2_parquet"
  assert summary["splits"]["train"]["skipped"] == {
    "duplicate_id": 1,
    "empty_caption": 1,
    "missing_image": 1,
    "unreadable_image": 1,
  }
  for split in ("train", "validation", "test"):
    csv_source = roco.RocoSource("rocov2", data_dir, "all", split)
    parquet_source = roco.RocoSource("rocov2", parquet_dir, "all", split)
    assert len(parquet_source) == len(csv_source) == len(kept[split])
    for index in range(len(csv_source)):
      a, b = csv_source[index], parquet_source[index]
      assert (a["id"], a["report"], a["images"]) == (b["id"], b["report"], b["images"])
  # Curated concepts select rows 8 ("Arrow shows ULP at the distal arch.") and 16 (an abdominal
  # X-ray, by its caption); the captions select 15 and 30.
  chest = roco.prepare("rocov2", hf, parquet_dir, subset="chest_xray", num_threads=2)
  chosen = {
    split: [roco.RocoSource("rocov2", parquet_dir, "chest_xray", split)[i]["id"] for i in range(size)]
    for split, size in chest["split_sizes"].items()
  }
  assert chosen == {
    "train": ["ROCOv2_2023_test_000008"],
    "validation": ["ROCOv2_2023_test_000015", "ROCOv2_2023_test_000016"],
    "test": ["ROCOv2_2023_test_000030"],
  }


def _roco_v1_layout(shared_data, folder, jpegs, per_split=40):
  """ROCO v1 layout from the real files: train from validation's rows, each split's first rows
  whose caption names a chest radiograph and as many others, with JPEGs named as licences.txt says."""
  chosen = {}
  for split, source_split in (("train", "validation"), ("validation", "validation"), ("test", "test")):
    radiology = shared_data / "roco" / source_split / "radiology"
    lines = (radiology / "captions.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    offset = 0 if split != "validation" else 4000  # train and validation differ
    chest_lines = [l for l in lines[offset:] if roco.is_chest_xray(l.split("\t", 1)[1])][: per_split // 2]
    other_lines = [l for l in lines[offset:] if not roco.is_chest_xray(l.split("\t", 1)[1])][: per_split // 2]
    rows = chest_lines + other_lines
    ids = {l.split("\t", 1)[0] for l in rows}
    out = folder / split / "radiology"
    (out / "images").mkdir(parents=True)
    (out / "captions.txt").write_text("".join(rows), encoding="utf-8")
    for name in ("keywords.txt", "cuis.txt", "semtypes.txt"):
      kept_lines = [
        l
        for l in (radiology / name).read_text(encoding="utf-8").splitlines(keepends=True)
        if l.split("\t", 1)[0] in ids
      ]
      (out / name).write_text("".join(kept_lines), encoding="utf-8")
    licence_lines = (radiology / "licences.txt").read_text(encoding="utf-8").splitlines(keepends=True)
    (out / "licences.txt").write_text(
      licence_lines[0] + "".join(l for l in licence_lines[1:] if l.split(",", 1)[0] in ids), encoding="utf-8"
    )
    licences = roco.read_roco_v1_licences(out / "licences.txt")
    for number, image_id in enumerate(sorted(ids)):
      (out / "images" / licences[image_id][0]).write_bytes(jpegs[number % len(jpegs)])
    chosen[split] = rows
  return chosen


def test_roco_v1_build_and_chest_subset(shared_data, tmp_path, jpegs):
  chosen = _roco_v1_layout(shared_data, tmp_path / "data", jpegs)
  data_dir = tmp_path / "tfds"
  summary = roco.prepare("roco", tmp_path, data_dir, subset="chest_xray", num_threads=2)
  assert summary["layout"] == "roco_v1"
  for split, rows in chosen.items():
    concepts = {row["id"]: row["concepts"] for row in roco.iter_split_captions(tmp_path, split)}
    assert len(concepts) == len(rows) and any(concepts.values())
    expected = [
      l.split("\t", 1)[0]
      for l in rows
      if roco.is_chest_xray(l.rstrip("\n").split("\t", 1)[1], concepts[l.split("\t", 1)[0]])
    ]
    report = summary["splits"][split]
    assert (report["num_read"], report["num_kept"], report["selected_out"]) == (
      len(rows),
      len(expected),
      len(rows) - len(expected),
    )
    source = roco.RocoSource("roco", data_dir, "chest_xray", split)
    assert [source[i]["id"] for i in range(len(source))] == expected
  record = roco.RocoSource("roco", data_dir, "chest_xray", "test")[0]
  line = next(l for l in chosen["test"] if l.startswith(record["id"] + "\t"))
  assert record["report"] == line.rstrip("\n").split("\t", 1)[1]
  assert record["licence"].startswith("CC") and record["keywords"]
  image = image_lib.decode_image(record["images"][0], record["id"])
  assert image.shape == (40, 40, 3)


def test_prepare_command_line(rocov2_build, tmp_path, capsys):
  manual, _, _, _ = rocov2_build
  data_dir = tmp_path / "tfds"
  assert (
    prepare.main(
      [
        "rocov2",
        "--manual-dir",
        str(manual),
        "--data-dir",
        str(data_dir),
        "--subset",
        "chest_xray",
        "--num-threads",
        "1",
      ]
    )
    == 0
  )
  out = capsys.readouterr().out
  assert "rocov2/chest_xray" in out and "train: 16 read," in out
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["splits"]["train"]["skipped"]["missing_image"] == 1
  # A missing split file: one line naming it, exit status 2.
  (tmp_path / "partial").mkdir()
  (tmp_path / "partial" / "train_captions.csv").write_bytes((manual / "train_captions.csv").read_bytes())
  assert prepare.main(["rocov2", "--manual-dir", str(tmp_path / "partial"), "--data-dir", str(tmp_path / "t2")]) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and re.search(r"valid_captions\.csv: split file not found", err)


def test_empty_split_is_a_counted_error(tmp_path, head30_lines, jpegs):
  manual = tmp_path / "manual"
  _rocov2_layout(manual, head30_lines, jpegs)
  for path in (manual / "test").glob("*.jpg"):
    path.unlink()
  with pytest.raises(tfds_common.EmptySplitError, match=r"rocov2/all: split 'test' has no image") as error:
    roco.prepare("rocov2", manual, tmp_path / "tfds")
  assert "test: 8 read, 0 kept, 8 skipped [missing_image 8" in error.value.counts


def test_not_prepared_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"cxrjax prepare roco --manual-dir DIR .* --subset chest_xray"):
    datasets.make_source({"name": "roco", "data_dir": str(tmp_path), "subset": "chest_xray"}, "train")
