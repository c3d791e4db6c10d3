"""IU X-ray's published protocols on the real fixtures: report sections (findings, R2Gen's; findings +
impression, ReXrank's) and `evaluate`'s ReXrank prediction file over R2Gen's 590 real test studies.

The Open-i layout holds the real report XMLs of every R2Gen test study and a few train and val studies, each
image id linked to a small PNG made from one of the four real Open-i images (the fixture has only four)."""

import json
import pathlib
import random
import re
import tarfile

from PIL import Image
import pytest

from cxrjax.jobs import evaluate, train
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import images as image_lib
from cxrjax.data import iu_xray, prepare, registry
from cxrjax.data.iu_xray import rexrank
from cxrjax.text import cleaning, tokenizers
from configs import iu_xray_attention


@pytest.fixture(scope="module")
def iu_dir(shared_data):
  return shared_data / "iu_xray"


@pytest.fixture(scope="module")
def annotation(iu_dir):
  return json.loads((iu_dir / "r2gen" / "annotation.json").read_text())


def _small_pngs(iu_dir: pathlib.Path, dest: pathlib.Path) -> list[pathlib.Path]:
  """The four real PNGs at 48x48 (decoding 1,200 full-size images would dominate the test's time)."""
  dest.mkdir(exist_ok=True)
  paths = []
  for path in sorted((iu_dir / "images").glob("*.png")):
    small = dest / path.name
    Image.fromarray(image_lib.load_image(path)).resize((48, 48)).save(small)
    paths.append(small)
  return paths


@pytest.fixture(scope="module")
def manual_dir(iu_dir, annotation, tmp_path_factory):
  """Open-i layout: R2Gen's 590 test studies, its first 8 train and 2 val studies, real XMLs."""
  dest = tmp_path_factory.mktemp("manual")
  pngs = _small_pngs(iu_dir, tmp_path_factory.mktemp("pngs"))
  entries = annotation["train"][:8] + annotation["val"][:2] + annotation["test"]
  numbers = [entry["id"].split("_")[0][3:] for entry in entries]
  reports, image_dir = dest / "ecgen-radiology", dest / "images"
  reports.mkdir()
  image_dir.mkdir()
  count = 0
  with tarfile.open(iu_dir / "NLMCXR_reports.tgz") as tar:
    for number in numbers:
      data = tar.extractfile(f"ecgen-radiology/{number}.xml").read()
      (reports / f"{number}.xml").write_bytes(data)
      for image_id in re.findall(r'<parentImage id="([^"]+)"', data.decode()):
        (image_dir / f"{image_id}.png").symlink_to(pngs[count % len(pngs)])
        count += 1
  (dest / "kaggle_csv").symlink_to(iu_dir / "kaggle_csv")
  (dest / "r2gen").symlink_to(iu_dir / "r2gen")
  return dest


