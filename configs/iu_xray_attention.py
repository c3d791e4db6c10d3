r"""Seeds 000/001 attention model on IU X-ray: frozen CheXNet over two views, Bahdanau attention + GRU.

  cxrjax prepare iu_xray --manual-dir=$IU_XRAY --data-dir=$DATA
  cxrjax port-weights --format=keras-h5 brucechou1983_CheXNet_Keras_0.3.0_weights.h5 weights/chexnet
  cxrjax train --config=configs/iu_xray_attention.py --workdir=workdirs/iu_attention \
      --config.data.data_dir=$DATA --config.model.encoder_weights=weights/chexnet
  cxrjax evaluate --workdir=workdirs/iu_attention --split=test

Seed setup: two views at 224x224, CheXNet frozen (its 7x7x1024 maps of both views = 98 regions),
words kept at min count 3, reports up to 60 tokens, beam size 3. Arguments:
  split=r2gen     R2Gen's 2,069/296/590 split (default: the seeded 70/10/20 study split)
  attention=concat  Luong's global "concat" score instead of Bahdanau's
  tpu             the TPU VM variant: bfloat16 compute, batch 256, no host-side limits
  smoke           tiny sizes for a quick end-to-end check
No published number is reproduced here yet: no IU X-ray images or CheXNet weights can be used in this
environment, so the expected BLEU-4 is not stated (R2Gen-era papers report 0.10-0.17 on R2Gen's split).
"""

import ml_collections

from cxrjax import config as config_lib


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, tpu=False, split="random", attention="bahdanau")
  config = ml_collections.ConfigDict()
  config.data = dict(
      name="iu_xray", data_dir="", tfds_config=arg.split, image_size=224, max_length=60,
      cleaning="r2gen", vocabulary_min_count=3, random_flip=True)
  config.model = dict(
      name="attention_captioner", encoder=config_lib.densenet121_encoder(), freeze_encoder=True,
      cache_features=False,  # True: frozen CheXNet features computed once (cxrjax/features.py)
      encoder_weights="", region_dim=512, embed_dim=300, hidden_dim=512, attention=arg.attention,
      attention_dim=512, dropout_rate=0.2, initial_state="zeros", dtype="float32")
  config.train = dict(
      batch_size=32, num_steps=20_000, learning_rate=1e-3, warmup_steps=500, final_lr_fraction=0.01,
      weight_decay=1e-4, grad_clip_norm=1.0, b1=0.9, b2=0.999, seed=0,
      log_every=100, eval_every=1000, checkpoint_every=1000)
  config.decode = dict(beam_size=3, max_length=59, length_penalty=0.0, block_ngram_repeat=0)
  config.eval = dict(batch_size=32, best_metric="BLEU-4", max_val_examples=0)
  if arg.tpu:
    config.model.dtype = "bfloat16"
    config.train.update(batch_size=256, num_steps=3_000, learning_rate=3e-3, eval_every=500)
    config.eval.batch_size = 256
  if arg.smoke:
    config.model.update(encoder=config_lib.tiny_encoder(), region_dim=32, embed_dim=16, hidden_dim=32,
                        attention_dim=32)
    config.data.image_size = 64
    config.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2, eval_every=4,
                        checkpoint_every=2)
    config.eval.update(batch_size=8, max_val_examples=8)
  return config
