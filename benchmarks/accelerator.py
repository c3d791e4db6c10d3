"""Training examples/s and achieved FLOPs utilisation of every family's full-size config on this machine's
accelerator (GPU or TPU), then cxrjax's GIT and BLIP generation against transformers' `generate` on it.

  python benchmarks/accelerator.py [--configs roco_git,rocov2_graph] [--steps 20] [--batch-per-device N]
      [--no-generation] [--smoke]

Per config, one JSON line: the train step exactly as `cxrjax train` builds it (workdir.build, the config's
mesh layout over every local device, train.jit_train_step), fed a fixed random batch of the schema's shapes
(pipeline.batch_spec: no data is read, so the input pipeline is not timed), timed over `--steps` steps
after two warm-up steps; XLA's FLOPs of the compiled step (train.step_flops, what training logs), the
achieved FLOP/s and, where the chip's bf16 peak is known (train.PEAK_FLOPS_PER_S), the utilisation.
The configs are benchmarks/tpu_compile.py's (each family's `tpu` variant; AG-CNN's stage 1).

Then, unless --no-generation, benchmarks/hf_captioners.py's generation side by side (cxrjax greedy and beam
3 against transformers' `generate`, the same random weights, token equality checked) with torch on the
same device: CUDA where torch sees a GPU; on a TPU, torch runs on the host CPU, which the line says.

--smoke runs the smoke variants (tiny models, CPU-sized): a check that the script runs, not a figure.
"""

import argparse
import importlib
import json
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tpu_compile import CONFIGS, VOCAB_SIZES  # pylint: disable=g-import-not-at-top
from cxrjax.jobs import aot, train
from cxrjax.core import sharding
from cxrjax.run import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
from cxrjax.data import pipeline  # pylint: disable=g-import-not-at-top


def random_batch(spec: dict[str, jax.ShapeDtypeStruct], vocab_size: int | None, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch of `spec`'s shapes: images ~ N(0, 1) (normalised pixels), captions of random tokens that start
  with the start id and fill every position (the longest, costliest case), labels of 0/1, every row real."""
  rng = np.random.default_rng(seed)
  batch = {}
  for key, value in spec.items():
    if key == "mask":
      batch[key] = np.ones(value.shape, value.dtype)
    elif key == "tokens":
      tokens = rng.integers(3, vocab_size, value.shape)
      tokens[:, 0] = 1
      batch[key] = tokens.astype(value.dtype)
    elif key == "labels":
      batch[key] = rng.integers(0, 2, value.shape).astype(value.dtype)
    else:
      batch[key] = rng.standard_normal(value.shape).astype(value.dtype)
  return batch


def train_line(name: str, arg: str, steps: int, batch_per_device: int | None) -> dict:
  """One config's training throughput on the local devices (module docstring)."""
  config = importlib.import_module(f"configs.{name}").get_config(arg or None)
  config.train.cache_features = False  # The step reads images, as the full-size recipes' TPU runs do.
  vocab_size = VOCAB_SIZES.get(name)  # BLIP's prompt ids need its whole vocabulary, smoke sizes too.
  tokenizer, _ = aot.load_tokenizer(config, vocab_size)
  components = workdir_lib.build(config, tokenizer)  # Classifiers: the dataset's findings.
  section = config.get("sharding")
  batch_size = config.train.batch_size if batch_per_device is None else batch_per_device * jax.device_count()
  train.check_batch_size(batch_size, section)
  mesh = sharding.create_mesh(section)
  target = workdir_lib.abstract_state(components, mesh, section)
  state_sharding = jax.tree.map(lambda a: a.sharding, target)
  state = jax.jit(lambda rng: workdir_lib.init_state(components, rng), out_shardings=state_sharding)(
    jax.random.key(config.train.seed)
  )
  tx = components.make_optimizer(target.params)
  step = train.jit_train_step(components, tx, config.train.seed, state_sharding, mesh)
  spec = pipeline.batch_spec(config, batch_size, tokenizer, components.task.label_names)
  batch = sharding.to_global(random_batch(spec, vocab_size), sharding.data_sharded(mesh))
  started = time.perf_counter()
  flops = train.step_flops(step, state, batch)
  compile_s = time.perf_counter() - started
  for _ in range(2):  # Warm-up: the first call also transfers; AdamW's first update is like the rest.
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  started = time.perf_counter()
  for _ in range(steps):
    state, metrics = step(state, batch)
  loss = float(jax.block_until_ready(metrics)["loss"])
  seconds = time.perf_counter() - started
  rates = train.throughput(steps, seconds, batch_size, flops)
  peak = train.PEAK_FLOPS_PER_S.get(jax.devices()[0].device_kind)
  return dict(
    benchmark="accelerator_train",
    config=f"configs/{name}.py" + (f":{arg}" if arg else ""),
    device=jax.devices()[0].device_kind,
    devices=jax.device_count(),
    batch=batch_size,
    steps=steps,
    seconds=round(seconds, 3),
    compile_s=round(compile_s, 1),
    examples_per_s=round(rates["examples_per_s"], 2),
    examples_per_s_per_device=round(rates["examples_per_s"] / jax.device_count(), 2),
    tflop_per_step=None if flops is None else round(flops / 1e12, 4),
    achieved_tflop_per_s=None if "flops_per_s" not in rates else round(rates["flops_per_s"] / 1e12, 3),
    peak_tflop_per_s_per_device=None if peak is None else peak / 1e12,
    flops_utilisation=None if "flops_utilisation" not in rates else round(rates["flops_utilisation"], 4),
    loss_finite=bool(np.isfinite(loss)),
  )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS), help="config files (configs/NAME.py), comma-separated")
  parser.add_argument("--steps", type=int, default=20, help="timed train steps per config")
  parser.add_argument("--batch-per-device", type=int, default=None, help="default: the config's batch")
  parser.add_argument("--no-generation", action="store_true", help="skip GIT/BLIP generation vs transformers")
  parser.add_argument("--smoke", action="store_true", help="the smoke variants: checks the script, not a figure")
  args = parser.parse_args()
  for name in args.configs.split(","):
    if name not in CONFIGS:
      raise SystemExit(f"--configs: unknown config {name!r}; known: {', '.join(CONFIGS)}")
    print(
      json.dumps(train_line(name, "smoke" if args.smoke else CONFIGS[name], args.steps, args.batch_per_device)),
      flush=True,
    )
  if not args.no_generation:
    # The generation comparison is hf_captioners.py's own, with torch on this machine's accelerator.
    command = [sys.executable, str(ROOT / "benchmarks" / "hf_captioners.py"), "--torch-device", "auto"]
    if args.smoke:
      command.append("--smoke")
    subprocess.run(command, check=True)


if __name__ == "__main__":
  main()
