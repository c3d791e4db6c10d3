"""Captioning metrics: pycocoevalcap-compatible BLEU / ROUGE-L / CIDEr-D in pure Python, sacreBLEU and
ROUGE-1/2/L/Lsum through their packages (sacrebleu, rouge-score), and `caption_metrics`, which runs them
all.

The metric functions take already tokenised text (tokens separated by whitespace) and score each
hypothesis against its reference(s); `caption_metrics` first normalises the references and the
hypotheses alike by the dataset's scoring protocol (protocols.py: "r2gen", "coco", "imageclef"), so that a
raw reference and a model's decoded text are compared by one rule:

  BLEU-1..4   `bleu_pycocoevalcap`: corpus BLEU exactly as pycocoevalcap's `Bleu(4)` (the numbers of
              the published IU X-ray tables, R2Gen and its successors).
  sacreBLEU   `sacrebleu_corpus`: sacrebleu's corpus BLEU (13a tokeniser), on the 0-1 scale (the
              "BLEU" of seed 002's table).
  ROUGE-L     `rouge_l_pycocoevalcap`: pycocoevalcap's `Rouge` (LCS F-measure, beta=1.2, mean over
              pairs).
  CIDEr       `cider_d_pycocoevalcap`: pycocoevalcap's `Cider` (CIDEr-D; document frequencies from
              the references of the evaluated corpus, sigma=6, x10).
  ROUGE-1/2/L/Lsum  `rouge_score_f1`: the `rouge-score` package's F1 (its own tokeniser, no
              stemming: the settings of Hugging Face `evaluate`'s "rouge", seed 002's ROUGE), averaged
              over pairs; its ROUGE-L is "ROUGE-L (rouge-score)" here, beside pycocoevalcap's "ROUGE-L".
              ROUGE-Lsum splits sentences on newlines only (as rouge-score and `evaluate` do), so on
              one-line captions it is ROUGE-L up to its hit counting.
  METEOR      meteor.py: the METEOR 1.5 jar when `java` is on PATH, else NLTK's.

`caption_metrics` names the implementation behind every number ("implementations": metric -> what
computed it) and the scoring protocol ("protocol": its name and rule). The pycocoevalcap-compatible
metrics are reimplementations checked against pycocoevalcap in tests/metrics/test_captioning.py.
"""

from __future__ import annotations

import collections
import importlib.metadata
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from rouge_score import rouge_scorer
import sacrebleu
from sacrebleu.metrics import BLEU

from cxrjax.metrics import meteor as meteor_lib
from cxrjax.metrics import corpus
from cxrjax.metrics import protocols
from cxrjax.metrics.corpus import MetricInputError

BLEU_IMPLEMENTATION = (
  "pycocoevalcap-compatible corpus BLEU (cxrjax): Bleu(4).compute_score, 'closest' reference length, whitespace tokens"
)
SACREBLEU_IMPLEMENTATION = f"sacrebleu {sacrebleu.__version__} corpus BLEU / 100"
ROUGE_L_IMPLEMENTATION = (
  "pycocoevalcap-compatible ROUGE-L (cxrjax): LCS F-measure with beta=1.2 over space-split tokens, mean over pairs"
)
CIDER_IMPLEMENTATION = (
  "pycocoevalcap-compatible CIDEr-D (cxrjax): Cider(n=4, sigma=6), document frequency from this"
  " corpus' references, x10, mean over pairs"
)
ROUGE_SCORE_IMPLEMENTATION = (
  f"rouge-score {importlib.metadata.version('rouge-score')} RougeScorer(use_stemmer=False) {{}} F1,"
  " mean over pairs (not the bootstrap 'mid')"
)
_ROUGE_TYPES = {"ROUGE-1": "rouge1", "ROUGE-2": "rouge2", "ROUGE-L (rouge-score)": "rougeL", "ROUGE-Lsum": "rougeLsum"}
# pycocoevalcap's bleu_scorer.py keeps these two constants in every ratio: `_TINY` in numerators so
# that zero matches give (almost exactly) zero, `_SMALL` in denominators against division by zero.
_BLEU_SMALL = 1e-9
_BLEU_TINY = 1e-15

# ----------------------------------------------------------------------------------------------
# Longest common subsequences.


