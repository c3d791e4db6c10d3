"""The tokenizer of a Hugging Face text-encoder directory (BERT, DistilBERT, RoBERTa, DeBERTa), without transformers.

`from_directory(directory, family)` reads, in this order (the files transformers' slow tokenizers read, which
is what `bert-score` asks for with its default use_fast=False):

  vocab.txt                  BERT WordPiece (tokenizers.WordPieceTokenizer.from_vocab), lower-cased unless
                             tokenizer_config.json says "do_lower_case": false
  vocab.json + merges.txt    RoBERTa's and DeBERTa's byte-level BPE (ByteLevelBPETokenizer)
  tokenizer.json             either model, as the file describes it (its post-processor unused)

and returns the tokenizer (start = [CLS] / <s>, end = [SEP] / </s>, or the cls_token / sep_token /
pad_token / unk_token of tokenizer_config.json) and `model_max_length` from tokenizer_config.json (None
when the file does not give one).

RoBERTa's byte-level BPE always adds a space before the text (`add_prefix_space`), as `bert-score` asks of
RoBERTa tokenizers, so the first word is encoded as every later one ("ĠChest", not "Chest"). DeBERTa's adds
one only where tokenizer_config.json says "add_prefix_space": true (DebertaTokenizer's default is false, and
bert-score passes add_prefix_space only to GPT-2 and RoBERTa tokenizers: "Chest" for DeBERTa). (transformers before 4.24 derived DebertaTokenizer from
GPT2Tokenizer, so bert-score under those versions encoded DeBERTa texts with the space: "ĠChest".)
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterable
from typing import Any

import tokenizers as hf_tokenizers

from cxrjax.text import tokenizers
from cxrjax.text.tokenizers import VocabularyFileError

VOCAB_TXT, VOCAB_JSON, MERGES_TXT = "vocab.txt", "vocab.json", "merges.txt"
TOKENIZER_JSON, TOKENIZER_CONFIG = "tokenizer.json", "tokenizer_config.json"

# Special tokens (start, end, pad, unk) of each encoder family's tokenizer.
FAMILY_SPECIALS = {
  "bert": ("[CLS]", "[SEP]", "[PAD]", "[UNK]"),
  "distilbert": ("[CLS]", "[SEP]", "[PAD]", "[UNK]"),
  "roberta": ("<s>", "</s>", "<pad>", "<unk>"),
  "deberta": ("[CLS]", "[SEP]", "[PAD]", "[UNK]"),
}
ROBERTA_SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")
DEBERTA_SPECIAL_TOKENS = ("[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]")
# transformers' "no limit" model_max_length (int(1e30)) and anything near it.
_NO_LIMIT = 10**18


class ByteLevelBPETokenizer(tokenizers.LibraryTokenizer):
  """RoBERTa's and DeBERTa's byte-level BPE (Hugging Face `tokenizers`), with the interface of
  tokenizers.WordPieceTokenizer (tokenizers.LibraryTokenizer's encode, decode, len, tokens, token_id):
  encode(text, max_length) -> [start] pieces [end] ids (a long text keeps its first max_length - 2 pieces);
  `add_prefix_space`: a space before the text (module doc)."""

  def __init__(
    self,
    tokenizer: hf_tokenizers.Tokenizer,
    *,
    start_token: str = "<s>",
    end_token: str = "</s>",
    pad_token: str = "<pad>",
    unk_token: str = "<unk>",
    source: str = "tokenizer",
    add_prefix_space: bool = True,
  ):
    if not isinstance(tokenizer.model, hf_tokenizers.models.BPE):
      raise VocabularyFileError(f"{source}: a {type(tokenizer.model).__name__} model, expected BPE")
    # bert-score encodes RoBERTa texts with add_prefix_space=True; a hub tokenizer.json says false.
    tokenizer.pre_tokenizer = hf_tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tokenizer.decoder = hf_tokenizers.decoders.ByteLevel()
    tokenizer.post_processor = None
    self._tokenizer = tokenizer
    self.cleaning_style = None
    ids = {}
    for role, token in (("start", start_token), ("end", end_token), ("pad", pad_token), ("unk", unk_token)):
      ids[role] = tokenizer.token_to_id(token)
      if ids[role] is None:
        raise VocabularyFileError(f"{source}: the {role} token {token!r} is not in the vocabulary")
    self.start_id, self.end_id, self.pad_id, self.unk_id = ids["start"], ids["end"], ids["pad"], ids["unk"]
    self._size = tokenizer.get_vocab_size(with_added_tokens=True)

  @classmethod
  def from_files(
    cls,
    vocab_json: str | os.PathLike,
    merges_txt: str | os.PathLike,
    special_tokens: Iterable[str] = ROBERTA_SPECIAL_TOKENS,
    add_prefix_space: bool = True,
    **roles: str,
  ) -> ByteLevelBPETokenizer:
    """From vocab.json + merges.txt, as transformers' RobertaTokenizer / DebertaTokenizer build it (no
    dropout, no continuing prefix, unknown pieces not fused); `special_tokens` stay whole in texts."""
    try:
      vocab, merges = hf_tokenizers.models.BPE.read_file(str(vocab_json), str(merges_txt))
    except Exception as error:  # The library raises a bare Exception for unreadable files.
      raise VocabularyFileError(f"{vocab_json} / {merges_txt}: not a readable BPE vocabulary ({error})") from None
    tokenizer = hf_tokenizers.Tokenizer(
      hf_tokenizers.models.BPE(
        vocab, merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
      )
    )
    tokenizer.add_special_tokens([token for token in special_tokens if token in vocab])
    return cls(tokenizer, source=str(vocab_json), add_prefix_space=add_prefix_space, **roles)


HFTokenizer = tokenizers.WordPieceTokenizer | ByteLevelBPETokenizer


def _config(directory: pathlib.Path) -> dict[str, Any]:
  path = directory / TOKENIZER_CONFIG
  if not path.is_file():
    return {}
  try:
    settings = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise VocabularyFileError(f"{path}: not valid JSON ({error})") from None
  if not isinstance(settings, dict):
    raise VocabularyFileError(f"{path}: expected a JSON object")
  return settings


def _special(settings: dict[str, Any], key: str, default: str, path: pathlib.Path) -> str:
  value = settings.get(key, default)
  value = value.get("content") if isinstance(value, dict) else value  # An AddedToken's serialised form.
  if not isinstance(value, str):
    raise VocabularyFileError(f"{path}: {key} is {value!r}; expected a token string")
  return value


def from_directory(directory: str | os.PathLike, family: str) -> tuple[HFTokenizer, int | None]:
  """The directory's tokenizer (module doc) for an encoder of `family` ("bert", "distilbert", "roberta",
  "deberta") and
  tokenizer_config.json's model_max_length (None when absent or transformers' "no limit")."""
  directory = pathlib.Path(directory)
  if family not in FAMILY_SPECIALS:
    raise ValueError(f"unknown encoder family {family!r}; known: {tuple(FAMILY_SPECIALS)}")
  settings = _config(directory)
  config_path = directory / TOKENIZER_CONFIG
  start, end, pad, unk = (
    _special(settings, key, default, config_path)
    for key, default in zip(("cls_token", "sep_token", "pad_token", "unk_token"), FAMILY_SPECIALS[family])
  )
  roles = dict(start_token=start, end_token=end, pad_token=pad)
  lowercase = settings.get("do_lower_case", True)
  prefix_space, specials = True, ROBERTA_SPECIAL_TOKENS
  if family == "deberta":
    prefix_space, specials = settings.get("add_prefix_space", False), DEBERTA_SPECIAL_TOKENS
    if not isinstance(prefix_space, bool):
      raise VocabularyFileError(f"{config_path}: add_prefix_space is {prefix_space!r}; expected true or false")
  if (directory / VOCAB_TXT).is_file() and family != "deberta":
    tokenizer = tokenizers.WordPieceTokenizer.from_vocab(
      directory / VOCAB_TXT,
      lowercase=bool(lowercase),
      unk_token=unk,
      special_tokens=tuple(dict.fromkeys((*tokenizers.BERT_SPECIAL_TOKENS, start, end, pad, unk))),
      **roles,
    )
  elif (directory / VOCAB_JSON).is_file() and (directory / MERGES_TXT).is_file():
    tokenizer = ByteLevelBPETokenizer.from_files(
      directory / VOCAB_JSON,
      directory / MERGES_TXT,
      special_tokens=tuple(dict.fromkeys((*specials, start, end, pad, unk))),
      add_prefix_space=prefix_space,
      unk_token=unk,
      **roles,
    )
  elif (directory / TOKENIZER_JSON).is_file():
    path = directory / TOKENIZER_JSON
    data = tokenizers._read_json(path)
    kind = data.get("model", {}).get("type") if isinstance(data, dict) and isinstance(data.get("model"), dict) else None
    if kind == "WordPiece":
      tokenizer = tokenizers.WordPieceTokenizer.from_tokenizer_json(path, **roles)
    elif kind == "BPE":
      tokenizer = ByteLevelBPETokenizer(
        tokenizers._hf_tokenizer_from_data(path, data),
        unk_token=unk,
        source=str(path),
        add_prefix_space=prefix_space,
        **roles,
      )
    else:
      raise VocabularyFileError(f"{path}: model type {kind!r}; expected WordPiece or BPE")
  else:
    raise VocabularyFileError(
      f"{directory}: no {VOCAB_TXT}, {VOCAB_JSON} + {MERGES_TXT} or {TOKENIZER_JSON}; "
      "not a Hugging Face tokenizer directory"
    )
  limit = settings.get("model_max_length")
  if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 2):
    raise VocabularyFileError(f"{config_path}: model_max_length is {limit!r}; expected a number >= 2")
  return tokenizer, None if limit is None or limit >= _NO_LIMIT else int(limit)
