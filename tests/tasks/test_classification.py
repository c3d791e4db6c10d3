"""The classification task: AG-CNN's three stages through the shared trainer (phantom finding labels),
evaluation with AUROC and predictions.csv, and the real ChestX-ray14 images end to end."""

import json
import shutil

import jax
import numpy as np
import pytest
from etils import epath
from sklearn import metrics as sklearn_metrics

from cxrjax import cli, evaluators
from cxrjax.jobs import train
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import chestxray14
from cxrjax.core.errors import ConfigError
from cxrjax.tasks import classification
from configs import chestxray14_agcnn


@pytest.fixture(scope="module")
def stages(tmp_path_factory):
  root = tmp_path_factory.mktemp("agcnn")
  previous = ""
  for stage in (1, 2, 3):
    config = chestxray14_agcnn.get_config(f"smoke,phantom,stage={stage}")
    config.init.from_workdir = previous
    scores = train.train_and_evaluate(config, root / f"stage{stage}")
    assert 0.0 <= scores["mean_AUROC"] <= 1.0
    previous = str(root / f"stage{stage}")
  return root


def _state(workdir, checkpoint=workdir_lib.LATEST):
  return jax.device_get(workdir_lib.load_run(workdir, checkpoint, optimizer_state=True).state)


def test_each_stage_trains_only_its_branch(stages):
  one, two, three = (_state(stages / f"stage{i}") for i in (1, 2, 3))
  start_two = _state(stages / "stage1", workdir_lib.BEST)
  start_three = _state(stages / "stage2", workdir_lib.BEST)
  # Stage 2 starts from stage 1's best state and leaves the global branch as it was.
  jax.tree.map(np.testing.assert_array_equal, two.params["global_branch"], start_two.params["global_branch"])
  jax.tree.map(np.testing.assert_array_equal, two.batch_stats["global_branch"], start_two.batch_stats["global_branch"])
  assert not np.array_equal(
    two.params["local_branch"]["classifier"]["kernel"], start_two.params["local_branch"]["classifier"]["kernel"]
  )
  # Stage 3 moves only the fusion classifier.
  for branch in ("global_branch", "local_branch"):
    jax.tree.map(np.testing.assert_array_equal, three.params[branch], start_three.params[branch])
  assert not np.array_equal(
    three.params["fusion_classifier"]["kernel"], start_three.params["fusion_classifier"]["kernel"]
  )
  assert int(one.step) == int(two.step) == int(three.step) == 4


def test_stage_must_start_from_an_earlier_stage(stages, tmp_path):
  config = chestxray14_agcnn.get_config("smoke,phantom,stage=2")
  config.init.from_workdir = str(stages / "stage3")
  with pytest.raises(ConfigError, match="stage 3"):
    train.train_and_evaluate(config, tmp_path)


def test_evaluate_writes_auroc_and_a_predictions_csv(stages, capsys):
  assert cli.main(["evaluate", "--workdir", str(stages / "stage3"), "--split", "test"]) == 0
  summary = json.loads(capsys.readouterr().out)
  assert summary["stage"] == 3 and 0.0 <= summary["mean_AUROC"] <= 1.0
  metrics = json.loads((stages / "stage3/eval/test/metrics.json").read_text())
  assert set(metrics["scores"]) >= {"mean_AUROC", "AUROC/Cardiomegaly", "AUROC/Nodule"}
  lines = (stages / "stage3/eval/test/predictions.csv").read_text().splitlines()
  assert lines[0] == "Image Index," + ",".join(
    f"prob_{n}" for n in ("Cardiomegaly", "Effusion", "Pneumothorax", "Opacity", "Nodule")
  )
  assert len(lines) == 1 + chestxray14_agcnn.get_config("smoke,phantom").data.num_test


from tests.data.test_chestxray14 import label_lines, manual_dir  # noqa: E402,F401  (fixtures)


