"""ResNet (He et al., 2016) in flax.linen, NHWC, as Hugging Face's `ResNetModel` builds it (microsoft/resnet-50).

    images [batch, H, W, 3]
      -> embedder: 7x7/2 conv (no bias) + BN + ReLU, 3x3/2 max pool                 [batch, H/4, W/4, 64]
      -> stages of bottleneck layers (1x1 reduce, 3x3, 1x1 expand, each conv + BN; ReLU after the first
         two and after the residual sum); the first layer of a stage strides and projects its shortcut
         (1x1 conv + BN) when the shape changes                                     [batch, H/32, W/32, 2048]

No pooling: the last feature map is the output (seed 003 reads `last_hidden_state`). Convolutions pad
symmetrically (kernel // 2 on each side) as PyTorch does; Flax's "SAME" would pad (0, 1) under stride 2.
Module names mirror the Hugging Face layout so that the importer (cxrjax/weights/seed003.py) maps them one
to one: `embedder/{convolution,normalization}`, `stage{S}_layer{L}/shortcut/...`,
`stage{S}_layer{L}/layer{K}/...` for `encoder.stages.S.layers.L.{shortcut,layer.K}`.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Architecture hyper-parameters, as transformers' `ResNetConfig` names them; ResNet-50 by default.

  Attributes:
    downsample_in_first_stage: the first stage strides too (False in ResNet-50: the max pool did).
    downsample_in_bottleneck: stride on a bottleneck's first 1x1 conv instead of its 3x3 conv (False in
      microsoft/resnet-50, "ResNet v1.5").
    bn_momentum: flax convention: new = momentum * old + (1 - momentum) * batch (PyTorch's 0.1).
  """

  embedding_size: int = 64
  hidden_sizes: tuple[int, ...] = (256, 512, 1024, 2048)
  depths: tuple[int, ...] = (3, 4, 6, 3)
  reduction: int = 4
  downsample_in_first_stage: bool = False
  downsample_in_bottleneck: bool = False
  bn_epsilon: float = 1e-5
  bn_momentum: float = 0.9

  def __post_init__(self):
    if len(self.hidden_sizes) != len(self.depths) or not self.depths:
      raise ValueError(
        f"ResNetConfig: hidden_sizes {self.hidden_sizes} and depths {self.depths} must have the same, non-zero length"
      )

  @property
  def num_features(self) -> int:
    """Channels of the output feature map (2048 for ResNet-50)."""
    return self.hidden_sizes[-1]

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ResNetConfig":
    known = {field.name for field in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
      raise ValueError(f"unknown ResNetConfig fields: {sorted(unknown)}")
    values = dict(values)
    for key in ("hidden_sizes", "depths"):
      if key in values:
        values[key] = tuple(int(v) for v in values[key])
    return cls(**values)


RESNET50 = ResNetConfig()


def config_from_section(section: Any) -> ResNetConfig:
  """A model config's ResNet `encoder` section -> ResNetConfig; its image `preprocessing` sub-section is
  the data pipeline's (cxrjax/data/transforms.py), not ours."""
  return ResNetConfig.from_dict({k: v for k, v in dict(section).items() if k != "preprocessing"})


def tiny_config() -> dict[str, Any]:
  """The ResNet section of smoke configs and tests: one bottleneck layer per stage (same code path)."""
  return dict(embedding_size=8, hidden_sizes=(16, 16, 32, 32), depths=(1, 1, 1, 1))


class _ConvLayer(nn.Module):
  """Conv (no bias, symmetric padding) + BN (+ ReLU): transformers' `ResNetConvLayer`."""

  features: int
  kernel: int
  stride: int
  relu: bool
  config: ResNetConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pad = self.kernel // 2
    x = nn.Conv(
      self.features,
      (self.kernel, self.kernel),
      strides=(self.stride, self.stride),
      padding=[(pad, pad)] * 2,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="convolution",
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.config.bn_momentum,
      epsilon=self.config.bn_epsilon,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      name="normalization",
    )(x)
    return nn.relu(x) if self.relu else x


class _Bottleneck(nn.Module):
  """1x1 reduce -> 3x3 -> 1x1 expand, plus the (projected when the shape changes) input, then ReLU."""

  features: int
  stride: int
  config: ResNetConfig
  dtype: Any
  param_dtype: Any

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    cfg, reduced = self.config, self.features // self.config.reduction
    options = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    first_stride = self.stride if cfg.downsample_in_bottleneck else 1
    middle_stride = 1 if cfg.downsample_in_bottleneck else self.stride
    residual = x
    if x.shape[-1] != self.features or self.stride != 1:
      residual = _ConvLayer(self.features, 1, self.stride, False, name="shortcut", **options)(x, train)
    y = _ConvLayer(reduced, 1, first_stride, True, name="layer0", **options)(x, train)
    y = _ConvLayer(reduced, 3, middle_stride, True, name="layer1", **options)(y, train)
    y = _ConvLayer(self.features, 1, 1, False, name="layer2", **options)(y, train)
    return nn.relu(y + residual)


class ResNet(nn.Module):
  """ResNet over images [batch, H, W, 3] -> the last feature map [batch, H/32, W/32, hidden_sizes[-1]].

  Attributes:
    config: architecture (ResNet-50 by default; tests use tiny ones).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters and batch statistics stay `param_dtype`.
  """

  config: ResNetConfig = RESNET50
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    cfg = self.config
    options = dict(config=cfg, dtype=self.dtype, param_dtype=self.param_dtype)
    x = _ConvLayer(cfg.embedding_size, 7, 2, True, name="embedder", **options)(images.astype(self.dtype), train)
    # PyTorch pads the max pool with -inf, as nn.max_pool does.
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, (features, depth) in enumerate(zip(cfg.hidden_sizes, cfg.depths)):
      stage_stride = 2 if stage > 0 or cfg.downsample_in_first_stage else 1
      for layer in range(depth):
        x = _Bottleneck(features, stage_stride if layer == 0 else 1, name=f"stage{stage}_layer{layer}", **options)(
          x, train
        )
    return x
