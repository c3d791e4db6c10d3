"""Tests for cxrjax.metrics.baselines: constant-report baselines on a corpus built so that the answer
is known, checked against pycocoevalcap's Bleu, on R2Gen's real IU X-ray training reports, and on raw ROCO
captions counted and scored under a scoring protocol."""

import json
import time

from pycocoevalcap.bleu.bleu import Bleu
import pytest

from cxrjax.text import cleaning
from cxrjax.metrics import baselines, protocols

TYPICAL = "the heart is normal . the lungs are clear . no effusion ."
# "normal ." is the most common report, but BLEU's brevity penalty crushes a two-word constant
# against nine- to fifteen-word references; the typical long report shares most n-grams with them,
# and its variants each add or change words the others lack.
TRAIN = (
  ["normal ."] * 4
  + [TYPICAL] * 3
  + [
    "the heart is normal . the lungs are clear . no pneumothorax .",
    "the heart is enlarged . the lungs are clear . no effusion .",
    "the heart is normal . the lungs are clear . no effusion . no pneumothorax .",
    "heart size is normal . lungs are clear . no pleural effusion or pneumothorax .",
  ]
)


def _pycocoevalcap_bleu_4(candidate, train_reports):
  """pycocoevalcap's BLEU-4 of `candidate` against the training reports minus one of its copies."""
  references = list(train_reports)
  references.remove(candidate)
  scores, _ = Bleu(4).compute_score(
    {i: [r] for i, r in enumerate(references)}, {i: [candidate] for i in range(len(references))}, verbose=0
  )
  return scores[3]


def test_most_common_report_and_share():
  assert baselines.most_common_report(TRAIN) == ("normal .", 4 / 11)
  # Ties alphabetically.
  assert baselines.most_common_report(["b", "a", "b", "a", "c"]) == ("a", 0.4)


def test_best_constant_report_beats_the_short_most_common_one():
  report, score = baselines.best_constant_report(TRAIN)
  assert report == TYPICAL
  assert score == pytest.approx(_pycocoevalcap_bleu_4(TYPICAL, TRAIN), abs=1e-12)
  # Every candidate scores as pycocoevalcap scores it, and the chosen one is the best of them.
  candidates = sorted(set(TRAIN))
  expected = {candidate: _pycocoevalcap_bleu_4(candidate, TRAIN) for candidate in candidates}
  assert max(expected, key=expected.get) == TYPICAL
  assert expected["normal ."] < 0.01 < 0.5 < score
  # Restricted to the single most common candidate, the short report is all there is.
  report, score = baselines.best_constant_report(TRAIN, num_candidates=1)
  assert report == "normal ." and score == pytest.approx(expected["normal ."], abs=1e-12)


def test_best_constant_report_is_deterministic_on_ties():
  # Two mirror-image reports, equally common and equally good: the alphabetically first wins.
  train = ["a b c d", "e f g h"] * 3
  assert baselines.best_constant_report(train) == baselines.best_constant_report(train[::-1])
  assert baselines.best_constant_report(train)[0] == "a b c d"


def test_baselines_reject_bad_input():
  with pytest.raises(ValueError, match="no training reports"):
    baselines.most_common_report([])
  with pytest.raises(ValueError, match="not a single string"):
    baselines.best_constant_report("the heart is normal")
  with pytest.raises(ValueError, match="training report 1 is a NoneType"):
    baselines.most_common_report(["a", None])
  with pytest.raises(ValueError, match="at least two training reports"):
    baselines.best_constant_report(["the heart is normal"])
  with pytest.raises(ValueError, match="num_candidates must be >= 1"):
    baselines.best_constant_report(TRAIN, num_candidates=0)


def test_best_constant_report_on_real_iu_xray_training_reports(shared_data):
  with open(shared_data / "iu_xray" / "r2gen" / "annotation.json", encoding="utf-8") as f:
    train = [cleaning.clean_report(study["report"], "r2gen") for study in json.load(f)["train"]]
  train = train * 2  # 4,138 reports: the size the search must handle in seconds.
  started = time.perf_counter()
  report, score = baselines.best_constant_report(train)
  seconds = time.perf_counter() - started
  assert seconds < 10, f"best_constant_report took {seconds:.1f} s for {len(train)} reports"
  assert score == pytest.approx(_pycocoevalcap_bleu_4(report, train), abs=1e-12)
  most_common, share = baselines.most_common_report(train)
  assert 0 < share < 0.1 and report != most_common
  assert score > 1.5 * _pycocoevalcap_bleu_4(most_common, train)


def test_baselines_count_and_score_reports_under_a_protocol(shared_data):
  # Spellings of one caption under the "coco" protocol are one report; the one returned is its most
  # common spelling (ties alphabetically), so that scoring it normalises to the report that was counted.
  train = ["Chest X-ray.", "chest x-ray", "Chest X-Ray.", "Chest X-ray.", "Normal chest radiograph."]
  assert baselines.most_common_report(train) == ("Chest X-ray.", 0.4)
  assert baselines.most_common_report(train, protocol="coco") == ("Chest X-ray.", 0.8)
  assert baselines.most_common_report(["B x", "b x", "a"], protocol="coco") == ("B x", 2 / 3)
  # On real raw captions: the choice and its BLEU-4 are those of the normalised training reports, as
  # pycocoevalcap's Bleu scores them.
  path = shared_data / "roco" / "validation" / "radiology" / "captions.txt"
  with open(path, encoding="utf-8") as f:
    train = [line.split("\t", 1)[1].strip() for line in f if "chest x" in line.lower()][:300]
  normalized = protocols.normalize(train, "coco")
  report, score = baselines.best_constant_report(train, protocol="coco")
  normalized_report, normalized_score = baselines.best_constant_report(normalized)
  assert report in train and protocols.normalize([report], "coco") == [normalized_report]
  assert score == normalized_score == pytest.approx(_pycocoevalcap_bleu_4(normalized_report, normalized), abs=1e-12)
