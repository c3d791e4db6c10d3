"""Random reference captioners shaped for decoding parity tests, and checks that the shaping took.

A random model's captions seldom repeat a phrase and seldom end, so a test on them cannot see n-gram
blocking, a length off by one, or what happens when some hypotheses end: the references here favour two
words (over 11 or more tokens of two words a trigram must repeat, so blocking would change the captions)
and raise the end token just enough that some images end early and others run to the length limit.
"""

import numpy as np

# bert-base-uncased's "the" and "of": the words a favoured model repeats.
FAVOURED = (1996, 1997)
FAVOUR = 100.0  # Added to their logits: far above every other token's (the random logits' spread is ~10).


def margins_to_end(scores, end_id: int) -> np.ndarray:
  """transformers' `generate(..., output_scores=True).scores` (per step, [images, vocab]) of a greedy search ->
  [images, steps]: the chosen token's logit less the end token's."""
  logits = np.stack([np.asarray(step) for step in scores], axis=1)  # [images, steps, vocab]
  return logits.max(axis=-1) - logits[..., end_id]


def end_bias(margins: np.ndarray) -> float:
  """margins [images, steps]: along each image's path without the bias, the chosen token's logit less the
  end token's -> a bias for the end token in the widest gap between the per-image minima of the later steps,
  below every first-step margin (so that no caption is empty): the images whose path comes closer to the
  end token end where their margin first falls below it, the others run to the limit."""
  lowest, first = np.sort(margins[:, 1:].min(axis=1)), margins[:, 0].min()
  gaps = [(high - low, (low + high) / 2) for low, high in zip(lowest[:-1], lowest[1:]) if (low + high) / 2 < first]
  assert gaps, (lowest, first)
  width, bias = max(gaps)
  assert width > 0.2 and first - bias > 0.1, (lowest, first)  # Clear of every margin: no near-tie.
  return float(bias)


def repeats_a_trigram(ids: list[int]) -> bool:
  trigrams = [tuple(ids[i : i + 3]) for i in range(len(ids) - 2)]
  return len(set(trigrams)) < len(trigrams)


def assert_shaped(captions: list[list[int]], limit: int) -> None:
  """The reference's captions (generated ids before the end token) show what the shaping is for: some end
  before `limit` tokens and some run to it, and some repeat a trigram."""
  lengths = [len(ids) for ids in captions]
  assert min(lengths) < limit and max(lengths) == limit, lengths
  assert any(repeats_a_trigram(ids) for ids in captions), captions
