"""Report generation: teacher-forced training, generation, text metrics and predictions.jsonl."""

import json
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cxrjax import decoding
from cxrjax.data import transforms
from cxrjax.metrics import captioning as caption_metrics
from cxrjax.tasks import feature_cache


def model_images(batch: dict[str, Any]) -> Any:
  """The batch's images [batch, views, H, W, 3], or its cached encoder features as the dict that
  models/encoders/image_encoder.py takes in their place."""
  if "images" in batch:
    return batch["images"]
  return {key: batch[feature_cache.BATCH_PREFIX + key] for key in feature_cache.FEATURE_KEYS}


def generate(model, variables: Any, images: Any, tokenizer, decode: ml_collections.ConfigDict,
             greedy: bool = False) -> jax.Array:
  """images [batch, views, H, W, 3] -> generated token ids int32 [batch, decode.max_length] (no start
  token; pad after the end token). Traceable: call it inside jit.

  Greedy search serves validation (`greedy=True`) and beam size 1 without a length penalty, where beam
  search provably returns the same tokens (tests/models/test_contract.py); otherwise beam search.
  """
  memory = model.apply(variables, images, method="encode")
  cache = model.apply(variables, memory, method="init_cache")
  step_fn = model.decoder_step_fn(variables)
  options = dict(start_id=tokenizer.start_id, end_id=tokenizer.end_id, pad_id=tokenizer.pad_id,
                 max_length=decode.max_length, block_ngram_repeat=decode.get("block_ngram_repeat", 0))
  if greedy or (decode.beam_size == 1 and decode.get("length_penalty", 0.0) == 0.0):
    tokens, _ = decoding.greedy_search(step_fn, cache, **options)
    return tokens
  tokens, _ = decoding.beam_search(step_fn, cache, beam_size=decode.beam_size,
                                   length_penalty=decode.get("length_penalty", 0.0), **options)
  return tokens[:, 0]  # [batch, max_length]: the best beam


class CaptioningTask:
  """Teacher forcing: inputs tokens[:, :-1], targets tokens[:, 1:]; the tokenizer's pad is masked."""
  name = "captioning"
  uses_tokenizer = True
  best_metric_default = "BLEU-4"
  host_fields = ("id", "report")  # Strings of the batch kept beside the predictions.
  label_names = None  # Report generators read no finding labels.

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  def sample_inputs(self) -> tuple[np.ndarray, np.ndarray]:
    """Zero images [1, views, S, S, 3] (views and S from the preprocessing of the config) and tokens."""
    preprocessing = transforms.from_config(self.config)
    size = preprocessing.image_size
    images = np.zeros((1, preprocessing.num_views, size, size, 3), np.float32)
    return images, np.zeros((1, self.config.data.max_length - 1), np.int32)

  def init_variables(self, model, rngs: dict[str, jax.Array]) -> dict[str, Any]:
    return model.init(rngs, *self.sample_inputs())

  def loss(self, model, variables: dict[str, Any], batch: dict[str, jax.Array], rng: jax.Array,
           tokenizer) -> tuple[jax.Array, tuple[Any, dict[str, jax.Array]]]:
    """Mean cross-entropy over real target tokens (pad masked, as both seeds do)."""
    inputs, targets = batch["tokens"][:, :-1], batch["tokens"][:, 1:]  # [batch, length - 1] each
    outputs, updates = model.apply(variables, model_images(batch), inputs, train=True,
                                   rngs={"dropout": rng}, mutable=["batch_stats"])
    mask = (targets != tokenizer.pad_id).astype(jnp.float32)
    if "mask" in batch:  # Padding studies (eval batches) count for nothing.
      mask = mask * batch["mask"][:, None].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(outputs["logits"].astype(jnp.float32), targets)
    num_tokens = mask.sum()
    loss = (losses * mask).sum() / jnp.maximum(num_tokens, 1.0)
    # Perplexity of the step's tokens (metrics.jsonl averages it over the logged steps).
    return loss, (updates.get("batch_stats", {}), {"tokens": num_tokens, "perplexity": jnp.exp(loss)})

  def predict_fn(self, model, tokenizer, greedy: bool = False, decode: Any = None):
    """(variables, batch) -> {"tokens": int32 [batch, max_length]}: the jitted prediction of a batch."""
    decode = decode or self.config.decode

    def predict(variables, batch):
      return {"tokens": generate(model, variables, model_images(batch), tokenizer, decode, greedy)}
    return predict

  def records(self, outputs: dict[str, np.ndarray], host: dict[str, list[str]], tokenizer) -> list[dict]:
    """Gathered predictions of a split, in order -> [{"id", "reference", "generated"}]."""
    return [{"id": study_id, "reference": reference, "generated": tokenizer.decode(tokens)}
            for study_id, reference, tokens in zip(host["id"], host["report"], outputs["tokens"])]

  def score(self, records: list[dict], meteor: bool = False) -> dict[str, Any]:
    scores = caption_metrics.caption_metrics([r["reference"] for r in records],
                                             [r["generated"] for r in records], meteor=meteor)
    scores["num_studies"] = len(records)
    return scores

  def write(self, out_dir, records: list[dict]) -> None:
    with (out_dir / "predictions.jsonl").open("w") as handle:
      for record in records:
        handle.write(json.dumps(record) + "\n")
