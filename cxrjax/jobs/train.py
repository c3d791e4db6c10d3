"""The generic trainer: one jitted step over a device mesh, validation, orbax checkpoints, exact resume.

  cxrjax train --config=configs/demo.py --workdir=workdirs/demo [--config.train.num_steps=100]

Nothing here knows a model family or a task: the config names the family (models/), the family its task
(tasks/), and the workdir module owns the state and its files. The batch is sharded over 'data' of the
('data', 'model') mesh of every device of every process; the parameters are replicated unless
`config.sharding` lays them out (cxrjax/core/sharding.py). Each process reads and feeds only its rows of every
global batch, so the run does not depend on the number of processes. Dropout keys derive from (seed, step) and the data iterator's position is checkpointed,
so an interrupted run resumes with exactly the batches and updates of an uninterrupted one.

A SIGTERM (what a preempted TPU VM receives) stops the run at the next step boundary with a checkpoint;
the same command run again resumes it. A non-finite loss or gradient norm stops it before that state is
saved. Training also writes a TensorBoard log (WORKDIR/tensorboard) and, for `train.profile_steps`, a
profiler trace (WORKDIR/profile).

Validation is scored by the run's evaluators of stage "train" (cxrjax/evaluators/, evaluators.for_run): the
task's defaults (text metrics without METEOR; AUROC) and config.evaluators' (cxrjax/core/config.py; CheXbert
clinical efficacy, BERTScore), built once per run before any data is read. Validation runs every
train.eval_every steps and at the last step; each evaluator runs at those whose step is a multiple of its
`every_steps` (default: all of them; at the last step: all of them) on its `split` (default the validation
split, cut to eval.max_val_examples; "test": the whole split). Each validation predicts a split once for all the
evaluators due on it (validation_plan). The validation split's scores are metrics.jsonl's {"split": "val",
"step", ...} records, as before evaluators had a split; the test split's are {"split": "test", "step", ...}
records (TensorBoard's "test/<score>"). One of the validation split's HEADLINE scores (e.g. "BLEU-4",
"mean_AUROC", "CE/uncertain_positive/all14/micro/F1", "BERTScore/F1") can be config.eval.best_metric, given by an
evaluator that runs at every validation (check_best_metric). Which evaluators validation runs (type, split,
every_steps, provenance) is WORKDIR/evaluators.json (workdir.write_evaluators).
"""

import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from cxrjax.core import optim, sharding
from cxrjax.run import summaries, workdir as workdir_lib
from cxrjax import models, tasks
from cxrjax import evaluators as evaluators_lib
from cxrjax.data import datasets, pipeline
from cxrjax.core.errors import ConfigError, UserError
from cxrjax.tasks import captioning, evaluation, feature_cache
from cxrjax.weights import pretrained

TENSORBOARD_DIR, PROFILE_DIR = "tensorboard", "profile"  # In the workdir.
# The split validation scores by default, and the "split" of its records in metrics.jsonl (by the split's
# name otherwise: "test").
VALIDATION_SPLIT, VALIDATION_RECORD = "validation", "val"
# The exit status of a preempted run: the shell's for a process ended by SIGTERM (128 + 15), so that a
# scheduler or `cxrjax train ... && cxrjax evaluate ...` sees an interrupted run, not a finished one.
PREEMPTED_STATUS = 128 + signal.SIGTERM
# Dense bf16 peak FLOP/s of one chip, by jax's device_kind (the vendors' figures; NVIDIA's are the SXM
# parts' dense tensor-core rates, without sparsity): the denominator of flops_utilisation. CPUs have none.
PEAK_FLOPS_PER_S = {
  "TPU v4": 275e12,
  "TPU v5 lite": 197e12,
  "TPU v5": 459e12,
  "TPU v5p": 459e12,
  "TPU v6 lite": 918e12,
  "NVIDIA H100 80GB HBM3": 989.4e12,
  "NVIDIA H200": 989.4e12,
  "NVIDIA A100-SXM4-80GB": 312e12,
  "NVIDIA A100-SXM4-40GB": 312e12,
}


