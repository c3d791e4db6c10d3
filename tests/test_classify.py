"""`cxrjax classify`: one JSON line per readable image; unreadable ones are named and skipped."""

import json

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from cxrjax import cli
from cxrjax.models.encoders import densenet
from cxrjax.weights import chexnet

TINY = densenet.DenseNetConfig(block_sizes=(1, 1), growth_rate=4, stem_features=8, num_classes=14)


def test_classify_reports_bad_images_and_classifies_the_rest(tmp_path, shared_data, capsys):
  variables = densenet.DenseNet(TINY).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  chexnet.save_chexnet(tmp_path / "weights", variables, TINY, source={"format": "test"})
  real = sorted((shared_data / "nih_chestxray14" / "images").glob("*.png"))[:3]
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(b"garbage")
  missing = tmp_path / "missing.png"
  sixteen = tmp_path / "sixteen.png"
  Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 8).save(sixteen)
  paths = [str(real[0]), str(corrupt), str(real[1]), str(missing), str(real[2]), str(sixteen)]

  status = cli.main(["classify", "--weights", str(tmp_path / "weights"), "--batch-size", "2",
                     "--image-size", "64", *paths])
  captured = capsys.readouterr()
  assert status == 1
  lines = [json.loads(line) for line in captured.out.splitlines()]
  assert [line["image"] for line in lines] == [paths[0], paths[2], paths[4], paths[5]]
  for line in lines:
    assert list(line["probabilities"]) == list(densenet.CHEXNET_CLASSES)
    assert all(0.0 < p < 1.0 for p in line["probabilities"].values())
  assert "corrupt.png: cannot decode" in captured.err
  assert "missing.png: image file not found" in captured.err
  assert "2 of 6 images could not be read" in captured.err

  # The same image gives the same probabilities whichever batch it lands in.
  status = cli.main(["classify", "--weights", str(tmp_path / "weights"), "--image-size", "64", paths[4]])
  alone = json.loads(capsys.readouterr().out)
  assert status == 0
  assert alone["probabilities"] == lines[2]["probabilities"]
