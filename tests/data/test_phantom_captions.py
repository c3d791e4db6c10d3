"""Tests of the synthetic single-image caption set: images from the phantom set, captions from findings."""

import re

import numpy as np
import pytest

from cxrjax.data import datasets
from cxrjax.data import phantom
from cxrjax.data import phantom_captions
from cxrjax.data import pipeline
from cxrjax.data import transforms
from cxrjax.text import tokenizers

SIZE = 64
CONFIG = phantom.PhantomConfig(image_size=SIZE, seed=5)


def test_image_is_the_phantom_studys_frontal_view():
  for index in (0, 7, 1_000_000_003):
    record = phantom_captions.generate_image_record(index, CONFIG)
    study = phantom.generate_study(index, CONFIG)
    assert len(record["images"]) == 1
    np.testing.assert_array_equal(record["images"][0], study["images"][0])
    assert record["images"][0].shape == (SIZE, SIZE) and record["images"][0].dtype == np.uint8
    assert record["mesh"] == study["mesh"]
    assert record["image_ids"] == [record["id"]]


def test_records_are_deterministic_and_splits_disjoint():
  train = phantom_captions.PhantomCaptionSource("train", 20, CONFIG)
  val = phantom_captions.PhantomCaptionSource("val", 20, CONFIG)
  first, again = train[3], phantom_captions.PhantomCaptionSource("train", 20, CONFIG)[3]
  assert first["report"] == again["report"] and first["id"] == again["id"]
  np.testing.assert_array_equal(first["images"][0], again["images"][0])
  assert not {train[i]["id"] for i in range(20)} & {val[i]["id"] for i in range(20)}
  assert train.reports() == [train[i]["report"] for i in range(20)]
  with pytest.raises(IndexError, match="out of range"):
    train[20]
  with pytest.raises(ValueError, match="split"):
    phantom_captions.PhantomCaptionSource("validation", 5, CONFIG)


def _expected_phrases(findings):
  """What the caption must say for each finding: a word pattern that only that finding produces."""
  phrases = []
  if findings.cardiomegaly:
    phrases.append(r"cardiomegaly|enlarged (cardiac silhouette|heart)")
  if findings.effusion == "bilateral":
    phrases.append(r"(bilateral pleural effusions|pleural effusions on both sides|both costophrenic)")
  elif findings.effusion:
    phrases.append(rf"{findings.effusion}(-sided)? (pleural effusion|costophrenic)")
  if findings.pneumothorax:
    phrases.append(rf"{findings.pneumothorax}(-sided| apical)? pneumothorax")
  if findings.opacity:
    phrases.append(rf"{findings.opacity} lobe")
  if findings.nodule:
    phrases.append(rf"{findings.nodule} lung")
  return phrases


def test_captions_name_exactly_the_drawn_findings():
  source = phantom_captions.PhantomCaptionSource("train", 300, CONFIG)
  captions, oracles = source.reports(), source.oracle_reports()
  num_normal = 0
  for index, (caption, oracle) in enumerate(zip(captions, oracles)):
    findings = phantom.sample_findings(index, CONFIG)
    assert caption.count(".") == 1 and caption.endswith(".")  # one line, one sentence
    assert oracle == phantom_captions.oracle_caption(findings)
    for phrase in _expected_phrases(findings):
      assert re.search(phrase, caption), (caption, findings)
      assert re.search(phrase, oracle), (oracle, findings)
    if findings.normal:
      num_normal += 1
      assert not re.search(r"effusion|pneumothorax|nodule|lobe|cardiomegaly|enlarged", caption)
    else:
      assert "no acute abnormality" not in caption
  assert 0 < num_normal < len(captions)
  # Paraphrase: the captions vary beyond the findings, the oracle does not.
  assert len(set(captions)) > len(set(oracles))


def test_wording_of_one_finding_does_not_depend_on_another():
  with_nodule = phantom.Findings(cardiomegaly=True, effusion="left", nodule="right")
  without = phantom.Findings(cardiomegaly=True, effusion="left")
  for seed in range(20):
    a = phantom_captions.write_caption(with_nodule, np.random.default_rng(seed))
    b = phantom_captions.write_caption(without, np.random.default_rng(seed))
    a_parts = re.split(r", | and ", a.rstrip("."))
    b_parts = re.split(r", | and ", b.rstrip("."))
    assert a_parts[:2] == b_parts[:2]  # the opening with the heart, then the effusion


def test_no_paraphrase_gives_the_oracle():
  config = phantom.PhantomConfig(image_size=SIZE, seed=5, paraphrase=False)
  source = phantom_captions.PhantomCaptionSource("test", 50, config)
  assert source.reports() == source.oracle_reports()


def test_registered_dataset_and_pipeline():
  data = {
    "name": "phantom_captions",
    "num_train": 8,
    "num_val": 3,
    "num_test": 2,
    "image_size": SIZE,
    "phantom_seed": 5,
  }
  source, info = datasets.make_source(data, "val")
  assert isinstance(source, phantom_captions.PhantomCaptionSource) and source.split == "val"
  assert (info.num_examples, info.num_views, info.label_names) == (3, 1, phantom.FINDING_NAMES)
  assert source.config == CONFIG
  train, _ = datasets.make_source(data, "train")
  vocabulary = datasets.load_or_build_tokenizer(dict(data, vocabulary_min_count=1), train)
  assert isinstance(vocabulary, tokenizers.WordVocabulary)
  dataset = pipeline.make_dataset(
    source,
    vocabulary,
    transforms.Preprocessing(image_size=32, num_views=1),
    batch_size=2,
    max_length=24,
    train=False,
    shard_index=0,
    shard_count=1,
    label_names=phantom.FINDING_NAMES,
  )
  batches = list(dataset)
  assert len(batches) == 2
  assert batches[0]["images"].shape == (2, 1, 32, 32, 3)
  assert batches[0]["tokens"].shape == (2, 24)
  assert list(batches[0]["id"]) == [source[0]["id"], source[1]["id"]]
  assert batches[1]["mask"].tolist() == [True, False]
  np.testing.assert_array_equal(batches[0]["labels"][0], phantom.finding_labels(source[0]["mesh"]))


def test_best_constant_caption_is_a_normal_one():
  source = phantom_captions.PhantomCaptionSource("train", 400, CONFIG)
  constant = phantom.most_common_report({"report": caption} for caption in source.reports())
  assert constant == phantom_captions.oracle_caption(phantom.Findings())
