"""Captions/s of the seed-003 captioner: cxrjax's compiled, KV-cached decoding beside the seed's own loop.

  python benchmarks/graph_captioner.py [--batch 32] [--length 80] [--seed-images 2]

One model at the seed's sizes (ResNet-50 at 224, d_model 512, 4 layers x 8 heads, vocabulary 30522) with
random weights: the seed's PyTorch class (tests/weights/torch_seed003.py, its ResNet from a
transformers.ResNetConfig), imported into cxrjax through `weights/seed003.py`. Its end token is made
unreachable (a -1e4 bias) so that every caption runs to the full length in both implementations, and the
real IU X-ray images are the input. Measured in one run on this machine:
  seed_greedy     the seed's `generate_caption`: one image at a time, re-encoding the image and the whole
                  prefix at every token (PyTorch, no cache)
  cxrjax_greedy   greedy search in one jitted lax.while_loop over a batch, image encoded once, KV cache
  cxrjax_beam3    beam search, 3 beams, same batch
Prints one JSON line (captions/s, and cxrjax greedy's speed-up over the seed). Needs the test extras
(torch, transformers): `pip install -e '.[test]'`.
"""

import argparse
import json
import os
import pathlib
import sys
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import ml_collections
import numpy as np
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # For tests/.

from cxrjax.models import graph_captioner
from cxrjax.tasks import captioning
from cxrjax.weights import seed003
from tests.weights import torch_seed003


def _best_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=80, help="tokens per caption (the seed's max_len)")
  parser.add_argument("--seed-images", type=int, default=2, help="captions timed for the seed's slow loop")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  paths = sorted((ROOT.parent / "shared/data/iu_xray/images").glob("*.png"))
  images = np.stack([torch_seed003.seed_transform(path) for path in paths])  # [4, 224, 224, 3]
  reference = torch_seed003.reference_model(images, {}, vocab_size=30522, embed_dim=512, num_layers=4, num_heads=8)
  with torch.no_grad():
    reference.fc_out.bias[torch_seed003.SEP] = -1e4  # Never ends early: full-length captions in both.
  checkpoint = pathlib.Path("/tmp/cxrjax_bench_seed003.bin")
  torch.save(reference.state_dict(), checkpoint)
  variables, model_config, vocab_size = seed003.import_seed003(checkpoint, num_heads=8)
  model_config.cache_length = args.length
  model = graph_captioner.GraphCaptioner.from_config(model_config, vocab_size, lambda path: False)
  variables = jax.device_put(variables)

  # The seed's loop, one image at a time.
  seed_inputs = [torch.from_numpy(images[i % len(images)].transpose(2, 0, 1)[None]) for i in range(args.seed_images)]

  def seed_run():
    for image in seed_inputs:
      torch_seed003.generate_caption(image, reference, max_len=args.length)

  with torch.no_grad():
    seed_s = _best_time(seed_run, 1)

  ids = types.SimpleNamespace(start_id=torch_seed003.CLS, end_id=torch_seed003.SEP, pad_id=0)
  batch = np.stack([images[i % len(images)] for i in range(args.batch)])[:, None]  # [batch, 1, 224, 224, 3]
  results = {}
  for name, beam in (("cxrjax_greedy", 1), ("cxrjax_beam3", 3)):
    decode = ml_collections.ConfigDict(
      dict(beam_size=beam, max_length=args.length, length_penalty=0.0, block_ngram_repeat=0)
    )
    run = jax.jit(lambda v, x, d=decode: captioning.generate(model, v, x, ids, d))
    tokens = np.asarray(run(variables, batch))  # Compile.
    assert tokens.shape == (args.batch, args.length) and not (tokens == ids.end_id).any()
    seconds = _best_time(lambda: jax.block_until_ready(run(variables, batch)), args.repeats)
    results[f"{name}_captions_per_s"] = round(args.batch / seconds, 2)
  seed_rate = args.seed_images / seed_s
  print(
    json.dumps(
      {
        "benchmark": "graph_captioner_decoding",
        "unit": "captions/s",
        "tokens_per_caption": args.length,
        "batch": args.batch,
        "vocab": vocab_size,
        "seed_greedy_captions_per_s": round(seed_rate, 3),
        **results,
        "greedy_speedup_vs_seed": round(results["cxrjax_greedy_captions_per_s"] / seed_rate, 1),
        "device": jax.devices()[0].device_kind,
        "platform": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "jax": jax.__version__,
      }
    )
  )


if __name__ == "__main__":
  main()
