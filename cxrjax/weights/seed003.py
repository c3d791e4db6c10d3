"""Seed 003 importers: the seed's PyTorch state dict (ResNetGraphCaptioner), and a Hugging Face ResNetModel
directory as the encoder's pretrained weights (the seed starts from microsoft/resnet-50).

Every Flax variable of `GraphCaptioner` maps to exactly one source tensor (torch Linear [out, in] ->
Dense [in, out], conv OIHW -> HWIO, the fused `in_proj_weight` [3d, d] -> `in_proj_kernel` [d, 3d],
`pos_encoder` [1, P, d] -> [P, d]). A tensor the model needs but the file lacks, a tensor the file has but
the model does not use, and a tensor of another shape are errors that name them. Batch-norm
`num_batches_tracked` counters are dropped (inference does not use them).

The architecture comes from the tensor shapes, except what shapes cannot say: the number of attention
heads (an argument; the seed's 8), dropout, the graph window and steps (the seed's 0.1, 3 and 3), and
where the ResNet strides (microsoft/resnet-50's layout; a Hugging Face directory's config.json says).
"""

import collections
import json
import pathlib
import re
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from cxrjax.core import recipes
from cxrjax.data import datasets
from cxrjax.core.errors import ConfigError
from cxrjax.models import graph_captioner
from cxrjax.models.encoders import resnet
from cxrjax.weights import formats, store
from cxrjax.weights.store import WeightsError

FORMAT = "seed003-torch"  # The ResNet-50 + graph + transformer captioner's PyTorch state dict.
MODEL_NAME = "graph_captioner"
SEED_NUM_HEADS = 8
# generate_caption(max_len=80): at most 80 generated tokens, the [SEP] that stops it included (decoding.py's
# max_length); its last step feeds position 79, so 80 cache positions hold them.
SEED_MAX_TOKENS = 80

_BN_LEAVES = {
  ("params", "scale"): "weight",
  ("params", "bias"): "bias",
  ("batch_stats", "mean"): "running_mean",
  ("batch_stats", "var"): "running_var",
}


def _resnet_name(module_path: str) -> str:
  """Flax ResNet module path -> transformers ResNetModel module name ("embedder/convolution" ->
  "embedder.embedder.convolution", "stage1_layer0/layer2/normalization" -> "encoder.stages.1.layers.0.
  layer.2.normalization")."""
  match = re.fullmatch(r"embedder/(convolution|normalization)", module_path)
  if match:
    return f"embedder.embedder.{match.group(1)}"
  match = re.fullmatch(r"stage(\d+)_layer(\d+)/(shortcut|layer(\d+))/(convolution|normalization)", module_path)
  if match:
    stage, layer, block, index, part = match.groups()
    block = "shortcut" if block == "shortcut" else f"layer.{index}"
    return f"encoder.stages.{stage}.layers.{layer}.{block}.{part}"
  raise KeyError(module_path)


def _resnet_source(collection: str, module_path: str, leaf: str) -> tuple[str, Callable]:
  module = _resnet_name(module_path)
  if module.endswith("normalization"):
    return f"{module}.{_BN_LEAVES[collection, leaf]}", lambda a: a
  return f"{module}.weight", lambda a: np.transpose(a, (2, 3, 1, 0))  # OIHW -> HWIO.


def _seed_source(collection: str, module_path: str, leaf: str) -> tuple[str, Callable]:
  """Source tensor name of one GraphCaptioner variable in the seed's state dict, and its layout change."""
  if module_path.startswith("image_encoder/"):
    name, to_flax = _resnet_source(collection, module_path.removeprefix("image_encoder/"), leaf)
    return f"encoder.{name}", to_flax
  if module_path == "" and leaf == "pos_encoder":
    return "pos_encoder", lambda a: a[0] if a.ndim == 3 and a.shape[0] == 1 else a  # [1, P, d] -> [P, d]
  if module_path == "embedding":
    return "embedding.weight", lambda a: a
  module = re.sub(r"^decoder/layers_(\d+)", r"decoder.layers.\1", module_path).replace("/", ".")
  if leaf == "in_proj_kernel":
    return f"{module}.in_proj_weight", np.transpose
  if leaf == "in_proj_bias":
    return f"{module}.in_proj_bias", lambda a: a
  if re.search(r"\.norm\d$", module):
    return f"{module}.{_BN_LEAVES[collection, leaf]}", lambda a: a
  if leaf == "kernel":
    return f"{module}.weight", np.transpose  # Linear [out, in] -> Dense [in, out].
  return f"{module}.{leaf}", lambda a: a


