"""Tests for cxrjax.metrics against the reference packages (pycocoevalcap, sacrebleu, rouge-score,
NLTK, scikit-learn) on real IU X-ray report sentences."""

import csv
import random
import re
import shutil

import numpy as np
import pytest

from cxrjax.metrics import captioning as metrics

# The pycocoevalcap-compatible metrics must agree with pycocoevalcap 1.2 to this absolute tolerance
# (the contract is 1e-6; they agree to rounding, and BLEU's 1e-9 / 1e-15 constants show at ~1e-4).
TOLERANCE = 1e-9

# METEOR 1.5 of pycocoevalcap 1.2's own `Meteor().compute_score` on METEOR_REFERENCES /
# METEOR_HYPOTHESES (java 17), recorded once so that the test starts a single JVM.
METEOR_REFERENCES = [
    "the heart is normal in size",
    "no focal consolidation pleural effusion or pneumothorax",
    "the lungs are clear bilaterally",
    "mild degenerative changes of the thoracic spine",
    "stable cardiomegaly with clear lungs",
    "no acute cardiopulmonary abnormality",
]
METEOR_HYPOTHESES = [
    "heart size is normal",
    "no focal airspace consolidation effusion or pneumothorax",
    "lungs are clear",
    "",
    "the heart is enlarged and the lungs are clear",
    "no acute cardiopulmonary abnormality",
]
PYCOCOEVALCAP_METEOR = 0.29442007659234853


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
      hypotheses.append(" ".join(words[:max(1, len(words) // 2)]))
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


def _pycocoevalcap_inputs(references, hypotheses):
  gts = {index: [refs] if isinstance(refs, str) else list(refs)
         for index, refs in enumerate(references)}
  res = {index: [hyp] for index, hyp in enumerate(hypotheses)}
  return gts, res


def _pycocoevalcap_scores(references, hypotheses):
  bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
  rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")
  cider = pytest.importorskip("pycocoevalcap.cider.cider")
  gts, res = _pycocoevalcap_inputs(references, hypotheses)
  bleu_scores, _ = bleu.Bleu(4).compute_score(gts, res, verbose=0)
  rouge_score, _ = rouge.Rouge().compute_score(gts, res)
  cider_score, _ = cider.Cider().compute_score(gts, res)
  return list(bleu_scores), float(rouge_score), float(cider_score)


def test_bleu_rouge_cider_match_pycocoevalcap(corpus):
  references, hypotheses = corpus
  assert "" in hypotheses and any(len(h.split()) == 1 for h in hypotheses)
  bleu, rouge_l, cider = _pycocoevalcap_scores(references, hypotheses)
  assert metrics.bleu_pycocoevalcap(references, hypotheses) == pytest.approx(bleu, abs=TOLERANCE)
  assert metrics.rouge_l_pycocoevalcap(references, hypotheses) == pytest.approx(rouge_l,
                                                                               abs=TOLERANCE)
  assert metrics.cider_d_pycocoevalcap(references, hypotheses) == pytest.approx(cider,
                                                                               abs=TOLERANCE)
  # A corpus that is neither trivial nor perfect, so the comparison means something.
  assert 0.05 < bleu[3] < 0.95 and 0.5 < cider < 9


def test_bleu_tiny_constants_match_pycocoevalcap(report_sentences):
  # Hypotheses of at most three words have no 4-grams: pycocoevalcap's 1e-15 / 1e-9 constants then
  # make the 4-gram precision 1e-6 instead of 0/0, and BLEU-4 small but far from zero.
  references = report_sentences[:20]
  hypotheses = [" ".join(reference.split()[:3]) for reference in references]
  bleu, _, _ = _pycocoevalcap_scores(references, hypotheses)
  ours = metrics.bleu_pycocoevalcap(references, hypotheses)
  assert ours == pytest.approx(bleu, abs=TOLERANCE)
  assert 1e-3 < ours[3] < 0.05


def test_multiple_references_match_pycocoevalcap(report_sentences):
  rng = random.Random(7)
  references = [rng.sample(report_sentences, rng.randint(1, 3)) for _ in range(30)]
  hypotheses = [rng.choice(refs) if i % 3 == 0 else rng.choice(report_sentences)
                for i, refs in enumerate(references)]
  bleu, rouge_l, cider = _pycocoevalcap_scores(references, hypotheses)
  assert metrics.bleu_pycocoevalcap(references, hypotheses) == pytest.approx(bleu, abs=TOLERANCE)
  assert metrics.rouge_l_pycocoevalcap(references, hypotheses) == pytest.approx(rouge_l,
                                                                               abs=TOLERANCE)
  assert metrics.cider_d_pycocoevalcap(references, hypotheses) == pytest.approx(cider,
                                                                               abs=TOLERANCE)
  # Two references equally close in length (3 and 5 words for 4): "closest" takes the shorter, so
  # there is no brevity penalty.
  references = [["heart size normal", "the heart size is normal"]]
  hypotheses = ["heart size is normal"]
  bleu, _, _ = _pycocoevalcap_scores(references, hypotheses)
  ours = metrics.bleu_pycocoevalcap(references, hypotheses)
  assert ours == pytest.approx(bleu, abs=TOLERANCE)
  assert ours[0] == pytest.approx(1.0, abs=1e-8)


def test_perfect_hypotheses_score_one(report_sentences):
  references = report_sentences[:40]
  results = metrics.caption_metrics(references, list(references), meteor=False)
  for name in ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "sacreBLEU", "ROUGE-L", "ROUGE-1",
               "ROUGE-2", "ROUGE-L (rouge-score)", "ROUGE-Lsum"):
    assert results[name] == pytest.approx(1.0, abs=1e-8), name
  assert results["CIDEr"] > 5
  assert "METEOR" not in results and "METEOR" not in results["implementations"]


def test_empty_hypotheses_are_scored(report_sentences):
  references = report_sentences[:10]
  results = metrics.caption_metrics(references, [""] * 10, meteor=False)
  for name in ("BLEU-1", "BLEU-4", "sacreBLEU", "ROUGE-L", "CIDEr", "ROUGE-1", "ROUGE-Lsum"):
    assert results[name] == pytest.approx(0.0, abs=1e-12), name
  # Empty references too (pycocoevalcap's Cider fails on a corpus without any n-gram).
  assert metrics.cider_d_pycocoevalcap(["", ""], ["", "heart"]) == 0.0
  assert metrics.bleu_pycocoevalcap([""], [""]) == pytest.approx([0.0] * 4, abs=1e-12)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="2 references, 3 hypotheses"):
    metrics.caption_metrics(["a b", "c d"], ["a", "b", "c"], meteor=False)
  with pytest.raises(ValueError, match="empty corpus"):
    metrics.bleu_pycocoevalcap([], [])
  with pytest.raises(ValueError, match="hypothesis 1 is a NoneType"):
    metrics.rouge_l_pycocoevalcap(["a", "b"], ["a", None])
  with pytest.raises(ValueError, match="not a single string"):
    metrics.cider_d_pycocoevalcap("the heart", "the heart")
  with pytest.raises(ValueError, match="exactly one reference"):
    metrics.caption_metrics([["a", "b"]], ["a"], meteor=False)


def test_sacrebleu_matches_package_and_reports_signature(corpus):
  import sacrebleu  # pylint: disable=g-import-not-at-top
  references, hypotheses = corpus
  score, signature = metrics.sacrebleu_corpus(references, hypotheses)
  expected = sacrebleu.corpus_bleu(hypotheses, [references]).score / 100
  assert score == pytest.approx(expected, abs=1e-12)
  assert signature == ("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|"
                       f"version:{sacrebleu.__version__}")
  results = metrics.caption_metrics(references, hypotheses, meteor=False)
  assert signature in results["implementations"]["sacreBLEU"]


def test_rouge_scores_match_rouge_score_package(corpus, report_sentences):
  rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
  references, hypotheses = corpus
  # Raw, punctuated, mixed-case and multi-line texts exercise rouge-score's own tokeniser and
  # ROUGE-Lsum's sentence split.
  rng = random.Random(3)
  references = references + [
      "The heart is NORMAL.\nNo effusion, no pneumothorax.", "Lungs: clear.\n\nHeart: normal."]
  hypotheses = hypotheses + [
      "No pneumothorax.\nThe heart is normal; no effusion.", "heart normal\nlungs clear"]
  references += [". ".join(rng.sample(report_sentences, 3)).replace(". ", ".\n")
                 for _ in range(10)]
  hypotheses += ["\n".join(rng.sample(report_sentences, 2)) for _ in range(10)]
  scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"],
                                    use_stemmer=False)
  expected = {"rouge1": [], "rouge2": [], "rougeL": [], "rougeLsum": []}
  for reference, hypothesis in zip(references, hypotheses):
    for name, score in scorer.score(reference, hypothesis).items():
      expected[name].append(score.fmeasure)
  ours = metrics.rouge_score_f1(references, hypotheses)
  assert ours["ROUGE-1"] == pytest.approx(np.mean(expected["rouge1"]), abs=TOLERANCE)
  assert ours["ROUGE-2"] == pytest.approx(np.mean(expected["rouge2"]), abs=TOLERANCE)
  assert ours["ROUGE-L (rouge-score)"] == pytest.approx(np.mean(expected["rougeL"]), abs=TOLERANCE)
  assert ours["ROUGE-Lsum"] == pytest.approx(np.mean(expected["rougeLsum"]), abs=TOLERANCE)
  assert ours["ROUGE-Lsum"] != pytest.approx(ours["ROUGE-L (rouge-score)"], abs=1e-3)


def test_meteor_jar_matches_pycocoevalcap():
  if metrics.pycocoevalcap_meteor_jar() is None:
    pytest.skip("METEOR jar: pycocoevalcap is not installed")
  if shutil.which("java") is None:
    pytest.skip("METEOR jar: `java` is not on PATH")
  results = metrics.caption_metrics(METEOR_REFERENCES, METEOR_HYPOTHESES, meteor=True)
  assert results["implementations"]["METEOR"] == metrics.METEOR_JAR_IMPLEMENTATION
  assert results["METEOR"] == pytest.approx(PYCOCOEVALCAP_METEOR, abs=1e-12)


def test_meteor_jar_failure_is_an_error_with_java_output(monkeypatch, tmp_path):
  if shutil.which("java") is None:
    pytest.skip("METEOR jar: `java` is not on PATH")
  if metrics.pycocoevalcap_meteor_jar() is not None:
    # The real jar needs far more than a second to load its paraphrase table.
    with pytest.raises(RuntimeError, match="exit code -9, timeout 1 s"):
      metrics.meteor_pycocoevalcap_jar(METEOR_REFERENCES, METEOR_HYPOTHESES, timeout_s=1)
  broken_jar = tmp_path / "meteor-1.5.jar"
  broken_jar.write_text("not a jar")
  monkeypatch.setattr(metrics, "pycocoevalcap_meteor_jar", lambda: broken_jar)
  with pytest.raises(RuntimeError, match="stopped.*(?i:jar)"):
    metrics.meteor_pycocoevalcap_jar(METEOR_REFERENCES, METEOR_HYPOTHESES)
  result = metrics.meteor_best_available(METEOR_REFERENCES, METEOR_HYPOTHESES, backend="jar")
  assert result.score is None and result.implementation.startswith("unavailable: jar: ")


def test_meteor_nltk_uses_wordnet_synonyms(monkeypatch):
  pytest.importorskip("nltk", reason="NLTK METEOR: nltk is not installed")
  try:
    wordnet, _ = metrics._nltk_wordnet()  # pylint: disable=protected-access
  except LookupError as error:
    pytest.skip(f"NLTK METEOR: {error}")
  from nltk.translate.meteor_score import meteor_score  # pylint: disable=g-import-not-at-top
  # NLTK's documented example (its doctest value).
  hypothesis = ("It is a guide to action which ensures that the military always obeys the commands"
                " of the party").split()
  reference = ("It is a guide to action that ensures that the military will forever heed Party"
               " commands").split()
  assert round(meteor_score([reference], hypothesis, wordnet=wordnet), 4) == 0.6944
  # "pump" matches "heart" only through a WordNet synset (heart.n.02: heart, pump, ticker).
  synonym, _ = metrics.meteor_nltk(["the heart is normal"], ["the pump is normal"])
  unrelated, _ = metrics.meteor_nltk(["the heart is normal"], ["the liver is normal"])
  assert synonym > 0.99 > 0.7 > unrelated > 0.5
  # Without the jar, the automatic choice falls back to NLTK and says so.
  monkeypatch.setattr(metrics.shutil, "which", lambda name: None)
  result = metrics.meteor_best_available(METEOR_REFERENCES, METEOR_HYPOTHESES)
  assert result.implementation.startswith("NLTK ") and "WordNet from" in result.implementation
  assert 0.2 < result.score < 0.8


def test_meteor_unavailable_is_reported_not_faked(monkeypatch):
  monkeypatch.setattr(metrics.shutil, "which", lambda name: None)

  def no_wordnet():
    raise LookupError("WordNet not found (simulated)")

  monkeypatch.setattr(metrics, "_nltk_wordnet", no_wordnet)
  results = metrics.caption_metrics(METEOR_REFERENCES, METEOR_HYPOTHESES, meteor=True)
  assert results["METEOR"] is None
  implementation = results["implementations"]["METEOR"]
  assert implementation.startswith("unavailable: ")
  assert "jar:" in implementation and "nltk: WordNet not found (simulated)" in implementation
  with pytest.raises(ValueError, match="unknown METEOR backend"):
    metrics.meteor_best_available(["a"], ["a"], backend="java")


def test_multilabel_auroc_matches_sklearn():
  sklearn_metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(0)
  num_examples, num_classes = 200, 6
  labels = (rng.random((num_examples, num_classes)) < [0.5, 0.1, 0.3, 0.02, 0.0, 1.0]).astype(int)
  scores = labels * 0.4 + rng.random((num_examples, num_classes))
  scores[:, 2] = np.round(scores[:, 2], 1)  # Many tied scores.
  scores[:, 1] = 0.5  # All tied.
  names = ["Atelectasis", "Cardiomegaly", "Effusion", "Hernia", "Never", "Always"]
  result = metrics.multilabel_auroc(labels, scores, names)
  expected = {}
  for index, name in enumerate(names[:4]):
    expected[name] = sklearn_metrics.roc_auc_score(labels[:, index], scores[:, index])
    assert result["per_class"][name] == pytest.approx(expected[name], abs=1e-12), name
  assert result["per_class"]["Cardiomegaly"] == pytest.approx(0.5)
  assert np.isnan(result["per_class"]["Never"]) and np.isnan(result["per_class"]["Always"])
  assert set(result["excluded"]) == {"Never", "Always"}
  assert "only negative" in result["excluded"]["Never"]
  assert "only positive" in result["excluded"]["Always"]
  assert result["mean"] == pytest.approx(np.mean(list(expected.values())), abs=1e-12)
  assert "4 of 6 classes" in result["note"] and "Never, Always" in result["note"]
  # A single class as 1-D arrays.
  single = metrics.multilabel_auroc(labels[:, 0], scores[:, 0])
  assert single["mean"] == pytest.approx(expected["Atelectasis"], abs=1e-12)


def test_multilabel_auroc_rejects_bad_input():
  with pytest.raises(ValueError, match="share one shape"):
    metrics.multilabel_auroc(np.zeros((4, 2)), np.zeros((4, 3)))
  with pytest.raises(ValueError, match="labels must be 0/1"):
    metrics.multilabel_auroc(np.array([[0, 2], [1, 0]]), np.zeros((2, 2)))
  with pytest.raises(ValueError, match="non-finite"):
    metrics.multilabel_auroc(np.array([[0], [1]]), np.array([[0.1], [np.nan]]))
  with pytest.raises(ValueError, match="2 class names for 1 classes"):
    metrics.multilabel_auroc(np.array([[0], [1]]), np.array([[0.1], [0.2]]), ["a", "b"])
  all_excluded = metrics.multilabel_auroc(np.zeros((3, 2)), np.zeros((3, 2)))
  assert np.isnan(all_excluded["mean"]) and "mean over 0 of 2 classes" in all_excluded["note"]
