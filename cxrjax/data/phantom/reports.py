"""Phantom reports: IU X-ray phrasing written from a study's findings.

Each sentence slot has several templates, the first the most common (`_TEMPLATE_WEIGHTS` gives the
odds), and some readers describe the lungs first: the text is only predictable through the findings,
which are only visible in the images. `oracle_report(findings)` writes every slot with its most common
template in the usual order: the report that reading the images perfectly would give (the phantom
findings oracle, an upper bound for a report generator).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from cxrjax.data.phantom import findings as findings_lib

# Each slot lists its templates, first the most common one: _TEMPLATE_WEIGHTS gives the odds.
_TEMPLATE_WEIGHTS = (0.7, 0.2, 0.1)
_HEART_NORMAL = (
  ("The heart is normal in size.", "The mediastinum is unremarkable."),
  ("The cardiomediastinal silhouette is within normal limits.",),
  ("Heart size is normal.", "Mediastinal contours are within normal limits."),
)
_HEART_ENLARGED = (
  ("The heart is enlarged.", "The mediastinum is unremarkable."),
  ("Cardiomegaly is present.", "The mediastinal contours are normal."),
  ("The cardiac silhouette is enlarged.", "Mediastinal contours are within normal limits."),
)
_LUNGS_CLEAR = ("The lungs are clear.", "The lungs are clear bilaterally.", "Both lungs are clear.")
_OPACITY = (
  "There is focal airspace opacity in the {lobe} lobe.",
  "Focal consolidation is present in the {lobe} lobe.",
  "There is {lobe} lobe airspace disease.",
)
_NODULE = (
  "There is a nodule in the {side} lung.",
  "A {side} lung nodule is noted.",
  "A small nodule projects over the {side} lung.",
)
_LUNGS_OTHERWISE = (
  "The lungs are otherwise clear.",
  "Otherwise the lungs are clear.",
  "The remainder of the lungs is clear.",
)
_EFFUSION = (
  "There is a {side} pleural effusion.",
  "A {side} pleural effusion is present.",
  "Blunting of the {side} costophrenic angle consistent with pleural effusion.",
)
_EFFUSION_BILATERAL = (
  "There are bilateral pleural effusions.",
  "Bilateral pleural effusions are present.",
  "Blunting of both costophrenic angles consistent with bilateral pleural effusions.",
)
_PNEUMOTHORAX = (
  "There is a {side} pneumothorax.",
  "A {side} pneumothorax is present.",
  "There is a {side}-sided pneumothorax.",
)
_NO_PLEURAL = (
  "No pneumothorax or pleural effusion.",
  "There is no pneumothorax or pleural effusion.",
  "No pleural effusion or pneumothorax is seen.",
)
_NO_PNEUMOTHORAX = ("No pneumothorax.", "There is no pneumothorax.", "No pneumothorax is seen.")
_NO_EFFUSION = ("No pleural effusion.", "There is no pleural effusion.", "No pleural effusion is seen.")
INDICATIONS = (
  "Chest pain.",
  "Shortness of breath.",
  "Cough.",
  "Preoperative evaluation.",
  "Fever.",
  "Follow-up.",
  "Dyspnea.",
  "Routine screening.",
)


def write_report(findings: findings_lib.Findings, rng: np.random.Generator, paraphrase: bool = True) -> str:
  """Findings text in IU X-ray phrasing: heart and mediastinum, lungs, pleura (sometimes lungs first).

  A fixed number of draws is taken from `rng` whatever the findings, so the wording of the unaffected
  sentences does not change when one finding is added or removed.
  """
  draws = rng.random(8)
  choose = lambda templates, u: templates[_template_index(u, paraphrase)]

  heart = list(choose(_HEART_ENLARGED if findings.cardiomegaly else _HEART_NORMAL, draws[0]))
  lungs = []
  if findings.opacity:
    lungs.append(choose(_OPACITY, draws[1]).format(lobe=findings.opacity))
  if findings.nodule:
    lungs.append(choose(_NODULE, draws[2]).format(side=findings.nodule))
  lungs.append(choose(_LUNGS_OTHERWISE if lungs else _LUNGS_CLEAR, draws[3]))
  pleura = []
  if findings.effusion == "bilateral":
    pleura.append(choose(_EFFUSION_BILATERAL, draws[4]))
  elif findings.effusion:
    pleura.append(choose(_EFFUSION, draws[4]).format(side=findings.effusion))
  if findings.pneumothorax:
    pleura.append(choose(_PNEUMOTHORAX, draws[5]).format(side=findings.pneumothorax))
  if not findings.effusion and not findings.pneumothorax:
    pleura.append(choose(_NO_PLEURAL, draws[6]))
  elif not findings.pneumothorax:
    pleura.append(choose(_NO_PNEUMOTHORAX, draws[6]))
  elif not findings.effusion:
    pleura.append(choose(_NO_EFFUSION, draws[6]))
  # Some readers describe the lungs first.
  lungs_first = paraphrase and draws[7] < 0.25
  sentences = lungs + pleura + heart if lungs_first else heart + lungs + pleura
  return " ".join(sentences)


def write_impression(findings: findings_lib.Findings) -> str:
  """Deterministic impression: the findings in a fixed order, or no acute abnormality."""
  parts = []
  if findings.cardiomegaly:
    parts.append("Cardiomegaly.")
  if findings.effusion == "bilateral":
    parts.append("Bilateral pleural effusions.")
  elif findings.effusion:
    parts.append(f"{findings.effusion.capitalize()} pleural effusion.")
  if findings.pneumothorax:
    parts.append(f"{findings.pneumothorax.capitalize()} pneumothorax.")
  if findings.opacity:
    parts.append(f"{findings.opacity.capitalize()} lobe opacity.")
  if findings.nodule:
    parts.append(f"{findings.nodule.capitalize()} lung nodule.")
  return " ".join(parts) or "No acute cardiopulmonary abnormality."


def _template_index(u: float, paraphrase: bool) -> int:
  if not paraphrase:
    return 0
  return int(np.searchsorted(np.cumsum(_TEMPLATE_WEIGHTS), u * sum(_TEMPLATE_WEIGHTS), side="right"))


def generate_report(index: int, config: findings_lib.PhantomConfig = findings_lib.PhantomConfig()) -> str:
  """The report of study `index` alone (no drawing): equal to source.generate_study(index, config)["report"]."""
  index = int(index)
  return write_report(
    findings_lib.sample_findings(index, config),
    findings_lib.study_rng(config, index, findings_lib.STREAM_TEXT),
    config.paraphrase,
  )


def oracle_report(findings: findings_lib.Findings) -> str:
  """The report of `findings` with the most common phrasing: every slot's first template, heart first.

  Deterministic (no paraphrase): what a reader who sees the findings perfectly and always words them
  the usual way writes.
  """
  # With paraphrase=False the draws do not change the text; a fixed generator keeps it pure.
  return write_report(findings, np.random.default_rng(0), paraphrase=False)


def generate_oracle_report(index: int, config: findings_lib.PhantomConfig = findings_lib.PhantomConfig()) -> str:
  """The findings oracle of study `index`: oracle_report of its true findings."""
  return oracle_report(findings_lib.sample_findings(int(index), config))


def most_common_report(records: Iterable[Mapping[str, Any]]) -> str:
  """The blind baseline: the most frequent "report" of `records` (ties: the alphabetically first)."""
  counts = collections.Counter(record["report"] for record in records)
  if not counts:
    raise ValueError("most_common_report needs at least one record")
  return min(counts, key=lambda report: (-counts[report], report))
