"""What every model family provides, so that the trainer, evaluation, decoding and prediction stay generic.

A family is a flax module class (a `Family`: a `Captioner` or a `Classifier`) registered in `FAMILIES` under
its config `model.name` by `@base.FAMILIES.register("name")` on the class, its module imported by
models/__init__.py. It
  - builds itself from its config section: `from_config(model_config, vocab_size, is_frozen)`, where
    `is_frozen(module_path)` tells which of its parts the optimizer's `param_groups` freeze (a frozen
    encoder runs in inference mode and passes no gradient);
  - names its `task` ("captioning" or "classification", cxrjax/tasks/);
  - says which of its parameters can load pretrained weights (`pretrained_parts`: the `config.init` key
    -> the kind of file and the parameter paths it fills; cxrjax/weights/pretrained.py loads them);
  - gives a tiny `smoke_config()`, which the contract test (tests/models/test_contract.py) runs through
    init, the loss, a jitted train step, decoding and a checkpoint round trip;
  - may override the optional members of `Family` (`decode_limit_field`, `check_initialization`), whose
    defaults do nothing, so that callers use them without probing.

Captioners also have the four entry points of `Captioner` below; `decoder_step_fn` adapts them to
cxrjax/core/decoding.py's step function.
"""

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxrjax.core import registry
from cxrjax.core.errors import ConfigError

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
IsFrozen = Callable[[str], bool]
# Defined here rather than in models/__init__.py so that the family modules, which __init__ imports, can
# register themselves without an import cycle.
FAMILIES: registry.Registry[type["Family"]] = registry.Registry("model family", "config.model.name", ConfigError)


@dataclasses.dataclass(frozen=True)
class PretrainedPart:
  """Parameters a `config.init.<key>` file fills.

  Attributes:
    kind: the file's kind: "densenet" (a `cxrjax port-weights` directory, CheXNet), "hf_resnet" (a Hugging
      Face ResNetModel directory: config.json + model.safetensors) or "word_vectors" (a GloVe .txt or
      fastText .vec file).
    paths: parameter paths ("image_encoder/densenet") the file is written into (several: one copy each).
  """

  kind: str
  paths: tuple[str, ...]


def module_fields(config: Mapping[str, Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
  """A model config section -> module attributes: minus "name" and `exclude`, dtype names resolved."""
  fields = {k: v for k, v in dict(config).items() if k != "name" and k not in exclude}
  if "dtype" in fields:
    if fields["dtype"] not in DTYPES:
      raise ValueError(f"model.dtype={fields['dtype']!r}; expected one of {sorted(DTYPES)}")
    fields["dtype"] = DTYPES[fields["dtype"]]
  return fields


class Family(nn.Module):
  """What the trainer, evaluation and prediction read of any family class, with the defaults of the optional
  members (a family overrides those it needs)."""

  task: ClassVar[str]
  pretrained_parts: ClassVar[dict[str, PretrainedPart]] = {}
  # The model config field that bounds a decode's length (max_decode_length), or None: transformer
  # families name "cache_length", their KV cache's positions (a decode of max_length tokens feeds positions
  # 0 .. max_length - 1, one cache slot each; a write past the cache would be clamped, not refused); a
  # recurrent decoder's state has no length, a classifier does not decode.
  decode_limit_field: ClassVar[str | None] = None

  @classmethod
  def max_decode_length(cls, model_config: Any) -> int | None:
    """The most tokens (end token included) one decode of `model_config`'s model may generate: the config field
    `decode_limit_field` (the KV cache's positions); None where nothing bounds it (recurrent decoders,
    classifiers)."""
    field = cls.decode_limit_field
    if field is None:
      return None
    return int(model_config.get(field, getattr(cls, field)))  # A config without the field: the module default.

  @staticmethod
  def check_initialization(previous: ml_collections.ConfigDict, current: ml_collections.ConfigDict, path: str) -> None:
    """Refuses (ConfigError) to start a run of model config `current` from `path` (config.init.from_workdir),
    a run of model config `previous` of the same family and parameter names; by default any such run will do."""
    del previous, current, path


class Captioner(Family):
  """The interface of a report generator (images -> text), used by training, decoding and prediction.

  __call__(images, tokens, train)   teacher forcing: images [batch, views, H, W, 3], tokens [batch,
                                    length] (input tokens, from the start token) -> {"logits": [batch,
                                    length, vocab], "attention": [batch, length, regions] or None}
  encode(images, train)             -> memory: a dict of [batch, ...] arrays (image features)
  init_cache(memory)                -> cache: the decoder state (or KV cache) plus what it reads of the
                                    memory, [batch, ...] leaves
  decode_step(tokens, cache, position)
                                    tokens [batch] at `position` (0: the start token) -> (logits
                                    [batch, vocab], cache, attention [batch, regions] or None)
  """

  task: ClassVar[str] = "captioning"

  def decoder_step_fn(self, variables: Any):
    """decoding.py's step function `(tokens, cache, position) -> (logits, cache)` over `variables`."""

    def step_fn(tokens: jax.Array, cache: Any, position: jax.Array):
      logits, cache, _ = self.apply(variables, tokens, cache, position, method="decode_step")
      return logits, cache

    return step_fn


class Classifier(Family):
  """The interface of a multi-label image classifier: `__call__(images [batch, H, W, 3], train)` -> a dict
  with the logits the task reads (see the family). What differs between families stays in the family:
  which logits train and predict (`logits_key`) and what a prediction returns beside the probabilities
  (`predictions`: AG-CNN's box, heatmap and crop)."""

  task: ClassVar[str] = "classification"

  def logits_key(self) -> str:
    """The output key that training and prediction read."""
    return "logits"

  def loss(self, outputs: dict[str, jax.Array], labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """Mean binary cross-entropy of `logits_key`'s logits against 0/1 labels [batch, classes]; `mask` (bool
    [batch]) leaves padding examples out."""
    return binary_cross_entropy(outputs[self.logits_key()], labels, mask)

  def predictions(self, outputs: dict[str, jax.Array], attention: bool = False) -> dict[str, jax.Array]:
    """The outputs a prediction returns: {"probabilities": [batch, classes]} (and the family's extras; with
    `attention` its attention too). Traceable."""
    del attention
    return {"probabilities": jax.nn.sigmoid(outputs[self.logits_key()].astype(jnp.float32))}


def binary_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Mean over classes, then over the examples `mask` keeps (all without one), of the binary cross-entropy of
  `logits` against 0/1 `labels`, both [batch, classes]."""
  logits, labels = logits.astype(jnp.float32), labels.astype(jnp.float32)
  # log(sigmoid(z)) = -softplus(-z), log(1 - sigmoid(z)) = -softplus(z): stable for large |z|.
  per_example = jnp.mean(labels * jax.nn.softplus(-logits) + (1 - labels) * jax.nn.softplus(logits), axis=-1)
  if mask is None:
    return jnp.mean(per_example)
  weights = mask.astype(jnp.float32)
  return jnp.sum(per_example * weights) / jnp.maximum(jnp.sum(weights), 1.0)
