"""Reports/s of the compiled beam search beside a host loop of jitted single steps; training steps/s.

  python benchmarks/decode.py [--batch 32] [--beam 3] [--length 60] [--vocab 763]

Both searches decode the same attention-GRU decoder (the IU X-ray config's sizes: 98 regions of 512,
GRU 512, vocabulary 763 = R2Gen's IU X-ray vocabulary with our special tokens) from the same cached
image memory, so the comparison isolates the search: one `lax.while_loop` program against a Python
loop that calls a jitted "decode one token + pick beams" function once per token and checks on the host
whether every beam has finished (what a host-driven decoder must do to stop early). Then training
steps/s of the attention captioner: the demo config, and the IU X-ray config (frozen DenseNet-121 at
224, two views). Prints one JSON line per measurement group.
"""

import argparse
import pathlib
import sys
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # For configs/.

from cxrjax.core import decoding
from cxrjax import models
from cxrjax.jobs import train
from cxrjax.run import workdir
from cxrjax.data import datasets
from cxrjax.text import tokenizers


def word_vocabulary(size: int) -> tokenizers.WordVocabulary:
  """A word vocabulary of `size` tokens (special tokens included): only its size and ids matter here."""
  if size <= len(tokenizers.SPECIAL_TOKENS):
    raise SystemExit(f"--vocab must exceed the {len(tokenizers.SPECIAL_TOKENS)} special tokens, got {size}")
  words = tuple(f"word{i}" for i in range(size - len(tokenizers.SPECIAL_TOKENS)))
  return tokenizers.WordVocabulary(tokens=tokenizers.SPECIAL_TOKENS + words)


