"""Pretrained word vectors (GloVe, fastText) as the initial weights of a captioner's word embedding.

Seed 000 initialises its embedding with GloVe (300-d) and trains it; seed 001 uses fastText vectors
and freezes them (`freeze_embedding` in the model config). Two text formats are read:

  GloVe  `.txt`: one word per line followed by its floats, separated by single spaces
         ("the 0.418 0.24968 ..."). GloVe 840B has a few words that contain spaces (". . ."), so a
         line is split from the right: the last `dim` fields are the vector, the rest the word.
  fastText `.vec`: the same, after a header line "<count> <dim>" (recognised by its two integers;
         lines may end with a trailing space). The count is checked, so a truncated file is an error.

The file is streamed line by line and only the vectors of vocabulary words are kept (GloVe 840B is
5 GB). Lines of other words are checked for their field count only: converting every float of a
5 GB file would cost minutes for vectors that are thrown away. A duplicate is an error when the word
is a vocabulary word (its vector would be ambiguous); gensim, for one, reports duplicates in the
large GloVe files, so duplicates of words we do not keep are not checked.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Sequence

import numpy as np

from cxrjax.text import tokenizers
from cxrjax.core.errors import UserError


class WordVectorFileError(UserError):
  """A word-vector file that cannot be read: the message names the file and the line."""


@dataclasses.dataclass(frozen=True)
class WordVectorStats:
  """What `load_word_vectors` found.

  found: vocabulary words (special tokens excluded) whose vector was in the file.
  missing_words: vocabulary words without a vector, initialised randomly.
  lines: vector lines read (header excluded).
  init_scale: standard deviation of the random rows (that of the found vectors).
  """

  path: str
  dim: int
  lines: int
  found: int
  missing_words: tuple[str, ...]
  init_scale: float

  @property
  def missing(self) -> int:
    return len(self.missing_words)

  @property
  def coverage(self) -> float:
    """Share of the vocabulary's words (special tokens excluded) that have a pretrained vector."""
    total = self.found + self.missing
    return self.found / total if total else 0.0

  def summary(self) -> str:
    examples = ", ".join(self.missing_words[:10]) + (" ..." if self.missing > 10 else "")
    return (
      f"{self.path}: {self.dim}-d vectors for {self.found} of {self.found + self.missing} "
      f"vocabulary words ({self.coverage:.1%}) from {self.lines} lines; {self.missing} missing, "
      f"initialised randomly (std {self.init_scale:.3g})" + (f": {examples}" if self.missing else "")
    )


def _is_integer(field: str) -> bool:
  return field.isascii() and field.isdigit()


def _is_float(field: str) -> bool:
  try:
    float(field)
  except ValueError:
    return False
  return True


