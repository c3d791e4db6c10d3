"""Tests for cxrjax.metrics.captioning against the reference packages (pycocoevalcap, sacrebleu,
rouge-score) on real IU X-ray report sentences and ROCO chest X-ray captions (fixtures in conftest.py)."""

import random

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.rouge.rouge import Rouge
import pytest
from rouge_score import rouge_scorer, scoring
import sacrebleu

from cxrjax.metrics import captioning

# The pycocoevalcap-compatible metrics must agree with pycocoevalcap 1.2 to this absolute tolerance
# (the contract is 1e-6; they agree to rounding, and BLEU's 1e-9 / 1e-15 constants show at ~1e-4).
TOLERANCE = 1e-9


def _pycocoevalcap_inputs(references, hypotheses):
  gts = {index: [refs] if isinstance(refs, str) else list(refs) for index, refs in enumerate(references)}
  res = {index: [hyp] for index, hyp in enumerate(hypotheses)}
  return gts, res


def _pycocoevalcap_scores(references, hypotheses):
  gts, res = _pycocoevalcap_inputs(references, hypotheses)
  bleu_scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
  rouge_score, _ = Rouge().compute_score(gts, res)
  cider_score, _ = Cider().compute_score(gts, res)
  return list(bleu_scores), float(rouge_score), float(cider_score)


def test_bleu_rouge_cider_match_pycocoevalcap(corpus):
  references, hypotheses = corpus
  assert "" in hypotheses and any(len(h.split()) == 1 for h in hypotheses)
  bleu, rouge_l, cider = _pycocoevalcap_scores(references, hypotheses)
  assert captioning.bleu_pycocoevalcap(references, hypotheses) == pytest.approx(bleu, abs=TOLERANCE)
  assert captioning.rouge_l_pycocoevalcap(references, hypotheses) == pytest.approx(rouge_l, abs=TOLERANCE)
  assert captioning.cider_d_pycocoevalcap(references, hypotheses) == pytest.approx(cider, abs=TOLERANCE)
  # A corpus that is neither trivial nor perfect, so the comparison means something.
  assert 0.05 < bleu[3] < 0.95 and 0.5 < cider < 9


def test_bleu_tiny_constants_match_pycocoevalcap(report_sentences):
  # Hypotheses of at most three words have no 4-grams: pycocoevalcap's 1e-15 / 1e-9 constants then
  # make the 4-gram precision 1e-6 instead of 0/0, and BLEU-4 small but far from zero.
  references = report_sentences[:20]
  hypotheses = [" ".join(reference.split()[:3]) for reference in references]
  bleu, _, _ = _pycocoevalcap_scores(references, hypotheses)
  ours = captioning.bleu_pycocoevalcap(references, hypotheses)
  assert ours == pytest.approx(bleu, abs=TOLERANCE)
  assert 1e-3 < ours[3] < 0.05


def test_multiple_references_match_pycocoevalcap(report_sentences):
  rng = random.Random(7)
  references = [rng.sample(report_sentences, rng.randint(1, 3)) for _ in range(30)]
  hypotheses = [rng.choice(refs) if i % 3 == 0 else rng.choice(report_sentences) for i, refs in enumerate(references)]
  bleu, rouge_l, cider = _pycocoevalcap_scores(references, hypotheses)
  assert captioning.bleu_pycocoevalcap(references, hypotheses) == pytest.approx(bleu, abs=TOLERANCE)
  assert captioning.rouge_l_pycocoevalcap(references, hypotheses) == pytest.approx(rouge_l, abs=TOLERANCE)
  assert captioning.cider_d_pycocoevalcap(references, hypotheses) == pytest.approx(cider, abs=TOLERANCE)
  # Two references equally close in length (3 and 5 words for 4): "closest" takes the shorter, so
  # there is no brevity penalty.
  references = [["heart size normal", "the heart size is normal"]]
  hypotheses = ["heart size is normal"]
  bleu, _, _ = _pycocoevalcap_scores(references, hypotheses)
  ours = captioning.bleu_pycocoevalcap(references, hypotheses)
  assert ours == pytest.approx(bleu, abs=TOLERANCE)
  assert ours[0] == pytest.approx(1.0, abs=1e-8)


def test_perfect_hypotheses_score_one(report_sentences):
  references = report_sentences[:40]
  results = captioning.caption_metrics(references, list(references), protocol="r2gen", meteor=False)
  for name in (
    "BLEU-1",
    "BLEU-2",
    "BLEU-3",
    "BLEU-4",
    "sacreBLEU",
    "ROUGE-L",
    "ROUGE-1",
    "ROUGE-2",
    "ROUGE-L (rouge-score)",
    "ROUGE-Lsum",
  ):
    assert results[name] == pytest.approx(1.0, abs=1e-8), name
  assert results["CIDEr"] > 5
  assert "METEOR" not in results and "METEOR" not in results["implementations"]


