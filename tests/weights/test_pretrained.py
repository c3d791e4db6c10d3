"""config.init.encoder through weights/pretrained.py: the DenseNet lands where the family says, and a
batch-norm epsilon that differs from the configured encoder's is said, not silent."""

import dataclasses

import jax
import numpy as np

from cxrjax import models
from cxrjax.models.encoders import densenet
from cxrjax.weights import chexnet, pretrained


def _fresh(section):
  model = models.build(section, 12)
  return model.init(jax.random.key(0), np.zeros((1, 2, 32, 32, 3), np.float32), np.zeros((1, 4), np.int32))


def test_encoder_weights_land_in_the_image_encoder_and_an_epsilon_mismatch_is_said(tmp_path, capsys):
  section = models.get("attention_captioner").smoke_config()
  encoder = densenet.config_from_section(section.encoder, num_classes=14)
  for name, epsilon in (("same", encoder.bn_epsilon), ("other", 1e-3)):
    weights = dataclasses.replace(encoder, bn_epsilon=epsilon)
    variables = densenet.DenseNet(weights).init(jax.random.key(7), np.zeros((1, 32, 32, 3), np.float32))
    chexnet.save_chexnet(tmp_path / name, variables, weights, source={"format": "test"})
    loaded = pretrained.initialize(
      {"encoder": str(tmp_path / name)}, models.get("attention_captioner"), _fresh(section), model_config=section
    )
    imported = {k: v for k, v in variables["params"].items() if k != "classifier"}
    jax.tree.map(np.testing.assert_array_equal, loaded["params"]["image_encoder"]["densenet"], imported)
    jax.tree.map(
      np.testing.assert_array_equal, loaded["batch_stats"]["image_encoder"]["densenet"], variables["batch_stats"]
    )
    warning = capsys.readouterr().err
    if name == "same":
      assert warning == ""
    else:
      assert "epsilon 0.001" in warning and "--config.model.encoder.bn_epsilon=0.001" in warning
