r"""Seed 000's custom model on IU X-ray: chained context aggregation over frozen CheXNet maps of two
views, then the attention GRU decoder.

  cxrjax prepare iu_xray --manual-dir=$IU_XRAY --data-dir=$DATA
  cxrjax port-weights --format=keras-h5 brucechou1983_CheXNet_Keras_0.3.0_weights.h5 weights/chexnet
  cxrjax train --config=configs/iu_xray_cam.py --workdir=workdirs/iu_cam \
      --config.data.data_dir=$DATA --config.init.encoder=weights/chexnet
  cxrjax evaluate --workdir=workdirs/iu_cam --split=test

Seed setup: two views at 224x224 (training: R2Gen's random crops of a 256 resize, `data.augment`), CheXNet
frozen; its third-last-layer 7x7x1024 map per view through the global flow and one context flow (average
pooling by N=2: 7x7 -> 4x4, ceil, real cells only; see cxrjax/models/encoders/context_aggregation.py),
summed; both views' 98 cells -> Dense 512 -> batch norm -> dropout -> the attention decoder of
configs/iu_xray_attention.py (zero initial state, beam 3). Arguments:
  split=r2gen     R2Gen's 2,069/296/590 split (default: the seeded 70/10/20 study split)
  sections=findings_impression  train on and score against findings + impression (ReXrank's IU X-ray
                  protocol; prepare with --sections findings_impression); default findings (R2Gen's)
  attention=concat  Luong's global "concat" score instead of Bahdanau's
  pool=N          the context flow's pooling factor (default 2)
  tpu             the TPU VM variant: bfloat16 compute, batch 256, no host-side limits
  smoke           tiny sizes for a quick end-to-end check
No published number is reproduced here yet: no IU X-ray images or CheXNet weights can be used in this
environment, so the expected BLEU-4 is not stated.
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(
    arg, smoke=False, tpu=False, split="random", sections="findings", attention="bahdanau", pool=2
  )
  model = dict(
    name="cam_captioner",
    encoder=recipes.densenet121_encoder(),
    context_dim=512,
    pool_factor=arg.pool,
    region_dim=512,
    embed_dim=300,
    hidden_dim=512,
    attention=arg.attention,
    attention_dim=512,
    dropout_rate=0.2,
    initial_state="zeros",
    dtype="float32",
  )
  smoke_model = dict(context_dim=16, region_dim=32, embed_dim=16, hidden_dim=32, attention_dim=32)
  return recipes.iu_xray_experiment(arg, model, smoke_model)
