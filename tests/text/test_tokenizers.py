"""Tests for cxrjax.text.tokenizers: the word vocabulary, WordPiece (parity with transformers' BertTokenizer
on the real ROCO captions), saving and loading both, vocabulary statistics."""

import json
import os

import pytest
import tokenizers as hf_tokenizers

from cxrjax.text import cleaning
from cxrjax.text import tokenizers

BERT_VOCAB = "text/bert-base-uncased-vocab.txt"
ROCO_CAPTIONS = "roco/test/radiology/captions.txt"
# huggingface_hub reads this when imported: transformers (imported by the fixtures) stays offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def test_vocabulary_build_order_and_threshold():
  vocab = tokenizers.WordVocabulary.build(["b a . c", "a b .", "a . d", "b a"], min_count=2)
  # Specials first; then by count (a: 4, b: 3, ".": 3), ties alphabetically; c, d once.
  assert vocab.tokens == ("<pad>", "<unk>", "<start>", "<end>", "a", ".", "b")
  assert (vocab.pad_id, vocab.unk_id, vocab.start_id, vocab.end_id) == (0, 1, 2, 3)
  assert vocab.encode("a c b .") == [2, 4, 1, 6, 5, 3]
  with pytest.raises(ValueError, match="min_count"):
    tokenizers.WordVocabulary.build(["a"], min_count=0)


def test_encode_decode_round_trip():
  vocab = tokenizers.WordVocabulary.build(["no effusion .", "heart normal ."], min_count=1)
  ids = vocab.encode("heart normal . no effusion .")
  assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
  assert vocab.decode(ids) == "heart normal . no effusion ."
  assert vocab.decode(ids + [vocab.pad_id] * 3) == "heart normal . no effusion ."
  # Stops at the first <end>; <pad> and <start> inside are skipped; unknown words -> <unk>.
  assert vocab.decode([2, vocab.token_id("heart"), 0, 2, 3, vocab.token_id("no")]) == "heart"
  assert vocab.decode(vocab.encode("heart pneumothorax")) == "heart <unk>"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    vocab.decode([2, 99])


def test_encode_truncates_long_report_keeping_end():
  vocab = tokenizers.WordVocabulary.build(["w"], min_count=1)
  ids = vocab.encode(" ".join(["w"] * 100), max_length=60)
  assert len(ids) == 60
  assert ids[0] == vocab.start_id and ids[-1] == vocab.end_id
  assert ids[1:-1] == [vocab.token_id("w")] * 58
  padded = vocab.encode("w w", max_length=6, pad=True)
  assert padded == [2, 4, 4, 3, 0, 0]
  assert len(vocab.encode(" ".join(["w"] * 100), max_length=None)) == 102
  with pytest.raises(ValueError, match="max_length"):
    vocab.encode("w", max_length=1)


def test_vocabulary_json_round_trip(tmp_path):
  vocab = tokenizers.WordVocabulary.build(["no effusion .", "heart normal ."], min_count=1, cleaning_style="r2gen")
  path = tmp_path / "vocab.json"
  vocab.to_json(path)
  loaded = tokenizers.WordVocabulary.from_json(path)
  assert loaded == vocab
  assert loaded.cleaning_style == "r2gen"
  assert loaded.encode("heart normal .") == vocab.encode("heart normal .")


@pytest.mark.parametrize(
  "content, message",
  [
    ("{not json", "not a valid JSON"),
    ("[1, 2]", "not a cxrjax vocabulary"),
    (json.dumps({"format": "cxrjax.vocabulary", "version": 7, "tokens": []}), "version 7"),
    (json.dumps({"format": "cxrjax.vocabulary", "version": 1, "tokens": ["a", "b"]}), "must start with"),
    (json.dumps({"format": "cxrjax.vocabulary", "version": 1, "tokens": "abc"}), "list of strings"),
  ],
)
def test_vocabulary_bad_json(tmp_path, content, message):
  path = tmp_path / "broken_vocab.json"
  path.write_text(content)
  with pytest.raises(tokenizers.VocabularyFileError, match=message) as error:
    tokenizers.WordVocabulary.from_json(path)
  assert "broken_vocab.json" in str(error.value)


