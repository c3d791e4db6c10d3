"""One loaded model served at fixed batch sizes, and the batcher that groups concurrent requests.

An `Engine` holds a `Predictor` (inference.py) and runs whole batches of requests: a batch is padded to
the next of its compiled sizes (e.g. 1, 4, 8), so that no request shape ever compiles a new program; the
run's search (the config's decode section) and greedy search at the config's maximum length are compiled
for every size at start-up (`warm_up`). Other decoding options (another beam size or maximum length) are
programs of their own: each compiles on its first request and is kept (at most `max_variants`).

Report generators: the batch is generated in one call, then re-read with teacher forcing in one call
(each token's log-probability and, where the model has attention, the attention of each generated token
over the regions of every view), as `Predictor.predict_report` does for one study. Classifiers (AG-CNN,
CheXNet): `Predictor.classify` over the padded batch.

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

import jax
import ml_collections
import numpy as np
from PIL import Image

from cxrjax import inference, sharding
from cxrjax.serve import uploads
from cxrjax.serve.uploads import RequestError
from cxrjax.tasks import captioning

DEFAULT_BATCH_SIZES = (1, 4, 8)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One compiled decoding program: requests with the same variant share a batch."""

  greedy: bool
  beam_size: int
  max_length: int


@dataclasses.dataclass
class Item:
  """One prepared request: the views as the model reads them, and what to return."""

  images: np.ndarray  # float32 [views, S, S, 3] (report generators) or [S, S, 3] (classifiers)
  views: list[np.ndarray]  # the resized uint8 views [S, S, 3], as uploaded (not repeated)
  variant: Variant | None  # None for classifiers
  options: uploads.Options
  prepare_ms: float = 0.0
  queued_at: float = 0.0


