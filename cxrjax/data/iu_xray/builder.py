"""The TFDS builder "iu_xray": IU X-ray study records as array_record, built and read without TensorFlow.

Two configs that differ only in the split:
  "iu_xray/random": the seeded 70/10/20 study split (`splits.random_split`, seed 0);
  "iu_xray/r2gen":  R2Gen's split from annotation.json (2,069/296/590 studies).
Build with `cxrjax prepare iu_xray` (cxrjax/data/prepare.py); read with source.IUXraySource.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import tensorflow_datasets as tfds
import tqdm

from cxrjax.data import images as image_lib
from cxrjax.data import splits as split_lib
from cxrjax.data import tfds_common
from cxrjax.data.iu_xray import reports

TFDS_NAME = "iu_xray"
TFDS_CONFIGS = ("random", "r2gen")
TFDS_SPLITS = tfds_common.TFDS_SPLITS
RANDOM_SPLIT_SEED = 0
TEXT_FEATURES = ("id", "findings", "impression", "indication", "comparison", "report")
TEXT_LIST_FEATURES = ("image_ids", "views", "mesh", "mesh_automatic")
# What a partial download lacks, by layout (named when a split ends up empty).
_IMAGE_HINTS = {
  "openi": "download NLMCXR_png.tgz (the Open-i PNGs) into the manual folder",
  "kaggle": "download the Kaggle images_normalized/ folder into the manual folder",
  "r2gen": "download R2Gen's images/ folder into the manual folder",
}
# Skip reasons in words, for the one-line error.
_SKIP_WORDS = {
  "images_not_found": "have none of their image files",
  "missing_image": "lack some of their image files",
  "no_images": "list no image",
  "empty_report": "have an empty report",
}


class IuXray(tfds.core.GeneratorBasedBuilder):
  """IU X-ray study records as a TFDS dataset (array_record; no TensorFlow needed).

  Each example is one study record (the schema of CONVENTIONS.md, plus "mesh_automatic"),
  its two view images stored as 8-bit grayscale PNGs ([H, W, 1]). The source images
  (Open-i PNGs are RGB with three equal channels) are decoded with images.load_image and
  re-encoded as grayscale; an image whose channels differ is converted to luma (ITU-R
  601) and counted ("colour_images"). The report is the findings section; studies are
  skipped as `load_studies` documents (no image on disk, empty findings), and what was
  skipped, and why, is kept in `info.metadata["build"]`. Too few studies for a split (a partial
  image download) raise tfds_common.EmptySplitError with the counts read.
  """

  name = TFDS_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Study records from the Open-i, Kaggle or R2Gen layouts."}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(
      name="random",
      description=f"Seeded random study split: 70% train, 10% validation, 20% test "
      f"(splits.random_split, seed {RANDOM_SPLIT_SEED}).",
    ),
    tfds.core.BuilderConfig(
      name="r2gen",
      description="R2Gen's study split (Chen et al., EMNLP 2020) from its annotation.json; "
      "kept studies outside it are counted as unassigned.",
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put one of the IU X-ray layouts in the manual folder (--manual-dir):
  Open-i: NLMCXR_reports.tgz (or its extracted ecgen-radiology/) and the PNGs, as
    NLMCXR_png.tgz or extracted into NLMCXR_png/ or images/
    (https://openi.nlm.nih.gov/faq#collection); indiana_projections.csv from the
    Kaggle layout beside them (or in kaggle_csv/) labels the views.
  Kaggle: indiana_reports.csv, indiana_projections.csv and images_normalized/
    (https://www.kaggle.com/datasets/raddar/chest-xrays-indiana-university).
  R2Gen: annotation.json and images/ (https://github.com/zhjohnchan/R2Gen).
The "r2gen" config also needs R2Gen's annotation.json, in the manual folder or in its
r2gen/ subfolder.
"""

  def __init__(self, *, num_threads: int | None = None, progress: bool = False, **kwargs):
    """`num_threads` encode images in parallel (default: CPU count, at most 8);
    `progress` shows a tqdm bar per split. Other arguments go to TFDS's builder."""
    kwargs.setdefault("file_format", "array_record")
    self._num_threads = num_threads or min(8, os.cpu_count() or 1)
    self._progress = progress
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
      builder=self,
      description="Indiana University chest X-ray studies (Open-i): two views and the report.",
      features=tfds.features.FeaturesDict(
        {
          "id": text,
          "images": tfds.features.Sequence(tfds.features.Image(shape=(None, None, 1), encoding_format="png"), length=2),
          "image_ids": tfds.features.Sequence(text, length=2),
          "views": tfds.features.Sequence(text, length=2),
          "findings": text,
          "impression": text,
          "indication": text,
          "comparison": text,
          "mesh": tfds.features.Sequence(text),
          "mesh_automatic": tfds.features.Sequence(text),
          "report": text,
        }
      ),
      homepage="https://openi.nlm.nih.gov/faq#collection",
      citation="""\
@article{demner2016preparing,
  title={Preparing a collection of radiology examinations for distribution and retrieval},
  author={Demner-Fushman, Dina and Kohli, Marc D and Rosenman, Marc B and Shooshan, Sonya E
          and Rodriguez, Laritza and Antani, Sameer and Thoma, George R and McDonald, Clement J},
  journal={Journal of the American Medical Informatics Association},
  volume={23}, number={2}, pages={304--310}, year={2016}
}""",
      license="CC BY-NC-ND 4.0",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    records, parse_report = reports.load_studies(manual_dir)
    r2gen_ids = {}
    if self.builder_config.name == "r2gen":
      annotation = _find_r2gen_annotation(manual_dir)
      split_ids = reports.r2gen_split(annotation)
      r2gen_ids = reports.r2gen_study_ids(annotation)
    else:
      split_ids = split_lib.random_split([r["id"] for r in records], seed=RANDOM_SPLIT_SEED)
    by_split, unassigned, not_kept = tfds_common.group_by_split(records, split_ids)
    split_sizes = {name: len(by_split[name]) for name in TFDS_SPLITS}
    empty = tfds_common.empty_split(by_split)
    if empty is not None:
      counts = (
        parse_report.summary() + "\n  splits: " + ", ".join(f"{name} {size}" for name, size in split_sizes.items())
      )
      raise tfds_common.EmptySplitError(
        empty_split_message(f"{TFDS_NAME}/{self.builder_config.name}", empty, parse_report), counts
      )
    # Saved with the dataset (metadata.json), so `cxrjax prepare` can report it later.
    self.info.metadata["build"] = {
      "config": self.builder_config.name,
      "parse_report": dataclasses.asdict(parse_report),
      "split_sizes": split_sizes,
      "unassigned": len(unassigned),
      "unassigned_examples": [r["id"] for r in unassigned[: tfds_common.MAX_EXAMPLES]],
      "split_studies_not_kept": not_kept,
      "colour_images": 0,
      "colour_image_examples": [],
      # The kept studies' R2Gen ids ("CXR2384" -> "CXR2384_IM-0942"), which the leaderboard files use
      # (data/iu_xray/rexrank.py); empty for the random split.
      "r2gen_ids": {
        r["id"]: r2gen_ids[r["id"]] for name in TFDS_SPLITS for r in by_split[name] if r["id"] in r2gen_ids
      },
    }
    return {name: self._generate_examples(by_split[name], name) for name in TFDS_SPLITS}

  def _generate_examples(self, records: Sequence[Mapping[str, Any]], split: str):
    build = self.info.metadata["build"]
    pool = concurrent.futures.ThreadPoolExecutor(self._num_threads)
    try:
      encoded = pool.map(_encode_study_images, records)
      for record, (pngs, colour_ids) in tqdm.tqdm(
        zip(records, encoded),
        total=len(records),
        desc=f"iu_xray/{self.builder_config.name} {split}",
        unit=" studies",
        disable=not self._progress,
      ):
        for image_id in colour_ids:
          tfds_common.add_example(build, "colour_images", "colour_image_examples", image_id)
        example = {key: record[key] for key in TEXT_FEATURES + TEXT_LIST_FEATURES}
        example["images"] = pngs
        yield record["id"], example
    finally:
      # After an error, the queued studies are dropped instead of encoded.
      pool.shutdown(wait=True, cancel_futures=True)


