"""A training workdir: the one module that knows its layout, its train state and its checkpoints.

  config.json            the full config of the run (checked on resume: another model's workdir is refused)
  tokenizer.json         the tokenizer the model was trained with (captioners)
  label_names.json       the class names of the outputs (classifiers)
  metrics.jsonl          one JSON object per logged step and per validation ("split": "train", "val", or
                         "test" for the evaluators that score the test split in training)
  evaluators.json        the evaluators validation runs: {name: {"type", "split", "every_steps", provenance}}
  tensorboard/           the same numbers as TensorBoard scalars (summaries.py)
  profile/               a JAX profiler trace of train.profile_steps, when set
  checkpoints/latest/    the two newest states, with the data iterator's position (resume point; a damaged
                         newest one is skipped with a warning and the one before it used)
  checkpoints/best/      the state with the best validation metric (model selection: validation only)
  eval/<split>/          what `cxrjax evaluate` writes (metrics.json, predictions)
  features/train.npz     cached frozen-encoder features (captioners with train.cache_features)

Workdirs may be local or gs:// (etils.epath). Process 0 writes the files, each whole or not at all
(files.py); orbax coordinates checkpoints and writes each into a temporary folder renamed when complete.
"""

import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from cxrjax.core import files, optim, sharding
from cxrjax import models, tasks
from cxrjax.data import datasets
from cxrjax.models import partitioning
from cxrjax.core.errors import ConfigError, UserError
from cxrjax.text import tokenizers

LATEST, BEST = "latest", "best"
CONFIG_FILE, TOKENIZER_FILE, METRICS_FILE = "config.json", "tokenizer.json", "metrics.jsonl"
EVALUATORS_FILE = "evaluators.json"
LABELS_FILE = "label_names.json"
# Config sections a workdir's config.json must have to be recognised (every config of configs/ fills more).
REQUIRED_SECTIONS = ("data", "model")
# How many states checkpoints/<name>/ keeps: two for `latest`, so that a damaged newest one has a fallback.
KEEP = {"latest": 2, "best": 1}
# Across processes, a replicated array of at least this many bytes a replica is written in parts, one by
# each replica's host (orbax's replica-parallel save); smaller ones, and every array of a one-process run,
# by one replica (state_handler).
REPLICA_PARALLEL_MIN_BYTES = 4 * 2**20


class WorkdirError(UserError):
  """A workdir that is not a training workdir, or lacks the checkpoint asked for."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any  # batch-norm running statistics ({} when the model has none)
  opt_state: Any

  def variables(self) -> dict[str, Any]:
    return {"params": self.params, "batch_stats": self.batch_stats}


def absolute_path(path: str | os.PathLike) -> epath.Path:
  """Orbax wants absolute paths; gs:// paths already are."""
  path = epath.Path(path)
  return path if "://" in str(path) else epath.Path(os.path.abspath(path))


