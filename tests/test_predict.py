"""`cxrjax predict`: one study's report, attention maps per generated word, clear errors."""

import json

import numpy as np
import pytest
from PIL import Image

from cxrjax import cli, train
from cxrjax.data import phantom
from configs import demo


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(demo.get_config("smoke"), workdir)
  return workdir


@pytest.fixture(scope="module")
def study_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("study")
  record = phantom.generate_study(3, phantom.PhantomConfig(image_size=48))
  paths = []
  for view, image in zip(record["views"], record["images"]):
    Image.fromarray(image).save(folder / f"{view}.png")
    paths.append(str(folder / f"{view}.png"))
  return paths


def test_predict_writes_one_map_per_word_and_a_summary(smoke_run, study_files, tmp_path, capsys):
  status = cli.main(["predict", "--workdir", str(smoke_run), "--attention-maps", str(tmp_path / "maps"),
                     *study_files])
  assert status == 0
  result = json.loads(capsys.readouterr().out)
  words = result["report"].split()
  if not words:  # A 4-step smoke model may stop at once; then there is nothing to draw.
    assert result["attention_maps"] == "none: the generated report is empty"
    return
  maps = result["attention_maps"]
  assert len(maps) == len(words) + 1 and maps[-1].endswith("summary.png")
  first = np.asarray(Image.open(maps[0]))
  assert first.ndim == 3 and first.shape[1] == 2 * first.shape[0] - 32  # Two views side by side.


def test_attention_maps_are_distributions_over_both_views(smoke_run, study_files):
  from cxrjax import evaluate, predict
  config, model, vocabulary, state = evaluate.load_run(smoke_run)
  images, _ = predict.load_study(study_files, config.data.image_size)
  words, maps = predict.attention_maps(model, state, images, "the heart is normal", vocabulary)
  assert words == ["the", "heart", "is", "normal"]
  assert maps.shape[:2] == (4, 2)
  np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)


def test_single_view_is_repeated_and_bad_files_are_named(smoke_run, study_files, tmp_path, capsys):
  from cxrjax import predict
  images, views = predict.load_study(study_files[:1], 32)
  assert images.shape == (1, 2, 32, 32, 3)
  np.testing.assert_array_equal(images[0, 0], images[0, 1])
  assert cli.main(["predict", "--workdir", str(smoke_run), str(tmp_path / "absent.png")]) == 2
  assert "absent.png: image file not found" in capsys.readouterr().err
  assert cli.main(["predict", "--workdir", str(smoke_run), *study_files, study_files[0]]) == 2
  assert "got 3 files" in capsys.readouterr().err
