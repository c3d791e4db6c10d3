"""The model families: config `model.name` -> its flax module class (a models/base.Family).

A family is added by writing its module, with `@base.FAMILIES.register("name")` on its class (and its
importer, config and tests), and importing that module here; the trainer, evaluation and command line do
not change. tests/models/test_contract.py runs every registered family.
"""

from typing import Any

# Each family module registers its class in FAMILIES when imported.
from cxrjax.models import agcnn  # noqa: F401  (registers "agcnn")
from cxrjax.models import attention_captioner  # noqa: F401  (registers "attention_captioner")
from cxrjax.models import base
from cxrjax.models import blip  # noqa: F401  (registers "blip")
from cxrjax.models import cam_captioner  # noqa: F401  (registers "cam_captioner")
from cxrjax.models import chexnet  # noqa: F401  (registers "chexnet")
from cxrjax.models import git  # noqa: F401  (registers "git")
from cxrjax.models import graph_captioner  # noqa: F401  (registers "graph_captioner")
from cxrjax.models import lstm_captioner  # noqa: F401  (registers "lstm_captioner")

FAMILIES = base.FAMILIES


def get(name: str) -> type[base.Family]:
  """The family class of `model.name`; a ConfigError (a ValueError) lists the known names."""
  return FAMILIES.get(name)


def build(
  model_config: Any, vocab_size: int | None = None, is_frozen: base.IsFrozen = lambda module_path: False
) -> Any:
  """The module of `model_config` (`vocab_size`: captioners' output vocabulary, special tokens included)."""
  return get(model_config.name).from_config(model_config, vocab_size, is_frozen)


def max_decode_length(model_config: Any) -> int | None:
  """`model_config`'s family's max_decode_length (models/base.Family): the most tokens one decode may generate,
  or None where nothing bounds it."""
  return get(model_config.name).max_decode_length(model_config)
