"""Phantom findings: the dataset settings, the five findings and how each study draws them.

Every random draw of a study comes from its own stream (`study_rng(config, index, stream)`), so that
overriding the findings leaves anatomy, lesion geometry, pixel noise and wording untouched (the tests
compare a study with and without each finding).
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses

import numpy as np

VIEWS = ("frontal", "lateral")
SIDES = ("right", "left")
EFFUSION_SIDES = ("right", "left", "bilateral")
LOBES = ("right upper", "right lower", "left upper", "left lower")
FINDING_NAMES = ("Cardiomegaly", "Effusion", "Pneumothorax", "Opacity", "Nodule")
SPLITS = ("train", "val", "test")
# Split s uses the global study indices [s * SPLIT_STRIDE, s * SPLIT_STRIDE + num_studies).
SPLIT_STRIDE = 1_000_000_000

# The independent RNG streams of one study.
(STREAM_FINDINGS, STREAM_PATIENT, STREAM_POSE, STREAM_LESIONS, STREAM_NOISE, STREAM_TEXT, STREAM_INDICATION) = range(7)


@dataclasses.dataclass(frozen=True)
class PhantomConfig:
  """Synthetic dataset settings.

  Attributes:
    image_size: side of the square images in pixels (>= 16).
    seed: dataset seed; studies depend only on (seed, index).
    p_cardiomegaly, p_effusion, p_pneumothorax, p_opacity, p_nodule: independent prevalences of the
      findings; with the defaults about 41% of the studies are normal (IU X-ray: about 40%).
    nuisance: scale of the position, size, exposure and noise variation (0: identical poses).
    paraphrase: draw each sentence from several templates (False: always the first template).
  """

  image_size: int = 224
  seed: int = 0
  p_cardiomegaly: float = 0.22
  p_effusion: float = 0.18
  p_pneumothorax: float = 0.1
  p_opacity: float = 0.18
  p_nodule: float = 0.12
  nuisance: float = 1.0
  paraphrase: bool = True

  def __post_init__(self):
    if not isinstance(self.image_size, (int, np.integer)) or self.image_size < 16:
      raise ValueError(f"PhantomConfig.image_size must be an int >= 16, got {self.image_size!r}")
    if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
      raise ValueError(f"PhantomConfig.seed must be a non-negative int, got {self.seed!r}")
    for name in ("p_cardiomegaly", "p_effusion", "p_pneumothorax", "p_opacity", "p_nodule"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"PhantomConfig.{name} must be in [0, 1], got {value!r}")
    if not 0.0 <= self.nuisance <= 2.0:
      raise ValueError(f"PhantomConfig.nuisance must be in [0, 2], got {self.nuisance!r}")


@dataclasses.dataclass(frozen=True)
class Findings:
  """The findings of one study (None: absent)."""

  cardiomegaly: bool = False
  effusion: str | None = None  # one of EFFUSION_SIDES
  pneumothorax: str | None = None  # one of SIDES
  opacity: str | None = None  # one of LOBES
  nodule: str | None = None  # one of SIDES

  def __post_init__(self):
    for name, allowed in (("effusion", EFFUSION_SIDES), ("pneumothorax", SIDES), ("opacity", LOBES), ("nodule", SIDES)):
      value = getattr(self, name)
      if value is not None and value not in allowed:
        raise ValueError(f"Findings.{name} must be None or one of {allowed}, got {value!r}")

  @property
  def normal(self) -> bool:
    return self.mesh() == ["normal"]

  def mesh(self) -> list[str]:
    """Finding tags, "<Finding>[/<qualifier>]", or ["normal"] (as IU X-ray's MeSH column)."""
    tags = []
    if self.cardiomegaly:
      tags.append("Cardiomegaly")
    if self.effusion:
      tags.append(f"Effusion/{self.effusion}")
    if self.pneumothorax:
      tags.append(f"Pneumothorax/{self.pneumothorax}")
    if self.opacity:
      tags.append(f"Opacity/{self.opacity} lobe")
    if self.nodule:
      tags.append(f"Nodule/{self.nodule}")
    return tags or ["normal"]


def finding_labels(mesh: Sequence[str]) -> np.ndarray:
  """Multi-hot float32 [len(FINDING_NAMES)] of a record's "mesh" tags (for classifiers)."""
  names = {tag.split("/")[0] for tag in mesh}
  return np.array([name in names for name in FINDING_NAMES], dtype=np.float32)


def sample_findings(index: int, config: PhantomConfig) -> Findings:
  """The findings of study `index`: independent Bernoulli draws, uniform sides and lobes.

  Effusions are right 40%, left 40%, bilateral 20%.
  """
  rng = study_rng(config, index, STREAM_FINDINGS)
  draws = rng.random(5)
  choices = rng.random(4)
  pick = lambda options, u: options[min(int(u * len(options)), len(options) - 1)]
  effusion_side = "bilateral" if choices[0] < 0.2 else ("right" if choices[0] < 0.6 else "left")
  return Findings(
    cardiomegaly=bool(draws[0] < config.p_cardiomegaly),
    effusion=effusion_side if draws[1] < config.p_effusion else None,
    pneumothorax=pick(SIDES, choices[1]) if draws[2] < config.p_pneumothorax else None,
    opacity=pick(LOBES, choices[2]) if draws[3] < config.p_opacity else None,
    nodule=pick(SIDES, choices[3]) if draws[4] < config.p_nodule else None,
  )


def study_rng(config: PhantomConfig, index: int, stream: int) -> np.random.Generator:
  """The generator of one stream of study `index` (depends only on the seed, the index and the stream)."""
  return np.random.default_rng([config.seed, index, stream])