def read_torch(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The seed's `roco_best_model.bin` (a state dict; weights only, no pickled code) -> {name: float32 array}.
  A DataParallel `module.` prefix is removed; `num_batches_tracked` counters are dropped."""
  path = pathlib.Path(path)
  checkpoint = store.read_torch_checkpoint(path)
  if not isinstance(checkpoint, dict) or not all(hasattr(v, "numpy") for v in checkpoint.values()):
    raise WeightsError(f"{path}: expected a state dict of tensors (the seed's model.state_dict())")
  return {
    re.sub(r"^module\.", "", name): tensor.detach().cpu().float().numpy()
    for name, tensor in checkpoint.items()
    if not name.endswith("num_batches_tracked")
  }


def _require(tensors: dict[str, np.ndarray], names: list[str], what: str) -> None:
  missing = [name for name in names if name not in tensors]
  if missing:
    raise WeightsError(f"not a {what} checkpoint: missing {missing}; first names: {sorted(tensors)[:5]}")


def infer_resnet_config(tensors: dict[str, np.ndarray], prefix: str = "") -> resnet.ResNetConfig:
  """The ResNet that `{prefix}embedder...` / `{prefix}encoder.stages...` tensors describe (strides as
  microsoft/resnet-50: on the 3x3 convolutions, none in the first stage)."""
  stem = f"{prefix}embedder.embedder.convolution.weight"
  _require(tensors, [stem], "ResNet")
  layers = collections.defaultdict(set)
  for name in tensors:
    match = re.fullmatch(re.escape(prefix) + r"encoder\.stages\.(\d+)\.layers\.(\d+)\..*", name)
    if match:
      layers[int(match.group(1))].add(int(match.group(2)))
  if not layers or sorted(layers) != list(range(len(layers))):
    raise WeightsError(f"not a ResNet checkpoint: stages {sorted(layers)} found under '{prefix}encoder.stages'")
  hidden_sizes, depths = [], []
  for stage in range(len(layers)):
    expand = f"{prefix}encoder.stages.{stage}.layers.0.layer.2.convolution.weight"
    reduce = f"{prefix}encoder.stages.{stage}.layers.0.layer.0.convolution.weight"
    _require(tensors, [expand, reduce], "bottleneck ResNet")
    hidden_sizes.append(int(tensors[expand].shape[0]))
    depths.append(max(layers[stage]) + 1)
  reduce = tensors[f"{prefix}encoder.stages.0.layers.0.layer.0.convolution.weight"]
  return resnet.ResNetConfig(
    embedding_size=int(tensors[stem].shape[0]),
    hidden_sizes=tuple(hidden_sizes),
    depths=tuple(depths),
    reduction=hidden_sizes[0] // int(reduce.shape[0]),
  )


def infer_config(
  tensors: dict[str, np.ndarray], num_heads: int = SEED_NUM_HEADS
) -> tuple[ml_collections.ConfigDict, int]:
  """The seed checkpoint's `model` config section (name "graph_captioner") and vocabulary size."""
  _require(
    tensors,
    ["vis_proj.weight", "embedding.weight", "pos_encoder", "decoder.layers.0.linear1.weight"],
    "seed 003 (ResNetGraphCaptioner)",
  )
  encoder = infer_resnet_config(tensors, prefix="encoder.")
  layer_indices = {
    int(match.group(1)) for match in (re.match(r"decoder\.layers\.(\d+)\.", name) for name in tensors) if match
  }
  num_layers = max(layer_indices) + 1  # A gap in the indices shows up as missing keys.
  vocab_size, d_model = tensors["embedding.weight"].shape
  if d_model % num_heads:
    raise WeightsError(f"d_model {d_model} (from embedding.weight) is not divisible by num_heads {num_heads}")
  position_rows = tensors["pos_encoder"].shape[-2] if tensors["pos_encoder"].ndim >= 2 else 0
  config = ml_collections.ConfigDict(
    dict(
      name=MODEL_NAME,
      encoder=encoder.to_dict(),
      d_model=int(d_model),
      num_heads=num_heads,
      num_layers=num_layers,
      ff_dim=int(tensors["decoder.layers.0.linear1.weight"].shape[0]),
      dropout_rate=0.1,
      graph_window=3,
      graph_steps=3,
      max_positions=int(position_rows),
      cache_length=min(SEED_MAX_TOKENS, int(position_rows)),
      dtype="float32",
    )
  )
  return config, int(vocab_size)


def fit_lengths(config: ml_collections.ConfigDict, model: Any) -> ml_collections.ConfigDict:
  """`config` (recipes.rocov2_experiment's, which decodes as the seed's generate_caption: greedy, nothing
  blocked, at most 80 tokens) decoding at most the model's `cache_length` tokens where the checkpoint's
  position table is shorter, as far as the seed's loop can run; returns `config`, changed in place."""
  config.decode.max_length = min(config.decode.max_length, int(model["cache_length"]))
  return config


def _abstract_variables(model: Any) -> dict[str, Any]:
  images = jnp.zeros((1, 1, 64, 64, 3))
  tokens = jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), images, tokens, train=False))