def test_empty_hypotheses_are_scored(report_sentences):
  references = report_sentences[:10]
  results = captioning.caption_metrics(references, [""] * 10, protocol="r2gen", meteor=False)
  for name in ("BLEU-1", "BLEU-4", "sacreBLEU", "ROUGE-L", "CIDEr", "ROUGE-1", "ROUGE-Lsum"):
    assert results[name] == pytest.approx(0.0, abs=1e-12), name
  # Empty references too (pycocoevalcap's Cider fails on a corpus without any n-gram).
  assert captioning.cider_d_pycocoevalcap(["", ""], ["", "heart"]) == 0.0
  assert captioning.bleu_pycocoevalcap([""], [""]) == pytest.approx([0.0] * 4, abs=1e-12)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="2 references, 3 hypotheses"):
    captioning.caption_metrics(["a b", "c d"], ["a", "b", "c"], protocol="r2gen", meteor=False)
  with pytest.raises(ValueError, match="empty corpus"):
    captioning.bleu_pycocoevalcap([], [])
  with pytest.raises(ValueError, match="hypothesis 1 is a NoneType"):
    captioning.rouge_l_pycocoevalcap(["a", "b"], ["a", None])
  with pytest.raises(ValueError, match="not a single string"):
    captioning.cider_d_pycocoevalcap("the heart", "the heart")
  with pytest.raises(ValueError, match="exactly one reference"):
    captioning.caption_metrics([["a", "b"]], ["a"], protocol="r2gen", meteor=False)


def test_sacrebleu_matches_package_and_reports_signature(corpus):
  references, hypotheses = corpus
  score, signature = captioning.sacrebleu_corpus(references, hypotheses)
  expected = sacrebleu.corpus_bleu(hypotheses, [references]).score / 100
  assert score == pytest.approx(expected, abs=1e-12)
  assert signature == (f"nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:{sacrebleu.__version__}")
  results = captioning.caption_metrics(references, hypotheses, protocol="r2gen", meteor=False)
  assert signature in results["implementations"]["sacreBLEU"]


def test_rouge_scores_match_rouge_score_package(corpus, report_sentences):
  references, hypotheses = corpus
  # Raw, punctuated, mixed-case and multi-line texts exercise rouge-score's own tokeniser and
  # ROUGE-Lsum's sentence split.
  rng = random.Random(3)
  references = references + ["The heart is NORMAL.\nNo effusion, no pneumothorax.", "Lungs: clear.\n\nHeart: normal."]
  hypotheses = hypotheses + ["No pneumothorax.\nThe heart is normal; no effusion.", "heart normal\nlungs clear"]
  references += [". ".join(rng.sample(report_sentences, 3)).replace(". ", ".\n") for _ in range(10)]
  hypotheses += ["\n".join(rng.sample(report_sentences, 2)) for _ in range(10)]
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
  expected = {"rouge1": [], "rouge2": [], "rougeL": [], "rougeLsum": []}
  for reference, hypothesis in zip(references, hypotheses):
    for name, score in scorer.score(reference, hypothesis).items():
      expected[name].append(score.fmeasure)
  ours = captioning.rouge_score_f1(references, hypotheses)
  assert ours["ROUGE-1"] == pytest.approx(np.mean(expected["rouge1"]), abs=TOLERANCE)
  assert ours["ROUGE-2"] == pytest.approx(np.mean(expected["rouge2"]), abs=TOLERANCE)
  assert ours["ROUGE-L (rouge-score)"] == pytest.approx(np.mean(expected["rougeL"]), abs=TOLERANCE)
  assert ours["ROUGE-Lsum"] == pytest.approx(np.mean(expected["rougeLsum"]), abs=TOLERANCE)
  assert ours["ROUGE-Lsum"] != pytest.approx(ours["ROUGE-L (rouge-score)"], abs=1e-3)


def test_seed002_metrics_on_roco_captions_match_the_packages(roco_chest_pairs):
  """ROUGE-1/2/L/Lsum as the rouge-score package (per pair, and its bootstrap 'mid' as Hugging Face
  `evaluate` reports it) and BLEU as sacrebleu, on raw ROCO chest X-ray captions (the "r2gen" protocol
  leaves them as written, so that the packages' own tokenisers see the texts they were given)."""
  references, hypotheses = roco_chest_pairs
  results = captioning.caption_metrics(references, hypotheses, protocol="r2gen", meteor=False)
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
  aggregator = scoring.BootstrapAggregator()
  per_pair = {"rouge1": [], "rouge2": [], "rougeL": [], "rougeLsum": []}
  for reference, hypothesis in zip(references, hypotheses):
    scores = scorer.score(reference, hypothesis)
    aggregator.add_scores(scores)
    for name, score in scores.items():
      per_pair[name].append(score.fmeasure)
  mid = {name: value.mid.fmeasure for name, value in aggregator.aggregate().items()}
  for ours, theirs in (
    ("ROUGE-1", "rouge1"),
    ("ROUGE-2", "rouge2"),
    ("ROUGE-L (rouge-score)", "rougeL"),
    ("ROUGE-Lsum", "rougeLsum"),
  ):
    assert results[ours] == pytest.approx(np.mean(per_pair[theirs]), abs=1e-12), ours
    assert results[ours] == pytest.approx(mid[theirs], abs=0.02), ours  # the bootstrap's noise
    assert "rouge-score" in results["implementations"][ours] and theirs in results["implementations"][ours]
  assert 0.2 < results["ROUGE-1"] < 0.8 and 0.1 < results["ROUGE-2"] < results["ROUGE-1"]
  expected_bleu = sacrebleu.corpus_bleu(hypotheses, [references]).score / 100
  assert results["sacreBLEU"] == pytest.approx(expected_bleu, abs=1e-12)
  assert 0.05 < expected_bleu < 0.9
  # Every number names what computed it, and the protocol is recorded beside them.
  assert set(results["implementations"]) == set(results) - {"implementations", "protocol"}
  assert results["protocol"]["name"] == "r2gen"
