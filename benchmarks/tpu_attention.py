"""The ViT's attention (cxrjax/models/encoders/vit.py) against Pallas' fused TPU flash-attention kernel,
both compiled for one v5e chip on this machine (libtpu), at GIT's and BLIP's image-token counts.

  python benchmarks/tpu_attention.py

One JSON line per shape and implementation, side by side: XLA's FLOPs and bytes accessed for the forward
pass, the temporaries of the forward and backward pass, and whether the program compiles for a batch split
over the chips of a v5e:2x2 slice (`jax.jit` with a data-sharded batch, as the train step is). The kernel
needs keys in blocks of 128, so its inputs are padded (197 -> 256, 577 -> 640 tokens) and the padding
masked with segment ids. Its forward kernel declares its own cost (its inputs and outputs read or written
once; jax.experimental.pallas.ops.tpu.flash_attention), and its backward kernels declare none, so only the
forward passes are compared by XLA's counts (BUILD.md, "Compiling for a TPU slice without one").
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# (model, examples a chip, tokens): the `tpu` configs' batch per chip on 8 chips.
SHAPES = (("git-base", 8, 197), ("blip-base", 1, 577), ("blip-base", 8, 577))
HEADS, HEAD_DIM = 12, 64


def flash(queries, keys, values, dtype):
  """Pallas' flash attention over [batch, heads, tokens, head_dim], the tokens padded to a multiple of 128."""
  from jax.experimental.pallas.ops.tpu import flash_attention  # pylint: disable=g-import-not-at-top

  batch, _, tokens, depth = queries.shape
  padded = -(-tokens // 128) * 128
  pad = lambda x: jnp.pad(x.astype(dtype), ((0, 0), (0, 0), (0, padded - tokens), (0, 0)))
  segments = jnp.broadcast_to((jnp.arange(padded) < tokens).astype(jnp.int32), (batch, padded))
  context = flash_attention.flash_attention(
    pad(queries),
    pad(keys),
    pad(values),
    segment_ids=flash_attention.SegmentIds(segments, segments),
    sm_scale=depth**-0.5,
  )
  return context[:, :, :tokens]


def measure(implementation: str, attend, batch: int, tokens: int, devices) -> dict:
  from cxrjax.jobs import aot  # pylint: disable=g-import-not-at-top  (after main() set the platform)

  one_chip = jax.sharding.SingleDeviceSharding(devices[0])
  spec = jax.ShapeDtypeStruct((batch, HEADS, tokens, HEAD_DIM), jnp.bfloat16, sharding=one_chip)
  forward = jax.jit(lambda q, k, v: attend(q, k, v, jnp.bfloat16)).lower(spec, spec, spec).compile()
  loss = lambda q, k, v: jnp.sum(attend(q, k, v, jnp.bfloat16).astype(jnp.float32) ** 2)
  both = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec).compile()
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  global_spec = jax.ShapeDtypeStruct((batch * len(devices), HEADS, tokens, HEAD_DIM), jnp.bfloat16, sharding=split)
  try:
    jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(global_spec, global_spec, global_spec).compile()
    sharded = "compiles"
  except NotImplementedError as error:  # Mosaic kernels are not partitioned by XLA: they need a shard_map.
    sharded = str(error).splitlines()[0]
  forward_costs = aot.costs(forward.cost_analysis())
  return dict(
    benchmark="tpu_attention",
    implementation=implementation,
    batch_per_chip=batch,
    tokens=tokens,
    heads=HEADS,
    head_dim=HEAD_DIM,
    forward_gflop=round(forward_costs["flops"] / 1e9, 3),
    forward_mb_accessed=round(forward_costs["bytes accessed"] / 1e6, 1),
    forward_and_backward_temp_mb=round(both.memory_analysis().temp_size_in_bytes / 1e6, 1),
    data_sharded_over_4_chips=sharded,
  )


def main() -> None:
  jax.config.update("jax_platforms", "cpu")  # Traced here; compiled for the described slice.
  from cxrjax.jobs import aot  # pylint: disable=g-import-not-at-top
  from cxrjax.models.encoders import vit  # pylint: disable=g-import-not-at-top

  devices = aot.describe_slice("v5e:2x2").devices
  for model, batch, tokens in SHAPES:
    for implementation, attend in (("xla (vit._attend)", vit._attend), ("pallas flash", flash)):
      line = measure(implementation, attend, batch, tokens, devices)
      print(json.dumps(dict(model=model, **line)), flush=True)


if __name__ == "__main__":
  main()
