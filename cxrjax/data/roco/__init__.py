"""ROCOv2 and ROCO v1: radiology images from PubMed Central with one-line captions.

Two registered datasets, one image per record ("id", "images" [one], "report" = the caption), so
that every captioner and the pipeline use them as they use the X-ray report datasets:
  "rocov2"  ROCOv2 (79,789 images), from the official release (train_captions.csv,
            valid_captions.csv, test_captions.csv, `ID,Caption` in RFC-4180 quoting, images
            <split>/<ID>.jpg, concepts CSVs optional) or the Hugging Face parquet files
            (eltorio/ROCOv2-radiology: data/{train,validation,test}-*.parquet);
  "roco"    ROCO v1 (<split>/radiology/captions.txt `ROCO_xxxxx<TAB> caption`, keywords.txt,
            cuis.txt, semtypes.txt, licences.txt, images in <split>/radiology/images/).
Layouts, records and what is skipped and why: captions.py. Captions are kept as written.

Chest X-ray subset: the TFDS config "chest_xray" keeps chest radiographs by caption and, where
present, concepts (the rule and its counts on the real ROCO captions: chest.py).

TFDS. `Rocov2` and `Roco` are the builders "rocov2" and "roco" (array_record, built and read
without TensorFlow), configs "all" and "chest_xray", the release's train / validation / test
splits. Build with `prepare(dataset, manual_dir, data_dir, subset=...)` or
`cxrjax prepare rocov2|roco --manual-dir DIR --data-dir DIR [--subset chest_xray]`.

Data config: name "rocov2" or "roco", data_dir, subset ("all" or "chest_xray", default "all");
the tokenizer is config.data.tokenizer (e.g. BERT's vocab.txt) or a word vocabulary built from
the training captions.

Modules: captions.py (the three layouts), chest.py (the subset rule), builder.py (the TFDS
builders, prepare), source.py (RocoSource, the registered datasets). The names below are the
package's public API.
"""

from cxrjax.data.roco.builder import (
  BUILDERS,
  DATASET_LAYOUTS,
  TFDS_CONFIGS,
  TFDS_SPLITS,
  Roco,
  Rocov2,
  dataset_dir,
  format_summary,
  prepare,
)
from cxrjax.data.roco.captions import (
  LAYOUTS,
  SKIP_REASONS,
  SPLITS,
  MissingSplitError,
  ParquetImage,
  RocoFormatError,
  SplitReport,
  detect_layout,
  iter_split_captions,
  load_split,
  parquet_files,
  read_roco_v1_captions,
  read_roco_v1_licences,
  read_roco_v1_lists,
  read_rocov2_captions,
  read_rocov2_concepts,
)
from cxrjax.data.roco.chest import CHEST_CUI, CHEST_XRAY_PHRASE, PLAIN_XRAY_CUI, SUBSETS, in_subset, is_chest_xray
from cxrjax.data.roco.source import NUM_VIEWS, RocoSource
