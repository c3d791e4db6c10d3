"""Helpers shared by configs/: big_vision-style `get_config(arg)` argument parsing and common sections.

A run config has these sections (every config in configs/ fills all of them):
  data       the dataset, its split, image size, views per example, report length, cleaning, tokenizer
  model      the family (`name`, models/__init__.py) and its architecture; `model.encoder` holds the encoder
             architecture and its image `preprocessing` (normalization, resize_filter, resize_rule)
  init       pretrained files the run starts from (weights/pretrained.py): encoder, word_vectors, from_workdir
  optimizer  AdamW / Adam-L2, learning-rate schedule, and `param_groups`: what is frozen or trained at which
             rate (cxrjax/optim.py)
  train      batch size, steps, seed, logging / validation / checkpoint intervals, cache_features
  decode     generation (captioners): beam size, max length, length penalty, n-gram blocking
  eval       evaluation batch size, the validation metric that picks the best checkpoint, validation size
"""

import ml_collections

from cxrjax.errors import ConfigError
from cxrjax.models.encoders import densenet

FROZEN_ENCODER = (("image_encoder/.*", None), (".*", 1.0))
TRAINED_EVERYWHERE = ((".*", 1.0),)
IMAGENET_PREPROCESSING = dict(normalization="imagenet", resize_filter="bilinear", resize_rule="square")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "smoke,res=128" into a ConfigDict over `defaults` (types follow the defaults; a bare name
  sets a boolean to True). Unknown names are an error, so a typo never passes silently."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"unknown config argument {name!r}; known: {sorted(defaults)}")
    default = defaults[name]
    try:
      result[name] = value.lower() in ("", "1", "true", "yes") if isinstance(default, bool) else type(default)(value)
    except ValueError:
      raise ConfigError(f"config argument {name}={value!r}: expected a {type(default).__name__}") from None
  return result


def densenet121_encoder() -> dict:
  """DenseNet-121 as CheXNet (Keras batch-norm epsilon, so CheXNet-Keras weights load exactly), with
  CheXNet's ImageNet preprocessing."""
  return dict(block_sizes=(6, 12, 24, 16), growth_rate=32, stem_features=64, bn_epsilon=1.001e-5,
              preprocessing=dict(IMAGENET_PREPROCESSING))


def tiny_encoder() -> dict:
  """A small DenseNet for CPU demos (same code path, a fraction of the compute)."""
  return dict(block_sizes=(2, 2, 2), growth_rate=16, stem_features=32, bn_epsilon=1.001e-5,
              preprocessing=dict(IMAGENET_PREPROCESSING))


def smoke_encoder() -> dict:
  """The DenseNet of smoke variants: two blocks of one layer."""
  return dict(densenet.tiny_config(), preprocessing=dict(IMAGENET_PREPROCESSING))


def smoke_chexnet_encoder() -> dict:
  """The DenseNet of the CheXNet configs' smoke variants: DenseNet-121's layout (four blocks, growth 32,
  stem 64, Keras batch-norm epsilon) with one layer per block, so that `cxrjax port-weights` files of the
  same layout load into it, at a fraction of the compute."""
  return dict(block_sizes=(1, 1, 1, 1), growth_rate=32, stem_features=64, bn_epsilon=1.001e-5,
              preprocessing=dict(IMAGENET_PREPROCESSING))


def adamw(learning_rate: float, warmup_steps: int, param_groups=TRAINED_EVERYWHERE, **overrides) -> dict:
  """The report generators' optimizer: AdamW, warm-up then cosine decay, global-norm clipping 1."""
  return dict(dict(name="adamw", learning_rate=learning_rate, schedule="cosine", warmup_steps=warmup_steps,
                   final_lr_fraction=0.01, decay_every_steps=0, weight_decay=1e-4, grad_clip_norm=1.0,
                   b1=0.9, b2=0.999, param_groups=param_groups), **overrides)


def no_init() -> dict:
  return dict(encoder="", word_vectors="", from_workdir="")


