"""The device mesh, the parameters' layout on it, and the moves between host data and global arrays,
for one or many processes.

The mesh has two axes, ('data', 'model'), over every device of every process. The batch is sharded over
'data' (replicated over 'model'). Each process holds its own shard of every global batch (`to_global`)
and gets every process's outputs back (`gather`), so one code path serves a laptop CPU, 8 simulated
devices and a multi-host TPU slice.

Parameters are replicated unless the config has a `sharding` section:

  config.sharding = dict(mesh=(("data", -1), ("model", 2)), rules=sharding.DEFAULT_RULES, fsdp=True,
                         fsdp_min_size=2 ** 14)

`mesh` gives the axis sizes (-1: the devices left; 'model' defaults to 1). `rules` map the logical axis
names of the transformer families' kernels (models/partitioning.py: embed, heads, mlp, vocab) to a mesh
axis or None: the default is tensor parallelism over 'model' (heads, MLP units and vocabulary split,
the model width not). `fsdp` also splits every parameter of any model (DenseNet convolutions too) over
'data' along its largest dimension that 'data' divides and no rule shards (ZeRO-3 / FSDP: XLA gathers
each where it is used); parameters of fewer than `fsdp_min_size` elements (biases, norms) stay
replicated. A dimension a mesh axis does not divide stays whole. The optimizer state follows the
parameters' layout (workdir.abstract_state); checkpoints restore onto any other layout or device count.
Training prints the bytes of parameters each device holds (`parameter_bytes_per_device`).
"""

import collections
import contextlib
import math
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from cxrjax.core.errors import ConfigError

DATA_AXIS, MODEL_AXIS = "data", "model"
MESH_AXES = (DATA_AXIS, MODEL_AXIS)
# Megatron-style tensor parallelism of the logical names of models/partitioning.py: attention heads, MLP
# units and the vocabulary split over 'model', the model width (the residual stream) whole.
DEFAULT_RULES = (("heads", MODEL_AXIS), ("mlp", MODEL_AXIS), ("vocab", MODEL_AXIS), ("embed", None))
FSDP_MIN_SIZE = 2**14  # Elements: smaller parameters (biases, norms) are not worth a gather.
SECTION_FIELDS = ("mesh", "rules", "fsdp", "fsdp_min_size")


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


def check_section(section: Any = None, device_count: int | None = None) -> dict[str, Any]:
  """The `sharding` config section (module doc; None: replicated parameters), checked, with the mesh
  sizes resolved for `device_count` (default: every device): {"mesh": {"data": n, "model": m}, "rules":
  ((logical, mesh axis or None), ...), "fsdp": bool, "fsdp_min_size": int}. Mistakes are one-line
  ConfigErrors."""
  device_count = jax.device_count() if device_count is None else device_count
  section = dict(section or {})
  unknown = sorted(set(section) - set(SECTION_FIELDS))
  if unknown:
    raise ConfigError(f"sharding.{unknown[0]}: unknown field; the section has {list(SECTION_FIELDS)}")
  sizes = _mesh_sizes(section.get("mesh", ((DATA_AXIS, -1),)), device_count)
  rules = section.get("rules", DEFAULT_RULES)
  if not isinstance(rules, (tuple, list)) or not all(isinstance(r, (tuple, list)) and len(r) == 2 for r in rules):
    raise ConfigError(f"sharding.rules={rules!r}: expected ((logical axis, mesh axis or None), ...) pairs")
  logical = [name for name, _ in rules]
  for name, axis in rules:
    if not isinstance(name, str):
      raise ConfigError(f"sharding.rules: logical axis {name!r} is not a string")
    if logical.count(name) > 1:
      raise ConfigError(f"sharding.rules: logical axis {name!r} appears {logical.count(name)} times")
    if axis is not None and axis not in MESH_AXES:
      raise ConfigError(
        f"sharding.rules: {name!r} -> unknown mesh axis {axis!r}; expected one of {list(MESH_AXES)} or None"
      )
  fsdp = section.get("fsdp", False)
  if not isinstance(fsdp, bool):
    raise ConfigError(f"sharding.fsdp={fsdp!r}: expected True or False")
  min_size = section.get("fsdp_min_size", FSDP_MIN_SIZE)
  if not isinstance(min_size, int) or isinstance(min_size, bool) or min_size < 0:
    raise ConfigError(f"sharding.fsdp_min_size={min_size!r}: expected an integer >= 0 (elements)")
  return dict(mesh=sizes, rules=tuple((name, axis) for name, axis in rules), fsdp=fsdp, fsdp_min_size=min_size)


