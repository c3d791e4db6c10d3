"""Ported weights on disk: `DIR/variables.safetensors` + `DIR/model.json`; loading needs no torch or keras.

`variables.safetensors` holds the Flax variable collections flattened to "/"-joined keys
("params/conv0/kernel", "batch_stats/norm0/mean"); `model.json` says which model and architecture the
tensors belong to, the class names, and where they came from.
"""

import json
import pathlib
from typing import Any

import flax
import numpy as np
import safetensors.numpy

from cxrjax.errors import UserError

VARIABLES_FILE = "variables.safetensors"
MODEL_FILE = "model.json"


class WeightsError(UserError):
  """A weights file or directory that cannot be used; the message names the file and the problem."""


def read_torch_checkpoint(path: str | pathlib.Path) -> Any:
  """`torch.load(path, map_location="cpu", weights_only=True)`: tensors and plain containers only, never
  pickled code. A missing or unreadable file is a WeightsError naming it."""
  import torch  # Imported here: only the PyTorch importers need it (a test-only dependency).
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightsError(f"{path}: not found")
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # Unpickling errors, zip errors and refused globals all end here.
    raise WeightsError(f"{path}: cannot be read by torch.load(weights_only=True) ({error})") from error


def save_weights(directory: str | pathlib.Path, variables: dict[str, Any], model: dict[str, Any]) -> None:
  """Writes `variables` (nested dicts of arrays) and the `model` description to `directory`."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
  tensors = {key: np.ascontiguousarray(np.asarray(value)) for key, value in flat.items()}
  safetensors.numpy.save_file(tensors, directory / VARIABLES_FILE)
  (directory / MODEL_FILE).write_text(json.dumps(model, indent=2, sort_keys=True) + "\n")


def load_weights(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns `(variables, model)` as written by `save_weights`."""
  directory = pathlib.Path(directory)
  model_path, tensors_path = directory / MODEL_FILE, directory / VARIABLES_FILE
  for path in (model_path, tensors_path):
    if not path.is_file():
      raise WeightsError(f"{path}: not found; --weights expects a directory written by `cxrjax port-weights`")
  try:
    model = json.loads(model_path.read_text())
  except json.JSONDecodeError as error:
    raise WeightsError(f"{model_path}: not valid JSON ({error})") from error
  try:
    flat = safetensors.numpy.load_file(tensors_path)
  except Exception as error:  # safetensors raises its own SafetensorError and OSError kinds.
    raise WeightsError(f"{tensors_path}: cannot be read as safetensors ({error})") from error
  variables = flax.traverse_util.unflatten_dict(flat, sep="/")
  return variables, model
