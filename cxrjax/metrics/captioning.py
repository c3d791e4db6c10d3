"""Captioning and classification metrics in pure Python and numpy.

Captioning metrics take already tokenised text (tokens separated by whitespace, e.g. the cleaned,
lower-cased reports of `cxrjax.data.text`) and score each hypothesis against its reference(s):

  BLEU-1..4   `bleu_pycocoevalcap`: corpus BLEU exactly as pycocoevalcap's `Bleu(4)` (the numbers of
              the published IU X-ray tables, R2Gen and its successors).
  sacreBLEU   `sacrebleu_corpus`: sacrebleu's corpus BLEU (13a tokeniser), on the 0-1 scale.
  ROUGE-L     `rouge_l_pycocoevalcap`: pycocoevalcap's `Rouge` (LCS F-measure, beta=1.2, mean over
              pairs).
  CIDEr       `cider_d_pycocoevalcap`: pycocoevalcap's `Cider` (CIDEr-D; document frequencies from
              the references of the evaluated corpus, sigma=6, x10).
  ROUGE-1/2/L/Lsum  `rouge_score_f1`: the `rouge-score` package's F1 (its own tokeniser, no
              stemming), averaged over pairs.
  METEOR      `meteor_best_available`: the METEOR 1.5 jar shipped in the pycocoevalcap wheel when
              `java` is on PATH, else NLTK's `meteor_score` when WordNet is found, else reported
              unavailable with the reasons.

`caption_metrics` runs them all and names the implementation behind every number. `multilabel_auroc`
gives per-class and mean AUROC for multi-label classification.

The pycocoevalcap- and rouge-score-compatible metrics are reimplementations checked against the real
packages in tests/test_metrics.py; neither package is needed to compute them.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import io
import math
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import sacrebleu
from sacrebleu.metrics import BLEU

BLEU_IMPLEMENTATION = (
    "pycocoevalcap-compatible corpus BLEU (cxrjax): Bleu(4).compute_score, 'closest' reference"
    " length, whitespace tokens")
SACREBLEU_IMPLEMENTATION = f"sacrebleu {sacrebleu.__version__} corpus BLEU / 100"
ROUGE_L_IMPLEMENTATION = (
    "pycocoevalcap-compatible ROUGE-L (cxrjax): LCS F-measure with beta=1.2 over space-split"
    " tokens, mean over pairs")
CIDER_IMPLEMENTATION = (
    "pycocoevalcap-compatible CIDEr-D (cxrjax): Cider(n=4, sigma=6), document frequency from this"
    " corpus' references, x10, mean over pairs")
ROUGE_SCORE_IMPLEMENTATION = (
    "rouge-score-compatible F1 (cxrjax): rouge_score tokeniser without stemming, ROUGE-Lsum splits"
    " sentences on newlines, mean over pairs (not the bootstrap 'mid')")
METEOR_JAR_IMPLEMENTATION = (
    "METEOR 1.5 jar from the pycocoevalcap wheel (java, '-l en -norm'), corpus score as"
    " pycocoevalcap's Meteor")
AUROC_IMPLEMENTATION = (
    "numpy rank-based AUROC (cxrjax): Mann-Whitney U with average ranks for tied scores")

# pycocoevalcap's bleu_scorer.py keeps these two constants in every ratio: `_TINY` in numerators so
# that zero matches give (almost exactly) zero, `_SMALL` in denominators against division by zero.
_BLEU_SMALL = 1e-9
_BLEU_TINY = 1e-15

# WordNet 3.0's lexicographer files (wninput(5WN) "lexnames"), in file-number order. Debian's
# wordnet-base package omits this file but NLTK's WordNet reader requires it.
_WORDNET_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact",
    "noun.attribute", "noun.body", "noun.cognition", "noun.communication", "noun.event",
    "noun.feeling", "noun.food", "noun.group", "noun.location", "noun.motive", "noun.object",
    "noun.person", "noun.phenomenon", "noun.plant", "noun.possession", "noun.process",
    "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition",
    "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl")
_WORDNET_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
# Where a WordNet 3.0 database directory (data.noun, index.noun, ...) is looked for when NLTK's own
# nltk_data copy is missing: $CXRJAX_WORDNET_DIR, then Debian's `wordnet-base` package.
_WORDNET_DIRS = ("/usr/share/wordnet",)


class MetricInputError(ValueError):
  """Raised for references and hypotheses that cannot be scored together."""


# ----------------------------------------------------------------------------------------------
# Input checks and n-grams.


def _reference_lists(references: Sequence[str | Sequence[str]],
                     hypotheses: Sequence[str]) -> list[list[str]]:
  """Checks a corpus and returns one list of reference strings per hypothesis.

  Args:
    references: per hypothesis, one reference string or a non-empty list of them.
    hypotheses: hypothesis strings (may be empty strings).

  Returns:
    `len(hypotheses)` lists of reference strings.
  """
  if isinstance(references, str) or isinstance(hypotheses, str):
    raise MetricInputError(
        "references and hypotheses must be lists of strings, not a single string")
  if len(references) != len(hypotheses):
    raise MetricInputError(
        f"references and hypotheses differ in length: {len(references)} references,"
        f" {len(hypotheses)} hypotheses")
  if not hypotheses:
    raise MetricInputError("no hypotheses to score (empty corpus)")
  reference_lists = []
  for index, (refs, hyp) in enumerate(zip(references, hypotheses)):
    if not isinstance(hyp, str):
      raise MetricInputError(f"hypothesis {index} is a {type(hyp).__name__}, expected str")
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
      raise MetricInputError(f"reference {index} is an empty list; give at least one reference")
    for ref in refs:
      if not isinstance(ref, str):
        raise MetricInputError(f"reference {index} holds a {type(ref).__name__}, expected str")
    reference_lists.append(refs)
  return reference_lists


def _ngram_counts(tokens: Sequence[str], max_n: int) -> dict[tuple[str, ...], int]:
  """Counts the 1..max_n-grams of `tokens` (unigrams first, as pycocoevalcap's `precook`)."""
  counts: dict[tuple[str, ...], int] = collections.defaultdict(int)
  for n in range(1, max_n + 1):
    for start in range(len(tokens) - n + 1):
      counts[tuple(tokens[start:start + n])] += 1
  return counts


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


def bleu_pycocoevalcap(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                       max_n: int = 4) -> list[float]:
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
  reference_lists = _reference_lists(references, hypotheses)
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
      for ngram, count in _ngram_counts(reference_tokens, max_n).items():
        max_reference_counts[ngram] = max(max_reference_counts.get(ngram, 0), count)
    total_hypothesis_length += hypothesis_length
    total_reference_length += min(reference_lengths,
                                  key=lambda length: (abs(length - hypothesis_length), length))
    for n in range(max_n):
      guessed[n] += max(0, hypothesis_length - n)
    for ngram, count in _ngram_counts(hypothesis_tokens, max_n).items():
      matched[len(ngram) - 1] += min(max_reference_counts.get(ngram, 0), count)

  scores = []
  precision_product = 1.0
  for n in range(max_n):
    precision_product *= (matched[n] + _BLEU_TINY) / (guessed[n] + _BLEU_SMALL)
    scores.append(precision_product ** (1.0 / (n + 1)))
  length_ratio = (total_hypothesis_length + _BLEU_TINY) / (total_reference_length + _BLEU_SMALL)
  if length_ratio < 1:
    brevity_penalty = math.exp(1 - 1 / length_ratio)
    scores = [score * brevity_penalty for score in scores]
  return scores


def rouge_l_pycocoevalcap(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                          beta: float = 1.2) -> float:
  """ROUGE-L as pycocoevalcap's `Rouge().compute_score`: mean over pairs of an LCS F-measure.

  Tokens come from `str.split(" ")`, as in pycocoevalcap (so an empty string is one empty token and
  two texts that are both empty score 1). With several references, the best precision and the best
  recall are taken separately before they are combined with weight `beta` on recall.

  Returns:
    The mean score in [0, 1].
  """
  reference_lists = _reference_lists(references, hypotheses)
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


def cider_d_pycocoevalcap(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                          max_n: int = 4, sigma: float = 6.0) -> float:
  """CIDEr-D as pycocoevalcap's `Cider().compute_score` (the "CIDEr" of captioning papers).

  Each text becomes, per n-gram order, a tf-idf vector whose document frequencies count the pairs
  whose references hold the n-gram (so the score depends on the whole evaluated corpus). Per pair:
  the clipped cosine similarity to each reference, times a Gaussian penalty on the length
  difference, averaged over n-gram orders and references, times 10. The corpus score is the mean.

  Returns:
    The mean CIDEr-D (0 to about 10).
  """
  reference_lists = _reference_lists(references, hypotheses)
  reference_counts = [[_ngram_counts(ref.split(), max_n) for ref in refs]
                      for refs in reference_lists]
  hypothesis_counts = [_ngram_counts(hyp.split(), max_n) for hyp in hypotheses]
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
      weight = float(term_frequency) * (
          log_num_documents - np.log(max(1.0, document_frequency[ngram])))
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
      length_penalty = np.e**(-(float(length - ref_length)**2) / (2 * sigma**2))
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
  reference_lists = _reference_lists(references, hypotheses)
  if any(len(refs) != 1 for refs in reference_lists):
    raise MetricInputError("sacrebleu_corpus takes exactly one reference string per hypothesis")
  bleu = BLEU()
  result = bleu.corpus_score(list(hypotheses), [[refs[0] for refs in reference_lists]])
  return result.score / 100.0, str(bleu.get_signature())


def _rouge_score_tokens(text: str) -> list[str]:
  """rouge-score's default tokeniser without stemming: lower-case runs of [a-z0-9]."""
  return re.findall(r"[a-z0-9]+", text.lower())


def _f1(precision: float, recall: float) -> float:
  return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0


def _rouge_n_f1(reference_tokens: list[str], hypothesis_tokens: list[str], n: int) -> float:
  reference_ngrams = collections.Counter(
      tuple(reference_tokens[i:i + n]) for i in range(len(reference_tokens) - n + 1))
  hypothesis_ngrams = collections.Counter(
      tuple(hypothesis_tokens[i:i + n]) for i in range(len(hypothesis_tokens) - n + 1))
  overlap = sum((reference_ngrams & hypothesis_ngrams).values())
  precision = overlap / max(sum(hypothesis_ngrams.values()), 1)
  recall = overlap / max(sum(reference_ngrams.values()), 1)
  return _f1(precision, recall)


def _rouge_l_f1(reference_tokens: list[str], hypothesis_tokens: list[str]) -> float:
  if not reference_tokens or not hypothesis_tokens:
    return 0.0
  lcs = _lcs_length(reference_tokens, hypothesis_tokens)
  return _f1(lcs / len(hypothesis_tokens), lcs / len(reference_tokens))


def _lcs_reference_indices(reference: list[str], candidate: list[str]) -> list[int]:
  """Indices into `reference` of one LCS, chosen by rouge-score's backtracking rule."""
  table = _lcs_table(reference, candidate)
  i, j = len(reference), len(candidate)
  indices = []
  while i > 0 and j > 0:
    if reference[i - 1] == candidate[j - 1]:
      indices.append(i - 1)
      i -= 1
      j -= 1
    elif table[i][j - 1] > table[i - 1][j]:
      j -= 1
    else:
      i -= 1
  return indices[::-1]


def _rouge_lsum_f1(reference: str, hypothesis: str) -> float:
  """Summary-level union-LCS F1 over newline-separated sentences (ROUGE 1.5.5 hit counting)."""
  reference_sentences = [_rouge_score_tokens(s) for s in reference.split("\n") if s]
  hypothesis_sentences = [_rouge_score_tokens(s) for s in hypothesis.split("\n") if s]
  num_reference_tokens = sum(map(len, reference_sentences))
  num_hypothesis_tokens = sum(map(len, hypothesis_sentences))
  if not num_reference_tokens or not num_hypothesis_tokens:
    return 0.0
  reference_budget = collections.Counter(t for s in reference_sentences for t in s)
  hypothesis_budget = collections.Counter(t for s in hypothesis_sentences for t in s)
  hits = 0
  for sentence in reference_sentences:
    union = set()
    for candidate in hypothesis_sentences:
      union.update(_lcs_reference_indices(sentence, candidate))
    for token in (sentence[i] for i in sorted(union)):
      # Each token is counted at most as often as it occurs on both sides.
      if reference_budget[token] > 0 and hypothesis_budget[token] > 0:
        hits += 1
        reference_budget[token] -= 1
        hypothesis_budget[token] -= 1
  return _f1(hits / num_hypothesis_tokens, hits / num_reference_tokens)


def rouge_score_f1(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
  """ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum F1 as the `rouge-score` package, mean over pairs.

  Matches `rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"],
  use_stemmer=False)` per pair (the setting of Hugging Face `evaluate`'s "rouge"); the mean over
  pairs is what its bootstrap aggregator's "mid" estimates.

  Returns:
    {"ROUGE-1": f, "ROUGE-2": f, "ROUGE-L (rouge-score)": f, "ROUGE-Lsum": f}.
  """
  reference_lists = _reference_lists(references, hypotheses)
  if any(len(refs) != 1 for refs in reference_lists):
    raise MetricInputError("rouge_score_f1 takes exactly one reference string per hypothesis")
  totals = collections.defaultdict(float)
  for refs, hypothesis in zip(reference_lists, hypotheses):
    reference_tokens = _rouge_score_tokens(refs[0])
    hypothesis_tokens = _rouge_score_tokens(hypothesis)
    totals["ROUGE-1"] += _rouge_n_f1(reference_tokens, hypothesis_tokens, 1)
    totals["ROUGE-2"] += _rouge_n_f1(reference_tokens, hypothesis_tokens, 2)
    totals["ROUGE-L (rouge-score)"] += _rouge_l_f1(reference_tokens, hypothesis_tokens)
    totals["ROUGE-Lsum"] += _rouge_lsum_f1(refs[0], hypothesis)
  return {name: total / len(hypotheses) for name, total in totals.items()}


# ----------------------------------------------------------------------------------------------
# METEOR.


@dataclasses.dataclass(frozen=True)
class MeteorResult:
  """A METEOR score, or why there is none.

  Attributes:
    score: corpus METEOR in [0, 1], or None when no implementation could run.
    implementation: what produced `score`, or "unavailable: <reasons>".
  """
  score: float | None
  implementation: str


def pycocoevalcap_meteor_jar() -> pathlib.Path | None:
  """The METEOR 1.5 jar of an installed pycocoevalcap wheel (with its paraphrase table), or None."""
  spec = importlib.util.find_spec("pycocoevalcap")
  if spec is None or spec.submodule_search_locations is None:
    return None
  for location in spec.submodule_search_locations:
    jar = pathlib.Path(location) / "meteor" / "meteor-1.5.jar"
    if jar.is_file() and (jar.parent / "data" / "paraphrase-en.gz").is_file():
      return jar
  return None


def _meteor_segment(text: str) -> str:
  # "|||" separates fields and a newline ends the request in the jar's stdio protocol; the double
  # space collapse is pycocoevalcap's own hypothesis clean-up, kept for identical numbers.
  return text.replace("\n", " ").replace("|||", "").replace("  ", " ")


def meteor_pycocoevalcap_jar(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                             timeout_s: float = 900.0) -> float:
  """Corpus METEOR 1.5 from the jar in the pycocoevalcap wheel, as pycocoevalcap's `Meteor`.

  Runs `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm` once: one SCORE request per pair,
  then one EVAL over all of them, whose final line is the corpus score (not a mean of segments).
  Loading the paraphrase table takes most of the time (15-30 s on a busy 2-core machine).

  Args:
    references: per hypothesis, a reference string or a list of them.
    hypotheses: hypothesis strings.
    timeout_s: the jar is killed after this many seconds.

  Raises:
    FileNotFoundError: no pycocoevalcap jar or no `java` on PATH.
    RuntimeError: the jar failed, timed out or answered something that is not a score.
  """
  reference_lists = _reference_lists(references, hypotheses)
  jar = pycocoevalcap_meteor_jar()
  if jar is None:
    raise FileNotFoundError(
        "METEOR jar not found: pycocoevalcap is not installed (pip install pycocoevalcap==1.2)")
  java = shutil.which("java")
  if java is None:
    raise FileNotFoundError("METEOR jar needs `java`, which is not on PATH")
  command = [java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
  with tempfile.TemporaryFile() as stderr_file:
    process = subprocess.Popen(command, cwd=jar.parent, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=stderr_file, text=True,
                               encoding="utf-8")
    # A killed jar ends the blocking reads below with an empty answer.
    watchdog = threading.Timer(timeout_s, process.kill)
    watchdog.start()

    def failure(what: str) -> RuntimeError:
      process.kill()
      process.wait()
      stderr_file.seek(0)
      stderr = stderr_file.read().decode(errors="replace")[-2000:]
      return RuntimeError(f"METEOR jar {jar} {what} (exit code {process.returncode},"
                          f" timeout {timeout_s} s): {stderr}")

    def answer(line: str | None) -> str:
      try:
        if line is not None:
          process.stdin.write(line + "\n")
          process.stdin.flush()
        reply = process.stdout.readline()
      except (BrokenPipeError, ValueError):
        reply = ""
      if not reply:
        raise failure("stopped")
      return reply.strip()

    try:
      statistics = []
      for refs, hypothesis in zip(reference_lists, hypotheses):
        fields = ["SCORE", *(_meteor_segment(ref) for ref in refs), _meteor_segment(hypothesis)]
        statistics.append(answer(" ||| ".join(fields)))
      answer(" ||| ".join(["EVAL", *statistics]))  # The first segment's score.
      for _ in range(len(statistics) - 1):  # The other segment scores.
        answer(None)
      final_line = answer(None)
      process.stdin.close()
      process.wait()
    finally:
      watchdog.cancel()
      if process.poll() is None:
        process.kill()
        process.wait()
  try:
    return float(final_line)
  except ValueError:
    raise RuntimeError(f"METEOR jar {jar} answered {final_line!r} instead of a score") from None


@functools.cache
def _nltk_wordnet() -> tuple[Any, str]:
  """NLTK's WordNet reader and where it came from.

  NLTK's own nltk_data copy first; else a WordNet 3.0 database directory ($CXRJAX_WORDNET_DIR or
  Debian's /usr/share/wordnet), read in place with the `lexnames` file supplied when it is missing.

  Raises:
    ImportError: nltk is not installed.
    LookupError: no WordNet found.
  """
  import nltk  # pylint: disable=g-import-not-at-top
  from nltk.corpus.reader import wordnet as wordnet_module  # pylint: disable=g-import-not-at-top

  try:
    nltk.data.find("corpora/wordnet")
    from nltk.corpus import wordnet  # pylint: disable=g-import-not-at-top
    wordnet.ensure_loaded()
    return wordnet, "nltk_data corpora/wordnet"
  except LookupError:
    pass
  candidates = [os.environ["CXRJAX_WORDNET_DIR"]] if os.environ.get("CXRJAX_WORDNET_DIR") else []
  candidates += list(_WORDNET_DIRS)
  required = ("data.noun", "index.noun", "data.verb", "index.verb", "data.adj", "index.adj",
              "data.adv", "index.adv", "noun.exc", "verb.exc", "adj.exc", "adv.exc")
  for directory in map(pathlib.Path, candidates):
    if not all((directory / name).is_file() for name in required):
      continue
    lexnames = "".join(f"{index:02d}\t{name}\t{_WORDNET_POS_NUMBER[name.split('.')[0]]}\n"
                       for index, name in enumerate(_WORDNET_LEXNAMES))

    class DirectoryWordNetReader(wordnet_module.WordNetCorpusReader):
      """Reads a WordNet database directory in place, supplying `lexnames` if it lacks one."""

      def open(self, file):
        if file == "lexnames" and not (directory / "lexnames").is_file():
          return io.StringIO(lexnames)
        return super().open(file)

      def map_wn(self, version="wordnet"):
        # The WordNet 3.0 -> nltk_data mapping serves only multilingual (OMW) lookups, which METEOR
        # does not make, and building it needs nltk_data's own WordNet.
        return None

    # NLTK only opens corpus files under the directories of nltk.data.path.
    if str(directory) not in nltk.data.path:
      nltk.data.path.append(str(directory))
    import warnings  # pylint: disable=g-import-not-at-top
    with warnings.catch_warnings():
      # The multilingual (OMW) data is not needed for METEOR's synonym matching.
      warnings.simplefilter("ignore", UserWarning)
      return DirectoryWordNetReader(str(directory), None), str(directory)
  raise LookupError(
      "WordNet not found: no nltk_data corpora/wordnet and no WordNet 3.0 database in"
      f" {candidates} (Debian/Ubuntu: apt-get install wordnet-base; or set CXRJAX_WORDNET_DIR)")


def meteor_nltk(references: Sequence[str | Sequence[str]],
                hypotheses: Sequence[str]) -> tuple[float, str]:
  """Mean over pairs of NLTK's sentence-level `meteor_score` on whitespace tokens.

  Returns:
    (score in [0, 1], where WordNet was read from).

  Raises:
    ImportError: nltk is not installed. LookupError: no WordNet found.
  """
  reference_lists = _reference_lists(references, hypotheses)
  from nltk.translate import meteor_score as nltk_meteor  # pylint: disable=g-import-not-at-top
  wordnet, source = _nltk_wordnet()
  scores = [
      nltk_meteor.meteor_score([ref.split() for ref in refs], hyp.split(), wordnet=wordnet)
      for refs, hyp in zip(reference_lists, hypotheses)
  ]
  return float(np.mean(scores)), source


def meteor_best_available(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str],
                          backend: str = "auto") -> MeteorResult:
  """METEOR from the best implementation that runs here, named in the result.

  Args:
    references: per hypothesis, a reference string or a list of them.
    hypotheses: hypothesis strings.
    backend: "auto" (the jar, else NLTK), "jar" or "nltk" (only that one).

  Returns:
    A `MeteorResult`; its score is None (never a made-up number) when no implementation could run,
    and its implementation then says why each one could not.
  """
  if backend not in ("auto", "jar", "nltk"):
    raise ValueError(f"unknown METEOR backend {backend!r}: use 'auto', 'jar' or 'nltk'")
  _reference_lists(references, hypotheses)
  reasons = []
  if backend in ("auto", "jar"):
    try:
      return MeteorResult(meteor_pycocoevalcap_jar(references, hypotheses),
                          METEOR_JAR_IMPLEMENTATION)
    except (FileNotFoundError, RuntimeError, OSError, subprocess.SubprocessError) as error:
      reasons.append(f"jar: {error}")
  if backend in ("auto", "nltk"):
    try:
      score, wordnet_source = meteor_nltk(references, hypotheses)
      import nltk  # pylint: disable=g-import-not-at-top
      return MeteorResult(
          score, f"NLTK {nltk.__version__} meteor_score, mean over pairs of sentence scores"
          f" (whitespace tokens, WordNet from {wordnet_source})")
    except (ImportError, LookupError, OSError) as error:
      reasons.append(f"nltk: {error}")
  return MeteorResult(None, "unavailable: " + "; ".join(reasons))


# ----------------------------------------------------------------------------------------------
# All captioning metrics.


def caption_metrics(references: list[str], hypotheses: list[str],
                    meteor: bool = True) -> dict[str, Any]:
  """Every captioning metric of this module for one reference per hypothesis.

  Args:
    references: reference texts, already tokenised (tokens separated by spaces).
    hypotheses: generated texts, same length and tokenisation; empty strings are scored.
    meteor: also compute METEOR (starts a JVM, seconds; see `meteor_best_available`).

  Returns:
    {"BLEU-1".."BLEU-4", "sacreBLEU", "ROUGE-L", "CIDEr", "ROUGE-1", "ROUGE-2",
    "ROUGE-L (rouge-score)", "ROUGE-Lsum": float, "METEOR": float or None (absent when
    meteor=False), "implementations": {metric family: what computed it}}.
  """
  reference_lists = _reference_lists(references, hypotheses)
  if any(len(refs) != 1 for refs in reference_lists):
    raise MetricInputError("caption_metrics takes exactly one reference string per hypothesis")
  results: dict[str, Any] = {}
  for n, score in enumerate(bleu_pycocoevalcap(references, hypotheses), start=1):
    results[f"BLEU-{n}"] = score
  sacrebleu_score, signature = sacrebleu_corpus(references, hypotheses)
  results["sacreBLEU"] = sacrebleu_score
  results["ROUGE-L"] = rouge_l_pycocoevalcap(references, hypotheses)
  results["CIDEr"] = cider_d_pycocoevalcap(references, hypotheses)
  results.update(rouge_score_f1(references, hypotheses))
  implementations = {
      "BLEU": BLEU_IMPLEMENTATION,
      "sacreBLEU": f"{SACREBLEU_IMPLEMENTATION}, signature {signature}",
      "ROUGE-L": ROUGE_L_IMPLEMENTATION,
      "CIDEr": CIDER_IMPLEMENTATION,
      "ROUGE-1/2/L (rouge-score)/Lsum": ROUGE_SCORE_IMPLEMENTATION,
  }
  if meteor:
    meteor_result = meteor_best_available(references, hypotheses)
    results["METEOR"] = meteor_result.score
    implementations["METEOR"] = meteor_result.implementation
  results["implementations"] = implementations
  return results


# ----------------------------------------------------------------------------------------------
# Classification.


def _binary_auroc(labels: np.ndarray, scores: np.ndarray) -> float:
  """AUROC of one class from average ranks.

  Args:
    labels: bool [num_examples], holding both values.
    scores: float [num_examples].
  """
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # Tied scores share the mean of the 1-based ranks they span, which counts each positive-negative
  # tie as half a correct ordering, as the trapezoidal ROC area does.
  last_rank = np.cumsum(counts).astype(np.float64)
  mean_rank = last_rank - (counts - 1) / 2.0
  ranks = mean_rank[inverse]
  num_positive = int(labels.sum())
  num_negative = labels.size - num_positive
  positive_rank_sum = ranks[labels].sum()
  return float((positive_rank_sum - num_positive * (num_positive + 1) / 2.0)
               / (num_positive * num_negative))


def multilabel_auroc(labels: np.ndarray, scores: np.ndarray,
                     class_names: Sequence[str] | None = None) -> dict[str, Any]:
  """Per-class and mean AUROC for multi-label classification.

  Args:
    labels: 0/1 (or bool) ground truth, [num_examples, num_classes] (or [num_examples] for one
      class).
    scores: finite scores or probabilities, same shape.
    class_names: names of the classes (default "0", "1", ...).

  Returns:
    {"per_class": {name: AUROC or nan}, "mean": mean over the classes with both label values (nan if
    none), "excluded": {name: why it has no AUROC}, "note": text on what the mean covers,
    "implementation": str}.
  """
  labels = np.asarray(labels)
  scores = np.asarray(scores, dtype=np.float64)
  if labels.ndim == 1 and scores.ndim == 1:
    labels, scores = labels[:, None], scores[:, None]
  if labels.ndim != 2 or labels.shape != scores.shape:
    raise ValueError(f"labels {labels.shape} and scores {scores.shape} must share one shape"
                     " [num_examples, num_classes]")
  if labels.shape[0] == 0:
    raise ValueError("no examples to score")
  if not np.isin(labels, (0, 1)).all():
    raise ValueError(f"labels must be 0/1, found values {np.unique(labels)[:10].tolist()}")
  if not np.isfinite(scores).all():
    raise ValueError(f"scores hold {int((~np.isfinite(scores)).sum())} non-finite values")
  num_classes = labels.shape[1]
  names = [str(index) for index in range(num_classes)] if class_names is None else list(class_names)
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes")
  labels = labels.astype(bool)
  per_class, excluded = {}, {}
  for index, name in enumerate(names):
    num_positive = int(labels[:, index].sum())
    if num_positive in (0, labels.shape[0]):
      per_class[name] = float("nan")
      only = "positive" if num_positive else "negative"
      excluded[name] = f"only {only} labels ({labels.shape[0]} examples): AUROC undefined"
    else:
      per_class[name] = _binary_auroc(labels[:, index], scores[:, index])
  defined = [value for name, value in per_class.items() if name not in excluded]
  mean = float(np.mean(defined)) if defined else float("nan")
  note = f"mean over {len(defined)} of {num_classes} classes"
  if excluded:
    note += f"; excluded (one label value only): {', '.join(excluded)}"
  return {"per_class": per_class, "mean": mean, "excluded": excluded, "note": note,
          "implementation": AUROC_IMPLEMENTATION}
