"""The ReXrank leaderboard's IU X-ray prediction file, from an evaluation of R2Gen's test split.

What ReXrank expects (github.com/rajpurkarlab/ReXrank, commit 8152f99, read for this module):
  - data/iu_xray/ReXRank_IUXray_test.json, its IU X-ray test set: an object keyed by R2Gen's study id
    ("CXR3030_IM-1405"), each study with image_path, key_image_path, frontal_lateral, context,
    section_findings, section_impression, split and report = "Findings: <findings> Impression: <impression>".
    Its 590 keys are exactly the test ids of R2Gen's annotation.json (its valid.json: R2Gen's 296 val ids),
    and section_findings / section_impression equal, character for character, the FINDINGS / IMPRESSION
    that reports.load_studies reads from NLMCXR_reports.tgz or the Kaggle CSV (all 590 checked); R2Gen's
    own "report" is the findings alone.
  - example_files/merversa_inference.py (the submission's inference script) writes that object back with
    each study's generated text added as "model_prediction"; example_files/evaluation_script.md reads
    model_prediction, section_findings and section_impression of every study and scores the prediction
    against f"Findings: {findings} Impression: {impression}".
`leaderboard_predictions` writes that form with the three keys the evaluation script reads:
  {"CXR3030_IM-1405": {"model_prediction": <generated report>, "section_findings": ..., "section_impression":
  ...}, ...}
so the official script runs on it unchanged. The generated report is the text the model decoded (lower case,
R2Gen-cleaned words); the model writes one text, without "Findings:" / "Impression:" headings.

Study ids. Prepared records are keyed "CXR<n>" in every layout (Open-i, Kaggle, R2Gen). The R2Gen id comes
from R2Gen's annotation.json, recorded at `cxrjax prepare --split r2gen` in the build metadata ("r2gen_ids"),
not derived from image ids (reports.r2gen_study_ids says why). A study without one is not in R2Gen's split,
so never in its test split; finding one there anyway (a build from another annotation file) is an error
naming the study, never a key in another form.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cxrjax.data.iu_xray import builder as builder_lib
from cxrjax.core.errors import UserError

LEADERBOARD = "ReXrank"
R2GEN_TEST_STUDIES = 590
LEADERBOARD_SECTIONS = "findings_impression"


class LeaderboardError(UserError):
  """A run or split whose predictions are not the leaderboard's IU X-ray test set."""


def check_run(data_config: Any, split: str, max_examples: int | None) -> None:
  """Refuses, before any prediction, a leaderboard file that would not be ReXrank's IU X-ray test set: one
  line naming the field and why. The file is refused rather than written with a caveat, since nothing in it
  could carry the caveat to the leaderboard: its scores would silently be another split's, or findings-only
  predictions scored against findings + impression."""
  name = data_config.get("name")
  if name != builder_lib.TFDS_NAME:
    raise LeaderboardError(f"config.data.name={name!r}: the {LEADERBOARD} file is IU X-ray's (iu_xray)")
  family = data_config.get("tfds_config", "random")
  if family != "r2gen":
    raise LeaderboardError(
      f"config.data.tfds_config={family!r}: {LEADERBOARD}'s IU X-ray test set is R2Gen's "
      f"{R2GEN_TEST_STUDIES} test studies (tfds_config='r2gen')"
    )
  if split != "test":
    raise LeaderboardError(f"--split {split}: {LEADERBOARD}'s IU X-ray set is R2Gen's test split (--split test)")
  sections = data_config.get("report_sections", "findings")
  if sections != LEADERBOARD_SECTIONS:
    raise LeaderboardError(
      f"config.data.report_sections={sections!r}: {LEADERBOARD} scores findings + impression "
      f"(\"Findings: ... Impression: ...\"); train with report_sections='{LEADERBOARD_SECTIONS}'"
    )
  if max_examples is not None:
    raise LeaderboardError(
      f"--max-examples {max_examples}: the {LEADERBOARD} file holds every one of the {R2GEN_TEST_STUDIES} test studies"
    )


def check_source(source: Any) -> None:
  """Refuses a prepared test split that lacks some of R2Gen's test studies (images missing at prepare), or
  was prepared before the R2Gen ids were recorded."""
  build = source.metadata.get("build", {})
  if "r2gen_ids" not in build:
    raise LeaderboardError(
      f"iu_xray/{source.config}: prepared without R2Gen's study ids (by an older cxrjax); "
      "delete its folder and run `cxrjax prepare iu_xray --split r2gen` again"
    )
  missing = build.get("split_studies_not_kept", {}).get("test", 0)
  if missing:
    raise LeaderboardError(
      f"iu_xray/{source.config}: {missing} of R2Gen's {R2GEN_TEST_STUDIES} test studies were "
      "not kept at prepare (their images or report missing): the "
      f"{LEADERBOARD} file needs all of them"
    )


def leaderboard_predictions(source: Any, records: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
  """{R2Gen id: {"model_prediction", "section_findings", "section_impression"}} of every study of `source`
  (a prepared iu_xray/r2gen split), in the source's order. Each prediction is paired with its study by id
  (records: evaluate's {"id", "generated", ...}), never by position; every study of the source must have
  exactly one record and every record a study."""
  r2gen_ids = source.metadata["build"]["r2gen_ids"]
  generated = {}
  for record in records:
    if record["id"] in generated:
      raise LeaderboardError(f"study {record['id']} predicted twice")
    generated[record["id"]] = record["generated"]
  output = {}
  for index in range(len(source)):
    study = source[index]
    if study["id"] not in r2gen_ids:
      raise LeaderboardError(f"study {study['id']} of iu_xray/{source.config} {source.split} has no R2Gen id")
    if study["id"] not in generated:
      raise LeaderboardError(f"study {study['id']} has no prediction")
    output[r2gen_ids[study["id"]]] = {
      "model_prediction": generated.pop(study["id"]),
      "section_findings": study["findings"],
      "section_impression": study["impression"],
    }
  if generated:
    raise LeaderboardError(f"predictions for studies not in the split: {sorted(generated)[:5]}")
  return output
