"""Tests for the grain pipeline (cxrjax/data/pipeline.py) on the phantom set and real IU X-ray PNGs."""

import io
import json

import ml_collections
import numpy as np
from PIL import Image
import pytest

from cxrjax.data import datasets
from cxrjax.data import images
from cxrjax.data import iu_xray
from cxrjax.data import phantom
from cxrjax.data import pipeline
from cxrjax.data import prepare
from cxrjax.data import transforms
from cxrjax.text import cleaning
from cxrjax.text import tokenizers
from tests.data.test_prepare import make_openi_layout

IMAGE_SIZE, MAX_LENGTH = 28, 40


def phantom_config(**overrides):
  fields = dict(
    name="phantom",
    num_train=6,
    num_val=7,
    num_test=3,
    image_size=32,
    max_length=MAX_LENGTH,
    cleaning="drop_short_words",
  )
  fields.update(overrides)
  return ml_collections.ConfigDict(fields)


@pytest.fixture(scope="module")
def phantom_train():
  config = phantom_config()
  source, info = datasets.make_source(config, "train")
  return source, info, datasets.load_or_build_tokenizer(config, source)


def _preprocessing(image_size=IMAGE_SIZE, **kwargs):
  return transforms.Preprocessing(
    image_size=image_size, num_views=2, augment=transforms.Augmentation(random_crop=True, flip=True), **kwargs
  )


def _dataset(source, vocabulary, train, image_size=IMAGE_SIZE, **kwargs):
  kwargs = dict(dict(batch_size=4, max_length=MAX_LENGTH, seed=0, shard_index=0, shard_count=1), **kwargs)
  return pipeline.make_dataset(source, vocabulary, _preprocessing(image_size), train=train, **kwargs)


def _take(iterator, count):
  return [next(iterator) for _ in range(count)]


