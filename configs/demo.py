r"""The main job: the attention captioner trained from scratch on the embedded synthetic set.

  cxrjax train --config=configs/demo.py --workdir=workdirs/demo
  cxrjax evaluate --workdir=workdirs/demo --split=test

Two-view phantom studies (cxrjax/data/phantom/) at 64x64, a small DenseNet encoder trained end to end
(no pretrained weights exist for the phantoms), Bahdanau attention + GRU, greedy validation, beam-3
test decoding. Runs on 2 CPU cores in under 10 minutes; results are in README.md.
Smoke variant (seconds, used by the tests): --config=configs/demo.py:smoke

The other seed-000/001 models on the same data and training schedule (`model=`, default attention):
  cxrjax train --config=configs/demo.py:model=lstm --workdir=workdirs/demo_lstm
      the simple encoder-decoder (pooled features -> LSTM initial state; no pretrained word vectors
      exist for the phantom vocabulary, so the embedding starts random)
  cxrjax train --config=configs/demo.py:model=cam --workdir=workdirs/demo_cam
      the chained-context-aggregation encoder before the attention GRU (4x4 maps at 64 px, pooled to 2x2)
Their measured scores and training times: README.md, "What the main job gives".
The tiny DenseNet dominates every variant's step, so the decoders keep the attention demo's sizes.
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes


def _attention_model() -> dict:
  return dict(
    name="attention_captioner",
    encoder=recipes.tiny_encoder(),
    region_dim=128,
    embed_dim=64,
    hidden_dim=256,
    attention="bahdanau",
    attention_dim=128,
    dropout_rate=0.1,
    initial_state="pooled",
    dtype="float32",
  )


def _lstm_model() -> dict:
  return dict(
    name="lstm_captioner",
    encoder=recipes.tiny_encoder(),
    embed_dim=64,
    hidden_dim=256,
    dropout_rate=0.1,
    dtype="float32",
  )


def _cam_model() -> dict:
  return dict(_attention_model(), name="cam_captioner", context_dim=64, pool_factor=2)


MODEL_SECTIONS = {"attention": _attention_model, "lstm": _lstm_model, "cam": _cam_model}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, res=64, steps=600, model="attention")
  if arg.model not in MODEL_SECTIONS:
    raise config_lib.ConfigError(f"unknown model={arg.model!r}; known: {sorted(MODEL_SECTIONS)}")
  config = ml_collections.ConfigDict()

  config.data = dict(
    name="phantom",
    image_size=arg.res,
    num_views=2,
    max_length=40,
    cleaning="r2gen",
    tokenizer="",
    vocabulary_min_count=1,
    # R2Gen's random crop of an 8/7 resize (73 -> 64), unflipped: the reports name sides, and a flipped
    # image would contradict its report.
    augment=dict(random_crop=True, crop_resize=0, flip=False, rotation=0.0),
    read_threads=1,  # Draws the next batch's phantoms while the step computes.
    num_train=4000,
    num_val=200,
    num_test=500,
    phantom_seed=0,
    # Higher prevalences than the phantom defaults (cardiomegaly 0.22, effusion 0.18, pneumothorax 0.1,
    # opacity 0.18, nodule 0.12: cxrjax/data/phantom/findings.py), so that the most common report is a
    # weak answer and the score measures how much the model reads from the images.
    phantom_prevalences=dict(cardiomegaly=0.4, effusion=0.4, pneumothorax=0.3, opacity=0.4, nodule=0.3),
  )

  config.model = MODEL_SECTIONS[arg.model]()
  config.init = recipes.no_init()  # No pretrained weights exist for the phantoms.
  config.optimizer = recipes.adamw(2e-3, 100, recipes.TRAINED_EVERYWHERE, final_lr_fraction=0.05)
  config.train = dict(
    batch_size=32,
    num_steps=arg.steps,
    seed=0,
    profile_steps=(),
    log_every=50,
    eval_every=300,
    checkpoint_every=300,
    cache_features=False,
  )
  config.decode = dict(beam_size=3, max_length=39, length_penalty=0.0, block_ngram_repeat=0)
  config.eval = dict(batch_size=50, best_metric="BLEU-4", max_val_examples=200)

  if arg.smoke:
    config.data.update(image_size=32, num_train=64, num_val=8, num_test=8, max_length=24)
    config.model.update(encoder=recipes.smoke_encoder(), embed_dim=8, hidden_dim=16)
    config.model.update(
      {k: v for k, v in dict(region_dim=16, attention_dim=16, context_dim=8).items() if k in config.model}
    )
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.decode.update(max_length=23)
    config.eval.update(batch_size=8, max_val_examples=8)
  return config
