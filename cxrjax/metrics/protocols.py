"""Caption scoring protocols: the one named rule that normalises the references and the generated captions
alike before every caption metric (captioning.caption_metrics applies it to both sides).

  r2gen      the texts as the data pipeline cleaned them (config.data.cleaning: R2Gen's for IU X-ray),
             whitespace collapsed: the published IU X-ray tables' protocol (R2Gen scores the decoded
             word-vocabulary texts, single-spaced); IU X-ray and the phantom sets.
  coco       the COCO caption evaluation's tokenisation: BERT's basic text form, then pycocoevalcap's
             PTBTokenizer (Stanford PTBTokenizer with -lowerCase, its punctuation tokens dropped;
             ptb_tokenizer.py reimplements it). ROCO's default (seed 002's captioners, GIT and BLIP, are
             scored by the COCO caption evaluation in their papers).
  imageclef  the ImageCLEFmedical Caption task's preprocessing (`preprocess_caption` of its official
             evaluator, the 2023 and 2025 editions, on ROCOv2): BERT's basic text form, then lower case,
             every run of digits replaced by "number", ASCII punctuation (Python's string.punctuation)
             deleted; whitespace tokens. ROCOv2's default.

Why BERT's basic text form comes first for the raw captions of ROCO and ROCOv2: a WordPiece captioner
writes the text of its word pieces, lower-cased, accents stripped, punctuation split off ("chest x - ray
, there ' s"); it cannot write "X-ray," or "there's". The dataset's rule alone does not bring the two
spellings together (PTB keeps "x-ray" whole but splits "x - ray" and drops the hyphen; ImageCLEF's rule
makes "xray" of one and "x ray" of the other), so a caption and the decoding of its own word pieces
would score below the maximum. Both sides are first put in that form, which a raw caption and its
WordPiece round trip share exactly (save characters outside the vocabulary, which decode as [UNK]), then
the rule applies. A word-vocabulary model's text goes through the same steps.

A run config names its protocol in `config.data.caption_protocol` (it travels with the dataset: the
captioners' phantom `demo` variants replace the whole data section); configs without the field (older
workdirs) get their dataset's default, `DATASET_DEFAULTS`.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Callable, Sequence
from typing import Any

from tokenizers import normalizers, pre_tokenizers

from cxrjax.core.errors import ConfigError
from cxrjax.metrics import ptb_tokenizer
from cxrjax.metrics.corpus import MetricInputError

CONFIG_FIELD = "config.data.caption_protocol"
DATASET_DEFAULTS = {
  "iu_xray": "r2gen",
  "phantom": "r2gen",
  "phantom_captions": "r2gen",
  "roco": "coco",
  "rocov2": "imageclef",
}

# BertTokenizer's basic tokenisation, as text/tokenizers.py's WordPieceTokenizer.from_vocab builds it
# (uncased: accents stripped with the lower case).
_BERT_NORMALIZER = normalizers.BertNormalizer(
  clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
)
_BERT_PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()
# The ImageCLEFmedical evaluator's preprocess_caption.
_DIGIT_RUN = re.compile(r"\d+")
_DELETE_ASCII_PUNCTUATION = str.maketrans("", "", string.punctuation)


def bert_text_form(text: str) -> str:
  """BERT's basic text form of `text`: control characters dropped, lower case, accents stripped, CJK
  characters and every punctuation character (ASCII symbols included) words of their own, single spaces.
  It is what an uncased WordPiece tokenizer's decode writes, so decode(encode(text)) equals it for every
  text whose words are in the vocabulary."""
  return " ".join(word for word, _ in _BERT_PRE_TOKENIZER.pre_tokenize_str(_BERT_NORMALIZER.normalize_str(text)))


def _r2gen(text: str) -> str:
  return " ".join(text.split())


def _coco(text: str) -> str:
  return " ".join(ptb_tokenizer.coco_tokens(bert_text_form(text)))


def _imageclef(text: str) -> str:
  text = _DIGIT_RUN.sub("number", bert_text_form(text).lower())
  return " ".join(text.translate(_DELETE_ASCII_PUNCTUATION).split())


@dataclasses.dataclass(frozen=True)
class CaptionProtocol:
  """A scoring protocol: its name, the rule in words (recorded in metrics.json) and the rule."""

  name: str
  rule: str
  normalize: Callable[[str], str]


PROTOCOLS = {
  protocol.name: protocol
  for protocol in (
    CaptionProtocol(
      "r2gen",
      "the cleaned texts (config.data.cleaning), whitespace tokens: the published IU X-ray tables' protocol",
      _r2gen,
    ),
    CaptionProtocol(
      "coco",
      "BERT's basic text form (lower case, accents stripped, punctuation split off, as "
      "an uncased WordPiece decoding writes), then the COCO caption evaluation's tokenisation "
      "(pycocoevalcap PTBTokenizer: Stanford PTBTokenizer -lowerCase, punctuation tokens "
      "dropped)",
      _coco,
    ),
    CaptionProtocol(
      "imageclef",
      "BERT's basic text form (lower case, accents stripped, punctuation split "
      "off, as an uncased WordPiece decoding writes), then the ImageCLEFmedical Caption "
      "evaluator's preprocessing (lower case, digit runs -> 'number', ASCII punctuation "
      "deleted), whitespace tokens",
      _imageclef,
    ),
  )
}


def get(name: str) -> CaptionProtocol:
  """The protocol called `name` (one of PROTOCOLS)."""
  if name not in PROTOCOLS:
    raise MetricInputError(f"unknown caption protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
  return PROTOCOLS[name]


def normalize(texts: Sequence[str], name: str) -> list[str]:
  """`texts` normalised by protocol `name`: single-space-separated tokens."""
  protocol = get(name)
  return [protocol.normalize(text) for text in texts]


def protocol_for(data_config: Any) -> str:
  """The protocol of a run's data section: its `caption_protocol`, else its dataset's default."""
  name = data_config.get("caption_protocol") or DATASET_DEFAULTS.get(data_config.get("name"))
  if name is None:
    raise ConfigError(
      f"{CONFIG_FIELD}: not set, and dataset {data_config.get('name')!r} has no default; set one of {sorted(PROTOCOLS)}"
    )
  if name not in PROTOCOLS:
    raise ConfigError(f"{CONFIG_FIELD}: unknown protocol {name!r}; expected one of {sorted(PROTOCOLS)}")
  return name
