"""Report generation: teacher-forced training, generation, text metrics and predictions.jsonl."""

import dataclasses
import json
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cxrjax.core import decoding, files
from cxrjax import models
from cxrjax.data import transforms
from cxrjax.core.errors import ConfigError
from cxrjax.metrics import protocols as caption_protocols
from cxrjax.tasks import base, feature_cache


def model_images(batch: dict[str, Any]) -> Any:
  """The batch's images [batch, views, H, W, 3], or its cached encoder features as the dict that
  models/encoders/image_encoder.py takes in their place."""
  if "images" in batch:
    return batch["images"]
  return {key: batch[feature_cache.BATCH_PREFIX + key] for key in feature_cache.FEATURE_KEYS}


def check_decode_length(model_config: Any, max_length: int, field: str, family: Any = None) -> None:
  """Refuses a decode of `max_length` tokens that `model_config`'s model (of `family`, the model family class;
  None: looked up) cannot hold (base.Family.max_decode_length: a transformer's KV cache; past it the cache
  writes are clamped and the tokens silently wrong): a ConfigError naming `field` (the flag or config field that
  chose the length) and the limit. Called where a command settles its decode length: `train`, `evaluate`,
  `predict` and `serve`."""
  family = models.get(model_config.name) if family is None else family
  limit = family.max_decode_length(model_config)
  if limit is not None and max_length > limit:
    field_name = family.decode_limit_field
    raise ConfigError(
      f"{field}={max_length}: the {model_config.name} model decodes at most {limit} tokens (its "
      f"KV cache's positions, model.{field_name}={limit})"
    )


def runs_greedy_search(decode: ml_collections.ConfigDict, greedy: bool = False) -> bool:
  """Whether `search` runs greedy search for this decode config (see `search`)."""
  normalization = decode.get("length_normalization", "gnmt")
  return greedy or (decode.beam_size == 1 and (decode.get("length_penalty", 0.0) == 0.0 or normalization == "hf"))


def search(
  model, variables: Any, images: Any, tokenizer, decode: ml_collections.ConfigDict, greedy: bool = False
) -> dict[str, jax.Array]:
  """images [batch, views, H, W, 3] -> the decode config's search of each caption: {"tokens": int32
  [batch, decode.max_length] (no start token; pad after the end token), "token_log_probs": float32
  [batch, decode.max_length] (each token's; 0 after the end token), "scores": float32 [batch] (beam
  search: the hypothesis score, e.g. transformers' sequences_scores; greedy: the summed log-probability)}.
  Traceable: call it inside jit.

  decode: beam_size, max_length (most tokens generated, end included: transformers' max_new_tokens),
  length_penalty (default 0), length_normalization ("gnmt" default, or "hf": transformers' beam search,
  see cxrjax/core/decoding.py), block_ngram_repeat (default 0).
  Greedy search serves validation (`greedy=True`) and beam size 1 where beam search provably returns the
  same tokens: without a length penalty (tests/models/test_contract.py), or with "hf" normalization,
  as transformers runs greedy search for num_beams=1 whatever its length penalty; otherwise beam search.
  """
  memory = model.apply(variables, images, method="encode")
  cache = model.apply(variables, memory, method="init_cache")
  step_fn = model.decoder_step_fn(variables)
  options = dict(
    start_id=tokenizer.start_id,
    end_id=tokenizer.end_id,
    pad_id=tokenizer.pad_id,
    max_length=decode.max_length,
    block_ngram_repeat=decode.get("block_ngram_repeat", 0),
    return_token_log_probs=True,
  )
  if runs_greedy_search(decode, greedy):
    tokens, log_probs, token_log_probs = decoding.greedy_search(step_fn, cache, **options)
    return {"tokens": tokens, "token_log_probs": token_log_probs, "scores": log_probs}
  tokens, scores, token_log_probs = decoding.beam_search(
    step_fn,
    cache,
    beam_size=decode.beam_size,
    length_penalty=decode.get("length_penalty", 0.0),
    length_normalization=decode.get("length_normalization", "gnmt"),
    **options,
  )
  # The best beam: [batch, beams, ...] --> [batch, ...]
  return {"tokens": tokens[:, 0], "token_log_probs": token_log_probs[:, 0], "scores": scores[:, 0]}


