"""One predictor built from a training workdir (or ported CheXNet weights): `cxrjax predict`,
`predict-agcnn`, `classify`, and the web demo call it.

  cxrjax predict --workdir DIR FRONTAL.png [LATERAL.png] [--attention-maps OUT_DIR]   a report
  cxrjax predict --workdir DIR [--greedy | --beam-size K] [--max-new-tokens N] IMAGE...  one caption each
  cxrjax predict-agcnn --workdir DIR --out-dir OUT IMAGE...                           AG-CNN findings
  cxrjax classify --weights DIR IMAGE...                                              CheXNet findings

Images get the evaluation transform of the run's config (data/transforms.py: the encoder's normalisation,
resize filter and rule); a study with fewer views than the model reads repeats its last view, as the
datasets do for single-image studies. Reports are decoded with the config's search (`config.decode`;
greedy search, another beam size or another length on request); each token's log-probability and the
beam hypothesis' score come from the search itself. Attention maps come from re-reading the generated
tokens with teacher forcing: for each generated token, the decoder's attention over the regions of
every view.
"""

import dataclasses
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from cxrjax import figures, workdir as workdir_lib
from cxrjax.data import images as image_io
from cxrjax.data import transforms
from cxrjax.errors import UserError
from cxrjax.models.encoders import densenet
from cxrjax.tasks import captioning
from cxrjax.weights import chexnet


class PredictionError(UserError):
  """A prediction request that the model cannot serve (wrong number of images, wrong kind of model)."""


