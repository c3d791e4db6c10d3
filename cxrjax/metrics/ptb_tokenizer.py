"""The COCO caption evaluation's tokenisation in Python, for text in BERT's basic text form.

pycocoevalcap's `PTBTokenizer` runs Stanford CoreNLP 3.4.1's PTBTokenizer (`-preserveLines -lowerCase`)
over the captions, then drops its punctuation tokens (`PUNCTUATIONS`). `coco_tokens` gives the same tokens
without Java for text already in BERT's basic text form (protocols.bert_text_form: lower case, accents
stripped, every punctuation character a word of its own), which is what the "coco" scoring protocol
feeds it. On such text the lexer's rules reduce to these (tests/metrics/test_protocols.py runs the jar):

  - a run of letters and digits is one token ("t2", "2cm"); as in the lexer, "cannot" is "can not" and
    "gonna", "gotta", "lemme", "gimme", "wanna" split after three letters;
  - the digit groups of a phone number ("12 345 678") and a fraction with the fraction slash ("1⁄2",
    "3 1⁄2") are one token, spaces written as no-break spaces (the lexer's normalizeSpace);
  - a run of superscript or of subscript digits ("²³", "⁻¹") is one token, three spaced full stops one;
  - every other character is a token of its own, written as the lexer writes it: brackets -lrb- -rrb-
    -lsb- -rsb- -lcb- -rcb- (lower-cased, so that pycocoevalcap's upper-case PUNCTUATIONS never drop
    them), quotes `` '' ` ', dashes "--", "…" "...", ½ ¼ ¾ ⅓ ⅔ "1/2" ..., ¢ £ ¤ ₠ € "cents" "#" "$";
  - characters the lexer cannot tokenise are deleted, as it deletes them (with a warning): letter
    numbers (Ⅱ), unassigned code points, code points beyond U+FFFF (it reads UTF-16 units) and the
    exceptions of `_DELETED`;
then the tokens in PUNCTUATIONS are dropped.
The character classes equal the jar's on every character of ASCII, U+0080-U+03FF (Latin-1 to Greek),
U+2000-U+2BFF (general punctuation, super- and subscripts, currency, letterlike, number forms, arrows,
mathematical and technical symbols, shapes, dingbats), U+3000-U+303F and U+FF00-U+FFEF (`_TABLED`; the
test compares each). Elsewhere (other scripts) letters and decimal digits are words and the rest is
deleted, which misses the few symbols of those blocks the lexer keeps and the letters its 2014 Unicode
tables lack.
"""

from __future__ import annotations

import functools
import re
import unicodedata

# pycocoevalcap/tokenizer/ptbtokenizer.py's PUNCTUATIONS, as written (upper-case brackets included).
PUNCTUATIONS = frozenset(
  ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)

# Single characters the lexer writes differently (PTB escaping with -lowerCase, quotes as LaTeX quotes).
_MAPPED = {
  "(": "-lrb-",
  ")": "-rrb-",
  "[": "-lsb-",
  "]": "-rsb-",
  "{": "-lcb-",
  "}": "-rcb-",
  '"': "''",
  "\u00ab": "``",
  "\u00bb": "''",
  "\u201c": "``",
  "\u201d": "''",
  "\u2018": "`",
  "\u201b": "`",
  "\u2039": "`",
  "\u2019": "'",
  "\u203a": "'",
  "\u2013": "--",
  "\u2014": "--",
  "\u2015": "--",
  "\u2026": "...",
  "\u00bc": "1/4",
  "\u00bd": "1/2",
  "\u00be": "3/4",
  "\u2153": "1/3",
  "\u2154": "2/3",
  "\u00a2": "cents",
  "\u00a3": "#",
  "\u00a4": "$",
  "\u20a0": "$",
  "\u20ac": "$",
}
# Characters the lexer deletes although their category would make them a token: hyphens and dots of
# General Punctuation it has no rule for, the currencies outside its list, some fractions, CJK brackets
# and marks, half-width forms.
_DELETED = (
  (0x2010, 0x2012),
  (0x2024, 0x2025),
  (0x2027, 0x2027),
  (0x203C, 0x203D),
  (0x2043, 0x2043),
  (0x2045, 0x205E),
  (0x20A1, 0x20A3),
  (0x20A5, 0x20AB),
  (0x20AD, 0x20CF),
  (0x2150, 0x2152),
  (0x215F, 0x215F),
  (0x2189, 0x218B),
  (0x3003, 0x3004),
  (0x3008, 0x3011),
  (0x3013, 0x3020),
  (0x3030, 0x3030),
  (0x3036, 0x3037),
  (0x303D, 0x303F),
  (0xFFE2, 0xFFE4),
  (0xFFE8, 0xFFEE),
)
# Characters the lexer keeps inside words although they are not letters or digits (spacing modifier
# letters and a Greek symbol in its LETTER class), and unassigned code points it treats as letters or
# symbols (its ranges cover them).
_WORD = (
  (0x02C2, 0x02C5),
  (0x02D2, 0x02DF),
  (0x02E5, 0x02EB),
  (0x02ED, 0x02ED),
  (0x02EF, 0x02FF),
  (0x0375, 0x0375),
  (0x0378, 0x0379),
  (0x0384, 0x0384),
  (0x03F6, 0x03F6),
)
_TOKEN = ((0x2427, 0x243F), (0x244B, 0x245F), (0x2B74, 0x2B75), (0x2B96, 0x2B96))