def empty_split_message(dataset: str, split: str, parse_report: reports.ParseReport) -> str:
  """One line: the empty split, how many studies were kept of those read, and why the others were not."""
  read, kept = parse_report.num_studies, parse_report.num_records
  reasons = [
    f"{count:,} of {read:,} studies {_SKIP_WORDS.get(reason, reason)}"
    + (f" in {parse_report.image_dir}" if reason in ("images_not_found", "missing_image") else "")
    for reason, count in sorted(parse_report.skipped.items(), key=lambda item: -item[1])
  ]
  message = (
    f"{dataset}: split {split!r} has no study: {kept:,} of {read:,} studies kept"
    + (f" ({'; '.join(reasons)})" if reasons else "")
    + ", too few for three splits"
  )
  if parse_report.skipped.get("images_not_found", 0) + parse_report.skipped.get("missing_image", 0):
    message += f"; {_IMAGE_HINTS[parse_report.layout]}"
  return message


def _find_r2gen_annotation(manual_dir: pathlib.Path) -> pathlib.Path:
  for path in (manual_dir / "annotation.json", manual_dir / "r2gen" / "annotation.json"):
    if path.is_file():
      return path
  raise FileNotFoundError(
    f"the iu_xray/r2gen config needs R2Gen's annotation.json in {manual_dir} or {manual_dir / 'r2gen'}"
  )


def _encode_study_images(record: Mapping[str, Any]) -> tuple[list[bytes], list[str]]:
  """The study's two images as grayscale PNG bytes, and the ids of those that had colour."""
  cache, colour_ids = {}, []
  for path, image_id in zip(record["images"], record["image_ids"]):
    if path not in cache:  # a single image repeated is encoded once
      try:
        cache[path], is_colour = tfds_common.gray_png(path)
      except image_lib.ImageError as error:
        raise image_lib.ImageError(f"study {record['id']}: {error}") from error
      if is_colour:
        colour_ids.append(image_id)
  return [cache[path] for path in record["images"]], colour_ids


def dataset_dir(data_dir: str | os.PathLike, config: str = "random") -> pathlib.Path:
  """The folder of a prepared dataset: DATA_DIR/iu_xray/<config>/<version>."""
  return tfds_common.dataset_dir(data_dir, IuXray, config)


def vocabulary_path(
  data_dir: str | os.PathLike, config: str = "random", cleaning: str = "r2gen", report_sections: str = "findings"
) -> pathlib.Path:
  """Where `cxrjax prepare` saves the training vocabulary: <dataset_dir>/vocabulary.<cleaning>.json for the
  findings, vocabulary.<cleaning>.<report_sections>.json for other report sections (reports.REPORT_SECTIONS):
  a findings-only vocabulary would turn the impressions' own words into unknowns."""
  suffix = "" if report_sections == "findings" else f".{report_sections}"
  return dataset_dir(data_dir, config) / f"vocabulary.{cleaning}{suffix}.json"
