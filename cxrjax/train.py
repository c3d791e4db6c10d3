"""The generic trainer: one jitted step over a device mesh, validation, orbax checkpoints, exact resume.

  cxrjax train --config=configs/demo.py --workdir=workdirs/demo [--config.train.num_steps=100]

Nothing here knows a model family or a task: the config names the family (models/), the family its task
(tasks/), and the workdir module owns the state and its files. The batch is sharded over the ('data',) mesh
of every device of every process and the parameters are replicated; each process feeds its own shard of
the global batch. Dropout keys derive from (seed, step) and the data iterator's position is checkpointed,
so an interrupted run resumes with exactly the batches and updates of an uninterrupted one.
"""

import json
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from tqdm import tqdm

from cxrjax import models, optim, sharding, tasks, workdir as workdir_lib
from cxrjax.data import datasets, pipeline
from cxrjax.errors import ConfigError
from cxrjax.tasks import evaluation, feature_cache
from cxrjax.weights import pretrained


def make_train_step(components: workdir_lib.Components, tx: optax.GradientTransformation, dropout_seed: int,
                    tokenizer: Any):
  """(state, batch) -> (state, metrics)."""
  task, model = components.task, components.model

  def train_step(state: workdir_lib.TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

    def loss_fn(params):
      return task.loss(model, {"params": params, "batch_stats": state.batch_stats}, batch, rng, tokenizer)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    # Models without batch norm in training mode return no updates: keep the statistics.
    batch_stats = batch_stats if jax.tree.leaves(batch_stats) else state.batch_stats
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                         opt_state=opt_state), metrics

  return train_step