class TrainingDiverged(UserError):
  """A step's loss or gradient norm is not finite; the workdir keeps its last finite checkpoint."""


class Preempted(SystemExit):
  """Ends the process (a sweep too) with PREEMPTED_STATUS once a SIGTERM's checkpoint is written."""


class PreemptionNotice:
  """Whether a SIGTERM asks the run to stop: `requested(step)`, asked at every step boundary.

  One process: a handler that only sets a flag, installed for the `with` block and the previous one put
  back after. Several: JAX's distributed runtime already listens for SIGTERM and the processes agree on one
  step to stop at (multihost_utils.reached_preemption_sync_point, which wants every step), so no handler.
  """

  def __init__(self):
    self.received, self._installed, self._previous = False, False, None

  def __enter__(self):
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._receive)
      self._installed = True
    return self

  def __exit__(self, *exc_info):
    if self._installed:
      # None: the previous handler was not set from Python (nothing to put back but the default).
      signal.signal(signal.SIGTERM, signal.SIG_DFL if self._previous is None else self._previous)
      self._installed = False

  def _receive(self, signum, frame):
    del signum, frame
    self.received = True

  def requested(self, step: int) -> bool:
    return multihost_utils.reached_preemption_sync_point(step) or self.received


class StepProfiler:
  """A JAX profiler trace of steps first..last (`train.profile_steps` = (first, last); () for none) in
  `directory`, for TensorBoard's profile tab (tensorboard --logdir WORKDIR/profile); process 0 only."""

  def __init__(self, steps: Sequence[int], directory: epath.Path):
    steps = tuple(steps)
    if steps and not (len(steps) == 2 and all(isinstance(s, int) for s in steps) and 1 <= steps[0] <= steps[1]):
      raise ConfigError(f"train.profile_steps={steps}: want (first, last) with 1 <= first <= last, or () for no trace")
    self.steps = steps if sharding.is_lead_process() else ()
    self.directory, self.tracing = directory, False

  def before(self, step: int) -> None:
    if self.steps and not self.tracing and self.steps[0] <= step <= self.steps[1]:
      jax.profiler.start_trace(str(self.directory))
      self.tracing = True

  def after(self, step: int, state: Any) -> None:
    if self.tracing and step == self.steps[1]:
      self.stop(state)

  def stop(self, state: Any = None) -> None:
    if self.tracing:
      jax.block_until_ready(state)  # The trace then holds the steps' execution, not only their dispatch.
      jax.profiler.stop_trace()
      self.tracing = False


def make_train_step(components: workdir_lib.Components, tx: optax.GradientTransformation, dropout_seed: int):
  """(state, batch) -> (state, metrics)."""
  task, model = components.task, components.model

  def train_step(state: workdir_lib.TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(jax.random.key(dropout_seed), state.step)

    def loss_fn(params):
      return task.loss(model, {"params": params, "batch_stats": state.batch_stats}, batch, rng)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    params, opt_state = optim.apply_gradients(tx, grads, state.opt_state, state.params)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}
    # Models without batch norm in training mode return no updates: keep the statistics.
    batch_stats = batch_stats if jax.tree.leaves(batch_stats) else state.batch_stats
    return state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state), metrics

  return train_step


