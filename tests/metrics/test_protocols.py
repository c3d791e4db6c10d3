"""Tests for cxrjax.metrics.protocols and ptb_tokenizer: the scoring protocols on real ROCO / ROCOv2
captions, the "coco" one against pycocoevalcap's own PTBTokenizer (the Stanford jar, run by java)."""

import re
import shutil
import string
import unicodedata

import ml_collections
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
import pytest

from cxrjax.data.roco import captions as roco_captions
from cxrjax.core.errors import ConfigError
from cxrjax.metrics import captioning, protocols, ptb_tokenizer
from cxrjax.metrics.corpus import MetricInputError
from cxrjax.text import tokenizers

BERT_VOCAB = "text/bert-base-uncased-vocab.txt"


@pytest.fixture(scope="module")
def fixture_captions(shared_data) -> list[str]:
  """Every caption of the ROCO test split (radiology and non-radiology) and the ROCOv2 test head, as written."""
  captions = []
  for folder in ("test/radiology", "test/non-radiology"):
    captions += [
      caption for _, caption in roco_captions.read_roco_v1_captions(shared_data / "roco" / folder / "captions.txt")
    ]
  captions += [
    caption for _, caption in roco_captions.read_rocov2_captions(shared_data / "rocov2" / "test_captions.head30.csv")
  ]
  assert len(captions) > 8700
  return captions


def _tabled_characters() -> list[str]:
  """Every character of the blocks where ptb_tokenizer claims the jar's classes exactly."""
  tabled = ptb_tokenizer._TABLED  # pylint: disable=protected-access
  return [
    chr(code)
    for start, end in tabled
    for code in range(start, end + 1)
    if code >= 0x20 and unicodedata.category(chr(code)) != "Cs"
  ]


# The lexer's rules that span words or group characters, each on a line of its own.
EDGE_LINES = [
  "call 555 123 4567 or 12 345 678 9, not 12 345 67 or 12345 678 901",
  "3 1\u20442 cm, 1\u204423456, a1\u20442",
  "m\u00b2 10\u207b\u00b3 x\u2082\u2083 \u00b9\u00b2",
  "cannot gonna gotta lemme gimme wanna dunno cannotx",
  "wait... really. . . . no",
  "\u00bd \u00bc \u00be \u2153 \u2154 \u00a2 \u00a3 \u20ac \u20ac5 \u00a5",
  'x\U0001d54dy \u2161 a\u2011b \u201cquoted\u201d \u2018single\u2019 \u00abangle\u00bb [a] {b} (c) "d"',
]


def test_coco_protocol_equals_pycocoevalcap_ptbtokenizer(fixture_captions):
  # One run of pycocoevalcap's PTBTokenizer (java -cp stanford-corenlp-3.4.1.jar ... -lowerCase, then its
  # PUNCTUATIONS dropped) over BERT's text form of every fixture caption, of every character of the tabled
  # blocks between letters and between digits, and of the edge cases.
  if shutil.which("java") is None:
    pytest.skip("pycocoevalcap's PTBTokenizer runs the Stanford jar: `java` is not on PATH")
  texts = fixture_captions + [f"a{char}b 1{char}2 {char}" for char in _tabled_characters()] + EDGE_LINES
  forms = [protocols.bert_text_form(text) for text in texts]
  expected = PTBTokenizer().tokenize({index: [{"caption": form}] for index, form in enumerate(forms)})
  ours = protocols.normalize(texts, "coco")
  different = [(texts[i], expected[i][0], ours[i]) for i in range(len(texts)) if ours[i] != expected[i][0]]
  assert not different, f"{len(different)} differ from pycocoevalcap's PTBTokenizer, first {different[:3]}"
  # What the lexer does that a split on spaces would not (each seen in the jar's output above).
  assert protocols.normalize(EDGE_LINES[:2], "coco") == [
    "call 555\u00a0123\u00a04567 or 12\u00a0345\u00a0678 9 not 12 345 67 or 12345 678 901",
    "3\u00a01\u20442 cm 1\u20442345 6 a1 \u2044 2",
  ]
  assert protocols.normalize(["Chest X-ray (arrow), there's a 1.5 cm nodule; can't tell"], "coco") == [
    "chest x ray -lrb- arrow -rrb- there s a 1 5 cm nodule can t tell"
  ]


