"""Tests for cxrjax.data.text: cleaning styles, the vocabulary, vocabulary statistics."""

import json

import pytest

from cxrjax.data import iu_xray
from cxrjax.data import splits
from cxrjax.text import tokenizers as text


# Expected outputs written by hand from seed 001's rules.
@pytest.mark.parametrize("report, expected", [
    # The seed's own sample (its "pneumothora" keeps the x here: only runs of x go).
    ("The cardiomediastinal silhouette is normal in size and contour. No focal consolidation, "
     "pneumothorax or large pleural effusion. T-spine osteophytes.",
     "the cardiomediastinal silhouette normal size and contour . no focal consolidation "
     "pneumothorax large pleural effusion . tspine osteophytes ."),
    # Decontractions, then words of length <= 2 ("is", "we", "it") go, "no" stays.
    ("There isn't any effusion; we can't exclude it. They're stable. No change.",
     "there not any effusion can not exclude . they are stable . no change ."),
    ("Heart won't enlarge, it\u2019s fine.", "heart will not enlarge fine ."),
    # Numbers (decimals whole), the XXXX mask, runs of full stops and spaces.
    ("XXXX-year-old male. Heart size 1.5 cm...   No pneumothorax..",
     "yearold male . heart size . no pneumothorax ."),
    # List numbering leaves no leading or repeated full stop.
    ("1. No acute disease. 2. Stable XXXX.", "no acute disease . stable ."),
    ("", ""),
])
def test_clean_seed001(report, expected):
  assert text.clean_report(report, "seed001") == expected


# Expected outputs written by hand from R2Gen's clean_report_iu_xray.
@pytest.mark.parametrize("report, expected", [
    ("The heart is normal. No pleural effusion or pneumothorax.. T-spine osteophytes.",
     "the heart is normal . no pleural effusion or pneumothorax . t-spine osteophytes ."),
    # "1. " and ". 2. " numbering; "/" deleted without a space; decimals lose the dot.
    ("1. Heart size 1.5 cm (stable); lungs clear/normal. 2. No XXXX.",
     "heart size 15 cm stable lungs clearnormal . no xxxx ."),
    # ':-\[' is a range in R2Gen's class: @ = ? go, the hyphen stays, spaces are left.
    ("Opacity @ left base = atelectasis? Mild-moderate.",
     "opacity  left base  atelectasis mild-moderate ."),
    # Empty sentences are kept, as in R2Gen.
    ("A. . B.", "a .  . b ."),
])
def test_clean_r2gen(report, expected):
  assert text.clean_report(report, "r2gen") == expected


def test_clean_unknown_style():
  with pytest.raises(ValueError, match="unknown cleaning style"):
    text.clean_report("a", "keras")


def test_vocabulary_build_order_and_threshold():
  vocab = text.Vocabulary.build(["b a . c", "a b .", "a . d", "b a"], min_count=2)
  # Specials first; then by count (a: 4, b: 3, ".": 3), ties alphabetically; c, d once.
  assert vocab.tokens == ("<pad>", "<unk>", "<start>", "<end>", "a", ".", "b")
  assert (text.PAD_ID, text.UNK_ID, text.START_ID, text.END_ID) == (0, 1, 2, 3)
  assert vocab.encode("a c b .") == [2, 4, 1, 6, 5, 3]
  with pytest.raises(ValueError, match="min_count"):
    text.Vocabulary.build(["a"], min_count=0)


def test_encode_decode_round_trip():
  vocab = text.Vocabulary.build(["no effusion .", "heart normal ."], min_count=1)
  ids = vocab.encode("heart normal . no effusion .")
  assert ids[0] == text.START_ID and ids[-1] == text.END_ID
  assert vocab.decode(ids) == "heart normal . no effusion ."
  assert vocab.decode(ids + [text.PAD_ID] * 3) == "heart normal . no effusion ."
  # Stops at the first <end>; <pad> and <start> inside are skipped; unknown words -> <unk>.
  assert vocab.decode([2, vocab.token_id("heart"), 0, 2, 3, vocab.token_id("no")]) == "heart"
  assert vocab.decode(vocab.encode("heart pneumothorax")) == "heart <unk>"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    vocab.decode([2, 99])


