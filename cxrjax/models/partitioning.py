"""Logical axis names of parameters, which cxrjax/core/sharding.py maps to the device mesh by config.

The transformer families name the axes of their kernels and embeddings, as flax's examples and MaxText:

    embed    the model width (a residual stream)          heads   attention heads x head dim (q/k/v columns)
    mlp      the feed-forward hidden units                vocab   the vocabulary (embedding rows, logits)

`logical(init, names)` is an initialiser with names. They are recorded only inside `logical_axes(...)`,
where flax's `nn.with_logical_partitioning` boxes every named value (nn.LogicallyPartitioned) and the
function returns their PartitionSpec tree (unnamed parameters: PartitionSpec()). Everywhere else `init`
returns the same plain arrays as without names, so the variables every other piece of code sees
(training, checkpoints, the importers of cxrjax/weights, which map tensors by path) are unchanged.
"""

import contextvars
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax

EMBED, HEADS, MLP, VOCAB = "embed", "heads", "mlp", "vocab"

_RECORDING = contextvars.ContextVar("cxrjax_logical_axes", default=False)


def logical(init: Callable[..., jax.Array], names: Sequence[str | None]) -> Callable[..., Any]:
  """`init` whose value carries the logical axis `names` (one per dimension, None: unnamed) inside
  `logical_axes`; the same values either way."""
  if not all(name is None or isinstance(name, str) for name in names):
    raise TypeError(f"logical axis names must be strings or None, got {names!r}")
  boxed = nn.with_logical_partitioning(init, tuple(names))

  def initializer(*args, **kwargs):
    return boxed(*args, **kwargs) if _RECORDING.get() else init(*args, **kwargs)

  return initializer


def dense(features: int, names: tuple[str | None, str | None], dtype: Any, name: str | None = None) -> nn.Dense:
  """nn.Dense with flax's default initialisers, its kernel [in, out] named `names` and its bias [out]
  named as the kernel's output axis."""
  return nn.Dense(
    features,
    dtype=dtype,
    name=name,
    kernel_init=logical(nn.linear.default_kernel_init, names),
    bias_init=logical(nn.initializers.zeros_init(), names[-1:]),
  )


def logical_axes(init_fn: Callable[..., Any], *args) -> Any:
  """The PartitionSpec tree of logical names of `init_fn(*args)`'s variables (traced, not run): the
  names `logical` gives, PartitionSpec() for every other variable."""
  token = _RECORDING.set(True)
  try:
    # A new function for JAX's trace cache: a trace of `init_fn` itself, with or without the names, is
    # never reused for the other.
    boxed = jax.eval_shape(lambda *a: init_fn(*a), *args)
  finally:
    _RECORDING.reset(token)
  return nn.get_partition_spec(boxed)
