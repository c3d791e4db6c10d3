"""One predictor built from a training workdir (or ported CheXNet weights): `cxrjax predict`,
`predict-agcnn`, `classify` and the web demo (serve/engine.py) call it.

  cxrjax predict --workdir DIR FRONTAL.png [LATERAL.png] [--attention-maps OUT_DIR]   a report
  cxrjax predict --workdir DIR [--greedy | --beam-size K] [--max-new-tokens N] IMAGE...  one caption each
  cxrjax predict-agcnn --workdir DIR --out-dir OUT IMAGE...                           AG-CNN findings
  cxrjax classify --weights DIR IMAGE...                                              CheXNet findings

Prediction is batch-first and the task's (tasks/base.py): `Predictor.predict(images, options)` runs the task's
jitted `predict_fn` for `options` (one compiled program per tasks.Options, kept in one cache) and returns the
task's results, one per study; the commands and the server only format them. Images get the evaluation
transform of the run's config (data/transforms.py: the encoder's normalisation, resize filter and rule); a
study with fewer views than the model reads repeats its last view, as the datasets do for single-image
studies. Reports are decoded with the config's search (`config.decode`; greedy search, another beam size or
another length on request); each token's log-probability and the beam hypothesis' score come from the search
itself. Attention maps come from re-reading the generated tokens with teacher forcing, in the same program:
for each generated token, the decoder's attention over the regions of every view.
"""

import collections
import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from cxrjax.run import figures, workdir as workdir_lib
from cxrjax.core import sharding
from cxrjax import tasks
from cxrjax.data import images as image_io
from cxrjax.data import transforms
from cxrjax.core.errors import UserError
from cxrjax.models import chexnet as chexnet_model
from cxrjax.tasks import captioning
from cxrjax.weights import chexnet


class PredictionError(UserError):
  """A prediction request that the model cannot serve (wrong number of images, wrong kind of model)."""


def jit_program(task: tasks.Task, model: Any, options: tasks.Options, variables_sharding: Any, mesh: Any) -> Any:
  """The task's prediction for `options`, jitted as the predictor and the server run it: (variables in their
  layout `variables_sharding`, {"images": [batch, views, S, S, 3]} replicated over `mesh`) -> the outputs,
  replicated (a served batch is small: it splits over no devices). aot.py compiles it for a TPU slice."""
  replicated = sharding.replicated(mesh)
  return jax.jit(
    task.predict_fn(model, options), in_shardings=(variables_sharding, replicated), out_shardings=replicated
  )