def generate(
  model, variables: Any, images: Any, tokenizer, decode: ml_collections.ConfigDict, greedy: bool = False
) -> jax.Array:
  """images [batch, views, H, W, 3] -> generated token ids int32 [batch, decode.max_length]: `search`'s
  tokens. Traceable: call it inside jit."""
  return search(model, variables, images, tokenizer, decode, greedy)["tokens"]


def first_end(row: np.ndarray, end_id: int) -> int:
  """The number of tokens before the first end token of a generated row (its length where there is none)."""
  ends = np.flatnonzero(row == end_id)
  return int(ends[0]) if len(ends) else len(row)


def teacher_forced(model, variables: Any, images: Any, tokens: jax.Array, lengths: jax.Array, tokenizer) -> dict:
  """Re-reads `tokens` [batch, length] (the first `lengths` [batch] of each row; the rest is ignored) with
  teacher forcing -> {"token_log_probs": float32 [batch, length] (each token's log-probability under the
  model), "attention": [batch, length, regions] (each token's attention over the regions of every view) or
  None where the model has none}. Traceable.

  The last token is predicted, never read: the inputs are [start, tokens[:-1]], as many positions as tokens,
  so a text of the model's longest decode fits its position table; positions from `lengths` on read padding
  (the decoders are causal: it changes none of the earlier positions' outputs), so one program serves every
  length."""
  positions = jnp.arange(tokens.shape[1])[None, :]
  start = jnp.full((tokens.shape[0], 1), tokenizer.start_id, tokens.dtype)
  inputs = jnp.where(positions < lengths[:, None], jnp.concatenate([start, tokens[:, :-1]], axis=1), tokenizer.pad_id)
  outputs = model.apply(variables, images, inputs)
  log_probs = jax.nn.log_softmax(outputs["logits"].astype(jnp.float32))
  token_log_probs = jnp.take_along_axis(log_probs, tokens[..., None], axis=-1)[..., 0]
  return {"token_log_probs": token_log_probs, "attention": outputs.get("attention")}


