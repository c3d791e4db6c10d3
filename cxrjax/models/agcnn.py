"""AG-CNN (Guan et al., 2018, "Diagnose like a Radiologist"; seed 004) in flax.linen.

Three branches over one batch of images `[batch, height, width, 3]`:
  global: DenseNet-121 over the whole image, global max pooling, Dense -> logits
  local:  the same architecture (its own weights) over the attention-guided crop of the image
  fusion: Dense over the two pooled 1024-d vectors, concatenated
The crop runs inside jit (`attention_crop`): the heatmap is the L1 norm over channels of the
global branch's last feature map, min-max normalised, bilinearly resized to the image and
thresholded (0.7); the largest 8-connected region of the mask (`label_components`, connected
components in JAX with static shapes) gives a box, and the box is resized to the crop size.

Differences from the seed's `get_local_images`, all deliberate:
  - The box includes the region's last row and column (the seed slices [min_y:max_y], dropping
    them, and a one-pixel-wide region gives an empty crop that tf.image.resize rejects).
  - The box comes from the region itself; the seed takes `argwhere(mask * image != 0)`, which
    drops region pixels whose (normalised) image value happens to be 0.
  - An empty mask (a constant heatmap: the seed divides 0 by 0) gives the whole image; the seed
    fails on it (min of an empty array).
  - Downscaling (a box larger than the crop) is antialiased (a triangle filter as wide as the
    scale, as PIL and `jax.image.scale_and_translate(antialias=True)` do); upscaling, the
    usual case at 224x224, is plain bilinear interpolation with half-pixel centres, as
    tf.image.resize's. The resize kernel only reads pixels inside the box (edge samples are
    renormalised), so the crop equals "slice the box, then resize it": a plain
    `scale_and_translate` of the whole image would blend the pixels just outside the box into
    the crop's border.

Training (three stages, run by the shared trainer): `AGCNN(stage=...).__call__(images, train)` always
computes every output, so one jitted step serves every stage. With `train=True`, `stage` puts
only its branch's batch norm in training mode and stops gradients into the branches before it:
  stage 1: global branch (loss on "global_logits")
  stage 2: local branch  (loss on "local_logits"; global branch in inference mode)
  stage 3: fusion        (loss on "fusion_logits"; both branches in inference mode)
`stage_loss` gives the stage's loss; the config's `optimizer.param_groups` freeze the other branches
(no update, no weight decay).

Branch weights from CheXNet: `config.init.encoder` (weights/pretrained.py) copies the DenseNet
backbone into both branches (`pretrained_parts`; the heads stay: CheXNet's head reads average-pooled
features, AG-CNN's max-pooled ones, and AG-CNN has 15 classes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cxrjax.core.errors import ConfigError
from cxrjax.models import base
from cxrjax.models.encoders import densenet
from cxrjax.ops.attention_crop import DEFAULT_THRESHOLD, attention_crop

BRANCHES = ("global_branch", "local_branch")
STAGE_LOGITS = {1: "global_logits", 2: "local_logits", 3: "fusion_logits"}
STAGE_MODULES = {1: "global_branch", 2: "local_branch", 3: "fusion_classifier"}  # The module a stage trains.


# Model.


class Branch(nn.Module):
  """A DenseNet backbone, global max pooling over its last feature map, and a Dense head.

  Returns {"logits": [batch, num_classes], "pooled": float32 [batch, features],
  "feature_map": [batch, h, w, features]}.
  """

  backbone: densenet.DenseNetConfig = densenet.DENSENET121
  num_classes: int = 15
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    config = dataclasses.replace(self.backbone, num_classes=0)
    features = densenet.DenseNet(config, dtype=self.dtype, param_dtype=self.param_dtype, name="backbone")(
      images, train=train
    )
    feature_map = features["feature_map"]
    pooled = jnp.max(feature_map.astype(jnp.float32), axis=(1, 2))
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="classifier")(pooled)
    return {"logits": logits, "pooled": pooled, "feature_map": feature_map}


@base.FAMILIES.register("agcnn")
class AGCNN(base.Classifier):
  """Global, local and fusion branches over images `[batch, height, width, 3]`.

  Attributes:
    backbone: DenseNet architecture of both branches (DenseNet-121; tests use tiny ones).
    num_classes: 15 in seed 004 (14 findings + "No Finding"), 14 for CheXNet's classes.
    threshold: heatmap threshold of the attention mask.
    crop_size: side of the local images; None: the input's height.
    antialias: antialias crops that shrink (see `crop_and_resize`).

  Returns (a dict):
    "global_logits", "local_logits", "fusion_logits": float32 [batch, num_classes] (sigmoid at
        prediction time),
    "heatmap": float32 [batch, height, width], "boxes": int32 [batch, 4] (y0, x0, y1, x1),
    "local_images": float32 [batch, crop, crop, 3],
    "global_pooled", "local_pooled": float32 [batch, features].
  """

  backbone: densenet.DenseNetConfig = densenet.DENSENET121
  num_classes: int = 15
  threshold: float = DEFAULT_THRESHOLD
  crop_size: int | None = None
  antialias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32
  stage: int | None = None

  pretrained_parts = {"encoder": base.PretrainedPart("densenet", ("global_branch/backbone", "local_branch/backbone"))}

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, vocab_size: None, is_frozen: base.IsFrozen):
    """`config.stage` (1, 2, 3) is the training stage; the optimizer's param_groups must freeze the
    branches the stage does not train (configs/chestxray14_agcnn.py derives them from the stage)."""
    del vocab_size, is_frozen
    return cls(
      backbone=densenet.config_from_section(config.encoder), **base.module_fields(config, exclude=("encoder",))
    )

  @staticmethod
  def smoke_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(
      dict(
        name="agcnn",
        stage=1,
        encoder=densenet.tiny_config(),
        num_classes=5,
        threshold=0.7,
        crop_size=32,
        dtype="float32",
      )
    )

  @staticmethod
  def check_initialization(previous: ml_collections.ConfigDict, current: ml_collections.ConfigDict, path: str) -> None:
    """Stages 2 and 3 start from an earlier stage's run (config.init.from_workdir)."""
    if (previous.get("stage") or 0) >= (current.get("stage") or 0):
      raise ConfigError(
        f"config.init.from_workdir={path}: holds stage {previous.get('stage')}; stage "
        f"{current.get('stage')} starts from an earlier stage"
      )

  def logits_key(self) -> str:
    """The output key that the stage trains and that prediction reads (fusion once stage 3 ran)."""
    return STAGE_LOGITS[self.stage or 3]

  def predictions(self, outputs: dict[str, jax.Array], attention: bool = False) -> dict[str, jax.Array]:
    """The probabilities of the stage's logits and the crop's box (y0, x0, y1, x1) in the view's pixels; with
    `attention` also the heatmap [batch, height, width] and the local image [batch, crop, crop, 3]."""
    predictions = {"probabilities": jax.nn.sigmoid(outputs[self.logits_key()]), "boxes": outputs["boxes"]}
    if attention:
      predictions.update(heatmap=outputs["heatmap"], local_images=outputs["local_images"])
    return predictions

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """`train` with `stage` None trains every branch end to end (batch norm of both in training
    mode, gradients everywhere); with a stage, as the module docstring says."""
    stage = self.stage
    if stage not in (None, 1, 2, 3):
      raise ValueError(f"stage must be 1, 2, 3 or None, got {stage!r}")
    train_global = train and stage in (None, 1)
    train_local = train and stage in (None, 2)
    dtypes = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    global_out = Branch(self.backbone, self.num_classes, name="global_branch", **dtypes)(images, train=train_global)
    feature_map, global_pooled = global_out["feature_map"], global_out["pooled"]
    if train and stage in (2, 3):
      feature_map, global_pooled = jax.lax.stop_gradient((feature_map, global_pooled))
    crop = attention_crop(images, feature_map, self.threshold, self.crop_size, self.antialias)
    local_images = jax.lax.stop_gradient(crop.crops)
    local_out = Branch(self.backbone, self.num_classes, name="local_branch", **dtypes)(
      local_images.astype(images.dtype), train=train_local
    )
    local_pooled = local_out["pooled"]
    if train and stage == 3:
      local_pooled = jax.lax.stop_gradient(local_pooled)
    fusion_logits = nn.Dense(
      self.num_classes, dtype=jnp.float32, param_dtype=self.param_dtype, name="fusion_classifier"
    )(jnp.concatenate([global_pooled, local_pooled], axis=-1))
    return {
      "global_logits": global_out["logits"],
      "local_logits": local_out["logits"],
      "fusion_logits": fusion_logits,
      "heatmap": crop.heatmaps,
      "boxes": crop.boxes,
      "local_images": local_images,
      "global_pooled": global_pooled,
      "local_pooled": local_pooled,
    }


def stage_loss(
  outputs: dict[str, jax.Array], labels: jax.Array, stage: int, mask: jax.Array | None = None
) -> jax.Array:
  """Mean binary cross-entropy of the stage's logits against 0/1 labels [batch, num_classes].

  `mask` (bool [batch]) leaves padding examples out.
  """
  return base.binary_cross_entropy(outputs[STAGE_LOGITS[stage]], labels, mask)
