"""ChestX-ray14 (NIH Clinical Center): image records, patient-level splits, a TFDS builder.

The public layout, in one folder (`manual_dir`):
  Data_Entry_2017_v2020.csv or Data_Entry_2017.csv (either may be gzipped; v2020 is preferred
      when both exist): `Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,
      Patient Gender,View Position,...`; labels are `|`-separated, "No Finding" or findings.
  images*/: the PNGs, directly (images/00000001_000.png, the NIH box after extracting the
      tarballs) or one level down (images_001/images/..., the Kaggle copy).
  train_val_list.txt, test_list.txt: the official patient-wise split (86,524 / 25,596 names),
      in `manual_dir` or `manual_dir/official_split/`.
  chexnet_split/ (or labels/): train_list.txt, val_list.txt, test_list.txt, the CheXNet reproduction
      lists (image name + 14 labels a line; config "chexnet").

Records, splits and bad input: see labels.py.

TFDS. `Chestxray14` is the builder "chestxray14" (array_record, built and read without
TensorFlow), configs "official", "random" and "chexnet" (the split schemes). The labels are stored
with all 15 classes; `ChestXray14Source` serves 14 or 15. Build with
`prepare_chestxray14(manual_dir, data_dir, split=...)` or `cxrjax prepare chestxray14`.

Modules: labels.py (the label file, image folders, lists, records and splits), builder.py (the
TFDS builder), source.py (ChestXray14Source, the registered "chestxray14" dataset). The names
below are the package's public API.
"""

from cxrjax.data.chestxray14.builder import (
  TFDS_CONFIGS,
  TFDS_NAME,
  TFDS_SPLITS,
  Chestxray14,
  dataset_dir,
  prepare_chestxray14,
)
from cxrjax.data.chestxray14.labels import (
  CHEXNET_LISTS,
  FINDINGS,
  LABEL_FILE_NAMES,
  MISSING_IMAGE_POLICIES,
  NO_FINDING,
  SPLIT_SCHEMES,
  SPLIT_SEED,
  ChestXray14FormatError,
  LabelEntry,
  ListedImage,
  ParseReport,
  chexnet_split,
  class_names,
  find_chexnet_lists,
  find_label_file,
  find_official_lists,
  index_images,
  labels_vector,
  load_records,
  official_split,
  patient_split,
  read_image_list,
  read_label_file,
  read_labelled_list,
  records_from_entries,
  split_image_ids,
  split_with_summary,
  to_record,
)
from cxrjax.data.chestxray14.source import NUM_VIEWS, ChestXray14Source
