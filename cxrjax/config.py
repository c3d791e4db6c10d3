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