def _read_json(path: epath.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise WorkdirError(f"{path}: not valid JSON ({error})") from None


def read_config(workdir: str | os.PathLike) -> ml_collections.ConfigDict:
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.is_file():
    raise WorkdirError(f"{path}: not found; is {workdir} a `cxrjax train` workdir?")
  data = _read_json(path)
  if not isinstance(data, dict):
    raise WorkdirError(f"{path}: not a run config (expected a JSON object, got {type(data).__name__})")
  missing = [name for name in REQUIRED_SECTIONS if not isinstance(data.get(name), dict)]
  if not missing and "name" not in data["model"]:
    missing = ["model.name"]
  if missing:
    raise WorkdirError(f"{path}: not a run config (missing {', '.join(missing)})")
  return ml_collections.ConfigDict(data)


# Fields of config.data that say where and how the examples are read, not which examples or how they are
# made: a resumed run may change them (the dataset copied to a new path on a re-created VM, more read
# threads). grain's iterator state, the resume point, is the same whatever the number of read threads;
# worker_count is not here: with worker processes grain keeps another kind of state.
READER_ONLY_DATA_FIELDS = ("data_dir", "read_threads")


def _flat(tree: Any, prefix: str) -> dict[str, Any]:
  """{"data.image_size": 64, "data.phantom_prevalences.nodule": 0.3, ...} of a nested dict."""
  if not isinstance(tree, dict):
    return {prefix: tree}
  flat = {}
  for key, value in tree.items():
    flat.update(_flat(value, f"{prefix}.{key}"))
  return flat


def check_compatible(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir whose checkpoints belong to another model or data configuration (naming the first
  field that differs; READER_ONLY_DATA_FIELDS may differ), and a --workdir that is a file."""
  if epath.Path(workdir).exists() and not epath.Path(workdir).is_dir():
    raise WorkdirError(f"{workdir}: exists and is not a directory; --workdir needs a folder")
  if not (epath.Path(workdir) / CONFIG_FILE).exists():
    return
  saved = read_config(workdir).to_dict()
  current = json.loads(config.to_json())
  missing, reader_only = object(), {f"data.{name}" for name in READER_ONLY_DATA_FIELDS}
  for section in ("model", "data"):
    before, after = _flat(saved.get(section, {}), section), _flat(current.get(section, {}), section)
    changed = sorted(
      (
        key
        for key in before.keys() | after.keys()
        if key not in reader_only and before.get(key, missing) != after.get(key, missing)
      ),
      key=lambda key: (key != f"{section}.name", key),
    )  # Another family or dataset first.
    if changed:
      show = lambda value: "(absent)" if value is missing else repr(value)
      key = changed[0]
      more = ""
      if len(changed) > 1:
        listed = ", ".join(f"config.{name}" for name in changed[1:4]) + (", ..." if len(changed) > 4 else "")
        more = f" (and {len(changed) - 1} more: {listed})"
      raise ConfigError(
        f"config.{key}={show(after.get(key, missing))}: {workdir} holds a checkpoint of another {section} "
        f"configuration ({CONFIG_FILE} has config.{key}={show(before.get(key, missing))}){more}; use a new "
        "--workdir"
      )


def write_run_files(
  workdir: str | os.PathLike, config: ml_collections.ConfigDict, tokenizer: Any, label_names: Any = None
) -> None:
  """config.json, tokenizer.json and label_names.json (process 0 only), each written atomically."""
  workdir = epath.Path(workdir)
  if workdir.exists() and not workdir.is_dir():
    raise WorkdirError(f"{workdir}: exists and is not a directory; a workdir is a folder")
  workdir.mkdir(parents=True, exist_ok=True)
  if sharding.is_lead_process():
    files.write_text(workdir / CONFIG_FILE, config.to_json(indent=2) + "\n")
    if tokenizer is not None:
      with files.replaced_on_success(workdir / TOKENIZER_FILE) as temporary:
        tokenizer.save(temporary)
    if label_names is not None:
      files.write_json(workdir / LABELS_FILE, list(label_names))


def write_evaluators(workdir: str | os.PathLike, provenance: dict[str, Any]) -> None:
  """evaluators.json (process 0 only): the evaluators this run's validation runs (train.evaluators_provenance),
  rewritten by each invocation, so that a resumed run with other evaluators says so."""
  if sharding.is_lead_process():
    files.write_json(epath.Path(workdir) / EVALUATORS_FILE, provenance, indent=2)


def load_label_names(workdir: str | os.PathLike) -> tuple[str, ...]:
  path = epath.Path(workdir) / LABELS_FILE
  if not path.is_file():
    raise WorkdirError(f"{path}: not found; the workdir lacks its classifier's class names")
  names = _read_json(path)
  if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
    raise WorkdirError(f"{path}: expected a JSON list of class names")
  return tuple(names)


def eval_dir(workdir: str | os.PathLike, split: str) -> epath.Path:
  return epath.Path(workdir) / "eval" / split


def features_path(workdir: str | os.PathLike, split: str = "train") -> epath.Path:
  return epath.Path(workdir) / "features" / f"{split}.npz"


def metrics_path(workdir: str | os.PathLike) -> epath.Path:
  return epath.Path(workdir) / METRICS_FILE


@dataclasses.dataclass
class Components:
  """What a config makes before any state exists: the task, the model and the optimizer."""

  task: Any
  model: Any
  make_optimizer: Any  # params -> optax.GradientTransformation
  frozen_modules: dict[str, bool]  # What the family asked of the param groups: module path -> frozen
  family: Any = None  # the model family class (models.get(config.model.name)), also task.family
  is_frozen: Any = None  # module path -> whether optimizer.param_groups freeze it (optim.frozen_predicate)


def build(
  config: ml_collections.ConfigDict,
  tokenizer: Any = None,
  label_names: Sequence[str] | None = None,
  family: Any = None,
) -> Components:
  """The task (complete: report generators with `tokenizer`, classifiers with `label_names`, by default the
  data config's findings), the model and the optimizer of `config`. `family`: the model family class, where
  the caller has looked it up already (else here)."""
  # Each derived once here (the family: unless given) and passed on: the family, the task, the frozen-module
  # predicate.
  family = models.get(config.model.name) if family is None else family
  if not tasks.task_class(config, family).uses_tokenizer and label_names is None:
    label_names = datasets.label_names(config.data)
  task = tasks.make(config, tokenizer, label_names, family=family)
  predicate, asked = optim.frozen_predicate(config.optimizer), {}

  def is_frozen(module_path: str) -> bool:
    asked[module_path] = predicate(module_path)
    return asked[module_path]

  model = family.from_config(config.model, len(tokenizer) if tokenizer is not None else None, is_frozen)

  def make_optimizer(params):
    return optim.make_optimizer(config.optimizer, params, config.train.num_steps)

  return Components(
    task=task, model=model, make_optimizer=make_optimizer, frozen_modules=asked, family=family, is_frozen=predicate
  )


def init_state(components: Components, rng: jax.Array) -> TrainState:
  """Fresh parameters and optimizer state (pretrained parts are put in by weights.pretrained)."""
  variables = components.task.init_variables(components.model, {"params": rng, "dropout": rng})
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  tx = components.make_optimizer(params)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats, opt_state=tx.init(params))


def abstract_state(components: Components, mesh: jax.sharding.Mesh, layout: Any = None) -> TrainState:
  """Shapes, dtypes and shardings of the state: the restore target on any device count. `layout`: the
  config's `sharding` section (sharding.py; None: replicated parameters); the optimizer state follows
  the parameters, the step and batch statistics are replicated."""
  shapes = jax.eval_shape(lambda rng: init_state(components, rng), jax.random.key(0))
  replicated = sharding.replicated(mesh)
  logical = None  # Replicated parameters need no names: no second trace of the model's init.
  if layout is not None:
    logical = partitioning.logical_axes(
      lambda rng: components.task.init_variables(components.model, {"params": rng, "dropout": rng}), jax.random.key(0)
    )["params"]
  params = sharding.parameter_shardings(logical, shapes.params, mesh, layout)
  opt_state = sharding.optimizer_shardings(components.make_optimizer(shapes.params), shapes.opt_state, params, mesh)
  batch_stats = jax.tree.map(lambda _: replicated, shapes.batch_stats)
  shardings = TrainState(step=replicated, params=params, batch_stats=batch_stats, opt_state=opt_state)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), shapes, shardings)


def checkpoint_manager(workdir: str | os.PathLike, name: str, create: bool = True) -> ocp.CheckpointManager:
  """checkpoints/<name>/; `create` (a run that writes): removes, with a warning, the temporary folders of a
  save that was interrupted (orbax renames a checkpoint's folder only once it is complete)."""
  directory = absolute_path(epath.Path(workdir) / "checkpoints" / name)
  if create and directory.is_dir():
    for incomplete in sorted(p for p in directory.iterdir() if ocp.path.atomicity.TMP_DIR_SUFFIX in p.name):
      print(f"warning: {incomplete}: an incomplete checkpoint (its save was interrupted); removed", file=sys.stderr)
  # Each manager's own barrier names: several processes saving `latest` and `best` of one step at once would
  # otherwise meet at the same barriers (orbax names them by the step's folder), and process 0 could
  # finalize one checkpoint before the other processes had written their part of it.
  options = ocp.CheckpointManagerOptions(
    max_to_keep=KEEP.get(name, 1),
    create=create,
    cleanup_tmp_directories=create,
    multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=f"cxrjax_{name}"),
  )
  # The state through orbax's PyTree handler, which can restore part of a tree (inference reads no optimizer
  # state); it reads the checkpoints of its StandardSave wrapper, which earlier versions wrote, as they are.
  handlers = {
    "state": state_handler(),
    "data": ocp.JsonCheckpointHandler(),
    "meta": ocp.JsonCheckpointHandler(),
  }
  return ocp.CheckpointManager(directory, options=options, item_handlers=handlers)


def state_handler() -> ocp.PyTreeCheckpointHandler:
  """orbax's PyTree handler with replica-parallel saving only where it pays (REPLICA_PARALLEL_MIN_BYTES).
  orbax's default slices every replicated array into one part per replica; in one process all the parts
  are written by the same host, so the split buys nothing and costs a dispatched slice per array and
  replica (on CPUs a compiled program each): three smoke AG-CNN trainings took 27.3 s with it, 15.6 s
  without (50.4 s and 36.0 s with a cold compilation cache)."""
  arrays = ocp.type_handlers.ArrayHandler(
    use_replica_parallel=jax.process_count() > 1, min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES
  )
  # orbax's standard handlers (its GLOBAL_TYPE_HANDLER_REGISTRY's), the arrays' configured.
  registry = ocp.type_handlers.create_type_handler_registry(
    (int, ocp.type_handlers.ScalarHandler()),
    (float, ocp.type_handlers.ScalarHandler()),
    (bytes, ocp.type_handlers.ScalarHandler()),
    (np.number, ocp.type_handlers.ScalarHandler()),
    (np.ndarray, ocp.type_handlers.NumpyHandler()),
    (jax.Array, arrays),
    (str, ocp.type_handlers.StringHandler()),
  )
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: Any, meta: dict) -> None:
  """Saves `state` at its step with this process's data iterator state; every process calls it (orbax
  writes the arrays' shards from every process). The data item holds every process's iterator state,
  gathered here: {"process_count": P, "processes": [state of process 0, ..., state of process P - 1]}."""
  states = [json.loads(text) for text in sharding.gather_strings([json.dumps(data_state)])]
  manager.save(
    int(state.step),
    args=ocp.args.Composite(
      state=ocp.args.PyTreeSave(state),
      data=ocp.args.JsonSave({"process_count": len(states), "processes": states}),
      meta=ocp.args.JsonSave(meta),
    ),
    force=True,
  )


def restore(manager: ocp.CheckpointManager, target: TrainState, step: int | None = None):
  """(state, this process's data iterator state, metadata) of `step` (the newest by default), onto
  `target`'s shardings: restoring to another device count or mesh shape works. A target whose opt_state is
  None restores the variables and step only (opt_state None, no data state). A run resumed on another
  number of processes continues the data where all processes had equal states (the trainer's: positions
  in the global batches, data/pipeline.py); otherwise it is refused."""
  step = manager.latest_step() if step is None else step
  if target.opt_state is None:
    # Inference (load_run): the step, parameters and batch statistics alone; the optimizer state (AdamW's
    # two moments, and optax.MultiSteps' accumulated gradients: two or three times the parameters' bytes) is
    # not read.
    part = {"step": target.step, "params": target.params, "batch_stats": target.batch_stats}
    restored = manager.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
          item=part, restore_args=ocp.checkpoint_utils.construct_restore_args(part), partial_restore=True
        ),
        meta=ocp.args.JsonRestore(),
      ),
    )
    return TrainState(opt_state=None, **restored.state), None, restored.meta
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target)),
      data=ocp.args.JsonRestore(),
      meta=ocp.args.JsonRestore(),
    ),
  )
  return restored.state, _this_process_data_state(restored.data, manager.directory / str(step)), restored.meta