def _build(model_config: ml_collections.ConfigDict, vocab_size: int) -> graph_captioner.GraphCaptioner:
  return graph_captioner.GraphCaptioner.from_config(model_config, vocab_size, lambda path: False)


def _convert(
  tensors: dict[str, np.ndarray],
  abstract: dict[str, Any],
  source_of: Callable[[str, str, str], tuple[str, Callable]],
  source: str,
  what: str,
  ignored: Callable[[str], bool] = lambda name: False,
) -> dict[str, Any]:
  """Source tensors -> Flax variables shaped as `abstract` (store.strict_map); `source_of(collection,
  module path, leaf)` names each one's tensor."""
  return store.strict_map(
    tensors, abstract, lambda path: source_of(path[0], "/".join(path[1:-1]), path[-1]), source, what, ignored
  )


def convert(
  tensors: dict[str, np.ndarray], model_config: ml_collections.ConfigDict, vocab_size: int, source: str = "checkpoint"
) -> dict[str, Any]:
  """The seed's state dict -> `GraphCaptioner` variables {"params", "batch_stats"} for `model_config`."""
  abstract = _abstract_variables(_build(model_config, vocab_size))
  return _convert(
    tensors,
    abstract,
    _seed_source,
    source,
    f"the seed 003 captioner (d_model {model_config.d_model}, {model_config.num_layers} layers)",
  )


def import_seed003(
  path: str | pathlib.Path, num_heads: int = SEED_NUM_HEADS
) -> tuple[dict[str, Any], ml_collections.ConfigDict, int]:
  """Reads the seed's state dict; returns `(variables, model_config, vocab_size)`. The vocabulary is the
  tokenizer's (bert-base-uncased: 30522), which the checkpoint does not contain: check it against it."""
  tensors = read_torch(path)
  try:
    model_config, vocab_size = infer_config(tensors, num_heads)
  except WeightsError as error:
    raise WeightsError(f"{path}: {error}") from error
  return convert(tensors, model_config, vocab_size, source=str(path)), model_config, vocab_size


@formats.register(
  FORMAT,
  options=("tokenizer", "num_heads"),
  help="seed 003's roco_best_model.bin -> a workdir that evaluate / predict / config.init.from_workdir read",
)
def port(
  checkpoint: str | pathlib.Path,
  output: str | pathlib.Path,
  tokenizer: str | pathlib.Path | None = None,
  num_heads: int | None = None,
) -> formats.Ported:
  """The seed-003 captioner's state dict -> the run of a workdir (config.json, tokenizer.json,
  checkpoints/best) that `evaluate`, `predict` and `config.init.from_workdir` read."""
  digest = formats.checkpoint_digest(checkpoint, output)
  if not tokenizer:
    raise ConfigError(
      f"--format {FORMAT} needs --tokenizer: bert-base-uncased's vocab.txt (or a "
      "tokenizer.json); the checkpoint does not contain the vocabulary"
    )
  loaded = datasets.load_or_build_tokenizer(
    ml_collections.ConfigDict(dict(name="rocov2", tokenizer=str(tokenizer), cleaning="none")), None
  )
  num_heads = SEED_NUM_HEADS if num_heads is None else num_heads
  variables, model_config, vocab_size = import_seed003(checkpoint, num_heads=num_heads)
  store.check_finite_variables(variables, str(checkpoint))  # NaN weights would caption with exit status 0.
  if vocab_size != len(loaded):
    raise WeightsError(
      f"{checkpoint}: its vocabulary has {vocab_size} rows, the tokenizer {tokenizer} {len(loaded)} tokens"
    )
  model_config.encoder.preprocessing = dict(recipes.IMAGENET_PREPROCESSING)
  # Seed 003's ROCOv2 setup, decoding as the seed.
  config = fit_lengths(recipes.rocov2_experiment(model_config.to_dict(), tokenizer=str(tokenizer)), model_config)
  return formats.Ported(
    dict(vocab_size=vocab_size, d_model=model_config.d_model, num_layers=model_config.num_layers),
    config=config,
    tokenizer=loaded,
    variables=variables,
    meta={"imported_from": str(checkpoint), "sha256": digest},
  )


