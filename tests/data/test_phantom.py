"""Tests of the synthetic phantom dataset: determinism, schema, visible findings, reports, splits."""

import dataclasses
import pickle
import re

import numpy as np
import pytest
import sacrebleu

from cxrjax.data import phantom

SIZE = 96  # big enough to localise findings, small enough for fast tests
CONFIG = phantom.PhantomConfig(image_size=SIZE, seed=3)
INDICES = (0, 1, 2, 3, 4, 5)  # different patients, poses and exposures


def _images(index, findings, config=CONFIG):
  record = phantom.generate_study(index, config, findings=findings)
  return [image.astype(np.float64) for image in record["images"]]


def _difference(index, findings, config=CONFIG):
  """(frontal, lateral) difference images: the study with `findings` minus the same study without."""
  with_finding = _images(index, findings, config)
  without = _images(index, phantom.Findings(), config)
  return [a - b for a, b in zip(with_finding, without)]


def _centroid(weights):
  """(x, y) centroid of non-negative weights [H, W], in [0, 1] image fractions."""
  rows, cols = np.mgrid[0 : weights.shape[0], 0 : weights.shape[1]]
  total = weights.sum()
  assert total > 0
  return (cols * weights).sum() / total / weights.shape[1], (rows * weights).sum() / total / weights.shape[0]


# ------------------------------------------------------------------------------------------------
# Determinism, schema, sizes.


def test_same_seed_and_index_give_identical_studies_regardless_of_order():
  first = phantom.generate_study(7, CONFIG)
  for index in (3, 11, 0):  # other studies in between must not matter
    phantom.generate_study(index, CONFIG)
  second = phantom.generate_study(7, CONFIG)
  for a, b in zip(first["images"], second["images"]):
    np.testing.assert_array_equal(a, b)
  assert {k: v for k, v in first.items() if k != "images"} == {k: v for k, v in second.items() if k != "images"}


def test_different_index_or_seed_gives_different_images():
  base = phantom.generate_study(7, CONFIG)
  other_index = phantom.generate_study(8, CONFIG)
  other_seed = phantom.generate_study(7, dataclasses.replace(CONFIG, seed=4))
  for other in (other_index, other_seed):
    for a, b in zip(base["images"], other["images"]):
      assert np.abs(a.astype(int) - b.astype(int)).mean() > 2.0


@pytest.mark.parametrize("size", [16, 64, 97, 224])
def test_record_schema_and_image_shapes(size):
  config = dataclasses.replace(CONFIG, image_size=size)
  record = phantom.generate_study(12, config)
  assert set(record) == {
    "id",
    "images",
    "image_ids",
    "views",
    "findings",
    "impression",
    "indication",
    "comparison",
    "mesh",
    "report",
  }
  assert record["id"] == "phantom-000012"
  assert record["views"] == ["frontal", "lateral"]
  assert record["image_ids"] == ["phantom-000012-frontal", "phantom-000012-lateral"]
  assert len(record["images"]) == 2
  for image in record["images"]:
    assert image.shape == (size, size) and image.dtype == np.uint8
    assert image.std() > 10  # not blank: dark lungs, bright mediastinum and bones
  for key in ("findings", "impression", "indication", "comparison", "report"):
    assert isinstance(record[key], str) and record[key]
  assert record["report"] == record["findings"]
  assert record["mesh"] and all(isinstance(tag, str) for tag in record["mesh"])


def test_text_and_findings_do_not_depend_on_image_size():
  small = phantom.generate_study(21, dataclasses.replace(CONFIG, image_size=32))
  large = phantom.generate_study(21, dataclasses.replace(CONFIG, image_size=128))
  assert {k: v for k, v in small.items() if k != "images"} == {k: v for k, v in large.items() if k != "images"}