def _this_process_data_state(saved: Any, directory: epath.Path) -> Any:
  if not (isinstance(saved, dict) and "processes" in saved):
    saved = {"process_count": 1, "processes": [saved]}  # Written before the states were gathered.
  states = saved["processes"]
  if not isinstance(states, list) or len(states) != saved.get("process_count"):
    raise WorkdirError(f"{directory}: its data state is not one state per process")
  if len(states) == jax.process_count():
    return states[jax.process_index()]
  if all(s == states[0] for s in states):
    return states[0]
  raise WorkdirError(
    f"{directory}: written by {len(states)} processes whose data positions differ; resume "
    f"it with {len(states)} processes, not {jax.process_count()}"
  )


# What says that a checkpoint itself is damaged (its files cut short, rewritten or half deleted), as
# orbax 0.12 / tensorstore report it (tests/test_faults.py makes each): a file or item that is not there
# (FileNotFoundError; KeyError 'Item "state" was not found in the checkpoint'), JSON that does not parse
# (the data and meta items, the state's _METADATA), and tensorstore's ValueErrors whose absl status says
# the bytes are missing or wrong: DATA_LOSS (a manifest or array file cut short or zeroed), NOT_FOUND (an
# array's file gone), OUT_OF_RANGE (a data file shorter than its index says), FAILED_PRECONDITION (a data
# file changed or gone under its index). Orbax wraps a failed array read in a bare Exception raised `from`
# tensorstore's error, hence the walk down `__cause__`. Everything else is not evidence of damage and must
# not get a healthy checkpoint skipped and then deleted (train.py forgets the steps after the one
# restored): an OSError such as EIO or a connection reset, a timeout, MemoryError, tensorstore's
# UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED / PERMISSION_DENIED (an object store or the
# machine in trouble), or a bug.
_DAMAGE_ERRORS = (FileNotFoundError, KeyError, json.JSONDecodeError, UnicodeDecodeError)
_DAMAGE_STATUSES = ("DATA_LOSS", "NOT_FOUND", "OUT_OF_RANGE", "FAILED_PRECONDITION")
# Statuses of a store or machine that did not answer: the same command may well succeed later.
_TRANSIENT_STATUSES = (
  "UNAVAILABLE",
  "DEADLINE_EXCEEDED",
  "RESOURCE_EXHAUSTED",
  "ABORTED",
  "CANCELLED",
  "UNAUTHENTICATED",
  "PERMISSION_DENIED",
  "INTERNAL",
  "UNKNOWN",
)
_TREE_METADATA = "_METADATA"  # orbax's PYTREE_METADATA_FILE, the state item's tree


