"""Report cleaning: the text a tokenizer sees.

Three styles:
  "drop_short_words": lower case, decontractions, punctuation other than the full stop removed,
    numbers removed, words of length <= 2 removed except "no", runs of full stops / spaces /
    "xx..." (IU X-ray's anonymisation mask) removed. Full stops become separate tokens:
    "no effusion . normal heart ."
  "r2gen": a reimplementation of `Tokenizer.clean_report_iu_xray` from R2Gen (Chen et al., EMNLP
    2020), returning the same string, extra spaces included (tokenise with `str.split()`).
  "none": only collapses runs of whitespace (newlines included) to single spaces and strips the
    ends; for captions given to a WordPiece tokenizer, which does its own normalisation.
"""

from __future__ import annotations

import re

CLEANING_STYLES = ("drop_short_words", "r2gen", "none")

FULL_STOP = "."

# Applied in this order, so "won't" and "can't" are handled before the generic "n't".
# "'s" -> " is" also rewrites possessives ("patient's"), as the common snippet this style follows does.
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
# Punctuation is deleted, not replaced by a space: the style's reference output has "tspine" for
# "T-spine".
_NOT_WORD_OR_FULL_STOP = re.compile(r"[^a-z.\s]")
# "XXXX" is the anonymisation mask of IU X-ray; a single x ("x-ray") stays.
_X_RUN = re.compile(r"x{2,}")

# R2Gen writes the class as '[.,?;*!%^&_+():-\[\]{}]', in which ':-\[' is a range
# (':' to '['): it removes ; < = > ? @ A-Z [ and keeps the hyphen. Spelled out here.
_R2GEN_REMOVED = re.compile(r"[.,?;*!%^&_+()\:;<=>?@A-Z\[\]{}]")


def clean_report(text: str, style: str = "drop_short_words") -> str:
  """Cleans one report; `style` is one of CLEANING_STYLES (see the module docstring)."""
  if style == "drop_short_words":
    return _drop_short_words(text)
  if style == "r2gen":
    return _clean_r2gen(text)
  if style == "none":
    return " ".join(text.split())
  raise ValueError(f"unknown cleaning style {style!r}; expected one of {CLEANING_STYLES}")


def _drop_short_words(text: str) -> str:
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
