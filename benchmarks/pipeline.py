"""Examples/s per CPU core of the grain pipeline (cxrjax/data/pipeline.py) on real chest X-ray PNGs.

One process, no worker processes and no read threads, so the rate is that of one core:
decode both views, resize (shorter side 256), random crop 224, flip, ImageNet-normalise,
clean and tokenise the report, batch. Sources:
  png_files:  records of the real IU X-ray reports (../shared/data/iu_xray) whose two views
              cycle over the four real Open-i PNGs (RGB, 512 px wide), read from disk;
  png_bytes:  the same as grayscale PNG bytes in memory, as the iu_xray TFDS records hold them;
  tfds:       a prepared iu_xray dataset (with --data-dir; `cxrjax prepare iu_xray`);
  phantom:    the synthetic set drawn at 224 px on the fly (drawing included).
Both "examples/s" (wall clock) and "examples per CPU second" (process time, which other
jobs on a shared machine disturb less) are given. Prints one JSON line.

Run: `python benchmarks/pipeline.py [--batches 8] [--batch-size 16] [--data-dir DIR]`.
"""

import argparse
import io
import json
import os
import pathlib
import platform
import time

from PIL import Image

from cxrjax.data import images
from cxrjax.data import iu_xray
from cxrjax.data import phantom
from cxrjax.data import pipeline
from cxrjax.data import transforms
from cxrjax.text import cleaning
from cxrjax.text import tokenizers

IU_DIR = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray"


class _ListSource:
  def __init__(self, records):
    self.records = records

  def __len__(self):
    return len(self.records)

  def __getitem__(self, index):
    return self.records[index]


def _real_report_records(num_records: int, as_bytes: bool) -> list[dict]:
  """Real IU X-ray reports, each study's two views cycling over the four real PNGs."""
  reports, _ = iu_xray.load_studies(IU_DIR, check_images=False)
  paths = sorted((IU_DIR / "images").glob("*.png"))
  views = [str(p) for p in paths]
  if as_bytes:
    views = []
    for path in paths:
      buffer = io.BytesIO()
      Image.fromarray(images.load_image(path)[..., 0]).save(buffer, format="PNG")
      views.append(buffer.getvalue())
  records = []
  for index in range(num_records):
    record = dict(reports[index % len(reports)])
    record["images"] = [views[(2 * index) % len(views)], views[(2 * index + 1) % len(views)]]
    records.append(record)
  return records


def _rates(dataset, batch_size: int, num_batches: int) -> dict[str, float]:
  iterator = iter(dataset)
  next(iterator)  # warm-up: imports, caches
  wall, cpu = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    next(iterator)
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  examples = batch_size * num_batches
  return {"examples_per_s": round(examples / wall, 2), "examples_per_cpu_s": round(examples / cpu, 2)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--max-length", type=int, default=60)
  parser.add_argument("--data-dir", help="a prepared iu_xray TFDS data dir (adds the 'tfds' source)")
  parser.add_argument("--tfds-config", default="random")
  args = parser.parse_args()

  num_records = args.batch_size * (args.batches + 1)
  sources = {
    "png_files": _ListSource(_real_report_records(num_records, as_bytes=False)),
    "png_bytes": _ListSource(_real_report_records(num_records, as_bytes=True)),
  }
  if args.data_dir:
    sources["tfds"] = iu_xray.IUXraySource(args.data_dir, args.tfds_config, "train")
  sources["phantom"] = phantom.PhantomSource("train", num_records, phantom.PhantomConfig(image_size=args.image_size))
  reports = [cleaning.clean_report(r["report"], "r2gen") for r in sources["png_files"].records]
  vocabulary = tokenizers.WordVocabulary.build(reports, min_count=1, cleaning_style="r2gen")
  preprocessing = transforms.Preprocessing(
    image_size=args.image_size, num_views=2, augment=transforms.Augmentation(random_crop=True, flip=True)
  )

  results = {
    "benchmark": "grain_pipeline",
    "unit": "examples/s on one core (one study = 2 views)",
    "batch_size": args.batch_size,
    "timed_batches": args.batches,
    "image_size": args.image_size,
    "cpu_count": os.cpu_count(),
    "machine": platform.machine(),
    "processor": platform.processor() or None,
  }
  for name, source in sources.items():
    for train in (True, False):
      dataset = pipeline.make_dataset(
        source,
        vocabulary,
        preprocessing,
        batch_size=args.batch_size,
        max_length=args.max_length,
        train=train,
        seed=0,
        shard_index=0,
        shard_count=1,
      )
      mode = "train" if train else "eval"
      for key, value in _rates(dataset, args.batch_size, args.batches).items():
        results[f"{name}_{mode}_{key}"] = value
  print(json.dumps(results))


if __name__ == "__main__":
  main()
