"""Generic trainer: state, jitted step over a device mesh, orbax checkpoints, resume, logging.

  cxrjax train --config=configs/demo.py --workdir=workdirs/demo [--config.train.num_steps=100]

The batch is sharded over a one-axis ('data',) mesh of every device of every process and the parameters
are replicated, so one code path runs on a laptop CPU, 8 simulated devices and a multi-host TPU slice.
Each process feeds its own shard of the global batch (`make_array_from_process_local_data`).

Workdir layout:
  config.json            the full config of the run (checked on resume: another model's workdir is refused)
  vocabulary.json        the word vocabulary the model was trained with
  metrics.jsonl          one JSON object per logged step and per evaluation
  checkpoints/latest/    the newest state, with the data iterator's position (resume point)
  checkpoints/best/      the state with the best validation metric (model selection: validation only)
"""

import functools
import json
import os
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from cxrjax import models, tasks
from cxrjax.data import pipeline

LATEST, BEST = "latest", "best"


class ConfigError(ValueError):
  """A run that cannot start as configured; raised before any compute."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: Any
  batch_stats: Any  # DenseNet batch-norm running statistics ({} when the model has none)
  opt_state: Any


def create_mesh() -> jax.sharding.Mesh:
  """A ('data',) mesh over every device (all hosts), with Auto axes as linen models need."""
  return jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))


def frozen_labels(params: Any, frozen_prefixes: tuple[str, ...]) -> Any:
  """'frozen' for parameters under any of `frozen_prefixes` ("image_encoder", "decoder/embed"), else
  'trained', per leaf."""
  def label(path, _):
    name = "/".join(str(getattr(key, "key", key)) for key in path)
    return "frozen" if any(name == p or name.startswith(p + "/") for p in frozen_prefixes) else "trained"
  return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(train: ml_collections.ConfigDict) -> optax.Schedule:
  """"cosine": linear warm-up then cosine decay to final_lr_fraction; "step": the learning rate divided
  by 10 every decay_every_steps (AG-CNN: every 20 epochs)."""
  if train.get("schedule", "cosine") == "step":
    return optax.exponential_decay(train.learning_rate, transition_steps=train.decay_every_steps,
                                   decay_rate=0.1, staircase=True)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
      decay_steps=max(train.num_steps, train.warmup_steps + 1),
      end_value=train.learning_rate * train.final_lr_fraction)


def make_optimizer(config: ml_collections.ConfigDict, params: Any,
                   frozen_prefixes: tuple[str, ...] = ()) -> optax.GradientTransformation:
  """Global-norm clipping, then AdamW (decoupled decay; biases and norm scales, rank-1 leaves, are not
  decayed) or, with train.optimizer="adam_l2", Adam with an L2 penalty on convolution kernels only
  (seed 004). Parameters under `frozen_prefixes` never move, weight decay included."""
  train = config.train
  schedule = make_schedule(train)
  if train.get("optimizer", "adamw") == "adam_l2":
    conv_kernels = jax.tree.map(lambda leaf: leaf.ndim == 4, params)
    optimizer = optax.chain(optax.add_decayed_weights(train.weight_decay, mask=conv_kernels),
                            optax.adam(schedule, b1=train.b1, b2=train.b2))
  else:
    decay_mask = jax.tree.map(lambda leaf: leaf.ndim > 1, params)
    optimizer = optax.adamw(schedule, b1=train.b1, b2=train.b2, weight_decay=train.weight_decay,
                            mask=decay_mask)
  trained = optax.chain(optax.clip_by_global_norm(train.grad_clip_norm), optimizer)
  return optax.multi_transform({"trained": trained, "frozen": optax.set_to_zero()},
                               frozen_labels(params, frozen_prefixes))


def init_state(model, task, tx_fn, rng: jax.Array) -> TrainState:
  """Fresh parameters and optimizer state (pretrained parts are put in by `task.load_pretrained`)."""
  variables = task.init(model, {"params": rng, "dropout": rng})
  params, batch_stats = variables["params"], variables.get("batch_stats", {})
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                    opt_state=tx_fn(params).init(params))


def make_train_step(model, task, tx: optax.GradientTransformation, dropout_seed: int):
  """(state, batch) -> (state, metrics); dropout keys derive from (seed, step), so resuming is exact."""

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

    def loss_fn(params):
      return task.loss(model, {"params": params, "batch_stats": state.batch_stats}, batch, rng)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.global_norm(grads), **aux}
    # Models without batch norm in training mode return no updates: keep the statistics.
    batch_stats = batch_stats if jax.tree.leaves(batch_stats) else state.batch_stats
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics

  return train_step


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """This process's shard of the batch -> global arrays sharded over 'data' (strings stay on host)."""
  return {key: jax.make_array_from_process_local_data(sharding, value)
          for key, value in batch.items() if value.dtype.kind in "biuf"}