def test_anatomy_is_the_same_at_every_size():
  # Downsampling the large frontal view gives (nearly) the small one: same anatomy, only noise differs.
  small = phantom.generate_study(5, dataclasses.replace(CONFIG, image_size=48))["images"][0].astype(float)
  large = phantom.generate_study(5, dataclasses.replace(CONFIG, image_size=192))["images"][0].astype(float)
  pooled = large.reshape(48, 4, 48, 4).mean(axis=(1, 3))
  other = phantom.generate_study(6, dataclasses.replace(CONFIG, image_size=48))["images"][0].astype(float)
  assert np.abs(pooled - small).mean() < 0.5 * np.abs(other - small).mean()


def test_invalid_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="image_size"):
    phantom.PhantomConfig(image_size=8)
  with pytest.raises(ValueError, match="p_effusion"):
    phantom.PhantomConfig(p_effusion=1.5)
  with pytest.raises(ValueError, match="effusion"):
    phantom.Findings(effusion="middle")
  with pytest.raises(ValueError, match="opacity"):
    phantom.Findings(opacity="right middle")
  with pytest.raises(ValueError, match="index"):
    phantom.generate_study(-1, CONFIG)
  with pytest.raises(ValueError, match="split"):
    phantom.PhantomSource("validation", 10, CONFIG)


# ------------------------------------------------------------------------------------------------
# Each finding changes the images where it should.


