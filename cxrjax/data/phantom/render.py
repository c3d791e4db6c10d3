"""Phantom images: the frontal and lateral radiograph-like views of a study, drawn with numpy.

Images. Coordinates are normalised to [-1, 1]: x to the image right (the patient's left on the
frontal view, posterior on the lateral view), y downwards. Intensities are attenuations in [0, 1]
(air 0, soft tissue ~0.4, bone ~0.8) before the per-view display mapping and noise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from cxrjax.data.phantom import findings as findings_lib


@dataclasses.dataclass(frozen=True)
class _Patient:
  """Anatomy shared by both views (so the lateral view agrees with the frontal one)."""

  ctr: float  # cardiothoracic ratio of the normal heart
  heart_aspect: float  # short / long axis of the heart
  thorax: float  # half width of the thorax at the costophrenic angles (inner chest wall)
  body: float  # half width of the soft tissue outline
  depth: float  # half antero-posterior depth of the chest (lateral view)
  apex: float  # y of the lung apices
  dome: float  # y of the right hemidiaphragm dome (the left is `dome_offset` lower)
  dome_offset: float
  dome_curve: float  # how steeply the domes fall towards the costophrenic angles
  mediastinum: float  # half width of the upper mediastinum
  clavicle: float  # y of the clavicles near the midline
  rib_phase: float
  rib_spacing: float
  rib_contrast: float
  gastric_bubble: float  # 0: none, up to 1: a clear gas bubble under the left dome
  marking_frequencies: np.ndarray  # [4] angular frequencies of the lung markings
  marking_phases: np.ndarray  # [2, 4] per lung (right, left)
  marking_twists: np.ndarray  # [4] how the markings curve with the distance from the hilum
  texture_knots: np.ndarray  # [4, 8] smooth soft-tissue texture


@dataclasses.dataclass(frozen=True)
class _Lesions:
  """Geometry of every finding, drawn whether or not the finding is present."""

  ctr: float  # cardiothoracic ratio with cardiomegaly
  effusion_level: tuple[float, float]  # fluid height above the dome (right, left lung)
  effusion_meniscus: tuple[float, float]  # extra rise of the fluid along the chest wall
  pneumothorax_gap: float  # chest wall to visceral pleura distance at the apex
  opacity_jitter: tuple[float, float]  # (across, height) offsets as lung fractions
  opacity_radius: tuple[float, float]
  opacity_knots: np.ndarray  # [4, 6] shape noise
  nodule_position: tuple[float, float]  # (across, height) fractions of the lung
  nodule_depth: float  # antero-posterior position on the lateral view
  nodule_radius: float


@dataclasses.dataclass(frozen=True)
class _Pose:
  """Per-view nuisance: placement on the detector and exposure."""

  shift: tuple[float, float]
  scale: float
  contrast: float
  brightness: float
  gamma: float
  noise: float


def render_views(
  index: int, config: findings_lib.PhantomConfig, findings: findings_lib.Findings
) -> tuple[np.ndarray, np.ndarray]:
  """The frontal and lateral images of study `index` drawn with `findings`: uint8 [size, size] each."""
  patient = _sample_patient(findings_lib.study_rng(config, index, findings_lib.STREAM_PATIENT))
  lesions = _sample_lesions(findings_lib.study_rng(config, index, findings_lib.STREAM_LESIONS))
  pose_rng = findings_lib.study_rng(config, index, findings_lib.STREAM_POSE)
  frontal_pose, lateral_pose = (_sample_pose(pose_rng, config.nuisance) for _ in findings_lib.VIEWS)
  noise_rng = findings_lib.study_rng(config, index, findings_lib.STREAM_NOISE)
  # Large images are drawn at _MAX_DRAW_SIZE and upsampled (the anatomy is smooth at that scale);
  # the pixel noise is added at full size.
  size = config.image_size
  draw_size = min(size, _MAX_DRAW_SIZE)
  views = []
  for draw, pose in ((_draw_frontal, frontal_pose), (_draw_lateral, lateral_pose)):
    attenuation = _resize(draw(patient, lesions, findings, draw_size, pose), size)
    views.append(_expose(attenuation, pose, noise_rng))
  return views[0], views[1]


# Drawing cost grows with the pixel count; above this size, upsampling a drawing of this size is
# cheaper and loses little.
_MAX_DRAW_SIZE = 160


def _resize(image: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of a square image [n, n] to [size, size], aligning pixel centres."""
  if image.shape[0] == size:
    return image
  n = image.shape[0]
  source = np.clip((np.arange(size, dtype=np.float32) + 0.5) * (n / size) - 0.5, 0.0, n - 1.0)
  low = np.minimum(source.astype(np.int32), n - 2)
  weight = source - low
  rows = image[low] * (1 - weight[:, None]) + image[low + 1] * weight[:, None]
  return rows[:, low] * (1 - weight) + rows[:, low + 1] * weight


