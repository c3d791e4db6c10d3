"""`config.init`: the pretrained files a run starts from, written into the parts its family names.

  config.init = dict(encoder="weights/chexnet",        # a `cxrjax port-weights` directory (CheXNet), or a
                                                      # Hugging Face ResNetModel directory (graph captioner)
                     word_vectors="glove.6B.300d.txt",  # GloVe .txt / fastText .vec, one row per word
                     from_workdir="")                   # another run's best checkpoint (cxrjax/jobs/train.py)

A family says which config.init keys it accepts, the kind of file each is and where it goes
(`pretrained_parts`, models/base.py); a key the family does not have is an error, an empty value is
skipped. Each kind's loader is registered in `KINDS` beside its definition (cxrjax/core/registry.py). Loading
checks names and shapes against the model before anything is copied.
"""

import sys
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.core import registry
from cxrjax.core.errors import ConfigError
from cxrjax.models import base
from cxrjax.text import word_vectors
from cxrjax.weights import chexnet, seed003, store

INIT_KEYS = ("encoder", "word_vectors", "from_workdir")

# The kind of file a family's `config.init.<key>` names (base.PretrainedPart.kind) -> its loader
# `load(path, part, params, batch_stats, tokenizer, model_config)`, which writes the file into `params` and
# `batch_stats` at the part's paths.
KINDS = registry.Registry("pretrained kind", "PretrainedPart.kind", ConfigError)


def _subtree(tree: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
  """(the dict that holds the last key of `path`, that key); KeyError names the missing part."""
  keys = path.split("/")
  node = tree
  for key in keys[:-1]:
    if key not in node:
      raise KeyError(path)
    node = node[key]
  if keys[-1] not in node:
    raise KeyError(path)
  return node, keys[-1]


@KINDS.register("densenet")
def _load_densenet(
  directory: str, part: base.PretrainedPart, params: dict, batch_stats: dict, tokenizer: Any, model_config: Any
) -> None:
  """A `cxrjax port-weights` CheXNet directory into a DenseNet encoder (its classifier left out)."""
  del tokenizer
  encoder_epsilon = ((model_config or {}).get("encoder") or {}).get("bn_epsilon")
  config, variables, _ = chexnet.load_chexnet(directory)
  if encoder_epsilon is not None and abs(config.bn_epsilon - encoder_epsilon) > 1e-12:
    # Names and shapes fit, so the weights load; the normalisation differs slightly: say so.
    print(
      f"warning: {directory}: its batch norm was trained with epsilon {config.bn_epsilon:g}, the configured "
      f"encoder uses {encoder_epsilon:g}; set --config.model.encoder.bn_epsilon={config.bn_epsilon:g} to match",
      file=sys.stderr,
    )
  source = {
    "params": {k: v for k, v in variables["params"].items() if k != "classifier"},
    "batch_stats": variables.get("batch_stats", {}),
  }
  for path in part.paths:
    for collection, target_tree in (("params", params), ("batch_stats", batch_stats)):
      parent, key = _subtree(target_tree, path)
      target = parent[key]
      if jax.tree.structure(target) != jax.tree.structure(source[collection]):
        raise chexnet.WeightsError(
          f"{directory}: DenseNet{tuple(config.block_sizes)} (growth {config.growth_rate}) does not fit "
          f"the configured encoder at {path} (its {collection} names differ)"
        )
      shapes = [
        (a.shape, b.shape)
        for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(source[collection]))
        if a.shape != b.shape
      ]
      if shapes:
        raise chexnet.WeightsError(f"{directory}: tensor shapes differ from the encoder at {path}: {shapes[:3]}")
      parent[key] = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), source[collection], target)


@KINDS.register("hf_resnet")
def _load_hf_resnet(
  directory: str, part: base.PretrainedPart, params: dict, batch_stats: dict, tokenizer: Any, model_config: Any
) -> None:
  """A Hugging Face ResNetModel directory (config.json + model.safetensors) into a ResNet encoder."""
  del tokenizer, model_config
  variables, config = seed003.import_hf_resnet(directory)
  store.check_finite_variables(variables, directory)
  for path in part.paths:
    for collection, target_tree in (("params", params), ("batch_stats", batch_stats)):
      parent, key = _subtree(target_tree, path)
      target, source = parent[key], variables[collection]
      if jax.tree.structure(target) != jax.tree.structure(source):
        raise seed003.WeightsError(
          f"{directory}: ResNet{tuple(config.depths)} of widths {tuple(config.hidden_sizes)} does not fit the "
          f"configured encoder at {path} (its {collection} names differ)"
        )
      shapes = [
        (a.shape, b.shape) for a, b in zip(jax.tree.leaves(target), jax.tree.leaves(source)) if a.shape != b.shape
      ]
      if shapes:
        raise seed003.WeightsError(f"{directory}: tensor shapes differ from the encoder at {path}: {shapes[:3]}")
      parent[key] = jax.tree.map(lambda new, old: jnp.asarray(new, old.dtype), source, target)


@KINDS.register("word_vectors")
def _load_word_vectors(
  path: str, part: base.PretrainedPart, params: dict, batch_stats: dict, tokenizer: Any, model_config: Any
) -> None:
  """A GloVe .txt or fastText .vec file into word embeddings, one row per word of the tokenizer."""
  del batch_stats, model_config
  for param_path in part.paths:
    parent, key = _subtree(params, param_path)
    embedding = parent[key]
    matrix, stats = word_vectors.load_word_vectors(path, tokenizer, dim=embedding.shape[1])
    print(f"word vectors: {stats.summary()}")
    parent[key] = jnp.asarray(matrix, embedding.dtype)


def initialize(
  init_config: Any, family: type, variables: dict[str, Any], tokenizer: Any = None, model_config: Any = None
) -> dict[str, Any]:
  """`variables` ({"params", "batch_stats"}) with the files of `init_config` written in (new dicts; the
  inputs are not changed). Returns `variables` itself when nothing is configured."""
  init_config = dict(init_config or {})
  unknown = set(init_config) - set(INIT_KEYS)
  if unknown:
    raise ConfigError(f"unknown config.init fields {sorted(unknown)}; known: {list(INIT_KEYS)}")
  requested = {key: value for key, value in init_config.items() if value and key != "from_workdir"}
  if not requested:
    return variables
  parts = family.pretrained_parts
  for key in requested:
    if key not in parts:
      raise ConfigError(
        f"config.init.{key} is set, but the {family.__name__} model has no such pretrained "
        f"part (it has: {sorted(parts) or 'none'})"
      )
  params = flax.core.unfreeze(jax.tree.map(np.asarray, variables["params"]))
  batch_stats = flax.core.unfreeze(jax.tree.map(np.asarray, variables.get("batch_stats", {})))
  for key, path in requested.items():
    part = parts[key]
    load = KINDS.get(part.kind)
    try:
      load(path, part, params, batch_stats, tokenizer, model_config)
    except KeyError as missing:
      raise ConfigError(f"config.init.{key}: the model has no parameters at {missing}") from None
  return {"params": params, "batch_stats": batch_stats}
