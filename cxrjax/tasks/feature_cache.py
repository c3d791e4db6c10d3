"""Encoder features computed once and cached, for frozen-encoder training (seed 001 does this).

With `train.cache_features=True` (which needs a frozen `image_encoder` in optimizer.param_groups), the
trainer runs the frozen CheXNet encoder once over every training study, with the evaluation transform (resize, no random crop or
flip: the cached features are those of the un-augmented images), stores the result in
`WORKDIR/features/train.npz`, and then trains the decoder on batches of cached features. A DenseNet-121
forward pass per study per epoch becomes one per study per run.

Stored per study (float16, which halves the file; the decoder computes in float32):
  "feature_map": [views, h, w, channels]   the DenseNet's final feature map of each view
  "pooled":      [views * channels]        its global average, views concatenated
"""

from typing import Any

import jax
import numpy as np
from etils import epath

from cxrjax.core import files
from cxrjax.data import pipeline

FEATURE_KEYS = ("feature_map", "pooled")
BATCH_PREFIX = "encoder_"  # Batch keys: "encoder_feature_map", "encoder_pooled".


def compute(model, variables: dict[str, Any], source, config, batch_size: int) -> dict[str, np.ndarray]:
  """ImageEncoder outputs of every study of `source`, in order: {"ids", "feature_map", "pooled"}."""
  encode = jax.jit(lambda v, images: model.apply(v, images, method=lambda m, x: m.image_encoder(x)))
  # Every process computes every study (the cache is one shared file): no sharding.
  dataset = pipeline.make_batches(
    config, source=source, train=False, batch_size=batch_size, shard_index=0, shard_count=1
  )
  ids, outputs = [], {key: [] for key in FEATURE_KEYS}
  for batch in dataset:
    keep = batch["mask"]
    encoded = jax.device_get(encode(variables, batch["images"]))
    ids.extend(str(i) for i in batch["id"][keep])
    for key in FEATURE_KEYS:
      outputs[key].append(np.asarray(encoded[key])[keep].astype(np.float16))
  return {"ids": np.array(ids), **{key: np.concatenate(value) for key, value in outputs.items()}}


def load_or_compute(
  path: str | epath.Path, model, variables: dict[str, Any], source, config, batch_size: int
) -> dict[str, np.ndarray]:
  """The cache at `path` if it holds `source`'s studies, else computed and written there."""
  path = epath.Path(path)  # Local or gs://.
  if path.exists():
    with path.open("rb") as handle, np.load(handle) as cached:
      features = {key: cached[key] for key in cached.files}
    if len(features.get("ids", ())) == len(source):
      return features
    raise ValueError(
      f"{path}: caches {len(features.get('ids', ()))} studies, the source has {len(source)}: delete it to recompute"
    )
  features = compute(model, variables, source, config, batch_size)
  if jax.process_index() != 0:  # Every host computes the same; one writes the shared file.
    return features
  path.parent.mkdir(parents=True, exist_ok=True)
  with files.open_atomic(path, "wb") as handle:  # An interrupted run never leaves a half-written cache.
    np.savez(handle, **features)
  return features


class CachedFeatureSource:
  """The studies of `source` with their cached encoder features in place of the images."""

  def __init__(self, source, features: dict[str, np.ndarray]):
    if len(features["ids"]) != len(source):
      raise ValueError(f"{len(features['ids'])} cached studies for a source of {len(source)}")
    self.source, self.features = source, features

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    record = self.source.text_record(index) if hasattr(self.source, "text_record") else self.source[index]
    if str(record["id"]) != str(self.features["ids"][index]):
      raise ValueError(
        f"cached features of study {self.features['ids'][index]} do not belong to "
        f"study {record['id']} (index {index}): delete the cache to recompute"
      )
    record = {key: value for key, value in record.items() if key != "images"}
    for key in FEATURE_KEYS:
      record[BATCH_PREFIX + key] = self.features[key][index]
    return record

  def __repr__(self) -> str:
    return f"CachedFeatureSource({self.source!r})"