def _lcs_table(first: Sequence[str], second: Sequence[str]) -> list[list[int]]:
  """Longest-common-subsequence lengths: `table[i][j]` for `first[:i]`, `second[:j]`."""
  table = [[0] * (len(second) + 1) for _ in range(len(first) + 1)]
  for i in range(1, len(first) + 1):
    row, previous_row, token = table[i], table[i - 1], first[i - 1]
    for j in range(1, len(second) + 1):
      if token == second[j - 1]:
        row[j] = previous_row[j - 1] + 1
      else:
        row[j] = max(previous_row[j], row[j - 1])
  return table


def _lcs_length(first: Sequence[str], second: Sequence[str]) -> int:
  return _lcs_table(first, second)[-1][-1]


# ----------------------------------------------------------------------------------------------
# pycocoevalcap-compatible BLEU, ROUGE-L and CIDEr.


def bleu_pycocoevalcap(
  references: Sequence[str | Sequence[str]], hypotheses: Sequence[str], max_n: int = 4
) -> list[float]:
  """Corpus BLEU-1..max_n as pycocoevalcap's `Bleu(max_n).compute_score` returns it.

  Tokens are the whitespace-split words. Clipped n-gram matches and hypothesis n-gram counts are
  summed over the corpus; the reference length of each pair is its reference closest in length to
  the hypothesis (ties to the shorter); BLEU-n is the geometric mean of the first n precisions times
  the corpus brevity penalty.

  Args:
    references: per hypothesis, a reference string or a list of them.
    hypotheses: hypothesis strings; an empty one counts zero words.
    max_n: the longest n-gram.

  Returns:
    [BLEU-1, ..., BLEU-max_n], each in [0, 1].
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  total_hypothesis_length = 0
  total_reference_length = 0
  guessed = [0] * max_n
  matched = [0] * max_n
  for refs, hypothesis in zip(reference_lists, hypotheses):
    hypothesis_tokens = hypothesis.split()
    hypothesis_length = len(hypothesis_tokens)
    max_reference_counts: dict[tuple[str, ...], int] = {}
    reference_lengths = []
    for reference in refs:
      reference_tokens = reference.split()
      reference_lengths.append(len(reference_tokens))
      for ngram, count in corpus.ngram_counts(reference_tokens, max_n).items():
        max_reference_counts[ngram] = max(max_reference_counts.get(ngram, 0), count)
    total_hypothesis_length += hypothesis_length
    total_reference_length += min(reference_lengths, key=lambda length: (abs(length - hypothesis_length), length))
    for n in range(max_n):
      guessed[n] += max(0, hypothesis_length - n)
    for ngram, count in corpus.ngram_counts(hypothesis_tokens, max_n).items():
      matched[len(ngram) - 1] += min(max_reference_counts.get(ngram, 0), count)
  return bleu_from_counts(matched, guessed, total_hypothesis_length, total_reference_length)


def bleu_from_counts(
  matched: Sequence[float], guessed: Sequence[float], hypothesis_length: float, reference_length: float
) -> list[float]:
  """Corpus BLEU-1..len(matched) from corpus totals, with pycocoevalcap's constants.

  Args:
    matched: per n-gram order (1, 2, ...), the clipped hypothesis n-grams found in the references.
    guessed: per order, the hypothesis n-grams.
    hypothesis_length: total hypothesis words.
    reference_length: total effective reference words (per pair, the closest reference's length).
  """
  scores = []
  precision_product = 1.0
  for n in range(len(matched)):
    precision_product *= (matched[n] + _BLEU_TINY) / (guessed[n] + _BLEU_SMALL)
    scores.append(precision_product ** (1.0 / (n + 1)))
  length_ratio = (hypothesis_length + _BLEU_TINY) / (reference_length + _BLEU_SMALL)
  if length_ratio < 1:
    brevity_penalty = math.exp(1 - 1 / length_ratio)
    scores = [score * brevity_penalty for score in scores]
  return scores


def rouge_l_pycocoevalcap(
  references: Sequence[str | Sequence[str]], hypotheses: Sequence[str], beta: float = 1.2
) -> float:
  """ROUGE-L as pycocoevalcap's `Rouge().compute_score`: mean over pairs of an LCS F-measure.

  Tokens come from `str.split(" ")`, as in pycocoevalcap (so an empty string is one empty token and
  two texts that are both empty score 1). With several references, the best precision and the best
  recall are taken separately before they are combined with weight `beta` on recall.

  Returns:
    The mean score in [0, 1].
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  scores = []
  for refs, hypothesis in zip(reference_lists, hypotheses):
    hypothesis_tokens = hypothesis.split(" ")
    precisions, recalls = [], []
    for reference in refs:
      reference_tokens = reference.split(" ")
      lcs = _lcs_length(reference_tokens, hypothesis_tokens)
      precisions.append(lcs / len(hypothesis_tokens))
      recalls.append(lcs / len(reference_tokens))
    precision, recall = max(precisions), max(recalls)
    if precision != 0 and recall != 0:
      scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    else:
      scores.append(0.0)
  return float(np.mean(scores))


def cider_d_pycocoevalcap(
  references: Sequence[str | Sequence[str]], hypotheses: Sequence[str], max_n: int = 4, sigma: float = 6.0
) -> float:
  """CIDEr-D as pycocoevalcap's `Cider().compute_score` (the "CIDEr" of captioning papers).

  Each text becomes, per n-gram order, a tf-idf vector whose document frequencies count the pairs
  whose references hold the n-gram (so the score depends on the whole evaluated corpus). Per pair:
  the clipped cosine similarity to each reference, times a Gaussian penalty on the length
  difference, averaged over n-gram orders and references, times 10. The corpus score is the mean.

  Returns:
    The mean CIDEr-D (0 to about 10).
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  reference_counts = [[corpus.ngram_counts(ref.split(), max_n) for ref in refs] for refs in reference_lists]
  hypothesis_counts = [corpus.ngram_counts(hyp.split(), max_n) for hyp in hypotheses]
  document_frequency: collections.Counter[tuple[str, ...]] = collections.Counter()
  for counts_of_refs in reference_counts:
    document_frequency.update({ngram for counts in counts_of_refs for ngram in counts})
  log_num_documents = np.log(float(len(reference_lists)))

  def tfidf(counts):
    vectors = [{} for _ in range(max_n)]
    squared_norms = [0.0] * max_n
    # pycocoevalcap's Gaussian length penalty compares bigram counts (its `length` adds term
    # frequencies at 0-based order 1). That differs from the word-count difference only when a text
    # is empty, where the similarity is 0 anyway; kept as written to mirror the original.
    num_bigrams = 0
    for ngram, term_frequency in counts.items():
      order = len(ngram) - 1
      weight = float(term_frequency) * (log_num_documents - np.log(max(1.0, document_frequency[ngram])))
      vectors[order][ngram] = weight
      squared_norms[order] += weight**2
      if order == 1:
        num_bigrams += term_frequency
    return vectors, [np.sqrt(value) for value in squared_norms], num_bigrams

  scores = []
  for counts_of_refs, counts in zip(reference_counts, hypothesis_counts):
    vectors, norms, length = tfidf(counts)
    similarity_sum = np.zeros(max_n)
    for reference_count in counts_of_refs:
      ref_vectors, ref_norms, ref_length = tfidf(reference_count)
      length_penalty = np.e ** (-(float(length - ref_length) ** 2) / (2 * sigma**2))
      for order in range(max_n):
        similarity = 0.0
        for ngram, weight in vectors[order].items():
          ref_weight = ref_vectors[order].get(ngram, 0.0)
          similarity += min(weight, ref_weight) * ref_weight
        if norms[order] != 0 and ref_norms[order] != 0:
          similarity /= norms[order] * ref_norms[order]
        similarity_sum[order] += similarity * length_penalty
    scores.append(float(np.mean(similarity_sum)) / len(counts_of_refs) * 10.0)
  return float(np.mean(scores))


# ----------------------------------------------------------------------------------------------
# sacrebleu and rouge-score-compatible ROUGE.


def sacrebleu_corpus(references: Sequence[str], hypotheses: Sequence[str]) -> tuple[float, str]:
  """sacrebleu's corpus BLEU with its defaults (13a tokeniser, exp smoothing), one reference each.

  Returns:
    (BLEU on the 0-1 scale, sacrebleu's signature string, e.g.
    "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0").
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  if any(len(refs) != 1 for refs in reference_lists):
    raise MetricInputError("sacrebleu_corpus takes exactly one reference string per hypothesis")
  # Cleaned reports are tokenised text (" ." apart): force=True only silences sacrebleu's warning
  # about that on stderr; the score is the same.
  bleu = BLEU(force=True)
  result = bleu.corpus_score(list(hypotheses), [[refs[0] for refs in reference_lists]])
  return result.score / 100.0, str(bleu.get_signature())


def rouge_score_f1(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
  """ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F1 of the `rouge-score` package, mean over pairs.

  Each pair is scored by `rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"],
  use_stemmer=False)` (the setting of Hugging Face `evaluate`'s "rouge"); the mean over pairs is what
  its bootstrap aggregator's "mid" estimates.

  Returns:
    {"ROUGE-1": f, "ROUGE-2": f, "ROUGE-L (rouge-score)": f, "ROUGE-Lsum": f}.
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  if any(len(refs) != 1 for refs in reference_lists):
    raise MetricInputError("rouge_score_f1 takes exactly one reference string per hypothesis")
  scorer = rouge_scorer.RougeScorer(list(_ROUGE_TYPES.values()), use_stemmer=False)
  totals = collections.defaultdict(float)
  for refs, hypothesis in zip(reference_lists, hypotheses):
    scores = scorer.score(refs[0], hypothesis)  # (target, prediction)
    for name, rouge_type in _ROUGE_TYPES.items():
      totals[name] += scores[rouge_type].fmeasure
  return {name: totals[name] / len(hypotheses) for name in _ROUGE_TYPES}


# ----------------------------------------------------------------------------------------------
# All captioning metrics.


def caption_metrics(
  references: list[str], hypotheses: list[str], *, protocol: str, meteor: bool = True
) -> dict[str, Any]:
  """Every captioning metric of this module for one reference per hypothesis, both sides normalised by
  one scoring protocol first.

  Args:
    references: reference texts (as the data pipeline gives them: cleaned reports, raw captions).
    hypotheses: generated texts, same length; empty strings are scored.
    protocol: the scoring protocol (protocols.PROTOCOLS: "r2gen", "coco", "imageclef"), applied to the
      references and the hypotheses alike before every metric.
    meteor: also compute METEOR (starts a JVM, seconds; see `meteor.meteor_best_available`).

  Returns:
    {"BLEU-1".."BLEU-4", "sacreBLEU", "ROUGE-L", "CIDEr", "ROUGE-1", "ROUGE-2",
    "ROUGE-L (rouge-score)", "ROUGE-Lsum": float, "METEOR": float or None (absent when
    meteor=False), "protocol": {"name", "rule"}, "implementations": {each metric above: what computed
    it}}.
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  if any(len(refs) != 1 for refs in reference_lists):
    raise MetricInputError("caption_metrics takes exactly one reference string per hypothesis")
  rule = protocols.get(protocol)
  references = [rule.normalize(refs[0]) for refs in reference_lists]
  hypotheses = [rule.normalize(hypothesis) for hypothesis in hypotheses]
  results: dict[str, Any] = {}
  for n, score in enumerate(bleu_pycocoevalcap(references, hypotheses), start=1):
    results[f"BLEU-{n}"] = score
  sacrebleu_score, signature = sacrebleu_corpus(references, hypotheses)
  results["sacreBLEU"] = sacrebleu_score
  results["ROUGE-L"] = rouge_l_pycocoevalcap(references, hypotheses)
  results["CIDEr"] = cider_d_pycocoevalcap(references, hypotheses)
  results.update(rouge_score_f1(references, hypotheses))
  implementations = {f"BLEU-{n}": BLEU_IMPLEMENTATION for n in range(1, 5)}
  implementations.update(
    {
      "sacreBLEU": f"{SACREBLEU_IMPLEMENTATION}, signature {signature}",
      "ROUGE-L": ROUGE_L_IMPLEMENTATION,
      "CIDEr": CIDER_IMPLEMENTATION,
    }
  )
  implementations.update(
    {name: ROUGE_SCORE_IMPLEMENTATION.format(rouge_type) for name, rouge_type in _ROUGE_TYPES.items()}
  )
  if meteor:
    meteor_result = meteor_lib.meteor_best_available(references, hypotheses)
    results["METEOR"] = meteor_result.score
    implementations["METEOR"] = meteor_result.implementation
  results["protocol"] = {"name": rule.name, "rule": rule.rule}
  results["implementations"] = implementations
  return results