def _assert_same_batches(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


class ListSource:
  """A random-access source over a list of records."""

  def __init__(self, records):
    self.records = list(records)

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[index]


def _record(study_id, images_, report="The heart is normal.", mesh=()):
  return {
    "id": study_id,
    "images": list(images_),
    "image_ids": [f"{study_id}-a", f"{study_id}-b"],
    "views": ["frontal", "lateral"],
    "report": report,
    "mesh": list(mesh),
  }


def _png_bytes(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


# Batch schema.


def test_phantom_train_batch_schema(phantom_train):
  source, info, vocabulary = phantom_train
  batch = next(iter(_dataset(source, vocabulary, train=True, label_names=info.label_names)))
  assert set(batch) == {"images", "tokens", "mask", "id", "report", "labels"}
  assert batch["images"].shape == (4, 2, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch["images"].dtype == np.float32
  assert batch["tokens"].shape == (4, MAX_LENGTH) and batch["tokens"].dtype == np.int32
  assert batch["mask"].dtype == np.bool_ and batch["mask"].all()
  assert batch["id"].dtype.kind == "U"
  assert batch["labels"].shape == (4, len(phantom.FINDING_NAMES))
  records = {source[i]["id"]: source[i] for i in range(len(source))}
  for study_id, tokens, labels in zip(batch["id"], batch["tokens"], batch["labels"]):
    record = records[str(study_id)]
    expected = vocabulary.encode(cleaning.clean_report(record["report"]), MAX_LENGTH, pad=True)
    np.testing.assert_array_equal(tokens, expected)
    assert tokens[0] == vocabulary.start_id and vocabulary.end_id in tokens
    np.testing.assert_array_equal(labels, phantom.finding_labels(record["mesh"]))
  # ImageNet-normalised pixels: 0 maps to -mean/std, 255 to (1 - mean)/std.
  mean, std = transforms.NORMALIZATIONS["imagenet"]
  low = -np.array(mean) / np.array(std)
  high = (1 - np.array(mean)) / np.array(std)
  assert (batch["images"] >= low - 1e-5).all() and (batch["images"] <= high + 1e-5).all()


def test_eval_matches_direct_transform(phantom_train):
  source, _, vocabulary = phantom_train
  batch = next(iter(_dataset(source, vocabulary, train=False)))
  for row, index in enumerate(range(4)):
    record = source[index]
    assert batch["id"][row] == record["id"]
    expected = np.stack([_preprocessing()(images.to_rgb_uint8(view)) for view in record["images"]])
    np.testing.assert_array_equal(batch["images"][row], expected)


def test_eval_pads_last_batch_and_covers_every_study():
  config = phantom_config()
  source, info = datasets.make_source(config, "val")
  assert info.split == "validation" and info.num_examples == 7
  vocabulary = tokenizers.WordVocabulary.build(
    ["the heart is normal ."], min_count=1, cleaning_style="drop_short_words"
  )
  batches = list(_dataset(source, vocabulary, train=False))
  assert len(batches) == pipeline.eval_num_batches(7, 4) == 2
  assert batches[0]["mask"].tolist() == [True] * 4
  assert batches[1]["mask"].tolist() == [True, True, True, False]
  assert batches[1]["id"][3] == "" and not batches[1]["images"][3].any()
  assert not batches[1]["tokens"][3].any()
  ids = [i for b in batches for i, m in zip(b["id"], b["mask"]) if m]
  assert ids == [source[i]["id"] for i in range(7)]
  # Two processes: disjoint shards padded to the same number of batches.
  shards = [
    list(_dataset(source, vocabulary, train=False, batch_size=2, shard_index=i, shard_count=2)) for i in range(2)
  ]
  assert [len(s) for s in shards] == [pipeline.eval_num_batches(7, 2, 2)] * 2 == [2, 2]
  real = [i for s in shards for b in s for i, m in zip(b["id"], b["mask"]) if m]
  assert sorted(real) == sorted(ids) and len(real) == 7


# Determinism and resuming.


def test_train_is_deterministic_and_reshuffles_each_epoch(phantom_train):
  source, _, vocabulary = phantom_train
  first = _take(iter(_dataset(source, vocabulary, train=True, batch_size=3)), 4)
  again = _take(iter(_dataset(source, vocabulary, train=True, batch_size=3, read_threads=2)), 4)
  _assert_same_batches(first, again)
  epochs = [np.concatenate([b["id"] for b in first[:2]]), np.concatenate([b["id"] for b in first[2:]])]
  all_ids = sorted(source[i]["id"] for i in range(len(source)))
  assert sorted(epochs[0]) == sorted(epochs[1]) == all_ids  # each epoch sees every study once
  assert epochs[0].tolist() != epochs[1].tolist()
  other = _take(iter(_dataset(source, vocabulary, train=True, batch_size=3, seed=1)), 4)
  assert any((a["id"] != b["id"]).any() or (a["images"] != b["images"]).any() for a, b in zip(first, other))

  # The same study gets a new crop in its second epoch.
  def images_of(batches, study_id):
    return [b["images"][list(b["id"]).index(study_id)] for b in batches if study_id in b["id"]]

  crops = images_of(first, all_ids[0])
  assert len(crops) == 2 and not np.array_equal(crops[0], crops[1])


def test_resume_from_saved_state(phantom_train):
  source, _, vocabulary = phantom_train
  uninterrupted = _take(iter(_dataset(source, vocabulary, train=True)), 5)
  iterator = iter(_dataset(source, vocabulary, train=True))
  _take(iterator, 2)
  state = json.dumps(iterator.get_state())  # JSON, as a checkpoint stores it
  resumed = iter(_dataset(source, vocabulary, train=True))
  resumed.set_state(json.loads(state))
  _assert_same_batches(_take(resumed, 3), uninterrupted[2:])


def test_worker_processes_give_the_same_batches(phantom_train):
  source, _, vocabulary = phantom_train
  expected = _take(iter(_dataset(source, vocabulary, train=True)), 3)
  iterator = iter(_dataset(source, vocabulary, train=True, worker_count=1))
  _assert_same_batches(_take(iterator, 3), expected)
  assert json.loads(json.dumps(iterator.get_state()))


def test_process_shards_are_the_rows_of_the_one_process_batches(phantom_train):
  """Two processes' training batches, side by side, are the one-process batches (order, crops, flips),
  through an epoch boundary (6 records, global batches of 4), and each process reads only its rows."""
  source, _, vocabulary = phantom_train
  whole = _take(iter(_dataset(source, vocabulary, train=True, batch_size=4)), 4)
  shards = [
    _take(iter(_dataset(source, vocabulary, train=True, batch_size=2, shard_index=shard, shard_count=2)), 4)
    for shard in range(2)
  ]
  joined = [{key: np.concatenate([first[key], second[key]]) for key in first} for first, second in zip(*shards)]
  _assert_same_batches(joined, whole)
  for step in range(4):
    assert not set(shards[0][step]["id"]) & set(shards[1][step]["id"])
  assert {i for batch in whole[:3] for i in batch["id"]} == {source[i]["id"] for i in range(len(source))}
  assert len({batch["images"].tobytes() for batch in whole}) == 4  # The crops differ between epochs.


def test_processes_read_the_rows_a_slice_mesh_gives_them(phantom_train):
  """Where the mesh interleaves the processes (a TPU slice: sharding.process_rows), each reads those rows
  of every global batch, and putting them back in place gives the one-process batches."""
  source, _, vocabulary = phantom_train
  whole = _take(iter(_dataset(source, vocabulary, train=True, batch_size=4)), 3)
  positions = ([0, 2], [1, 3])  # v5p:2x2x2's layout of 2 processes, one row per device.
  shards = [
    _take(
      iter(
        _dataset(source, vocabulary, train=True, batch_size=2, shard_index=shard, shard_count=2, rows=positions[shard])
      ),
      3,
    )
    for shard in range(2)
  ]
  for step, batch in enumerate(whole):
    for shard, rows in enumerate(positions):
      for key in batch:
        np.testing.assert_array_equal(shards[shard][step][key], batch[key][rows], err_msg=key)
  with pytest.raises(ValueError, match="increasing rows"):
    _dataset(source, vocabulary, train=True, batch_size=2, shard_index=0, shard_count=2, rows=[2, 0])


# Images.


def test_decode_view_accepts_paths_bytes_and_arrays(shared_data, tmp_path):
  path = shared_data / "iu_xray" / "images" / "CXR54_IM-2145-1001.png"
  rgb = images.load_image(path)
  gray = rgb[..., 0]
  for value in (str(path), path, path.read_bytes(), _png_bytes(gray), gray, gray[..., None], rgb):
    np.testing.assert_array_equal(pipeline.decode_view(value, "CXR54", "CXR54_IM-2145-1001"), rgb)


def test_bad_images_name_the_file_and_study(tmp_path, phantom_train):
  _, _, vocabulary = phantom_train
  good = np.zeros((40, 40), np.uint8)
  missing = tmp_path / "absent.png"
  source = ListSource([_record("S1", [good, good]), _record("S2", [good, str(missing)])])
  with pytest.raises(images.ImageError, match=r"study S2: .*absent\.png: image file not found"):
    list(_dataset(source, vocabulary, train=False, batch_size=2))
  source = ListSource([_record("S3", [b"\x89PNG\r\n\x1a\n broken", good])])
  with pytest.raises(images.ImageError, match=r"study S3: S3-a \(encoded image\): cannot decode"):
    next(iter(_dataset(source, vocabulary, train=True, batch_size=1)))
  source = ListSource([_record("S4", [good])])
  with pytest.raises(ValueError, match="study S4: expected 2 images, got 1"):
    list(_dataset(source, vocabulary, train=False, batch_size=1))


# Text.


def test_empty_and_long_reports(phantom_train):
  _, _, vocabulary = phantom_train
  image = np.zeros((32, 32), np.uint8)
  long_report = " ".join(["the heart is normal."] * 30)
  source = ListSource(
    [_record("empty", [image, image], report=""), _record("long", [image, image], report=long_report)]
  )
  batch = next(iter(_dataset(source, vocabulary, train=False, batch_size=2, max_length=12)))
  np.testing.assert_array_equal(batch["tokens"][0], [vocabulary.start_id, vocabulary.end_id] + [vocabulary.pad_id] * 10)
  words = cleaning.clean_report(long_report).split()[:10]
  np.testing.assert_array_equal(
    batch["tokens"][1], [vocabulary.start_id] + [vocabulary.token_id(w) for w in words] + [vocabulary.end_id]
  )


def test_finding_labels_match_phantom():
  for mesh in (["normal"], ["Cardiomegaly", "Effusion/left", "Nodule/right"], ["Opacity/right upper lobe"]):
    np.testing.assert_array_equal(pipeline.finding_labels(mesh, phantom.FINDING_NAMES), phantom.finding_labels(mesh))


# Sources, vocabularies and configs.


def test_phantom_vocabulary_is_built_from_training_reports(phantom_train):
  source, _, vocabulary = phantom_train
  reports = [cleaning.clean_report(source[i]["report"]) for i in range(len(source))]
  assert vocabulary == tokenizers.WordVocabulary.build(reports, min_count=3, cleaning_style="drop_short_words")
  config = phantom_config(cleaning="r2gen", vocabulary_min_count=1)
  r2gen = datasets.load_or_build_tokenizer(config, source)
  assert r2gen.cleaning_style == "r2gen" and r2gen.min_count == 1 and len(r2gen) > len(vocabulary)
  with pytest.raises(ValueError, match="differs from the tokenizer"):
    _dataset(source, vocabulary, train=True, cleaning="r2gen")
  test_source, _ = datasets.make_source(phantom_config(), "test")
  with pytest.raises(datasets.DataConfigError, match="built from the training split"):
    datasets.load_or_build_tokenizer(phantom_config(), test_source)


def test_config_errors(tmp_path):
  with pytest.raises(
    datasets.DataConfigError,
    match=r"^config\.data\.name='mimic': unknown dataset; known: chestxray14, iu_xray, phantom, phantom_captions, ",
  ):
    datasets.make_source(phantom_config(name="mimic"), "train")
  with pytest.raises(datasets.DataConfigError, match="unknown split 'dev'"):
    datasets.make_source(phantom_config(), "dev")
  config = phantom_config()
  del config["num_test"]
  with pytest.raises(datasets.DataConfigError, match="no 'num_test'"):
    datasets.make_source(config, "test")
  iu_config = ml_collections.ConfigDict(
    dict(name="iu_xray", data_dir=str(tmp_path), tfds_config="random", cleaning="r2gen")
  )
  with pytest.raises(FileNotFoundError, match="not prepared.*cxrjax prepare iu_xray"):
    datasets.make_source(iu_config, "train")
  with pytest.raises(FileNotFoundError, match="no iu_xray vocabulary.*cxrjax prepare iu_xray"):
    datasets.load_or_build_tokenizer(iu_config, None)
  iu_config.tfds_config = "mimic"
  with pytest.raises(ValueError, match="unknown iu_xray config"):
    datasets.make_source(iu_config, "train")


@pytest.fixture(scope="module")
def iu_prepared(shared_data, tmp_path_factory):
  manual = make_openi_layout(shared_data / "iu_xray", tmp_path_factory.mktemp("manual"))
  data_dir = tmp_path_factory.mktemp("tfds")
  prepare.prepare_iu_xray(manual, data_dir, num_threads=2)
  return manual, data_dir


def test_iu_xray_through_the_pipeline(iu_prepared):
  manual, data_dir = iu_prepared
  config = ml_collections.ConfigDict(
    dict(name="iu_xray", data_dir=str(data_dir), tfds_config="random", cleaning="r2gen", vocabulary_min_count=3)
  )
  source, info = datasets.make_source(config, "validation")
  assert isinstance(source, iu_xray.IUXraySource) and info.label_names is None
  assert info.vocabulary_path == str(iu_xray.vocabulary_path(data_dir, "random", "r2gen"))
  assert info.num_views == 2
  train_source, _ = datasets.make_source(config, "train")
  vocabulary = datasets.load_or_build_tokenizer(config, train_source)
  assert vocabulary == tokenizers.WordVocabulary.from_json(info.vocabulary_path)
  originals = {r["id"]: r for r in iu_xray.load_studies(manual)[0]}
  batches = list(_dataset(source, vocabulary, train=False, batch_size=2, image_size=64))
  rows = [(b, i) for b in batches for i in range(2) if b["mask"][i]]
  assert len(rows) == info.num_examples
  for batch, row in rows:
    original = originals[str(batch["id"][row])]
    # The stored grayscale PNG gives the pixels of the original RGB file.
    expected = np.stack([transforms.load_for_model(p, _preprocessing(64)) for p in original["images"]])
    np.testing.assert_array_equal(batch["images"][row], expected)
    np.testing.assert_array_equal(
      batch["tokens"][row], vocabulary.encode(cleaning.clean_report(original["report"], "r2gen"), MAX_LENGTH, pad=True)
    )
  train = next(iter(_dataset(train_source, vocabulary, train=True, batch_size=2, image_size=64)))
  assert train["images"].shape == (2, 2, 64, 64, 3) and train["mask"].all()
  with pytest.raises(tokenizers.VocabularyFileError, match="min count 3.*asks for 'r2gen' and 5"):
    datasets.load_or_build_tokenizer(dict(config, vocabulary_min_count=5), train_source)


def test_report_texts_reads_a_prepared_split_by_index(iu_prepared):
  # array_record raises ValueError (not IndexError) past its end: report_texts must stop at len().
  _, data_dir = iu_prepared
  source = iu_xray.IUXraySource(data_dir, "random", "test")
  with pytest.raises(ValueError):
    source[len(source)]
  expected = [cleaning.clean_report(source[i]["report"], "r2gen") for i in range(len(source))]
  assert datasets.report_texts(source, "r2gen") == expected and len(expected) == len(source) > 0


def _run_config(**data):
  return ml_collections.ConfigDict(
    dict(
      data=dict(phantom_config(), augment=dict(random_crop=True, flip=True), **data),
      model=dict(encoder=dict(preprocessing=dict(normalization="clip", resize_filter="bicubic"))),
      train=dict(batch_size=3, seed=5),
      eval=dict(batch_size=4),
    )
  )


def test_make_batches_reads_everything_from_the_config(phantom_train):
  source, info, vocabulary = phantom_train
  config = _run_config(image_size=IMAGE_SIZE, phantom_image_size=32, read_threads=2)
  preprocessing = transforms.Preprocessing(
    image_size=IMAGE_SIZE,
    normalization="clip",
    resize_filter="bicubic",
    num_views=2,
    augment=transforms.Augmentation(random_crop=True, flip=True),
  )
  for train, seed, batch_size in ((True, 5, 3), (False, 0, 4)):
    got = _take(
      iter(
        pipeline.make_batches(
          config, "train", train=train, tokenizer=vocabulary, shard_index=0, shard_count=1, label_names=info.label_names
        )
      ),
      2,
    )
    expected = _take(
      iter(
        pipeline.make_dataset(
          source,
          vocabulary,
          preprocessing,
          batch_size=batch_size,
          max_length=MAX_LENGTH,
          train=train,
          seed=seed,
          shard_index=0,
          shard_count=1,
          label_names=info.label_names,
          cleaning="drop_short_words",
        )
      ),
      2,
    )
    _assert_same_batches(got, expected)
  # A list of records (prediction on a user's files) instead of the split; no tokenizer: images only.
  records = [source[0], source[1]]
  batch = next(iter(pipeline.make_batches(config, train=False, source=records, shard_index=0, shard_count=1)))
  assert set(batch) == {"images", "mask", "id"} and batch["mask"].tolist() == [True, True, False, False]
  np.testing.assert_array_equal(
    batch["images"][0], np.stack([preprocessing(images.to_rgb_uint8(v)) for v in records[0]["images"]])
  )

  # The padding's tokens are the tokenizer's pad id, whatever it is.
  class ShiftedPad(tokenizers.WordVocabulary):
    pad_id = 3
    end_id = 0

  shifted = ShiftedPad(vocabulary.tokens, vocabulary.min_count, vocabulary.cleaning_style)
  val = list(pipeline.make_batches(config, "val", train=False, tokenizer=shifted, shard_index=0, shard_count=1))
  assert (val[-1]["tokens"][~val[-1]["mask"]] == 3).all()