def _status(error: BaseException) -> str | None:
  """The absl status code at the start of a tensorstore ValueError's message ("DATA_LOSS: ..."), if any."""
  code = str(error).split(":", 1)[0]
  return code if isinstance(error, ValueError) and code.isupper() and code.replace("_", "").isalpha() else None


def _root_cause(error: BaseException) -> BaseException:
  while error.__cause__ is not None:
    error = error.__cause__
  return error


def is_damage(error: BaseException, directory: epath.Path) -> bool:
  """Whether `error`, raised restoring the checkpoint in `directory`, shows that the checkpoint is damaged
  (_DAMAGE_ERRORS, _DAMAGE_STATUSES), rather than that it could not be read this time."""
  cause = _root_cause(error)
  if isinstance(cause, _DAMAGE_ERRORS) or _status(cause) in _DAMAGE_STATUSES:
    return True
  # Without its tree metadata orbax reads the arrays' names as a plain dict, which jax then refuses as
  # another tree than the TrainState ("pytree structure error"): a removed file, not a different model
  # (check_compatible refused that before).
  return (
    isinstance(cause, ValueError) and _status(cause) is None and not (directory / "state" / _TREE_METADATA).exists()
  )


def restore_newest(manager: ocp.CheckpointManager, target: TrainState):
  """`restore` of the newest checkpoint that can be read, or None when there is none. A damaged one (a
  file cut short, a folder half deleted: is_damage) is skipped with a warning naming it; if none can be
  read, a WorkdirError names the newest and why. Any other failure to read one (the store or the machine,
  not the checkpoint) is raised, with nothing skipped: a WorkdirError saying so for I/O errors, timeouts,
  lack of memory and tensorstore's transient statuses, the error itself otherwise."""
  steps = sorted(manager.all_steps(), reverse=True)
  first_error = None
  for step in steps:
    try:
      return restore(manager, target, step)
    except Exception as error:  # pylint: disable=broad-except  (sorted below: damage or not)
      directory = manager.directory / str(step)
      if not is_damage(error, directory):
        cause = _root_cause(error)
        if isinstance(cause, (OSError, TimeoutError, MemoryError)) or _status(cause) in _TRANSIENT_STATUSES:
          raise WorkdirError(
            f"{directory}: cannot be read now ({type(cause).__name__}: {_first_line(cause)}); "
            "it is not damaged as far as can be told, so nothing was skipped or deleted: run "
            "the same command again"
          ) from error
        raise
      first_error = first_error or error
      print(
        f"warning: {manager.directory / str(step)}: cannot be restored ({type(error).__name__}: "
        f"{_first_line(error)}); " + ("using the one before" if step != steps[-1] else "no other left"),
        file=sys.stderr,
      )
  if first_error is not None:
    raise WorkdirError(
      f"{manager.directory}: none of its checkpoints (steps {sorted(steps)}) can be "
      f"restored; the newest: {_first_line(first_error)}"
    )
  return None


