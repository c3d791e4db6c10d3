"""Crops/s of AG-CNN's attention-guided crop: the batched jitted JAX crop beside the seed's loop.

  jax_jit:        ops.attention_crop.attention_crop over the whole batch in one jitted call (heatmap, resize,
                  threshold, connected components, largest region, box, bilinear crop resize)
  seed_loop:      seed 004's get_local_images, per image in Python: numpy L1 heatmap, min-max,
                  bilinear up-sampling, threshold, skimage.measure.label, one `sum(labels == k)`
                  per region, argwhere of mask * image, slice, bilinear resize (PIL stands in for
                  tf.image.resize; the box keeps its last row and column, as ours does)
  numpy_loop:     the same loop tuned: region sizes by np.bincount, the box by
                  skimage.measure.regionprops
Same batch for all: ImageNet-normalised images (the 15 real ChestX-ray14 fixture images, tiled)
and feature maps [batch, 7, 7, 1024] (random ReLU'd normals by default, or a tiny random
DenseNet's maps with --feature-maps densenet, 7x7 but fewer channels). Prints one JSON line.

  python benchmarks/agcnn_crop.py [--batch-size 32] [--repeats 5] [--feature-maps random]

BUILD.md holds the figures. Beyond its speed, the jitted crop keeps a training step on the accelerator:
no device-to-host copy of [32, 7, 7, 1024] maps and [32, 224, 224, 3] images, no Python loop, and a
batch that stays sharded.
"""

import argparse
import json
import os
import pathlib
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from skimage.measure import label, regionprops

from cxrjax.data import transforms
from cxrjax.models.encoders import densenet
from cxrjax.ops import attention_crop, connected_components

FIXTURE_IMAGES = pathlib.Path(__file__).resolve().parents[2] / "shared/data/nih_chestxray14/images"