def jit_search(
  task: Any,
  model: Any,
  tokenizer: Any,
  decode: ml_collections.ConfigDict,
  greedy: bool,
  variables_sharding: Any,
  mesh: jax.sharding.Mesh,
) -> Any:
  """One served decoding program, (variables, {"images": [batch, views, S, S, 3]}) -> the search's tokens,
  log-probabilities and scores: the variables in the run's layout as loaded, the padded batch and the
  outputs replicated over `mesh` (a batch of 1 splits over no devices). Engine and aot.py build it here."""
  replicated = sharding.replicated(mesh)
  return jax.jit(
    task.predict_fn(model, tokenizer, greedy=greedy, decode=decode, with_scores=True),
    in_shardings=(variables_sharding, replicated),
    out_shardings=replicated,
  )


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
    self.max_variants = max_variants
    self.source = source
    self.captioning = predictor.task == "captioning"
    self._programs: collections.OrderedDict[Variant, Any] = collections.OrderedDict()
    self._warm: set[Variant] = set()
    self._reread = None
    if self.captioning:
      decode = predictor.decode_config()  # The run's, refused where it runs past the model's KV cache.
      self.default_variant = Variant(greedy=False, beam_size=int(decode.beam_size), max_length=int(decode.max_length))
      self._reread = jax.jit(self._reread_fn)

  @property
  def max_batch(self) -> int:
    return self.batch_sizes[-1]

  @property
  def num_views(self) -> int:
    """Images per study: the model's views (report generators), one (classifiers)."""
    return self.predictor.preprocessing.num_views if self.captioning else 1

  @property
  def output(self) -> str:
    if not self.captioning:
      return "findings"
    return "report" if self.predictor.preprocessing.num_views > 1 else "caption"

  # Requests.

  def variant(self, options: uploads.Options) -> Variant | None:
    """The decoding program of a request's options; options the model cannot take raise RequestError."""
    if not self.captioning:
      given = [n for n in ("search", "beam_size", "max_length") if getattr(options, n) is not None]
      if given:
        raise RequestError(f"the {self.name} model is a classifier; decoding options ({', '.join(given)}) do not apply")
      return None
    default = self.default_variant
    max_length = default.max_length if options.max_length is None else options.max_length
    if max_length > default.max_length:
      raise RequestError(
        f"max_length={max_length}; the {self.name} model generates at most {default.max_length} tokens"
      )
    if options.search == "greedy":
      return Variant(greedy=True, beam_size=1, max_length=max_length)
    beam_size = default.beam_size if options.beam_size is None else options.beam_size
    return Variant(greedy=False, beam_size=beam_size, max_length=max_length)

  def prepare(self, images: Sequence[np.ndarray], options: uploads.Options) -> Item:
    """Decoded uploads (uint8 [H, W, 3], frontal first) -> an Item; the wrong number raises RequestError."""
    started = time.perf_counter()
    if not 1 <= len(images) <= self.num_views:
      what = "one image" if self.num_views == 1 else f"1 to {self.num_views} views (frontal, then lateral)"
      raise RequestError(f"the {self.name} model reads {what}; got {len(images)} images")
    variant = self.variant(options)
    preprocessing = self.predictor.preprocessing
    views = [preprocessing.eval_view(image) for image in images]
    if self.captioning:
      # A study with fewer views than the model repeats its last one, as the datasets and `predict` do.
      batch = preprocessing.normalize(np.stack(views + [views[-1]] * (self.num_views - len(views))))
    else:
      batch = preprocessing.normalize(views[0])
    return Item(
      images=batch, views=views, variant=variant, options=options, prepare_ms=(time.perf_counter() - started) * 1e3
    )

  def run(self, items: Sequence[Item]) -> list[dict[str, Any]]:
    """Items of one variant, at most `max_batch` -> one result per item (one padded model call each stage)."""
    if not 1 <= len(items) <= self.max_batch or len({item.variant for item in items}) != 1:
      raise ValueError(f"run takes 1..{self.max_batch} items of one variant")
    size = next(b for b in self.batch_sizes if b >= len(items))
    padded = np.zeros((size, *items[0].images.shape), np.float32)
    padded[: len(items)] = np.stack([item.images for item in items])
    started = time.perf_counter()
    if self.captioning:
      results = self._run_captioning(items, padded)
    else:
      results = self._run_classification(items, padded)
    model_ms = (time.perf_counter() - started) * 1e3
    for item, result in zip(items, results):
      result.update(model=self.name, step=self.predictor.step)
      result["timings"] = dict(
        prepare_ms=round(item.prepare_ms, 2),
        model_ms=round(model_ms, 2),
        batch_size=len(items),
        compiled_batch_size=size,
      )
      if item.options.views:
        result["views"] = [png_data_url(view) for view in item.views]
    return results

  # Report generators.

  def _decode(self, variant: Variant) -> ml_collections.ConfigDict:
    """The run's decode section with `variant`'s beam size and length."""
    decode = ml_collections.ConfigDict(self.predictor.config.decode.to_dict())
    decode.beam_size, decode.max_length = variant.beam_size, variant.max_length
    return decode

  def _search_name(self, variant: Variant) -> str:
    """ "greedy" or "beam": what tasks/captioning.search runs for `variant` (beam size 1 with "hf" length
    normalisation is greedy search, as transformers' num_beams=1)."""
    return "greedy" if captioning.runs_greedy_search(self._decode(variant), variant.greedy) else "beam"

  def _program(self, variant: Variant):
    """The jitted generation of `variant` (compiled per batch size on first use), most recent last."""
    if variant in self._programs:
      self._programs.move_to_end(variant)
      return self._programs[variant]
    decode = self._decode(variant)
    predictor = self.predictor
    variables_sharding = jax.tree.map(lambda a: a.sharding, predictor.variables)
    program = jit_search(
      predictor.task_object,
      predictor.model,
      predictor.tokenizer,
      decode,
      variant.greedy,
      variables_sharding,
      jax.tree.leaves(variables_sharding)[0].mesh,
    )
    self._programs[variant] = program
    evictable = [v for v in self._programs if v not in self._warm]
    while len(self._programs) - len(self._warm) > self.max_variants and evictable:
      del self._programs[evictable.pop(0)]
    return program

  def _reread_fn(self, variables, images, inputs):
    """Teacher forcing over generated tokens: attention [batch, length, regions] (or None)."""
    return self.predictor.model.apply(variables, images, inputs).get("attention")

  def _reread_inputs(self, rows: Sequence[Sequence[int]], size: int) -> np.ndarray:
    """Start token + tokens but the last (predicted, never read: a caption of the longest decode fits the
    position table), padded to one length for every request (the decoders are causal: padding after the
    tokens changes none of their outputs), so one compiled program serves every caption length."""
    tokenizer = self.predictor.tokenizer
    inputs = np.full((size, self.default_variant.max_length), tokenizer.pad_id, np.int32)
    for index, tokens in enumerate(rows):
      inputs[index, : len(tokens)] = [tokenizer.start_id, *tokens][: len(tokens)]
    return inputs

  def _run_captioning(self, items: Sequence[Item], padded: np.ndarray) -> list[dict[str, Any]]:
    variant = items[0].variant
    predictor, tokenizer = self.predictor, self.predictor.tokenizer
    outputs = jax.device_get(self._program(variant)(predictor.variables, {"images": padded}))
    generated, log_probs = outputs["tokens"], outputs["token_log_probs"]  # The search's own, as `predict`'s.
    rows = []
    for row in generated[: len(items)]:
      end = np.flatnonzero(row == tokenizer.end_id)
      rows.append([int(t) for t in row[: end[0] if len(end) else len(row)]])
    attention = None
    if any(item.options.attention for item in items):  # Only attention needs the teacher-forced re-read.
      attention = jax.device_get(self._reread(predictor.variables, padded, self._reread_inputs(rows, len(padded))))
    results, search = [], self._search_name(variant)
    for index, (item, tokens) in enumerate(zip(items, rows)):
      result = {
        self.output: tokenizer.decode(generated[index]),
        "token_ids": tokens,
        "token_logprobs": [round(float(p), 6) for p in log_probs[index, : len(tokens)]],
        "words": [tokenizer.decode([t]) or "?" for t in tokens],
        "decoding": {"search": search, "beam_size": variant.beam_size, "max_length": variant.max_length},
      }
      if item.options.attention:
        result["attention"] = self._attention(attention, index, len(tokens), padded.shape[1])
      results.append(result)
    return results

  def _attention(self, attention: np.ndarray | None, index: int, length: int, views: int) -> dict[str, Any]:
    """{"shape": [tokens, views, h, w], "maps": nested lists} (rounded), or {"none": reason}."""
    if attention is None:
      return {"none": f"the {self.predictor.name} model has no attention"}
    if not length:
      return {"none": "the generated text is empty"}
    weights = np.asarray(attention[index, :length], np.float32)  # [tokens, regions]
    side = int(round((weights.shape[-1] / views) ** 0.5))
    maps = weights.reshape(length, views, side, side)
    return {"shape": list(maps.shape), "maps": np.round(maps, 5).tolist()}

  # Classifiers.

  def _run_classification(self, items: Sequence[Item], padded: np.ndarray) -> list[dict[str, Any]]:
    outputs = self.predictor.classify(padded)
    names = self.predictor.label_names
    results = []
    for index, item in enumerate(items):
      probabilities = outputs["probabilities"][index]
      result: dict[str, Any] = {"probabilities": {n: round(float(p), 6) for n, p in zip(names, probabilities)}}
      if "boxes" in outputs:
        result["box"] = [int(b) for b in outputs["boxes"][index]]  # (y0, x0, y1, x1) in the view's pixels
        if item.options.attention:
          heatmap = np.clip(np.asarray(outputs["heatmap"][index], np.float32), 0.0, 1.0)
          result["heatmap"] = png_data_url(np.round(heatmap * 255).astype(np.uint8))
      elif item.options.attention:
        result["heatmap"] = {"none": f"the {self.predictor.name} model has no attention heatmap"}
      results.append(result)
    return results

  # Start-up and description.

  def warm_up(self) -> float:
    """Compiles every served batch size (the default search and greedy for report generators); seconds."""
    started = time.perf_counter()
    if self.captioning:
      greedy = dataclasses.replace(self.default_variant, greedy=True, beam_size=1)
      self._warm = {self.default_variant, greedy}
      variants = [self.default_variant, greedy]
    else:
      variants = [None]
    shape = (self.num_views, *[self.predictor.preprocessing.image_size] * 2, 3)
    image = np.zeros(shape[1:] if not self.captioning else shape, np.float32)
    for size in self.batch_sizes:
      for variant in variants:
        options = uploads.Options(attention=True)
        self.run([Item(images=image, views=[], variant=variant, options=options)] * size)
    return time.perf_counter() - started

  def summary(self) -> dict[str, Any]:
    predictor, config = self.predictor, self.predictor.config
    summary: dict[str, Any] = {
      "name": self.name,
      "family": predictor.name,
      "task": predictor.task,
      "output": self.output,
      "step": predictor.step,
      "workdir": self.source,
      "views": self.num_views,
      "image_size": predictor.preprocessing.image_size,
      "batch_sizes": list(self.batch_sizes),
    }
    if config.get("model") and config.model.get("encoder"):
      summary["encoder"] = config.model.encoder.get("name")
    if self.captioning:
      default = self.default_variant
      summary.update(
        vocab_size=len(predictor.tokenizer),
        decoding={
          "search": self._search_name(default),
          "beam_size": default.beam_size,
          "max_length": default.max_length,
          "length_penalty": float(config.decode.get("length_penalty", 0.0)),
        },
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
      groups: dict[Variant | None, list] = {}
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
