"""Study-level splits: a seeded random split, and applying a split to records."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
UNASSIGNED = "unassigned"


def random_split(
  study_ids: Iterable[str], fractions: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, list[str]]:
  """Splits study ids at random, deterministically for a given seed.

  The order is that of sha256(f"{seed}:{id}"), so it depends neither on the input
  order nor on a library's random generator. Split sizes are floor(fraction * n) for
  all but the last split, which takes the rest.

  Args:
    study_ids: unique study ids.
    fractions: split name -> fraction, summing to 1 (default 70/10/20 train/val/test).
    seed: the seed.

  Returns:
    split name -> study ids (sorted), in the order of `fractions`.
  """
  fractions = dict(DEFAULT_FRACTIONS if fractions is None else fractions)
  if not fractions or any(f < 0 for f in fractions.values()):
    raise ValueError(f"fractions must be non-negative, got {fractions}")
  if abs(sum(fractions.values()) - 1.0) > 1e-6:
    raise ValueError(f"fractions must sum to 1, got {fractions} (sum {sum(fractions.values())})")
  ids = list(study_ids)
  if len(set(ids)) != len(ids):
    repeated = sorted({i for i in ids if ids.count(i) > 1})[:5]
    raise ValueError(f"study ids must be unique; repeated: {repeated}")
  ordered = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
  split, start = {}, 0
  names = list(fractions)
  for index, name in enumerate(names):
    size = len(ordered) - start if index == len(names) - 1 else int(fractions[name] * len(ordered))
    split[name] = sorted(ordered[start : start + size])
    start += size
  return split


def apply_split(
  records: Sequence[Mapping[str, Any]], split: Mapping[str, Sequence[str]]
) -> dict[str, list[Mapping[str, Any]]]:
  """Groups records by split name (by "id"); records in no split go under "unassigned".

  A study id listed in two splits is an error.
  """
  where = {}
  for name, ids in split.items():
    for study_id in ids:
      if study_id in where:
        raise ValueError(f"study {study_id} is in both {where[study_id]!r} and {name!r}")
      where[study_id] = name
  grouped = {name: [] for name in split}
  for record in records:
    grouped.setdefault(where.get(record["id"], UNASSIGNED), []).append(record)
  return grouped