# Where the classes above and the categories give exactly the jar's classes: ASCII, Latin-1 to Greek,
# General Punctuation to Miscellaneous Symbols and Arrows, CJK Symbols and Punctuation, half- and
# full-width forms. Elsewhere the lexer knows few symbols and punctuation marks, so they are deleted.
_TABLED = ((0x0000, 0x03FF), (0x2000, 0x2BFF), (0x3000, 0x303F), (0xFF00, 0xFFEF))

_WORD_CHAR, _TOKEN_CHAR, _DELETED_CHAR = 0, 1, 2

# The lexer's PHONE and FRAC on text whose punctuation stands apart (so their "-", "." and "(" cannot
# occur); PHONE's digits are ASCII, FRAC's any decimal digits. SUBSUPNUM: superscript or subscript digits.
_PHONE = re.compile(r"(?:[0-9]{2,4} )?[0-9]{2,4} [0-9]{3,4} ?[0-9]{3,5}")
_PHONE_MAX = 20
_FRAC = re.compile(r"(?:\d{1,4} )?\d{1,4}\u2044\d{1,4}")
_FRAC_MAX = 14
_SUBSUPNUM = re.compile("[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)")
# SPACEDLDOTS: three or more spaced full stops are one ellipsis.
_SPACED_DOTS = re.compile(r"\.(?: \.){2,}")
# The lexer's assimilations: "cannot" -> "can" "not", the others split after three letters.
_ASSIMILATIONS = {"cannot": 3, "gonna": 3, "gotta": 3, "lemme": 3, "gimme": 3, "wanna": 3}


def _in(ranges: tuple[tuple[int, int], ...], code: int) -> bool:
  return any(start <= code <= end for start, end in ranges)


@functools.lru_cache(maxsize=4096)
def _char_class(char: str) -> int:
  code = ord(char)
  if code > 0xFFFF:  # Two UTF-16 units the lexer cannot tokenise.
    return _DELETED_CHAR
  if char in _MAPPED or _in(_TOKEN, code):
    return _TOKEN_CHAR
  if _in(_DELETED, code):
    return _DELETED_CHAR
  if _in(_WORD, code):
    return _WORD_CHAR
  category = unicodedata.category(char)
  if category[0] == "L" or category == "Nd":
    return _WORD_CHAR
  if (category[0] in "SP" or category == "No") and _in(_TABLED, code):
    return _TOKEN_CHAR
  return _DELETED_CHAR


def _longest(pattern: re.Pattern, text: str, start: int, max_length: int) -> int:
  """The end of the longest match of `pattern` at `start` (the lexer's rule), or `start`."""
  if not pattern.match(text, start):  # Most digits start no phone number or fraction.
    return start
  for end in range(min(len(text), start + max_length), start, -1):
    if pattern.fullmatch(text, start, end):
      return end
  return start


def ptb_tokens(text: str) -> list[str]:
  """The PTB lexer's tokens (-lowerCase) of `text` in BERT's basic text form, before any is dropped."""
  tokens = []
  position, length = 0, len(text)
  while position < length:
    char = text[position]
    if char == " ":
      position += 1
      continue
    char_class = _char_class(char)
    end = position
    if char_class == _WORD_CHAR:
      # A run that starts with a digit (the lexer's THING) takes letters and digits only; one that
      # starts with a letter (its WORD) also the modifier letters of `_WORD`.
      starts_with_digit = char.isdecimal()
      while (
        end < length and _char_class(text[end]) == _WORD_CHAR and not (starts_with_digit and _in(_WORD, ord(text[end])))
      ):
        end += 1
    number_end = max(
      _longest(_PHONE, text, position, _PHONE_MAX) if "0" <= char <= "9" else position,
      _longest(_FRAC, text, position, _FRAC_MAX) if char.isdecimal() else position,
    )
    if number_end > end:  # Longer than the word: the lexer's longest match.
      tokens.append(text[position:number_end].replace(" ", "\u00a0"))
      position = number_end
      continue
    if end > position:
      word = text[position:end]
      split = _ASSIMILATIONS.get(word)
      tokens.extend([word[:split], word[split:]] if split else [word])
      position = end
      continue
    match = _SUBSUPNUM.match(text, position) or _SPACED_DOTS.match(text, position)
    if match and match.group().startswith("."):
      tokens.append("...")
      position = match.end()
      continue
    if match:
      tokens.append(match.group())
      position = match.end()
      continue
    if char_class == _TOKEN_CHAR:
      tokens.append(_MAPPED.get(char, char))
    position += 1
  return tokens


def coco_tokens(text: str) -> list[str]:
  """pycocoevalcap's PTBTokenizer output of `text` (in BERT's basic text form), as a token list."""
  return [token for token in ptb_tokens(text) if token not in PUNCTUATIONS]
