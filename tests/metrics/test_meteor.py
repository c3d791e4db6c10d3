"""Tests for cxrjax.metrics.meteor: the jar against pycocoevalcap's own `Meteor` scorer, the NLTK
fallback with WordNet (Debian's wordnet-base, which .ci/run installs), and honest unavailability."""

import concurrent.futures
import random
import shutil

from nltk.translate.meteor_score import meteor_score
from pycocoevalcap.meteor.meteor import Meteor
import pytest

from cxrjax.metrics import captioning
from cxrjax.metrics import meteor

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


def _java_or_skip():
  # pycocoevalcap is pinned, so its jar must be there; java is the machine's (absent on many TPU
  # VMs, where METEOR falls back to NLTK, tested below without skipping).
  assert meteor.pycocoevalcap_meteor_jar() is not None, "METEOR jar: not in the pycocoevalcap wheel"
  if shutil.which("java") is None:
    pytest.skip("METEOR jar: `java` is not on PATH")


def test_meteor_jar_matches_pycocoevalcap(corpus, report_sentences):
  _java_or_skip()
  # Real sentences and their perturbations (empty hypotheses included), some with several
  # references.
  references, hypotheses = corpus
  rng = random.Random(11)
  references = list(references[:30]) + [rng.sample(report_sentences, 3) for _ in range(5)]
  hypotheses = list(hypotheses[:30]) + [
    rng.choice(refs) if i % 2 else rng.choice(report_sentences) for i, refs in enumerate(references[30:])
  ]
  gts = {i: [refs] if isinstance(refs, str) else list(refs) for i, refs in enumerate(references)}
  res = {i: [hyp] for i, hyp in enumerate(hypotheses)}

  def pycocoevalcap_score():
    scorer = Meteor()
    try:
      return scorer.compute_score(gts, res)[0]
    finally:
      del scorer  # Its __del__ stops the JVM.

  # The two JVMs load their paraphrase tables at the same time (most of the test's time).
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    expected = pool.submit(pycocoevalcap_score)
    result = meteor.meteor_best_available(references, hypotheses)
    expected = expected.result()
  assert result.implementation == meteor.METEOR_JAR_IMPLEMENTATION
  assert result.score == pytest.approx(expected, abs=1e-12)
  assert 0.1 < expected < 0.9


def test_meteor_jar_failure_is_an_error_with_java_output(monkeypatch, tmp_path):
  _java_or_skip()
  # The real jar needs far more than a second to load its paraphrase table (from a cold start).
  meteor.close_running_jars()
  with pytest.raises(RuntimeError, match="exit code -9, timeout 1 s"):
    meteor.meteor_pycocoevalcap_jar(METEOR_REFERENCES, METEOR_HYPOTHESES, timeout_s=1)
  broken_jar = tmp_path / "meteor-1.5.jar"
  broken_jar.write_text("not a jar")
  monkeypatch.setattr(meteor, "pycocoevalcap_meteor_jar", lambda: broken_jar)
  with pytest.raises(RuntimeError, match="stopped.*(?i:jar)"):
    meteor.meteor_pycocoevalcap_jar(METEOR_REFERENCES, METEOR_HYPOTHESES)
  result = meteor.meteor_best_available(METEOR_REFERENCES, METEOR_HYPOTHESES, backend="jar")
  assert result.score is None and result.implementation.startswith("unavailable: jar: ")


def test_meteor_nltk_uses_wordnet_synonyms(monkeypatch):
  # Fails (never skips) without WordNet: the message says how to install it.
  wordnet, source = meteor._nltk_wordnet()  # pylint: disable=protected-access
  # NLTK's documented example (its doctest value).
  hypothesis = (
    "It is a guide to action which ensures that the military always obeys the commands of the party"
  ).split()
  reference = ("It is a guide to action that ensures that the military will forever heed Party commands").split()
  assert round(meteor_score([reference], hypothesis, wordnet=wordnet), 4) == 0.6944
  # "pump" matches "heart" only through a WordNet synset (heart.n.02: heart, pump, ticker).
  synonym, _ = meteor.meteor_nltk(["the heart is normal"], ["the pump is normal"])
  unrelated, _ = meteor.meteor_nltk(["the heart is normal"], ["the liver is normal"])
  assert synonym > 0.99 > 0.7 > unrelated > 0.5
  # Without the jar, the automatic choice falls back to NLTK and says so.
  monkeypatch.setattr(meteor.shutil, "which", lambda name: None)
  result = meteor.meteor_best_available(METEOR_REFERENCES, METEOR_HYPOTHESES)
  assert result.implementation.startswith("NLTK ") and f"WordNet from {source}" in result.implementation
  expected = sum(
    meteor_score([r.split()], h.split(), wordnet=wordnet) for r, h in zip(METEOR_REFERENCES, METEOR_HYPOTHESES)
  ) / len(METEOR_HYPOTHESES)
  assert result.score == pytest.approx(expected, abs=1e-12)
  assert 0.2 < result.score < 0.8


def test_meteor_unavailable_is_reported_not_faked(monkeypatch):
  monkeypatch.setattr(meteor.shutil, "which", lambda name: None)

  def no_wordnet():
    raise LookupError("WordNet not found (simulated)")

  monkeypatch.setattr(meteor, "_nltk_wordnet", no_wordnet)
  results = captioning.caption_metrics(METEOR_REFERENCES, METEOR_HYPOTHESES, protocol="r2gen", meteor=True)
  assert results["METEOR"] is None
  implementation = results["implementations"]["METEOR"]
  assert implementation.startswith("unavailable: ")
  assert "jar:" in implementation and "nltk: WordNet not found (simulated)" in implementation
  with pytest.raises(ValueError, match="unknown METEOR backend"):
    meteor.meteor_best_available(["a"], ["a"], backend="java")


def test_the_kept_jar_scores_as_a_fresh_one():
  """The jar process is started once and kept (as pycocoevalcap's Meteor keeps it): a second scoring on the
  kept process equals the same scoring on a fresh one."""
  _java_or_skip()
  meteor.close_running_jars()
  meteor.meteor_pycocoevalcap_jar(["a normal chest"], ["the chest is normal"])
  (kept,) = meteor._RUNNING_JARS.values()  # pylint: disable=protected-access
  second = meteor.meteor_pycocoevalcap_jar(METEOR_REFERENCES, METEOR_HYPOTHESES)
  assert [running.process.pid for running in meteor._RUNNING_JARS.values()] == [kept.process.pid]  # pylint: disable=protected-access
  meteor.close_running_jars()
  assert meteor.meteor_pycocoevalcap_jar(METEOR_REFERENCES, METEOR_HYPOTHESES) == second