def _mesh_sizes(mesh: Any, device_count: int) -> dict[str, int]:
  if not isinstance(mesh, (tuple, list)) or not all(isinstance(a, (tuple, list)) and len(a) == 2 for a in mesh):
    raise ConfigError(f"sharding.mesh={mesh!r}: expected ((axis, size), ...) pairs, e.g. (('data', -1), ('model', 2))")
  sizes = {}
  for axis, size in mesh:
    if axis not in MESH_AXES:
      raise ConfigError(f"sharding.mesh: unknown axis {axis!r}; the axes are {list(MESH_AXES)}")
    if axis in sizes:
      raise ConfigError(f"sharding.mesh: axis {axis!r} appears twice")
    if not isinstance(size, int) or isinstance(size, bool) or not (size >= 1 or size == -1):
      raise ConfigError(f"sharding.mesh: {axis} size {size!r}; expected an integer >= 1, or -1 for the devices left")
    sizes[axis] = size
  if list(sizes.values()).count(-1) > 1:
    raise ConfigError(f"sharding.mesh={mesh!r}: only one axis may have size -1")
  sizes = {axis: sizes.get(axis, 1) for axis in MESH_AXES}
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if -1 in sizes.values():
    if device_count % fixed:
      raise ConfigError(
        f"sharding.mesh={mesh!r}: the other axes' {fixed} devices do not divide the {device_count} devices"
      )
    sizes = {axis: device_count // fixed if size == -1 else size for axis, size in sizes.items()}
  elif fixed != device_count:
    raise ConfigError(f"sharding.mesh={mesh!r}: the sizes multiply to {fixed}, but there are {device_count} devices")
  return sizes


# Tests only (mesh_process_order): the process of each device along the flattened mesh, or None for
# jax.make_mesh's order. A multi-host TPU slice interleaves its processes along 'data' (v5e:4x4:
# [0,0,1,1,1,1,0,2,3,3,3,3,2,2,2,0], DESIGN.md) where CPU processes come in blocks; the multi-process tests
# lay their CPU devices out as a slice does, so that code assuming blocks fails on CPU too.
_process_order: tuple[int, ...] | None = None


@contextlib.contextmanager
def mesh_process_order(order: Sequence[int] | None):
  """Within: create_mesh places the devices so that the flattened mesh's i-th device belongs to process
  order[i] (each process's devices in jax.make_mesh's order among themselves). For tests."""
  global _process_order
  previous, _process_order = _process_order, None if order is None else tuple(int(p) for p in order)
  try:
    yield
  finally:
    _process_order = previous


def create_mesh(section: Any = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
  """A ('data', 'model') mesh over every device (all hosts), with Auto axes as linen models need; the
  sizes of the `sharding` config section (check_section), else ('data' all devices, 'model' 1).
  `devices`: others than jax.devices(), e.g. a described TPU slice's (aot.py compiles for it)."""
  sizes = check_section(section, None if devices is None else len(devices))["mesh"]
  mesh = jax.make_mesh(
    tuple(sizes[axis] for axis in MESH_AXES),
    MESH_AXES,
    axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    devices=devices,
  )
  if _process_order is None:
    return mesh
  by_process = collections.defaultdict(list)
  for device in mesh.devices.flat:
    by_process[device.process_index].append(device)
  wanted = collections.Counter(_process_order)
  if wanted != collections.Counter({p: len(d) for p, d in by_process.items()}):
    raise ValueError(
      f"mesh process order {list(_process_order)} does not match the processes' device "
      f"counts {dict(sorted((p, len(d)) for p, d in by_process.items()))}"
    )
  ordered = [by_process[process].pop(0) for process in _process_order]
  return jax.sharding.Mesh(np.array(ordered).reshape(mesh.devices.shape), mesh.axis_names, axis_types=mesh.axis_types)


def mesh_for_loading(
  section: Any, source: str, devices: Sequence[jax.Device] | None = None
) -> tuple[jax.sharding.Mesh, Any]:
  """(mesh, section) to load a saved run with: its `sharding` section's, or, where that mesh does not
  fit the devices here (a TPU run evaluated on a laptop), replicated parameters over every device, with
  a warning naming `source`. `devices`: as create_mesh's."""
  try:
    return create_mesh(section, devices), section
  except ConfigError as error:
    if section is None:
      raise
    print(f"warning: {source}: {error}; loading with replicated parameters instead", file=sys.stderr)
    return create_mesh(None, devices), None


def parameter_spec(logical: P, shape: Sequence[int], mesh: jax.sharding.Mesh, section: Any = None) -> P:
  """The mesh PartitionSpec of one parameter of `shape` whose dimensions have the `logical` names: each
  name through the section's rules (a mesh axis used once per parameter, a dimension it does not divide
  left whole), then with `fsdp` its largest dimension still whole that 'data' divides split over 'data'
  (parameters of at least fsdp_min_size elements). No section: P() (replicated)."""
  return P() if section is None else _spec(logical, tuple(shape), mesh, check_section(section, mesh.size))


def _spec(logical: P, shape: tuple[int, ...], mesh: jax.sharding.Mesh, checked: dict[str, Any]) -> P:
  rules = dict(checked["rules"])
  names = tuple(logical) + (None,) * (len(shape) - len(logical))
  axes: list[str | None] = []
  for name, size in zip(names, shape):
    axis = rules.get(name) if isinstance(name, str) else None
    if axis is None or axis in axes or mesh.shape[axis] == 1 or size % mesh.shape[axis]:
      axis = None
    axes.append(axis)
  data = mesh.shape[DATA_AXIS]
  if (
    checked["fsdp"] and data > 1 and DATA_AXIS not in axes and shape and int(np.prod(shape)) >= checked["fsdp_min_size"]
  ):
    free = [d for d in range(len(shape)) if axes[d] is None and shape[d] % data == 0]
    if free:
      axes[max(free, key=lambda d: (shape[d], -d))] = DATA_AXIS  # The largest; the first of equals.
  while axes and axes[-1] is None:
    axes.pop()
  return P(*axes)


def parameter_shardings(logical_specs: Any, abstract_params: Any, mesh: jax.sharding.Mesh, section: Any = None) -> Any:
  """NamedShardings of a parameter tree (arrays or ShapeDtypeStructs) from its tree of logical
  PartitionSpecs (models/partitioning.logical_axes; the same structure), by `parameter_spec`."""
  if section is None:
    return jax.tree.map(lambda _: replicated(mesh), abstract_params)
  checked = check_section(section, mesh.size)
  return jax.tree.map(
    lambda logical, a: NamedSharding(mesh, _spec(logical, tuple(a.shape), mesh, checked)),
    logical_specs,
    abstract_params,
    is_leaf=lambda x: isinstance(x, P),
  )


def optimizer_shardings(
  tx: optax.GradientTransformation, abstract_opt_state: Any, param_shardings: Any, mesh: jax.sharding.Mesh
) -> Any:
  """Shardings of an optimizer state: each per-parameter leaf (Adam's moments, optax.MultiSteps' gradient
  sums) as its parameter's, every other leaf (counts) replicated."""
  return optax.tree_map_params(
    tx,
    lambda _, param_sharding: param_sharding,
    abstract_opt_state,
    param_shardings,
    transform_non_params=lambda _: replicated(mesh),
  )


def parameter_bytes_per_device(tree: Any) -> dict[str, int]:
  """The bytes of a tree of sharded arrays (or ShapeDtypeStructs with shardings) held by each device:
  {"total": of the global arrays, "per_device_max", "per_device_min": over the devices, "replicated": of
  the leaves every device holds whole, "devices": how many}."""
  held: collections.Counter = collections.Counter()
  total = replicated_bytes = 0
  for leaf in jax.tree.leaves(tree):
    shape, itemsize = tuple(leaf.shape), np.dtype(leaf.dtype).itemsize
    size = math.prod(shape) * itemsize
    total += size
    replicated_bytes += size if leaf.sharding.is_fully_replicated else 0
    for device, index in leaf.sharding.devices_indices_map(shape).items():
      held[device] += math.prod(len(range(*part.indices(n))) for part, n in zip(index, shape)) * itemsize
  per_device = list(held.values()) or [0]
  return dict(
    total=total,
    per_device_max=max(per_device),
    per_device_min=min(per_device),
    replicated=replicated_bytes,
    devices=len(held),
  )


def describe_layout(mesh: jax.sharding.Mesh, params: Any) -> str:
  """One line for the training log: the mesh and the parameter bytes per device."""
  report = parameter_bytes_per_device(params)
  mib = lambda n: f"{n / 2**20:.2f} MiB"
  shape = " x ".join(f"{axis} {size}" for axis, size in mesh.shape.items())
  return (
    f"parameters: {mib(report['total'])} in all, at most {mib(report['per_device_max'])} per device "
    f"(mesh {shape}; {mib(report['replicated'])} replicated)"
  )


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
  """This process's rows of a global batch -> global arrays sharded over 'data' (strings stay on the host).
  The rows must be those `process_rows` names, in its order: on a TPU slice not one block of the batch."""
  return {
    key: jax.make_array_from_process_local_data(sharding, value)
    for key, value in batch.items()
    if value.dtype.kind in "biuf"
  }


def from_host(tree: Any, sharding: NamedSharding) -> Any:
  """Numpy arrays that every process holds whole (the same values) -> global arrays laid out by `sharding`
  (replicated, or rows over 'data'), each process placing its devices' parts. Unlike jax.device_put this
  works where the mesh spans processes, and needs no collective."""

  def place(value: Any) -> jax.Array:
    value = np.asarray(value)  # Once, not once per device.
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

  return jax.tree.map(place, tree)


def process_rows(sharding: NamedSharding, global_rows: int, process_index: int | None = None) -> np.ndarray:
  """The rows of a global batch of `global_rows` sharded by `sharding` that a process's devices hold
  (default this process's): int64 [global_rows / processes], increasing, which is the order in which
  jax.make_array_from_process_local_data (to_global) takes that process's rows. One block per process
  on CPU processes; scattered on a multi-host TPU slice, whose mesh interleaves the processes."""
  process = jax.process_index() if process_index is None else process_index
  rows: set[int] = set()
  for device, index in sharding.devices_indices_map((global_rows,)).items():
    if device.process_index == process:
      rows.update(range(*index[0].indices(global_rows)))
  return np.array(sorted(rows), np.int64)


def gather(tree: Any) -> Any:
  """Global arrays -> numpy arrays of their whole value on every process, rows in the global arrays'
  order, whichever process's devices hold them (on a TPU slice not process order: `process_rows`).
  Per-process numpy arrays of equal shapes -> every process's rows, process 0's first."""
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
    table[row, : len(data)] = np.frombuffer(data, np.uint8)
  table, lengths = gather(table), gather(lengths)
  return [bytes(row[:length]).decode("utf-8") for row, length in zip(table, lengths)]
