"""CheXNet inference over image files: decode on the host, one jitted batched forward on the device."""

import json
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.data import images as image_io
from cxrjax.models.encoders import densenet
from cxrjax.weights import chexnet


def make_predict_fn(config: densenet.DenseNetConfig, dtype=jnp.float32):
  """Returns jitted `(variables, images [batch, H, W, 3]) -> probabilities [batch, classes]`."""
  model = densenet.DenseNet(config, dtype=dtype)

  @jax.jit
  def predict(variables, images):
    return jax.nn.sigmoid(model.apply(variables, images, train=False)["logits"])
  return predict


def classify_files(weights: str, paths: Sequence[str], batch_size: int = 16, image_size: int = 224,
                   dtype: str = "float32", out=None) -> int:
  """Prints `{"image": path, "probabilities": {class: p}}` per readable image, in input order.

  Unreadable images are reported on stderr by name and skipped; the others are still classified.
  Returns the exit status: 0 if every image was classified, 1 otherwise.
  """
  out = out or sys.stdout  # Looked up per call: the caller (or pytest) may have replaced it.
  config, variables, classes = chexnet.load_chexnet(weights)
  if not config.num_classes:
    raise chexnet.WeightsError(f"{weights}: these weights have no classification head")
  predict = make_predict_fn(config, jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
  variables = jax.device_put(variables)
  failures = 0
  for start in range(0, len(paths), batch_size):
    batch_paths, batch_images = [], []
    for path in paths[start:start + batch_size]:
      try:
        batch_images.append(image_io.load_for_model(path, image_size))
        batch_paths.append(path)
      except image_io.ImageError as error:
        print(f"cxrjax classify: error: {error}", file=sys.stderr)
        failures += 1
    if not batch_paths:
      continue
    # Pad to a fixed batch so that every batch reuses one compiled program.
    padded = np.zeros((batch_size, image_size, image_size, 3), np.float32)
    padded[:len(batch_images)] = np.stack(batch_images)
    probabilities = np.asarray(predict(variables, padded))[:len(batch_paths)]
    for path, row in zip(batch_paths, probabilities):
      out.write(json.dumps({"image": str(path),
                            "probabilities": {name: round(float(p), 6) for name, p in zip(classes, row)}}) + "\n")
    out.flush()
  if failures:
    print(f"cxrjax classify: {failures} of {len(paths)} images could not be read", file=sys.stderr)
  return 1 if failures else 0
