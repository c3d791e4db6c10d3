"""CheXbert's module (cxrjax/models/chexbert.py): output layout, cleaning and the two label conventions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.models import chexbert


def test_logits_hold_13_four_class_heads_and_a_two_class_no_finding():
  model = chexbert.CheXbert(
    vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=24, max_positions=20
  )
  tokens = jnp.asarray([[2, 7, 9, 3], [2, 3, 0, 0]])
  mask = (tokens != 0).astype(jnp.int32)
  variables = model.init(jax.random.key(0), tokens, mask)
  assert variables["params"]["heads_13"]["kernel"].shape == (16, 2)
  assert variables["params"]["heads_0"]["kernel"].shape == (16, 4)
  logits = model.apply(variables, tokens, mask)
  assert logits.shape == (2, 14, 4)
  assert np.all(np.isneginf(logits[:, 13, 2:])) and np.all(np.isfinite(logits[:, :13]))
  assert set(chexbert.classes_of(logits)[:, 13]) <= {0, 1}
  # Dropout acts only in training.
  trained = model.apply(variables, tokens, mask, train=True, rngs={"dropout": jax.random.key(1)})
  assert not np.allclose(trained[:, :13], logits[:, :13])


def test_cleaning_collapses_whitespace_as_the_reference():
  assert chexbert.clean_report("  Heart size normal.\n\n  No\teffusion.  ") == "Heart size normal. No effusion."
  assert chexbert.clean_report(" \n ") == ""


def test_both_label_conventions_by_observation():
  classes = [0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1]
  record = chexbert.label_record(np.asarray(classes))
  assert list(record["classes"]) == list(chexbert.CONDITIONS)
  assert record["classes"]["Enlarged Cardiomediastinum"] == "blank"
  assert record["classes"]["Cardiomegaly"] == "positive"
  assert record["classes"]["Lung Opacity"] == "negative"
  assert record["classes"]["Lung Lesion"] == "uncertain"
  assert record["classes"]["No Finding"] == "positive"
  assert [record["values"][name] for name in chexbert.CONDITIONS] == [None, 1, 0, -1] * 3 + [None, 1]
  assert [record["uncertain_as_positive"][name] for name in chexbert.CONDITIONS] == [0, 1, 0, 1] * 3 + [0, 1]
  np.testing.assert_array_equal(chexbert.uncertain_as_positive([classes]), [[0, 1, 0, 1] * 3 + [0, 1]])
  with pytest.raises(ValueError, match="expected 14 class ids"):
    chexbert.label_record([1, 2])
