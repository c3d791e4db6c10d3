"""Tokenizers: text <-> token ids, with one interface for word vocabularies and WordPiece.

Every tokenizer (`Tokenizer`) has

  pad_id, start_id, end_id, unk_id   its special ids (nothing else may assume their values)
  len(tokenizer)                     the vocabulary size (the model's output classes)
  encode(text, max_length, pad)      [start] tokens [end]; a long text keeps its first
                                     max_length - 2 tokens and still ends with [end]
  decode(ids)                        text up to the first end id, pad and start skipped
  save(path)                         a JSON file that `load(path)` reads back
  tokens, token_id(token)            the vocabulary in id order, and one token's id
  cleaning_style                     the cleaning.clean_report style its texts get (None: unknown)

Two kinds:
  WordVocabulary      words of cleaned reports split on whitespace (the IU X-ray captioners);
                      ids 0-3 are <pad>, <unk>, <start>, <end>, then the words by training count.
  WordPieceTokenizer  BERT WordPiece through the Hugging Face `tokenizers` library, from a
                      `vocab.txt` (BERT's normalisation) or a `tokenizer.json`; [CLS] / [SEP] /
                      [PAD] / [UNK] by default, the start token overridable (BLIP's [DEC]).

Neither cleans: texts are cleaned first (cleaning.clean_report).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from etils import epath
import tokenizers as hf_tokenizers

from cxrjax.text import cleaning
from cxrjax.core.errors import UserError

# The word vocabulary's special tokens, in id order.
PAD, UNK, START, END = "<pad>", "<unk>", "<start>", "<end>"
SPECIAL_TOKENS = (PAD, UNK, START, END)

# BERT's special tokens (bert-base-uncased: [PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103).
BERT_SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

_WORD_VOCABULARY_FORMAT = "cxrjax.vocabulary"
_WORDPIECE_FORMAT = "cxrjax.wordpiece"
_JSON_VERSION = 1


class VocabularyFileError(UserError):
  """A tokenizer file (vocabulary JSON, vocab.txt, tokenizer.json) that cannot be read."""


class Tokenizer(Protocol):
  """What every tokenizer provides (see the module docstring)."""

  pad_id: int
  start_id: int
  end_id: int
  unk_id: int
  cleaning_style: str | None

  @property
  def tokens(self) -> tuple[str, ...]: ...

  def __len__(self) -> int: ...

  def token_id(self, token: str) -> int: ...

  def encode(self, text: str, max_length: int | None = None, pad: bool = False) -> list[int]: ...

  def decode(self, ids: Iterable[int]) -> str: ...

  def save(self, path: str | os.PathLike) -> None: ...


def _frame(start_id: int, ids: list[int], end_id: int, pad_id: int, max_length: int | None, pad: bool) -> list[int]:
  """[start] ids [end], cut to `max_length` keeping the end, padded to it when `pad`."""
  if max_length is not None:
    if max_length < 2:
      raise ValueError(f"max_length must be >= 2 (start and end), got {max_length}")
    ids = ids[: max_length - 2]
  framed = [start_id] + ids + [end_id]
  if pad:
    if max_length is None:
      raise ValueError("pad=True needs a max_length")
    framed += [pad_id] * (max_length - len(framed))
  return framed


def _content_ids(tokenizer: Tokenizer, ids: Iterable[int]) -> list[int]:
  """The ids before the first end id, without pad and start; each checked against the vocabulary."""
  kept, size = [], len(tokenizer)
  for token_id in ids:
    token_id = int(token_id)
    if token_id == tokenizer.end_id:
      break
    if token_id in (tokenizer.pad_id, tokenizer.start_id):
      continue
    if not 0 <= token_id < size:
      raise ValueError(f"token id {token_id} is outside the vocabulary (size {size})")
    kept.append(token_id)
  return kept


def _read_json(path: str | os.PathLike) -> Any:
  try:
    with epath.Path(path).open("r") as f:  # epath: local paths and gs:// alike.
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise VocabularyFileError(f"{path}: not a valid JSON file ({e})") from e


def _write_json(path: str | os.PathLike, data: Mapping[str, Any]) -> None:
  with epath.Path(path).open("w") as f:
    json.dump(data, f, indent=1, ensure_ascii=False)


# ----------------------------------------------------------------------------------------------
# Word vocabulary.


@dataclasses.dataclass(frozen=True)
class WordVocabulary:
  """Word vocabulary: ids 0-3 are <pad>, <unk>, <start>, <end>, then words.

  Words are ordered by training count (descending), ties alphabetically. Texts are split on
  whitespace; a word outside the vocabulary becomes <unk>.
  """

  tokens: tuple[str, ...]
  min_count: int = 1
  cleaning_style: str | None = None

  pad_id: ClassVar[int] = 0
  unk_id: ClassVar[int] = 1
  start_id: ClassVar[int] = 2
  end_id: ClassVar[int] = 3

  def __post_init__(self):
    if tuple(self.tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
      raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}, got {self.tokens[:4]}")
    if len(set(self.tokens)) != len(self.tokens):
      raise ValueError("vocabulary tokens must be unique")
    object.__setattr__(self, "_ids", {token: i for i, token in enumerate(self.tokens)})

  @classmethod
  def build(cls, texts: Iterable[str], min_count: int = 3, cleaning_style: str | None = None) -> WordVocabulary:
    """Builds from cleaned training texts; keeps words seen >= `min_count` times (R2Gen: 3)."""
    if min_count < 1:
      raise ValueError(f"min_count must be >= 1, got {min_count}")
    counts = collections.Counter(word for text in texts for word in text.split())
    words = sorted(
      (w for w, c in counts.items() if c >= min_count and w not in SPECIAL_TOKENS), key=lambda w: (-counts[w], w)
    )
    return cls(tokens=SPECIAL_TOKENS + tuple(words), min_count=min_count, cleaning_style=cleaning_style)

  def __len__(self) -> int:
    return len(self.tokens)

  def __contains__(self, word: str) -> bool:
    return word in self._ids

  def token_id(self, token: str) -> int:
    return self._ids.get(token, self.unk_id)

  def encode(self, text: str, max_length: int | None = None, pad: bool = False) -> list[int]:
    """Cleaned text -> [<start>, w1, ..., wn, <end>] ids, at most `max_length` long.

    A longer report keeps its first `max_length - 2` words and still ends with <end>, so a model
    always sees the end of a report. (R2Gen cuts the whole sequence to `max_seq_length`, dropping
    the end token of long reports.) `pad` pads with <pad> to exactly `max_length`.
    """
    return _frame(self.start_id, [self.token_id(w) for w in text.split()], self.end_id, self.pad_id, max_length, pad)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> words joined by spaces, stopping at the first <end>; <pad> and <start> are skipped."""
    return " ".join(self.tokens[i] for i in _content_ids(self, ids))

  def save(self, path: str | os.PathLike) -> None:
    self.to_json(path)

  def to_json(self, path: str | os.PathLike) -> None:
    _write_json(
      path,
      {
        "format": _WORD_VOCABULARY_FORMAT,
        "version": _JSON_VERSION,
        "min_count": self.min_count,
        "cleaning_style": self.cleaning_style,
        "tokens": list(self.tokens),
      },
    )

  @classmethod
  def from_json(cls, path: str | os.PathLike) -> WordVocabulary:
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != _WORD_VOCABULARY_FORMAT:
      raise VocabularyFileError(
        f'{path}: not a cxrjax vocabulary (expected an object with "format": "{_WORD_VOCABULARY_FORMAT}")'
      )
    return cls._from_data(path, data)

  @classmethod
  def _from_data(cls, path: str | os.PathLike, data: Mapping[str, Any]) -> WordVocabulary:
    if data.get("version") != _JSON_VERSION:
      raise VocabularyFileError(f"{path}: unsupported vocabulary version {data.get('version')!r}")
    tokens = data.get("tokens")
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
      raise VocabularyFileError(f'{path}: "tokens" must be a list of strings')
    try:
      return cls(
        tokens=tuple(tokens), min_count=int(data.get("min_count", 1)), cleaning_style=data.get("cleaning_style")
      )
    except ValueError as e:
      raise VocabularyFileError(f"{path}: {e}") from e


