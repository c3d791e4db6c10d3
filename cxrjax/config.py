"""Helpers shared by configs/: big_vision-style `get_config(arg)` argument parsing, common sections."""

import ml_collections


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "smoke,res=128" into a ConfigDict over `defaults` (types follow the defaults; a bare name
  sets a boolean to True). Unknown names are an error, so a typo never passes silently."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ValueError(f"unknown config argument {name!r}; known: {sorted(defaults)}")
    default = defaults[name]
    if isinstance(default, bool):
      result[name] = value.lower() in ("", "1", "true", "yes")
    else:
      result[name] = type(default)(value)
  return result


def densenet121_encoder() -> ml_collections.ConfigDict:
  """DenseNet-121 as CheXNet (Keras batch-norm epsilon, so CheXNet-Keras weights load exactly)."""
  return ml_collections.ConfigDict(dict(
      block_sizes=(6, 12, 24, 16), growth_rate=32, stem_features=64, bn_epsilon=1.001e-5))


def tiny_encoder() -> ml_collections.ConfigDict:
  """A small DenseNet for smoke runs and CPU demos (same code path, a fraction of the compute)."""
  return ml_collections.ConfigDict(dict(block_sizes=(2, 2, 2), growth_rate=16, stem_features=32,
                                        bn_epsilon=1.001e-5))


def iu_xray_experiment(arg: ml_collections.ConfigDict, model: dict,
                       smoke_model: dict) -> ml_collections.ConfigDict:
  """The seed-000/001 IU X-ray setup shared by the three report generators: two views at 224, reports of
  up to 60 tokens (R2Gen), words seen 3 times, AdamW, beam 3; `arg.tpu` and `arg.smoke` variants.

  Args:
    arg: parsed arguments with `split` ("random" or "r2gen"), `tpu` and `smoke`.
    model: the model section (its DenseNet-121 encoder included).
    smoke_model: model fields replaced in the smoke variant (the encoder becomes `tiny_encoder()`).
  """
  config = ml_collections.ConfigDict()
  config.data = dict(
      name="iu_xray", data_dir="", tfds_config=arg.split, image_size=224, max_length=60,
      cleaning="r2gen", vocabulary_min_count=3, random_flip=True)
  config.model = model
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
    config.model.update(encoder=tiny_encoder(), **smoke_model)
    config.data.image_size = 64
    config.train.update(batch_size=8, num_steps=4, warmup_steps=1, log_every=2, eval_every=4,
                        checkpoint_every=2)
    config.eval.update(batch_size=8, max_val_examples=8)
  return config
