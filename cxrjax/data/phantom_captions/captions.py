"""One-line ROCO-style captions written from a phantom study's findings.

A caption names what the frontal view shows, in a fixed order (heart, pleural fluid, pneumothorax,
airspace opacity, nodule): "Chest X-ray showing cardiomegaly and a right pleural effusion.", or a
normal study's "Chest X-ray showing no acute abnormality.". Each part has several phrasings, the
first the most common (CAPTION_TEMPLATE_WEIGHTS gives the odds), so that the text is predictable only
through the findings. `oracle_caption(findings)` writes every part with its most common phrasing:
the caption that reading the image perfectly would give.
"""

from __future__ import annotations

import numpy as np

from cxrjax.data.phantom import findings as findings_lib

# Each part lists its phrasings, first the most common one.
CAPTION_TEMPLATE_WEIGHTS = (0.7, 0.2, 0.1)
_OPENINGS = ("Chest X-ray showing {}.", "Chest radiograph shows {}.", "Frontal chest X-ray demonstrating {}.")
_NORMAL = (
  "Chest X-ray showing no acute abnormality.",
  "Normal chest radiograph.",
  "Frontal chest X-ray with clear lungs and a normal heart size.",
)
_CARDIOMEGALY = ("cardiomegaly", "an enlarged cardiac silhouette", "an enlarged heart")
_EFFUSION = ("a {side} pleural effusion", "{side}-sided pleural effusion", "blunting of the {side} costophrenic angle")
_EFFUSION_BILATERAL = (
  "bilateral pleural effusions",
  "pleural effusions on both sides",
  "blunting of both costophrenic angles",
)
_PNEUMOTHORAX = ("a {side} pneumothorax", "{side}-sided pneumothorax", "a {side} apical pneumothorax")
_OPACITY = ("consolidation in the {lobe} lobe", "{lobe} lobe airspace opacity", "an opacity in the {lobe} lobe")
_NODULE = ("a nodule in the {side} lung", "a {side} lung nodule", "a small round opacity in the {side} lung")


def write_caption(findings: findings_lib.Findings, rng: np.random.Generator, paraphrase: bool = True) -> str:
  """The caption of `findings`: one sentence (see the module docstring).

  A fixed number of draws is taken from `rng` whatever the findings, so that adding or removing one
  finding does not change the wording of the others.
  """
  draws = rng.random(6)
  choose = lambda templates, u: templates[_template_index(u, paraphrase)]
  parts = []
  if findings.cardiomegaly:
    parts.append(choose(_CARDIOMEGALY, draws[1]))
  if findings.effusion == "bilateral":
    parts.append(choose(_EFFUSION_BILATERAL, draws[2]))
  elif findings.effusion:
    parts.append(choose(_EFFUSION, draws[2]).format(side=findings.effusion))
  if findings.pneumothorax:
    parts.append(choose(_PNEUMOTHORAX, draws[3]).format(side=findings.pneumothorax))
  if findings.opacity:
    parts.append(choose(_OPACITY, draws[4]).format(lobe=findings.opacity))
  if findings.nodule:
    parts.append(choose(_NODULE, draws[5]).format(side=findings.nodule))
  if not parts:
    return choose(_NORMAL, draws[0])
  listed = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
  return choose(_OPENINGS, draws[0]).format(listed)


def _template_index(u: float, paraphrase: bool) -> int:
  if not paraphrase:
    return 0
  return int(np.searchsorted(np.cumsum(CAPTION_TEMPLATE_WEIGHTS), u * sum(CAPTION_TEMPLATE_WEIGHTS), side="right"))


def generate_caption(index: int, config: findings_lib.PhantomConfig = findings_lib.PhantomConfig()) -> str:
  """The caption of study `index` (no drawing): its findings, worded from its own text stream."""
  index = int(index)
  return write_caption(
    findings_lib.sample_findings(index, config),
    findings_lib.study_rng(config, index, findings_lib.STREAM_TEXT),
    config.paraphrase,
  )


def oracle_caption(findings: findings_lib.Findings) -> str:
  """The caption of `findings` with every part's most common phrasing (deterministic)."""
  # With paraphrase=False the draws do not change the text; a fixed generator keeps it pure.
  return write_caption(findings, np.random.default_rng(0), paraphrase=False)


def generate_oracle_caption(index: int, config: findings_lib.PhantomConfig = findings_lib.PhantomConfig()) -> str:
  """The findings oracle of study `index`: oracle_caption of its true findings."""
  return oracle_caption(findings_lib.sample_findings(int(index), config))
