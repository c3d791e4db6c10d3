"""Captions/s of cxrjax's GIT and BLIP generation beside transformers' `generate` on the same weights, and
training examples/s of the fine-tuning step.

  python benchmarks/hf_captioners.py [--models git,blip] [--batch 8] [--new-tokens 20] [--repeats 2]

Per model, at git-base / blip-base sizes with random weights (transformers' GitConfig defaults are
microsoft/git-base's; BLIP: BlipConfig with the text decoder's 12 heads of Salesforce/blip-image-captioning-
base), one run on this machine: transformers' model is written by `save_pretrained`, imported by
`weights/hf.py` (`cxrjax port-weights --format hf`), and both generate for the same batch of random images:
  hf_greedy, hf_beam3          transformers `generate(num_beams=1 | 3, max_new_tokens=N)`, PyTorch CPU, its
                               KV cache (default)
  cxrjax_greedy, cxrjax_beam3  captioning.generate jitted (compile excluded): one lax.while_loop, the image
                               encoded once, the KV cache (GIT: image keys/values prefilled; BLIP:
                               cross-attention keys/values computed once), "hf" beam normalization
The end token is made unreachable (a -1e4 output bias) so that every caption is N tokens long on both
sides. Then the fine-tuning step (train.make_train_step: AdamW 5e-5, gradient accumulation 2, the task's
loss) of each family's small smoke size with the real 30522-token vocabulary, float32 and bfloat16.
Prints one JSON line per model and one for training. Needs the test extras (torch, transformers):
`pip install -e '.[test]'`.
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrjax import models, optim, train, workdir as workdir_lib
from cxrjax.tasks import captioning
from cxrjax.weights import hf

VOCAB = ROOT.parent / "shared/data/text/bert-base-uncased-vocab.txt"
SEP = 102


def _best_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def _hf_model(name: str) -> tuple[transformers.PreTrainedModel, int]:
  """A random base-size model whose end token never wins, and its image size."""
  torch.manual_seed(0)
  if name == "git":
    model = transformers.GitForCausalLM(transformers.GitConfig()).eval()
    bias = model.output.bias
  else:
    config = transformers.BlipConfig(text_config={"num_attention_heads": 12})
    model = transformers.BlipForConditionalGeneration(config).eval()
    bias = model.text_decoder.cls.predictions.bias
  with torch.no_grad():
    bias[SEP] = -1e4
  return model, model.config.vision_config.image_size


def bench_generation(name: str, batch: int, new_tokens: int, repeats: int) -> dict:
  reference, size = _hf_model(name)
  with tempfile.TemporaryDirectory() as directory:
    reference.save_pretrained(directory)
    run_config, tokenizer, variables = hf.import_hf(directory, tokenizer=VOCAB)
  section = run_config.model
  section.cache_length = max(section.get("cache_length", new_tokens), new_tokens + 1)
  model = models.build(section, len(tokenizer))
  variables = jax.device_put(variables)
  images = np.random.default_rng(0).normal(size=(batch, 1, size, size, 3)).astype(np.float32)
  pixels = torch.from_numpy(images[:, 0].transpose(0, 3, 1, 2).copy())
  result = {"benchmark": "hf_captioner_generation", "model": f"{name}-base size, random weights",
            "unit": "captions/s", "batch": batch, "new_tokens": new_tokens, "image_size": size,
            "parameters": sum(p.numel() for p in reference.parameters())}
  for label, beams in (("greedy", 1), ("beam3", 3)):
    decode = ml_collections.ConfigDict(dict(beam_size=beams, max_length=new_tokens, length_penalty=1.0,
                                            length_normalization="hf", block_ngram_repeat=0))
    run = jax.jit(lambda v, x, d=decode: captioning.generate(model, v, x, tokenizer, d))
    start = time.perf_counter()
    tokens = np.asarray(run(variables, images))
    result[f"cxrjax_{label}_compile_s"] = round(time.perf_counter() - start, 1)
    assert tokens.shape == (batch, new_tokens) and not (tokens == tokenizer.end_id).any()
    seconds = _best_time(lambda: jax.block_until_ready(run(variables, images)), repeats)
    result[f"cxrjax_{label}_captions_per_s"] = round(batch / seconds, 3)

    def hf_run(beams=beams):
      with torch.no_grad():
        return reference.generate(pixel_values=pixels, max_new_tokens=new_tokens, num_beams=beams,
                                  do_sample=False, length_penalty=1.0)
    hf_tokens = hf_run()
    hf_tokens = hf_tokens[:, -new_tokens:].numpy()
    # The same weights and search: the same captions (ties aside, on random weights).
    result[f"{label}_same_tokens_fraction"] = round(float(np.mean(hf_tokens == tokens)), 3)
    seconds = _best_time(hf_run, repeats)
    result[f"hf_{label}_captions_per_s"] = round(batch / seconds, 3)
  result["beam3_speedup_vs_hf"] = round(result["cxrjax_beam3_captions_per_s"] / result["hf_beam3_captions_per_s"], 2)
  result["greedy_speedup_vs_hf"] = round(result["cxrjax_greedy_captions_per_s"] / result["hf_greedy_captions_per_s"], 2)
  return result


def bench_training(name: str, batch: int, steps: int, dtype: str) -> dict:
  """Examples/s of the fine-tuning step at the family's smoke size (vocabulary 30522 + specials)."""
  vocab_size = 30524 if name == "blip" else 30522
  section = models.get(name).smoke_config()
  section.dtype = dtype
  model = models.build(section, vocab_size)
  size = section.encoder.image_size
  rng = np.random.default_rng(0)
  images = rng.normal(size=(batch, 1, size, size, 3)).astype(np.float32)
  tokens = rng.integers(1000, 30000, size=(batch, 12)).astype(np.int32)
  start_id = 30522 if name == "blip" else 101
  tokens[:, 0], tokens[:, -1] = start_id, SEP
  params = model.init(jax.random.key(0), images, tokens[:, :-1])["params"]
  optimizer = ml_collections.ConfigDict(dict(name="adamw", learning_rate=5e-5, weight_decay=1e-8,
                                             grad_clip_norm=1.0, b1=0.9, b2=0.999, schedule="cosine",
                                             warmup_steps=0, final_lr_fraction=0.0, accumulate_steps=2))
  tx = optim.make_optimizer(optimizer, params, 1000)
  task = captioning.CaptioningTask(ml_collections.ConfigDict())
  ids = types.SimpleNamespace(pad_id=0, start_id=start_id, end_id=SEP)  # what the loss reads
  components = workdir_lib.Components(task=task, model=model, make_optimizer=None, frozen_modules={})
  step = jax.jit(train.make_train_step(components, tx, dropout_seed=0, tokenizer=ids),
                 donate_argnums=(0,))
  state = workdir_lib.TrainState(step=jnp.array(0, jnp.int32), params=params, batch_stats={},
                                 opt_state=tx.init(params))
  data = {"images": images, "tokens": tokens}
  start = time.perf_counter()
  state, metrics = step(state, data)
  jax.block_until_ready(metrics["loss"])
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, data)
  jax.block_until_ready(metrics["loss"])
  seconds = time.perf_counter() - start
  return {"model": name, "dtype": dtype, "parameters": int(sum(p.size for p in jax.tree.leaves(params))),
          "image_size": size, "caption_tokens": tokens.shape[1], "compile_s": round(compile_s, 1),
          "examples_per_s": round(batch * steps / seconds, 1)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--models", default="git,blip")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--new-tokens", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--train-steps", type=int, default=10, help="timed fine-tuning steps (0: skip)")
  args = parser.parse_args()
  machine = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(), "cpu_count": os.cpu_count(),
             "torch_threads": torch.get_num_threads(), "jax": jax.__version__, "torch": torch.__version__,
             "transformers": transformers.__version__}
  names = [name for name in args.models.split(",") if name]
  for name in names:
    start = time.perf_counter()
    result = bench_generation(name, args.batch, args.new_tokens, args.repeats)
    print(json.dumps({**result, "wall_s": round(time.perf_counter() - start, 1), **machine}), flush=True)
  if args.train_steps:
    rows = [bench_training(name, args.batch, args.train_steps, dtype) for name in names
            for dtype in ("float32", "bfloat16")]
    print(json.dumps({"benchmark": "hf_captioner_training", "unit": "examples/s", "batch": args.batch,
                      "accumulate_steps": 2, "smoke_sizes": rows, **machine}), flush=True)


if __name__ == "__main__":
  main()