@dataclasses.dataclass
class Predictor:
  """A loaded model, its task and preprocessing, and its compiled prediction programs (one per
  tasks.Options, compiled on first use; at most `max_variants` kept besides the pinned ones)."""

  family: str  # config model.name ("chexnet" for ported CheXNet weights)
  task: tasks.Task
  model: Any = dataclasses.field(repr=False)
  variables: Any = dataclasses.field(repr=False)
  step: int | None
  max_variants: int = 8
  _programs: collections.OrderedDict = dataclasses.field(default_factory=collections.OrderedDict, repr=False)
  _pinned: set = dataclasses.field(default_factory=set, repr=False)
  _reread: Any = dataclasses.field(default=None, repr=False)
  _attention: Any = dataclasses.field(default=None, repr=False)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = workdir_lib.BEST) -> "Predictor":
    """A trained (or imported) run: its task from the run's files, the parameters and batch statistics."""
    run = workdir_lib.load_run(workdir, checkpoint)
    return cls(
      family=run.config.model.name,
      task=run.task,
      model=run.model,
      variables=run.state.variables(),
      step=int(run.state.step),
    )

  @classmethod
  def from_chexnet_weights(cls, directory: str, image_size: int = 224, dtype: str = "float32") -> "Predictor":
    """A `cxrjax port-weights` directory: the CheXNet family (models/chexnet.py) over its classes."""
    backbone, variables, classes = chexnet.load_chexnet(directory)
    if not backbone.num_classes:
      raise chexnet.WeightsError(f"{directory}: these weights have no classification head")
    config = ml_collections.ConfigDict(dict(model=dict(name="chexnet", dtype=dtype)))
    model = chexnet_model.CheXNet(backbone, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    preprocessing = transforms.Preprocessing(
      image_size=image_size, normalization="imagenet", resize_filter="bilinear", resize_rule="square", num_views=1
    )
    mesh = sharding.create_mesh()
    return cls(
      family="chexnet",
      task=tasks.make(config, label_names=classes, preprocessing=preprocessing),
      model=model,
      variables=jax.device_put(chexnet_model.CheXNet.wrap(variables), sharding.replicated(mesh)),
      step=None,
    )

  @property
  def config(self) -> ml_collections.ConfigDict:
    return self.task.config

  @property
  def preprocessing(self) -> transforms.Preprocessing:
    """The task's: the evaluation transform of the run's config (or of ported weights)."""
    return self.task.preprocessing

  @property
  def tokenizer(self) -> Any:
    return self.task.tokenizer

  @property
  def label_names(self) -> tuple[str, ...] | None:
    return self.task.label_names

  @property
  def num_views(self) -> int:
    """Images per study: the model's views (report generators), one (classifiers)."""
    return self.preprocessing.num_views if self.task.uses_tokenizer else 1

  @property
  def output(self) -> str:
    """What a prediction is: "report" (a study of several views), "caption" (one image) or "findings"."""
    if not self.task.uses_tokenizer:
      return "findings"
    return "report" if self.preprocessing.num_views > 1 else "caption"

  # Prediction: one path for every caller.

  def options(self, **changes: Any) -> tasks.Options:
    """The task's options (tasks/base.Task.options): the run's prediction with `changes`."""
    return self.task.options(**changes)

  def program(self, options: tasks.Options, pin: bool = False) -> Any:
    """The jitted prediction of `options` (compiled per batch size on first use); `pin` keeps it from eviction.
    Where the task's attention is a program apart (report generators), one search program serves `options`
    with and without attention."""
    if self.task.attention_fn(self.model) is not None:
      options = dataclasses.replace(options, attention=False)
    if pin:
      self._pinned.add(options)
    if options in self._programs:
      self._programs.move_to_end(options)
      return self._programs[options]
    variables_sharding = jax.tree.map(lambda a: a.sharding, self.variables)
    mesh = jax.tree.leaves(variables_sharding)[0].mesh
    self._programs[options] = jit_program(self.task, self.model, options, variables_sharding, mesh)
    evictable = [o for o in self._programs if o not in self._pinned]
    while len(self._programs) - len(self._pinned) > self.max_variants and evictable:
      del self._programs[evictable.pop(0)]
    return self._programs[options]

  def predict(self, images: np.ndarray, options: tasks.Options) -> list[dict[str, Any]]:
    """images float32 [batch, views, S, S, 3] (classifiers: one view) -> the task's results, one per study."""
    batch = {"images": images}
    outputs = self.program(options)(self.variables, batch)
    if options.attention and self.task.attention_fn(self.model) is not None:
      if self._attention is None:  # One program for every search (compiled per batch size and length).
        self._attention = jax.jit(self.task.attention_fn(self.model))
      outputs = dict(outputs, attention=self._attention(self.variables, batch, outputs["tokens"]))
    return self.task.results(jax.device_get(outputs), options)

  def load_views(self, paths: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """1..num_views files -> (images float32 [1, views, S, S, 3], the resized uint8 views for display)."""
    views_needed = self.num_views
    if not 1 <= len(paths) <= views_needed:
      raise PredictionError(
        f"the {self.family} model reads {views_needed} view(s) per study; got {len(paths)} image files"
      )
    views = [self.preprocessing.eval_view(image_io.load_image(path)) for path in paths]
    views += [views[-1]] * (views_needed - len(views))
    return self.preprocessing.normalize(np.stack(views))[None], views

  # Report generators.

  def reread(self, images: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher forcing over `tokens` [n] of one study (images [1, views, S, S, 3]) -> (each token's
    log-probability under the model [n], attention [n, views, h, w] or None where the model has none): what a
    search's log-probabilities and the attention maps are checked against."""
    length = max(len(tokens), int(self.task.config.decode.max_length))
    padded = np.full((1, length), self.tokenizer.pad_id, np.int32)
    padded[0, : len(tokens)] = tokens
    if self._reread is None:
      tokenizer = self.tokenizer
      self._reread = jax.jit(
        lambda v, i, t, n: captioning.teacher_forced(self.model, v, i, t, n, tokenizer)  # noqa: E731
      )
    outputs = jax.device_get(self._reread(self.variables, images, padded, np.array([len(tokens)], np.int32)))
    maps = captioning.attention_maps(outputs["attention"], 0, len(tokens), images.shape[1])
    return outputs["token_log_probs"][0, : len(tokens)], maps

  def attention(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray | None:
    """Teacher-forced attention [len(tokens), views, h, w] of `tokens` (None: the model has no attention)."""
    return self.reread(images, tokens)[1]

  def predict_report(
    self,
    paths: Sequence[str],
    attention_dir: str | None = None,
    greedy: bool = False,
    beam_size: int | None = None,
    max_new_tokens: int | None = None,
  ) -> dict[str, Any]:
    """One study's text: {"images", "report" (a study of several views) or "caption" (a model that reads one
    image), "token_ids" (generated, without start and end), "token_logprobs" (each one's log-probability
    under the model, from the search), "words", "decoding" (the search that ran), "score" (beam search only:
    the hypothesis score, e.g. transformers' sequences_scores)[, "attention_maps": [paths] or a reason]}."""
    if not self.task.uses_tokenizer:
      raise PredictionError(f"the {self.family} model is a classifier; use `cxrjax predict-agcnn` or `classify`")
    options = self.options(
      greedy=greedy, beam_size=beam_size, max_length=max_new_tokens, attention=attention_dir is not None, flags=True
    )
    images, views = self.load_views(paths)
    result = self.predict(images, options)[0]
    maps = result.pop("attention", None)
    output = {"images": list(paths), self.output: result.pop("text"), **result}
    if attention_dir is not None:
      if not result["token_ids"]:
        output["attention_maps"] = "none: the generated report is empty"
      elif maps is None:
        output["attention_maps"] = f"none: the {self.family} model has no attention"
      else:
        paths_written = figures.write_attention_maps(attention_dir, views, result["words"], maps)
        output["attention_maps"] = [str(p) for p in paths_written]
    return output

  # Classifiers.

  def classify_files(
    self, paths: Sequence[str], batch_size: int = 16, figures_dir: str | None = None, on_error=None
  ) -> list[dict[str, Any]]:
    """Per readable image, in order: {"image", "probabilities": {class: p}[, "box"][, "figure"]}. An unreadable
    image is passed to `on_error(error)` (default: raised) and skipped; the others are still classified."""
    if self.task.uses_tokenizer:
      raise PredictionError(f"the {self.family} model generates reports; use `cxrjax predict`")
    options = self.options(attention=figures_dir is not None)
    size = self.preprocessing.image_size
    results = []
    for start in range(0, len(paths), batch_size):
      batch_paths, views = [], []
      for path in paths[start : start + batch_size]:
        try:
          views.append(self.preprocessing.eval_view(image_io.load_image(path)))
          batch_paths.append(path)
        except image_io.ImageError as error:
          if on_error is None:
            raise
          on_error(error)
      if not batch_paths:
        continue
      # A fixed batch shape, so that every batch reuses one compiled program.
      padded = np.zeros((batch_size, 1, size, size, 3), np.float32)
      padded[: len(views), 0] = self.preprocessing.normalize(np.stack(views))
      for path, view, result in zip(batch_paths, views, self.predict(padded, options)):
        output = {"image": str(path), "probabilities": result["probabilities"]}
        if "box" in result:
          output["box"] = result["box"]
        if figures_dir is not None and result.get("heatmap") is not None:
          figure = epath.Path(figures_dir) / f"{pathlib.Path(path).stem}_{self.family}.png"  # Local or gs://.
          top = sorted(result["probabilities"].items(), key=lambda item: -item[1])[:3]
          figures.render_attention_figure(
            view,
            result["heatmap"],
            np.asarray(result["box"]),
            result["local_image"],
            figure,
            title=", ".join(f"{name} {p:.2f}" for name, p in top),
          )
          output["figure"] = str(figure)
        results.append(output)
    return results
