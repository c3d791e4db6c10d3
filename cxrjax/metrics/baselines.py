"""Image-free baselines for report generation: one constant report for every study.

  most_common_report    the most frequent training report (ties alphabetically).
  best_constant_report  among the `num_candidates` most common distinct training reports, the one
                        whose corpus BLEU-4 (pycocoevalcap-compatible, as captioning.py computes it)
                        against the training reports is highest.

BLEU's brevity penalty punishes a short most-common report ("no acute disease ."), so the best
constant is often a longer, typical one: a model has to beat that to show it reads the images.
Both choose on training reports only; score the chosen report on a held-out split with
captioning.caption_metrics. With `protocol` (protocols.py), reports are counted and scored as that
scoring protocol normalises them (two captions that differ only in case or punctuation are one report),
and the report returned is the group's most common spelling; without it, texts are taken as whitespace
tokens as they are.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence

from cxrjax.metrics import captioning
from cxrjax.metrics import corpus
from cxrjax.metrics import protocols

# BLEU-4, as the published report-generation tables.
_MAX_N = 4
DEFAULT_NUM_CANDIDATES = 50


def _ranked(train_reports: Sequence[str], protocol: str | None) -> list[tuple[str, int, str]]:
  """Distinct reports as `protocol` normalises them, with their counts and their most common spelling
  (ties alphabetically), most common first, ties alphabetically."""
  if isinstance(train_reports, str):
    raise ValueError("train_reports must be a list of report strings, not a single string")
  if not train_reports:
    raise ValueError("no training reports")
  for index, report in enumerate(train_reports):
    if not isinstance(report, str):
      raise ValueError(f"training report {index} is a {type(report).__name__}, expected str")
  spellings: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
  normalized = train_reports if protocol is None else protocols.normalize(train_reports, protocol)
  for text, report in zip(normalized, train_reports):
    spellings[text][report] += 1
  ranked = [
    (text, sum(counts.values()), min(counts, key=lambda report: (-counts[report], report)))
    for text, counts in spellings.items()
  ]
  return sorted(ranked, key=lambda item: (-item[1], item[0]))


def most_common_report(train_reports: Sequence[str], protocol: str | None = None) -> tuple[str, float]:
  """The most common training report (ties alphabetically) and its share of the training reports."""
  _, count, report = _ranked(train_reports, protocol)[0]
  return report, count / len(train_reports)


def best_constant_report(
  train_reports: Sequence[str], num_candidates: int = DEFAULT_NUM_CANDIDATES, protocol: str | None = None
) -> tuple[str, float]:
  """The constant report with the best BLEU-4 on the training reports, and that BLEU-4.

  Candidates are the `num_candidates` most common distinct training reports (ties alphabetically):
  a constant answer worth having is a typical report, and the bound keeps the search to seconds.
  Each candidate is the hypothesis of every pair of a corpus whose references are the training
  reports with one of the candidate's own copies left out (so it is not credited for matching
  itself); its score is that corpus' BLEU-4 exactly as `captioning.bleu_pycocoevalcap` (and
  pycocoevalcap's Bleu) computes it. The highest score wins; ties go to the more common candidate,
  then alphabetically.

  Reference n-gram counts are gathered once (per n-gram: how many reports hold it how many times),
  so each candidate costs only its own n-grams: about a second for 4,000 reports.

  Args:
    train_reports: training reports (as the data pipeline gives them), at least two.
    num_candidates: how many of the most common distinct reports to try (>= 1).
    protocol: the scoring protocol the reports are counted and scored under (None: as they are).

  Returns:
    (report, its training BLEU-4).
  """
  ranked = _ranked(train_reports, protocol)
  if num_candidates < 1:
    raise ValueError(f"num_candidates must be >= 1, got {num_candidates}")
  if len(train_reports) < 2:
    raise ValueError(
      "best_constant_report needs at least two training reports (a candidate is scored against the others)"
    )
  # n-gram -> {count in a report: number of training reports with that count}.
  holders: dict[tuple[str, ...], collections.Counter[int]] = collections.defaultdict(collections.Counter)
  total_reference_length = 0
  for report, copies, _ in ranked:
    tokens = report.split()
    total_reference_length += len(tokens) * copies
    for ngram, count in corpus.ngram_counts(tokens, _MAX_N).items():
      holders[ngram][count] += copies

  num_pairs = len(train_reports) - 1
  best_report, best_score = None, -1.0
  for candidate, _, spelling in ranked[:num_candidates]:
    tokens = candidate.split()
    length = len(tokens)
    matched = [0] * _MAX_N
    for ngram, count in corpus.ngram_counts(tokens, _MAX_N).items():
      clipped = sum(min(count, held) * reports for held, reports in holders[ngram].items())
      # The left-out copy matched every one of the candidate's n-grams in full.
      matched[len(ngram) - 1] += clipped - count
    guessed = [max(0, length - n) * num_pairs for n in range(_MAX_N)]
    score = captioning.bleu_from_counts(matched, guessed, length * num_pairs, total_reference_length - length)[
      _MAX_N - 1
    ]
    if score > best_score:  # Strictly: a tie keeps the earlier, more common candidate.
      best_report, best_score = spelling, score
  return best_report, best_score
