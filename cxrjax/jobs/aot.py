"""Ahead-of-time compilation for a TPU slice that is described, not attached: `cxrjax compile`.

  cxrjax compile --config=configs/roco_git.py:tpu --topology=v5e:2x4 [--batch-size N]
      [--program train|evaluate|serve|all] [--find-batch-size] [--vocab-size N] [--json] [--config.x=y ...]

libtpu (`pip install -e '.[tpu-compile]'`) describes a slice on any machine (jax.experimental.topologies:
one device per chip, each with the process_index of its host) and XLA's TPU compiler compiles for it here,
as it would on the slice (MaxText's train_compile.py does the same). The programs are the commands' own,
built by the functions the commands call: `train`'s step (train.jit_train_step over workdir.abstract_state's
layout of config.sharding), `evaluate`'s prediction (tasks/evaluation.jit_predict: the config's search, the
batches predict_split feeds it) and `serve`'s prediction (inference.jit_program, the task's prediction the
predictor and the server run, at serve's largest batch size, on the chips of one host: the server is one process), over sharding.create_mesh of the slice's chips, with
data/pipeline.py's batch schema. Nothing is allocated and no data is read.

Per program it reports, per chip: the HBM held (parameters, optimizer state, batch, XLA's temporaries and
code) against the chip's capacity, with the largest buffers where it does not fit; XLA's FLOPs and bytes
accessed per step; the roofline (FLOPs at the chip's bf16 peak, bytes at its HBM bandwidth); an estimated
step time and the examples/s per chip it implies; the model FLOPs (XLA's count of the program as traced,
before its rewrites, per chip) and their estimated utilisation; the collectives; the compile time.

The estimated step time is XLA's own `optimal_seconds` where it is sane (finite and not faster than the
roofline), else the roofline itself; the report says which. For train steps it has come out negative (a
sentinel, not a time), so the roofline is the usual estimate: a lower bound that assumes every op runs at
the chip's peak or at full HBM bandwidth, and no time in collectives. Decoding loops (evaluate, serve) are
`lax.while_loop`s whose trip count XLA does not know: their body counts once in its FLOPs and bytes.
"""

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from jax import extend as jax_extend
from jax.experimental import topologies

from cxrjax.core import config as config_lib
from cxrjax.jobs import inference, train
from cxrjax.core import optim, sharding
from cxrjax import models, tasks
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import datasets, pipeline
from cxrjax.core.errors import ConfigError, UserError
from cxrjax.jobs.serve import engine
from cxrjax.tasks import captioning, evaluation

PROGRAMS = ("train", "evaluate", "serve")
GIB = 2**30
# bert-base-uncased's WordPiece vocabulary (GIT, BLIP and seed 003 read it): the output layer's size when the
# config names no tokenizer file (--vocab-size says otherwise; IU X-ray's word vocabularies are smaller).
DEFAULT_VOCAB_SIZE = 30522
# HBM bandwidth per chip (bytes/s), by jax's device_kind: the vendors' published figures (Cloud TPU's system
# architecture pages; DESIGN.md). The bf16 peak is the trainer's (train.PEAK_FLOPS_PER_S); the HBM a program
# may use, the compiler's own (usable_hbm).
HBM_BANDWIDTH = {
  "TPU v4": 1.2e12,
  "TPU v5 lite": 819e9,
  "TPU v5": 2.765e12,
  "TPU v5p": 2.765e12,
  "TPU v6 lite": 1.64e12,
}
COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
USAGE = (
  "usage: cxrjax compile --config=configs/X.py[:arg] --topology=v5e:2x4 [--batch-size N] "
  "[--program train|evaluate|serve|all] [--find-batch-size] [--config.field=value ...]"
)


class CompileError(UserError):
  """A slice that cannot be described here (libtpu missing, unknown topology) or a program it cannot hold."""


@dataclasses.dataclass(frozen=True)
class Slice:
  """A described TPU slice: its compile-only devices (one per chip) and the chip's figures."""

  topology: str
  devices: tuple[Any, ...]
  kind: str  # jax's device_kind, e.g. "TPU v5 lite"
  peak_flops: float  # dense bf16 FLOP/s per chip, published
  hbm_bandwidth: float  # bytes/s per chip, published
  hbm_bytes: int  # HBM a program may use per chip, the compiler's (less than the chip's: the runtime keeps some)

  @property
  def chips(self) -> int:
    return len(self.devices)

  @property
  def hosts(self) -> int:
    return len({device.process_index for device in self.devices})

  def host_devices(self, process: int = 0) -> tuple[Any, ...]:
    return tuple(device for device in self.devices if device.process_index == process)


