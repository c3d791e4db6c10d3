"""Tests for `cxrjax prepare` (cxrjax/data/prepare.py) and the iu_xray TFDS builder.

Built on the real IU X-ray fixture: the real report XMLs of a few studies, each image id
linked to one of the four real Open-i PNGs (the fixture has only four images).
"""

import argparse
import io
import json
import pathlib
import re
import tarfile

import numpy as np
from PIL import Image
import pytest

from cxrjax.data import images
from cxrjax.data import iu_xray
from cxrjax.data import prepare
from cxrjax.data import splits
from cxrjax.data import tfds_common
from cxrjax.text import cleaning
from cxrjax.text import tokenizers

# CXR3 has no findings; R2Gen puts 4 in val, 2, 12 and 13 in test, the others in train,
# and leaves 44 out.
STUDY_NUMBERS = tuple(range(1, 16)) + (44,)
COLOUR_IMAGE = "CXR8_IM-2333-1001"


def make_openi_layout(
  iu_dir: pathlib.Path, dest: pathlib.Path, numbers=STUDY_NUMBERS, colour_image: str | None = None
) -> pathlib.Path:
  """An Open-i layout with the real XMLs of `numbers`, every image id linked to a real PNG.

  The Kaggle view labels and R2Gen's annotation.json are linked too. `colour_image` is
  written instead as a PNG whose channels differ.
  """
  reports, image_dir = dest / "ecgen-radiology", dest / "images"
  reports.mkdir(parents=True)
  image_dir.mkdir()
  pngs = sorted((iu_dir / "images").glob("*.png"))
  count = 0
  with tarfile.open(iu_dir / "NLMCXR_reports.tgz") as tar:
    for number in numbers:
      data = tar.extractfile(f"ecgen-radiology/{number}.xml").read()
      (reports / f"{number}.xml").write_bytes(data)
      for image_id in re.findall(r'<parentImage id="([^"]+)"', data.decode()):
        if image_id == colour_image:
          rgb = images.load_image(pngs[0])
          rgb[..., 0] //= 2  # a red channel that differs from the others
          Image.fromarray(rgb).save(image_dir / f"{image_id}.png")
        else:
          (image_dir / f"{image_id}.png").symlink_to(pngs[count % len(pngs)])
        count += 1
  (dest / "kaggle_csv").symlink_to(iu_dir / "kaggle_csv")
  (dest / "r2gen").symlink_to(iu_dir / "r2gen")
  return dest


@pytest.fixture(scope="module")
def iu_dir(shared_data):
  return shared_data / "iu_xray"


@pytest.fixture(scope="module")
def manual_dir(iu_dir, tmp_path_factory):
  return make_openi_layout(iu_dir, tmp_path_factory.mktemp("manual"), colour_image=COLOUR_IMAGE)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


@pytest.fixture(scope="module")
def random_summary(manual_dir, data_dir):
  return prepare.prepare_iu_xray(manual_dir, data_dir, config="random", num_threads=2)


def _reports(data_dir, config, split):
  source = iu_xray.IUXraySource(data_dir, config, split)
  return [source[i] for i in range(len(source))]


def test_random_config_splits_and_counts(random_summary, manual_dir, data_dir):
  records, report = iu_xray.load_studies(manual_dir)
  build = random_summary["build"]
  assert build["parse_report"]["num_studies"] == len(STUDY_NUMBERS)
  assert build["parse_report"]["skipped"] == report.skipped == {"empty_report": 1}
  assert build["parse_report"]["examples"]["empty_report"] == ["CXR3"]
  expected = splits.random_split([r["id"] for r in records], seed=iu_xray.RANDOM_SPLIT_SEED)
  assert (
    random_summary["split_sizes"]
    == build["split_sizes"]
    == {"train": len(expected["train"]), "validation": len(expected["val"]), "test": len(expected["test"])}
  )
  assert sum(random_summary["split_sizes"].values()) == len(records) == len(STUDY_NUMBERS) - 1
  for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
    assert sorted(r["id"] for r in _reports(data_dir, "random", split)) == sorted(expected[name])
  assert build["unassigned"] == 0
  assert build["colour_images"] == 1 and build["colour_image_examples"] == [COLOUR_IMAGE]