def test_vocabulary_stats_by_hand():
  stats = tokenizers.vocabulary_stats(
    ["heart normal .", "heart large ."], {"val": ["heart small small ."], "test": ["lungs ."]}, min_count=2
  )
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
  """R2Gen's IU X-ray split, read straight from its annotation.json: {split: [{"report": ...}]}."""
  with open(shared_data / "iu_xray" / "r2gen" / "annotation.json", encoding="utf-8") as f:
    return json.load(f)


def test_r2gen_vocabulary_size_on_real_annotation(r2gen_by_split, tmp_path):
  train = [cleaning.clean_report(r["report"], "r2gen") for r in r2gen_by_split["train"]]
  vocab = tokenizers.WordVocabulary.build(train, min_count=3, cleaning_style="r2gen")
  # R2Gen's IU X-ray vocabulary has 760 entries (759 words and <unk>); ours adds
  # <pad>, <start>, <end>.
  assert len(vocab) == 763
  longest = max(train, key=lambda t: len(t.split()))
  assert len(longest.split()) > 100
  ids = vocab.encode(longest, max_length=60)
  assert len(ids) == 60 and ids[-1] == vocab.end_id
  assert vocab.decode(ids).split() == [w if w in vocab else "<unk>" for w in longest.split()[:58]]
  vocab.to_json(tmp_path / "v.json")
  assert tokenizers.WordVocabulary.from_json(tmp_path / "v.json").tokens == vocab.tokens


def test_vocabulary_stats_on_real_r2gen_split(r2gen_by_split):
  cleaned = {
    name: [cleaning.clean_report(r["report"], "drop_short_words") for r in records]
    for name, records in r2gen_by_split.items()
  }
  stats = tokenizers.vocabulary_stats(cleaned["train"], {"val": cleaned["val"], "test": cleaned["test"]})
  # Close to the "about 1424 unique words in the train data" reported for this cleaning.
  assert 1300 < stats.train_types < 1500
  for coverage in stats.splits.values():
    assert 0.98 < coverage.token_coverage <= 1.0
    assert 0.85 < coverage.type_coverage < 0.95
    assert coverage.unk_rate > 1 - coverage.token_coverage


# ----------------------------------------------------------------------------------------------
# WordPiece.


@pytest.fixture(scope="module")
def wordpiece(shared_data):
  return tokenizers.WordPieceTokenizer.from_vocab(shared_data / BERT_VOCAB)


@pytest.fixture(scope="module")
def bert_tokenizer(shared_data):
  """transformers' BertTokenizer on the same vocab.txt: the independent reference."""
  import transformers  # pylint: disable=g-import-not-at-top  # test-only, about a second

  reference = transformers.BertTokenizer(vocab=str(shared_data / BERT_VOCAB))
  # transformers 5: BertTokenizer(vocab_file=...) and BertTokenizerFast(vocab_file=...) silently
  # ignore the file and build 5 tokens; `vocab=` reads it.
  assert len(reference) == 30522
  return reference


@pytest.fixture(scope="module")
def roco_captions(shared_data):
  """The 8,179 captions of ROCO's radiology test split (`ROCO_xxxxx<TAB> caption`)."""
  path = shared_data / ROCO_CAPTIONS
  captions = []
  for line_number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
    image_id, tab, caption = line.partition("\t")
    assert tab and image_id.startswith("ROCO_"), f"{path}, line {line_number}: {line[:80]!r}"
    captions.append(caption)
  assert len(captions) == 8179
  return captions


def _first_difference(got, expected, captions):
  for index, (ours, theirs) in enumerate(zip(got, expected)):
    if ours != theirs:
      return f"caption {index} {captions[index]!r}: ours {ours}, BertTokenizer {theirs}"
  return None