def jit_train_step(
  components: workdir_lib.Components,
  tx: optax.GradientTransformation,
  dropout_seed: int,
  state_sharding: workdir_lib.TrainState,
  mesh: jax.sharding.Mesh,
):
  """make_train_step jitted as training runs it: the state in its layout `state_sharding` (donated: updated
  in place), the batch over 'data' of `mesh`, the metrics replicated. aot.py compiles this for a TPU slice."""
  return jax.jit(
    make_train_step(components, tx, dropout_seed),
    in_shardings=(state_sharding, sharding.data_sharded(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )


def check_batch_size(
  batch_size: int, section: Any, device_count: int | None = None, process_count: int | None = None
) -> None:
  """Refuses a global train.batch_size that the 'data' axis of the `sharding` section's mesh (over
  `device_count` devices, default all) or the processes (default jax.process_count()) do not divide."""
  process_count = jax.process_count() if process_count is None else process_count
  data_devices = sharding.check_section(section, device_count)["mesh"][sharding.DATA_AXIS]
  if batch_size % data_devices or batch_size % process_count:
    raise ConfigError(
      f"train.batch_size={batch_size} is not divisible by the {data_devices} devices of the "
      f"mesh's 'data' axis and the {process_count} processes"
    )


def summarize_steps(step_metrics: list[dict[str, Any]]) -> dict[str, float]:
  """The logged steps' metrics -> their means; a task's "token_nll" (with "tokens", its count) becomes
  the mean over every token of the steps, and "perplexity" its exp: the seed's exp(mean loss), not a
  mean of per-step perplexities (which Jensen's inequality puts above it)."""
  summary = {key: float(np.mean([m[key] for m in step_metrics])) for key in step_metrics[0]}
  if "token_nll" in summary:
    tokens = np.array([m["tokens"] for m in step_metrics], np.float64)
    nll = np.array([m["token_nll"] for m in step_metrics], np.float64)
    summary["token_nll"] = float((nll * tokens).sum() / max(tokens.sum(), 1.0))
    summary["perplexity"] = float(np.exp(summary["token_nll"]))
  return summary


def step_flops(train_step, state: workdir_lib.TrainState, batch: dict[str, jax.Array]) -> float | None:
  """The FLOPs of one step on all devices, from XLA's cost analysis of the compiled step (one device's
  program, times the devices); None where the backend counts none. The jitted step reuses this compile."""
  flops = (train_step.lower(state, batch).compile().cost_analysis() or {}).get("flops", 0.0)
  return flops * jax.device_count() if flops > 0 else None


def throughput(steps: int, seconds: float, batch_size: int, flops_per_step: float | None) -> dict[str, float]:
  """steps_per_s and examples_per_s (of the global batch); where XLA counts the step's FLOPs, the achieved
  flops_per_s of all devices, and where the chip's peak is known (PEAK_FLOPS_PER_S: TPUs and data-centre GPUs, not CPUs) the
  flops_utilisation, achieved / peak of all devices."""
  rates = {"steps_per_s": steps / seconds, "examples_per_s": steps * batch_size / seconds}
  if flops_per_step:
    rates["flops_per_s"] = flops_per_step * rates["steps_per_s"]
    peak = PEAK_FLOPS_PER_S.get(jax.devices()[0].device_kind)
    if peak:
      rates["flops_utilisation"] = rates["flops_per_s"] / (peak * jax.device_count())
  return rates


def check_finite(metrics: list[dict[str, Any]], last_step: int, workdir: epath.Path, latest: Any) -> None:
  """Raises TrainingDiverged naming the first of the steps ending at `last_step` (their fetched
  `metrics`) whose loss or gradient norm is not finite, and the checkpoint the workdir keeps."""
  for index, values in enumerate(metrics):
    bad = [key for key in ("loss", "grad_norm") if not np.isfinite(values[key])]
    if bad:
      latest.wait_until_finished()
      kept = latest.latest_step()
      kept = (
        "no checkpoint was written" if kept is None else f"checkpoints/latest keeps step {kept}, the last finite state"
      )
      raise TrainingDiverged(
        f"{workdir}: training stopped: the {bad[0]} of step "
        f"{last_step - len(metrics) + 1 + index} is {values[bad[0]]}; {kept} (a lower "
        "optimizer.learning_rate or grad_clip_norm may help)"
      )


def check_cadence(built: Mapping[str, Any], eval_every: int) -> None:
  """Refuses, before training, an evaluator's every_steps that is not a multiple of train.eval_every: it would
  be due at steps where no validation runs."""
  for name, evaluator in built.items():
    if evaluator.every_steps is not None and evaluator.every_steps % eval_every:
      raise ConfigError(
        f"config.evaluators.{name}.every_steps={evaluator.every_steps}: not a multiple of train.eval_every="
        f"{eval_every}, the steps validation runs at"
      )


def validation_plan(built: Mapping[str, Any], step: int, eval_every: int, num_steps: int) -> dict[str, dict[str, Any]]:
  """{split: {name: evaluator}}: the evaluators due at the validation of `step`, by the split they score (the
  validation split first): those whose every_steps (default eval_every) divides `step`, and all of them at the
  last step. Each split's predictions are computed once for its evaluators."""
  plan: dict[str, dict[str, Any]] = {}
  for name, evaluator in built.items():
    if step == num_steps or step % (evaluator.every_steps or eval_every) == 0:
      plan.setdefault(evaluator.split or VALIDATION_SPLIT, {})[name] = evaluator
  return dict(sorted(plan.items(), key=lambda item: item[0] != VALIDATION_SPLIT))


def evaluators_provenance(built: Mapping[str, Any], eval_every: int) -> dict[str, dict[str, Any]]:
  """{name: {"type", "split", "every_steps", and the evaluator's provenance}}: what validation runs, as
  `evaluate` records its evaluators in metrics.json."""
  return {
    name: {
      "type": evaluator.name,
      "split": evaluator.split or VALIDATION_SPLIT,
      "every_steps": evaluator.every_steps or eval_every,
      **evaluator.provenance(),
    }
    for name, evaluator in built.items()
  }


def _scorer(metric: str, built: Mapping[str, Any]) -> str | None:
  """The name of the evaluator whose scores hold `metric` (as evaluators.run names them), None if unknown."""
  for name, evaluator in built.items():
    prefix = "" if name == evaluator.name else f"{name}/"
    if metric in [prefix + key for key in evaluator.HEADLINE]:
      return name
  for name, evaluator in built.items():
    if name != evaluator.name and metric.startswith(f"{name}/"):
      return name
  for name, evaluator in built.items():  # A family of scores: "CE/...", "BERTScore/...".
    if name == evaluator.name and any(
      "/" in k and metric.startswith(k.split("/")[0] + "/") for k in evaluator.HEADLINE
    ):
      return name
  # The unprefixed scores of the task's defaults (the text metrics, AUROC of a class): their one evaluator.
  plain = [
    n for n, e in built.items() if n == e.name and e.SECTION == "scores" and not any("/" in k for k in e.HEADLINE)
  ]
  return plain[0] if len(plain) == 1 else None


def check_best_metric(metric: str, built: Mapping[str, Any], eval_every: int | None = None) -> None:
  """Refuses, before training, a config.eval.best_metric that looks like an evaluator's score (it starts as a
  registered evaluator's headline keys do, "CE/" or "BERTScore/", or with a configured evaluator's "<name>/")
  and is not one of the validation evaluators' HEADLINE scores. Other names (the text metrics, AUROC of a class)
  are left to validation, whose scores hold them or not. Also refuses a metric whose evaluator does not run at
  every validation (every_steps other than `eval_every`) or scores another split than the validation split:
  the best checkpoint is chosen at every validation, on the validation split."""
  scorer = _scorer(metric, built)
  if scorer is not None:
    evaluator = built[scorer]
    if (evaluator.every_steps or eval_every) != eval_every or (evaluator.split or VALIDATION_SPLIT) != VALIDATION_SPLIT:
      raise ConfigError(
        f"config.eval.best_metric={metric!r}: scored by config.evaluators.{scorer}, which does not run at every "
        f"validation of the validation split (every_steps={evaluator.every_steps}, split={evaluator.split!r}); "
        "the best checkpoint is chosen at every validation"
      )
  selectable = [
    ("" if name == evaluator.name else f"{name}/") + key
    for name, evaluator in built.items()
    for key in evaluator.HEADLINE
  ]
  families = {
    key.split("/")[0] + "/" for cls in evaluators_lib.REGISTRY.values() for key in cls.HEADLINE if "/" in key
  } | {f"{name}/" for name, evaluator in built.items() if name != evaluator.name}
  if metric in selectable or not metric.startswith(tuple(families)):
    return
  # Evaluators whose scores have families ("CE/", "BERTScore/", "<name>/"), as the configured ones do; the
  # task's defaults (text metrics, AUROC) have none.
  if not any(name != e.name or any("/" in key for key in e.HEADLINE) for name, e in built.items()):
    raise ConfigError(
      f"config.eval.best_metric={metric!r}: an evaluator's score, but config.evaluators has no evaluator that "
      "gives it (e.g. --config.evaluators.chexbert.labeler=DIR)"
    )
  raise ConfigError(
    f"config.eval.best_metric={metric!r}: not a headline score of config.evaluators; these can "
    f"pick the best checkpoint: {', '.join(selectable)}"
  )


def initial_variables(
  config: ml_collections.ConfigDict, state: workdir_lib.TrainState, tokenizer: Any, family: Any
) -> dict[str, Any]:
  """The variables a new run starts from: `config.init.from_workdir`'s best checkpoint (same
  architecture; the family may add its own check, e.g. AG-CNN's stage order), else the fresh ones with
  the pretrained files of `config.init` written in (weights/pretrained.py). `family`: the model's class."""
  variables = state.variables()
  init = config.get("init", ml_collections.ConfigDict())
  if init.get("from_workdir"):
    previous = workdir_lib.load_run(init.from_workdir)
    if previous.config.model.name != config.model.name:
      raise ConfigError(
        f"config.init.from_workdir={init.from_workdir}: holds a {previous.config.model.name} "
        f"model, this run trains {config.model.name}"
      )
    family.check_initialization(previous.config.model, config.model, init.from_workdir)
    if jax.tree.structure(previous.state.params) != jax.tree.structure(variables["params"]):
      raise ConfigError(
        f"config.init.from_workdir={init.from_workdir}: its {config.model.name} differs "
        "from this config's (parameter names differ)"
      )
    return previous.state.variables()
  return pretrained.initialize(init, family, variables, tokenizer, model_config=config.model)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str | epath.Path, stop_after_steps: int | None = None
) -> dict[str, Any]:
  """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

  `stop_after_steps` ends the run early (after that many steps in this call) as an interruption would;
  the tests use it to check that resuming reproduces an uninterrupted run exactly. A SIGTERM ends it the
  same way at the next step boundary, then raises `Preempted`. The loss and gradient norm are checked
  where the host fetches them anyway, at log steps and before each checkpoint (not every step: that would
  wait for the device); a non-finite one raises TrainingDiverged with the last finite checkpoint kept.
  Returns the last validation scores.
  """
  workdir = epath.Path(workdir)
  train_cfg = config.train
  check_batch_size(train_cfg.batch_size, config.get("sharding"))
  # The family, looked up once (the task carries it): a clear error for an unknown one, before any data is read.
  family = models.get(config.model.name)
  task_class = tasks.task_class(config, family)
  datasets.dataset(config.data.get("name"))  # And for an unknown dataset (before its scoring protocol is read).
  if config.get("decode") is not None:  # Report generators: a decode past the model's KV cache, likewise.
    captioning.check_decode_length(config.model, config.decode.max_length, "config.decode.max_length", family)
  workdir_lib.check_compatible(workdir, config)
  mesh = sharding.create_mesh(config.get("sharding"))
  # Once per run, before any data is read or file written: a missing labeler directory or an unknown
  # evaluator is one line now, not at the first validation.
  built_evaluators = evaluators_lib.for_run(config, "train", mesh, task_class=task_class)
  check_cadence(built_evaluators, train_cfg.eval_every)
  best_metric = config.eval.get("best_metric", task_class.best_metric_default)
  check_best_metric(best_metric, built_evaluators, train_cfg.eval_every)
  profiler = StepProfiler(train_cfg.get("profile_steps", ()), workdir / PROFILE_DIR)

  train_source, train_info = datasets.make_source(config.data, "train")
  # The splits validation predicts: the validation split (cut to eval.max_val_examples), and the whole test
  # split where an evaluator scores it.
  val_sources = {VALIDATION_SPLIT: datasets.make_source(config.data, VALIDATION_SPLIT)[0]}
  if config.eval.get("max_val_examples"):
    val_sources[VALIDATION_SPLIT] = pipeline.Subset(val_sources[VALIDATION_SPLIT], config.eval.max_val_examples)
  for evaluator in built_evaluators.values():
    if evaluator.split and evaluator.split not in val_sources:
      val_sources[evaluator.split] = datasets.make_source(config.data, evaluator.split)[0]
  tokenizer = None
  if task_class.uses_tokenizer:
    tokenizer = datasets.load_or_build_tokenizer(config.data, train_source)
  # The task complete: the tokenizer, or the findings the classifier's outputs are (the training split's).
  components = workdir_lib.build(config, tokenizer, train_info.label_names, family)
  task, model = components.task, components.model
  if config.train.get("cache_features") and not components.is_frozen("image_encoder"):
    raise ConfigError(
      "train.cache_features needs a frozen image encoder (optimizer.param_groups "
      "('image_encoder/.*', None)): a trained encoder's features change every step"
    )
  workdir_lib.write_run_files(workdir, config, tokenizer, task.label_names)
  workdir_lib.write_evaluators(workdir, evaluators_provenance(built_evaluators, train_cfg.eval_every))

  data_sharding = sharding.data_sharded(mesh)
  target = workdir_lib.abstract_state(components, mesh, config.get("sharding"))
  state_sharding = jax.tree.map(lambda a: a.sharding, target)
  if sharding.is_lead_process():
    print(sharding.describe_layout(mesh, target.params), flush=True)
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
    variables = initial_variables(config, state, tokenizer, components.family)
    if variables is not state.variables():
      # The optimizer state is unchanged: AdamW's moments start at zero whatever the parameters.
      state = jax.device_put(
        state.replace(params=variables["params"], batch_stats=variables["batch_stats"]), state_sharding
      )

  if config.train.get("cache_features"):
    cached = feature_cache.load_or_compute(
      workdir_lib.features_path(workdir),
      model,
      state.variables(),
      train_source,
      config,
      batch_size=config.eval.batch_size,
    )
    train_source = feature_cache.CachedFeatureSource(train_source, cached)

  # Each process reads the rows of every global batch that the mesh puts on its devices (not one block of
  # them on a TPU slice), so the global batches are one process's.
  iterator = iter(
    evaluation.split_batches(
      config,
      train_source,
      task,
      train=True,
      mesh=mesh,
      batch_size=train_cfg.batch_size // jax.process_count(),
    )
  )
  best_value = -np.inf
  if resuming:
    iterator.set_state(data_state)
    best_value = meta.get("best_value", -np.inf)
    print(f"resumed from {workdir}/checkpoints/latest at step {int(state.step)}")

  train_step = jit_train_step(components, tx, train_cfg.seed, state_sharding, mesh)
  # Validation: greedy search (report generators) at the config's length; the task's one prediction path.
  validate = evaluation.jit_predict(
    task, model, task.options(greedy=task.uses_tokenizer), mesh, state_sharding.variables()
  )
  first_step = int(state.step)
  log = (
    summaries.MetricsLog(workdir_lib.metrics_path(workdir), workdir / TENSORBOARD_DIR, first_step)
    if sharding.is_lead_process()
    else None
  )
  last_step = (
    train_cfg.num_steps if stop_after_steps is None else min(train_cfg.num_steps, first_step + stop_after_steps)
  )
  progress = tqdm(
    total=train_cfg.num_steps,
    initial=first_step,
    desc="train",
    unit="step",
    disable=not sharding.is_lead_process(),
    dynamic_ncols=True,
  )
  val_scores: dict[str, Any] = {}
  pending, timer, dispatched, flops_per_step, preempted = [], time.perf_counter(), None, None, False
  try:
    with PreemptionNotice() as preemption:
      for step in range(first_step + 1, last_step + 1):
        batch = sharding.to_global(next(iterator), data_sharding)
        if step == first_step + 1:
          flops_per_step = step_flops(train_step, state, batch)
        profiler.before(step)
        state, step_metrics = train_step(state, batch)
        # The bar counts completed steps: the previous step is waited for only now, with this one already
        # dispatched, so that the device always has the next step queued.
        if dispatched is not None:
          jax.block_until_ready(dispatched)
          progress.update(1)
        dispatched = step_metrics
        profiler.after(step, state)
        pending.append(step_metrics)
        preempted = preemption.requested(step) and step < train_cfg.num_steps
        stopping = preempted or step == last_step
        is_log = step % train_cfg.log_every == 0 or stopping
        is_eval = step % train_cfg.eval_every == 0 or step == train_cfg.num_steps
        is_save = is_eval or step % train_cfg.checkpoint_every == 0 or stopping
        if is_log or is_save:
          # Where the host waits for this step anyway (the log, or the checkpoint's copy of the state).
          fetched = jax.device_get(pending)
          check_finite(fetched, step, workdir, latest)
        if is_log:
          summary = summarize_steps(fetched)
          summary.update(
            step=step, **throughput(len(pending), time.perf_counter() - timer, train_cfg.batch_size, flops_per_step)
          )
          _log(log, {"split": "train", **summary})
          progress.set_postfix(loss=f"{summary['loss']:.3f}")
          pending, timer = [], time.perf_counter()
        plan = validation_plan(built_evaluators, step, train_cfg.eval_every, train_cfg.num_steps) if is_eval else {}
        for split, due in plan.items():
          records = evaluation.predict_split(
            task,
            state.variables(),
            val_sources[split],
            config,
            mesh=mesh,
            predict=validate,
            batch_size=config.eval.batch_size,
          )
          predictions = evaluators_lib.Predictions.from_records(records, label_names=task.label_names)
          scores = evaluators_lib.run(due, predictions)["scores"]
          _log(log, {"split": VALIDATION_RECORD if split == VALIDATION_SPLIT else split, "step": step, **scores})
          if split == VALIDATION_SPLIT:
            val_scores = scores
        if VALIDATION_SPLIT in plan:
          value = float(val_scores[best_metric])
          value = -np.inf if np.isnan(value) else value  # E.g. AUROC of a split with one label value.
          if value > best_value or best.latest_step() is None:
            best_value = value
            _flush(log)
            workdir_lib.save(best, state, iterator.get_state(), {"step": step, best_metric: value})
        if is_save:
          _flush(log)
          workdir_lib.save(latest, state, iterator.get_state(), {"step": step, "best_value": float(best_value)})
        if stopping:
          progress.update(1)  # Its metrics were fetched above.
          break
  finally:
    profiler.stop()
    progress.close()
    for manager in (latest, best):
      manager.wait_until_finished()
      manager.close()
    if log:
      log.close()
  if preempted:
    print(
      f"preempted (SIGTERM): stopped after step {step} with {workdir}/checkpoints/latest/{step} written; "
      "run the same command again to resume",
      file=sys.stderr,
      flush=True,
    )
    raise Preempted(PREEMPTED_STATUS)
  return val_scores


def _log(log: summaries.MetricsLog | None, record: dict[str, Any]) -> None:
  if log is not None:
    log.write(record)


def _flush(log: summaries.MetricsLog | None) -> None:
  """Before a checkpoint: on an object store the log is uploaded only every few seconds, and a run killed
  after the checkpoint resumes from it with the log of that moment (trimmed to its step), so lines not
  uploaded by then would be a gap for good."""
  if log is not None:
    log.flush()