# ----------------------------------------------------------------------------------------------
# WordPiece.


class LibraryTokenizer:
  """What a tokenizer wrapping a Hugging Face `tokenizers.Tokenizer` (`self._tokenizer`, its `self._size`
  ids, and start / end / pad / unk ids) shares: the library encodes the pieces without its post-processor,
  `_frame` adds start and end; decoding stops at the first end id and skips pad and start."""

  _tokenizer: hf_tokenizers.Tokenizer
  _size: int
  start_id: int
  end_id: int
  pad_id: int
  unk_id: int

  def __len__(self) -> int:
    return self._size

  @functools.cached_property
  def tokens(self) -> tuple[str, ...]:
    return tuple(self._tokenizer.id_to_token(i) for i in range(self._size))

  def token_id(self, token: str) -> int:
    token_id = self._tokenizer.token_to_id(token)
    return self.unk_id if token_id is None else token_id

  def encode(self, text: str, max_length: int | None = None, pad: bool = False) -> list[int]:
    """Text -> [start, pieces..., end] ids, at most `max_length` long (see WordVocabulary.encode)."""
    pieces = self._tokenizer.encode(text, add_special_tokens=False).ids
    return _frame(self.start_id, pieces, self.end_id, self.pad_id, max_length, pad)

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text, stopping at the first end id; pad and start are skipped (class docstring)."""
    return self._tokenizer.decode(_content_ids(self, ids), skip_special_tokens=False)


class WordPieceTokenizer(LibraryTokenizer):
  """BERT WordPiece (Hugging Face `tokenizers`), with the interface of this module.

  encode: the library's normalisation, pre-tokenisation and WordPiece, without its post-processor
  (this class adds start and end), so ids equal `transformers.BertTokenizer`'s. Special tokens in a
  text ("[SEP]") stay whole, as in BertTokenizer.
  decode: word pieces joined into words ("pneumo ##thorax" -> "pneumothorax"), words and
  punctuation separated by single spaces, as BERT pre-tokenised them: BERT's basic text form
  ("chest x - ray , there ' s"), not the reference's spelling ("Chest X-ray, there's"). The text
  metrics do not compare the two as they are: a scoring protocol (cxrjax/metrics/protocols.py)
  normalises references and generated texts alike, and the raw-caption ones (ROCO, ROCOv2) start
  from this text form. An id of a special token other than pad / start / end decodes to its text
  ("[UNK]").
  """

  def __init__(
    self,
    tokenizer: hf_tokenizers.Tokenizer,
    *,
    start_token: str = "[CLS]",
    end_token: str = "[SEP]",
    pad_token: str = "[PAD]",
    cleaning_style: str | None = None,
    source: str = "tokenizer",
  ):
    """Wraps a WordPiece `tokenizers.Tokenizer`; the unknown token is its model's.

    Raises:
      VocabularyFileError: not a WordPiece model, or a special token that is not in the vocabulary
        (`source` names the file in the message).
    """
    model = tokenizer.model
    if not isinstance(model, hf_tokenizers.models.WordPiece):
      raise VocabularyFileError(f"{source}: a {type(model).__name__} model, expected WordPiece")
    self._tokenizer = tokenizer
    self.cleaning_style = cleaning_style
    self.start_token, self.end_token, self.pad_token = start_token, end_token, pad_token
    self.unk_token = model.unk_token
    ids = {}
    for role, token in (("start", start_token), ("end", end_token), ("pad", pad_token), ("unk", self.unk_token)):
      ids[role] = tokenizer.token_to_id(token)
      if ids[role] is None:
        raise VocabularyFileError(f"{source}: the {role} token {token!r} is not in the vocabulary")
    if len(set(ids.values())) != 4:
      raise VocabularyFileError(f"{source}: start, end, pad and unknown tokens must differ: {ids}")
    self.start_id, self.end_id, self.pad_id, self.unk_id = (ids["start"], ids["end"], ids["pad"], ids["unk"])
    self._size = tokenizer.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_vocab(
    cls,
    path: str | os.PathLike,
    *,
    lowercase: bool = True,
    special_tokens: Sequence[str] = BERT_SPECIAL_TOKENS,
    start_token: str = "[CLS]",
    end_token: str = "[SEP]",
    pad_token: str = "[PAD]",
    unk_token: str = "[UNK]",
    cleaning_style: str | None = None,
  ) -> WordPieceTokenizer:
    """From a BERT `vocab.txt` (one token a line, the line number its id).

    Normalisation as BertTokenizer's: control characters removed, Chinese characters split, lower
    case and accents stripped when `lowercase` (uncased models); then split on whitespace and
    punctuation, and WordPiece with "##" continuations (words over 100 characters -> unknown).
    `special_tokens` stay whole in texts; those missing from the file get the next ids in order
    (BLIP: BERT_SPECIAL_TOKENS + ("[DEC]", "[ENC]") gives [DEC] 30522, [ENC] 30523, with
    start_token="[DEC]").
    """
    vocab: dict[str, int] = {}
    try:
      with epath.Path(path).open("r") as f:
        for index, line in enumerate(f):
          token = line.rstrip("\r\n")
          if not token:
            raise VocabularyFileError(f"{path}: line {index + 1} is empty")
          if token in vocab:
            raise VocabularyFileError(f"{path}: line {index + 1} repeats {token!r} (line {vocab[token] + 1})")
          vocab[token] = index
    except UnicodeDecodeError as e:
      raise VocabularyFileError(f"{path}: not UTF-8 text ({e})") from e
    if not vocab:
      raise VocabularyFileError(f"{path}: empty vocabulary file")
    if unk_token not in vocab:
      raise VocabularyFileError(f"{path}: the unknown token {unk_token!r} is not in the vocabulary")
    tokenizer = hf_tokenizers.Tokenizer(
      hf_tokenizers.models.WordPiece(vocab, unk_token=unk_token, max_input_chars_per_word=100)
    )
    tokenizer.normalizer = hf_tokenizers.normalizers.BertNormalizer(
      clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = hf_tokenizers.decoders.WordPiece(prefix="##", cleanup=False)
    tokenizer.add_special_tokens(list(special_tokens))
    return cls(
      tokenizer,
      start_token=start_token,
      end_token=end_token,
      pad_token=pad_token,
      cleaning_style=cleaning_style,
      source=str(path),
    )

  @classmethod
  def from_tokenizer_json(
    cls,
    path: str | os.PathLike,
    *,
    start_token: str = "[CLS]",
    end_token: str = "[SEP]",
    pad_token: str = "[PAD]",
    cleaning_style: str | None = None,
  ) -> WordPieceTokenizer:
    """From a Hugging Face `tokenizer.json` with a WordPiece model (its post-processor unused)."""
    data = _read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
      raise VocabularyFileError(f'{path}: not a Hugging Face tokenizer.json (no "model" object)')
    return cls(
      _hf_tokenizer_from_data(path, data),
      start_token=start_token,
      end_token=end_token,
      pad_token=pad_token,
      cleaning_style=cleaning_style,
      source=str(path),
    )

  def save(self, path: str | os.PathLike) -> None:
    """Writes one JSON file: the special-token roles and the Hugging Face tokenizer.json content."""
    _write_json(
      path,
      {
        "format": _WORDPIECE_FORMAT,
        "version": _JSON_VERSION,
        "start_token": self.start_token,
        "end_token": self.end_token,
        "pad_token": self.pad_token,
        "cleaning_style": self.cleaning_style,
        "tokenizer": json.loads(self._tokenizer.to_str()),
      },
    )

  @classmethod
  def _from_data(cls, path: str | os.PathLike, data: Mapping[str, Any]) -> WordPieceTokenizer:
    if data.get("version") != _JSON_VERSION:
      raise VocabularyFileError(f"{path}: unsupported tokenizer version {data.get('version')!r}")
    roles = {}
    for key in ("start_token", "end_token", "pad_token"):
      if not isinstance(data.get(key), str):
        raise VocabularyFileError(f'{path}: "{key}" must be a string')
      roles[key] = data[key]
    if not isinstance(data.get("tokenizer"), dict):
      raise VocabularyFileError(f'{path}: "tokenizer" must hold a Hugging Face tokenizer object')
    return cls(
      _hf_tokenizer_from_data(path, data["tokenizer"]),
      **roles,
      cleaning_style=data.get("cleaning_style"),
      source=str(path),
    )

  def __repr__(self) -> str:
    return (
      f"WordPieceTokenizer(size={self._size}, start={self.start_token!r}, "
      f"end={self.end_token!r}, pad={self.pad_token!r}, unk={self.unk_token!r})"
    )


def _hf_tokenizer_from_data(path: str | os.PathLike, data: Mapping[str, Any]) -> hf_tokenizers.Tokenizer:
  try:
    tokenizer = hf_tokenizers.Tokenizer.from_str(json.dumps(data))
  except Exception as e:  # The library raises a bare Exception for a malformed tokenizer.
    raise VocabularyFileError(f"{path}: not a readable Hugging Face tokenizer ({e})") from e
  if isinstance(tokenizer.model, hf_tokenizers.models.WordPiece):
    # Decoding as the class docstring says, whatever the file's decoder (BERT's hub file cleans up
    # the spaces before punctuation).
    tokenizer.decoder = hf_tokenizers.decoders.WordPiece(
      prefix=tokenizer.model.continuing_subword_prefix, cleanup=False
    )
  return tokenizer


def load(path: str | os.PathLike) -> WordVocabulary | WordPieceTokenizer:
  """Reads a tokenizer saved by `save`, of either kind (or a Hugging Face WordPiece tokenizer.json).

  Raises:
    FileNotFoundError: no such file. VocabularyFileError: a file of neither kind.
  """
  data = _read_json(path)
  kind = data.get("format") if isinstance(data, dict) else None
  if kind == _WORD_VOCABULARY_FORMAT:
    return WordVocabulary._from_data(path, data)  # pylint: disable=protected-access
  if kind == _WORDPIECE_FORMAT:
    return WordPieceTokenizer._from_data(path, data)  # pylint: disable=protected-access
  if isinstance(data, dict) and isinstance(data.get("model"), dict):
    return WordPieceTokenizer.from_tokenizer_json(path)
  raise VocabularyFileError(
    f'{path}: not a tokenizer file (expected "format": "{_WORD_VOCABULARY_FORMAT}" or '
    f'"{_WORDPIECE_FORMAT}", or a Hugging Face tokenizer.json)'
  )


# ----------------------------------------------------------------------------------------------
# Vocabulary statistics.


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
  train_types: int  # distinct words in training (about 1,424 on IU X-ray, drop_short_words)
  vocabulary_size: int  # len(WordVocabulary.build(train, min_count)): specials and "." included
  splits: dict[str, SplitCoverage]


def vocabulary_stats(
  train_texts: Sequence[str], eval_texts: Mapping[str, Sequence[str]], min_count: int = 3
) -> VocabularyStats:
  """Word vocabulary size and the coverage of each evaluation split by the training words.

  Texts are cleaned; words are whitespace tokens other than the full stop.
  """
  train_counts = collections.Counter(_words(train_texts))
  vocabulary = WordVocabulary.build(train_texts, min_count=min_count)
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
      unk_rate=_ratio(sum(c for w, c in counts.items() if w not in vocabulary), num_tokens),
    )
  return VocabularyStats(
    train_tokens=sum(train_counts.values()),
    train_types=len(train_counts),
    vocabulary_size=len(vocabulary),
    splits=splits,
  )


def _words(texts: Iterable[str]) -> Iterable[str]:
  return (w for text in texts for w in text.split() if w != cleaning.FULL_STOP)


def _ratio(numerator: int, denominator: int) -> float:
  return numerator / denominator if denominator else 0.0