def test_wordpiece_special_ids_and_vocabulary(wordpiece, shared_data):
  assert (wordpiece.pad_id, wordpiece.unk_id, wordpiece.start_id, wordpiece.end_id) == (0, 100, 101, 102)
  lines = (shared_data / BERT_VOCAB).read_text(encoding="utf-8").splitlines()
  assert len(wordpiece) == len(lines) == 30522 and wordpiece.tokens == tuple(lines)
  assert wordpiece.token_id("##ing") == lines.index("##ing")
  assert wordpiece.token_id("not-a-vocabulary-entry") == wordpiece.unk_id


def test_wordpiece_ids_equal_bert_tokenizer_on_roco_captions(wordpiece, bert_tokenizer, roco_captions):
  expected = bert_tokenizer(roco_captions)["input_ids"]
  got = [wordpiece.encode(caption) for caption in roco_captions]
  assert got == expected, _first_difference(got, expected, roco_captions)
  # Whitespace-only cleaning changes no id.
  assert [wordpiece.encode(cleaning.clean_report(c, "none")) for c in roco_captions[:500]] == got[:500]

  expected = bert_tokenizer(roco_captions, truncation=True, max_length=80)["input_ids"]
  got = [wordpiece.encode(caption, max_length=80) for caption in roco_captions]
  assert sum(len(ids) == 80 for ids in expected) > 100  # Truncation happens to many captions.
  assert got == expected, _first_difference(got, expected, roco_captions)

  expected = bert_tokenizer(roco_captions[:300], truncation=True, max_length=80, padding="max_length")["input_ids"]
  got = [wordpiece.encode(caption, max_length=80, pad=True) for caption in roco_captions[:300]]
  assert got == expected, _first_difference(got, expected, roco_captions)


def test_wordpiece_decode_joins_pieces_as_bert(wordpiece, bert_tokenizer, roco_captions):
  # BERT's own rule for turning word pieces into text (its original convert_tokens_to_string).
  for caption in roco_captions[:1000]:
    ids = bert_tokenizer(caption)["input_ids"]
    pieces = bert_tokenizer.convert_ids_to_tokens(ids[1:-1])
    assert wordpiece.decode(ids) == " ".join(pieces).replace(" ##", "").strip(), caption
  assert wordpiece.decode(wordpiece.encode("Pneumothorax (left), 2.5 cm")) == "pneumothorax ( left ) , 2 . 5 cm"


def test_wordpiece_edge_cases(wordpiece, bert_tokenizer):
  start, end, pad, unk = wordpiece.start_id, wordpiece.end_id, wordpiece.pad_id, wordpiece.unk_id
  assert wordpiece.encode("") == [start, end] and wordpiece.decode([start, end]) == ""
  assert wordpiece.encode("   ", max_length=4, pad=True) == [start, end, pad, pad]
  # A long text keeps its first max_length - 2 pieces and still ends with end.
  ids = wordpiece.encode("heart " * 100, max_length=10)
  assert len(ids) == 10 and ids[0] == start and ids[-1] == end
  assert ids[1:-1] == [wordpiece.token_id("heart")] * 8
  assert wordpiece.encode("heart", max_length=2) == [start, end]
  # Unknown: a character outside the vocabulary, a word over 100 characters; as BertTokenizer.
  unknown = "\u80ba " + "a" * 101 + " caf\u00e9"
  assert wordpiece.encode(unknown) == bert_tokenizer(unknown)["input_ids"]
  assert wordpiece.encode(unknown)[1:3] == [unk, unk]
  assert wordpiece.decode(wordpiece.encode(unknown)) == "[UNK] [UNK] cafe"
  # A special token in the text stays whole, as in BertTokenizer.
  assert wordpiece.encode("a [SEP] b") == bert_tokenizer("a [SEP] b")["input_ids"]
  # decode stops at the first end; pad and start are skipped.
  heart, lungs = wordpiece.token_id("heart"), wordpiece.token_id("lungs")
  assert wordpiece.decode([start, heart, pad, start, lungs, end, heart]) == "heart lungs"
  assert wordpiece.decode([heart, pad, pad]) == "heart"
  with pytest.raises(ValueError, match="outside the vocabulary"):
    wordpiece.decode([start, 30522])
  with pytest.raises(ValueError, match="pad=True needs a max_length"):
    wordpiece.encode("heart", pad=True)
  with pytest.raises(ValueError, match="max_length must be >= 2"):
    wordpiece.encode("heart", max_length=1)


