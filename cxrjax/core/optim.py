"""The optimizer of a run, from `config.optimizer`.

  config.optimizer = dict(
      name="adamw",                 # or "adam_l2": Adam with an L2 penalty on convolution kernels (seed 004)
      learning_rate=1e-3, schedule="cosine", warmup_steps=500, final_lr_fraction=0.01,   # or "linear", "step",
      decay_every_steps=...,        # the learning rate divided by 10 every decay_every_steps
      weight_decay=1e-4, grad_clip_norm=1.0, b1=0.9, b2=0.999,
      param_groups=(("image_encoder/.*", None), (".*", 1.0)),
      accumulate_steps=1)           # gradients of that many batches averaged into one update

`param_groups` says what is trained at which rate, as big_vision's `config.schedule`: a sequence of
(regex, multiplier) pairs matched in order against each parameter's path ("image_encoder/densenet/
conv0/kernel"); the first full match decides. A multiplier scales the learning rate of its parameters;
None freezes them: no update and no weight decay (their gradient is also left out of the global norm that
is clipped). Every parameter must match a pattern, so a typo cannot silently train or freeze the wrong
tensors.

`accumulate_steps=k` (seed 002: 2) accumulates gradients as `optax.MultiSteps` does, in its state: each
train step still reads one batch (`train.batch_size` examples) and counts as one step of
`train.num_steps`, but only every k-th applies an update, with the mean gradient of the k batches: the
update of one step on a k times larger batch (tests/core/test_optim.py). Unlike optax.MultiSteps, which runs
the optimizer on every batch and keeps its result only on the k-th (`jnp.where` over every moment), the
optimizer runs under `lax.cond` on the k-th batch alone (`accumulate_gradients`). The schedule counts updates, not batches: `warmup_steps`
and `decay_every_steps` are in updates, and the cosine decays over `train.num_steps // k` of them.
Clipping and weight decay apply once per update, to the mean gradient.
"""

import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from jax import lax
import jax.numpy as jnp
import optax

from cxrjax.core.errors import ConfigError

DEFAULT_PARAM_GROUPS = ((".*", 1.0),)
FROZEN = "frozen"


def parameter_path(path: tuple[Any, ...]) -> str:
  """A pytree key path -> "module/submodule/leaf"."""
  return "/".join(str(getattr(key, "key", getattr(key, "name", key))) for key in path)


def _groups(optimizer_config) -> list[tuple[re.Pattern, float | None]]:
  groups = optimizer_config.get("param_groups", None) or DEFAULT_PARAM_GROUPS
  parsed = []
  for group in groups:
    if len(group) != 2:
      raise ConfigError(f"optimizer.param_groups: each group is (regex, multiplier or None), got {group!r}")
    pattern, multiplier = group
    try:
      parsed.append((re.compile(pattern), None if multiplier is None else float(multiplier)))
    except re.error as error:
      raise ConfigError(f"optimizer.param_groups: bad regex {pattern!r} ({error})") from None
  return parsed


def group_of(optimizer_config, path: str) -> tuple[str, float | None]:
  """(the matching pattern, its multiplier) of a parameter path; ConfigError when none matches."""
  for pattern, multiplier in _groups(optimizer_config):
    if pattern.fullmatch(path):
      return pattern.pattern, multiplier
  raise ConfigError(
    f"parameter {path!r} matches no pattern of optimizer.param_groups "
    f"{[p.pattern for p, _ in _groups(optimizer_config)]}"
  )


def frozen_predicate(optimizer_config) -> Callable[[str], bool]:
  """`is_frozen(module_path)`: whether parameters under a module ("image_encoder") are frozen, decided by
  the group that a parameter directly under it would match. Models use it to run a frozen part in
  inference mode (batch norm statistics fixed, no backward pass through it)."""

  def is_frozen(module_path: str) -> bool:
    return group_of(optimizer_config, module_path + "/kernel")[1] is None

  return is_frozen


