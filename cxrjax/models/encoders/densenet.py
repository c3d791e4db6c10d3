"""DenseNet-121 (Huang et al., 2017) in flax.linen, NHWC, as torchvision and Keras build it.

CheXNet (Rajpurkar et al., 2017) is this network with a 14-way sigmoid head. Parameter names follow
torchvision (`conv0`, `norm0`, `denseblock1_denselayer1/norm1`, `transition1/conv`, `norm5`,
`classifier`) so that imported checkpoints map onto them one to one.

Outputs, by name (a dict), for an input of `[batch, height, width, 3]` (224x224 gives 7x7 maps):
  "logits":       [batch, num_classes]        the head's pre-sigmoid scores (absent if num_classes=0)
  "pooled":       [batch, features]           global average of "feature_map" (1024 for DenseNet-121)
  "feature_map":  [batch, h/32, w/32, features] after the final batch norm and ReLU: Keras' `relu`
                  layer, i.e. the CheXNet-Keras model's third-last layer (before `avg_pool`,
                  `predictions`), which seed 000's custom encoder reads
  "block1".."block4": each dense block's output (before its transition), strides 4, 8, 16, 32
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# CheXNet's class order (Rajpurkar et al. 2017; the ChestX-ray14 findings).
CHEXNET_CLASSES = (
  "Atelectasis",
  "Cardiomegaly",
  "Effusion",
  "Infiltration",
  "Mass",
  "Nodule",
  "Pneumonia",
  "Pneumothorax",
  "Consolidation",
  "Edema",
  "Emphysema",
  "Fibrosis",
  "Pleural_Thickening",
  "Hernia",
)

# Keras' DenseNet uses 1.001e-5, torchvision 1e-5; the importer records which one the weights expect.
KERAS_BN_EPSILON = 1.001e-5
TORCH_BN_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class DenseNetConfig:
  """Architecture hyper-parameters; DenseNet-121 by default."""

  block_sizes: tuple[int, ...] = (6, 12, 24, 16)
  growth_rate: int = 32
  bottleneck_factor: int = 4  # bn_size: the 1x1 conv widens to bottleneck_factor * growth_rate.
  compression: float = 0.5  # transitions keep this fraction of channels.
  stem_features: int = 64
  num_classes: int = 14
  bn_epsilon: float = KERAS_BN_EPSILON
  bn_momentum: float = 0.9  # flax convention: new = momentum * old + (1 - momentum) * batch.

  @property
  def num_features(self) -> int:
    """Channels of the final feature map (1024 for DenseNet-121)."""
    channels = self.stem_features
    for index, size in enumerate(self.block_sizes):
      channels += size * self.growth_rate
      if index != len(self.block_sizes) - 1:
        channels = int(channels * self.compression)
    return channels

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "DenseNetConfig":
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"unknown DenseNetConfig fields: {sorted(unknown)}")
    values = dict(values)
    if "block_sizes" in values:
      values["block_sizes"] = tuple(values["block_sizes"])
    return cls(**values)


DENSENET121 = DenseNetConfig()


def config_from_section(section: Any, num_classes: int = 0) -> DenseNetConfig:
  """A model config's DenseNet `encoder` section -> DenseNetConfig (no classification head by default);
  its image `preprocessing` sub-section is the data pipeline's (cxrjax/data/transforms.py), not ours."""
  values = {k: v for k, v in dict(section).items() if k != "preprocessing"}
  return DenseNetConfig.from_dict(dict(values, num_classes=num_classes))


def tiny_config() -> dict[str, Any]:
  """The DenseNet section of smoke configs and tests: two blocks of one layer (same code path)."""
  return dict(block_sizes=(1, 1), growth_rate=4, stem_features=8, bn_epsilon=1e-5)


def _batch_norm(config: DenseNetConfig, train: bool, dtype: Any, param_dtype: Any, name: str):
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=config.bn_momentum,
    epsilon=config.bn_epsilon,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


def _conv(
  features: int, kernel: int, dtype: Any, param_dtype: Any, name: str, stride: int = 1, padding: int = 0
) -> nn.Conv:
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=[(padding, padding)] * 2,
    use_bias=False,
    dtype=dtype,
    param_dtype=param_dtype,
    name=name,
  )


class DenseNet(nn.Module):
  """DenseNet over images `[batch, height, width, 3]`; returns the dict described in the module doc.

  Attributes:
    config: architecture (DenseNet-121 by default; tests use tiny block sizes).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and batch statistics stay `param_dtype`.
  """

  config: DenseNetConfig = DENSENET121
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    cfg, dtypes = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    outputs = {}
    x = images.astype(self.dtype)
    x = _conv(cfg.stem_features, 7, name="conv0", stride=2, padding=3, **dtypes)(x)
    x = nn.relu(_batch_norm(cfg, train, name="norm0", **dtypes)(x))
    # torchvision pads the max pool with -inf, Keras with zeros after the ReLU: equal, as x >= 0.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))

    for block_index, num_layers in enumerate(cfg.block_sizes, start=1):
      for layer_index in range(1, num_layers + 1):
        x = _DenseLayer(cfg, name=f"denseblock{block_index}_denselayer{layer_index}", **dtypes)(x, train)
      outputs[f"block{block_index}"] = x
      if block_index != len(cfg.block_sizes):
        x = _Transition(cfg, name=f"transition{block_index}", **dtypes)(x, train)

    feature_map = nn.relu(_batch_norm(cfg, train, name="norm5", **dtypes)(x))
    pooled = jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))
    outputs["feature_map"] = feature_map
    outputs["pooled"] = pooled
    if cfg.num_classes:
      # The head runs in float32: 14 logits cost nothing and keep probabilities exact in bf16 runs.
      outputs["logits"] = nn.Dense(cfg.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="classifier")(
        pooled
      )
    return outputs


class _DenseLayer(nn.Module):
  """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3, concatenating `growth_rate` new channels to its input."""

  config: DenseNetConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg, dtypes = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    y = nn.relu(_batch_norm(cfg, train, name="norm1", **dtypes)(x))
    y = _conv(cfg.bottleneck_factor * cfg.growth_rate, 1, name="conv1", **dtypes)(y)
    y = nn.relu(_batch_norm(cfg, train, name="norm2", **dtypes)(y))
    y = _conv(cfg.growth_rate, 3, name="conv2", padding=1, **dtypes)(y)
    return jnp.concatenate([x, y], axis=-1)


class _Transition(nn.Module):
  """BN-ReLU-Conv1x1 (compressing channels) then 2x2 average pooling."""

  config: DenseNetConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg, dtypes = self.config, dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.relu(_batch_norm(cfg, train, name="norm", **dtypes)(x))
    x = _conv(int(x.shape[-1] * cfg.compression), 1, name="conv", **dtypes)(x)
    return nn.avg_pool(x, (2, 2), strides=(2, 2))
