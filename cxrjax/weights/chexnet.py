"""CheXNet / DenseNet checkpoint importers: Keras-2 HDF5 (h5py) and PyTorch (torch, weights only).

Both read a checkpoint into a flat `{source_name: array}` dict, infer the architecture from the tensor
shapes, and map every Flax variable of `cxrjax.models.densenet.DenseNet` to exactly one source tensor.
A tensor the model needs but the file lacks, or a tensor the file has but the model does not use, is an
error that lists them: a partial import never passes silently.
"""

import collections
import pathlib
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from cxrjax.models.encoders import densenet
from cxrjax.weights import formats, store
from cxrjax.weights.store import WeightsError

FORMATS = ("keras-h5", "torch")

# Flax variable leaf -> (Keras weight name, PyTorch tensor name, layout change).
_BN_LEAVES = {
  ("params", "scale"): ("gamma", "weight"),
  ("params", "bias"): ("beta", "bias"),
  ("batch_stats", "mean"): ("moving_mean", "running_mean"),
  ("batch_stats", "var"): ("moving_variance", "running_var"),
}


def _keras_layer(module_path: str) -> str:
  """Flax module path -> Keras DenseNet121 layer name (Keras 3 spelling; Keras 2's "/" normalised)."""
  if module_path == "conv0":
    return "conv1_conv"
  if module_path == "norm0":
    return "conv1_bn"
  if module_path == "norm5":
    return "bn"
  if module_path == "classifier":
    return "predictions"
  match = re.fullmatch(r"denseblock(\d+)_denselayer(\d+)/(norm1|conv1|norm2|conv2)", module_path)
  if match:
    block, layer, part = match.groups()
    suffix = {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn", "conv2": "2_conv"}[part]
    return f"conv{int(block) + 1}_block{layer}_{suffix}"
  match = re.fullmatch(r"transition(\d+)/(norm|conv)", module_path)
  if match:
    block, part = match.groups()
    return f"pool{int(block) + 1}_{'bn' if part == 'norm' else 'conv'}"
  raise KeyError(module_path)


def _torch_module(module_path: str) -> str:
  """Flax module path -> torchvision densenet121 module name."""
  if module_path == "classifier":
    return "classifier"
  match = re.fullmatch(r"denseblock(\d+)_denselayer(\d+)/(\w+)", module_path)
  if match:
    block, layer, part = match.groups()
    return f"features.denseblock{block}.denselayer{layer}.{part}"
  return "features." + module_path.replace("/", ".")


def _source_name(fmt: str, collection: str, module_path: str, leaf: str) -> tuple[str, Callable]:
  """Source tensor name for one Flax variable, and the function converting its layout."""
  is_norm = module_path.split("/")[-1].startswith("norm")
  is_conv = leaf == "kernel" and module_path != "classifier"
  if fmt == "keras-h5":
    layer = _keras_layer(module_path)
    if is_norm:
      return f"{layer}/{_BN_LEAVES[collection, leaf][0]}", lambda a: a
    return f"{layer}/{leaf}", lambda a: a  # Keras kernels are already HWIO / [in, out].
  module = _torch_module(module_path)
  if is_norm:
    return f"{module}.{_BN_LEAVES[collection, leaf][1]}", lambda a: a
  if leaf == "bias":
    return f"{module}.bias", lambda a: a
  if is_conv:
    return f"{module}.weight", lambda a: np.transpose(a, (2, 3, 1, 0))  # OIHW -> HWIO.
  return f"{module}.weight", lambda a: np.transpose(a)  # Linear [out, in] -> Dense [in, out].


def read_keras_h5(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a Keras HDF5 weights file (save_weights, or model.save's `model_weights` group).

  Returns `{"<layer>/<weight>": array}` with Keras 2 layer names such as "conv1/conv" normalised to
  the Keras 3 spelling "conv1_conv", and the ":0" suffixes dropped.
  """
  import h5py  # Imported here: only the Keras importer needs it.

  path = pathlib.Path(path)
  try:
    handle = h5py.File(path, "r")
  except OSError as error:
    raise WeightsError(f"{path}: not a readable HDF5 file ({error})") from error
  tensors = {}
  with handle:
    root = handle["model_weights"] if "model_weights" in handle else handle
    if "layer_names" not in root.attrs:
      raise WeightsError(f"{path}: no 'layer_names' attribute; not a Keras HDF5 weights file")
    for layer_name in root.attrs["layer_names"]:
      layer_name = layer_name.decode() if isinstance(layer_name, bytes) else str(layer_name)
      group = root[layer_name]
      for weight_name in group.attrs.get("weight_names", []):
        weight_name = weight_name.decode() if isinstance(weight_name, bytes) else str(weight_name)
        leaf = weight_name.split("/")[-1].split(":")[0]
        tensors[f"{layer_name.replace('/', '_')}/{leaf}"] = np.asarray(group[weight_name])
  return tensors


def read_torch(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """Reads a CheXNet `model.pth.tar` or a torchvision densenet state dict (weights only, no pickle code).

  Returns torchvision-style names ("features.denseblock1.denselayer1.norm1.weight", "classifier.bias"):
  the `module.` (DataParallel) and `densenet121.` (CheXNet wrapper) prefixes are removed, old-style
  `norm.1` / `conv.1` names are renamed, and CheXNet's `classifier.0` (Linear before Sigmoid) becomes
  `classifier`. Batch-norm `num_batches_tracked` counters are dropped (inference does not use them).
  """
  path = pathlib.Path(path)
  checkpoint = store.read_torch_checkpoint(path)
  state_dict = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
  if not isinstance(state_dict, dict) or not all(hasattr(v, "numpy") for v in state_dict.values()):
    raise WeightsError(f"{path}: expected a state dict of tensors (or a dict with 'state_dict')")
  tensors = {}
  for name, tensor in state_dict.items():
    name = re.sub(r"^(module\.)?(densenet121\.)?", "", name)
    name = re.sub(r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2.", name)
    name = re.sub(r"^classifier\.0\.", "classifier.", name)
    if name.endswith("num_batches_tracked"):
      continue
    tensors[name] = tensor.detach().cpu().float().numpy()
  return tensors


def infer_config(fmt: str, tensors: dict[str, np.ndarray]) -> densenet.DenseNetConfig:
  """The DenseNet architecture that the checkpoint's tensor names and shapes describe."""
  if fmt == "keras-h5":
    layer_pattern, conv2, stem, head = (
      r"conv(\d+)_block(\d+)_0_bn/gamma",
      "conv2_block1_2_conv/kernel",
      "conv1_conv/kernel",
      "predictions/bias",
    )
    block_offset, epsilon = 1, densenet.KERAS_BN_EPSILON
  else:
    layer_pattern, conv2, stem, head = (
      r"features\.denseblock(\d+)\.denselayer(\d+)\.norm1\.weight",
      "features.denseblock1.denselayer1.conv2.weight",
      "features.conv0.weight",
      "classifier.bias",
    )
    block_offset, epsilon = 0, densenet.TORCH_BN_EPSILON
  layers_per_block = collections.Counter()
  for name in tensors:
    match = re.fullmatch(layer_pattern, name)
    if match:
      layers_per_block[int(match.group(1)) - block_offset] += 1
  missing = [name for name in (conv2, stem) if name not in tensors]
  head_weight = head.rsplit("/" if fmt == "keras-h5" else ".", 1)[0] + ("/kernel" if fmt == "keras-h5" else ".weight")
  if head_weight in tensors and head not in tensors:
    missing.append(head)  # A head without its bias is a damaged file, not a model without a head.
  if not layers_per_block or missing:
    raise WeightsError(
      f"not a DenseNet checkpoint: no dense layers found or missing {missing}; first names: {sorted(tensors)[:5]}"
    )
  block_sizes = tuple(layers_per_block[index] for index in range(1, max(layers_per_block) + 1))
  growth_axis = -1 if fmt == "keras-h5" else 0  # Keras HWIO vs PyTorch OIHW.
  stem_axis = -1 if fmt == "keras-h5" else 0
  return densenet.DenseNetConfig(
    block_sizes=block_sizes,
    growth_rate=int(tensors[conv2].shape[growth_axis]),
    stem_features=int(tensors[stem].shape[stem_axis]),
    num_classes=int(tensors[head].shape[0]) if head in tensors else 0,
    bn_epsilon=epsilon,
  )


def convert(
  fmt: str, tensors: dict[str, np.ndarray], config: densenet.DenseNetConfig, source: str = "checkpoint"
) -> dict[str, Any]:
  """Maps source tensors onto the Flax variables of `DenseNet(config)`; strict about names and shapes."""
  model = densenet.DenseNet(config)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  return store.strict_map(
    tensors,
    abstract,
    lambda path: _source_name(fmt, path[0], "/".join(path[1:-1]), path[-1]),
    source,
    f"DenseNet{config.block_sizes}",
  )


def import_chexnet(fmt: str, path: str | pathlib.Path) -> tuple[dict[str, Any], densenet.DenseNetConfig]:
  """Reads a checkpoint in `fmt` ("keras-h5" or "torch"); returns `(variables, config)`."""
  if fmt not in FORMATS:
    raise WeightsError(f"unknown format {fmt!r}; expected one of {FORMATS}")
  path = pathlib.Path(path)
  if not path.is_file():
    raise WeightsError(f"{path}: not found")
  tensors = read_keras_h5(path) if fmt == "keras-h5" else read_torch(path)
  store.check_finite(tensors, str(path))
  try:
    config = infer_config(fmt, tensors)
  except WeightsError as error:
    raise WeightsError(f"{path}: {error}") from error
  return convert(fmt, tensors, config, source=str(path)), config


def save_chexnet(
  directory: str | pathlib.Path, variables: dict[str, Any], config: densenet.DenseNetConfig, source: dict[str, Any]
) -> None:
  """Writes ported DenseNet weights where `--weights DIRECTORY` finds them."""
  classes = (
    list(densenet.CHEXNET_CLASSES)
    if config.num_classes == len(densenet.CHEXNET_CLASSES)
    else [f"class_{index}" for index in range(config.num_classes)]
  )
  store.save_weights(
    directory, variables, {"model": "densenet", "config": config.to_dict(), "classes": classes, "source": source}
  )


def port(fmt: str, checkpoint: str | pathlib.Path, output: str | pathlib.Path) -> formats.Ported:
  """`cxrjax port-weights --format {keras-h5,torch} INPUT OUTPUT`: a CheXNet checkpoint -> a weights directory
  (`save_chexnet`) that `classify`, `serve --weights` and config.init.encoder read."""
  digest = formats.checkpoint_digest(checkpoint, output)
  variables, config = import_chexnet(fmt, checkpoint)
  save_chexnet(output, variables, config, source={"format": fmt, "file": str(checkpoint), "sha256": digest})
  return formats.Ported(
    dict(block_sizes=config.block_sizes, num_classes=config.num_classes, bn_epsilon=config.bn_epsilon)
  )


@formats.register("keras-h5", help="a CheXNet-Keras .h5 file -> a CheXNet weights directory")
def port_keras_h5(checkpoint: str | pathlib.Path, output: str | pathlib.Path) -> formats.Ported:
  return port("keras-h5", checkpoint, output)


@formats.register("torch", help="a CheXNet PyTorch .pth / .pth.tar file -> a CheXNet weights directory")
def port_torch(checkpoint: str | pathlib.Path, output: str | pathlib.Path) -> formats.Ported:
  return port("torch", checkpoint, output)


def load_chexnet(directory: str | pathlib.Path) -> tuple[densenet.DenseNetConfig, dict[str, Any], list[str]]:
  """Reads weights written by `save_chexnet`: `(config, variables, class_names)`."""
  variables, model = store.load_weights(directory)
  model_path = epath.Path(directory) / store.MODEL_FILE  # Local or gs://.
  if model.get("model") != "densenet":
    raise WeightsError(f"{model_path}: holds a {model.get('model')!r} model, not a DenseNet/CheXNet")
  for key, kind in (("config", dict), ("classes", list)):
    if not isinstance(model.get(key), kind):
      raise WeightsError(
        f"{model_path}: no {key!r} {'object' if kind is dict else 'list'}; was the "
        "directory written by `cxrjax port-weights`?"
      )
  try:
    config = densenet.DenseNetConfig.from_dict(model["config"])
  except (TypeError, ValueError) as error:
    raise WeightsError(f"{model_path}: its 'config' is not a DenseNet architecture ({error})") from None
  # Validate names and shapes against the architecture before any compute.
  abstract = jax.eval_shape(
    lambda: densenet.DenseNet(config).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False)
  )
  expected = {k: v.shape for k, v in flax.traverse_util.flatten_dict(abstract, sep="/").items()}
  found = {k: v.shape for k, v in flax.traverse_util.flatten_dict(variables, sep="/").items()}
  if expected != found:
    differing = sorted(set(expected.items()) ^ set(found.items()))[:5]
    raise WeightsError(f"{directory}: tensors do not match the architecture in model.json: {differing}")
  return config, variables, list(model["classes"])
