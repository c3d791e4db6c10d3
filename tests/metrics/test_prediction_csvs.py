"""Prediction CSVs of ChestX-ray14 classifiers: writing, reading, scoring against the real label file
(metrics/classification.py), and the `cxrjax auroc` command."""

import argparse
import json

import numpy as np
import pytest

from cxrjax import cli
from cxrjax.data import chestxray14
from cxrjax.metrics import classification as auroc
from tests.data.test_chestxray14 import FULL_LABELS, _write, full_entries  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def test_labels(shared_data, full_entries):
  """The official test images and their 14-finding labels [25596, 14]."""
  test_list = chestxray14.read_image_list(shared_data / "nih_chestxray14/official_split/test_list.txt")
  findings = {e.image_index: e.findings for e in full_entries}
  return test_list, np.stack([chestxray14.labels_vector(findings[name]) for name in test_list])


def test_auroc_on_real_labels(tmp_path, shared_data, test_labels):
  from sklearn.metrics import roc_auc_score

  names, labels = test_labels
  rng = np.random.default_rng(0)
  informative = np.clip(0.5 * labels + 0.5 * rng.random(labels.shape), 0, 1)
  random = rng.random(labels.shape)
  # Extra columns (No Finding, a note) are ignored; column order does not matter.
  classes = list(chestxray14.FINDINGS[::-1]) + ["No Finding"]
  extra = rng.random((len(names), 1))
  path = auroc.write_predictions_csv(
    tmp_path / "good.csv", names, np.concatenate([informative[:, ::-1], extra], axis=1), classes
  )
  result = auroc.score_predictions(
    path, shared_data / FULL_LABELS, shared_data / "nih_chestxray14/official_split/test_list.txt"
  )
  assert result["num_images"] == 25_596 and result["positives"]["Hernia"] == int(labels[:, 13].sum())
  for index, name in enumerate(chestxray14.FINDINGS):
    # Values are written with 8 significant digits.
    assert result["per_class"][name] == pytest.approx(roc_auc_score(labels[:, index], informative[:, index]), abs=1e-6)
  assert result["mean"] > 0.9
  path = auroc.write_predictions_csv(tmp_path / "random.csv", names, random, chestxray14.FINDINGS)
  result = auroc.score_predictions(path, shared_data / FULL_LABELS)
  assert abs(result["mean"] - 0.5) < 0.02
  assert all(abs(v - 0.5) < 0.1 for v in result["per_class"].values())


def test_auroc_bad_input(tmp_path):
  labels = _write(
    tmp_path / "labels.csv",
    [
      "00000001_000.png,Mass,0,1,50,M,PA,1,1,0.1,0.1",
      "00000002_000.png,No Finding,0,2,50,M,PA,1,1,0.1,0.1",
      "00000003_000.png,Mass|Edema,0,3,50,M,PA,1,1,0.1,0.1",
    ],
  )
  columns = ",".join("prob_" + name for name in chestxray14.FINDINGS)
  values = ",".join(["0.5"] * 14)
  good = [f"00000001_000.png,{values}", f"00000002_000.png,{values}"]
  predictions = _write(tmp_path / "p.csv", good, header="Image Index," + columns)
  result = auroc.score_predictions(predictions, labels)
  assert result["num_images"] == 2 and result["per_class"]["Mass"] == 0.5
  assert np.isnan(result["per_class"]["Edema"]) and "Edema" in result["excluded"]

  cases = [
    (["00000001_000.png," + ",".join(["nan"] + ["0.5"] * 13)], None, r"line 2: prob_Atelectasis = 'nan'"),
    (["00000001_000.png," + ",".join(["1.5"] + ["0.5"] * 13)], None, "not a probability"),
    (good + [f"00000009_000.png,{values}"], None, r"labels.csv: has no row for 1 of the 3 .*00000009_000"),
    (good + [good[0]], None, "line 4: image 00000001_000.png repeats line 2"),
    (good, ["00000003_000.png"], r"p.csv: no prediction for 1 of the 1 images in .*list.txt"),
  ]
  for rows, listed, message in cases:
    _write(predictions, rows, header="Image Index," + columns)
    images = None
    if listed:
      images = tmp_path / "list.txt"
      images.write_text("\n".join(listed) + "\n")
    with pytest.raises(auroc.PredictionsError, match=message):
      auroc.score_predictions(predictions, labels, images)
  _write(predictions, good, header="Image Index," + columns.replace("prob_Hernia", "Hernia"))
  with pytest.raises(auroc.PredictionsError, match=r"p.csv: missing columns \['prob_Hernia'\]"):
    auroc.score_predictions(predictions, labels)
  with pytest.raises(ValueError, match="not probabilities"):
    auroc.write_predictions_csv(tmp_path / "w.csv", ["a"], [[np.nan]], ["Mass"])


def test_auroc_command(tmp_path, capsys):
  labels = _write(
    tmp_path / "labels.csv",
    [f"0000000{i}_000.png,{'Mass' if i % 2 else 'No Finding'},0,{i},50,M,PA,1,1,0.1,0.1" for i in range(1, 7)],
  )
  probabilities = np.full((6, 14), 0.3)
  probabilities[:, 4] = [0.9, 0.1, 0.8, 0.2, 0.25, 0.3]  # Mass: images 1, 3, 5 positive
  predictions = auroc.write_predictions_csv(
    tmp_path / "p.csv", [f"0000000{i}_000.png" for i in range(1, 7)], probabilities, chestxray14.FINDINGS
  )
  parser = argparse.ArgumentParser()
  auroc.add_parser(parser.add_subparsers(dest="command"))
  args = parser.parse_args(["auroc", "--predictions", str(predictions), "--labels", str(labels)])
  assert args.run(args) == 0
  output = json.loads(capsys.readouterr().out)
  assert output["per_class"]["Mass"] == pytest.approx(8 / 9) and output["mean"] == pytest.approx(8 / 9)
  assert output["per_class"]["Edema"] is None
  # A bad input is a UserError, printed as one line by the CLI's single handler (errors.guarded).
  assert cli.main(["auroc", "--predictions", str(tmp_path / "none.csv"), "--labels", str(labels)]) == 2
  assert "cxrjax auroc: error:" in capsys.readouterr().err.splitlines()[-1]