def describe_slice(topology: str) -> Slice:
  """`topology` ("v5e:2x4", "v5p:2x2x2", ...) -> its Slice; a CompileError naming --topology when libtpu is
  missing, does not know the name, or lists several devices per chip (v4's megacore)."""
  if importlib.util.find_spec("libtpu") is None:
    raise CompileError(
      f"--topology={topology}: describing a TPU slice needs libtpu, which is not installed here "
      "(pip install -e '.[tpu-compile]')"
    )
  # libtpu's start-up otherwise looks for the other hosts of a slice this machine is not part of, and logs
  # errors (harmless: compiling needs none of them); and it takes a machine-wide lock (/tmp/libtpu_lockfile)
  # that a second process using libtpu (another compile, the tests, a training run on a TPU VM) would be
  # refused by, where compiling opens no chip.
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    devices = tuple(topologies.get_topology_desc(platform="tpu", topology_name=topology).devices)
  except Exception as error:  # pylint: disable=broad-except  (libtpu's JaxRuntimeErrors, RuntimeErrors)
    reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
    raise CompileError(
      f"--topology={topology}: libtpu does not describe this slice ({reason}); expected "
      "GENERATION:AxB[xC], e.g. v5e:2x2, v5e:4x4, v5p:2x2x2, v6e:2x2"
    ) from None
  kind = devices[0].device_kind
  if any(getattr(device, "core_on_chip", 0) for device in devices):
    raise CompileError(
      f"--topology={topology}: libtpu lists two devices per {kind} chip (megacore), which "
      "jax.make_mesh refuses; compile for a v5e, v5p or v6e slice"
    )
  if kind not in HBM_BANDWIDTH or kind not in train.PEAK_FLOPS_PER_S:
    raise CompileError(
      f"--topology={topology}: no published figures for {kind!r} chips here; known: {', '.join(sorted(HBM_BANDWIDTH))}"
    )
  return Slice(
    topology=topology,
    devices=devices,
    kind=kind,
    peak_flops=train.PEAK_FLOPS_PER_S[kind],
    hbm_bandwidth=HBM_BANDWIDTH[kind],
    hbm_bytes=usable_hbm(devices[0]),
  )


def usable_hbm(device: Any) -> int:
  """The HBM per chip a program may use on `device`'s kind, as its compiler says in refusing one that
  needs 2**40 bytes (in under a second)."""
  mesh = jax.sharding.Mesh(np.array([device]), ("chip",))
  too_big = jax.jit(lambda: jnp.zeros((2**38,), jnp.float32), out_shardings=sharding.replicated(mesh))
  try:
    too_big.lower().compile()
  except jax.errors.JaxRuntimeError as error:
    refusal = parse_out_of_memory(str(error))
    if refusal is not None:
      return refusal[1]
    raise
  raise AssertionError(f"the {device.device_kind} compiler accepted a program of 1 TiB")


@dataclasses.dataclass(frozen=True)
class VocabularyShape:
  """What the compiled programs read of a tokenizer, for a config that names no tokenizer file: its size
  (the output layer's) and its special ids (constants of the search)."""

  size: int
  pad_id: int = 0
  start_id: int = 1
  end_id: int = 2

  def __len__(self) -> int:
    return self.size


def load_tokenizer(
  config: ml_collections.ConfigDict, vocab_size: int | None = None, family: Any = None
) -> tuple[Any, str]:
  """(the tokenizer the programs are built with, a line saying where it came from; None for classifiers).

  `vocab_size`: a VocabularyShape of that many tokens. Otherwise `train`'s: config.data.tokenizer's file, or
  the word vocabulary prepared or built from the training split (the phantom sets need no download); where
  that data is not on this machine, VocabularyShape(DEFAULT_VOCAB_SIZE), said so in the line. `family`: the
  model family class, where the caller has looked it up."""
  if not tasks.task_class(config, family).uses_tokenizer:
    return None, "no tokenizer (a classifier)"
  if vocab_size is not None:
    if vocab_size < 3:
      raise ConfigError(f"--vocab-size={vocab_size}: a vocabulary holds at least pad, start and end")
    return VocabularyShape(vocab_size), f"{vocab_size} tokens (--vocab-size)"
  if config.data.get("tokenizer"):
    tokenizer = datasets.load_or_build_tokenizer(config.data, None)
    return tokenizer, f"{len(tokenizer)} tokens (config.data.tokenizer={config.data.tokenizer})"
  try:
    source, _ = datasets.make_source(config.data, "train")
    tokenizer = datasets.load_or_build_tokenizer(config.data, source)
  except (UserError, OSError):  # The dataset is not prepared here (it is on a TPU VM's data disk).
    return VocabularyShape(DEFAULT_VOCAB_SIZE), (
      f"{DEFAULT_VOCAB_SIZE} tokens assumed (bert-base-uncased's): no config.data.tokenizer file, and no "
      f"prepared {config.data.name} data here; --vocab-size or --config.data.tokenizer say otherwise"
    )
  return tokenizer, f"{len(tokenizer)} tokens (the {config.data.name} training split's word vocabulary)"


@dataclasses.dataclass
class Built:
  """A program as its command builds it, ready to lower: the jitted function, its abstract arguments."""

  name: str
  function: Any
  arguments: tuple[Any, ...]
  mesh: jax.sharding.Mesh
  batch: int  # global rows per call
  chips: int  # the chips the program runs on
  hosts: int
  state: Any  # the abstract TrainState (its shardings) the program's process holds
  parts: dict[str, Any]  # name -> abstract tree, held per chip: parameters, optimizer state, batch, ...
  replicated_batch: bool = False  # every chip computes the whole batch (serve), not its share
  note: str = ""


def _with_sharding(spec: dict[str, jax.ShapeDtypeStruct], sharding_: Any) -> dict[str, jax.ShapeDtypeStruct]:
  return {key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=sharding_) for key, value in spec.items()}


def _shardings(tree: Any) -> Any:
  return jax.tree.map(lambda a: a.sharding, tree)


