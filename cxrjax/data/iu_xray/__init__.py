"""IU X-ray (Indiana University chest X-rays, Open-i): study records from its public layouts.

`load_studies(manual_dir)` detects the layout in `manual_dir` (or takes `layout=`):
  "openi":  NLMCXR_reports.tgz (or its extracted ecgen-radiology/*.xml) with the Open-i
            PNGs (CXR54_IM-2145-1001.png) in NLMCXR_png/ or images/, or NLMCXR_png.tgz
            (extracted once to `extract_dir`).
  "kaggle": indiana_reports.csv, indiana_projections.csv and images_normalized/
            (1_IM-0001-4001.dcm.png), also found under images/images_normalized/.
  "r2gen":  R2Gen's annotation.json and images/ (CXR2384_IM-0942/0.png).
Records follow the study schema of CONVENTIONS.md, plus "mesh_automatic" (the XML's
automatic MeSH terms, [] in the other layouts). Study ids are "CXR<n>" in all layouts.

Views, the two-image rule and what is skipped and why (a `ParseReport`): see reports.py.

TFDS. `IuXray` is the TFDS builder "iu_xray" (array_record, built and read without
TensorFlow), with two configs that differ only in the split:
  "iu_xray/random": the seeded 70/10/20 study split (`splits.random_split`, seed 0);
  "iu_xray/r2gen":  R2Gen's split from annotation.json (2,069/296/590 studies).
Build with `cxrjax prepare iu_xray` (cxrjax/data/prepare.py); read with `IUXraySource`.
A build with too few studies for a split (a partial image download) stops with
tfds_common.EmptySplitError, naming what is missing.

Modules: reports.py (the three layouts, view selection, the R2Gen split), builder.py (the
TFDS builder), source.py (IUXraySource, the registered "iu_xray" dataset). The names below
are the package's public API.
"""

from cxrjax.data.iu_xray.builder import (
  RANDOM_SPLIT_SEED,
  TFDS_CONFIGS,
  TFDS_NAME,
  TFDS_SPLITS,
  IuXray,
  dataset_dir,
  vocabulary_path,
)
from cxrjax.data.iu_xray.reports import (
  FRONTAL,
  LATERAL,
  LAYOUTS,
  R2GEN_SPLITS,
  REPORT_SECTIONS,
  SECTIONS,
  IUXrayFormatError,
  ParseReport,
  detect_layout,
  join_sections,
  load_studies,
  r2gen_split,
  r2gen_study_ids,
  select_two_views,
)
from cxrjax.data.iu_xray.source import NUM_VIEWS, IUXraySource
