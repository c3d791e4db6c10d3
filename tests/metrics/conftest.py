"""Fixtures of the metrics tests: real IU X-ray findings sentences and a perturbed corpus of them."""

import csv
import random
import re

import pytest


def _clean(text: str) -> str:
  """R2Gen-style cleaning: lower case, words of [a-z0-9] only, single spaces."""
  return " ".join(re.sub(r"[^a-z0-9]+", " ", text.lower()).split())


@pytest.fixture(scope="module")
def report_sentences(shared_data) -> list[str]:
  path = shared_data / "iu_xray" / "kaggle_csv" / "indiana_reports.csv"
  sentences = []
  with open(path, newline="") as file:
    for row in csv.DictReader(file):
      for sentence in re.split(r"(?<=\.)\s+", row["findings"] or ""):
        if cleaned := _clean(sentence):
          sentences.append(cleaned)
  assert len(sentences) > 1000, f"too few findings sentences in {path}"
  return sentences


@pytest.fixture(scope="module")
def corpus(report_sentences) -> tuple[list[str], list[str]]:
  """50 real reference sentences and perturbed hypotheses, empty and very short ones included."""
  rng = random.Random(20240601)
  references = rng.sample(report_sentences, 50)
  hypotheses = []
  for index, reference in enumerate(references):
    words = reference.split()
    kind = index % 10
    if kind == 0:
      hypotheses.append(reference)
    elif kind == 1:
      hypotheses.append(" ".join(words[: max(1, len(words) // 2)]))
    elif kind == 2:
      hypotheses.append(" ".join(word for word in words if rng.random() > 0.3))
    elif kind == 3:
      hypotheses.append(" ".join(rng.sample(words, len(words))))
    elif kind == 4:
      hypotheses.append(rng.choice(report_sentences))
    elif kind == 5:
      hypotheses.append("")
    elif kind == 6:
      hypotheses.append(words[0])
    elif kind == 7:
      hypotheses.append(reference + " " + rng.choice(report_sentences))
    elif kind == 8:
      hypotheses.append(" ".join(words[:2]))
    else:
      # A doubled space: pycocoevalcap's ROUGE-L splits on " " and so sees an empty token.
      hypotheses.append("  ".join(words[:3]))
  return references, hypotheses


def _roco_captions(path) -> list[str]:
  """`ROCO_xxxxx<TAB> caption` lines -> the captions (the leading space dropped)."""
  with open(path, encoding="utf-8") as file:
    return [line.split("\t", 1)[1].strip() for line in file if "\t" in line]


@pytest.fixture(scope="module")
def roco_chest_pairs(shared_data) -> tuple[list[str], list[str]]:
  """60 real ROCO chest X-ray captions (test split) as references, and as hypotheses real chest X-ray
  captions of the validation split, some of them perturbed; raw text: case, punctuation, numbers."""

  def chest(captions):
    return [c for c in captions if "chest x" in c.lower() or "chest radiograph" in c.lower()]

  references = chest(_roco_captions(shared_data / "roco" / "test" / "radiology" / "captions.txt"))
  others = chest(_roco_captions(shared_data / "roco" / "validation" / "radiology" / "captions.txt"))
  assert len(references) > 100 and len(others) > 100
  rng = random.Random(11)
  references = rng.sample(references, 60)
  hypotheses = []
  for index, reference in enumerate(references):
    words = reference.split()
    kind = index % 5
    if kind == 0:
      hypotheses.append(reference)
    elif kind == 1:
      hypotheses.append(" ".join(words[: max(1, len(words) // 2)]))
    elif kind == 2:
      hypotheses.append(" ".join(word for word in words if rng.random() > 0.3) + " " + rng.choice(others))
    elif kind == 3:
      hypotheses.append("")
    else:
      hypotheses.append(rng.choice(others))
  return references, hypotheses
