"""Embedded synthetic single-image caption set: phantom frontal X-rays with one-line captions.

Each record is the frontal view of a phantom study (cxrjax/data/phantom: same rendering, same
findings, same index ranges per split) with a one-line ROCO-style caption written from the findings
drawn in it ("Chest X-ray showing cardiomegaly and a right pleural effusion."), so a captioner for
ROCO trains and evaluates with no download. Registered as the dataset "phantom_captions", with the
phantom set's data config fields (num_train, num_val, num_test, image_size, phantom_seed,
phantom_prevalences); one view per record; "mesh" gives the findings' labels as for "phantom".

Modules: captions.py (the caption templates and the findings oracle), source.py (records, the grain
source, the registered dataset). The names below are the package's public API.

Usage:
  train = PhantomCaptionSource("train", 5000, PhantomConfig(image_size=96))
  baseline = phantom.most_common_report(train[i] for i in range(1000))  # the best constant caption
  oracle = train.oracle_reports()                                        # true findings, usual words
"""

from cxrjax.data.phantom_captions.captions import (
  CAPTION_TEMPLATE_WEIGHTS,
  generate_caption,
  generate_oracle_caption,
  oracle_caption,
  write_caption,
)
from cxrjax.data.phantom_captions.source import NUM_VIEWS, PhantomCaptionSource, generate_image_record