def _resize_float(array: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear (half-pixel centres, antialiased when shrinking) resize of float [h, w, (c)] by PIL."""
  if array.ndim == 2:
    return np.asarray(
      Image.fromarray(array.astype(np.float32), mode="F").resize((width, height), Image.Resampling.BILINEAR)
    )
  return np.stack([_resize_float(array[..., c], height, width) for c in range(array.shape[-1])], -1)


def seed_loop(feature_maps: np.ndarray, images: np.ndarray, threshold: float, out_size: int) -> np.ndarray:
  """Seed 004's get_local_images in numpy/skimage/PIL (the loop, the per-region sums, argwhere)."""
  batch, height, width, _ = images.shape
  local_images = np.zeros((batch, out_size, out_size, 3), np.float32)
  for index in range(batch):
    l1 = np.abs(feature_maps[index]).sum(axis=-1)
    l1 = l1 - l1.min()
    heatmap = l1 / l1.max()
    mask = _resize_float(heatmap, height, width) > threshold
    labelled, count = label(mask, connectivity=2, background=0, return_num=True)
    sizes = [np.sum(labelled == k) for k in range(1, count + 1)]
    if not sizes:  # the seed fails here (min of an empty array); the whole image instead
      local_images[index] = _resize_float(images[index], out_size, out_size)
      continue
    region = labelled == np.argmax(sizes) + 1
    coords = np.argwhere(np.stack([region] * 3, axis=2) * images[index] != 0)
    y0, x0 = coords[:, 0].min(), coords[:, 1].min()
    y1, x1 = coords[:, 0].max() + 1, coords[:, 1].max() + 1
    local_images[index] = _resize_float(images[index, y0:y1, x0:x1], out_size, out_size)
  return local_images


def numpy_loop(feature_maps: np.ndarray, images: np.ndarray, threshold: float, out_size: int) -> np.ndarray:
  """The loop with bincount sizes and regionprops boxes."""
  batch, height, width, _ = images.shape
  local_images = np.zeros((batch, out_size, out_size, 3), np.float32)
  for index in range(batch):
    l1 = np.abs(feature_maps[index]).sum(axis=-1)
    spread = l1.max() - l1.min()
    heatmap = (l1 - l1.min()) / spread if spread > 0 else np.zeros_like(l1)
    labelled = label(_resize_float(heatmap, height, width) > threshold, connectivity=2)
    if labelled.max() == 0:
      local_images[index] = _resize_float(images[index], out_size, out_size)
      continue
    largest = int(np.argmax(np.bincount(labelled.ravel())[1:])) + 1
    y0, x0, y1, x1 = regionprops((labelled == largest).astype(np.uint8))[0].bbox
    local_images[index] = _resize_float(images[index, y0:y1, x0:x1], out_size, out_size)
  return local_images


def _best_seconds(run, repeats: int) -> float:
  run()  # compile / warm up
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - start)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch-size", type=int, default=32)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--channels", type=int, default=1024)
  parser.add_argument("--threshold", type=float, default=attention_crop.DEFAULT_THRESHOLD)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--feature-maps", choices=("random", "densenet"), default="random")
  args = parser.parse_args()
  size, batch = args.image_size, args.batch_size

  paths = sorted(FIXTURE_IMAGES.glob("*.png"))
  if not paths:
    raise SystemExit(f"no fixture images in {FIXTURE_IMAGES}")
  preprocessing = transforms.Preprocessing(image_size=size)
  real = np.stack([transforms.load_for_model(path, preprocessing) for path in paths])
  images = real[np.arange(batch) % len(real)]
  if args.feature_maps == "random":
    rng = np.random.default_rng(0)
    feature_maps = np.maximum(rng.standard_normal((batch, size // 32, size // 32, args.channels)), 0).astype(np.float32)
  else:
    config = densenet.DenseNetConfig(block_sizes=(1, 1, 1, 1), growth_rate=8, stem_features=8, num_classes=0)
    model = densenet.DenseNet(config)
    variables = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, size, size, 3)))
    feature_maps = np.asarray(jax.jit(model.apply)(variables, jnp.asarray(images))["feature_map"])

  crop = jax.jit(lambda x, f: attention_crop.attention_crop(x, f, args.threshold, size))
  device_images, device_maps = jax.device_put(images), jax.device_put(feature_maps)
  start = time.perf_counter()
  jax.block_until_ready(crop(device_images, device_maps))
  compile_seconds = time.perf_counter() - start
  jax_seconds = _best_seconds(lambda: jax.block_until_ready(crop(device_images, device_maps)), args.repeats)
  seed_seconds = _best_seconds(lambda: seed_loop(feature_maps, images, args.threshold, size), args.repeats)
  numpy_seconds = _best_seconds(lambda: numpy_loop(feature_maps, images, args.threshold, size), args.repeats)

  # Same answers: the loops' crops beside ours (the seed's argwhere of mask * image can only
  # shrink a box where a normalised pixel is exactly 0).
  ours = crop(device_images, device_maps)
  count_rounds = jax.jit(lambda m: connected_components.label_components(m, return_iterations=True)[1])
  rounds = count_rounds(ours.heatmaps > args.threshold)
  heatmaps = np.asarray(ours.heatmaps)
  regions = [label(h > args.threshold, connectivity=2).max() for h in heatmaps]
  difference = float(np.abs(np.asarray(ours.crops) - numpy_loop(feature_maps, images, args.threshold, size)).max())
  print(
    json.dumps(
      {
        "benchmark": "agcnn_attention_crop",
        "unit": "crops/s (best of repeats)",
        "batch_size": batch,
        "image_size": size,
        "feature_maps": f"{args.feature_maps} {list(feature_maps.shape[1:])}",
        "threshold": args.threshold,
        "jax_jit": round(batch / jax_seconds, 1),
        "seed_loop": round(batch / seed_seconds, 1),
        "numpy_loop": round(batch / numpy_seconds, 1),
        "speedup_vs_seed": round(seed_seconds / jax_seconds, 2),
        "speedup_vs_numpy_loop": round(numpy_seconds / jax_seconds, 2),
        "jax_compile_s": round(compile_seconds, 2),
        "label_rounds": int(rounds),
        "regions_per_mask": {"mean": round(float(np.mean(regions)), 2), "max": int(np.max(regions))},
        "max_abs_difference_vs_numpy_loop": difference,
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "jax": jax.__version__,
      }
    )
  )


if __name__ == "__main__":
  main()