@pytest.fixture(scope="module")
def data_dir(manual_dir, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.prepare_iu_xray(manual_dir, data_dir, config="r2gen", report_sections="findings_impression", num_threads=2)
  return data_dir


@pytest.fixture(scope="module")
def evaluated(data_dir, tmp_path_factory):
  """A smoke attention run (one step) on findings + impression, evaluated on the test split with the
  leaderboard file written."""
  config = iu_xray_attention.get_config("smoke,split=r2gen,sections=findings_impression")
  config.data.data_dir = str(data_dir)
  config.train.update(num_steps=1, eval_every=1, checkpoint_every=1, log_every=1)
  config.eval.max_val_examples = 2
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(config, workdir)
  path = workdir / "rexrank_iu_xray_test.json"
  output = evaluate.evaluate(
    str(workdir),
    "test",
    checkpoint=workdir_lib.LATEST,
    beam_size=1,
    meteor=False,
    baselines_too=False,
    leaderboard_json=str(path),
  )
  return workdir, path, output


def test_every_r2gen_study_has_its_r2gen_id_whatever_the_layout(iu_dir, annotation):
  """Open-i and Kaggle records ("CXR<n>") map to R2Gen's ids, from annotation.json: image-id rules would miss
  R2Gen's names of study 1 and of the studies with two image series."""
  ids = iu_xray.r2gen_study_ids(iu_dir / "r2gen" / "annotation.json")
  assert len(ids) == 2955 and set(ids.values()) == {e["id"] for split in annotation.values() for e in split}
  assert ids["CXR1"] == "CXR1_1_IM-0001" and ids["CXR212"] == "CXR212_IM-0746-1001"
  for layout_dir in (iu_dir, iu_dir / "kaggle_csv"):
    records, _ = iu_xray.load_studies(layout_dir, check_images=False)
    test = {r["id"] for r in records} & {
      uid for uid, r2gen in ids.items() if r2gen in {e["id"] for e in annotation["test"]}
    }
    assert len(test) == 590


def test_sections_differ_exactly_as_named_on_real_reports(data_dir, annotation):
  """Findings only is R2Gen's annotation.json report; findings + impression is the two real sections joined
  by a space, and the impression is all that differs."""
  r2gen_reports = {e["id"].split("_")[0]: e["report"] for split in annotation.values() for e in split}
  for split in ("train", "validation", "test"):
    findings = iu_xray.IUXraySource(data_dir, "r2gen", split, "findings")
    both = iu_xray.IUXraySource(data_dir, "r2gen", split, "findings_impression")
    assert len(findings) == len(both) > 0
    with_impression = 0
    for index in range(len(findings)):
      short, long = findings[index], both[index]
      assert short["id"] == long["id"] and short["findings"] and short["report"] == short["findings"]
      assert short["report"] == r2gen_reports[short["id"]].strip()
      expected = f"{short['findings']} {short['impression']}" if short["impression"] else short["findings"]
      assert long["report"] == expected
      with_impression += bool(short["impression"])
    assert with_impression == len(findings)  # Every R2Gen study used here has an impression.
  assert both.references == {
    "dataset": "iu_xray",
    "split_family": "r2gen",
    "split": "test",
    "report_sections": ["findings", "impression"],
    "layout": "openi",
  }
  with pytest.raises(registry.DataConfigError, match="config.data.report_sections='impression'"):
    iu_xray.IUXraySource(data_dir, "r2gen", "test", "impression")


def test_vocabulary_is_built_from_the_chosen_sections(data_dir):
  """The findings + impression vocabulary is the one built from those training reports, and sits under its own
  name beside the findings one's place."""
  path = iu_xray.vocabulary_path(data_dir, "r2gen", "r2gen", "findings_impression")
  assert path.name == "vocabulary.r2gen.findings_impression.json"
  assert iu_xray.vocabulary_path(data_dir, "r2gen", "r2gen").name == "vocabulary.r2gen.json"
  source = iu_xray.IUXraySource(data_dir, "r2gen", "train", "findings_impression")
  train_reports = [cleaning.clean_report(source[i]["report"], "r2gen") for i in range(len(source))]
  vocabulary = tokenizers.WordVocabulary.from_json(path)
  assert vocabulary == tokenizers.WordVocabulary.build(train_reports, min_count=3, cleaning_style="r2gen")
  findings_only = [cleaning.clean_report(source[i]["findings"], "r2gen") for i in range(len(source))]
  assert vocabulary != tokenizers.WordVocabulary.build(findings_only, min_count=3, cleaning_style="r2gen")
  assert source.metadata["build"]["r2gen_ids"]["CXR2384"] == "CXR2384_IM-0942"


def test_leaderboard_file_is_the_r2gen_test_split_paired_by_id(evaluated, iu_dir, annotation):
  workdir, path, output = evaluated
  leaderboard = json.loads(path.read_text())
  predictions = [json.loads(line) for line in (workdir / "eval/test/predictions.jsonl").read_text().splitlines()]
  r2gen_ids = iu_xray.r2gen_study_ids(iu_dir / "r2gen" / "annotation.json")
  # Exactly R2Gen's test ids: the 590 the leaderboard's test file is keyed by.
  assert set(leaderboard) == {e["id"] for e in annotation["test"]} == {r2gen_ids[p["id"]] for p in predictions}
  assert len(predictions) == len(leaderboard) == 590
  # Each value is that study's prediction and its real sections, which ReXrank's ground truth is made of.
  originals = {r["id"]: r for r in iu_xray.load_studies(iu_dir, check_images=False)[0]}
  for prediction in predictions:
    entry = leaderboard[r2gen_ids[prediction["id"]]]
    original = originals[prediction["id"]]
    assert entry == {
      "model_prediction": prediction["generated"],
      "section_findings": original["findings"],
      "section_impression": original["impression"],
    }
  metrics = json.loads((workdir / "eval/test/metrics.json").read_text())
  assert metrics["references"]["report_sections"] == ["findings", "impression"]
  assert metrics["references"]["split_family"] == "r2gen"
  assert metrics["leaderboard_json"] == {"leaderboard": "ReXrank", "path": str(path), "num_studies": 590}
  assert output["scores"]["num_studies"] == 590


def test_predictions_are_paired_by_id_not_by_order(data_dir):
  """Records in shuffled order, each with its own text: every text lands under its own study's R2Gen id."""
  source = iu_xray.IUXraySource(data_dir, "r2gen", "test", "findings_impression")
  ids = [source[i]["id"] for i in range(len(source))]
  records = [{"id": study_id, "generated": f"report of {study_id}"} for study_id in ids]
  random.Random(0).shuffle(records)
  leaderboard = rexrank.leaderboard_predictions(source, records)
  r2gen_ids = source.metadata["build"]["r2gen_ids"]
  assert list(leaderboard) == [r2gen_ids[i] for i in ids]
  for study_id in ids:
    assert leaderboard[r2gen_ids[study_id]]["model_prediction"] == f"report of {study_id}"
  with pytest.raises(rexrank.LeaderboardError, match="has no prediction"):
    rexrank.leaderboard_predictions(source, records[1:])
  with pytest.raises(rexrank.LeaderboardError, match="predicted twice"):
    rexrank.leaderboard_predictions(source, records + records[:1])


@pytest.mark.parametrize(
  "field, value, split, max_examples, message",
  [
    ("report_sections", "findings", "test", None, "config.data.report_sections='findings': ReXrank scores"),
    ("tfds_config", "random", "test", None, "config.data.tfds_config='random'"),
    (None, None, "val", None, "--split val"),
    (None, None, "test", 5, "--max-examples 5"),
  ],
)
def test_leaderboard_file_refused_off_protocol(evaluated, field, value, split, max_examples, message, tmp_path):
  """Off R2Gen's test split or without impressions, `evaluate` refuses before predicting, one line naming
  the field, and writes nothing."""
  workdir, _, _ = evaluated
  config_path = workdir / "config.json"
  original = config_path.read_text()
  try:
    if field:
      config = workdir_lib.read_config(workdir)
      config.data[field] = value
      config_path.write_text(config.to_json(indent=2))
    path = tmp_path / "leaderboard.json"
    with pytest.raises(rexrank.LeaderboardError, match=re.escape(message)) as error:
      evaluate.evaluate(
        str(workdir),
        split,
        checkpoint=workdir_lib.LATEST,
        max_examples=max_examples,
        meteor=False,
        baselines_too=False,
        leaderboard_json=str(path),
      )
    assert "\n" not in str(error.value) and not path.exists()
  finally:
    config_path.write_text(original)


def test_r2gen_layout_has_no_impressions(iu_dir, annotation, tmp_path):
  """A build from R2Gen's own files (findings only) refuses findings + impression instead of scoring
  findings under that name."""
  manual = tmp_path / "r2gen_layout"
  manual.mkdir()
  (manual / "annotation.json").symlink_to(iu_dir / "r2gen" / "annotation.json")
  pngs = _small_pngs(iu_dir, tmp_path / "pngs")
  for entry in (annotation["train"][0], annotation["val"][0], annotation["test"][0]):
    for index, image_path in enumerate(entry["image_path"]):
      (manual / "images" / image_path).parent.mkdir(parents=True, exist_ok=True)
      (manual / "images" / image_path).symlink_to(pngs[index])
  prepare.prepare_iu_xray(manual, tmp_path / "tfds", config="r2gen", num_threads=2)
  assert iu_xray.IUXraySource(tmp_path / "tfds", "r2gen", "test")[0]["impression"] == ""
  with pytest.raises(registry.DataConfigError, match="built from R2Gen's annotation.json"):
    iu_xray.IUXraySource(tmp_path / "tfds", "r2gen", "test", "findings_impression")
