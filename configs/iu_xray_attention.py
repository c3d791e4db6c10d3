r"""Seeds 000/001 attention model on IU X-ray: frozen CheXNet over two views, Bahdanau attention + GRU.

  cxrjax prepare iu_xray --manual-dir=$IU_XRAY --data-dir=$DATA
  cxrjax port-weights --format=keras-h5 brucechou1983_CheXNet_Keras_0.3.0_weights.h5 weights/chexnet
  cxrjax train --config=configs/iu_xray_attention.py --workdir=workdirs/iu_attention \
      --config.data.data_dir=$DATA --config.init.encoder=weights/chexnet
  cxrjax evaluate --workdir=workdirs/iu_attention --split=test

Seed setup: two views at 224x224 (training: R2Gen's random crops of a 256 resize, `data.augment`), CheXNet
frozen (its 7x7x1024 maps of both views = 98 regions), words kept at min count 3, reports up to 60 tokens,
beam size 3. Arguments:
  split=r2gen     R2Gen's 2,069/296/590 split (default: the seeded 70/10/20 study split)
  sections=findings_impression  train on and score against findings + impression (ReXrank's IU X-ray
                  protocol; prepare with --sections findings_impression); default findings (R2Gen's)
  attention=concat  Luong's global "concat" score instead of Bahdanau's
  tpu             the TPU VM variant: bfloat16 compute, batch 256, no host-side limits
  smoke           tiny sizes for a quick end-to-end check
No published number is reproduced here yet: no IU X-ray images or CheXNet weights can be used in this
environment, so the expected BLEU-4 is not stated (R2Gen-era papers report 0.10-0.17 on R2Gen's split).
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, tpu=False, split="random", sections="findings", attention="bahdanau")
  model = dict(
    name="attention_captioner",
    encoder=recipes.densenet121_encoder(),
    region_dim=512,
    embed_dim=300,
    hidden_dim=512,
    attention=arg.attention,
    attention_dim=512,
    dropout_rate=0.2,
    initial_state="zeros",
    dtype="float32",
  )
  smoke_model = dict(region_dim=32, embed_dim=16, hidden_dim=32, attention_dim=32)
  return recipes.iu_xray_experiment(arg, model, smoke_model)
