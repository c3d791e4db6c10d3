"""Tests for cxrjax.text.cleaning: the three cleaning styles, against outputs written by hand."""

import pytest

from cxrjax.text import cleaning


# Expected outputs written by hand from the style's rules.
@pytest.mark.parametrize(
  "report, expected",
  [
    # The style's reference sample (its "pneumothora" keeps the x here: only runs of x go).
    (
      "The cardiomediastinal silhouette is normal in size and contour. No focal consolidation, "
      "pneumothorax or large pleural effusion. T-spine osteophytes.",
      "the cardiomediastinal silhouette normal size and contour . no focal consolidation "
      "pneumothorax large pleural effusion . tspine osteophytes .",
    ),
    # Decontractions, then words of length <= 2 ("is", "we", "it") go, "no" stays.
    (
      "There isn't any effusion; we can't exclude it. They're stable. No change.",
      "there not any effusion can not exclude . they are stable . no change .",
    ),
    ("Heart won't enlarge, it\u2019s fine.", "heart will not enlarge fine ."),
    # Numbers (decimals whole), the XXXX mask, runs of full stops and spaces.
    ("XXXX-year-old male. Heart size 1.5 cm...   No pneumothorax..", "yearold male . heart size . no pneumothorax ."),
    # List numbering leaves no leading or repeated full stop.
    ("1. No acute disease. 2. Stable XXXX.", "no acute disease . stable ."),
    ("", ""),
  ],
)
def test_clean_drop_short_words(report, expected):
  assert cleaning.clean_report(report, "drop_short_words") == expected
  assert cleaning.clean_report(report) == expected  # The default style.


# Expected outputs written by hand from R2Gen's clean_report_iu_xray.
@pytest.mark.parametrize(
  "report, expected",
  [
    (
      "The heart is normal. No pleural effusion or pneumothorax.. T-spine osteophytes.",
      "the heart is normal . no pleural effusion or pneumothorax . t-spine osteophytes .",
    ),
    # "1. " and ". 2. " numbering; "/" deleted without a space; decimals lose the dot.
    (
      "1. Heart size 1.5 cm (stable); lungs clear/normal. 2. No XXXX.",
      "heart size 15 cm stable lungs clearnormal . no xxxx .",
    ),
    # ':-\[' is a range in R2Gen's class: @ = ? go, the hyphen stays, spaces are left.
    ("Opacity @ left base = atelectasis? Mild-moderate.", "opacity  left base  atelectasis mild-moderate ."),
    # Empty sentences are kept, as in R2Gen.
    ("A. . B.", "a .  . b ."),
  ],
)
def test_clean_r2gen(report, expected):
  assert cleaning.clean_report(report, "r2gen") == expected


@pytest.mark.parametrize(
  "caption, expected",
  [
    # ROCO captions start with a space; case, punctuation and accents are the tokenizer's business.
    (" Axial MRI (coronal view).", "Axial MRI (coronal view)."),
    ("Chest\tX-ray:\n\n  Café   «sign»  ", "Chest X-ray: Café «sign»"),
    ("   ", ""),
  ],
)
def test_clean_none_only_collapses_whitespace(caption, expected):
  assert cleaning.clean_report(caption, "none") == expected


def test_clean_unknown_style():
  with pytest.raises(ValueError, match="unknown cleaning style 'seed001'"):
    cleaning.clean_report("a", "seed001")
  assert cleaning.CLEANING_STYLES == ("drop_short_words", "r2gen", "none")