def _sample_patient(rng: np.random.Generator) -> _Patient:
  u = lambda low, high: float(rng.uniform(low, high))
  thorax = u(0.72, 0.8)
  body = thorax + u(0.1, 0.17)
  return _Patient(
    ctr=u(0.38, 0.47),
    heart_aspect=u(0.68, 0.8),
    thorax=thorax,
    body=body,
    depth=body * u(0.68, 0.78),
    apex=u(-0.74, -0.64),
    dome=u(0.3, 0.42),
    dome_offset=u(0.02, 0.07),
    dome_curve=u(1.2, 1.8),
    mediastinum=u(0.1, 0.13),
    clavicle=u(-0.74, -0.66),
    rib_phase=u(0.0, 1.0),
    rib_spacing=u(0.13, 0.16),
    rib_contrast=u(0.08, 0.13),
    gastric_bubble=u(0.0, 1.0),
    marking_frequencies=rng.uniform(9.0, 17.0, 4).astype(np.float32),
    marking_phases=rng.uniform(0.0, 2 * math.pi, (2, 4)).astype(np.float32),
    marking_twists=rng.uniform(-6.0, 6.0, 4).astype(np.float32),
    texture_knots=rng.standard_normal((4, 8)).astype(np.float32),
  )


def _sample_lesions(rng: np.random.Generator) -> _Lesions:
  u = lambda low, high: float(rng.uniform(low, high))
  return _Lesions(
    ctr=u(0.56, 0.66),
    effusion_level=(u(0.1, 0.26), u(0.1, 0.26)),
    effusion_meniscus=(u(0.12, 0.24), u(0.12, 0.24)),
    pneumothorax_gap=u(0.14, 0.24),
    opacity_jitter=(u(-0.1, 0.1), u(-0.06, 0.06)),
    opacity_radius=(u(0.18, 0.25), u(0.15, 0.21)),
    opacity_knots=rng.standard_normal((4, 6)).astype(np.float32),
    nodule_position=(u(0.25, 0.75), u(0.2, 0.7)),
    nodule_depth=u(-0.6, 0.6),
    nodule_radius=u(0.042, 0.058),
  )


def _sample_pose(rng: np.random.Generator, nuisance: float) -> _Pose:
  u = lambda half_range: float(rng.uniform(-half_range, half_range)) * nuisance
  return _Pose(
    shift=(u(0.06), u(0.05)),
    scale=1.0 + u(0.08),
    contrast=1.0 + u(0.15),
    brightness=u(0.05),
    gamma=1.0 + u(0.15),
    noise=0.02 + u(0.01),
  )