def test_bert_text_form_is_the_wordpiece_round_trip(shared_data, fixture_captions):
  """A caption and the decoding of its own word pieces share the text form the protocols start from."""
  wordpiece = tokenizers.WordPieceTokenizer.from_vocab(shared_data / BERT_VOCAB)
  unknown = 0
  for caption in fixture_captions:
    decoded = wordpiece.decode(wordpiece.encode(caption))
    if "[UNK]" in decoded:  # Characters outside the vocabulary: the model cannot write them.
      unknown += 1
      continue
    assert decoded == protocols.bert_text_form(caption), caption
    assert protocols.bert_text_form(decoded) == decoded  # The form is its own fixed point.
  assert unknown < 20, f"{unknown} fixture captions hold characters outside bert-base-uncased's vocabulary"


def _official_imageclef(caption: str) -> str:
  # ImageCLEFmedical Caption's evaluator (2023-2025), preprocess_caption: lower case, digit runs ->
  # "number", string.punctuation deleted.
  caption = re.sub(r"\d+", "number", caption.lower())
  return caption.translate(str.maketrans("", "", string.punctuation))


def test_imageclef_protocol_is_the_official_preprocessing_of_the_text_form(fixture_captions):
  ours = protocols.normalize(fixture_captions, "imageclef")
  for caption, normalized in zip(fixture_captions, ours):
    assert normalized == " ".join(_official_imageclef(protocols.bert_text_form(caption)).split()), caption
  # The text form first: the official rule alone makes "xray" and "numbernumber" of the raw caption but
  # "x ray" and "number number" of its decoding.
  caption = "Chest X-ray (arrow): 1.5 cm nodule, T2-weighted; Löfgren's"
  assert protocols.normalize([caption], "imageclef") == [
    "chest x ray arrow number number cm nodule tnumber weighted lofgren s"
  ]
  assert " ".join(_official_imageclef(caption).split()) == (
    "chest xray arrow numbernumber cm nodule tnumberweighted löfgrens"
  )


def test_r2gen_protocol_keeps_the_cleaned_texts(report_sentences):
  # IU X-ray's cleaned reports are scored as they are (single spaces): the published tables' protocol.
  cleaned = report_sentences[:200]
  assert protocols.normalize(cleaned, "r2gen") == cleaned
  assert protocols.normalize(["the heart .  .", " no  effusion "], "r2gen") == ["the heart . .", "no effusion"]


def test_caption_metrics_normalise_both_sides_and_record_the_protocol():
  references = ["Chest X-ray: no effusion.", "Right-sided pneumothorax (arrow)."]
  decoded = ["chest x - ray : no effusion .", "right - sided pneumothorax ( arrow ) ."]
  for name in ("coco", "imageclef"):
    scores = captioning.caption_metrics(references, decoded, protocol=name, meteor=False)
    assert scores["BLEU-4"] == pytest.approx(1.0, abs=1e-8) and scores["ROUGE-L"] == 1.0, name
    assert scores["protocol"] == {"name": name, "rule": protocols.PROTOCOLS[name].rule}
  # As written, the two spellings are different texts.
  scores = captioning.caption_metrics(references, decoded, protocol="r2gen", meteor=False)
  assert scores["BLEU-1"] < 0.8 and scores["ROUGE-L"] < 0.8
  with pytest.raises(MetricInputError, match="unknown caption protocol 'ptb'; expected one of"):
    captioning.caption_metrics(references, decoded, protocol="ptb", meteor=False)


def test_protocol_for_a_data_config():
  def data(**fields):
    return ml_collections.ConfigDict(fields)

  assert protocols.protocol_for(data(name="iu_xray")) == "r2gen"
  assert protocols.protocol_for(data(name="phantom")) == "r2gen"
  assert protocols.protocol_for(data(name="roco")) == "coco"
  assert protocols.protocol_for(data(name="rocov2")) == "imageclef"
  assert protocols.protocol_for(data(name="rocov2", caption_protocol="coco")) == "coco"
  assert protocols.protocol_for({"name": "roco", "caption_protocol": "imageclef"}) == "imageclef"
  with pytest.raises(ConfigError, match=r"^config\.data\.caption_protocol: unknown protocol 'COCO'; expected"):
    protocols.protocol_for(data(name="roco", caption_protocol="COCO"))
  with pytest.raises(ConfigError, match=r"^config\.data\.caption_protocol: not set, and dataset 'chestxray14'"):
    protocols.protocol_for(data(name="chestxray14"))