def load_word_vectors(
  path: str | os.PathLike, vocabulary: tokenizers.WordVocabulary | Sequence[str], dim: int | None = None, seed: int = 0
) -> tuple[np.ndarray, WordVectorStats]:
  """Reads a GloVe or fastText text file into an embedding matrix for `vocabulary`.

  Args:
    path: a GloVe `.txt` or fastText `.vec` file (format recognised from the first line).
    vocabulary: a `tokenizers.WordVocabulary`, or word-vocabulary tokens in id order (its special
      tokens named as tokenizers.SPECIAL_TOKENS).
    dim: the expected vector size (the model's embed_dim); None accepts the file's.
    seed: seeds the random rows of words the file lacks, so a run is reproducible.

  Returns:
    (matrix float32 [len(vocabulary), dim], stats). The pad row is zero (padding carries no
    meaning); the other special tokens (<unk>, <start>, <end>) and words missing from the file get
    normal random rows with the standard deviation of the found vectors, so they sit at the same
    scale as the pretrained ones. Special tokens are not counted as missing.

  Raises:
    FileNotFoundError: no such file.
    WordVectorFileError: a malformed line (wrong field count, a value that is not a number, text
      that is not UTF-8), a vector size other than `dim`, a duplicate vocabulary word, a fastText
      header that disagrees with the file, or no vocabulary word found at all (the wrong file).
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path}: word-vector file not found")
  if isinstance(vocabulary, tokenizers.WordVocabulary):
    tokens = vocabulary.tokens
    special_ids = {vocabulary.pad_id, vocabulary.unk_id, vocabulary.start_id, vocabulary.end_id}
    pad_id = vocabulary.pad_id
  else:
    tokens = tuple(vocabulary)
    special_ids = {i for i, token in enumerate(tokens) if token in tokenizers.SPECIAL_TOKENS}
    pad_id = tokens.index(tokenizers.PAD) if tokenizers.PAD in tokens else None
  wanted = {word: index for index, word in enumerate(tokens) if index not in special_ids}
  vectors: dict[str, np.ndarray] = {}
  first_line_of: dict[str, int] = {}
  header_count, lines, file_dim = None, 0, dim

  def error(line_number: int, problem: str) -> WordVectorFileError:
    return WordVectorFileError(f"{path}, line {line_number}: {problem}")

  with path.open("rb") as handle:
    for line_number, raw in enumerate(handle, start=1):
      try:
        line = raw.decode("utf-8").rstrip("\r\n").rstrip(" ")
      except UnicodeDecodeError as e:
        raise error(line_number, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
      if line_number == 1:
        fields = line.split(" ")
        if len(fields) == 2 and all(map(_is_integer, fields)):  # fastText header "<count> <dim>".
          header_count, header_dim = int(fields[0]), int(fields[1])
          if dim is not None and header_dim != dim:
            raise error(1, f"the header declares {header_dim}-d vectors; {dim}-d are expected")
          file_dim = header_dim
          continue
        if len(fields) < 2:
          raise error(1, f"expected a word followed by its vector values, got {line[:80]!r}")
        if dim is not None and len(fields) - 1 != dim:
          # GloVe: the first line shows the size, unless its word holds spaces (as a few in 840B do).
          spaced_word = len(fields) > dim + 1 and not _is_float(fields[-dim - 1])
          if not spaced_word:
            raise error(1, f"{len(fields) - 1}-d vectors; {dim}-d are expected")
        if file_dim is None:
          file_dim = len(fields) - 1
      lines += 1
      if not line:
        raise error(line_number, "empty line")
      # Most lines have exactly `file_dim` spaces; counting them is cheap, splitting 300 floats is not.
      spaces = line.count(" ")
      if spaces < file_dim:
        raise error(
          line_number,
          f"{spaces} values, expected a word and {file_dim} values (a truncated line, or vectors of another size)",
        )
      word = line[: line.index(" ")] if spaces == file_dim else line.rsplit(" ", file_dim)[0]
      if spaces > file_dim and _is_float(word.rsplit(" ", 1)[1]):
        # A word with spaces is legal (GloVe 840B); a word followed by extra numbers is not.
        raise error(
          line_number, f"more than {file_dim} values after {word.split(' ', 1)[0]!r}: vectors of another size"
        )
      if not word:
        raise error(line_number, "empty word")
      if word not in wanted:
        continue
      if word in first_line_of:
        raise error(line_number, f"duplicate word {word!r} (first on line {first_line_of[word]})")
      first_line_of[word] = line_number
      try:
        vectors[word] = np.array(line.rsplit(" ", file_dim)[1:], dtype=np.float32)
      except ValueError as e:
        raise error(line_number, f"a value of {word!r} is not a number ({e})") from None
      if not np.all(np.isfinite(vectors[word])):
        raise error(line_number, f"the vector of {word!r} has a non-finite value")

  if file_dim is None or (lines == 0 and header_count is None):
    raise WordVectorFileError(f"{path}: empty file (no vector lines)")
  if header_count is not None and header_count != lines:
    raise WordVectorFileError(
      f"{path}: the header declares {header_count} words but the file has {lines} vector lines (truncated?)"
    )
  if not vectors:
    raise WordVectorFileError(
      f"{path}: none of the {len(wanted)} vocabulary words has a vector in its {lines} lines; "
      f"is it the right file (language, casing)?"
    )

  found = np.stack(list(vectors.values()))  # [found, dim]
  scale = float(found.std())
  matrix = np.random.default_rng(seed).normal(0.0, scale, (len(tokens), file_dim)).astype(np.float32)
  for word, vector in vectors.items():
    matrix[wanted[word]] = vector
  if pad_id is not None:
    matrix[pad_id] = 0.0
  missing = tuple(word for word in wanted if word not in vectors)
  stats = WordVectorStats(
    path=str(path), dim=file_dim, lines=lines, found=len(vectors), missing_words=missing, init_scale=scale
  )
  return matrix, stats