@dataclasses.dataclass
class Predictor:
  """A loaded model and its preprocessing; the jitted functions compile on first use and are kept."""

  name: str  # the model family (config model.name), or "chexnet" for ported weights
  task: str  # "captioning" or "classification"
  config: ml_collections.ConfigDict
  model: Any
  variables: Any
  tokenizer: Any
  preprocessing: transforms.Preprocessing
  label_names: tuple[str, ...] | None
  step: int | None
  task_object: Any = None  # the run's task (tasks/); None for ported CheXNet weights
  _jitted: dict[str, Any] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_workdir(cls, workdir: str, checkpoint: str = workdir_lib.BEST) -> "Predictor":
    run = workdir_lib.load_run(workdir, checkpoint)
    label_names = None
    if not run.task.uses_tokenizer:
      label_names = workdir_lib.load_label_names(workdir)
      run.task.label_names = label_names
    return cls(
      name=run.config.model.name,
      task=run.task.name,
      config=run.config,
      model=run.model,
      variables=run.state.variables(),
      tokenizer=run.tokenizer,
      preprocessing=transforms.from_config(run.config),
      label_names=label_names,
      step=int(run.state.step),
      task_object=run.task,
    )

  @classmethod
  def from_chexnet_weights(cls, directory: str, image_size: int = 224, dtype: str = "float32") -> "Predictor":
    """A `cxrjax port-weights` directory: DenseNet-121 probabilities over its classes."""
    config, variables, classes = chexnet.load_chexnet(directory)
    if not config.num_classes:
      raise chexnet.WeightsError(f"{directory}: these weights have no classification head")
    model = densenet.DenseNet(config, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32)
    preprocessing = transforms.Preprocessing(
      image_size=image_size, normalization="imagenet", resize_filter="bilinear", resize_rule="square", num_views=1
    )
    return cls(
      name="chexnet",
      task="classification",
      config=ml_collections.ConfigDict(),
      model=model,
      variables=jax.device_put(variables),
      tokenizer=None,
      preprocessing=preprocessing,
      label_names=tuple(classes),
      step=None,
    )

  def load_views(self, paths: Sequence[str]) -> tuple[np.ndarray, list[np.ndarray]]:
    """1..num_views files -> (images float32 [1, views, S, S, 3], the resized uint8 views for display)."""
    views_needed = self.preprocessing.num_views
    if not 1 <= len(paths) <= views_needed:
      raise PredictionError(
        f"the {self.name} model reads {views_needed} view(s) per study; got {len(paths)} image files"
      )
    views = [self.preprocessing.eval_view(image_io.load_image(path)) for path in paths]
    views += [views[-1]] * (views_needed - len(views))
    return self.preprocessing.normalize(np.stack(views))[None], views

  # Report generators.

  def decode_config(self, beam_size: int | None = None, max_new_tokens: int | None = None) -> ml_collections.ConfigDict:
    """The run's `config.decode` with another beam size and/or most generated tokens (end included); a
    length past the model's KV cache is refused, naming --max-new-tokens or the run's config field."""
    decode = ml_collections.ConfigDict(self.config.decode.to_dict())
    for name, value, key in (
      ("--beam-size", beam_size, "beam_size"),
      ("--max-new-tokens", max_new_tokens, "max_length"),
    ):
      if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
          raise PredictionError(f"{name} must be a positive integer, got {value!r}")
        decode[key] = value
    captioning.check_decode_length(
      self.config.model,
      decode.max_length,
      "--max-new-tokens" if max_new_tokens is not None else "config.decode.max_length",
    )
    return decode

  def search(
    self, images: np.ndarray, greedy: bool = False, beam_size: int | None = None, max_new_tokens: int | None = None
  ) -> dict[str, np.ndarray]:
    """images [batch, views, S, S, 3] -> tasks/captioning.py `search`'s {"tokens" [batch, max_length],
    "token_log_probs" [batch, max_length], "scores" [batch]} (the config's search, greedy search, or the
    config's with another beam size / length); each variant compiles once."""
    decode = self.decode_config(beam_size, max_new_tokens)
    key = ("search", greedy, decode.beam_size, decode.max_length)
    if key not in self._jitted:
      self._jitted[key] = jax.jit(
        self.task_object.predict_fn(self.model, self.tokenizer, greedy=greedy, decode=decode, with_scores=True)
      )
    return jax.device_get(self._jitted[key](self.variables, {"images": images}))

  def generate(
    self, images: np.ndarray, greedy: bool = False, beam_size: int | None = None, max_new_tokens: int | None = None
  ) -> np.ndarray:
    """images [batch, views, S, S, 3] -> generated token ids [batch, max_length] (the config's search, or
    greedy search; `search`'s options)."""
    return np.asarray(self.search(images, greedy, beam_size, max_new_tokens)["tokens"])

  def reread(self, images: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Teacher forcing over generated `tokens` [n] (start token prepended) -> (each token's log-probability
    under the model [n], attention [n, views, h, w] or None where the model has none)."""
    # The last token is predicted, never read: the inputs are [start, tokens[:-1]], as many positions as
    # tokens, so a caption of the model's longest decode fits its position table. Padded to one length
    # (the decoders are causal: padding after the tokens changes none of their outputs), so that one
    # compiled program serves every caption length.
    length = max(len(tokens), int(self.config.decode.max_length))
    inputs = np.full((1, length), self.tokenizer.pad_id, np.int32)
    inputs[0, : len(tokens)] = [self.tokenizer.start_id, *tokens][: len(tokens)]
    if "reread" not in self._jitted:
      self._jitted["reread"] = jax.jit(lambda v, i, t: self.model.apply(v, i, t))
    outputs = self._jitted["reread"](self.variables, images, inputs)
    log_probs = np.asarray(jax.nn.log_softmax(outputs["logits"][0, : len(tokens)].astype(jnp.float32)))
    token_log_probs = log_probs[np.arange(len(tokens)), np.asarray(tokens, np.int64)]
    if outputs.get("attention") is None:
      return token_log_probs, None
    weights = np.asarray(outputs["attention"])[0, : len(tokens)]  # [tokens, regions]
    views = images.shape[1]
    side = int(round((weights.shape[-1] / views) ** 0.5))
    return token_log_probs, weights.reshape(len(tokens), views, side, side)

  def attention(self, images: np.ndarray, tokens: np.ndarray) -> np.ndarray | None:
    """Teacher-forced attention [len(tokens), views, h, w] of generated `tokens` (None: no attention)."""
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
    under the model, from the search), "score" (beam search only: the hypothesis score, e.g. transformers'
    sequences_scores)[, "attention_maps": [paths] or a reason]}. `greedy`, `beam_size`, `max_new_tokens`:
    `search`'s options."""
    if self.task != "captioning":
      raise PredictionError(f"the {self.name} model is a classifier; use `cxrjax predict-agcnn` or `classify`")
    images, views = self.load_views(paths)
    outputs = self.search(images, greedy=greedy, beam_size=beam_size, max_new_tokens=max_new_tokens)
    row = np.asarray(outputs["tokens"][0])
    end = np.flatnonzero(row == self.tokenizer.end_id)
    tokens = [int(t) for t in row[: end[0] if len(end) else len(row)]]
    text_key = "caption" if self.preprocessing.num_views == 1 else "report"
    log_probs = outputs["token_log_probs"][0, : len(tokens)]
    result: dict[str, Any] = {
      "images": list(paths),
      text_key: self.tokenizer.decode(row),
      "token_ids": tokens,
      "token_logprobs": [round(float(p), 6) for p in log_probs],
    }
    if not captioning.runs_greedy_search(self.decode_config(beam_size, max_new_tokens), greedy):
      result["score"] = round(float(outputs["scores"][0]), 6)
    maps = None
    if tokens and attention_dir is not None:
      maps = self.reread(images, np.array(tokens, np.int32))[1]
    if attention_dir is not None:
      if not tokens:
        result["attention_maps"] = "none: the generated report is empty"
      elif maps is None:
        result["attention_maps"] = f"none: the {self.name} model has no attention"
      else:
        words = [self.tokenizer.decode([t]) or "?" for t in tokens]
        result["attention_maps"] = [str(p) for p in figures.write_attention_maps(attention_dir, views, words, maps)]
    return result

  # Classifiers.

  def classify(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """images [batch, S, S, 3] -> {"probabilities": [batch, classes], and AG-CNN's "heatmap", "boxes",
    "local_images"}."""
    if "classify" not in self._jitted:
      if self.name == "chexnet":
        fn = lambda v, x: {"probabilities": jax.nn.sigmoid(self.model.apply(v, x, train=False)["logits"])}
      else:
        key = self.model.stage_logits()

        def fn(v, x):
          outputs = self.model.apply(v, x)
          return {
            "probabilities": jax.nn.sigmoid(outputs[key]),
            "heatmap": outputs["heatmap"],
            "boxes": outputs["boxes"],
            "local_images": outputs["local_images"],
          }

      self._jitted["classify"] = jax.jit(fn)
    return jax.device_get(self._jitted["classify"](self.variables, images))

  def classify_files(
    self, paths: Sequence[str], batch_size: int = 16, figures_dir: str | None = None, on_error=None
  ) -> list[dict[str, Any]]:
    """Per readable image, in order: {"image", "probabilities": {class: p}[, "figure", "box"]}. An unreadable
    image is passed to `on_error(error)` (default: raised) and skipped; the others are still classified."""
    if self.task != "classification":
      raise PredictionError(f"the {self.name} model generates reports; use `cxrjax predict`")
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
      padded = np.zeros((batch_size, size, size, 3), np.float32)
      padded[: len(views)] = self.preprocessing.normalize(np.stack(views))
      outputs = self.classify(padded)
      for index, path in enumerate(batch_paths):
        probabilities = outputs["probabilities"][index]
        result = {
          "image": str(path),
          "probabilities": {n: round(float(p), 6) for n, p in zip(self.label_names, probabilities)},
        }
        if figures_dir is not None and "heatmap" in outputs:
          figure = epath.Path(figures_dir) / f"{pathlib.Path(path).stem}_agcnn.png"  # Local or gs://.
          top = np.argsort(-probabilities)[:3]
          figures.render_attention_figure(
            views[index],
            outputs["heatmap"][index],
            outputs["boxes"][index],
            outputs["local_images"][index],
            figure,
            title=", ".join(f"{self.label_names[i]} {probabilities[i]:.2f}" for i in top),
          )
          result.update(figure=str(figure), box=[int(b) for b in outputs["boxes"][index]])
        results.append(result)
    return results
