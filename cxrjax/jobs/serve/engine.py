"""One loaded model served at fixed batch sizes, and the batcher that groups concurrent requests.

An `Engine` serves a `Predictor` (inference.py), whose task makes every prediction (the same programs and
results as `cxrjax predict`); the engine adds what serving needs: requests turned into the task's options
(a batch holds requests of one search, with attention computed for it where one of them asks), batches padded to the next of their
compiled sizes (e.g. 1, 4, 8) so that no request shape compiles a new program, the run's search and greedy
search compiled for every size at start-up (`warm_up`), and the results as JSON (attention maps as nested
lists, AG-CNN's heatmap as a PNG). Other decoding options (another beam size or maximum length) compile on
their first request and are kept (at most `max_variants`).

A `Batcher` runs one engine on its own thread: the first request of a batch waits up to `window_s` for
others (the batching window), requests already queued join at once, up to the largest compiled size.
"""

import base64
import collections
import concurrent.futures
import dataclasses
import io
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from cxrjax.jobs import inference
from cxrjax import tasks
from cxrjax.core.errors import UserError
from cxrjax.jobs.serve import uploads
from cxrjax.jobs.serve.uploads import RequestError

DEFAULT_BATCH_SIZES = (1, 4, 8)


@dataclasses.dataclass
class Item:
  """One prepared request: the views as the model reads them, and what to return."""

  images: np.ndarray  # float32 [views, S, S, 3] (classifiers: one view)
  views: list[np.ndarray]  # the resized uint8 views [S, S, 3], as uploaded (not repeated)
  variant: tasks.Options  # the compiled program that serves it
  options: uploads.Options
  prepare_ms: float = 0.0
  queued_at: float = 0.0