def build(
  config: ml_collections.ConfigDict,
  tpu_slice: Slice,
  program: str,
  tokenizer: Any,
  batch_per_chip: int | None = None,
  family: Any = None,
) -> Built:
  """`program` of `config` for `tpu_slice`, from the functions the commands call (module docstring).
  `batch_per_chip`: the examples per chip per call (train, evaluate; serve: per chip of its host); default
  the config's train.batch_size (global), eval.batch_size (per process) or serve's largest batch size.
  `family`: the model family class, where the caller has looked it up (else here, once)."""
  if program not in PROGRAMS:
    raise ConfigError(f"--program={program}: expected one of {', '.join(PROGRAMS)} or all")
  if batch_per_chip is not None and batch_per_chip < 1:
    raise ConfigError(f"--batch-size={batch_per_chip}: expected at least 1 example per chip")
  components = workdir_lib.build(config, tokenizer, family=family)  # Classifiers: the dataset's findings.
  task, model = components.task, components.model
  section = config.get("sharding")
  if program == "train":
    if config.train.get("cache_features"):
      raise ConfigError(
        "train.cache_features: the compiled step reads images; compile with --config.train.cache_features=False"
      )
    batch = config.train.batch_size if batch_per_chip is None else batch_per_chip * tpu_slice.chips
    flag = "train.batch_size" if batch_per_chip is None else "--batch-size"
    try:
      train.check_batch_size(batch, section, tpu_slice.chips, tpu_slice.hosts)
    except ConfigError as error:
      raise ConfigError(f"{flag}: {error}") from None
    mesh = sharding.create_mesh(section, tpu_slice.devices)
    state = workdir_lib.abstract_state(components, mesh, section)
    optim.check_whole_modules(config.optimizer, state.params, components.frozen_modules)
    tx = components.make_optimizer(state.params)
    step = train.jit_train_step(components, tx, config.train.seed, _shardings(state), mesh)
    batch_spec = _with_sharding(
      pipeline.batch_spec(config, batch, task.tokenizer, task.label_names, task.preprocessing),
      sharding.data_sharded(mesh),
    )
    return Built(
      name=program,
      function=step,
      arguments=(state, batch_spec),
      mesh=mesh,
      batch=batch,
      chips=tpu_slice.chips,
      hosts=tpu_slice.hosts,
      state=state,
      parts=dict(
        parameters=state.params,
        optimizer_state=state.opt_state,
        other_state=(state.step, state.batch_stats),
        batch=batch_spec,
      ),
    )
  if config.get("decode") is not None:
    captioning.check_decode_length(config.model, config.decode.max_length, "config.decode.max_length", task.family)
  if program == "evaluate":
    devices = tpu_slice.devices
    per_host = len(tpu_slice.host_devices())
    rows = config.eval.batch_size if batch_per_chip is None else batch_per_chip * per_host
    mesh, layout = sharding.mesh_for_loading(section, "config.sharding", devices)
    state = workdir_lib.abstract_state(components, mesh, layout)
    predict = evaluation.jit_predict(task, model, task.options(), mesh, _shardings(state).variables())
    batch_spec = evaluation.predict_batch_spec(config, task, rows, mesh)
    return Built(
      name=program,
      function=predict,
      arguments=(state.variables(), batch_spec),
      mesh=mesh,
      batch=batch_spec["mask"].shape[0],
      chips=len(devices),
      hosts=tpu_slice.hosts,
      state=state,
      parts=dict(parameters=state.params, other_state=(state.step, state.batch_stats), batch=batch_spec),
      note="the config's search" if task.uses_tokenizer else "",
    )
  devices = tpu_slice.host_devices()
  rows = max(engine.DEFAULT_BATCH_SIZES) if batch_per_chip is None else batch_per_chip * len(devices)
  mesh, layout = sharding.mesh_for_loading(section, "config.sharding", devices)
  state = workdir_lib.abstract_state(components, mesh, layout)
  search = inference.jit_program(task, model, task.options(), _shardings(state).variables(), mesh)
  images = {"images": pipeline.batch_spec(config, rows, task.tokenizer, preprocessing=task.preprocessing)["images"]}
  images = _with_sharding(images, sharding.replicated(mesh))
  return Built(
    name=program,
    function=search,
    arguments=(state.variables(), images),
    mesh=mesh,
    batch=rows,
    chips=len(devices),
    hosts=1,
    state=state,
    parts=dict(parameters=state.params, other_state=(state.step, state.batch_stats), batch=images),
    replicated_batch=True,
    note=("the config's search, " if task.uses_tokenizer else "") + "the batch replicated on one host's chips",
  )


def bytes_per_chip(tree: Any) -> int:
  """The most bytes of `tree` (abstract arrays with shardings) any one device holds."""
  leaves = jax.tree.leaves(tree)
  return sharding.parameter_bytes_per_device(leaves)["per_device_max"] if leaves else 0


def largest_arrays(tree: Any, count: int = 5) -> list[str]:
  """The `count` arrays of `tree` holding the most bytes per chip, "path dtype[shape] (N MiB per chip)"."""
  found = []
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    shard = leaf.sharding.shard_shape(tuple(leaf.shape))
    size = math.prod(shard) * np.dtype(leaf.dtype).itemsize
    found.append(
      (size, f"{jax.tree_util.keystr(path)} {np.dtype(leaf.dtype).name}{list(leaf.shape)} ({_mib(size)} per chip)")
    )
  return [text for _, text in sorted(found, key=lambda item: -item[0])[:count]]


