"""The TFDS builders "rocov2" and "roco": caption records as array_record, built and read without TensorFlow.

Configs "all" and "chest_xray" (the subset of chest.py). The splits are the release's own (train,
validation, test). Images are stored as the source's encoded bytes (JPEG, or PNG where a parquet
file holds PNG), after checking that they decode; the pipeline decodes them to RGB. What was read,
kept and skipped, and why, is kept per split in `info.metadata["build"]`.
Build with `prepare(dataset, manual_dir, data_dir, subset=...)` or `cxrjax prepare rocov2|roco`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
import concurrent.futures
import dataclasses
import itertools
import json
import os
import pathlib
from typing import Any

import tensorflow_datasets as tfds
import tqdm

from cxrjax.data import images as image_lib
from cxrjax.data import tfds_common
from cxrjax.data.roco import captions as captions_lib
from cxrjax.data.roco import chest

TFDS_SPLITS = tfds_common.TFDS_SPLITS
TFDS_CONFIGS = chest.SUBSETS
TEXT_FEATURES = ("id", "report", "licence")
TEXT_LIST_FEATURES = ("concepts", "keywords")
# The layouts of each dataset; the first is the default when detection finds several.
DATASET_LAYOUTS = {"rocov2": ("rocov2_csv", "rocov2_parquet"), "roco": ("roco_v1",)}
# Layouts whose concepts are curated (chest.py, step 2).
_CURATED_CONCEPTS = ("rocov2_csv", "rocov2_parquet")
# Images checked (decoded) per batch of the thread pool.
_CHUNK = 256


class _RocoBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """What the "rocov2" and "roco" builders share (see the module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(name="all", description="Every radiology image with its caption."),
    tfds.core.BuilderConfig(
      name="chest_xray",
      description="Chest radiographs only: the caption and concept rule of cxrjax/data/roco/chest.py.",
    ),
  ]

  def __init__(self, *, layout: str | None = None, num_threads: int | None = None, progress: bool = False, **kwargs):
    """`layout`: one of DATASET_LAYOUTS[name] (default: detected); `num_threads` check images in
    parallel (default: CPU count, at most 8); `progress` shows a tqdm bar per split."""
    if layout is not None and layout not in DATASET_LAYOUTS[self.name]:
      raise ValueError(f"{self.name} layout must be one of {DATASET_LAYOUTS[self.name]}, got {layout!r}")
    kwargs.setdefault("file_format", "array_record")
    self._layout = layout
    self._num_threads = num_threads or min(8, os.cpu_count() or 1)
    self._progress = progress
    super().__init__(**kwargs)

  def _features(self) -> tfds.features.FeaturesDict:
    text = tfds.features.Text()
    return tfds.features.FeaturesDict(
      {
        "id": text,
        # The source's bytes as they are (JPEG or PNG, gray or colour): never decoded by TFDS.
        "image": tfds.features.Image(shape=(None, None, 3)),
        "report": text,
        "concepts": tfds.features.Sequence(text),
        "keywords": tfds.features.Sequence(text),
        "licence": text,
      }
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    layout = self._layout or captions_lib.detect_layout(manual_dir)
    if layout not in DATASET_LAYOUTS[self.name]:
      raise captions_lib.RocoFormatError(
        f"{manual_dir}: holds the {layout} layout, not one of {self.name}'s {DATASET_LAYOUTS[self.name]}"
      )
    subset = self.builder_config.name
    by_split, reports = {}, {}
    for split in TFDS_SPLITS:
      records, report = captions_lib.load_split(manual_dir, split, layout)
      selected = [
        r for r in records if chest.in_subset(subset, r["report"], r["concepts"], layout in _CURATED_CONCEPTS)
      ]
      report.selected_out = len(records) - len(selected)
      report.num_kept = len(selected)
      by_split[split], reports[split] = selected, report
    empty = tfds_common.empty_split(by_split)
    if empty is not None:
      raise tfds_common.EmptySplitError(
        f"{self.name}/{subset}: split {empty!r} has no image: {reports[empty].summary()}",
        "\n".join(reports[split].summary() for split in TFDS_SPLITS),
      )
    self.info.metadata["build"] = {
      "layout": layout,
      "subset": subset,
      "manual_dir": str(manual_dir),
      "splits": {split: dataclasses.asdict(report) for split, report in reports.items()},
    }
    return {split: self._generate_examples(by_split[split], split) for split in TFDS_SPLITS}

  def _generate_examples(self, records: Sequence[Mapping[str, Any]], split: str):
    report = self.info.metadata["build"]["splits"][split]
    images = _image_bytes(records)
    with (
      concurrent.futures.ThreadPoolExecutor(self._num_threads) as pool,
      tqdm.tqdm(
        total=len(records),
        desc=f"{self.name}/{self.builder_config.name} {split}",
        unit=" images",
        disable=not self._progress,
      ) as progress,
    ):
      # A chunk at a time, so that at most _CHUNK images are in memory (a split is gigabytes).
      for start in range(0, len(records), _CHUNK):
        chunk = records[start : start + _CHUNK]
        checked = pool.map(_checked_image, chunk, itertools.islice(images, len(chunk)))
        for record, (data, problem) in zip(chunk, checked):
          progress.update(1)
          if data is None:
            _skip(report, "unreadable_image", f"{record['id']} ({problem})")
            continue
          example = {key: record[key] for key in TEXT_FEATURES + TEXT_LIST_FEATURES}
          example["image"] = data
          yield record["id"], example


class Rocov2(_RocoBuilder):
  """ROCOv2 (Rückert et al., Scientific Data 2024): 79,789 radiology images from PMC with captions
  and UMLS concepts, from the official release or the Hugging Face parquet files."""

  name = "rocov2"
  RELEASE_NOTES = {"1.0.0": "Captions and concepts of the official CSVs or the Hugging Face parquet files."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put one ROCOv2 layout in the manual folder (--manual-dir):
  the official release (https://zenodo.org/records/10821435): train_captions.csv,
    valid_captions.csv, test_captions.csv and the extracted image zips (train/, valid/, test/
    with <ID>.jpg); the *_concepts.csv files are optional;
  or the Hugging Face copy (https://huggingface.co/datasets/eltorio/ROCOv2-radiology): its
    data/ folder of train-*.parquet, validation-*.parquet and test-*.parquet files.
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="ROCOv2: radiology images from PMC Open Access with captions and UMLS concepts.",
      features=self._features(),
      homepage="https://github.com/sctg-development/ROCOv2-radiology",
      citation="""\
@article{ruckert2024rocov2,
  title={ROCOv2: Radiology Objects in COntext Version 2, an Updated Multimodal Image Dataset},
  author={R{\\"u}ckert, Johannes and Bloch, Louise and Br{\\"u}ngel, Raphael and others},
  journal={Scientific Data}, volume={11}, pages={688}, year={2024}
}""",
      license="CC BY 4.0 / CC BY-NC 4.0 per image (the source articles' licences)",
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # records in the release's order
    )


class Roco(_RocoBuilder):
  """ROCO v1 (Pelka et al., 2018): 81,825 radiology images from PMC with captions, keywords and
  UMLS concepts (the radiology part)."""

  name = "roco"
  RELEASE_NOTES = {"1.0.0": "Captions, keywords, concepts and licences of the radiology part."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Clone https://github.com/razorx89/roco-dataset and fetch the images with its scripts/fetch.py;
pass its data/ folder (train/, validation/, test/, each with radiology/captions.txt and
radiology/images/) as the manual folder (--manual-dir).
"""

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self,
      description="ROCO: radiology images from PMC Open Access with captions, keywords and UMLS concepts.",
      features=self._features(),
      homepage="https://github.com/razorx89/roco-dataset",
      citation="""\
@inproceedings{pelka2018roco,
  title={Radiology Objects in COntext (ROCO): A Multimodal Image Dataset},
  author={Pelka, Obioma and Koitka, Sven and R{\\"u}ckert, Johannes and Nensa, Felix and Friedrich, Christoph M},
  booktitle={MICCAI Workshop on Large-scale Annotation of Biomedical Data and Expert Label Synthesis},
  pages={180--189}, year={2018}
}""",
      license="Per image, as licences.txt (CC BY, CC BY-NC, ...)",
      metadata=tfds.core.MetadataDict(),
      disable_shuffling=True,  # records in the release's order
    )


BUILDERS = {"rocov2": Rocov2, "roco": Roco}


def _image_bytes(records: Sequence[Mapping[str, Any]]) -> Iterator[bytes | str]:
  """Each record's image, in order: a file path, or a parquet file's bytes (each file read once)."""
  images = {}
  for record in records:
    image = record["image"]
    if isinstance(image, captions_lib.ParquetImage):
      if image.path not in images:
        images = {image.path: enumerate(captions_lib.read_parquet_images(image.path))}
      for row, data in images[image.path]:
        if row == image.row:
          yield data
          break
    else:
      yield image


def _checked_image(record: Mapping[str, Any], image: bytes | str) -> tuple[bytes | None, str]:
  """(the encoded bytes, "") when the image decodes, else (None, the problem)."""
  try:
    data = pathlib.Path(image).read_bytes() if isinstance(image, str) else bytes(image)
    image_lib.decode_image(data, str(image) if isinstance(image, str) else f"{record['id']} (parquet image)")
  except (OSError, image_lib.ImageError) as error:
    return None, str(error)
  return data, ""


def _skip(report: dict[str, Any], reason: str, example: str) -> None:
  report["skipped"][reason] = report["skipped"].get(reason, 0) + 1
  report["num_kept"] -= 1
  examples = report["examples"].setdefault(reason, [])
  if len(examples) < captions_lib.MAX_EXAMPLES:
    examples.append(example)


def dataset_dir(dataset: str, data_dir: str | os.PathLike, subset: str = "all") -> pathlib.Path:
  """The folder of a prepared dataset: DATA_DIR/<dataset>/<subset>/<version>."""
  return tfds_common.dataset_dir(data_dir, _builder_class(dataset), subset)


def _builder_class(dataset: str) -> type[_RocoBuilder]:
  if dataset not in BUILDERS:
    raise ValueError(f"unknown ROCO dataset {dataset!r}; expected one of {tuple(BUILDERS)}")
  return BUILDERS[dataset]


def prepare(
  dataset: str,
  manual_dir: str | os.PathLike | None,
  data_dir: str | os.PathLike,
  *,
  subset: str = "all",
  layout: str | None = None,
  num_threads: int | None = None,
  progress: bool = False,
) -> dict[str, Any]:
  """Builds <dataset>/<subset> ("rocov2" or "roco"; "all" or "chest_xray") in `data_dir` (unless built).

  Returns a JSON-serialisable summary: "dataset", "dataset_dir", "layout", "split_sizes" (as
  built) and "splits" (per split: num_read, num_kept, selected_out, skipped, examples).

  Raises:
    captions_lib.MissingSplitError / RocoFormatError: a split file missing or malformed;
    tfds_common.EmptySplitError: a split with no image kept (its `counts` say what was read).
  """
  if subset not in TFDS_CONFIGS:
    raise ValueError(f"unknown {dataset} subset {subset!r}; expected one of {TFDS_CONFIGS}")
  builder = _builder_class(dataset)(
    config=subset, data_dir=data_dir, layout=layout, num_threads=num_threads, progress=progress
  )
  tfds_common.build(builder, manual_dir, progress=progress)
  build = dict(builder.info.metadata["build"])
  return {
    "dataset": f"{dataset}/{subset}",
    "dataset_dir": str(dataset_dir(dataset, data_dir, subset)),
    "layout": build["layout"],
    "split_sizes": {split: builder.info.splits[split].num_examples for split in TFDS_SPLITS},
    "splits": build["splits"],
  }


def format_summary(summary: Mapping[str, Any]) -> str:
  """The summary of `prepare` as text: one line per split, then the summary as one JSON line."""
  lines = [f"{summary['dataset']} in {summary['dataset_dir']} ({summary['layout']} layout)"]
  for split in TFDS_SPLITS:
    report = captions_lib.SplitReport(**summary["splits"][split])
    lines.append("  " + report.summary())
  lines.append("  splits: " + ", ".join(f"{split} {size:,}" for split, size in summary["split_sizes"].items()))
  lines.append(json.dumps(summary, sort_keys=True))
  return "\n".join(lines)