def test_wordpiece_blip_start_token_matches_transformers(shared_data):
  import transformers  # pylint: disable=g-import-not-at-top  # test-only

  # BLIP's tokenizer: bert-base-uncased, bos [DEC], an extra special [ENC].
  reference = transformers.BertTokenizer(vocab=str(shared_data / BERT_VOCAB))
  reference.add_special_tokens({"bos_token": "[DEC]"})
  reference.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
  blip = tokenizers.WordPieceTokenizer.from_vocab(
    shared_data / BERT_VOCAB, special_tokens=tokenizers.BERT_SPECIAL_TOKENS + ("[DEC]", "[ENC]"), start_token="[DEC]"
  )
  assert len(blip) == len(reference) == 30524
  assert blip.start_id == reference.convert_tokens_to_ids("[DEC]") == 30522
  caption = "[ENC] Chest x-ray [DEC] shows cardiomegaly."
  assert blip.encode(caption) == [30522] + reference(caption, add_special_tokens=False)["input_ids"] + [102]
  with pytest.raises(tokenizers.VocabularyFileError, match=r"vocab.txt: the start token '\[DEC\]' is not in"):
    tokenizers.WordPieceTokenizer.from_vocab(shared_data / BERT_VOCAB, start_token="[DEC]")


# ----------------------------------------------------------------------------------------------
# Saving and loading.


def test_load_reads_back_both_kinds(tmp_path, wordpiece, roco_captions, shared_data):
  vocab = tokenizers.WordVocabulary.build(
    ["no effusion .", "heart normal ."], min_count=1, cleaning_style="drop_short_words"
  )
  vocab.save(tmp_path / "words.json")
  loaded = tokenizers.load(tmp_path / "words.json")
  assert isinstance(loaded, tokenizers.WordVocabulary) and loaded == vocab

  blip = tokenizers.WordPieceTokenizer.from_vocab(
    shared_data / BERT_VOCAB,
    special_tokens=tokenizers.BERT_SPECIAL_TOKENS + ("[DEC]", "[ENC]"),
    start_token="[DEC]",
    cleaning_style="none",
  )
  for original in (wordpiece, blip):
    original.save(tmp_path / "wordpiece.json")
    loaded = tokenizers.load(tmp_path / "wordpiece.json")
    assert isinstance(loaded, tokenizers.WordPieceTokenizer)
    assert (loaded.pad_id, loaded.unk_id, loaded.start_id, loaded.end_id, len(loaded)) == (
      original.pad_id,
      original.unk_id,
      original.start_id,
      original.end_id,
      len(original),
    )
    assert loaded.cleaning_style == original.cleaning_style and loaded.tokens == original.tokens
    for caption in roco_captions[:300] + ["[ENC] heart [DEC]"]:
      ids = original.encode(caption, max_length=40)
      assert loaded.encode(caption, max_length=40) == ids
      assert loaded.decode(ids) == original.decode(ids)
  assert tokenizers.load(tmp_path / "wordpiece.json").start_token == "[DEC]"


def test_load_reads_transformers_tokenizer_json(tmp_path, bert_tokenizer, roco_captions):
  # The tokenizer.json transformers itself writes for bert-base-uncased (with its post-processor
  # and a decoder that cleans up spaces, neither of which is used).
  path = tmp_path / "tokenizer.json"
  bert_tokenizer.backend_tokenizer.save(str(path))
  for loaded in (tokenizers.load(path), tokenizers.WordPieceTokenizer.from_tokenizer_json(path)):
    assert (loaded.pad_id, loaded.unk_id, loaded.start_id, loaded.end_id) == (0, 100, 101, 102)
    expected = bert_tokenizer(roco_captions[:1000], truncation=True, max_length=60)["input_ids"]
    assert [loaded.encode(c, max_length=60) for c in roco_captions[:1000]] == expected
    assert loaded.decode(loaded.encode("Heart (normal).")) == "heart ( normal ) ."