@pytest.mark.parametrize("index", INDICES)
def test_cardiomegaly_widens_the_heart(index):
  normal, enlarged = (_images(index, phantom.Findings(cardiomegaly=flag))[0] for flag in (False, True))
  # Width of the bright central shadow in the rows of the heart (the lower middle of the image):
  # pixels brighter than midway between the lungs and the mediastinum of the normal study.
  rows = slice(int(0.52 * SIZE), int(0.64 * SIZE))
  threshold = 0.5 * (np.percentile(normal[rows], 15) + np.percentile(normal[rows], 85))
  width = lambda image: (image[rows] > threshold).sum(axis=1).mean()
  assert width(enlarged) > 1.25 * width(normal)
  # The lateral view changes too (the heart reaches back towards the spine).
  lateral_change = _difference(index, phantom.Findings(cardiomegaly=True))[1]
  assert (lateral_change > 20).mean() > 0.01


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("side", ["right", "left", "bilateral"])
def test_effusion_brightens_the_base_of_its_side(index, side):
  frontal, lateral = _difference(index, phantom.Findings(effusion=side))
  base = frontal[int(0.5 * SIZE) : int(0.85 * SIZE)]
  patient_right, patient_left = base[:, : SIZE // 2].mean(), base[:, SIZE // 2 :].mean()
  # The patient's right is on the image left of a PA view.
  if side in ("right", "bilateral"):
    assert patient_right > 3.0
  else:
    assert abs(patient_right) < 0.5
  if side in ("left", "bilateral"):
    assert patient_left > 3.0
  else:
    assert abs(patient_left) < 0.5
  # The upper lungs are untouched; the lateral view shows fluid in the (lower) posterior sulcus.
  assert np.abs(frontal[: int(0.35 * SIZE)]).mean() < 0.5
  assert lateral[int(0.5 * SIZE) :].mean() > 3.0
  assert np.abs(lateral[: int(0.3 * SIZE)]).mean() < 0.5


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_pneumothorax_darkens_the_lateral_upper_lung_of_its_side(index, side):
  frontal, lateral = _difference(index, phantom.Findings(pneumothorax=side))
  upper = frontal[int(0.1 * SIZE) : int(0.55 * SIZE)]
  halves = {"right": upper[:, : SIZE // 2], "left": upper[:, SIZE // 2 :]}
  other = "left" if side == "right" else "right"
  assert (halves[side] < -15).mean() > 0.03  # a band of air without lung markings
  assert np.abs(halves[other]).mean() < 0.5
  # The air band lies along the chest wall: lateral to the middle of the lung.
  darker = np.clip(-frontal, 0, None)
  x, _ = _centroid(darker)
  assert (x < 0.3) if side == "right" else (x > 0.7)
  assert (lateral[: int(0.4 * SIZE)] < -10).mean() > 0.01  # apical lucency on the lateral view


@pytest.mark.parametrize("index", INDICES)
def test_opacity_appears_in_its_lobe(index):
  centres = {}
  for lobe in phantom.LOBES:
    frontal, lateral = _difference(index, phantom.Findings(opacity=lobe))
    brighter = np.clip(frontal, 0, None)
    assert (brighter > 30).mean() > 0.01
    centres[lobe] = _centroid(brighter), _centroid(np.clip(lateral, 0, None))
    side = lobe.split()[0]
    assert (centres[lobe][0][0] < 0.5) == (side == "right")
  for side in phantom.SIDES:
    (upper_frontal, upper_lateral), (lower_frontal, lower_lateral) = (
      centres[f"{side} upper"],
      centres[f"{side} lower"],
    )
    assert upper_frontal[1] + 0.15 < lower_frontal[1]  # upper lobe higher on the frontal view
    assert upper_lateral[1] + 0.15 < lower_lateral[1]
    assert upper_lateral[0] < lower_lateral[0]  # and anterior to the lower lobe on the lateral view


@pytest.mark.parametrize("index", INDICES)
@pytest.mark.parametrize("side", ["right", "left"])
def test_nodule_is_a_small_bright_spot_on_its_side(index, side):
  frontal, lateral = _difference(index, phantom.Findings(nodule=side))
  changed = frontal > 20
  assert 0 < changed.mean() < 0.01  # small
  assert frontal.max() > 60  # and dense
  x, y = _centroid(np.clip(frontal, 0, None))
  assert (x < 0.5) == (side == "right")
  _, lateral_y = _centroid(np.clip(lateral, 0, None))
  assert abs(lateral_y - y) < 0.15  # at the same height on both views (poses differ a little)


def test_findings_add_up_in_one_study():
  everything = phantom.Findings(
    cardiomegaly=True, effusion="bilateral", pneumothorax="left", opacity="right upper", nodule="right"
  )
  frontal, lateral = _difference(2, everything)
  assert np.abs(frontal).mean() > 5 and np.abs(lateral).mean() > 3


# ------------------------------------------------------------------------------------------------
# Reports.

_SIDE = r"(right|left)"


def _parse_report(report):
  """Finding tags stated by a report, read back with patterns independent of the module's templates."""
  tags = []
  for sentence in re.split(r"(?<=\.)\s+", report.strip()):
    lower = sentence.lower()
    negated = lower.startswith("no ") or "there is no" in lower
    if negated:
      assert not re.search(r"enlarged|cardiomegaly|nodule|opacity|consolidation|airspace", lower), sentence
      continue
    if "enlarged" in lower or "cardiomegaly" in lower:
      tags.append("Cardiomegaly")
    if "effusion" in lower:
      side = "bilateral" if ("bilateral" in lower or "both" in lower) else re.search(_SIDE, lower).group(1)
      tags.append(f"Effusion/{side}")
    if "pneumothorax" in lower:
      tags.append(f"Pneumothorax/{re.search(_SIDE, lower).group(1)}")
    if re.search(r"opacity|consolidation|airspace disease", lower):
      tags.append(f"Opacity/{re.search(_SIDE + r' (upper|lower) lobe', lower).group(0)}")
    if "nodule" in lower:
      tags.append(f"Nodule/{re.search(_SIDE, lower).group(1)}")
  return tags


def test_reports_state_exactly_the_findings_drawn():
  config = dataclasses.replace(CONFIG, image_size=16)
  seen = set()
  for index in range(400):
    record = phantom.generate_study(index, config)
    stated = _parse_report(record["report"])
    expected = [] if record["mesh"] == ["normal"] else record["mesh"]
    assert sorted(stated) == sorted(expected), (record["mesh"], record["report"])
    seen.update(tag.split("/")[0] for tag in record["mesh"])
    if record["mesh"] == ["normal"]:
      assert "clear" in record["report"] and "pneumothorax" in record["report"]
      assert record["impression"] == "No acute cardiopulmonary abnormality."
    else:
      assert record["impression"] != "No acute cardiopulmonary abnormality."
  assert seen == set(phantom.FINDING_NAMES) | {"normal"}


def test_report_wording_varies_but_impression_is_deterministic():
  findings = phantom.Findings(effusion="left")
  reports = {phantom.write_report(findings, np.random.default_rng(i)) for i in range(60)}
  assert len(reports) >= 4
  assert all(_parse_report(report) == ["Effusion/left"] for report in reports)
  single = {phantom.write_report(findings, np.random.default_rng(i), paraphrase=False) for i in range(20)}
  assert len(single) == 1
  assert phantom.write_impression(findings) == "Left pleural effusion."


def test_prevalences_control_the_findings():
  none = dataclasses.replace(CONFIG, p_cardiomegaly=0, p_effusion=0, p_pneumothorax=0, p_opacity=0, p_nodule=0)
  assert all(phantom.sample_findings(i, none).normal for i in range(100))
  every = dataclasses.replace(CONFIG, p_cardiomegaly=1, p_effusion=1, p_pneumothorax=1, p_opacity=1, p_nodule=1)
  assert all(len(phantom.sample_findings(i, every).mesh()) == 5 for i in range(100))
  samples = [phantom.sample_findings(i, CONFIG) for i in range(3000)]
  normal = np.mean([f.normal for f in samples])
  assert 0.35 < normal < 0.48  # common, as in IU X-ray, but a minority
  assert 0.18 < np.mean([f.cardiomegaly for f in samples]) < 0.26
  assert {f.opacity for f in samples} == set(phantom.LOBES) | {None}
  assert {f.effusion for f in samples} == set(phantom.EFFUSION_SIDES) | {None}


def test_finding_labels():
  np.testing.assert_array_equal(phantom.finding_labels(["normal"]), np.zeros(5, np.float32))
  labels = phantom.finding_labels(["Cardiomegaly", "Nodule/left", "Opacity/right upper lobe"])
  np.testing.assert_array_equal(labels, [1, 0, 0, 1, 1])


# ------------------------------------------------------------------------------------------------
# Splits, the grain source and the blind baseline.


def test_splits_are_disjoint_and_sources_are_picklable():
  sources = {split: phantom.PhantomSource(split, 30, CONFIG) for split in phantom.SPLITS}
  ids = {split: {source[i]["id"] for i in range(len(source))} for split, source in sources.items()}
  assert all(len(split_ids) == 30 for split_ids in ids.values())
  assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
  assert not np.array_equal(sources["train"][0]["images"][0], sources["val"][0]["images"][0])
  restored = pickle.loads(pickle.dumps(sources["val"]))
  np.testing.assert_array_equal(restored[4]["images"][1], sources["val"][4]["images"][1])
  with pytest.raises(IndexError):
    sources["train"][30]


def test_source_works_as_a_grain_map_dataset():
  import grain  # pylint: disable=g-import-not-at-top

  dataset = grain.MapDataset.source(phantom.PhantomSource("test", 8, CONFIG))
  assert len(dataset) == 8
  assert dataset[3]["id"] == phantom.PhantomSource("test", 8, CONFIG)[3]["id"]


def test_most_common_report_breaks_ties_alphabetically():
  records = [{"report": text} for text in ("b", "a", "c", "b", "a")]
  assert phantom.most_common_report(records) == "a"
  assert phantom.most_common_report(records + [{"report": "c"}, {"report": "c"}]) == "c"
  with pytest.raises(ValueError):
    phantom.most_common_report([])


def test_blind_baseline_is_beatable_by_reading_the_findings():
  """The most common training report scores well below reports written from the true findings."""
  config = dataclasses.replace(CONFIG, image_size=16)
  train = [phantom.PhantomSource("train", 600, config)[i] for i in range(600)]
  val = [phantom.PhantomSource("val", 300, config)[i] for i in range(300)]
  references = [[record["report"] for record in val]]
  blind = phantom.most_common_report(train)
  assert _parse_report(blind) == []  # a normal report
  blind_bleu = sacrebleu.corpus_bleu([blind] * len(val), references).score
  # A perfect reader that writes the most common wording of the true findings.
  informed = [phantom.write_report(_findings_of(record), np.random.default_rng(0), paraphrase=False) for record in val]
  informed_bleu = sacrebleu.corpus_bleu(informed, references).score
  assert 30 < blind_bleu < informed_bleu - 10


def _findings_of(record):
  values = {}
  for tag in record["mesh"]:
    name, _, qualifier = tag.partition("/")
    if name == "Cardiomegaly":
      values["cardiomegaly"] = True
    elif name == "Opacity":
      values["opacity"] = qualifier.removesuffix(" lobe")
    elif name != "normal":
      values[name.lower()] = qualifier
  return phantom.Findings(**values)


# The findings oracle.


def _oracle_sentences(findings):
  """The findings' sentences as the most common templates write them, one per possible finding value:
  {sentence: whether the oracle report must contain it}."""
  expected = {
    "The heart is enlarged.": findings.cardiomegaly,
    "The heart is normal in size.": not findings.cardiomegaly,
    "There are bilateral pleural effusions.": findings.effusion == "bilateral",
    "No pneumothorax or pleural effusion.": not findings.effusion and not findings.pneumothorax,
  }
  for side in phantom.SIDES:
    expected[f"There is a {side} pleural effusion."] = findings.effusion == side
    expected[f"There is a {side} pneumothorax."] = findings.pneumothorax == side
    expected[f"There is a nodule in the {side} lung."] = findings.nodule == side
  for lobe in phantom.LOBES:
    expected[f"There is focal airspace opacity in the {lobe} lobe."] = findings.opacity == lobe
  return expected


def test_oracle_reports_mention_exactly_the_findings():
  config = phantom.PhantomConfig(
    image_size=16, p_cardiomegaly=0.5, p_effusion=0.5, p_pneumothorax=0.5, p_opacity=0.5, p_nodule=0.5
  )
  source = phantom.PhantomSource("val", 300, config)
  oracles, reports = source.oracle_reports(), source.reports()
  assert len(oracles) == len(reports) == 300
  differs = 0
  for index, (oracle, report) in enumerate(zip(oracles, reports)):
    findings = phantom.sample_findings(source.offset + index, config)
    assert phantom.oracle_report(findings) == oracle
    # The same findings, written without paraphrase, are the oracle; a paraphrased report differs.
    assert phantom.write_report(findings, np.random.default_rng(index), paraphrase=False) == oracle
    differs += oracle != report
    for sentence, present in _oracle_sentences(findings).items():
      assert (sentence in oracle) == present, (oracle, sentence)
    assert oracle.startswith(("The heart is normal in size.", "The heart is enlarged."))
  # Paraphrase changes most reports at these prevalences (several sentences, 30% odds each).
  assert differs > 150
  # The oracle of a study does not depend on its images or the wording stream.
  study = phantom.generate_study(source.offset + 7, config)
  assert phantom.generate_oracle_report(source.offset + 7, config) == oracles[7]
  assert phantom.Findings(**{k: v for k, v in _findings_of_mesh(study["mesh"]).items()}) == phantom.sample_findings(
    source.offset + 7, config
  )


def _findings_of_mesh(mesh):
  """Findings fields from the record's "mesh" tags ("Effusion/left", "Opacity/right upper lobe")."""
  fields = {}
  for tag in mesh:
    name, _, qualifier = tag.partition("/")
    if name == "Cardiomegaly":
      fields["cardiomegaly"] = True
    elif name != "normal":
      fields[name.lower()] = qualifier.removesuffix(" lobe")
  return fields