def test_records_round_trip(random_summary, manual_dir, data_dir):
  originals = {r["id"]: r for r in iu_xray.load_studies(manual_dir)[0]}
  stored = [r for split in iu_xray.TFDS_SPLITS for r in _reports(data_dir, "random", split)]
  assert len(stored) == len(originals)
  for record in stored:
    original = originals[record["id"]]
    for key in (
      "image_ids",
      "views",
      "findings",
      "impression",
      "indication",
      "comparison",
      "mesh",
      "mesh_automatic",
      "report",
    ):
      assert record[key] == original[key], (record["id"], key)
    # Grayscale PNGs of the source images: the same pixels as the RGB files' channels.
    for png, path, image_id in zip(record["images"], original["images"], record["image_ids"]):
      with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.mode == "L"
        gray = np.asarray(image)
      rgb = images.load_image(path)
      if image_id == COLOUR_IMAGE:
        np.testing.assert_array_equal(gray, np.asarray(Image.fromarray(rgb).convert("L")))
      else:
        np.testing.assert_array_equal(gray, rgb[..., 0])
  assert any(r["views"] == ["frontal", "lateral"] for r in stored)  # labels from kaggle_csv


def test_vocabulary_from_training_split_only(random_summary, data_dir):
  path = pathlib.Path(random_summary["vocabulary_path"])
  # The default cleaning and min count are those of the IU X-ray configs (r2gen, 3).
  assert path == iu_xray.vocabulary_path(data_dir, "random", "r2gen")
  assert path.parent == iu_xray.dataset_dir(data_dir, "random")
  vocabulary = tokenizers.WordVocabulary.from_json(path)
  train = [cleaning.clean_report(r["report"], "r2gen") for r in _reports(data_dir, "random", "train")]
  assert vocabulary == tokenizers.WordVocabulary.build(train, min_count=3, cleaning_style="r2gen")
  held_out = [
    cleaning.clean_report(r["report"], "r2gen")
    for split in ("validation", "test")
    for r in _reports(data_dir, "random", split)
  ]
  # Some words frequent in the held-out reports are not in the vocabulary.
  everything = tokenizers.WordVocabulary.build(train + held_out, min_count=3)
  assert set(everything.tokens) - set(vocabulary.tokens)
  stats = random_summary["vocabulary"]
  assert stats["vocabulary_size"] == len(vocabulary)
  assert set(stats["splits"]) == {"validation", "test"}
  assert 0.5 < stats["splits"]["test"]["token_coverage"] < 1.0
  assert json.loads(json.dumps(random_summary)) == random_summary


def test_main_reuses_dataset_and_prints_summary(random_summary, data_dir, capsys):
  # No --manual-dir: the built dataset is reused; a second cleaning adds its vocabulary.
  assert prepare.main(["iu_xray", "--data-dir", str(data_dir), "--cleaning", "drop_short_words"]) == 0
  out = capsys.readouterr().out
  sizes = random_summary["split_sizes"]
  assert (
    f"splits: train {sizes['train']}, validation {sizes['validation']}, test {sizes['test']}; kept but in no split: 0"
  ) in out
  assert f"studies: {len(STUDY_NUMBERS)} read, {len(STUDY_NUMBERS) - 1} kept, 1 skipped" in out
  assert "skipped empty_report: 1 (e.g. CXR3)" in out
  assert "issues found (skipped or kept): empty_report 1" in out
  assert f"colour images converted to gray: 1 (e.g. {COLOUR_IMAGE})" in out
  assert re.search(r"vocabulary: \d+ tokens \(cleaning drop_short_words, sections findings, min count 3", out)
  assert re.search(
    r"test: [\d.]+% of \d+ word tokens and [\d.]+% of \d+ distinct words seen in "
    r"training; <unk> rate [\d.]+%",
    out,
  )
  summary = json.loads(out.strip().splitlines()[-1])
  assert summary["split_sizes"] == sizes and summary["cleaning"] == "drop_short_words"
  vocabulary = tokenizers.WordVocabulary.from_json(iu_xray.vocabulary_path(data_dir, "random", "drop_short_words"))
  assert vocabulary.cleaning_style == "drop_short_words" and len(vocabulary) == summary["vocabulary"]["vocabulary_size"]


def test_r2gen_config(manual_dir, tmp_path, iu_dir):
  summary = prepare.prepare_iu_xray(manual_dir, tmp_path, config="r2gen", num_threads=2)
  r2gen = iu_xray.r2gen_split(iu_dir / "r2gen" / "annotation.json")
  kept = {r["id"] for r in iu_xray.load_studies(manual_dir)[0]}
  for split, name in (("train", "train"), ("validation", "val"), ("test", "test")):
    ids = sorted(r["id"] for r in _reports(tmp_path, "r2gen", split))
    assert ids == sorted(set(r2gen[name]) & kept)
    assert summary["build"]["split_studies_not_kept"][split] == len(set(r2gen[name]) - kept)
  assert {r["id"] for r in _reports(tmp_path, "r2gen", "validation")} == {"CXR4"}
  assert summary["build"]["unassigned"] == 1 and summary["build"]["unassigned_examples"] == ["CXR44"]