def collectives(hlo_text: str) -> dict[str, int]:
  """How many of each collective the compiled (SPMD-partitioned) program runs: synchronous ops and the
  starts of asynchronous ones (their "-done" halves are not counted twice)."""
  return {name: len(re.findall(rf"\s{name}(?:-start)?\(", hlo_text)) for name in COLLECTIVES}


# Bytes per element of each HLO element type (also benchmarks/tpu_bytes_by_source.py's).
DTYPE_BYTES = {
  "pred": 1,
  "s8": 1,
  "u8": 1,
  "s16": 2,
  "u16": 2,
  "f16": 2,
  "bf16": 2,
  "s32": 4,
  "u32": 4,
  "f32": 4,
  "s64": 8,
  "u64": 8,
  "f64": 8,
  "c64": 8,
  "c128": 16,
}
# One instruction of an HLO module's text: "%name = bf16[8,197,768]{2,1,0:T(8,128)(2,1)} fusion(...), ...".
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%(\S+)\s*=\s*(\w+)\[([0-9,]*)\][^ ]*\s+([\w-]+)\(")
OP_NAME = re.compile(r'op_name="([^"]+)"')


def largest_values(hlo_text: str, count: int = 5) -> list[str]:
  """The `count` largest arrays the compiled program computes per chip (its instructions outside fused
  computations and reducers: what XLA allocates), "dtype[shape] (N MiB) from <the traced op's name>"."""
  inner = set(re.findall(r"(?:calls|to_apply)=%([\w.-]+)", hlo_text))
  found, skipping = [], False
  for line in hlo_text.splitlines():
    header = re.match(r"^(?:ENTRY\s+)?%([\w.-]+)\s.*\{\s*$", line)
    if header:
      skipping = header.group(1) in inner
      continue
    match = _INSTRUCTION.match(line)
    if skipping or not match or match.group(4) in ("parameter", "get-tuple-element", "bitcast", "tuple"):
      continue
    dtype, dims = match.group(2), [int(d) for d in match.group(3).split(",") if d]
    size = math.prod(dims) * DTYPE_BYTES.get(dtype, 4)
    op = OP_NAME.search(line)
    found.append((size, f"{dtype}{dims} ({_mib(size)}) from {op.group(1) if op else match.group(4)}"))
  found.sort(key=lambda item: -item[0])
  return [text for _, text in found[:count]]


# A definition in an HLO module's text, "%name = bf16[8,197,768]{...} opcode(...)": its name, dtype and dims.
_DEFINITION = re.compile(r"%([\w.-]+)\s*=\s*(\w+)\[([0-9,]*)\]")


def products_by_dtype(hlo_text: str) -> dict[str, float]:
  """The FLOPs of the compiled program's matrix products and convolutions (XLA's TPU programs write both as
  `convolution` or `dot`), by their operands' dtypes ("bf16 x bf16", "f32 x f32", ...): where float32
  products run that bfloat16 was meant for. Loop bodies count once."""
  shapes = {
    name: (dtype, [int(d) for d in dims.split(",") if d]) for name, dtype, dims in _DEFINITION.findall(hlo_text)
  }
  flops: dict[str, float] = {}
  for line in hlo_text.splitlines():
    match = re.search(r"%[\w.-]+\s*=\s*\w+\[([0-9,]*)\]\S*\s+(convolution|dot)\(([^)]*)\)", line)
    if not match:
      continue
    operands = re.findall(r"%([\w.-]+)", match.group(3))
    if len(operands) != 2 or not all(name in shapes for name in operands):
      continue
    (lhs_dtype, lhs), (rhs_dtype, rhs) = shapes[operands[0]], shapes[operands[1]]
    out = math.prod(int(d) for d in match.group(1).split(",") if d)
    if match.group(2) == "dot":
      contracting = re.search(r"lhs_contracting_dims=\{([0-9,]*)\}", line)
      size = math.prod(lhs[int(d)] for d in contracting.group(1).split(",") if d) if contracting else 1
    else:  # dim_labels=b01f_01io->b01f: the kernel's input features and window are summed over.
      labels = re.search(r"dim_labels=\w+_(\w+)->", line)
      if not labels or len(labels.group(1)) != len(rhs):
        continue
      # Of a window dimension, only the taps on real inputs: XLA writes batched products as convolutions
      # whose batch dimensions are windows over an input dilated by their size (one real tap each).
      dilation = re.search(r"lhs_dilate=([0-9x]+)", line)
      dilation = [int(d) for d in dilation.group(1).split("x")] if dilation else []
      size = 1
      for label, n in zip(labels.group(1), rhs):
        if label == "i":
          size *= n
        elif label.isdigit():
          size *= -(-n // (dilation[int(label)] if int(label) < len(dilation) else 1))
    key = f"{lhs_dtype} x {rhs_dtype}"
    flops[key] = flops.get(key, 0.0) + 2.0 * out * size
  return flops


def matmul_flops(jaxpr: Any) -> float:
  """The model FLOPs of a (closed) jaxpr: 2 x the multiply-adds of its matrix products and convolutions, as
  traced (before XLA's rewrites), sub-jaxprs included: a scan's body times its length, a cond's costliest
  branch, a while loop's body once (its trip count is not known until it runs)."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  total = 0.0
  for eqn in jaxpr.eqns:
    name, params = eqn.primitive.name, eqn.params
    out = math.prod(eqn.outvars[0].aval.shape) if eqn.outvars else 0
    if name == "dot_general":
      (contracting, _), _ = params["dimension_numbers"]  # ((lhs, rhs) contracting, (lhs, rhs) batch)
      total += 2.0 * out * math.prod(eqn.invars[0].aval.shape[d] for d in contracting)
    elif name == "conv_general_dilated":
      kernel, spec = eqn.invars[1].aval.shape, params["dimension_numbers"].rhs_spec
      total += 2.0 * out * kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
    elif name == "cond":
      total += max(matmul_flops(branch) for branch in params["branches"])
    elif name == "scan":
      total += params["length"] * matmul_flops(params["jaxpr"])
    elif name == "while":
      total += matmul_flops(params["body_jaxpr"]) + matmul_flops(params["cond_jaxpr"])
    else:
      total += sum(
        matmul_flops(value)
        for value in params.values()
        if isinstance(value, (jax_extend.core.Jaxpr, jax_extend.core.ClosedJaxpr))
      )
  return total


# The TPU compiler's refusal of a program that does not fit in HBM; two forms, e.g. "Ran out of memory on
# HBM, the total memory required for HLO temporaries (17.00G) exceeds available HBM (15.75G)." and "Ran out
# of memory in memory space hbm. Used 20.58G of 15.75G hbm. ..."
_OUT_OF_MEMORY = (
  re.compile(
    r"required for HLO temporaries \(([0-9.]+)([KMGT]?)\) exceeds available HBM "
    r"\(([0-9.]+)([KMGT]?)\)"
  ),
  re.compile(r"Used ([0-9.]+)([KMGT]?) of ([0-9.]+)([KMGT]?) hbm"),
)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# Compiles a program that does not fit anyway (the compiler's own libtpu option), so that its memory
# analysis and HLO say what it would need.
NO_CRASH_ON_OOM = {"xla_tpu_no_crash_on_oom": True}


def parse_out_of_memory(message: str) -> tuple[int, int] | None:
  """(bytes needed, bytes usable) per chip of the TPU compiler's out-of-memory error; None for other errors."""
  for pattern in _OUT_OF_MEMORY:
    match = pattern.search(message)
    if match:
      return (int(float(match.group(1)) * _UNITS[match.group(2)]), int(float(match.group(3)) * _UNITS[match.group(4)]))
  return None


@dataclasses.dataclass
class Report:
  """One program compiled for one slice: what `cxrjax compile` prints and the benchmark records."""

  program: str
  topology: str
  chip: str
  chips: int
  hosts: int
  mesh: dict[str, int]
  batch: int  # global rows per call
  batch_per_chip: float
  fits: bool
  peak_flops: float  # per chip, bf16
  hbm_bandwidth: float  # bytes/s per chip
  hbm_capacity: int  # bytes per chip a program may use (the compiler's)
  hbm_used: int | None  # bytes per chip: the program's (XLA's count: arguments, outputs, temporaries, code)
  memory: dict[str, int]  # per chip: parameters, optimizer_state, other_state, batch, temporaries, ...
  largest_buffers: list[str]
  flops: float | None  # per chip per call, XLA's count of the compiled program
  model_flops: float | None  # per chip per call, XLA's count of the program as traced, before optimisation
  bytes_accessed: float | None  # per chip per call
  xla_optimal_seconds: float | None
  compute_seconds: float | None  # FLOPs at the chip's peak
  memory_seconds: float | None  # bytes at the chip's HBM bandwidth
  roofline_seconds: float | None  # the larger of the two
  estimated_seconds: float | None
  estimate: str  # which estimate estimated_seconds is
  examples_per_s_per_chip: float | None
  model_flops_utilisation: float | None  # model FLOPs / (estimated time x peak)
  collectives: dict[str, int]
  products: dict[str, float]  # per chip: the FLOPs of the compiled matrix products by operand dtypes
  compile_seconds: float
  note: str = ""
  hlo: str = dataclasses.field(default="", repr=False)  # the compiled program's text (explained compiles)

  def to_dict(self) -> dict[str, Any]:
    """The report as JSON values, without the program's text."""
    return {key: value for key, value in dataclasses.asdict(self).items() if key != "hlo"}


def _mib(size: float) -> str:
  return f"{size / 2**20:.1f} MiB" if size < GIB else f"{size / GIB:.2f} GiB"


def costs(analysis: Any) -> dict[str, float]:
  """XLA's cost analysis (`compiled.cost_analysis()`) as one dict (some versions return a list of one per
  program; also the TPU benchmarks')."""
  if isinstance(analysis, (list, tuple)):
    analysis = analysis[0] if analysis else {}
  return dict(analysis or {})


def estimate(
  flops: float | None, bytes_accessed: float | None, xla_seconds: float | None, tpu_slice: Slice
) -> dict[str, Any]:
  """The roofline of a program's per-chip FLOPs and bytes, and the step-time estimate: XLA's
  optimal_seconds where it is sane (finite, positive, not faster than the roofline), else the roofline."""
  compute = flops / tpu_slice.peak_flops if flops else None
  memory = bytes_accessed / tpu_slice.hbm_bandwidth if bytes_accessed else None
  known = [t for t in (compute, memory) if t is not None]
  roofline = max(known) if known else None
  sane = (
    xla_seconds is not None
    and math.isfinite(xla_seconds)
    and xla_seconds > 0
    and (roofline is None or xla_seconds >= roofline * (1 - 1e-6))
  )
  if sane:
    chosen, which = xla_seconds, "XLA's optimal_seconds"
  elif roofline is not None:
    bound = "FLOPs at peak" if compute is not None and compute >= (memory or 0) else "bytes at HBM bandwidth"
    why = (
      "none"
      if xla_seconds is None
      else f"{xla_seconds:.3g} s"
      + (", faster than the roofline" if xla_seconds is not None and xla_seconds > 0 else "")
    )
    chosen, which = roofline, f"roofline ({bound}; XLA's optimal_seconds {why}: not used)"
  else:
    chosen, which = None, "none: XLA counted neither FLOPs nor bytes"
  return dict(
    compute_seconds=compute, memory_seconds=memory, roofline_seconds=roofline, estimated_seconds=chosen, estimate=which
  )


def compile_program(built: Built, tpu_slice: Slice, explain: bool = True) -> Report:
  """Lowers and compiles `built` for the slice and reports it (Report). A program the TPU compiler refuses
  for lack of HBM does not fit; with `explain` it is compiled again regardless (NO_CRASH_ON_OOM), so that
  the report has its memory, costs and largest buffers, else the report has only the HBM it needs."""
  started = time.perf_counter()
  traced = built.function.trace(*built.arguments)
  model_flops = matmul_flops(traced.jaxpr)
  lowered = traced.lower()
  memory = {name: bytes_per_chip(tree) for name, tree in built.parts.items()}
  refused = False
  try:
    with _uncached():
      compiled = lowered.compile()
  except jax.errors.JaxRuntimeError as error:
    refusal = parse_out_of_memory(str(error))
    if refusal is None:
      raise
    needed, refused = refusal[0], True
    if not explain:
      memory["program"] = needed
      return _report(
        built,
        tpu_slice,
        fits=False,
        hbm_used=needed,
        memory=memory,
        largest=largest_arrays(built.state),
        cost={},
        model_flops=model_flops,
        hlo_text="",
        compile_seconds=time.perf_counter() - started,
      )
    with _uncached():
      compiled = lowered.compile(compiler_options=NO_CRASH_ON_OOM)
  compile_seconds = time.perf_counter() - started
  analysis = compiled.memory_analysis()
  program = (
    analysis.argument_size_in_bytes
    + analysis.output_size_in_bytes
    - analysis.alias_size_in_bytes
    + analysis.temp_size_in_bytes
    + analysis.generated_code_size_in_bytes
  )
  memory.update(
    arguments=analysis.argument_size_in_bytes,
    outputs=analysis.output_size_in_bytes - analysis.alias_size_in_bytes,
    temporaries=analysis.temp_size_in_bytes,
    code=analysis.generated_code_size_in_bytes,
    program=program,
  )
  used = program
  fits = not refused and used <= tpu_slice.hbm_bytes
  hlo_text = compiled.as_text()
  largest = [] if fits else largest_arrays(built.state, 3) + largest_values(hlo_text, 3)
  return _report(
    built,
    tpu_slice,
    fits=fits,
    hbm_used=used,
    memory=memory,
    largest=largest,
    cost=costs(compiled.cost_analysis()),
    model_flops=model_flops,
    hlo_text=hlo_text,
    compile_seconds=compile_seconds,
    keep_hlo=explain,
  )


@contextlib.contextmanager
def _uncached():
  """Keeps TPU executables out of JAX's persistent compilation cache (tests and CI turn it on): a
  compile-only client cannot load them back (it warns and compiles again), so writing them costs time and
  disk for nothing."""
  previous = jax.config.jax_persistent_cache_min_compile_time_secs
  jax.config.update("jax_persistent_cache_min_compile_time_secs", math.inf)
  try:
    yield
  finally:
    jax.config.update("jax_persistent_cache_min_compile_time_secs", previous)


def _report(
  built: Built,
  tpu_slice: Slice,
  *,
  fits: bool,
  hbm_used: int,
  memory: dict[str, int],
  largest: list[str],
  cost: dict[str, float],
  model_flops: float | None,
  hlo_text: str,
  compile_seconds: float,
  keep_hlo: bool = False,
) -> Report:
  flops = cost.get("flops") or None
  bytes_accessed = cost.get("bytes accessed") or None
  xla_seconds = cost.get("optimal_seconds")
  times = estimate(flops, bytes_accessed, xla_seconds, tpu_slice)
  # Per chip: the traced program is the global one, which chips share, or each runs whole (a replicated batch).
  per_chip_model_flops = model_flops / (1 if built.replicated_batch else built.chips) if model_flops else None
  seconds = times["estimated_seconds"]
  rate = built.batch / built.chips / seconds if seconds else None
  utilisation = per_chip_model_flops / (seconds * tpu_slice.peak_flops) if seconds and per_chip_model_flops else None
  return Report(
    program=built.name,
    topology=tpu_slice.topology,
    chip=tpu_slice.kind,
    chips=built.chips,
    hosts=built.hosts,
    mesh=dict(built.mesh.shape),
    batch=built.batch,
    batch_per_chip=built.batch / built.chips,
    fits=fits,
    peak_flops=tpu_slice.peak_flops,
    hbm_bandwidth=tpu_slice.hbm_bandwidth,
    hbm_capacity=tpu_slice.hbm_bytes,
    hbm_used=hbm_used,
    memory=memory,
    largest_buffers=largest,
    flops=flops,
    model_flops=per_chip_model_flops,
    bytes_accessed=bytes_accessed,
    xla_optimal_seconds=xla_seconds,
    examples_per_s_per_chip=rate,
    model_flops_utilisation=utilisation,
    collectives=collectives(hlo_text) if hlo_text else {},
    products=products_by_dtype(hlo_text) if hlo_text else {},
    compile_seconds=compile_seconds,
    note=built.note,
    hlo=hlo_text if keep_hlo else "",
    **times,
  )


def compile_config(
  config: ml_collections.ConfigDict,
  topology: str | Slice,
  programs: Sequence[str] = ("train",),
  batch_per_chip: int | None = None,
  vocab_size: int | None = None,
) -> list[Report]:
  """The Python entry point (tests, benchmarks): `programs` of `config` compiled for `topology` (a name such
  as "v5e:2x4", or describe_slice's Slice), one Report each."""
  tpu_slice = describe_slice(topology) if isinstance(topology, str) else topology
  family = models.get(config.model.name)  # Once for every program.
  tokenizer, _ = load_tokenizer(config, vocab_size, family)
  return [
    compile_program(build(config, tpu_slice, program, tokenizer, batch_per_chip, family), tpu_slice)
    for program in programs
  ]


def find_batch_size(
  config: ml_collections.ConfigDict,
  topology: str | Slice,
  program: str = "train",
  vocab_size: int | None = None,
  start: int | None = None,
  limit: int = 4096,
  known: Report | None = None,
  log=None,
  family: Any = None,
) -> tuple[int, list[Report]]:
  """(the largest batch per chip whose `program` fits, the reports of every compile tried; 0 if none fits):
  `largest_fitting` over compiles of `program` at each probed batch per chip. `start`: the first probe
  (default the config's batch per chip, or `known`'s); `limit`: the largest batch per chip tried;
  `known`: a report of this program already compiled (at a whole batch per chip), not compiled again;
  `family`: the model family class, where the caller has looked it up (else here, once)."""
  tpu_slice = describe_slice(topology) if isinstance(topology, str) else topology
  family = models.get(config.model.name) if family is None else family
  tokenizer, _ = load_tokenizer(config, vocab_size, family)
  if known is not None and known.batch_per_chip != int(known.batch_per_chip):
    known = None
  if start is None:
    start = (
      int(known.batch_per_chip)
      if known
      else max(1, build(config, tpu_slice, program, tokenizer, family=family).batch // tpu_slice.chips)
    )
  reports = []

  def probe(batch_per_chip: int) -> tuple[bool, int]:
    if known is not None and batch_per_chip == known.batch_per_chip:
      return known.fits, known.hbm_used
    built = build(config, tpu_slice, program, tokenizer, batch_per_chip, family)
    report = compile_program(built, tpu_slice, explain=False)
    reports.append(report)
    if log:
      log(
        f"  batch {batch_per_chip} per chip: {_mib(report.hbm_used)} per chip, "
        f"{'fits' if report.fits else 'does not fit'} (compiled in {report.compile_seconds:.0f} s)"
      )
    return report.fits, report.hbm_used

  return largest_fitting(probe, start, limit, tpu_slice.hbm_bytes), reports


def largest_fitting(probe, start: int, limit: int, capacity: int) -> int:
  """The largest batch b in 1..limit with probe(b) = (fits, bytes used) fitting; 0 if none does.

  A bisection over the bracket (the largest batch known to fit, the smallest known not to), which doubling
  (or halving) from `start` first finds. Each probe is a full compile, so the next probe is where the
  straight line through the two probes used nearest `capacity` reaches it (the use grows about linearly
  with the batch, and the compiler says what a program that does not fit would need), clamped into the
  bracket; the midpoint instead after such a probe that did not halve the bracket."""
  used: dict[int, int] = {}
  low, high = 0, None  # The largest batch known to fit, the smallest known not to.
  batch, interpolated = max(1, min(start, limit)), False
  while True:
    fits, used[batch] = probe(batch)
    width = None if high is None else high - low
    low, high = (batch, high) if fits else (low, batch)
    if (high is not None and high - low <= 1) or (high is None and low >= limit):
      return low
    ceiling = limit + 1 if high is None else high
    guess = 2 * low if high is None else (low + high) // 2
    if not (interpolated and width is not None and high - low > width / 2) and len(used) >= 2:
      (b0, u0), (b1, u1) = sorted(used.items(), key=lambda point: abs(point[1] - capacity))[:2]
      if (u1 - u0) * (b1 - b0) > 0:
        slope = (u1 - u0) / (b1 - b0)
        line = b0 + int((capacity - u0) / slope)
        # A line that puts the capacity at or below the largest fitting batch, though that batch's own use
        # is more than an example's bytes off it, has stopped describing the use (near the limit XLA
        # rematerialises, and a larger batch can need less): double or bisect rather than step by one.
        stale = line <= low and abs(u0 + slope * (low - b0) - used[low]) > slope
        guess, interpolated = (guess, False) if stale else (line, True)
      else:
        interpolated = False
    else:
      interpolated = False
    batch = min(max(guess, low + 1), ceiling - 1)


def format_report(report: Report, tokenizer_line: str = "") -> str:
  """The lines `cxrjax compile` prints for one program."""
  mesh = " x ".join(f"{axis} {size}" for axis, size in report.mesh.items())
  memory = report.memory
  hosts = f"{report.hosts} host{'s' if report.hosts != 1 else ''}"
  lines = [
    f"{report.program}: {report.chips} chips ({report.chip}) on {hosts} of {report.topology}, mesh {mesh}; "
    f"batch {report.batch} ({report.batch_per_chip:g} per chip)" + (f"; {report.note}" if report.note else "")
  ]
  if tokenizer_line:
    lines.append(f"  vocabulary: {tokenizer_line}")
  lines.append(
    f"  HBM per chip: {_mib(report.hbm_used)} of {_mib(report.hbm_capacity)} usable "
    f"({report.hbm_used / report.hbm_capacity:.0%}): " + ("fits" if report.fits else "DOES NOT FIT")
  )
  # Inference programs hold no optimizer state: load_run restores the parameters and batch statistics only.
  held = [f"parameters {_mib(memory['parameters'])}"]
  if "optimizer_state" in memory:
    held.append(f"optimizer state {_mib(memory['optimizer_state'])}")
  held.append(f"batch {_mib(memory['batch'])}")
  if "temporaries" in memory:
    held += [f"activations and temporaries {_mib(memory['temporaries'])}", f"code {_mib(memory['code'])}"]
  else:
    held += [f"the program needs {_mib(memory['program'])} (the compiler's count)"]
  lines.append("    " + ", ".join(held))
  if not report.fits:
    lines.append("  does not fit: the largest buffers are " + "; ".join(report.largest_buffers or ["(not listed)"]))
  if report.flops:
    lines.append(
      f"  per step and chip: {report.flops / 1e12:.4g} TFLOP (XLA's count), model "
      f"{(report.model_flops or 0) / 1e12:.4g} TFLOP (matrix products as traced), "
      f"{(report.bytes_accessed or 0) / 1e9:.4g} GB accessed"
    )
  if report.estimated_seconds:
    lines.append(f"  step time: {report.estimated_seconds * 1e3:.4g} ms estimated: {report.estimate}")
    roofline = []
    if report.compute_seconds:
      roofline.append(f"FLOPs at {report.peak_flops / 1e12:.0f} TFLOP/s {report.compute_seconds * 1e3:.4g} ms")
    if report.memory_seconds:
      roofline.append(f"bytes at {report.hbm_bandwidth / 1e9:.0f} GB/s {report.memory_seconds * 1e3:.4g} ms")
    lines.append(f"    roofline: {', '.join(roofline)}")
    utilisation = (
      f"; estimated model FLOPs utilisation {report.model_flops_utilisation:.1%}"
      if report.model_flops_utilisation
      else ""
    )
    lines.append(f"    => {report.examples_per_s_per_chip:.4g} examples/s per chip{utilisation}")
  if report.products:
    total = sum(report.products.values())
    lines.append(
      "  matrix products by operand dtypes: "
      + ", ".join(
        f"{key} {flops / total:.0%}" for key, flops in sorted(report.products.items(), key=lambda item: -item[1])
      )
    )
  if report.collectives:
    lines.append("  collectives: " + ", ".join(f"{name} {count}" for name, count in report.collectives.items()))
  lines.append(f"  compiled in {report.compile_seconds:.1f} s")
  return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
  """`cxrjax compile` (absl flags, so that --config.x=y overrides work as in `train`): 0 when every program
  fits, 2 when one does not."""

  def define_flags(values):
    flags.DEFINE_string("topology", None, "the TPU slice, e.g. v5e:2x4 (libtpu's names)", flag_values=values)
    flags.DEFINE_enum("program", "all", list(PROGRAMS) + ["all"], "which program(s)", flag_values=values)
    flags.DEFINE_integer("batch-size", None, "examples per chip (default: the config's batches)", flag_values=values)
    flags.DEFINE_boolean(
      "find-batch-size",
      False,
      "also find the largest batch per chip that fits (bisection; a compile per probe)",
      flag_values=values,
    )
    flags.DEFINE_integer(
      "vocab-size",
      None,
      f"output vocabulary when config.data.tokenizer names no file (default {DEFAULT_VOCAB_SIZE})",
      flag_values=values,
    )
    flags.DEFINE_boolean("json", False, "print one JSON line per program instead", flag_values=values)

  if "--help" in argv or "-h" in argv:
    print(USAGE)
    return 0
  if not os.environ.get("JAX_PLATFORMS"):
    # The programs are traced on the CPU: compiling needs no accelerator, and on a TPU VM the chips may be
    # training (another process cannot open them). libtpu still describes slices.
    jax.config.update("jax_platforms", "cpu")
  values = config_lib.parse_run_flags(argv, "cxrjax compile", USAGE, define_flags)
  if not values.topology:
    raise ConfigError(f"--topology is required ({USAGE})")
  config = values.config
  tpu_slice = describe_slice(values.topology)
  family = models.get(config.model.name)  # Once for every program and probe.
  tokenizer, tokenizer_line = load_tokenizer(config, values["vocab-size"].value, family)
  programs = PROGRAMS if values.program == "all" else (values.program,)
  status = 0
  for program in programs:
    built = build(config, tpu_slice, program, tokenizer, values["batch-size"].value, family)
    report = compile_program(built, tpu_slice)
    print(json.dumps(report.to_dict()) if values.json else format_report(report, tokenizer_line), flush=True)
    status = status if report.fits else 2
    if values["find-batch-size"].value and program != "serve":
      best, _ = find_batch_size(
        config,
        tpu_slice,
        program,
        values["vocab-size"].value,
        known=report,
        log=None if values.json else lambda line: print(line, flush=True),
        family=family,
      )
      line = {"program": program, "largest_batch_per_chip": best}
      print(json.dumps(line) if values.json else f"  largest batch that fits: {best} per chip", flush=True)
  return status


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
