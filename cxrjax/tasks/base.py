"""The task interface (`Task`), and `Options`: what one compiled prediction program does.

A task is built complete from one source (tasks.make: the config, and the run's tokenizer or label names)
and never changed after. It owns the one prediction path of its kind of model: `predict_fn(model, options)`
is the jittable (variables, batch) -> outputs that `predict`, `evaluate`, validation during training and
`serve` all compile (one program per `Options`), and `results(outputs, options)` turns a fetched batch of
outputs into one result per example, the same for every caller.
"""

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Protocol

import jax
import ml_collections
import numpy as np

SEARCHES = ("greedy", "beam")


@dataclasses.dataclass(frozen=True)
class Options:
  """One compiled prediction program (hashable: the key of a cache of compiled variants).

  search: "greedy" or "beam" for report generators (the search that runs: a beam of 1 without a length
    penalty, or with "hf" normalisation, is greedy search; tasks/captioning.py), "" for classifiers.
  beam_size, max_length: the beam and the most generated tokens, end included (report generators).
  attention: also return each generated token's attention over the regions of every view (report
    generators), or the attention heatmap and the local crop (AG-CNN).
  """

  search: str = ""
  beam_size: int = 1
  max_length: int = 0
  attention: bool = False

  def describe(self) -> dict[str, Any]:
    """{"search", "beam_size", "max_length"}: what `predict` prints and `serve` returns for a generated text."""
    return {"search": self.search, "beam_size": self.beam_size, "max_length": self.max_length}


PredictFn = Callable[[Any, dict[str, jax.Array]], dict[str, jax.Array]]
AttentionFn = Callable[[Any, dict[str, jax.Array], jax.Array], Any]


class Task(Protocol):
  """What the trainer, evaluation and prediction need to know about a kind of model.

  Report generators have a `tokenizer` and no `label_names`; classifiers the reverse. Nothing here is probed
  with hasattr: a capability a kind of model lacks is a member that says so (e.g. `tokenizer` None).
  """

  name: ClassVar[str]
  uses_tokenizer: ClassVar[bool]
  best_metric_default: ClassVar[str]
  host_fields: ClassVar[tuple[str, ...]]  # the batch's strings kept beside the predictions
  config: ml_collections.ConfigDict
  tokenizer: Any  # None for classifiers
  label_names: tuple[str, ...] | None  # None for report generators
  preprocessing: Any  # data/transforms.Preprocessing: how the model's images are prepared (from the config)
  family: Any  # the model family class (models/base.Family) of config.model.name, looked up once by tasks.make

  def sample_inputs(self) -> tuple[np.ndarray, ...]:
    """Zero inputs of one example, the model's shapes: to initialise it."""

  def init_variables(self, model: Any, rngs: dict[str, jax.Array]) -> dict[str, Any]: ...

  def loss(
    self, model: Any, variables: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array
  ) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
    """-> (loss, (updated batch statistics, metrics to log))."""

  def options(
    self,
    *,
    greedy: bool = False,
    beam_size: int | None = None,
    max_length: int | None = None,
    attention: bool = False,
    field: str = "",
  ) -> Options:
    """The run's prediction with the given changes, checked (a bad value is a UserError naming `field` or the
    option); classifiers take `attention` only."""

  def predict_fn(self, model: Any, options: Options) -> PredictFn:
    """(variables, batch) -> the batch's predictions: traceable, to jit."""

  def attention_fn(self, model: Any) -> AttentionFn | None:
    """(variables, batch, generated tokens) -> their attention, a program apart from the search's (report
    generators: a teacher-forced re-read); None where predict_fn returns it for options.attention."""

  def results(self, outputs: dict[str, np.ndarray], options: Options) -> list[dict[str, Any]]:
    """Fetched outputs of a batch -> one result per row: what `predict` prints and `serve` returns."""

  def records(self, outputs: dict[str, np.ndarray], host: dict[str, list[str]]) -> list[dict[str, Any]]:
    """Gathered predictions of a split, in order, and its strings -> the records `score` and `write` take."""

  def score(self, records: Sequence[dict[str, Any]], meteor: bool = False) -> dict[str, Any]: ...

  def write(self, out_dir: Any, records: Sequence[dict[str, Any]]) -> None: ...
