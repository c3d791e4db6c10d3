"""Flax linen models, and the one table that maps a config's `model.name` to its class.

A model family is added by writing its module and one line here; the trainer does not change.
"""

from typing import Any

import ml_collections

from cxrjax.models import agcnn, attention_captioner, cam_captioner, lstm_captioner
from cxrjax.models.encoders import densenet

# model.name -> (class, task). Captioners share the interface documented in captioner.py.
MODELS = {
    "attention_captioner": (attention_captioner.AttentionCaptioner, "captioning"),
    "lstm_captioner": (lstm_captioner.LSTMCaptioner, "captioning"),
    "cam_captioner": (cam_captioner.CAMCaptioner, "captioning"),
    "agcnn": (agcnn.AGCNN, "classification"),
}

# Where a captioner keeps its word embedding [vocab, embed_dim] (every captioner here names it so).
EMBEDDING_PATH = ("decoder", "embed", "embedding")

# Model config fields that are training options, not model attributes.
_TRAINING_FIELDS = ("name", "encoder_weights", "word_vectors", "freeze_embedding", "stage", "init_from",
                    "cache_features")


def encoder_config(config: ml_collections.ConfigDict) -> densenet.DenseNetConfig:
  """The DenseNet architecture of a model config's `encoder` section (no classification head)."""
  return densenet.DenseNetConfig(
      block_sizes=tuple(config.block_sizes), growth_rate=config.growth_rate,
      stem_features=config.stem_features, num_classes=0, bn_epsilon=config.bn_epsilon)


def build_model(config: ml_collections.ConfigDict, vocab_size: int | None) -> Any:
  """Instantiates `config.name` with the remaining fields as attributes (captioners also get the
  vocabulary size; AG-CNN's DenseNet `encoder` section becomes its `backbone`)."""
  import jax.numpy as jnp
  if config.name not in MODELS:
    raise ValueError(f"unknown model.name {config.name!r}; known: {sorted(MODELS)}")
  model_class, _ = MODELS[config.name]
  fields = {k: v for k, v in config.to_dict().items() if k not in _TRAINING_FIELDS}
  fields["dtype"] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[fields.get("dtype", "float32")]
  if task_of(config) == "classification":
    fields.pop("encoder")
    return model_class(backbone=encoder_config(config.encoder), **fields)
  fields["encoder"] = encoder_config(config.encoder)
  return model_class(vocab_size=vocab_size, **fields)


def frozen_prefixes(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """Parameter paths the optimizer must not move (no update, no weight decay)."""
  prefixes = []
  if config.get("freeze_encoder", False):
    prefixes.append("image_encoder")
  if config.get("freeze_embedding", False):
    prefixes.append("/".join(EMBEDDING_PATH[:-1]))
  return tuple(prefixes)


def load_pretrained(config: ml_collections.ConfigDict, params: Any, batch_stats: Any,
                    vocabulary: Any) -> tuple[Any, Any]:
  """Fresh variables with the configured pretrained parts put in: the image encoder's DenseNet from
  `config.encoder_weights` (a `cxrjax port-weights` directory; its classifier head is dropped) and the
  word embedding from `config.word_vectors` (a GloVe `.txt` or fastText `.vec` file; see
  cxrjax/data/word_vectors.py). Returns the inputs unchanged (the same objects) when nothing is
  configured."""
  if config.get("word_vectors"):
    params = _load_word_vectors(config.word_vectors, params, vocabulary)
  if not config.get("encoder_weights"):
    return params, batch_stats
  import flax
  import jax
  import jax.numpy as jnp
  from cxrjax.weights import chexnet
  directory = config.encoder_weights
  weights_config, variables, _ = chexnet.load_chexnet(directory)
  expected = encoder_config(config.encoder)
  if (tuple(weights_config.block_sizes), weights_config.growth_rate) != (expected.block_sizes,
                                                                          expected.growth_rate):
    raise ValueError(f"{directory}: DenseNet{tuple(weights_config.block_sizes)} does not match the "
                     f"configured encoder DenseNet{expected.block_sizes}")
  params, batch_stats = flax.core.unfreeze(params), flax.core.unfreeze(batch_stats)
  densenet_params = {k: v for k, v in variables["params"].items() if k != "classifier"}
  target = params["image_encoder"]["densenet"]
  if jax.tree.structure(target) != jax.tree.structure(densenet_params):
    raise ValueError(f"{directory}: tensor names differ from the configured encoder's")
  params["image_encoder"]["densenet"] = jax.tree.map(jnp.asarray, densenet_params)
  batch_stats["image_encoder"]["densenet"] = jax.tree.map(jnp.asarray, variables["batch_stats"])
  return params, batch_stats


def _load_word_vectors(path: str, params: Any, vocabulary: Any) -> Any:
  """params with the embedding replaced by `path`'s vectors (missing words random; reported)."""
  import flax
  import jax.numpy as jnp
  from cxrjax.text import word_vectors
  params = flax.core.unfreeze(params)
  parent = params
  for key in EMBEDDING_PATH[:-1]:
    parent = parent.get(key, {}) if isinstance(parent, dict) else {}
  embedding = parent.get(EMBEDDING_PATH[-1]) if isinstance(parent, dict) else None
  if embedding is None:
    raise ValueError(f"model.word_vectors={path!r} is set but the model has no word embedding at "
                     f"{'/'.join(EMBEDDING_PATH)}")
  matrix, stats = word_vectors.load_word_vectors(path, vocabulary, dim=embedding.shape[1])
  print(f"word vectors: {stats.summary()}")
  parent[EMBEDDING_PATH[-1]] = jnp.asarray(matrix, embedding.dtype)
  return params


def task_of(config: ml_collections.ConfigDict) -> str:
  return MODELS[config.name][1]
