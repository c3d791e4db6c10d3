r"""Seeds 000/001 simple encoder-decoder on IU X-ray: frozen CheXNet pooled features -> LSTM state.

  cxrjax prepare iu_xray --manual-dir=$IU_XRAY --data-dir=$DATA
  cxrjax port-weights --format=keras-h5 brucechou1983_CheXNet_Keras_0.3.0_weights.h5 weights/chexnet
  cxrjax train --config=configs/iu_xray_lstm.py --workdir=workdirs/iu_lstm \
      --config.data.data_dir=$DATA --config.init.encoder=weights/chexnet \
      --config.init.word_vectors=glove.6B.300d.txt
  cxrjax evaluate --workdir=workdirs/iu_lstm --split=test

Seed setup: two views at 224x224 (training: R2Gen's random crops of a 256 resize, `data.augment`), CheXNet
frozen, its pooled 1024-d features of both views concatenated (2048) -> Dense -> the LSTM's initial state (h
and c) and a term added to every LSTM output; 300-d word embedding initialised from GloVe (seed 000,
trainable) or fastText `.vec` (seed 001, frozen: `freeze`). Words missing from the vector file start random
and are reported at the start of training. Arguments:
  split=r2gen     R2Gen's 2,069/296/590 split (default: the seeded 70/10/20 study split)
  sections=findings_impression  train on and score against findings + impression (ReXrank's IU X-ray
                  protocol; prepare with --sections findings_impression); default findings (R2Gen's)
  freeze          freeze the pretrained embedding (seed 001); default trainable (seed 000)
  tpu             the TPU VM variant: bfloat16 compute, batch 256, no host-side limits
  smoke           tiny sizes for a quick end-to-end check (no word vectors)
No published number is reproduced here: no IU X-ray images, CheXNet weights or 300-d word vectors can
be used in this environment. Seed 001 reports an average BLEU of 0.38 for this baseline (greedy), its
attention model 0.66; these are not BLEU-4 on a standard split and are not comparable to R2Gen tables.
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, tpu=False, split="random", sections="findings", freeze=False)
  model = dict(
    name="lstm_captioner",
    encoder=recipes.densenet121_encoder(),
    embed_dim=300,
    hidden_dim=512,
    dropout_rate=0.2,
    dtype="float32",
  )
  param_groups = recipes.FROZEN_ENCODER
  if arg.freeze:  # Seed 001: the fastText embedding stays as loaded.
    param_groups = (("decoder/embed/.*", None),) + param_groups
  return recipes.iu_xray_experiment(arg, model, dict(embed_dim=16, hidden_dim=32), param_groups)