def read_hf_resnet(directory: str | pathlib.Path) -> tuple[dict[str, np.ndarray], resnet.ResNetConfig]:
  """A Hugging Face ResNetModel (or ResNetForImageClassification) directory, `config.json` +
  `model.safetensors` -> ({ResNetModel tensor name: array}, ResNetConfig). A `resnet.` prefix is removed."""
  directory = pathlib.Path(directory)
  config_path, tensors_path = directory / "config.json", directory / "model.safetensors"
  for path in (config_path, tensors_path):
    if not path.is_file():
      raise WeightsError(
        f"{path}: not found; expected a Hugging Face ResNetModel directory (config.json + model.safetensors)"
      )
  try:
    hf_config = json.loads(config_path.read_text())
  except json.JSONDecodeError as error:
    raise WeightsError(f"{config_path}: not valid JSON ({error})") from error
  if (
    hf_config.get("model_type") != "resnet"
    or hf_config.get("layer_type", "bottleneck") != "bottleneck"
    or hf_config.get("hidden_act", "relu") != "relu"
    or hf_config.get("num_channels", 3) != 3
  ):
    raise WeightsError(
      f"{config_path}: expected a ResNet of bottleneck layers with ReLU over 3 channels "
      f"(model_type 'resnet'), got model_type={hf_config.get('model_type')!r}, "
      f"layer_type={hf_config.get('layer_type')!r}, hidden_act={hf_config.get('hidden_act')!r}"
    )
  try:
    flat = safetensors.numpy.load_file(tensors_path)
  except Exception as error:  # safetensors raises its own SafetensorError and OSError kinds.
    raise WeightsError(f"{tensors_path}: cannot be read as safetensors ({error})") from error
  tensors = {
    name.removeprefix("resnet."): np.asarray(value, np.float32)
    for name, value in flat.items()
    if not name.endswith("num_batches_tracked")
  }
  try:
    config = resnet.ResNetConfig(
      embedding_size=int(hf_config.get("embedding_size", 64)),
      hidden_sizes=tuple(int(v) for v in hf_config.get("hidden_sizes", (256, 512, 1024, 2048))),
      depths=tuple(int(v) for v in hf_config.get("depths", (3, 4, 6, 3))),
      downsample_in_first_stage=bool(hf_config.get("downsample_in_first_stage", False)),
      downsample_in_bottleneck=bool(hf_config.get("downsample_in_bottleneck", False)),
    )
  except ValueError as error:
    raise WeightsError(f"{config_path}: {error}") from error
  return tensors, config


def import_hf_resnet(directory: str | pathlib.Path) -> tuple[dict[str, Any], resnet.ResNetConfig]:
  """A Hugging Face ResNet directory -> (`ResNet` variables {"params", "batch_stats"}, its ResNetConfig).
  ResNetForImageClassification's head (`classifier.*`) is ignored, as `ResNetModel.from_pretrained` does."""
  tensors, config = read_hf_resnet(directory)
  model = resnet.ResNet(config)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)), train=False))
  variables = _convert(
    tensors,
    abstract,
    _resnet_source,
    str(directory),
    f"ResNet{tuple(config.depths)} of widths {tuple(config.hidden_sizes)}",
    ignored=lambda name: name.startswith("classifier."),
  )
  return variables, config


def save(
  directory: str | pathlib.Path,
  variables: dict[str, Any],
  model_config: ml_collections.ConfigDict,
  vocab_size: int,
  source: dict[str, Any],
) -> None:
  """Writes imported GraphCaptioner weights: model.json holds the `model` config section."""
  store.save_weights(
    directory,
    variables,
    {"model": MODEL_NAME, "config": model_config.to_dict(), "vocab_size": vocab_size, "source": source},
  )


def load(directory: str | pathlib.Path) -> tuple[ml_collections.ConfigDict, dict[str, Any], int]:
  """Reads weights written by `save`: `(model_config, variables, vocab_size)`, checked against the
  architecture model.json describes."""
  variables, model = store.load_weights(directory)
  if model.get("model") != MODEL_NAME:
    raise WeightsError(f"{directory}: holds a {model.get('model')!r} model, not a {MODEL_NAME}")
  model_config, vocab_size = ml_collections.ConfigDict(model["config"]), int(model["vocab_size"])
  abstract = _abstract_variables(_build(model_config, vocab_size))
  expected = {k: v.shape for k, v in flax.traverse_util.flatten_dict(abstract, sep="/").items()}
  found = {k: v.shape for k, v in flax.traverse_util.flatten_dict(variables, sep="/").items()}
  if expected != found:
    differing = sorted(set(expected.items()) ^ set(found.items()))[:5]
    raise WeightsError(f"{directory}: tensors do not match the architecture in model.json: {differing}")
  return model_config, variables, vocab_size
