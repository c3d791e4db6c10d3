"""Every family's full-size `tpu` config compiled for TPU slices on this machine (libtpu; cxrjax/jobs/aot.py).

  python benchmarks/tpu_compile.py [--configs roco_git,rocov2_graph] [--topologies v5e:2x4,v5e:4x4]
      [--program train] [--no-find-batch-size]

For each config and slice, the train step as `cxrjax train` builds it (the config's batch, layout and
dtype), compiled by XLA's TPU compiler: one JSON line with the chips and hosts, the HBM per chip and what
holds it, whether it fits, XLA's FLOPs and bytes per chip, the roofline (FLOPs at the chip's bf16 peak,
bytes at its HBM bandwidth), the estimated step time (aot.estimate says which estimate), the examples/s per
chip it implies, the estimated model FLOPs utilisation (the matrix-product FLOPs of the step as traced /
(estimated time x peak)), the compiled products' FLOPs by operand dtype, the collectives, the compile time,
and (unless --no-find-batch-size) the largest batch per chip that fits, found by compiling (a few
compiles more per line).

The `tpu` configs are written for 8 chips (roco_git.py: "8 devices of batch 8"): the default slices are
v5e:2x4 (8 chips, 2 hosts as libtpu describes a v5litepod-8) and v5e:4x4 (16 chips, 4 hosts). AG-CNN has
no `tpu` variant: its stage-1 config at its batch (32). Full-size compiles take minutes each on 2 CPU
cores; run what you need with --configs.
"""

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Config argument per config file: the full-size TPU variant (AG-CNN has none).
CONFIGS = {
  "roco_git": "tpu",
  "roco_blip": "tpu",
  "rocov2_graph": "tpu",
  "iu_xray_attention": "tpu",
  "iu_xray_lstm": "tpu",
  "iu_xray_cam": "tpu",
  "chestxray14_agcnn": "",
}
# Output vocabularies (no tokenizer file or prepared dataset is at hand here): R2Gen's IU X-ray words with
# cxrjax's special tokens (as benchmarks/decode.py), bert-base-uncased's WordPiece (GIT, seed 003) and
# BLIP's (bert-base-uncased plus its [DEC] and [ENC]).
VOCAB_SIZES = {
  "iu_xray_attention": 763,
  "iu_xray_lstm": 763,
  "iu_xray_cam": 763,
  "roco_git": 30522,
  "rocov2_graph": 30522,
  "roco_blip": 30524,
}
GIB = 2**30


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=",".join(CONFIGS), help="config files (configs/NAME.py), comma-separated")
  parser.add_argument("--topologies", default="v5e:2x4,v5e:4x4", help="TPU slices, comma-separated")
  parser.add_argument("--program", default="train", choices=("train", "evaluate", "serve"))
  parser.add_argument("--no-find-batch-size", action="store_true", help="skip the search for the largest batch")
  parser.add_argument("--hlo-dir", default=None, help="also write each compiled program's text there")
  args = parser.parse_args()
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top

  jax.config.update("jax_platforms", "cpu")  # The programs are traced on the CPU (aot.main does the same).
  from cxrjax.jobs import aot  # pylint: disable=g-import-not-at-top

  for topology in args.topologies.split(","):
    tpu_slice = aot.describe_slice(topology)
    for name in args.configs.split(","):
      config = importlib.import_module(f"configs.{name}").get_config(CONFIGS[name] or None)
      vocab_size = VOCAB_SIZES.get(name)
      spec = f"configs/{name}.py" + (f":{CONFIGS[name]}" if CONFIGS[name] else "")
      started = time.perf_counter()
      try:
        (report,) = aot.compile_config(config, tpu_slice, (args.program,), vocab_size=vocab_size)
      except aot.UserError as error:  # E.g. a global batch that the slice's chips do not divide.
        print(
          json.dumps(
            dict(benchmark="tpu_compile", config=spec, program=args.program, topology=topology, error=str(error))
          ),
          flush=True,
        )
        continue
      print(f"{spec} {topology}: compiled in {report.compile_seconds:.0f} s", file=sys.stderr, flush=True)
      if args.hlo_dir:
        pathlib.Path(args.hlo_dir).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(args.hlo_dir) / f"{name}_{args.program}_{topology.replace(':', '_')}.hlo").write_text(report.hlo)
      line = dict(
        benchmark="tpu_compile",
        config=spec,
        program=args.program,
        topology=topology,
        chip=report.chip,
        chips=report.chips,
        hosts=report.hosts,
        mesh=report.mesh,
        vocab_size=vocab_size,
        batch=report.batch,
        batch_per_chip=report.batch_per_chip,
        fits=report.fits,
        hbm_used_gib=_gib(report.hbm_used),
        hbm_usable_gib=_gib(report.hbm_capacity),
        memory_gib={k: _gib(v) for k, v in report.memory.items()},
        tflop_per_chip=_round(report.flops, 1e12),
        model_tflop_per_chip=_round(report.model_flops, 1e12),
        gb_accessed_per_chip=_round(report.bytes_accessed, 1e9),
        estimated_ms=_round(report.estimated_seconds, 1e-3),
        estimate=report.estimate,
        roofline_ms=_round(report.roofline_seconds, 1e-3),
        compute_ms=_round(report.compute_seconds, 1e-3),
        memory_ms=_round(report.memory_seconds, 1e-3),
        xla_optimal_seconds=report.xla_optimal_seconds,
        examples_per_s_per_chip=_round(report.examples_per_s_per_chip, 1),
        model_flops_utilisation=_round(report.model_flops_utilisation, 1),
        products_tflop={k: _round(v, 1e12) for k, v in report.products.items()},
        collectives=report.collectives,
        largest_buffers=report.largest_buffers,
        compile_s=round(report.compile_seconds, 1),
      )
      if not args.no_find_batch_size:
        searched = time.perf_counter()
        best, probes = aot.find_batch_size(
          config,
          tpu_slice,
          args.program,
          vocab_size,
          known=report,
          log=lambda text: print(f"{spec} {topology}:{text}", file=sys.stderr, flush=True),
        )
        line.update(
          largest_batch_per_chip=best,
          probes=[(r.batch // r.chips, r.fits, _gib(r.hbm_used)) for r in probes],
          find_batch_size_s=round(time.perf_counter() - searched, 1),
        )
      line["wall_s"] = round(time.perf_counter() - started, 1)
      print(json.dumps(line), flush=True)


def _gib(size):
  return None if size is None else round(size / GIB, 3)


def _round(value, unit):
  return None if value is None else round(value / unit, 4)


if __name__ == "__main__":
  main()
