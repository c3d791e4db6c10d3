"""Images/s of the jitted Flax DenseNet-121 forward (float32, bfloat16) beside Keras' DenseNet121.

Both run on the same machine in the same process, same batch of inputs, eval mode, 224x224.
Prints one JSON line. Run: `python benchmarks/densenet.py [--batch-sizes 8,32] [--repeats 5]`.
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.encoders import densenet


def _images_per_second(run, batch_size: int, repeats: int) -> float:
  run()  # Compile and warm up.
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return batch_size / best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch-sizes", default="8,32")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-keras", action="store_true")
  args = parser.parse_args()

  model = densenet.DenseNet(densenet.DENSENET121)
  variables = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))()
  keras_model = None
  if not args.skip_keras:
    import keras

    keras_model = keras.applications.DenseNet121(
      weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3)
    )
  results = {
    "benchmark": "densenet121_forward",
    "unit": "images/s (best of repeats)",
    "device": jax.devices()[0].device_kind,
    "platform": jax.default_backend(),
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "jax": jax.__version__,
  }
  for batch_size in map(int, args.batch_sizes.split(",")):
    images = np.random.default_rng(0).standard_normal((batch_size, 224, 224, 3)).astype(np.float32)
    device_images = jax.device_put(images)
    for name, dtype in (("flax_float32", jnp.float32), ("flax_bfloat16", jnp.bfloat16)):
      forward = jax.jit(lambda v, x, m=densenet.DenseNet(densenet.DENSENET121, dtype=dtype): m.apply(v, x)["logits"])
      results[f"{name}_batch{batch_size}"] = round(
        _images_per_second(lambda: forward(variables, device_images).block_until_ready(), batch_size, args.repeats), 2
      )
    if keras_model is not None:
      results[f"keras_float32_batch{batch_size}"] = round(
        _images_per_second(lambda: keras_model.predict_on_batch(images), batch_size, args.repeats), 2
      )
  print(json.dumps(results))


if __name__ == "__main__":
  main()