def _checkpoint_managers(workdir: epath.Path) -> dict[str, ocp.CheckpointManager]:
  options = ocp.CheckpointManagerOptions(max_to_keep=1, create=True)
  return {name: ocp.CheckpointManager(absolute_path(workdir / "checkpoints" / name), options=options)
          for name in (LATEST, BEST)}


def absolute_path(path: epath.Path) -> epath.Path:
  """Orbax wants absolute paths; gs:// paths already are."""
  return path if "://" in str(path) else epath.Path(os.path.abspath(path))


def _check_workdir(workdir: epath.Path, config: ml_collections.ConfigDict) -> None:
  """Refuses a workdir whose checkpoints belong to another model or data configuration."""
  saved_path = workdir / "config.json"
  if not saved_path.exists():
    return
  saved = json.loads(saved_path.read_text())
  for section in ("model", "data"):
    if saved.get(section) != json.loads(config.to_json())[section]:
      raise ConfigError(
          f"{workdir} holds a checkpoint of another {section} configuration ({saved_path}: "
          f"{section}.name={saved.get(section, {}).get('name')!r}); use a new --workdir")


def restore(manager: ocp.CheckpointManager, abstract_state: TrainState, step: int | None = None):
  """(state, data iterator state, metadata) of `step` (the newest by default), onto `abstract_state`'s
  shardings: restoring to another device count works."""
  step = manager.latest_step() if step is None else step
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
      meta=ocp.args.JsonRestore()))
  return restored.state, restored.data, restored.meta


