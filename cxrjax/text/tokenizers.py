"""Report text: cleaning, a word vocabulary, and vocabulary statistics.

Two cleaning styles:
  "seed001": the rules listed in seed 001 (lower case, decontractions, punctuation
    other than the full stop removed, numbers removed, words of length <= 2 removed
    except "no", runs of full stops / spaces / "xx..." removed). Full stops become
    separate tokens: "no effusion . normal heart ."
  "r2gen": a reimplementation of `Tokenizer.clean_report_iu_xray` from R2Gen
    (Chen et al., EMNLP 2020), returning the same string, extra spaces included
    (tokenise with `str.split()`).

The vocabulary works on cleaned text split on whitespace; it does not clean.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence

from etils import epath

CLEANING_STYLES = ("seed001", "r2gen")

PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIAL_TOKENS = (PAD, UNK, START, END)
PAD_ID, UNK_ID, START_ID, END_ID = 0, 1, 2, 3
FULL_STOP = "."

# Applied in this order, so "won't" and "can't" are handled before the generic "n't".
# "'s" -> " is" also rewrites possessives ("patient's"), as the common snippet seed 001
# follows does.
_DECONTRACTIONS = (
    ("won't", "will not"),
    ("can't", "can not"),
    ("n't", " not"),
    ("'re", " are"),
    ("'s", " is"),
    ("'d", " would"),
    ("'ll", " will"),
    ("'t", " not"),
    ("'ve", " have"),
    ("'m", " am"),
)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'"})
# A decimal number goes as a whole, so "1.5 cm" does not leave a stray full stop.
_NUMBER = re.compile(r"\d+(?:\.\d+)*")
# Punctuation is deleted, not replaced by a space: seed 001's sample output has
# "tspine" for "T-spine".
_NOT_WORD_OR_FULL_STOP = re.compile(r"[^a-z.\s]")
# "XXXX" is the anonymisation mask of IU X-ray; a single x ("x-ray") stays.
_X_RUN = re.compile(r"x{2,}")

# R2Gen writes the class as '[.,?;*!%^&_+():-\[\]{}]', in which ':-\[' is a range
# (':' to '['): it removes ; < = > ? @ A-Z [ and keeps the hyphen. Spelled out here.
_R2GEN_REMOVED = re.compile(r"[.,?;*!%^&_+()\:;<=>?@A-Z\[\]{}]")


def clean_report(text: str, style: str = "seed001") -> str:
  """Cleans one report; `style` is "seed001" or "r2gen" (see the module docstring)."""
  if style == "seed001":
    return _clean_seed001(text)
  if style == "r2gen":
    return _clean_r2gen(text)
  raise ValueError(f"unknown cleaning style {style!r}; expected one of {CLEANING_STYLES}")


def _clean_seed001(text: str) -> str:
  text = text.lower().translate(_APOSTROPHES)
  for contraction, expansion in _DECONTRACTIONS:
    text = text.replace(contraction, expansion)
  text = _NUMBER.sub("", text)
  text = _NOT_WORD_OR_FULL_STOP.sub("", text)
  text = _X_RUN.sub("", text)
  tokens = text.replace(FULL_STOP, f" {FULL_STOP} ").split()
  kept = []
  for token in tokens:
    if token == FULL_STOP:
      # A run of full stops (also left behind by removed words) becomes one; a
      # report never starts with one.
      if kept and kept[-1] != FULL_STOP:
        kept.append(token)
    elif len(token) > 2 or token == "no":
      kept.append(token)
  return " ".join(kept)


def _clean_r2gen(text: str) -> str:
  for _ in range(3):  # R2Gen collapses up to eight dots with three passes.
    text = text.replace("..", ".")
  # List numbering; R2Gen removes "1. " anywhere in the text.
  text = text.replace("1. ", "")
  for number in "2345":
    text = text.replace(f". {number}. ", ". ")
  for number in "2345":
    text = text.replace(f" {number}. ", ". ")
  sentences = text.strip().lower().split(". ")
  cleaned = []
  for sentence in sentences:
    for char in ('"', "/", "\\", "'"):
      sentence = sentence.replace(char, "")
    # R2Gen keeps empty sentences (its filter compares a str with []), so they stay.
    cleaned.append(_R2GEN_REMOVED.sub("", sentence.strip().lower()))
  return " . ".join(cleaned) + " ."


class VocabularyFileError(ValueError):
  """A vocabulary JSON file that cannot be read or has the wrong format."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Word vocabulary: ids 0-3 are <pad>, <unk>, <start>, <end>, then words.

  Words are ordered by training count (descending), ties alphabetically.
  """

  tokens: tuple[str, ...]
  min_count: int = 1
  cleaning_style: str | None = None

  def __post_init__(self):
    if tuple(self.tokens[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {self.tokens[:4]}")
    if len(set(self.tokens)) != len(self.tokens):
      raise ValueError("vocabulary tokens must be unique")
    object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.tokens)})

  @classmethod
  def build(cls, texts: Iterable[str], min_count: int = 3,
            cleaning_style: str | None = None) -> Vocabulary:
    """Builds from cleaned training texts; keeps words seen >= `min_count` times (R2Gen: 3)."""
    if min_count < 1:
      raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = collections.Counter(word for text in texts for word in text.split())
    words = sorted((w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS),
                   key=lambda w: (-counts[w], w))
    return cls(tokens=SPECIAL_TOKENS + tuple(words), min_count=min_count,
               cleaning_style=cleaning_style)

  def __len__(self) -> int:
    return len(self.tokens)

  def __contains__(self, word: str) -> bool:
    return word in self._ids

  def token_id(self, word: str) -> int:
    return self._ids.get(word, UNK_ID)

  def encode(self, text: str, max_length: int | None = 60, pad: bool = False) -> list[int]:
    """Cleaned text -> [<start>, w1, ..., wn, <end>] ids, at most `max_length` long.

    A longer report keeps its first `max_length - 2` words and still ends with
    <end>, so a model always sees the end of a report. (R2Gen cuts the whole
    sequence to `max_seq_length`, dropping the end token of long reports.)
    `pad` pads with <pad> (0) to exactly `max_length`.
    """
    words = text.split()
    if max_length is not None:
      if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (start and end), got {max_length}")
      words = words[:max_length - 2]
    ids = [START_ID] + [self.token_id(w) for w in words] + [END_ID]
    if pad:
      if max_length is None:
        raise ValueError("pad=True needs a max_length")
      ids += [PAD_ID] * (max_length - len(ids))
    return ids

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, stopping at the first <end>; <pad> and <start> are skipped."""
    words = []
    for token_id in ids:
      token_id = int(token_id)
      if token_id == END_ID:
        break
      if token_id in (PAD_ID, START_ID):
        continue
      if not 0 <= token_id < len(self.tokens):
        raise ValueError(f"token id {token_id} is outside the vocabulary (size {len(self.tokens)})")
      words.append(self.tokens[token_id])
    return " ".join(words)

  def to_json(self, path: str | os.PathLike) -> None:
    data = {"format": _JSON_FORMAT, "version": _JSON_VERSION, "min_count": self.min_count,
            "cleaning_style": self.cleaning_style, "tokens": list(self.tokens)}
    with epath.Path(path).open("w") as f:  # epath: local paths and gs:// alike.
      json.dump(data, f, indent=1, ensure_ascii=False)

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> Vocabulary:
    try:
      with epath.Path(path).open("r") as f:
        data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise VocabularyFileError(f"{path}: not a valid JSON file ({e})") from e
    if not isinstance(data, dict) or data.get("format") != _JSON_FORMAT:
      raise VocabularyFileError(f"{path}: not a cxrjax vocabulary (expected an object with "
                                f"\"format\": \"{_JSON_FORMAT}\")")
    if data.get("version") != _JSON_VERSION:
      raise VocabularyFileError(f"{path}: unsupported vocabulary version {data.get('version')!r}")
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
      raise VocabularyFileError(f"{path}: \"tokens\" must be a list of strings")
    try:
      return cls(tokens=tuple(tokens), min_count=int(data.get("min_count", 1)),
                 cleaning_style=data.get("cleaning_style"))
    except ValueError as e:
      raise VocabularyFileError(f"{path}: {e}") from e