def test_encode_truncates_long_report_keeping_end():
  vocab = text.Vocabulary.build(["w"], min_count=1)
  ids = vocab.encode(" ".join(["w"] * 100), max_length=60)
  assert len(ids) == 60
  assert ids[0] == text.START_ID and ids[-1] == text.END_ID
  assert ids[1:-1] == [vocab.token_id("w")] * 58
  padded = vocab.encode("w w", max_length=6, pad=True)
  assert padded == [2, 4, 4, 3, 0, 0]
  assert len(vocab.encode(" ".join(["w"] * 100), max_length=None)) == 102
  with pytest.raises(ValueError, match="max_length"):
    vocab.encode("w", max_length=1)


def test_vocabulary_json_round_trip(tmp_path):
  vocab = text.Vocabulary.build(["no effusion .", "heart normal ."], min_count=1,
                                cleaning_style="r2gen")
  path = tmp_path / "vocab.json"
  vocab.to_json(path)
  loaded = text.Vocabulary.from_json(path)
  assert loaded == vocab
  assert loaded.cleaning_style == "r2gen"
  assert loaded.encode("heart normal .") == vocab.encode("heart normal .")


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a valid JSON"),
    ("[1, 2]", "not a cxrjax vocabulary"),
    (json.dumps({"format": "cxrjax.vocabulary", "version": 7, "tokens": []}), "version 7"),
    (json.dumps({"format": "cxrjax.vocabulary", "version": 1, "tokens": ["a", "b"]}),
     "must start with"),
    (json.dumps({"format": "cxrjax.vocabulary", "version": 1, "tokens": "abc"}),
     "list of strings"),
])
def test_vocabulary_bad_json(tmp_path, content, message):
  path = tmp_path / "broken_vocab.json"
  path.write_text(content)
  with pytest.raises(text.VocabularyFileError, match=message) as error:
    text.Vocabulary.from_json(path)
  assert "broken_vocab.json" in str(error.value)


def test_vocabulary_stats_by_hand():
  stats = text.vocabulary_stats(
      ["heart normal .", "heart large ."],
      {"val": ["heart small small ."], "test": ["lungs ."]}, min_count=2)
  assert stats.train_tokens == 4 and stats.train_types == 3
  assert stats.vocabulary_size == 6  # 4 specials, "heart" and "." (each seen twice)
  val = stats.splits["val"]
  assert (val.num_tokens, val.num_types) == (3, 2)
  assert val.token_coverage == pytest.approx(1 / 3)
  assert val.type_coverage == pytest.approx(1 / 2)
  assert val.unk_rate == pytest.approx(2 / 3)
  test = stats.splits["test"]
  assert (test.token_coverage, test.type_coverage, test.unk_rate) == (0.0, 0.0, 1.0)


@pytest.fixture(scope="module")
def r2gen_by_split(shared_data):
  root = shared_data / "iu_xray" / "r2gen"
  records, _ = iu_xray.load_studies(root, check_images=False)
  return splits.apply_split(records, iu_xray.r2gen_split(root / "annotation.json"))


def test_r2gen_vocabulary_size_on_real_annotation(r2gen_by_split, tmp_path):
  train = [text.clean_report(r["report"], "r2gen") for r in r2gen_by_split["train"]]
  vocab = text.Vocabulary.build(train, min_count=3, cleaning_style="r2gen")
  # R2Gen's IU X-ray vocabulary has 760 entries (759 words and <unk>); ours adds
  # <pad>, <start>, <end>.
  assert len(vocab) == 763
  longest = max(train, key=lambda t: len(t.split()))
  assert len(longest.split()) > 100
  ids = vocab.encode(longest, max_length=60)
  assert len(ids) == 60 and ids[-1] == text.END_ID
  assert vocab.decode(ids).split() == [w if w in vocab else "<unk>" for w in longest.split()[:58]]
  vocab.to_json(tmp_path / "v.json")
  assert text.Vocabulary.from_json(tmp_path / "v.json").tokens == vocab.tokens


def test_vocabulary_stats_on_real_r2gen_split(r2gen_by_split):
  cleaned = {name: [text.clean_report(r["report"], "seed001") for r in records]
             for name, records in r2gen_by_split.items()}
  stats = text.vocabulary_stats(cleaned["train"], {"val": cleaned["val"], "test": cleaned["test"]})
  # Close to seed 001's "about 1424 unique words in the train data".
  assert 1300 < stats.train_types < 1500
  for coverage in stats.splits.values():
    assert 0.98 < coverage.token_coverage <= 1.0
    assert 0.85 < coverage.type_coverage < 0.95
    assert coverage.unk_rate > 1 - coverage.token_coverage
