"""The TFDS builder "chestxray14": image records with their 15 labels, built and read without TensorFlow.

Configs "official", "random" and "chexnet" (the split schemes of labels.py; "chexnet" = the CheXNet
reproduction lists, whose labels are checked against the label file and whose disagreements are counted in
`info.metadata["build"]["split_lists"]`; the label file's labels are stored). The labels are stored with all 15
classes; source.ChestXray14Source serves 14 or 15. 8-bit grayscale PNGs are given to the Image
feature by path (stored as is); others (two of the fixture images are RGBA) are decoded with
images.py, converted to 8-bit grayscale and counted in `info.metadata["build"]`.
Build with `prepare_chestxray14(manual_dir, data_dir, split=...)` or `cxrjax prepare chestxray14`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from cxrjax.data import images as image_lib
from cxrjax.data import tfds_common
from cxrjax.data.chestxray14 import labels as labels_lib

TFDS_NAME = "chestxray14"
TFDS_CONFIGS = labels_lib.SPLIT_SCHEMES
TFDS_SPLITS = tfds_common.TFDS_SPLITS


class Chestxray14(tfds.core.GeneratorBasedBuilder):
  """ChestX-ray14 images with their labels as a TFDS dataset (array_record; no TensorFlow needed).

  Each example is one image record: "image" (8-bit grayscale PNG, [H, W, 1]), "labels" float32
  [15] (class_names(True) order), and the label file's fields. What was skipped or converted is
  kept in `info.metadata["build"]`.
  """

  name = TFDS_NAME
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Images and labels of Data_Entry_2017(_v2020), official or random split."}
  BUILDER_CONFIGS = [
    tfds.core.BuilderConfig(
      name="official",
      description=f"Official train_val / test lists; {labels_lib.OFFICIAL_VAL_FRACTION:.0%} of the train_val "
      f"patients form the validation split (seed {labels_lib.SPLIT_SEED}).",
    ),
    tfds.core.BuilderConfig(
      name="random",
      description=f"Seeded patient-level 70/10/20 train / validation / test split (seed {labels_lib.SPLIT_SEED}).",
    ),
    tfds.core.BuilderConfig(
      name="chexnet",
      description="The CheXNet reproduction lists (arnoweng/CheXNet: train_list.txt, val_list.txt, "
      "test_list.txt); labels from the label file, list disagreements counted.",
    ),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download ChestX-ray14 from https://nihcc.app.box.com/v/ChestXray-NIHCC (or Kaggle's
nih-chest-xrays/data) into the manual folder (--manual-dir): Data_Entry_2017_v2020.csv (or
Data_Entry_2017.csv, .gz allowed), the extracted images_*.tar.gz (images/ or
images_001/images/ ...), and for the "official" config train_val_list.txt and test_list.txt; for the
"chexnet" config arnoweng/CheXNet's ChestX-ray14/labels/{train,val,test}_list.txt in a chexnet_split/ (or
labels/) folder of the manual folder.
"""

  def __init__(self, *, missing_images: str = "error", **kwargs):
    """`missing_images`: "error" or "skip" (see load_records). Other arguments go to TFDS."""
    if missing_images not in labels_lib.MISSING_IMAGE_POLICIES:
      raise ValueError(f"missing_images must be one of {labels_lib.MISSING_IMAGE_POLICIES}, got {missing_images!r}")
    kwargs.setdefault("file_format", "array_record")
    self._missing_images = missing_images
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(
      builder=self,
      description="NIH ChestX-ray14: 112,120 frontal chest X-rays of 30,805 patients, 14 findings.",
      features=tfds.features.FeaturesDict(
        {
          "id": text,
          "image": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
          "labels": tfds.features.Tensor(shape=(len(labels_lib.FINDINGS) + 1,), dtype=np.float32),
          "finding_labels": tfds.features.Sequence(text),
          "patient_id": text,
          "follow_up": tfds.features.Scalar(dtype=np.int32),
          "age": tfds.features.Scalar(dtype=np.int32),
          "gender": text,
          "view_position": text,
        }
      ),
      homepage="https://nihcc.app.box.com/v/ChestXray-NIHCC",
      citation="""\
@inproceedings{wang2017chestxray,
  title={ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on Weakly-Supervised
         Classification and Localization of Common Thorax Diseases},
  author={Wang, Xiaosong and Peng, Yifan and Lu, Le and Lu, Zhiyong and Bagheri, Mohammadhadi
          and Summers, Ronald M},
  booktitle={CVPR}, pages={2097--2106}, year={2017}
}""",
      license="No usage restrictions; cite the NIH Clinical Center and the paper.",
      metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(dl_manager.manual_dir)
    label_path = labels_lib.find_label_file(manual_dir)
    entries = labels_lib.read_label_file(label_path)
    records, report = labels_lib.records_from_entries(
      entries, manual_dir, label_path, include_no_finding=True, missing_images=self._missing_images
    )
    # The split is drawn over all rows of the label file, so that skipping images (a partial
    # download) never moves a patient to another split.
    split_ids, split_lists = labels_lib.split_with_summary(
      manual_dir, entries, self.builder_config.name, label_path=label_path
    )
    by_split, unassigned, not_kept = tfds_common.group_by_split(records, split_ids)
    split_sizes = {name: len(by_split[name]) for name in TFDS_SPLITS}
    empty = tfds_common.empty_split(by_split)
    if empty is not None:
      counts = report.summary() + "\n  splits: " + ", ".join(f"{n} {size}" for n, size in split_sizes.items())
      missing = report.skipped.get("missing_image", 0)
      raise tfds_common.EmptySplitError(
        f"{TFDS_NAME}/{self.builder_config.name}: split {empty!r} has no image: {len(records):,} of "
        f"{len(entries):,} labelled images kept"
        + (f" ({missing:,} image files not under {manual_dir}/images*/)" if missing else "")
        + "; a dataset needs images in every split",
        counts,
      )
    self.info.metadata["build"] = {
      "config": self.builder_config.name,
      "label_file": str(label_path),
      "class_names": list(labels_lib.class_names(True)),
      "parse_report": dataclasses.asdict(report),
      "split_sizes": split_sizes,
      "split_patients": {name: len({r["patient_id"] for r in by_split[name]}) for name in TFDS_SPLITS},
      "unassigned": len(unassigned),
      "unassigned_examples": [r["id"] for r in unassigned[: tfds_common.MAX_EXAMPLES]],
      "split_images_not_kept": not_kept,
      "split_lists": split_lists,
      "converted_images": 0,
      "converted_image_examples": [],
    }
    return {name: self._generate_examples(by_split[name]) for name in TFDS_SPLITS}

  def _generate_examples(self, records: Sequence[Mapping[str, Any]]):
    build = self.info.metadata["build"]
    for record in records:
      path = record["images"][0]
      if not os.path.isfile(path):
        raise image_lib.ImageError(f"{path}: image file not found (image {record['id']})")
      if tfds_common.is_gray8_png(path):
        image = path  # TFDS stores the file's bytes as they are.
      else:
        image, _ = tfds_common.gray_png(path)
        tfds_common.add_example(build, "converted_images", "converted_image_examples", record["id"])
      yield (
        record["id"],
        {
          "id": record["id"],
          "image": image,
          "labels": record["labels"],
          "finding_labels": record["finding_labels"],
          "patient_id": record["patient_id"],
          "follow_up": record["follow_up"],
          "age": record["age"],
          "gender": record["gender"],
          "view_position": record["view_position"],
        },
      )


def dataset_dir(data_dir: str | os.PathLike, config: str = "official") -> pathlib.Path:
  """The folder of a prepared dataset: DATA_DIR/chestxray14/<config>/<version>."""
  return tfds_common.dataset_dir(data_dir, Chestxray14, config)


def prepare_chestxray14(
  manual_dir: str | os.PathLike | None,
  data_dir: str | os.PathLike,
  split: str = "official",
  missing_images: str = "error",
) -> dict[str, Any]:
  """Builds the TFDS dataset chestxray14/<split> in `data_dir` from the layout in `manual_dir`.

  A dataset already built is reused (`manual_dir` may then be None).

  Returns a summary: {"dataset", "path", "split_sizes", "split_patients", "parse_report",
  "unassigned", "split_lists" (labels.split_with_summary: label-file rows in no list, the chexnet lists'
  label disagreements), "converted_images", ...}, as saved in the dataset's metadata.
  """
  if split not in TFDS_CONFIGS:
    raise ValueError(f"unknown chestxray14 split {split!r}; expected one of {TFDS_CONFIGS}")
  builder = Chestxray14(config=split, data_dir=data_dir, missing_images=missing_images)
  tfds_common.build(builder, manual_dir)
  build = dict(builder.info.metadata.get("build", {}))
  return {
    "dataset": f"{TFDS_NAME}/{split}",
    "path": str(dataset_dir(data_dir, split)),
    "split_sizes": {name: builder.info.splits[name].num_examples for name in TFDS_SPLITS},
    **{k: v for k, v in build.items() if k != "split_sizes"},
  }
