"""Flax linen models, and the one table that maps a config's `model.name` to its class.

A model family is added by writing its module and one line here; the trainer does not change.
"""

from typing import Any

import ml_collections

from cxrjax.models import captioner, densenet

# model.name -> (class, task). Captioners share the interface documented in captioner.py.
MODELS = {
    "attention_captioner": (captioner.AttentionCaptioner, "captioning"),
}


def encoder_config(config: ml_collections.ConfigDict) -> densenet.DenseNetConfig:
  """The DenseNet architecture of a model config's `encoder` section (no classification head)."""
  return densenet.DenseNetConfig(
      block_sizes=tuple(config.block_sizes), growth_rate=config.growth_rate,
      stem_features=config.stem_features, num_classes=0, bn_epsilon=config.bn_epsilon)


def build_model(config: ml_collections.ConfigDict, vocab_size: int) -> Any:
  """Instantiates `config.name` with the remaining fields as attributes."""
  import jax.numpy as jnp
  if config.name not in MODELS:
    raise ValueError(f"unknown model.name {config.name!r}; known: {sorted(MODELS)}")
  model_class, _ = MODELS[config.name]
  fields = config.to_dict()
  fields.pop("name")
  fields.pop("encoder_weights", None)
  fields["encoder"] = encoder_config(config.encoder)
  fields["dtype"] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[fields.get("dtype", "float32")]
  return model_class(vocab_size=vocab_size, **fields)


def task_of(config: ml_collections.ConfigDict) -> str:
  return MODELS[config.name][1]