def check_whole_modules(optimizer_config, params: Any, frozen_modules: dict[str, bool]) -> None:
  """Every module a model runs frozen (inference-mode batch norm, no gradient) must be frozen entirely by
  the param groups, and one it trains must not be: else its batch statistics would move under frozen
  weights, or its weights be frozen while its gradients are computed for nothing."""
  labels = parameter_labels(optimizer_config, params)
  for module, frozen in frozen_modules.items():
    under = [
      label
      for path, label in jax.tree_util.tree_leaves_with_path(labels)
      if (parameter_path(path) + "/").startswith(module + "/")
    ]
    if under and any((label == FROZEN) != frozen for label in under):
      raise ConfigError(
        f"optimizer.param_groups freeze part of {module!r} ({sum(l == FROZEN for l in under)} "
        f"of {len(under)} tensors): freeze all of it (('{module}/.*', None)) or none of it"
      )


def parameter_labels(optimizer_config, params: Any) -> Any:
  """Per leaf: "frozen" or "rate=<multiplier>" (the labels of optax.multi_transform)."""

  def label(path, _):
    multiplier = group_of(optimizer_config, parameter_path(path))[1]
    return FROZEN if multiplier is None else f"rate={multiplier!r}"

  return jax.tree_util.tree_map_with_path(label, params)


def make_schedule(optimizer_config, num_steps: int) -> optax.Schedule:
  """ "cosine": linear warm-up then cosine decay to final_lr_fraction of the peak at num_steps;
  "linear": linear warm-up then linear decay to final_lr_fraction of the peak at num_steps (with
  final_lr_fraction 0, transformers' Trainer default, get_linear_schedule_with_warmup: seed 002);
  "step": the learning rate divided by 10 every decay_every_steps (AG-CNN: every 20 epochs)."""
  config = optimizer_config
  kind = config.get("schedule", "cosine")
  if kind == "step":
    return optax.exponential_decay(
      config.learning_rate, transition_steps=config.decay_every_steps, decay_rate=0.1, staircase=True
    )
  if kind == "linear":
    warmup = config.warmup_steps
    return optax.join_schedules(
      [
        optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1)),
        optax.linear_schedule(
          config.learning_rate, config.learning_rate * config.final_lr_fraction, max(num_steps - warmup, 1)
        ),
      ],
      boundaries=[warmup],
    )
  if kind != "cosine":
    raise ConfigError(f"optimizer.schedule={kind!r}; expected 'cosine', 'linear' or 'step'")
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=config.learning_rate,
    warmup_steps=config.warmup_steps,
    decay_steps=max(num_steps, config.warmup_steps + 1),
    end_value=config.learning_rate * config.final_lr_fraction,
  )


def make_optimizer(optimizer_config, params: Any, num_steps: int) -> optax.GradientTransformation:
  """Frozen gradients zeroed, global-norm clipping, then AdamW (decoupled decay; rank-1 leaves such as
    biases and norm scales are not decayed) or Adam + L2 on convolution kernels ("adam_l2"), then each
    group's learning-rate multiplier (frozen groups: no update at all, weight decay included); all of it
  behind optax.MultiSteps when `accumulate_steps` > 1. `num_steps`: train steps (batches) of the run."""
  config = optimizer_config
  accumulate_steps = config.get("accumulate_steps", 1)
  if not isinstance(accumulate_steps, int) or accumulate_steps < 1:
    raise ConfigError(f"optimizer.accumulate_steps={accumulate_steps!r}; expected an integer >= 1")
  labels = parameter_labels(config, params)
  schedule = make_schedule(config, max(1, num_steps // accumulate_steps))  # in updates
  name = config.get("name", "adamw")
  if name == "adam_l2":
    conv_kernels = jax.tree.map(lambda leaf: leaf.ndim == 4, params)
    base = optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=conv_kernels),
      optax.adam(schedule, b1=config.b1, b2=config.b2),
    )
  elif name == "adamw":
    decay_mask = jax.tree.map(lambda leaf: leaf.ndim > 1, params)
    base = optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay, mask=decay_mask)
  else:
    raise ConfigError(f"optimizer.name={name!r}; expected 'adamw' or 'adam_l2'")
  names = sorted(set(jax.tree.leaves(labels)))
  zero_frozen = optax.multi_transform(
    {label: optax.set_to_zero() if label == FROZEN else optax.identity() for label in names}, labels
  )
  rates = optax.multi_transform(
    {label: optax.set_to_zero() if label == FROZEN else optax.scale(float(label.split("=")[1])) for label in names},
    labels,
  )
  tx = optax.chain(zero_frozen, optax.clip_by_global_norm(config.grad_clip_norm), base, rates)
  if accumulate_steps > 1:
    tx = accumulate_gradients(tx, accumulate_steps)
  return tx