class Engine:
  """A model of a workdir, served in padded batches of fixed sizes."""

  def __init__(
    self,
    name: str,
    predictor: inference.Predictor,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    max_variants: int = 8,
    source: str | None = None,
  ):
    if not batch_sizes or min(batch_sizes) < 1:
      raise ValueError(f"batch sizes {tuple(batch_sizes)}: expected positive sizes")
    self.name = name
    self.predictor = predictor
    self.batch_sizes = tuple(sorted(set(int(b) for b in batch_sizes)))
    self.source = source
    predictor.max_variants = max_variants
    self.captioning = predictor.task.uses_tokenizer
    # The run's prediction (report generators: its search, refused where it runs past the model's KV cache).
    self.default_variant = predictor.options()

  @property
  def max_batch(self) -> int:
    return self.batch_sizes[-1]

  # Requests.

  def variant(self, options: uploads.Options) -> tasks.Options:
    """The prediction of a request's options, attention aside (a batch computes it where one of its requests
    asks); options the model cannot take raise RequestError."""
    if not self.captioning:
      given = [n for n in ("search", "beam_size", "max_length") if getattr(options, n) is not None]
      if given:
        raise RequestError(f"the {self.name} model is a classifier; decoding options ({', '.join(given)}) do not apply")
      return self.predictor.options()
    limit = self.default_variant.max_length
    if options.max_length is not None and options.max_length > limit:
      raise RequestError(f"max_length={options.max_length}; the {self.name} model generates at most {limit} tokens")
    try:
      return self.predictor.options(
        greedy=options.search == "greedy",
        beam_size=options.beam_size,
        max_length=options.max_length,
      )
    except UserError as error:
      raise RequestError(str(error)) from None

  def prepare(self, images: Sequence[np.ndarray], options: uploads.Options) -> Item:
    """Decoded uploads (uint8 [H, W, 3], frontal first) -> an Item; the wrong number raises RequestError."""
    started = time.perf_counter()
    needed = self.predictor.num_views
    if not 1 <= len(images) <= needed:
      what = "one image" if needed == 1 else f"1 to {needed} views (frontal, then lateral)"
      raise RequestError(f"the {self.name} model reads {what}; got {len(images)} images")
    variant = self.variant(options)
    preprocessing = self.predictor.preprocessing
    views = [preprocessing.eval_view(image) for image in images]
    # A study with fewer views than the model repeats its last one, as the datasets and `predict` do.
    batch = preprocessing.normalize(np.stack(views + [views[-1]] * (needed - len(views))))
    return Item(
      images=batch, views=views, variant=variant, options=options, prepare_ms=(time.perf_counter() - started) * 1e3
    )

  def run(self, items: Sequence[Item]) -> list[dict[str, Any]]:
    """Items of one variant, at most `max_batch` -> one result per item (one padded model call)."""
    if not 1 <= len(items) <= self.max_batch or len({item.variant for item in items}) != 1:
      raise ValueError(f"run takes 1..{self.max_batch} items of one variant")
    size = next(b for b in self.batch_sizes if b >= len(items))
    padded = np.zeros((size, *items[0].images.shape), np.float32)
    padded[: len(items)] = np.stack([item.images for item in items])
    started = time.perf_counter()
    attention = any(item.options.attention for item in items)  # For the batch, shown to those who asked.
    variant = dataclasses.replace(items[0].variant, attention=attention)
    predictions = self.predictor.predict(padded, variant)[: len(items)]
    model_ms = (time.perf_counter() - started) * 1e3
    results = []
    for item, prediction in zip(items, predictions):
      if not item.options.attention:
        prediction.pop("attention", None)
      result = self._captioning(prediction) if self.captioning else self._findings(prediction, item.options)
      result.update(model=self.name, step=self.predictor.step)
      result["timings"] = dict(
        prepare_ms=round(item.prepare_ms, 2),
        model_ms=round(model_ms, 2),
        batch_size=len(items),
        compiled_batch_size=size,
      )
      if item.options.views:
        result["views"] = [png_data_url(view) for view in item.views]
      results.append(result)
    return results

  # The results as JSON.

  def _captioning(self, prediction: dict[str, Any]) -> dict[str, Any]:
    """The task's result with its text under "report" / "caption", attention maps as {"shape", "maps"}."""
    result = {self.predictor.output: prediction.pop("text"), **prediction}
    if "attention" in result:
      maps = result["attention"]
      if not result["token_ids"]:
        result["attention"] = {"none": "the generated text is empty"}
      elif maps is None:
        result["attention"] = {"none": f"the {self.predictor.family} model has no attention"}
      else:
        result["attention"] = {"shape": list(maps.shape), "maps": np.round(maps, 5).tolist()}
    return result

  def _findings(self, prediction: dict[str, Any], options: uploads.Options) -> dict[str, Any]:
    """Probabilities by finding, AG-CNN's box (y0, x0, y1, x1) in the view's pixels, its heatmap as a PNG."""
    result: dict[str, Any] = {"probabilities": prediction["probabilities"]}
    if "box" in prediction:
      result["box"] = prediction["box"]
    if options.attention:
      heatmap = prediction.get("heatmap")
      if heatmap is None:
        result["heatmap"] = {"none": f"the {self.predictor.family} model has no attention heatmap"}
      else:
        result["heatmap"] = png_data_url(np.round(np.clip(heatmap, 0.0, 1.0) * 255).astype(np.uint8))
    return result

  # Start-up and description.

  def warm_up(self) -> float:
    """Compiles every served batch size of the run's prediction and (report generators) greedy search, with
    attention (report generators: the search's program and the one re-read that serves every search; a
    classifier's attention is a program of its own, so both), and keeps them from eviction; seconds."""
    started = time.perf_counter()
    if self.captioning:
      searches = (self.default_variant, self.predictor.options(greedy=True))
      variants = [dataclasses.replace(v, attention=True) for v in searches]
    else:
      variants = [self.default_variant, dataclasses.replace(self.default_variant, attention=True)]
    preprocessing = self.predictor.preprocessing
    image = np.zeros((self.predictor.num_views, *[preprocessing.image_size] * 2, 3), np.float32)
    for variant in variants:
      self.predictor.program(variant, pin=True)
      for size in self.batch_sizes:
        self.predictor.predict(np.stack([image] * size), variant)
    return time.perf_counter() - started

  def summary(self) -> dict[str, Any]:
    predictor, config = self.predictor, self.predictor.task.config
    summary: dict[str, Any] = {
      "name": self.name,
      "family": predictor.family,
      "task": predictor.task.name,
      "output": predictor.output,
      "step": predictor.step,
      "workdir": self.source,
      "views": predictor.num_views,
      "image_size": predictor.preprocessing.image_size,
      "batch_sizes": list(self.batch_sizes),
    }
    if config.get("model") and config.model.get("encoder"):
      summary["encoder"] = config.model.encoder.get("name")
    if self.captioning:
      summary.update(
        vocab_size=len(predictor.tokenizer),
        decoding=dict(self.default_variant.describe(), length_penalty=float(config.decode.get("length_penalty", 0.0))),
      )
    else:
      summary["labels"] = list(predictor.label_names)
    return summary