@dataclasses.dataclass(frozen=True)
class CaptioningTask:
  """Teacher forcing: inputs tokens[:, :-1], targets tokens[:, 1:]; the tokenizer's pad is masked."""

  name: ClassVar[str] = "captioning"
  uses_tokenizer: ClassVar[bool] = True
  best_metric_default: ClassVar[str] = "BLEU-4"
  host_fields: ClassVar[tuple[str, ...]] = ("id", "report")  # Strings of the batch kept beside the predictions.

  config: ml_collections.ConfigDict
  tokenizer: Any  # text/tokenizers.py: the run's
  label_names: None = None  # Report generators read no finding labels.
  preprocessing: transforms.Preprocessing | None = None  # None: the config's (transforms.from_config)
  family: Any = None  # the model family class (models/base.Family); None: config.model.name's, if any

  def __post_init__(self):
    # Derived once, here (a config without data, e.g. for a loss alone, has none); batches and results read it.
    if self.preprocessing is None and self.config.get("data") is not None:
      object.__setattr__(self, "preprocessing", transforms.from_config(self.config))
    if self.family is None and self.config.get("model") is not None:
      object.__setattr__(self, "family", models.get(self.config.model.name))
    if self.tokenizer is None:
      raise ValueError("a report generator's task needs its tokenizer")
    if self.label_names is not None:
      raise ValueError("a report generator reads no finding labels")
    if self.config.get("data") is not None:  # A bad scoring protocol fails now, not at the first validation.
      caption_protocols.protocol_for(self.config.data)

  def sample_inputs(self) -> tuple[np.ndarray, np.ndarray]:
    """Zero images [1, views, S, S, 3] (views and S from the preprocessing of the config) and tokens."""
    preprocessing = self.preprocessing
    size = preprocessing.image_size
    images = np.zeros((1, preprocessing.num_views, size, size, 3), np.float32)
    return images, np.zeros((1, self.config.data.max_length - 1), np.int32)

  def init_variables(self, model, rngs: dict[str, jax.Array]) -> dict[str, Any]:
    return model.init(rngs, *self.sample_inputs())

  def loss(
    self, model, variables: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array
  ) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
    """Mean cross-entropy over real target tokens (pad masked, as both seeds do), in float32 whatever
    the model's compute dtype. `config.train.label_smoothing` (default 0) mixes that much of the uniform
    distribution over the vocabulary into each real target (optax.smooth_labels); padding stays masked."""
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]  # [batch, length - 1] each
    outputs, updates = model.apply(
      variables, model_images(batch), inputs, train=True, rngs={"dropout": rng}, mutable=["batch_stats"]
    )
    mask = (targets != self.tokenizer.pad_id).astype(jnp.float32)
    if "mask" in batch:  # Padding studies (eval batches) count for nothing.
      mask = mask * batch["mask"][:, None].astype(jnp.float32)
    logits = outputs["logits"].astype(jnp.float32)  # [batch, length - 1, vocab]
    num_tokens = mask.sum()

    def mean_over_tokens(losses):
      return (losses * mask).sum() / jnp.maximum(num_tokens, 1.0)

    nll = mean_over_tokens(optax.softmax_cross_entropy_with_integer_labels(logits, targets))
    loss = nll
    smoothing = self.config.get("train", ml_collections.ConfigDict()).get("label_smoothing", 0.0)
    if smoothing:
      labels = optax.smooth_labels(jax.nn.one_hot(targets, logits.shape[-1]), smoothing)
      loss = mean_over_tokens(optax.softmax_cross_entropy(logits, labels))
    # The unsmoothed mean token NLL and the token count: the trainer's log turns them into the perplexity
    # of the logged steps, exp of their mean token loss (train.summarize_steps).
    return loss, (updates.get("batch_stats", {}), {"tokens": num_tokens, "token_nll": nll})

  def options(
    self,
    *,
    greedy: bool = False,
    beam_size: int | None = None,
    max_length: int | None = None,
    attention: bool = False,
    flags: bool = False,
  ) -> base.Options:
    """The run's search (config.decode), greedy search, or either with another beam size / length; a beam size
    or length that is not a positive integer, or a length past the model's KV cache, is a ConfigError naming
    the option (`flags`: as the command line's --beam-size / --max-new-tokens)."""
    decode = self.config.decode
    names = {"beam_size": "--beam-size", "max_length": "--max-new-tokens"} if flags else {}
    for key, value in (("beam_size", beam_size), ("max_length", max_length)):
      if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{names.get(key, key)} must be a positive integer, got {value!r}")
    length = int(decode.max_length if max_length is None else max_length)
    field = names.get("max_length", "max_length") if max_length is not None else "config.decode.max_length"
    check_decode_length(self.config.model, length, field, self.family)
    beam = 1 if greedy else int(decode.beam_size if beam_size is None else beam_size)
    runs_greedy = runs_greedy_search(self.decode_config(base.Options("beam", beam, length)), greedy)
    return base.Options("greedy" if runs_greedy else "beam", beam, length, attention)

  def decode_config(self, options: base.Options) -> ml_collections.ConfigDict:
    """config.decode with `options`' beam size and length: what `search` takes."""
    decode = ml_collections.ConfigDict(self.config.decode.to_dict())
    decode.beam_size, decode.max_length = options.beam_size, options.max_length
    return decode

  def predict_fn(self, model, options: base.Options) -> base.PredictFn:
    """(variables, batch) -> `search`'s {"tokens", "token_log_probs", "scores"} for `options`' search (its
    attention is `attention_fn`'s, a program of its own). To jit."""
    decode, greedy, tokenizer = self.decode_config(options), options.search == "greedy", self.tokenizer

    def predict(variables, batch):
      return search(model, variables, model_images(batch), tokenizer, decode, greedy)

    return predict

  def attention_fn(self, model) -> base.AttentionFn:
    """(variables, batch, generated tokens [batch, length]) -> each generated token's attention [batch, length,
    regions] over the regions of every view (None: the model has none), from re-reading the text with teacher
    forcing: one program for every search, run only where attention is asked for. To jit."""
    tokenizer = self.tokenizer

    def attention(variables, batch, tokens):
      is_end = tokens == tokenizer.end_id
      lengths = jnp.where(is_end.any(axis=1), jnp.argmax(is_end, axis=1), tokens.shape[1])
      return teacher_forced(model, variables, model_images(batch), tokens, lengths, tokenizer)["attention"]

    return attention

  def results(self, outputs: dict[str, np.ndarray], options: base.Options) -> list[dict[str, Any]]:
    """Per row: {"text", "token_ids" (generated, without start and end), "token_logprobs" (each one's
    log-probability, from the search), "words", "decoding" (which search ran), "score" (beam search only: the
    hypothesis score, transformers' sequences_scores)[, "attention": float32 [tokens, views, h, w], or None
    where the model has none]}."""
    views = self.preprocessing.num_views
    results = []
    for index, row in enumerate(np.asarray(outputs["tokens"])):
      length = first_end(row, self.tokenizer.end_id)
      tokens = [int(t) for t in row[:length]]
      result: dict[str, Any] = {
        "text": self.tokenizer.decode(row),
        "token_ids": tokens,
        "token_logprobs": [round(float(p), 6) for p in outputs["token_log_probs"][index, :length]],
        "words": [self.tokenizer.decode([t]) or "?" for t in tokens],
        "decoding": options.describe(),
      }
      if options.search == "beam":
        result["score"] = round(float(outputs["scores"][index]), 6)
      if options.attention:
        result["attention"] = attention_maps(outputs.get("attention"), index, length, views)
      results.append(result)
    return results

  def records(self, outputs: dict[str, np.ndarray], host: dict[str, list[str]]) -> list[dict]:
    """Gathered predictions of a split, in order -> [{"id", "reference", "generated"}]."""
    return [
      {"id": study_id, "reference": reference, "generated": self.tokenizer.decode(tokens)}
      for study_id, reference, tokens in zip(host["id"], host["report"], outputs["tokens"])
    ]

  evaluator_kind: ClassVar[str] = "text"  # What its predictions are, for evaluators (evaluators/base.py).

  @staticmethod
  def default_evaluators(config: ml_collections.ConfigDict, stage: str, meteor: bool | None = None) -> dict:
    """The evaluators a report generator's run has without a config.evaluators section: the text metrics
    under the dataset's scoring protocol (metrics/protocols.py; config.data.caption_protocol), METEOR in
    `evaluate` unless `meteor` is False (validation: only if True); `evaluate` also scores the image-free
    baselines and, where the dataset knows the true findings, the findings oracle."""
    meteor = stage == "evaluate" if meteor is None else meteor
    protocol = caption_protocols.protocol_for(config.data)
    return {
      "text": {"type": "text", "protocol": protocol, "meteor": meteor},
      "baselines": {"type": "baselines", "meteor": meteor},
      "findings_oracle": {"type": "findings_oracle", "meteor": meteor},
    }

  def write(self, out_dir, records: list[dict]) -> None:
    files.write_lines(out_dir / "predictions.jsonl", (json.dumps(record) for record in records))


def attention_maps(attention: np.ndarray | None, index: int, length: int, views: int) -> np.ndarray | None:
  """Row `index`'s attention [batch, max_length, regions] over its first `length` tokens -> float32 [length,
  views, side, side] (square maps per view); None where the model has no attention."""
  if attention is None:
    return None
  weights = np.asarray(attention[index, :length], np.float32)
  side = int(round((weights.shape[-1] / views) ** 0.5))
  return weights.reshape(length, views, side, side)