def _grid(size: int, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
  """Anatomy coordinates of the pixel centres: x float32 [1, size], y float32 [size, 1].

  Kept separable (no rotation) so that everything depending on one coordinate only is computed once
  per row or column: this makes drawing several times faster.
  """
  centres = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
  return (centres[None, :] - pose.shift[0]) / pose.scale, (centres[:, None] - pose.shift[1]) / pose.scale


def _ramp(signed: np.ndarray, width: float) -> np.ndarray:
  """Soft inside-indicator: 0 for signed << 0, 1 for signed >> 0, linear over `width` (anti-aliasing)."""
  return np.clip(0.5 + signed * (1.0 / width), 0.0, 1.0)


def _mix(base: np.ndarray, value: Any, weight: np.ndarray) -> np.ndarray:
  return base + (value - base) * weight


def _smooth(knots: np.ndarray, positions: np.ndarray) -> np.ndarray:
  """Piecewise-linear profile through `knots` (evenly spaced over [0, 1]) at `positions`."""
  grid = np.linspace(0.0, 1.0, len(knots), dtype=np.float32)
  return np.interp(positions.ravel(), grid, knots).astype(np.float32).reshape(positions.shape)


def _separable_noise(knots: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Smooth noise [H, W] from knots [4, n]: a sum of two products of 1-D profiles over u [1, W], v [H, 1].

  Separable on purpose: no per-pixel gathers or matrix products (BLAS threads stall on a busy machine).
  """
  return _smooth(knots[0], v) * _smooth(knots[1], u) + _smooth(knots[2], v) * _smooth(knots[3], u)


def _streaks(
  frequencies: np.ndarray, phases: np.ndarray, twists: np.ndarray, dx: np.ndarray, dy: np.ndarray, side: Any = 0.0
) -> np.ndarray:
  """Radial streaks around a hilum (lung markings) in [0, 1]: a few angular waves that twist with radius.

  Args:
    frequencies, twists: [k] angular frequencies and radial twists; phases: [2, k] per lung.
    dx, dy: offsets from the hilum; side: 0 (right lung) to 1 (left lung), per pixel or a scalar.
  """
  angle = np.arctan2(dy, dx)
  radius = _norm(dx, dy)
  waves = 0.0
  for k in range(len(frequencies)):
    phase = phases[0, k] + (phases[1, k] - phases[0, k]) * side
    waves = waves + np.cos(frequencies[k] * angle + twists[k] * radius + phase)
  # Squared positive lobes: thin bright vessels on a dark background.
  waves = np.clip(waves * (1.0 / len(frequencies)), 0.0, None)
  return waves * waves


def _norm(dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
  """Euclidean length; np.hypot is several times slower."""
  return np.sqrt(dx * dx + dy * dy)


def _bands(phase: np.ndarray) -> np.ndarray:
  """Narrow bright bands (ribs) at integer phases: a raised cosine to the 6th power."""
  wave = 0.5 + 0.5 * np.cos((2 * math.pi) * phase)
  wave = wave * wave
  return wave * wave * wave


def _ellipse(
  x: np.ndarray, y: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], angle: float, edge: float
) -> np.ndarray:
  """Soft mask [H, W] of an ellipse with semi-axes `axes` rotated by `angle` (radians, y downwards)."""
  cos, sin = math.cos(angle), math.sin(angle)
  # Only the bounding box (including the soft edge) is computed, x and y being sorted: shapes are
  # often small.
  reach = max(axes) * (1 + 0.5 * edge / min(axes))
  columns = slice(*np.searchsorted(x[0], [centre[0] - reach, centre[0] + reach]))
  rows = slice(*np.searchsorted(y[:, 0], [centre[1] - reach, centre[1] + reach]))
  dx, dy = x[:, columns] - centre[0], y[rows] - centre[1]
  radius = _norm((dx * cos + dy * sin) / axes[0], (dy * cos - dx * sin) / axes[1])
  mask = np.zeros((y.shape[0], x.shape[1]), np.float32)
  mask[rows, columns] = _ramp((1 - radius) * min(axes), edge)
  return mask


def _edge(size: int) -> float:
  """Edge width of about 1.5 pixels, so shapes stay smooth at any resolution."""
  return 3.0 / size


# The heart's long axis points to the cardiac apex: down and to the patient's left on the frontal view.
_HEART_TILT = 0.45


def _heart_axes(patient: _Patient, lesions: _Lesions, findings: findings_lib.Findings) -> tuple[float, float, float]:
  """Frontal heart (long semi-axis, short semi-axis, horizontal half extent = ctr * thorax)."""
  ctr = lesions.ctr if findings.cardiomegaly else patient.ctr
  half_width = ctr * patient.thorax
  long_axis = half_width / math.hypot(math.cos(_HEART_TILT), patient.heart_aspect * math.sin(_HEART_TILT))
  return long_axis, patient.heart_aspect * long_axis, half_width


def _lung_height(patient: _Patient) -> float:
  return patient.dome - patient.apex


def _draw_frontal(
  patient: _Patient, lesions: _Lesions, findings: findings_lib.Findings, size: int, pose: _Pose
) -> np.ndarray:
  """Frontal (PA) attenuation image, float32 [size, size]; the patient's right is on the image left."""
  x, y = _grid(size, pose)
  edge = _edge(size) / pose.scale
  dist = np.abs(x)  # distance from the midline
  left = (x > 0).astype(np.float32)  # the patient's left, as a weight (bool * float is float64)
  on_side = {"right": 1 - left, "left": left}

  # Soft tissue: convex chest wall, shoulders, neck.
  half_width = patient.body * (1 - 0.1 * (y - 0.1) ** 2) + 0.16 * np.clip((-0.45 - y) / 0.3, 0.0, 1.0)
  top = -0.97 + 0.5 * np.clip(dist - 0.2, 0.0, None)
  body = _ramp(half_width - dist, edge) * _ramp(y - top, 3 * edge)
  texture = _separable_noise(patient.texture_knots, (x + 1) / 2, (y + 1) / 2)
  image = body * (0.3 + 0.1 * np.clip(1 - (dist / patient.body) ** 2, 0, 1) + 0.02 * texture)

  # Diaphragm domes (the left one lower) and the abdomen below them, with the gastric bubble.
  dome = patient.dome + patient.dome_offset * left
  diaphragm = dome + patient.dome_curve * (dist - 0.38) ** 2
  abdomen = _ramp(y - diaphragm, edge) * body
  image = _mix(image, 0.6, abdomen)
  bubble = _ellipse(x, y, (0.34, patient.dome + patient.dome_offset + 0.13), (0.11, 0.055), 0.0, 0.03)
  image = _mix(image, 0.33, 0.7 * patient.gastric_bubble * bubble * abdomen)

  # Mediastinum with the aortic knob, and the heart.
  mediastinum = _ramp(patient.mediastinum - np.abs(x - 0.015), edge) * _ramp(patient.dome - y, edge)
  knob = _ellipse(x, y, (patient.mediastinum + 0.03, -0.36), (0.075, 0.07), 0.0, edge)
  long_axis, short_axis, half_width = _heart_axes(patient, lesions, findings)
  vertical_extent = math.hypot(long_axis * math.sin(_HEART_TILT), short_axis * math.cos(_HEART_TILT))
  heart_centre = (0.33 * half_width + 0.02, patient.dome + patient.dome_offset - 0.4 * vertical_extent)
  heart = _ellipse(x, y, heart_centre, (long_axis, short_axis), _HEART_TILT, edge)
  solid = np.maximum(np.maximum(mediastinum, knob), heart)
  image = _mix(image, 0.66, solid)

  # Lungs: apex rounding into the lateral chest wall, medial edge along the mediastinum.
  apex = patient.apex
  medial_edge, lateral_edge = _lung_edges(patient, y)
  lung_shape = (
    _ramp(dist - medial_edge, edge)
    * _ramp(lateral_edge - dist, edge)
    * _ramp(y - apex, edge)
    * _ramp(diaphragm - y, edge)
  )
  lung = lung_shape * (1 - solid)

  # Vascular markings: radial streaks fading from the hila to the periphery.
  hilum_dist = _norm(dist - 0.2, y + 0.06)
  streaks = _streaks(
    patient.marking_frequencies, patient.marking_phases, patient.marking_twists, dist - 0.2, y + 0.06, left
  )
  lung_value = 0.13 + 0.3 * streaks * np.exp(-hilum_dist / 0.4) + 0.12 * np.exp(-((hilum_dist / 0.09) ** 2))

  if findings.pneumothorax:
    # Air between the chest wall and the collapsed lung, widest at the apex, with no markings.
    side = on_side[findings.pneumothorax]
    gap = lesions.pneumothorax_gap * (1.0 - 0.6 * np.clip((y - apex) / _lung_height(patient), 0.0, 1.0))
    pleura = lateral_edge - gap
    air = np.maximum(_ramp(dist - pleura, edge), _ramp(apex + gap - y, edge)) * side
    pleural_line = np.exp(-(((dist - pleura) / max(0.012, edge / 2)) ** 2)) * _ramp(y - apex - gap, edge)
    lung_value = _mix(lung_value + 0.03 * side, 0.05, air) + 0.12 * pleural_line * side * (1 - air)
  lung_value, focal = _draw_lung_lesions(lung_value, x, y, patient, lesions, findings, edge, frontal=True)
  if findings.effusion:
    # Fluid at the base with a meniscus climbing the lateral chest wall (blunted costophrenic angle).
    reach = np.clip((dist - 0.3) / (patient.thorax - 0.3), 0.0, 1.0) ** 2
    for index, side in enumerate(findings_lib.SIDES):
      if findings.effusion in (side, "bilateral"):
        level = (
          patient.dome
          + patient.dome_offset * index
          - lesions.effusion_level[index]
          - lesions.effusion_meniscus[index] * reach
        )
        lung_value = _mix(lung_value, 0.56, _ramp(y - level, 0.06) * on_side[side])
  image = _mix(image, lung_value, lung)
  image += 0.12 * focal * lung_shape * solid  # lesions seen through the heart

  # Bones on top: spine, posterior ribs, faint anterior ribs, clavicles.
  vertebrae = 0.7 + 0.3 * np.cos(2 * math.pi * y / 0.115)
  image += 0.06 * _ramp(0.07 - dist, edge) * vertebrae * body
  rib_zone = (
    _ramp(patient.thorax + 0.03 - dist, edge)
    * _ramp(dist - 0.07, edge)
    * _ramp(y - apex + 0.12, 4 * edge)
    * _ramp(patient.dome + 0.3 - y, 4 * edge)
  )
  posterior = (y + 0.12 * dist - 0.55 * dist**2) / patient.rib_spacing + patient.rib_phase
  anterior = (y + 0.45 * dist) / (1.3 * patient.rib_spacing) + patient.rib_phase
  ribs = _bands(posterior) + 0.35 * _bands(anterior) * _ramp(dist - 0.3, 0.1)
  image += patient.rib_contrast * ribs * rib_zone * (0.4 + 0.6 * lung)
  clavicle_y = patient.clavicle - 0.12 * (dist - 0.05) + 0.3 * (dist - 0.05) ** 2
  clavicle = np.exp(-(((y - clavicle_y) / 0.032) ** 2)) * _ramp(dist - 0.07, edge) * _ramp(0.66 - dist, 0.05)
  image += 0.17 * clavicle

  # Trachea: an air column above the carina.
  trachea = _ramp(0.035 - np.abs(x - 0.01), edge) * _ramp(-0.25 - y, 0.08)
  return image - 0.15 * trachea


def _draw_lung_lesions(
  lung_value: np.ndarray,
  x: np.ndarray,
  y: np.ndarray,
  patient: _Patient,
  lesions: _Lesions,
  findings: findings_lib.Findings,
  edge: float,
  frontal: bool,
) -> tuple[np.ndarray, np.ndarray | float]:
  """Adds the focal opacity and the nodule to the lung attenuation, at the same height in both views.

  Returns the new lung attenuation and the lesions' weight (for the parts seen through the heart).
  """
  height = _lung_height(patient)
  focal = 0.0
  if findings.opacity:
    side, lobe = findings.opacity.split()
    upper = lobe == "upper"
    # Frontal: upper or lower zone; lateral: upper lobes antero-superior, lower lobes postero-inferior.
    across = 0.45 if frontal else (0.3 if upper else 0.75)
    centre_y = patient.apex + ((0.3 if upper else 0.72) + lesions.opacity_jitter[1]) * height
    centre_x = _lung_point(across + lesions.opacity_jitter[0], centre_y, patient, side, frontal)
    local_x = (x - centre_x) / lesions.opacity_radius[0]
    local_y = (y - centre_y) / lesions.opacity_radius[1]
    shape = _separable_noise(lesions.opacity_knots, (local_x + 1) / 4 + 0.25, (local_y + 1) / 4 + 0.25)
    blob = _ramp(1.0 - _norm(local_x, local_y) + 0.15 * np.clip(shape, -1.5, 1.5), 0.6)
    if frontal:
      blob = blob * ((x > 0) == (side == "left"))
    lung_value = _mix(lung_value, 0.5 + 0.04 * shape, 0.9 * blob)
    focal = blob
  if findings.nodule:
    across, height_fraction = lesions.nodule_position
    centre_y = patient.apex + height_fraction * height
    if frontal:
      centre_x = _lung_point(across, centre_y, patient, findings.nodule, frontal)
    else:
      centre_x = 0.5 * lesions.nodule_depth
    nodule = _ramp(lesions.nodule_radius - _norm(x - centre_x, y - centre_y), max(edge, 0.02))
    lung_value = _mix(lung_value, 0.72, nodule)
    focal = np.maximum(focal, nodule)
  return lung_value, focal


def _lung_edges(patient: _Patient, y: Any) -> tuple[Any, Any]:
  """Frontal (medial, lateral) lung edges, as distances from the midline, at heights y [H, 1].

  Both start at the apex and open like a dome: the lateral edge to the chest wall, the medial one to
  the mediastinum.
  """
  apex_dist = 0.33
  below_apex = np.clip(y - patient.apex, 0.0, None)
  lateral = apex_dist + (patient.thorax - apex_dist) * np.sqrt(np.minimum(below_apex / 0.55, 1.0))
  medial = apex_dist - (apex_dist - patient.mediastinum) * np.sqrt(np.minimum(below_apex / 0.33, 1.0))
  return medial, lateral


def _lung_point(fraction: float, y: float, patient: _Patient, side: str, frontal: bool) -> float:
  """x of a point `fraction` of the way across the lung at height y (frontal: medial to lateral)."""
  if not frontal:
    return -0.55 + 1.1 * fraction
  # Keep lesions off the mediastinal edge.
  medial, lateral = patient.mediastinum + 0.1, float(_lung_edges(patient, y)[1])
  dist = medial + fraction * (lateral - medial)
  return dist if side == "left" else -dist


def _draw_lateral(
  patient: _Patient, lesions: _Lesions, findings: findings_lib.Findings, size: int, pose: _Pose
) -> np.ndarray:
  """Lateral attenuation image, float32 [size, size]; anterior on the image left."""
  x, y = _grid(size, pose)
  edge = _edge(size) / pose.scale

  # Soft tissue: convex anterior chest wall, back, and the raised arms over the upper chest.
  front = -patient.depth + 0.1 * (y + 0.1) ** 2
  back = patient.depth + 0.04 - 0.06 * (y + 0.2) ** 2
  body = _ramp(x - front, edge) * _ramp(back - x, edge)
  texture = _separable_noise(patient.texture_knots[::-1], (x + 1) / 2, (y + 1) / 2)
  arms = _ellipse(x, y, (-0.1, -0.88), (0.7, 0.35), 0.0, 0.25)
  image = body * (0.36 + 0.02 * texture) + 0.14 * arms * body

  # Hemidiaphragm: highest in front, falling to the deep posterior costophrenic sulcus.
  dome = patient.dome + 0.5 * patient.dome_offset
  peak = -0.25
  diaphragm = dome + np.where(
    x < peak, 0.2 * ((x - peak) / 0.5) ** 2, 0.3 * patient.dome_curve * ((x - peak) / 0.85) ** 2
  )
  image = _mix(image, 0.6, _ramp(y - diaphragm, edge) * body)

  # Lungs (both superimposed) from behind the sternum to the posterior ribs.
  apex = patient.apex + 0.03 + 0.8 * (x - 0.05) ** 2
  spine_x = patient.depth - 0.2 + 0.05 * (y + 0.2) ** 2
  lung = (
    _ramp(x - front - 0.06, edge) * _ramp(spine_x + 0.07 - x, edge) * _ramp(y - apex, edge) * _ramp(diaphragm - y, edge)
  )
  hilum_dist = _norm(x - 0.05, y + 0.05)
  streaks = _streaks(patient.marking_frequencies, patient.marking_phases, patient.marking_twists, x - 0.05, y + 0.05)
  lung_value = 0.17 + 0.25 * streaks * np.exp(-hilum_dist / 0.4) + 0.14 * np.exp(-((hilum_dist / 0.12) ** 2))

  # Heart: behind the lower sternum on the diaphragm, reaching back towards the spine when enlarged.
  long_axis, short_axis, _ = _heart_axes(patient, lesions, findings)
  heart_axes = (0.8 * long_axis, 0.95 * short_axis)
  heart_centre = (-patient.depth + 0.1 + 0.9 * heart_axes[0], dome + 0.05 - 0.8 * heart_axes[1])
  heart = _ellipse(x, y, heart_centre, heart_axes, -0.5, edge)

  if findings.pneumothorax:
    # Only an apical lucency with a faint pleural line shows on the lateral view.
    gap = 0.7 * lesions.pneumothorax_gap
    air = _ramp(apex + gap - y, edge)
    lung_value = _mix(lung_value, 0.05, air) + 0.08 * np.exp(-(((y - apex - gap) / 0.015) ** 2))
  lung_value, focal = _draw_lung_lesions(lung_value, x, y, patient, lesions, findings, edge, frontal=False)
  if findings.effusion:
    # Fluid fills the posterior costophrenic sulcus first, climbing posteriorly.
    sides = (0, 1) if findings.effusion == "bilateral" else (findings_lib.SIDES.index(findings.effusion),)
    level = max(lesions.effusion_level[s] for s in sides) + (0.05 if len(sides) == 2 else 0.0)
    meniscus = max(lesions.effusion_meniscus[s] for s in sides)
    surface = dome + 0.1 - level - meniscus * np.clip((x + 0.1) / 0.6, 0.0, 1.0) ** 2
    lung_value = _mix(lung_value, 0.54, _ramp(y - surface, 0.06) * _ramp(x + 0.2, 0.15))
  image = _mix(image, lung_value, lung)
  image = _mix(image, 0.6, 0.85 * heart * np.maximum(lung, body * _ramp(diaphragm + 0.1 - y, edge)))
  image += 0.12 * focal * lung * heart  # lesions seen through the heart
  # The other hemidiaphragm shows as a faint line through the lung base.
  other = diaphragm - patient.dome_offset - 0.03
  image += 0.06 * np.exp(-(((y - other) / 0.02) ** 2)) * lung

  # Spine (vertebral bodies with darker discs), sternum, ribs, trachea.
  discs = 0.6 + 0.4 * (np.cos(2 * math.pi * y / 0.13) > -0.7)
  image += 0.2 * _ramp(0.085 - np.abs(x - spine_x), edge) * discs * body
  image += 0.06 * _ramp(0.06 - np.abs(x - spine_x - 0.16), edge) * body  # posterior elements
  sternum = _ramp(0.022 - np.abs(x - front - 0.035), edge) * _ramp(0.2 - y, 0.05) * _ramp(y + 0.65, 0.05)
  image += 0.14 * sternum
  ribs = _bands((y - 0.35 * x) / patient.rib_spacing + patient.rib_phase)
  image += 0.4 * patient.rib_contrast * ribs * lung
  trachea = _ramp(0.04 - np.abs(x - 0.02 - 0.12 * (y + 1)), edge) * _ramp(-0.2 - y, 0.08)
  return image - 0.13 * trachea


def _expose(attenuation: np.ndarray, pose: _Pose, rng: np.random.Generator) -> np.ndarray:
  """Display mapping with per-view contrast, brightness, gamma and noise: uint8 [size, size]."""
  image = np.clip((attenuation - 0.4) * pose.contrast + 0.4 + pose.brightness, 0.0, 1.0)
  # Gamma through a lookup table: a power per pixel costs more than the rest of the mapping.
  gamma_table = np.linspace(0.0, 1.0, 1024, dtype=np.float32) ** np.float32(0.8 * pose.gamma)
  image = gamma_table.take((image * 1023.0 + 0.5).astype(np.int32))
  # Uniform noise with the standard deviation pose.noise: several times cheaper than Gaussian.
  image += (rng.random(image.shape, dtype=np.float32) - 0.5) * (math.sqrt(12.0) * pose.noise)
  return np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8)
