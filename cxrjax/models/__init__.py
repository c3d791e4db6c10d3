"""The registry of model families: config `model.name` -> its flax module class (see models/base.py).

A family is added by writing its module (and importer, config and tests) and one line here; the trainer,
evaluation and command line do not change. tests/models/test_contract.py runs every family listed here.
"""

from typing import Any

from cxrjax.models import (agcnn, attention_captioner, base, blip, cam_captioner, git, graph_captioner,
                           lstm_captioner)


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
  """The family class of `model.name`; a ValueError lists the known names."""
  if name not in MODELS:
    raise ValueError(f"unknown model.name {name!r}; known: {sorted(MODELS)}")
  return MODELS[name]


def build(model_config: Any, vocab_size: int | None = None,
          is_frozen: base.IsFrozen = lambda module_path: False) -> Any:
  """The module of `model_config` (`vocab_size`: captioners' output vocabulary, special tokens included)."""
  return get(model_config.name).from_config(model_config, vocab_size, is_frozen)
