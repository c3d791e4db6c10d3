"""Embedded synthetic chest X-ray studies ("phantoms") with findings-driven reports.

Each study is a frontal (PA) and a lateral radiograph-like grayscale image drawn procedurally with
numpy (lung fields, mediastinum, heart, diaphragm domes, spine, ribs, clavicles, soft tissue), plus a
report in IU X-ray phrasing written from the findings drawn in the images:

  Cardiomegaly          a wider heart (cardiothoracic ratio 0.56-0.66 instead of 0.38-0.47), also
                        reaching back towards the spine on the lateral view.
  Effusion/<side>       right, left or bilateral: fluid at the base with a meniscus that blunts the
                        costophrenic angle (posterior sulcus on the lateral view).
  Pneumothorax/<side>   a dark band without lung markings between the chest wall and the visceral
                        pleural line (apical lucency on the lateral view).
  Opacity/<lobe> lobe   focal airspace opacity in the right/left upper/lower lobe.
  Nodule/<side>         a small round density in the right or left lung.

Studies are generated on the fly and deterministically from (seed, index), independent of the order in
which they are asked for and of the image size (only the pixel noise depends on the size). Paraphrase
variation (several templates per sentence, a dominant one) means the text is only predictable through
the findings, which are only visible in the images.

Modules: findings.py (the settings, the findings and their draws), reports.py (the report templates,
the findings oracle, the blind baseline), render.py (the images), source.py (study records, the grain
source, the registered "phantom" dataset). The names below are the package's public API.

Usage:
  config = PhantomConfig(image_size=96, seed=0)
  record = generate_study(17, config)           # study-record dict (see CONVENTIONS.md)
  train = PhantomSource("train", 5000, config)  # grain random-access source of records
  baseline = most_common_report(train[i] for i in range(1000))
  oracle = train.oracle_reports()               # the true findings, most common phrasing
"""

from cxrjax.data.phantom.findings import (
  EFFUSION_SIDES,
  FINDING_NAMES,
  LOBES,
  SIDES,
  VIEWS,
  Findings,
  PhantomConfig,
  finding_labels,
  sample_findings,
)
from cxrjax.data.phantom.render import render_views
from cxrjax.data.phantom.reports import (
  generate_oracle_report,
  generate_report,
  most_common_report,
  oracle_report,
  write_impression,
  write_report,
)
from cxrjax.data.phantom.source import SPLIT_STRIDE, SPLITS, PhantomSource, generate_study