def rocov2_experiment(model: dict, tokenizer: str = "") -> ml_collections.ConfigDict:
  """Seed 003's ROCOv2 setup (configs/rocov2_graph.py; also the run config of an imported seed checkpoint):
  one view at 224 with ImageNet statistics, captions of at most 80 WordPiece tokens ([CLS] ... [SEP]),
  AdamW 1e-4, batch 200, 15 epochs of the 56,963 training images, beam 3."""
  steps_per_epoch = 56_963 // 200
  config = ml_collections.ConfigDict()
  config.data = dict(
      name="rocov2", data_dir="", subset="all", image_size=224, num_views=1, max_length=80, cleaning="none",
      tokenizer=tokenizer,  # bert-base-uncased's vocab.txt (WordPiece); "" builds a word vocabulary instead
      vocabulary_min_count=3, random_flip=True,  # The seed flips: captions seldom name sides.
      random_rotation=10.0,  # degrees, as the seed's RandomRotation(10)
      read_threads=2)
  config.model = model
  config.init = no_init()  # init.encoder: a Hugging Face ResNetModel folder (microsoft/resnet-50)
  config.optimizer = adamw(1e-4, 0, TRAINED_EVERYWHERE, final_lr_fraction=1.0, weight_decay=1e-2,
                           grad_clip_norm=1e3)
  config.train = dict(batch_size=200, num_steps=15 * steps_per_epoch, seed=0, log_every=50,
                      eval_every=steps_per_epoch, checkpoint_every=steps_per_epoch, cache_features=False)
  config.decode = dict(beam_size=3, max_length=79, length_penalty=0.0, block_ngram_repeat=3)
  config.eval = dict(batch_size=64, best_metric="BLEU-4", max_val_examples=1000)
  return config


def iu_xray_experiment(arg: ml_collections.ConfigDict, model: dict, smoke_model: dict,
                       param_groups=FROZEN_ENCODER) -> ml_collections.ConfigDict:
  """The seed-000/001 IU X-ray setup shared by the three report generators: two views at 224, reports of
  up to 60 tokens (R2Gen), words seen 3 times, CheXNet frozen, AdamW, beam 3; `arg.tpu` and `arg.smoke`.

  Args:
    arg: parsed arguments with `split` ("random" or "r2gen"), `tpu` and `smoke`.
    model: the model section (its DenseNet-121 encoder included).
    smoke_model: model fields replaced in the smoke variant (the encoder becomes `smoke_chexnet_encoder()`).
    param_groups: the optimizer's (default: CheXNet frozen, the rest trained).
  """
  config = ml_collections.ConfigDict()
  config.data = dict(
      name="iu_xray", data_dir="", tfds_config=arg.split, image_size=224, num_views=2, max_length=60,
      cleaning="r2gen", vocabulary_min_count=3,
      tokenizer="",  # "": a word vocabulary (prepared by `cxrjax prepare`); or a WordPiece vocab.txt / tokenizer.json
      random_flip=False)  # The reports name sides: a flipped image would contradict its report.
  config.model = model
  config.init = no_init()
  config.optimizer = adamw(1e-3, 500, param_groups)
  config.train = dict(batch_size=32, num_steps=20_000, seed=0, log_every=100, eval_every=1000,
                      checkpoint_every=1000,
                      cache_features=False)  # True: the frozen CheXNet's features computed once
  config.decode = dict(beam_size=3, max_length=59, length_penalty=0.0, block_ngram_repeat=0)
  config.eval = dict(batch_size=32, best_metric="BLEU-4", max_val_examples=0)
  if arg.tpu:
    config.model.dtype = "bfloat16"
    config.train.update(batch_size=256, num_steps=3_000, eval_every=500)
    config.optimizer.learning_rate = 3e-3
    config.eval.batch_size = 256
  if arg.smoke:
    config.model.update(encoder=smoke_chexnet_encoder(), **smoke_model)
    config.data.image_size = 64
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.decode.max_length = 16
    config.eval.update(batch_size=8, max_val_examples=8)
  return config