def test_add_parser_wires_into_a_cli():
  parser = argparse.ArgumentParser(prog="cxrjax")
  prepare.add_parser(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(
    [
      "prepare",
      "iu_xray",
      "--manual-dir",
      "m",
      "--data-dir",
      "d",
      "--split",
      "r2gen",
      "--cleaning",
      "r2gen",
      "--sections",
      "findings_impression",
    ]
  )
  assert (args.dataset, args.split, args.cleaning, args.min_count, args.sections) == (
    "iu_xray",
    "r2gen",
    "r2gen",
    3,
    "findings_impression",
  )
  defaults = parser.parse_args(["prepare", "iu_xray", "--data-dir", "d"])
  assert (defaults.split, defaults.cleaning, defaults.min_count, defaults.sections) == (
    "random",
    "r2gen",
    3,
    "findings",
  )
  assert args.manual_dir == pathlib.Path("m") and args.run is prepare._run
  with pytest.raises(SystemExit):
    parser.parse_args(["prepare", "iu_xray", "--data-dir", "d", "--min-count", "0"])
  with pytest.raises(SystemExit):
    parser.parse_args(["prepare", "phantom", "--data-dir", "d"])


def test_errors(iu_dir, tmp_path, capsys):
  assert prepare.main(["iu_xray", "--manual-dir", str(tmp_path / "absent"), "--data-dir", str(tmp_path / "data")]) == 2
  assert "manual folder not found" in capsys.readouterr().err
  assert prepare.main(["iu_xray", "--data-dir", str(tmp_path / "data")]) == 2
  err = capsys.readouterr().err
  assert "not built" in err and "pass --manual-dir" in err
  # Two kept studies cannot fill three splits.
  small = make_openi_layout(iu_dir, tmp_path / "small", numbers=(1, 2))
  with pytest.raises(tfds_common.EmptySplitError, match="split 'validation' has no study"):
    prepare.prepare_iu_xray(small, tmp_path / "data", config="random")
  with pytest.raises(FileNotFoundError, match="not prepared.*cxrjax prepare iu_xray"):
    iu_xray.IUXraySource(tmp_path / "data", "random", "train")


def test_corrupt_image_names_file_and_study(iu_dir, tmp_path, capsys):
  manual = make_openi_layout(iu_dir, tmp_path / "manual")
  corrupt = manual / "images" / "CXR5_IM-2117-1003002.png"
  corrupt.unlink()
  corrupt.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
  assert (
    prepare.main(["iu_xray", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "data"), "--num-threads", "1"])
    == 2
  )
  err = capsys.readouterr().err
  assert "study CXR5" in err and str(corrupt) in err and "cannot decode" in err


def test_partial_image_download_prints_counts_and_one_line_error(iu_dir, tmp_path, capsys):
  # The real 3,955 report XMLs with only the four real PNGs: CXR54 and CXR303 complete, CXR25 lacks
  # its lateral, every other study has no image on disk.
  manual = tmp_path / "manual"
  (manual / "images").mkdir(parents=True)
  (manual / "NLMCXR_reports.tgz").symlink_to(iu_dir / "NLMCXR_reports.tgz")
  for png in (iu_dir / "images").glob("*.png"):
    (manual / "images" / png.name).symlink_to(png)
  records, report = iu_xray.load_studies(manual)
  assert report.num_studies == 3955 and sorted(r["id"] for r in records) == ["CXR303", "CXR54"]
  assert report.skipped["missing_image"] == 1
  not_found = report.skipped["images_not_found"]
  assert sum(report.skipped.values()) == 3955 - 2

  with pytest.raises(tfds_common.EmptySplitError) as error:
    prepare.prepare_iu_xray(manual, tmp_path / "data", num_threads=1)
  assert isinstance(error.value, ValueError)
  assert prepare.main(["iu_xray", "--manual-dir", str(manual), "--data-dir", str(tmp_path / "data")]) == 2
  captured = capsys.readouterr()
  err = captured.err.strip()
  assert len(err.splitlines()) == 1 and "Traceback" not in captured.err
  assert err.startswith(
    "cxrjax prepare: error: iu_xray/random: split 'validation' has no study: 2 of 3,955 studies kept"
  )
  assert f"{not_found:,} of 3,955 studies have none of their image files in {manual / 'images'}" in err
  assert f"1 of 3,955 studies lack some of their image files in {manual / 'images'}" in err
  assert err.endswith("download NLMCXR_png.tgz (the Open-i PNGs) into the manual folder")
  # The counts read come first, on stdout.
  assert "IU X-ray (openi, " in captured.out and "3955 studies, 2 records" in captured.out
  assert f"images_not_found: {not_found} (skipped {not_found})" in captured.out
  assert "splits: train 1, validation 0, test 1" in captured.out