def _best_time(fn, repeats: int) -> float:
  fn()  # Compile and warm up.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def _decoder_and_memory(config, vocab_size: int, batch: int):
  model = models.build(config.model, vocab_size)
  regions = 2 * (config.data.image_size // 32) ** 2
  rng = jax.random.key(0)
  images = jnp.zeros((1, 2, config.data.image_size, config.data.image_size, 3))
  variables = jax.jit(lambda: model.init({"params": rng, "dropout": rng}, images, jnp.zeros((1, 4), jnp.int32)))()
  # Cached image memory of a batch (what the encoder would produce), random but fixed.
  memory_regions = jax.random.normal(jax.random.key(1), (batch, regions, config.model.region_dim))
  memory = {
    "regions": memory_regions,
    "keys": model.apply(variables, memory_regions, method=lambda m, r: m.decoder.project_keys(r)),
  }
  return model, variables, memory


def compiled_beam_search(model, variables, memory, tokenizer, beam: int, length: int):
  @jax.jit
  def search(variables, memory):
    cache = model.apply(variables, memory, method="init_cache")
    tokens, _ = decoding.beam_search(
      model.decoder_step_fn(variables),
      cache,
      start_id=tokenizer.start_id,
      end_id=tokenizer.end_id,
      pad_id=tokenizer.pad_id,
      max_length=length,
      beam_size=beam,
    )
    return tokens

  return lambda: search(variables, memory).block_until_ready()


def host_loop_beam_search(model, variables, memory, tokenizer, beam: int, length: int):
  """Beam search driven from Python: one jitted call per token, a host check for early stopping."""
  batch = memory["regions"].shape[0]

  @jax.jit
  def init(variables, memory):
    cache = model.apply(variables, memory, method="init_cache")
    cache = jax.tree.map(lambda x: jnp.repeat(x, beam, axis=0), cache)  # [batch * beam, ...]
    log_probs = jnp.tile(jnp.array([0.0] + [-jnp.inf] * (beam - 1)), (batch, 1))  # [batch, beam]
    tokens = jnp.full((batch * beam,), tokenizer.start_id, jnp.int32)
    return tokens, cache, log_probs, jnp.zeros((batch, beam), bool)

  @jax.jit
  def one_token(variables, tokens, cache, position, log_probs, finished):
    logits, cache = model.decoder_step_fn(variables)(tokens, cache, position)
    vocab = logits.shape[-1]
    step_log_probs = jax.nn.log_softmax(logits).reshape(batch, beam, vocab)  # [batch, beam, vocab]
    # Finished beams only extend with <pad> at no cost.
    frozen = jnp.full((vocab,), -jnp.inf).at[tokenizer.pad_id].set(0.0)
    step_log_probs = jnp.where(finished[..., None], frozen, step_log_probs)
    candidates = (log_probs[..., None] + step_log_probs).reshape(batch, beam * vocab)
    log_probs, flat = jax.lax.top_k(candidates, beam)  # [batch, beam]
    parents, new_tokens = flat // vocab, flat % vocab
    rows = (jnp.arange(batch)[:, None] * beam + parents).reshape(-1)  # [batch * beam]
    cache = jax.tree.map(lambda x: x[rows], cache)
    finished = jnp.take_along_axis(finished, parents, axis=1) | (new_tokens == tokenizer.end_id)
    return new_tokens.reshape(-1).astype(jnp.int32), cache, log_probs, finished, parents, new_tokens

  def run():
    tokens, cache, log_probs, finished = init(variables, memory)
    for position in range(length):
      tokens, cache, log_probs, finished, _, _ = one_token(
        variables, tokens, cache, np.int32(position), log_probs, finished
      )
      if bool(finished.all()):  # The host sync a Python-driven decoder needs to stop early.
        break
    jax.block_until_ready(log_probs)

  return run


def training_steps_per_second(config, tokenizer, steps: int) -> float:
  """Steps/s of the trainer's jitted step (train.make_train_step) on one fixed random batch."""
  components = workdir.build(config, tokenizer)
  state = jax.jit(lambda rng: workdir.init_state(components, rng))(jax.random.key(0))
  tx = components.make_optimizer(state.params)
  step = jax.jit(train.make_train_step(components, tx, config.train.seed), donate_argnums=0)
  size, batch, views = config.data.image_size, config.train.batch_size, config.data.num_views
  data = {
    "images": np.random.default_rng(0).standard_normal((batch, views, size, size, 3)).astype(np.float32),
    "tokens": np.random.default_rng(1)
    .integers(len(tokenizers.SPECIAL_TOKENS), len(tokenizer), (batch, config.data.max_length))
    .astype(np.int32),
  }
  state, metrics = step(state, data)  # Compile.
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, data)
  jax.block_until_ready(metrics)
  return steps / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--beam", type=int, default=3)
  parser.add_argument("--length", type=int, default=60)
  parser.add_argument("--vocab", type=int, default=763)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--train-steps", type=int, default=5)
  args = parser.parse_args()
  from configs import demo, iu_xray_attention

  machine = {
    "device": jax.devices()[0].device_kind,
    "platform": jax.default_backend(),
    "cpu_count": os.cpu_count(),
    "jax": jax.__version__,
  }
  iu_tokenizer = word_vocabulary(args.vocab)

  config = iu_xray_attention.get_config()
  results = {"benchmark": "beam_search", "beam": args.beam, "max_length": args.length, "vocab": args.vocab}
  # The requested batch, and one study at a time (interactive use, where per-token overheads show).
  for batch in sorted({args.batch, 1}, reverse=True):
    model, variables, memory = _decoder_and_memory(config, len(iu_tokenizer), batch)
    compiled = _best_time(
      compiled_beam_search(model, variables, memory, iu_tokenizer, args.beam, args.length), args.repeats
    )
    host = _best_time(
      host_loop_beam_search(model, variables, memory, iu_tokenizer, args.beam, args.length), args.repeats
    )
    results.update(
      {
        f"batch{batch}_compiled_reports_per_s": round(batch / compiled, 2),
        f"batch{batch}_host_loop_reports_per_s": round(batch / host, 2),
        f"batch{batch}_speedup": round(host / compiled, 2),
      }
    )
  print(json.dumps({**results, **machine}))

  results = {"benchmark": "attention_captioner_training", "unit": "steps/s"}
  demo_config = demo.get_config()
  # The demo's own vocabulary: built from its phantom training reports, as `cxrjax train` does.
  demo_tokenizer = datasets.load_or_build_tokenizer(
    demo_config.data, datasets.make_source(demo_config.data, "train")[0]
  )
  results["demo_steps_per_s"] = round(training_steps_per_second(demo_config, demo_tokenizer, args.train_steps * 4), 3)
  results["demo_batch"] = demo_config.train.batch_size
  results["demo_vocab"] = len(demo_tokenizer)
  iu_config = iu_xray_attention.get_config()
  iu_config.train.batch_size = 8
  results["iu_xray_densenet121_frozen_steps_per_s"] = round(
    training_steps_per_second(iu_config, iu_tokenizer, args.train_steps), 3
  )
  results["iu_xray_batch"] = iu_config.train.batch_size
  print(json.dumps({**results, **machine}))


if __name__ == "__main__":
  main()