def forget_steps_after(manager: ocp.CheckpointManager, step: int) -> None:
  """Deletes the checkpoints newer than `step`: damaged ones skipped by `restore_newest`, or a `best` saved
  after the resume point (the resumed run saves it again at the same step)."""
  for newer in sorted(s for s in manager.all_steps() if s > step):
    manager.delete(newer)


def trim_metrics(workdir: str | os.PathLike, step: int) -> None:
  """Keeps the records of metrics.jsonl up to `step` (the resume point): what a killed run logged after
  its last checkpoint, and a line cut short by the kill, would otherwise appear twice or break readers."""
  path = metrics_path(workdir)
  if not sharding.is_lead_process() or not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut short by the kill.
    if isinstance(record, dict) and record.get("step", 0) <= step:
      kept.append(line)
  files.write_lines(path, kept)


def _first_line(error: BaseException) -> str:
  return (str(error).strip().splitlines() or [type(error).__name__])[0][:300]


def create_from_variables(
  workdir: str | os.PathLike,
  config: ml_collections.ConfigDict,
  tokenizer: Any,
  variables: dict[str, Any],
  meta: dict[str, Any],
) -> None:
  """A workdir whose `best` checkpoint (step 0) holds imported `variables`: what `evaluate`, `predict` and
  `config.init.from_workdir` read. Refuses variables whose names or shapes differ from the config's model."""
  workdir = epath.Path(workdir)
  if (workdir / CONFIG_FILE).exists():
    raise WorkdirError(f"{workdir}: already holds a run; choose a new directory")
  components = build(config, tokenizer)
  mesh, layout = sharding.mesh_for_loading(config.get("sharding"), str(workdir))
  target = abstract_state(components, mesh, layout)
  variables = {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}
  expected = {"params": target.params, "batch_stats": target.batch_stats}
  shapes = lambda tree: jax.tree_util.tree_map_with_path(lambda p, a: (jax.tree_util.keystr(p), a.shape), tree)
  if jax.tree.leaves(shapes(expected)) != jax.tree.leaves(shapes(variables)):
    raise WorkdirError(f"{workdir}: the imported tensors do not fit the {config.model.name} of the config")
  params = jax.tree.map(lambda a, t: jnp.asarray(a, t.dtype), variables["params"], target.params)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    batch_stats=variables["batch_stats"],
    opt_state=components.make_optimizer(params).init(params),
  )
  state = jax.device_put(state, jax.tree.map(lambda a: a.sharding, target))
  write_run_files(workdir, config, tokenizer, components.task.label_names)
  manager = checkpoint_manager(workdir, BEST)
  save(manager, state, {}, dict(meta, step=0))
  manager.wait_until_finished()
  manager.close()