_JSON_FORMAT = "cxrjax.vocabulary"
_JSON_VERSION = 1


@dataclasses.dataclass(frozen=True)
class SplitCoverage:
  """How much of one split's words the training split covers (full stops excluded)."""

  num_tokens: int
  num_types: int
  token_coverage: float  # share of word tokens whose word occurs in training
  type_coverage: float  # share of distinct words that occur in training
  unk_rate: float  # share of word tokens the min-count vocabulary maps to <unk>


@dataclasses.dataclass(frozen=True)
class VocabularyStats:
  train_tokens: int
  train_types: int  # distinct words in training (seed 001 reports about 1,424)
  vocabulary_size: int  # len(Vocabulary.build(train, min_count)): specials and "." included
  splits: dict[str, SplitCoverage]


def vocabulary_stats(train_texts: Sequence[str], eval_texts: Mapping[str, Sequence[str]],
                     min_count: int = 3) -> VocabularyStats:
  """Vocabulary size and the coverage of each evaluation split by the training words.

  Texts are cleaned; words are whitespace tokens other than the full stop.
  """
  train_counts = collections.Counter(_words(train_texts))
  vocabulary = Vocabulary.build(train_texts, min_count=min_count)
  splits = {}
  for name, texts in eval_texts.items():
    counts = collections.Counter(_words(texts))
    num_tokens = sum(counts.values())
    seen = [w for w in counts if w in train_counts]
    splits[name] = SplitCoverage(
        num_tokens=num_tokens,
        num_types=len(counts),
        token_coverage=_ratio(sum(counts[w] for w in seen), num_tokens),
        type_coverage=_ratio(len(seen), len(counts)),
        unk_rate=_ratio(sum(c for w, c in counts.items() if w not in vocabulary), num_tokens))
  return VocabularyStats(train_tokens=sum(train_counts.values()), train_types=len(train_counts),
                         vocabulary_size=len(vocabulary), splits=splits)


def _words(texts: Iterable[str]) -> Iterable[str]:
  return (w for text in texts for w in text.split() if w != FULL_STOP)


def _ratio(numerator: int, denominator: int) -> float:
  return numerator / denominator if denominator else 0.0