def test_real_chestxray14_images_prepare_train_evaluate_and_score(manual_dir, tmp_path, capsys):
  """The whole ChestX-ray14 path on the 15 real images, through the command line as a user types it:
  prepare, stage-1 training (smoke, the default 15 classes), evaluation, and `cxrjax auroc` on the
  written predictions against the real label file: the same mean AUROC, over the 14 findings."""
  assert (
    cli.main(
      [
        "prepare",
        "chestxray14",
        "--manual-dir",
        str(manual_dir),
        "--data-dir",
        str(tmp_path / "data"),
        "--split",
        "random",
      ]
    )
    == 0
  )
  capsys.readouterr()
  assert (
    cli.main(
      [
        "train",
        "--config=configs/chestxray14_agcnn.py:stage=1,smoke,split=random",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'data'}",
      ]
    )
    == 0
  )
  capsys.readouterr()
  assert cli.main(["evaluate", "--workdir", str(tmp_path / "run"), "--split", "test"]) == 0
  summary = json.loads(capsys.readouterr().out)
  predictions = tmp_path / "run/eval/test/predictions.csv"
  rows = predictions.read_text().splitlines()
  assert rows[0].split(",")[1] == "prob_Atelectasis" and len(rows) == 1 + 4  # 4 test images (10/1/4)
  assert rows[0].split(",")[-1] == "prob_No Finding"
  assert (
    cli.main(["auroc", "--predictions", str(predictions), "--labels", str(manual_dir / "Data_Entry_2017_v2020.csv")])
    == 0
  )
  scored = json.loads(capsys.readouterr().out)
  assert scored["num_images"] == 4
  assert summary["mean_AUROC"] == pytest.approx(scored["mean"], abs=1e-6)
  assert "AUROC/No Finding" in summary  # Beside the mean, not in it.

  # The dataset copied to another path (a re-created VM), read with more threads: the run resumes.
  shutil.move(tmp_path / "data", tmp_path / "copied_data")
  assert (
    cli.main(
      [
        "train",
        "--config=configs/chestxray14_agcnn.py:stage=1,smoke,split=random",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'copied_data'}",
        "--config.data.read_threads=2",
      ]
    )
    == 0
  )
  assert f"resumed from {tmp_path / 'run'}/checkpoints/latest at step 4" in capsys.readouterr().out
  assert cli.main(["evaluate", "--workdir", str(tmp_path / "run"), "--split", "test"]) == 0  # The new path.
  assert json.loads(capsys.readouterr().out)["mean_AUROC"] == pytest.approx(summary["mean_AUROC"], abs=1e-6)


def test_mean_auroc_is_over_the_14_findings_as_cxrjax_auroc_scores_its_predictions(shared_data, tmp_path, capsys):
  """AG-CNN's 15 classes on 3,000 rows of the real label file: mean_AUROC (metrics.json, the summary line,
  checkpoint selection) is `cxrjax auroc`'s mean over the 14 findings of the predictions.csv the task
  writes; "No Finding" gets its AUROC beside it, not in it."""
  labels_file = shared_data / "nih_chestxray14/Data_Entry_2017_v2020.csv.gz"
  entries = chestxray14.read_label_file(labels_file)[:3000]
  names = chestxray14.class_names(include_no_finding=True)
  labels = np.stack([chestxray14.labels_vector(e.findings, include_no_finding=True) for e in entries])
  rng = np.random.default_rng(0)
  # Three decimals: tied scores, and values the CSV holds exactly.
  probabilities = np.round(0.3 * labels + 0.7 * rng.random(labels.shape), 3)
  task = classification.ClassificationTask(chestxray14_agcnn.get_config("smoke"), names)
  records = [{"id": e.image_index, "probabilities": p, "labels": l} for e, p, l in zip(entries, probabilities, labels)]
  config = chestxray14_agcnn.get_config("smoke")
  predictions = evaluators.Predictions.from_records(records, label_names=names)
  scores = evaluators.run(evaluators.for_run(config, "evaluate"), predictions)["scores"]  # The run's AUROC.
  task.write(epath.Path(tmp_path), records)
  assert cli.main(["auroc", "--predictions", str(tmp_path / "predictions.csv"), "--labels", str(labels_file)]) == 0
  scored = json.loads(capsys.readouterr().out)
  assert scores["mean_AUROC"] == pytest.approx(scored["mean"], abs=1e-12)
  findings = [scores[f"AUROC/{name}"] for name in chestxray14.FINDINGS if not np.isnan(scores[f"AUROC/{name}"])]
  assert scores["mean_AUROC"] == pytest.approx(np.mean(findings), abs=1e-12)
  no_finding = sklearn_metrics.roc_auc_score(labels[:, -1], probabilities[:, -1])
  assert scores["AUROC/No Finding"] == pytest.approx(no_finding, abs=1e-12)
  assert scores["mean_AUROC"] != pytest.approx(np.mean(findings + [no_finding]), abs=1e-6)  # Not in the mean.
  assert "not in it: No Finding" in scores["note"]


def test_predict_agcnn_draws_where_the_model_looked(stages, shared_data, tmp_path, capsys):
  image = shared_data / "nih_chestxray14/images/00001369_000.png"  # RGBA, 1024x1024
  assert cli.main(["predict-agcnn", "--workdir", str(stages / "stage3"), "--out-dir", str(tmp_path), str(image)]) == 0
  result = json.loads(capsys.readouterr().out)
  y0, x0, y1, x1 = result["box"]
  assert 0 <= y0 < y1 <= 64 and 0 <= x0 < x1 <= 64
  assert set(result["probabilities"]) == {"Cardiomegaly", "Effusion", "Pneumothorax", "Opacity", "Nodule"}
  from PIL import Image

  figure = Image.open(result["figure"])
  assert figure.width > 2 * figure.height  # Three panels side by side.
