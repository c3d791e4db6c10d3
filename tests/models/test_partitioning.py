"""Logical axis names (cxrjax/models/partitioning.py): recorded by `logical_axes` on the transformer
families' kernels and embeddings, absent from every other `init` (the importers' variable trees)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from jax.sharding import PartitionSpec as P

from cxrjax import models
from cxrjax.models import partitioning


def _init(name):
  model = models.build(models.get(name).smoke_config(), 40)
  images = jnp.zeros((1, 1, 32, 32, 3))
  return lambda: model.init(jax.random.key(0), images, jnp.zeros((1, 3), jnp.int32))


def test_git_kernels_and_embeddings_have_logical_names_only_inside_logical_axes():
  init = _init("git")
  specs = partitioning.logical_axes(init)["params"]
  text = specs["text_decoder"]["layers_0"]
  assert text["attention"]["query"]["kernel"] == P("embed", "heads")
  assert text["attention"]["query"]["bias"] == P("heads")
  assert text["attention"]["output"]["kernel"] == P("heads", "embed")
  assert text["intermediate"]["kernel"] == P("embed", "mlp")
  assert text["output"]["kernel"] == P("mlp", "embed")
  assert text["attention"]["norm"]["scale"] == P()  # Unnamed: replicated by any rules.
  assert specs["embeddings"]["word_embeddings"]["embedding"] == P("vocab", "embed")
  assert specs["output"]["kernel"] == P("embed", "vocab")
  vision = specs["image_encoder"]["layers_0"]
  assert vision["self_attn"]["k_proj"]["kernel"] == P("embed", "heads")
  assert vision["mlp"]["fc1"]["kernel"] == P("embed", "mlp") and vision["mlp"]["fc2"]["kernel"] == P("mlp", "embed")
  # Plain init (the same function: JAX's trace cache must not mix the two): plain arrays under the same
  # names and shapes as the named ones.
  plain = jax.eval_shape(init)
  assert partitioning.logical_axes(init)["params"] == specs
  assert not any(
    isinstance(leaf, nn.LogicallyPartitioned)
    for leaf in jax.tree.leaves(plain, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
  )
  assert (
    jax.tree.map(lambda a: a.shape, plain)["params"]
    == jax.tree.map(lambda a, s: a.shape, plain, partitioning.logical_axes(init), is_leaf=lambda x: isinstance(x, P))[
      "params"
    ]
  )


def test_graph_captioner_decoder_names_its_fused_projection():
  specs = partitioning.logical_axes(_init("graph_captioner"))["params"]
  layer = specs["decoder"]["layers_0"]
  assert layer["self_attn"]["in_proj_kernel"] == P("embed", "heads")
  assert layer["multihead_attn"]["out_proj"]["kernel"] == P("heads", "embed")
  assert layer["linear1"]["kernel"] == P("embed", "mlp")
  assert specs["embedding"]["embedding"] == P("vocab", "embed") and specs["fc_out"]["kernel"] == P("embed", "vocab")
  assert specs["image_encoder"] == jax.tree.map(
    lambda _: P(), specs["image_encoder"], is_leaf=lambda x: isinstance(x, P)
  )  # The CNN: unnamed.


def test_names_must_be_strings():
  with pytest.raises(TypeError, match="logical axis names"):
    partitioning.logical(nn.initializers.zeros, ("embed", object))
