"""The device mesh and the moves between host data and global arrays, for one or many processes.

The batch is sharded over a one-axis ('data',) mesh of every device of every process; the parameters are
replicated. Each process holds its own shard of every global batch (`to_global`) and gets every
process's outputs back (`gather`), so one code path serves a laptop CPU, 8 simulated devices and a
multi-host TPU slice.
"""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from cxrjax.errors import ConfigError

DATA_AXIS = "data"


def parse_distributed(spec: str) -> dict[str, Any] | None:
  """`--distributed` -> jax.distributed.initialize's arguments: "" -> None (one process); "auto" -> {} (JAX
  finds the coordinator itself: TPU VMs, SLURM, or its JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES /
  JAX_PROCESS_ID environment); "HOST:PORT,NUM_PROCESSES,PROCESS_ID" -> those three."""
  if not spec:
    return None
  if spec == "auto":
    return {}
  parts = spec.split(",")
  if len(parts) != 3 or ":" not in parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
    raise ConfigError(f"--distributed={spec!r}: expected auto or HOST:PORT,NUM_PROCESSES,PROCESS_ID")
  num_processes, process_id = int(parts[1]), int(parts[2])
  if not 0 <= process_id < num_processes:
    raise ConfigError(f"--distributed={spec!r}: process id {process_id} is not in 0..{num_processes - 1}")
  return dict(coordinator_address=parts[0], num_processes=num_processes, process_id=process_id)


def initialize_distributed(spec: str) -> None:
  """Joins this process to JAX's distributed runtime (`parse_distributed`); every process runs the same
  command. On CPU the collectives go through gloo, as multi-process CPU runs need. Must run before any
  other JAX call touches the devices."""
  arguments = parse_distributed(spec)
  if arguments is None:
    return
  if arguments:  # Explicit addresses: also CPU processes (tests, clusters); it changes nothing on TPUs.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**arguments)


def create_mesh() -> jax.sharding.Mesh:
  """A ('data',) mesh over every device (all hosts), with Auto axes as linen models need."""
  return jax.make_mesh((jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def is_lead_process() -> bool:
  """Process 0 alone writes files (configs, metrics, evaluation outputs)."""
  return jax.process_index() == 0


def pad_batch(batch: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
  """Pads every array of a host batch with zero rows (mask False) to a multiple of `multiple` rows, so
  that an evaluation batch of any size splits over the local devices; callers drop the padding by mask."""
  size = len(next(iter(batch.values())))
  extra = -size % multiple
  if not extra:
    return batch
  padded = {}
  for key, value in batch.items():
    filler = np.zeros((extra,) + value.shape[1:], value.dtype)
    padded[key] = np.concatenate([value, filler])
  return padded


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's shard of the batch -> global arrays sharded over 'data' (strings stay on the host)."""
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in batch.items() if value.dtype.kind in "biuf"}


def gather(tree: Any) -> Any:
  """Global arrays sharded over 'data' (or per-process numpy arrays of equal shapes) -> numpy arrays of
  every process's rows on every process, process 0's rows first."""
  if jax.process_count() == 1:
    return jax.tree.map(np.asarray, tree)
  return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))


def gather_strings(strings: Sequence[str]) -> list[str]:
  """Every process's list of strings (equal lengths per process), concatenated in process order."""
  if jax.process_count() == 1:
    return list(strings)
  encoded = [s.encode("utf-8") for s in strings]
  width = int(np.max(gather(np.array([max([len(e) for e in encoded], default=0)], np.int32))))
  table = np.zeros((len(encoded), max(width, 1)), np.uint8)
  lengths = np.array([len(e) for e in encoded], np.int32)
  for row, data in enumerate(encoded):
    table[row, :len(data)] = np.frombuffer(data, np.uint8)
  table, lengths = gather(table), gather(lengths)
  return [bytes(row[:length]).decode("utf-8") for row, length in zip(table, lengths)]