def save(manager: ocp.CheckpointManager, state: TrainState, data_state: Any, meta: dict) -> None:
  manager.save(int(state.step), args=ocp.args.Composite(
      state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
      meta=ocp.args.JsonSave(meta)), force=True)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | epath.Path,
                       stop_after_steps: int | None = None) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  `stop_after_steps` ends the run early (after that many steps in this call) as an interruption would;
  the tests use it to check that resuming reproduces an uninterrupted run exactly.
  Returns the last validation scores.
  """
  workdir = epath.Path(workdir)
  train_cfg = config.train
  if train_cfg.batch_size % jax.device_count():
    raise ConfigError(f"train.batch_size={train_cfg.batch_size} is not divisible by the "
                      f"{jax.device_count()} devices")
  _check_workdir(workdir, config)
  if config.model.name not in models.MODELS:
    raise ConfigError(f"unknown model.name {config.model.name!r}; known: {sorted(models.MODELS)}")
  if config.model.get("cache_features") and not config.model.get("freeze_encoder"):
    raise ConfigError("model.cache_features needs model.freeze_encoder: a trained encoder's features "
                      "change every step")
  task = tasks.make_task(config)
  train_source, train_info = pipeline.make_source(config.data, "train")
  val_source, _ = pipeline.make_source(config.data, "val")
  vocabulary = pipeline.load_or_build_vocabulary(config.data, train_source) if task.uses_vocabulary else None

  workdir.mkdir(parents=True, exist_ok=True)
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json(indent=2) + "\n")
    if vocabulary is not None:
      vocabulary.to_json(workdir / "vocabulary.json")

  model = models.build_model(config.model, len(vocabulary) if vocabulary else None)
  mesh = create_mesh()
  replicated, data_sharding = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))
  tx_fn = functools.partial(make_optimizer, config, frozen_prefixes=task.frozen_prefixes())

  init = jax.jit(lambda rng: init_state(model, task, tx_fn, rng), out_shardings=replicated)
  abstract_state = jax.eval_shape(init, jax.random.key(train_cfg.seed))
  state_sharding = jax.tree.map(lambda _: replicated, abstract_state)
  abstract_state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                abstract_state, state_sharding)
  tx = tx_fn(abstract_state.params)

  managers = _checkpoint_managers(workdir)
  resuming = managers[LATEST].latest_step() is not None
  if resuming:
    state, data_state, meta = restore(managers[LATEST], abstract_state)
  else:
    state = init(jax.random.key(train_cfg.seed))
    params, stats = task.load_pretrained(state.params, state.batch_stats, vocabulary)
    if params is not state.params or stats is not state.batch_stats:
      # The optimizer state is unchanged: AdamW's moments start at zero whatever the parameters.
      state = jax.device_put(state.replace(params=params, batch_stats=stats), state_sharding)

  if config.model.get("cache_features"):
    from cxrjax import features
    cached = features.load_or_compute(
        workdir / "features" / "train.npz", model, {"params": state.params, "batch_stats": state.batch_stats},
        train_source, config, batch_size=config.eval.batch_size)
    train_source = features.CachedFeatureSource(train_source, cached)

  dataset = pipeline.make_dataset(
      train_source, vocabulary, batch_size=train_cfg.batch_size // jax.process_count(),
      image_size=config.data.image_size, max_length=config.data.max_length, train=True,
      seed=train_cfg.seed, cleaning=config.data.cleaning, random_flip=config.data.random_flip,
      read_threads=config.data.get("read_threads", 0), worker_count=config.data.get("worker_count", 0),
      label_names=None if task.uses_vocabulary else train_info.label_names,
      num_views=config.data.get("num_views", pipeline.NUM_VIEWS))
  iterator = iter(dataset)

  best_value = -np.inf
  if resuming:
    iterator.set_state(data_state)
    best_value = meta.get("best_value", -np.inf)
    print(f"resumed from {workdir}/checkpoints/latest at step {int(state.step)}")

  train_step = jax.jit(make_train_step(model, task, tx, train_cfg.seed),
                       in_shardings=(state_sharding, data_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  metrics_file = (workdir / "metrics.jsonl").open("a") if jax.process_index() == 0 else None
  first_step = int(state.step)
  last_step = train_cfg.num_steps if stop_after_steps is None else min(
      train_cfg.num_steps, first_step + stop_after_steps)
  progress = _progress(first_step, train_cfg.num_steps)
  val_metrics: dict[str, Any] = {}
  pending, timer = [], time.perf_counter()
  for step in range(first_step + 1, last_step + 1):
    batch = next(iterator)
    state, step_metrics = train_step(state, to_global(batch, data_sharding))
    pending.append(step_metrics)
    progress.update(1)
    if step % train_cfg.log_every == 0 or step == last_step:
      summary = {key: float(np.mean([jax.device_get(m[key]) for m in pending])) for key in pending[0]}
      summary.update(step=step, steps_per_s=len(pending) / (time.perf_counter() - timer))
      _log(metrics_file, {"split": "train", **summary})
      progress.set_postfix(loss=f"{summary['loss']:.3f}")
      pending, timer = [], time.perf_counter()
    is_eval = step % train_cfg.eval_every == 0 or step == train_cfg.num_steps
    if is_eval:
      val_metrics = task.validate(model, state, val_source, vocabulary)
      _log(metrics_file, {"split": "val", "step": step, **val_metrics})
      value = float(val_metrics[config.eval.best_metric])
      value = -np.inf if np.isnan(value) else value  # E.g. AUROC of a split with one label value.
      if value > best_value or managers[BEST].latest_step() is None:
        best_value = value
        save(managers[BEST], state, iterator.get_state(), {"step": step, config.eval.best_metric: value})
    if is_eval or step % train_cfg.checkpoint_every == 0 or step == last_step:
      save(managers[LATEST], state, iterator.get_state(), {"step": step, "best_value": float(best_value)})
  progress.close()
  for manager in managers.values():
    manager.wait_until_finished()
    manager.close()
  if metrics_file:
    metrics_file.close()
  return val_metrics


def _progress(first_step: int, num_steps: int):
  from tqdm import tqdm
  return tqdm(total=num_steps, initial=first_step, desc="train", unit="step",
              disable=jax.process_index() != 0, dynamic_ncols=True)


def _log(handle, record: dict[str, Any]) -> None:
  if handle is not None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()