@pytest.mark.parametrize(
  "content, message",
  [
    ("{not json", "not a valid JSON"),
    ("[1, 2]", "not a tokenizer file"),
    (json.dumps({"format": "cxrjax.wordpiece", "version": 3}), "unsupported tokenizer version 3"),
    (
      json.dumps(
        {
          "format": "cxrjax.wordpiece",
          "version": 1,
          "start_token": "[CLS]",
          "end_token": "[SEP]",
          "pad_token": "[PAD]",
          "tokenizer": {"model": 1},
        }
      ),
      "not a readable Hugging Face tokenizer",
    ),
    (json.dumps({"format": "cxrjax.vocabulary", "version": 1, "tokens": ["a"]}), "must start with"),
  ],
)
def test_load_bad_files_name_the_file(tmp_path, content, message):
  path = tmp_path / "broken_tokenizer.json"
  path.write_text(content)
  with pytest.raises(tokenizers.VocabularyFileError, match=message) as error:
    tokenizers.load(path)
  assert str(error.value).startswith(f"{path}: ")


def test_wordpiece_bad_files(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\nheart\n\nlungs\n")
  with pytest.raises(tokenizers.VocabularyFileError, match="vocab.txt: line 4 is empty"):
    tokenizers.WordPieceTokenizer.from_vocab(vocab)
  vocab.write_text("[PAD]\nheart\n[UNK]\nheart\n")
  with pytest.raises(tokenizers.VocabularyFileError, match=r"vocab.txt: line 4 repeats 'heart' \(line 2\)"):
    tokenizers.WordPieceTokenizer.from_vocab(vocab)
  vocab.write_text("[PAD]\nheart\n")
  with pytest.raises(tokenizers.VocabularyFileError, match=r"vocab.txt: the unknown token '\[UNK\]'"):
    tokenizers.WordPieceTokenizer.from_vocab(vocab)
  # A tiny vocabulary: [CLS] / [SEP] / [MASK] missing from the file are appended, in order.
  vocab.write_text("[PAD]\n[UNK]\nheart\n##s\n")
  tiny = tokenizers.WordPieceTokenizer.from_vocab(vocab)
  assert (len(tiny), tiny.start_id, tiny.end_id) == (7, 4, 5)
  assert tiny.encode("Hearts lungs") == [4, 2, 3, 1, 5] and tiny.decode([4, 2, 3, 1, 5]) == "hearts [UNK]"
  bpe = tmp_path / "bpe.json"
  bpe.write_text(hf_tokenizers.Tokenizer(hf_tokenizers.models.BPE()).to_str())
  with pytest.raises(tokenizers.VocabularyFileError, match="bpe.json: a BPE model, expected WordPiece"):
    tokenizers.load(bpe)


@pytest.mark.parametrize("kind", ["words", "wordpiece"])
def test_every_tokenizer_keeps_the_interface(kind, wordpiece):
  tokenizer = (
    tokenizers.WordVocabulary.build(["heart normal .", "lungs clear ."], min_count=1) if kind == "words" else wordpiece
  )
  report = "heart normal . lungs clear ."
  ids = tokenizer.encode(report)
  assert ids[0] == tokenizer.start_id and ids[-1] == tokenizer.end_id
  assert tokenizer.unk_id not in ids and tokenizer.decode(ids) == report
  assert tokenizer.decode(ids + [tokenizer.pad_id] * 3) == report
  assert tokenizer.encode(report, max_length=4, pad=True)[-1] == tokenizer.end_id
  padded = tokenizer.encode("heart", max_length=6, pad=True)
  assert padded == [tokenizer.start_id, tokenizer.token_id("heart"), tokenizer.end_id] + [tokenizer.pad_id] * 3
  unknown = "zzqx" if kind == "words" else "\u80ba"  # WordPiece spells "zzqx" with pieces.
  assert tokenizer.encode(f"heart {unknown}")[2] == tokenizer.unk_id
  assert len({tokenizer.pad_id, tokenizer.unk_id, tokenizer.start_id, tokenizer.end_id}) == 4
  assert max(tokenizer.pad_id, tokenizer.unk_id, tokenizer.start_id, tokenizer.end_id) < len(tokenizer)