def initial_variables(config: ml_collections.ConfigDict, state: workdir_lib.TrainState, tokenizer: Any
                      ) -> dict[str, Any]:
  """The variables a new run starts from: `config.init.from_workdir`'s best checkpoint (same
  architecture; the family may add its own check, e.g. AG-CNN's stage order), else the fresh ones with
  the pretrained files of `config.init` written in (weights/pretrained.py)."""
  family = models.get(config.model.name)
  variables = state.variables()
  init = config.get("init", ml_collections.ConfigDict())
  if init.get("from_workdir"):
    previous = workdir_lib.load_run(init.from_workdir)
    if previous.config.model.name != config.model.name:
      raise ConfigError(f"config.init.from_workdir={init.from_workdir}: holds a {previous.config.model.name} "
                        f"model, this run trains {config.model.name}")
    if hasattr(family, "check_initialization"):
      family.check_initialization(previous.config.model, config.model, init.from_workdir)
    if jax.tree.structure(previous.state.params) != jax.tree.structure(variables["params"]):
      raise ConfigError(f"config.init.from_workdir={init.from_workdir}: its {config.model.name} differs "
                        "from this config's (parameter names differ)")
    return previous.state.variables()
  return pretrained.initialize(init, family, variables, tokenizer, model_config=config.model)


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
  models.get(config.model.name)  # A clear error for an unknown family, before any data is read.
  workdir_lib.check_compatible(workdir, config)

  train_source, train_info = datasets.make_source(config.data, "train")
  val_source, _ = datasets.make_source(config.data, "val")
  tokenizer = None
  if tasks.task_class(config).uses_tokenizer:
    tokenizer = datasets.load_or_build_tokenizer(config.data, train_source)
  components = workdir_lib.build(config, tokenizer)
  task, model = components.task, components.model
  if not task.uses_tokenizer:  # Classifiers: the batches carry the split's finding labels.
    task.label_names = train_info.label_names
  if config.train.get("cache_features") and not optim.frozen_predicate(config.optimizer)("image_encoder"):
    raise ConfigError("train.cache_features needs a frozen image encoder (optimizer.param_groups "
                      "('image_encoder/.*', None)): a trained encoder's features change every step")
  workdir_lib.write_run_files(workdir, config, tokenizer,
                              None if task.uses_tokenizer else train_info.label_names)

  mesh = sharding.create_mesh()
  replicated, data_sharding = sharding.replicated(mesh), sharding.data_sharded(mesh)
  target = workdir_lib.abstract_state(components, mesh)
  state_sharding = jax.tree.map(lambda a: a.sharding, target)
  optim.check_whole_modules(config.optimizer, target.params, components.frozen_modules)
  tx = components.make_optimizer(target.params)

  latest = workdir_lib.checkpoint_manager(workdir, workdir_lib.LATEST)
  best = workdir_lib.checkpoint_manager(workdir, workdir_lib.BEST)
  # A run killed at any moment resumes from its newest complete checkpoint (a damaged one is skipped).
  restored = workdir_lib.restore_newest(latest, target)
  resuming = restored is not None
  if resuming:
    state, data_state, meta = restored
    # What the killed run did after this point is replayed exactly: its newer checkpoints and logs go.
    for manager in (latest, best):
      workdir_lib.forget_steps_after(manager, int(state.step))
  workdir_lib.trim_metrics(workdir, int(state.step) if resuming else 0)
  if not resuming:
    init = jax.jit(lambda rng: workdir_lib.init_state(components, rng), out_shardings=state_sharding)
    state = init(jax.random.key(train_cfg.seed))
    variables = initial_variables(config, state, tokenizer)
    if variables is not state.variables():
      # The optimizer state is unchanged: AdamW's moments start at zero whatever the parameters.
      state = jax.device_put(state.replace(params=variables["params"], batch_stats=variables["batch_stats"]),
                             state_sharding)

  if config.train.get("cache_features"):
    cached = feature_cache.load_or_compute(
        workdir_lib.features_path(workdir), model, state.variables(), train_source, config,
        batch_size=config.eval.batch_size)
    train_source = feature_cache.CachedFeatureSource(train_source, cached)

  iterator = iter(evaluation.split_batches(config, train_source, tokenizer, task, train=True,
                                           batch_size=train_cfg.batch_size // jax.process_count()))
  best_metric = config.eval.get("best_metric", task.best_metric_default)
  best_value = -np.inf
  if resuming:
    iterator.set_state(data_state)
    best_value = meta.get("best_value", -np.inf)
    print(f"resumed from {workdir}/checkpoints/latest at step {int(state.step)}")

  train_step = jax.jit(make_train_step(components, tx, train_cfg.seed, tokenizer),
                       in_shardings=(state_sharding, data_sharding),
                       out_shardings=(state_sharding, replicated), donate_argnums=(0,))
  validate = jax.jit(task.predict_fn(model, tokenizer, greedy=True))
  metrics_file = workdir_lib.metrics_path(workdir).open("a") if sharding.is_lead_process() else None
  first_step = int(state.step)
  last_step = train_cfg.num_steps if stop_after_steps is None else min(
      train_cfg.num_steps, first_step + stop_after_steps)
  progress = tqdm(total=train_cfg.num_steps, initial=first_step, desc="train", unit="step",
                  disable=not sharding.is_lead_process(), dynamic_ncols=True)
  val_scores: dict[str, Any] = {}
  pending, timer = [], time.perf_counter()
  for step in range(first_step + 1, last_step + 1):
    batch = next(iterator)
    state, step_metrics = train_step(state, sharding.to_global(batch, data_sharding))
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
      source = val_source
      if config.eval.get("max_val_examples"):
        source = pipeline.Subset(val_source, config.eval.max_val_examples)
      records = evaluation.predict_split(task, state.variables(), source, tokenizer, config, mesh=mesh,
                                         predict=validate, batch_size=config.eval.batch_size)
      val_scores = task.score(records)
      _log(metrics_file, {"split": "val", "step": step, **val_scores})
      value = float(val_scores[best_metric])
      value = -np.inf if np.isnan(value) else value  # E.g. AUROC of a split with one label value.
      if value > best_value or best.latest_step() is None:
        best_value = value
        workdir_lib.save(best, state, iterator.get_state(), {"step": step, best_metric: value})
    if is_eval or step % train_cfg.checkpoint_every == 0 or step == last_step:
      workdir_lib.save(latest, state, iterator.get_state(), {"step": step, "best_value": float(best_value)})
  progress.close()
  for manager in (latest, best):
    manager.wait_until_finished()
    manager.close()
  if metrics_file:
    metrics_file.close()
  return val_scores


def _log(handle, record: dict[str, Any]) -> None:
  if handle is not None:
    handle.write(json.dumps(record) + "\n")
    handle.flush()