class AccumulatingGradients(NamedTuple):
  """`accumulate_gradients`' transformation: optax's (init, update) pair, and `apply`, which
  `apply_gradients` uses in its place."""

  init: optax.TransformInitFn
  update: optax.TransformUpdateExtraArgsFn
  apply: Callable[..., tuple[Any, optax.MultiStepsState]]  # (grads, state, params) -> (params, state)


def accumulate_gradients(tx: optax.GradientTransformation, every_k: int) -> AccumulatingGradients:
  """`optax.MultiSteps(tx, every_k)` with the same state, updates and states (tests/core/test_optim.py), but `tx`
  runs only on every k-th call, under `lax.cond`: MultiSteps runs it on every call and selects its result
  with `jnp.where`, which on a 176M-parameter model is an AdamW update and a select over both moments per
  batch for nothing. The other calls fold the gradient into the running mean (MultiSteps' Welford update)
  and return zero updates; `apply` (through `apply_gradients`) leaves the parameters as they are instead."""
  tx = optax.with_extra_args_support(tx)
  multi_steps = optax.MultiSteps(tx, every_k_schedule=every_k)

  def running_mean(grads, state: optax.MultiStepsState):
    return jax.tree.map(
      lambda grad, acc: acc + (grad - acc) / (state.mini_step + 1).astype(acc.dtype), grads, state.acc_grads
    )

  def emit(grads, mean, state, params, **extra_args):
    final, inner = tx.update(optax.tree.cast_like(mean, grads), state.inner_opt_state, params, **extra_args)
    return final, state._replace(
      mini_step=jnp.zeros_like(state.mini_step),
      gradient_step=optax.safe_increment(state.gradient_step),
      inner_opt_state=inner,
      acc_grads=optax.tree.zeros_like(mean),
    )

  def folded(mean, state):
    return state._replace(mini_step=state.mini_step + 1, acc_grads=mean)

  def update(updates, state: optax.MultiStepsState, params=None, **extra_args):
    return lax.cond(
      state.mini_step == every_k - 1,
      lambda mean, state: emit(updates, mean, state, params, **extra_args),
      lambda mean, state: (optax.tree.zeros_like(updates), folded(mean, state)),
      running_mean(updates, state),
      state,
    )

  def apply(grads, state: optax.MultiStepsState, params, **extra_args):
    def emit_and_apply(mean, state, params):
      final, state = emit(grads, mean, state, params, **extra_args)
      return optax.apply_updates(params, final), state

    return lax.cond(
      state.mini_step == every_k - 1,
      emit_and_apply,
      lambda mean, state, params: (params, folded(mean, state)),
      running_mean(grads, state),
      state,
      params,
    )

  return AccumulatingGradients(init=multi_steps.init, update=update, apply=apply)


def apply_gradients(tx: optax.GradientTransformation, grads: Any, opt_state: Any, params: Any) -> tuple[Any, Any]:
  """(params, opt_state) after one batch's gradients: `tx.update`, then `optax.apply_updates`. Under gradient
  accumulation the batches before the k-th leave the parameters as they are inside the update's `lax.cond`,
  rather than adding the zero updates to every parameter (a write and two reads of the parameters' bytes per
  batch for nothing; BUILD.md, hf_captioners.py)."""
  if isinstance(tx, AccumulatingGradients):
    return tx.apply(grads, opt_state, params)
  updates, opt_state = tx.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