def png_data_url(image: np.ndarray) -> str:
  """uint8 [H, W] or [H, W, 3] -> "data:image/png;base64,..."."""
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class Batcher:
  """Runs an engine's requests on one thread, in batches of the requests that arrive together."""

  def __init__(self, engine: Engine, window_s: float = 0.005, max_queue: int = 256):
    self.engine = engine
    self.window_s = window_s  # read at each batch: may be changed while serving
    self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
    self._thread: threading.Thread | None = None
    self._lock = threading.Lock()
    self.batch_sizes: collections.Counter[int] = collections.Counter()  # requests per model call -> calls

  def start(self) -> None:
    if self._thread is None:
      self._thread = threading.Thread(target=self._loop, name=f"batcher-{self.engine.name}", daemon=True)
      self._thread.start()

  def stop(self) -> None:
    if self._thread is not None:
      self._queue.put(None)
      self._thread.join()
      self._thread = None

  def submit(self, item: Item) -> concurrent.futures.Future:
    """Queues `item`; its future gets the result dict. A full queue raises RequestError (503)."""
    future: concurrent.futures.Future = concurrent.futures.Future()
    item.queued_at = time.perf_counter()
    try:
      self._queue.put_nowait((item, future))
    except queue.Full:
      raise RequestError(
        f"the {self.engine.name} model has {self._queue.maxsize} requests waiting; try again later", 503
      ) from None
    return future

  def stats(self) -> dict[str, Any]:
    with self._lock:
      return {
        "requests": sum(size * calls for size, calls in self.batch_sizes.items()),
        "calls": sum(self.batch_sizes.values()),
        "queued": self._queue.qsize(),
        "batch_window_ms": self.window_s * 1e3,
        "batch_sizes": {str(size): calls for size, calls in sorted(self.batch_sizes.items())},
      }

  def _loop(self) -> None:
    while True:
      entry = self._queue.get()
      if entry is None:
        return
      batch, stopping = [entry], False
      deadline = time.perf_counter() + self.window_s
      while len(batch) < self.engine.max_batch:
        try:
          # Requests already waiting join at once; while the window is open, later ones too.
          entry = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
        except queue.Empty:
          break
        if entry is None:
          stopping = True
          break
        batch.append(entry)
      groups: dict[tasks.Options, list] = {}
      for entry in batch:
        groups.setdefault(entry[0].variant, []).append(entry)
      for group in groups.values():
        self._run(group)
      if stopping:
        return

  def _run(self, group: list) -> None:
    started = time.perf_counter()
    try:
      results = self.engine.run([item for item, _ in group])
    except Exception as error:  # pylint: disable=broad-except  (handed to the waiting requests)
      for _, future in group:
        future.set_exception(error)
      return
    with self._lock:
      self.batch_sizes[len(group)] += 1
    for (item, future), result in zip(group, results):
      result["timings"]["queue_ms"] = round((started - item.queued_at) * 1e3, 2)
      future.set_result(result)
