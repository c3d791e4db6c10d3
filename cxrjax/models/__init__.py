"""The registry of model families: config `model.name` -> its flax module class (see models/base.py).

A family is added by writing its module (and importer, config and tests) and one line here; the trainer,
evaluation and command line do not change. tests/models/test_contract.py runs every family listed here.
"""

from typing import Any

from cxrjax.errors import ConfigError
from cxrjax.models import agcnn, attention_captioner, base, blip, cam_captioner, git, graph_captioner, lstm_captioner


MODELS: dict[str, type] = {
  "attention_captioner": attention_captioner.AttentionCaptioner,
  "lstm_captioner": lstm_captioner.LSTMCaptioner,
  "cam_captioner": cam_captioner.CAMCaptioner,
  "agcnn": agcnn.AGCNN,
  "graph_captioner": graph_captioner.GraphCaptioner,
  "blip": blip.BlipCaptioner,
  "git": git.GitCaptioner,
}


def get(name: str) -> type:
  """The family class of `model.name`; a ConfigError (a ValueError) lists the known names."""
  if name not in MODELS:
    raise ConfigError(f"config.model.name={name!r}: unknown model family; known: {', '.join(sorted(MODELS))}")
  return MODELS[name]


def build(
  model_config: Any, vocab_size: int | None = None, is_frozen: base.IsFrozen = lambda module_path: False
) -> Any:
  """The module of `model_config` (`vocab_size`: captioners' output vocabulary, special tokens included)."""
  return get(model_config.name).from_config(model_config, vocab_size, is_frozen)


def max_decode_length(model_config: Any) -> int | None:
  """The most tokens (end token included) one decode of `model_config`'s model may generate: the config
  field its family names in `decode_limit_field` (the KV cache's positions); None where nothing bounds it
  (recurrent decoders, classifiers)."""
  family = get(model_config.name)
  field = getattr(family, "decode_limit_field", None)
  if field is None:
    return None
  return int(model_config.get(field, getattr(family, field)))  # A config without the field: the module default.
