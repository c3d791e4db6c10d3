"""Ported weights on disk: `DIR/variables.safetensors` + `DIR/model.json`; loading needs no torch or keras.

`variables.safetensors` holds the Flax variable collections flattened to "/"-joined keys
("params/conv0/kernel", "batch_stats/norm0/mean"); `model.json` says which model and architecture the
tensors belong to, the class names, and where they came from.
"""

import json
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any

import flax
import numpy as np
import safetensors.numpy
from etils import epath

from cxrjax.core import files
from cxrjax.core.errors import UserError

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
    raise WeightsError(f"{path}: {_torch_load_problem(error)}") from None


def _torch_load_problem(error: Exception) -> str:
  """torch.load's error in one line, without its advice to retry with weights_only=False: for a file
  that holds pickled code, that would mean running it."""
  text = str(error)
  if "weights_only" in text or "WeightsUnpickler" in text:
    # Only what was refused: torch's advice (allow the global, or weights_only=False) would run the file.
    detail = re.split(r"\.? Please use|Check the documentation", text.split("WeightsUnpickler error:", 1)[-1])[0]
    detail = " ".join(detail.split())
    return (
      "holds pickled objects other than tensors and plain containers, which are never loaded "
      f"(torch.load(weights_only=True) refused: {detail[:200] or type(error).__name__}); export a "
      "state dict of tensors (or safetensors) from a trusted copy"
    )
  return f"cannot be read by torch.load as a checkpoint ({text.split('. ')[0][:300]})"


# A model variable's path (collection, modules..., leaf) -> (the checkpoint tensor's name, its layout change).
SourceOf = Callable[[tuple[str, ...]], tuple[str, Callable[[np.ndarray], np.ndarray]]]


def _listed(names: list[str], limit: int = 10) -> str:
  return f"{names[:limit]}{' ...' if len(names) > limit else ''}"


def strict_map(
  tensors: dict[str, np.ndarray],
  abstract: Any,
  source_of: SourceOf,
  source: str,
  what: str,
  ignored: Callable[[str], bool] = lambda name: False,
) -> dict[str, Any]:
  """Checkpoint tensors -> Flax variables shaped as `abstract` (nested dicts of shapes), each variable from
  the tensor `source_of` names, in its layout. The one name map check of every importer: tensors the
  model needs but the file lacks, tensors no variable uses (unless `ignored`) and tensors of another
  shape are one WeightsError naming them, `source` (the file) and `what` (the model it should fit)."""
  flat, missing, wrong_shape, used = {}, [], [], set()
  for path, target in flax.traverse_util.flatten_dict(abstract).items():
    try:
      name, to_flax = source_of(path)
    except KeyError:
      raise WeightsError(
        f"{source}: the model's variable {'/'.join(path)} has no source tensor in the name map (a cxrjax bug)"
      ) from None
    if name not in tensors:
      missing.append(name)
      continue
    used.add(name)
    value = np.asarray(to_flax(tensors[name]), np.float32)
    if value.shape != tuple(target.shape):
      wrong_shape.append(f"{name} {tuple(tensors[name].shape)} (model {'/'.join(path)} needs {tuple(target.shape)})")
      continue
    flat[path] = value
  missing = sorted(set(missing))  # A fused tensor (BLIP's qkv) feeds several variables: named once.
  unexpected = sorted(name for name in set(tensors) - used if not ignored(name))
  problems = []
  if missing:
    problems.append(f"{len(missing)} missing tensors {_listed(missing)}")
  if unexpected:
    problems.append(f"{len(unexpected)} unexpected tensors {_listed(unexpected)}")
  if wrong_shape:
    problems.append(f"{len(wrong_shape)} tensors of the wrong shape {_listed(wrong_shape, 5)}")
  if problems:
    raise WeightsError(f"{source}: does not fit {what}: {'; '.join(problems)}")
  return flax.traverse_util.unflatten_dict(flat)


def check_finite(tensors: dict[str, Any], source: str) -> None:
  """Raises WeightsError naming the first (in name order) tensor with a NaN or infinite value: such
  weights would classify with finite-looking but meaningless outputs."""
  for name in sorted(tensors):
    value = np.asarray(tensors[name])
    if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
      count = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
      raise WeightsError(
        f"{source}: tensor {name} has {count} non-finite value(s) (NaN or infinity) "
        f"of {value.size}; the checkpoint is damaged or its training diverged"
      )


def check_finite_variables(variables: dict[str, Any], source: str) -> None:
  """`check_finite` over nested variable collections, naming a tensor by its "/"-joined path."""
  check_finite(flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/"), source)


def save_weights(directory: str | os.PathLike, variables: dict[str, Any], model: dict[str, Any]) -> None:
  """Writes `variables` (nested dicts of arrays) and the `model` description to `directory`, each file
  whole or not at all; model.json last, so that a directory with it is complete. Local or gs://."""
  directory = epath.Path(directory)
  if directory.exists() and not directory.is_dir():
    raise WeightsError(f"{directory}: exists and is not a directory; the output is a folder")
  directory.mkdir(parents=True, exist_ok=True)
  flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(variables), sep="/")
  tensors = {key: np.ascontiguousarray(np.asarray(value)) for key, value in flat.items()}
  with files.replaced_on_success(directory / VARIABLES_FILE) as temporary:
    safetensors.numpy.save_file(tensors, temporary)
  files.write_json(directory / MODEL_FILE, model, indent=2, sort_keys=True)


def load_weights(directory: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
  """Returns `(variables, model)` as written by `save_weights` (local or gs://)."""
  directory = epath.Path(directory)
  model_path, tensors_path = directory / MODEL_FILE, directory / VARIABLES_FILE
  for path in (model_path, tensors_path):
    if not path.is_file():
      raise WeightsError(f"{path}: not found; --weights expects a directory written by `cxrjax port-weights`")
  try:
    model = json.loads(model_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise WeightsError(f"{model_path}: not valid JSON ({error})") from None
  try:
    # safetensors reads local files only (memory-mapped); a URL's bytes are read through epath.
    flat = (
      safetensors.numpy.load(tensors_path.read_bytes())
      if files.is_url(tensors_path)
      else safetensors.numpy.load_file(tensors_path)
    )
  except Exception as error:  # safetensors raises its own SafetensorError and OSError kinds.
    raise WeightsError(f"{tensors_path}: cannot be read as safetensors ({error})") from error
  if not isinstance(model, dict):
    raise WeightsError(f"{model_path}: expected a JSON object, got {type(model).__name__}")
  check_finite(flat, str(tensors_path))
  variables = flax.traverse_util.unflatten_dict(flat, sep="/")
  return variables, model
