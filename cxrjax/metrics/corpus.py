"""The corpus every text metric scores: input checks and n-gram counts shared by the metrics."""

from __future__ import annotations

import collections
from collections.abc import Sequence


class MetricInputError(ValueError):
  """Raised for references and hypotheses that cannot be scored together."""


def reference_lists(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str]) -> list[list[str]]:
  """Checks a corpus and returns one list of reference strings per hypothesis.

  Args:
    references: per hypothesis, one reference string or a non-empty list of them.
    hypotheses: hypothesis strings (may be empty strings).

  Returns:
    `len(hypotheses)` lists of reference strings.
  """
  if isinstance(references, str) or isinstance(hypotheses, str):
    raise MetricInputError("references and hypotheses must be lists of strings, not a single string")
  if len(references) != len(hypotheses):
    raise MetricInputError(
      f"references and hypotheses differ in length: {len(references)} references, {len(hypotheses)} hypotheses"
    )
  if not hypotheses:
    raise MetricInputError("no hypotheses to score (empty corpus)")
  lists = []
  for index, (refs, hyp) in enumerate(zip(references, hypotheses)):
    if not isinstance(hyp, str):
      raise MetricInputError(f"hypothesis {index} is a {type(hyp).__name__}, expected str")
    refs = [refs] if isinstance(refs, str) else list(refs)
    if not refs:
      raise MetricInputError(f"reference {index} is an empty list; give at least one reference")
    for ref in refs:
      if not isinstance(ref, str):
        raise MetricInputError(f"reference {index} holds a {type(ref).__name__}, expected str")
    lists.append(refs)
  return lists


def ngram_counts(tokens: Sequence[str], max_n: int) -> dict[tuple[str, ...], int]:
  """Counts the 1..max_n-grams of `tokens` (unigrams first, as pycocoevalcap's `precook`)."""
  counts: dict[tuple[str, ...], int] = collections.defaultdict(int)
  for n in range(1, max_n + 1):
    for start in range(len(tokens) - n + 1):
      counts[tuple(tokens[start : start + n])] += 1
  return counts