@dataclasses.dataclass
class Run:
  """A trained run loaded from its workdir."""

  workdir: epath.Path
  config: ml_collections.ConfigDict
  task: tasks.Task  # built from the run's files: its tokenizer, or its label names
  model: Any
  state: TrainState
  mesh: jax.sharding.Mesh
  checkpoint: str

  @property
  def tokenizer(self) -> Any:
    """The task's tokenizer (None for classifiers)."""
    return self.task.tokenizer


def load_tokenizer(workdir: str | os.PathLike) -> Any:
  path = epath.Path(workdir) / TOKENIZER_FILE
  if not path.is_file():
    raise WorkdirError(f"{path}: not found; the workdir lacks the tokenizer its model was trained with")
  return tokenizers.load(path)


def load_run(workdir: str | os.PathLike, checkpoint: str = BEST, optimizer_state: bool = False) -> Run:
  """The config, task, model, tokenizer and `best` (or `latest`) state of a training workdir: its step,
  parameters and batch statistics; the optimizer state too where `optimizer_state` (else state.opt_state is
  None: inference never reads AdamW's moments or accumulated gradients)."""
  workdir = epath.Path(workdir)
  config = read_config(workdir)
  family = models.get(config.model.name)  # Once: the task carries it (run.task.family).
  # The task from the run's own files: the tokenizer it trained with, or the findings its outputs are.
  if tasks.task_class(config, family).uses_tokenizer:
    tokenizer, label_names = load_tokenizer(workdir), None
  else:
    tokenizer, label_names = None, load_label_names(workdir)
  components = build(config, tokenizer, label_names, family)
  # The run's parameter layout where its mesh fits these devices (else replicated): checkpoints restore
  # onto any layout.
  mesh, layout = sharding.mesh_for_loading(config.get("sharding"), str(workdir / CONFIG_FILE))
  manager = checkpoint_manager(workdir, checkpoint, create=False)
  target = abstract_state(components, mesh, layout)
  restored = restore_newest(manager, target if optimizer_state else target.replace(opt_state=None))
  manager.close()
  if restored is None:
    raise WorkdirError(f"{workdir / 'checkpoints' / checkpoint}: no checkpoint; has training run?")
  state = restored[0]
  return Run(
    workdir=workdir,
    config=config,
    task=components.task,
    model=components.model,
    state=state,
    mesh=mesh,
    checkpoint=checkpoint,
  )
