"""Parameter and optimizer-state bytes per device of each parameter layout (config.sharding), side by side.

  python benchmarks/parameter_layouts.py [--devices 8]

For the full-size transformer configs (GIT-base, BLIP-base, seed 003's graph captioner, vocabulary 30522),
replicated, FSDP, tensor parallel over 'model' and both, computed from the state's abstract shapes and
shardings (workdir.abstract_state: nothing is allocated), on `--devices` simulated CPU devices unless
XLA_FLAGS already gives the device count. Prints one JSON line: per config and layout the mesh, the total
and the largest per-device bytes (MiB) of the parameters and of the AdamW state.
"""

import argparse
import json
import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB_SIZE = 30522  # bert-base-uncased's WordPiece vocabulary: GIT, BLIP and seed 003 use it.
LAYOUTS = {
  "replicated": "",
  "fsdp": "fsdp",
  "model_parallel=2": "model_parallel=2",
  "model_parallel=2,fsdp": "model_parallel=2,fsdp",
}


class _VocabularySize:
  """What workdir.build reads of a tokenizer: its length."""

  def __len__(self):
    return VOCAB_SIZE


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--devices", type=int, default=8)
  args = parser.parse_args()
  os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
  import jax  # pylint: disable=g-import-not-at-top  (after XLA_FLAGS)
  from cxrjax.core import sharding
  from cxrjax.run import workdir  # pylint: disable=g-import-not-at-top
  from configs import roco_blip, roco_git, rocov2_graph  # pylint: disable=g-import-not-at-top

  mib = lambda n: round(n / 2**20, 1)
  results = []
  for name, module in (("roco_git", roco_git), ("roco_blip", roco_blip), ("rocov2_graph", rocov2_graph)):
    for layout, arg in LAYOUTS.items():
      config = module.get_config(arg) if arg else module.get_config()
      components = workdir.build(config, _VocabularySize())
      mesh = sharding.create_mesh(config.get("sharding"))
      state = workdir.abstract_state(components, mesh, config.get("sharding"))
      params = sharding.parameter_bytes_per_device(state.params)
      opt_state = sharding.parameter_bytes_per_device(state.opt_state)
      results.append(
        dict(
          config=name,
          layout=layout,
          mesh=dict(mesh.shape),
          params_mib=mib(params["total"]),
          params_per_device_mib=mib(params["per_device_max"]),
          opt_state_mib=mib(opt_state["total"]),
          opt_state_per_device_mib=mib(opt_state["per_device_max"]),
        )
      )
  print(json.dumps({"benchmark": "parameter_layouts", "devices": jax.device_count(), "results": results}))


if __name__ == "__main__":
  main()
