"""How XLA's TPU cost analysis counts "bytes accessed": programs whose HBM traffic is known, compiled for a
v5e:2x2 slice on this machine (libtpu), beside the bytes of their inputs, intermediates and output.

  python benchmarks/tpu_bytes_probe.py

One JSON line per program: XLA's bytes accessed, the bytes of every array the program reads or writes once
(inputs, the intermediate products written and read back, the output), and their ratio. cxrjax/jobs/aot.py's
bytes roofline divides XLA's count by the chip's HBM bandwidth; a ratio above 1 means that roofline
overstates the time spent on HBM traffic (BUILD.md, "Compiling for a TPU slice without one").
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))


def probe(name: str, function, shapes: list[tuple[int, ...]], intermediates: list[tuple[int, ...]], mesh) -> dict:
  """bfloat16 arguments of `shapes`, replicated; `intermediates`: the arrays the program writes and reads back."""
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  arguments = [jax.ShapeDtypeStruct(shape, jnp.bfloat16, sharding=replicated) for shape in shapes]
  compiled = jax.jit(function).lower(*arguments).compile()
  from cxrjax.jobs import aot  # pylint: disable=g-import-not-at-top  (after main() set the platform)

  costs = aot.costs(compiled.cost_analysis())
  output = jax.eval_shape(function, *arguments).shape
  once = 2 * (
    sum(int(np.prod(s)) for s in shapes) + 2 * sum(int(np.prod(s)) for s in intermediates) + int(np.prod(output))
  )
  return dict(
    benchmark="tpu_bytes_probe",
    program=name,
    xla_bytes_accessed=int(costs["bytes accessed"]),
    bytes_read_or_written_once=once,
    ratio=round(costs["bytes accessed"] / once, 2),
    xla_flops=int(costs["flops"]),
  )


def main() -> None:
  jax.config.update("jax_platforms", "cpu")  # Traced here; compiled for the described slice.
  from cxrjax.jobs import aot  # pylint: disable=g-import-not-at-top

  devices = aot.describe_slice("v5e:2x2").devices
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  n = 4096
  for line in (
    probe("a @ b, 4096^2 each", lambda a, b: a @ b, [(n, n), (n, n)], [], mesh),
    probe("(a @ b) @ c, 4096^2 each", lambda a, b, c: (a @ b) @ c, [(n, n)] * 3, [(n, n)], mesh),
    probe(
      "gelu(x @ w1) @ w2, x 8192x768, w1 768x3072",
      lambda x, w1, w2: jax.nn.gelu(x @ w1) @ w2,
      [(8192, 768), (768, 3072), (3072, 768)],
      [(8192, 3072)],
      mesh,
    ),
  ):
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
  main()
