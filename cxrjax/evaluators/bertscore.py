"""BERTScore (Zhang et al., ICLR 2020) with the definitions of the `bert-score` package (0.3.13), on cxrjax's
BERT-family encoder (models/encoders/text.py: BERT, RoBERTa, DistilBERT, as CheXbert) or DeBERTa (v1)
encoder (models/encoders/deberta.py) imported from a Hugging Face directory (weights/hf_text.py). The runtime
imports neither bert_score, transformers nor torch.

ImageCLEFmedical Caption's BERTScore (ROCOv2) is the recall of microsoft/deberta-xlarge-mnli (layer 40) with
idf weights, without rescaling:

    scorer = BertScorer.from_directory("deberta-xlarge-mnli/", idf=True)
    scorer.score(candidates, references)["R_mean"]

    scorer = BertScorer.from_directory("roberta-large/", idf=False, baseline_file="en/roberta-large.tsv")
    scores = scorer.score(candidates, references, batch_size=64)
    scores["F1"]          # [pairs] float32, one per candidate; also "P", "R" and their corpus means "F1_mean" ...

The definitions (bert_score/utils.py and score.py):
  layer      the hidden state after `num_layers` layers (0: the embeddings); the default per model from the
             package's model2layers (MODEL_LAYERS: roberta-large 17, distilroberta-base 5,
             distilbert-base-uncased 5, microsoft/deberta-xlarge-mnli 40, ...), looked up by `model_type`
             (the directory's name, or a hub cache's "models--org--name/snapshots/..." name; "FacebookAI/",
             "google-bert/", "distilbert/" dropped, the hub's new names of the package's models; a bare
             name that one entry has after its organisation, "deberta-xlarge-mnli", is that entry)
  encoding   sent_encode: the text stripped, then [CLS] pieces [SEP] (<s> ... </s>, RoBERTa's BPE with a
             space before the text; DeBERTa's BPE without one, text/hf_tokenizers.py), the pieces cut to
             the model's max length - 2; an empty text is [CLS] [SEP]. Max length: tokenizer_config.json's
             model_max_length, else (as on the hub's roberta-large) what the position table holds
             (RoBERTa: max_position_embeddings - pad_id - 1; DeBERTa: max_position_embeddings, 512)
  weights    idf: log((M + 1) / (df + 1)) over the M references (flattened, one document each, df the number
             holding the piece), log(M + 1) for a piece no reference holds; [CLS] / [SEP] get 0 because
             every reference holds them. Without idf: 1, and 0 for the [CLS] and [SEP] ids
  matching   cosine similarity of every candidate piece with every reference piece, [CLS] / [SEP]
             included; P = sum_i w_i max_j sim_ij / sum_i w_i over the candidate's pieces, R the same over
             the reference's, F1 = 2PR / (P + R), computed before the next step and NaN -> 0
  empty      a candidate or reference of [CLS] [SEP] only: P = R = 0 (so F1 = 0); a candidate (reference)
             whose weights are all 0 (with idf: each piece in every reference) has P (R) NaN and F1 0, as there
  multiple   several references for a candidate: P, R and F1 each the maximum over them (separately)
  rescaling  (x - b) / (1 - b) per P, R, F1 with b the baseline file's row `num_layers` (read_baseline), after
             the maximum over references

One divergence, by design: the package multiplies the similarity matrix by the padding mask, so in a batch
whose other rows are longer a padded zero joins each greedy maximum; when every true maximum is negative
(not seen with trained encoders, nor on the parity tests' random ones, which give the same package scores at
batch_size 1 and 64) the package gives 0 where this module gives that maximum, and only in padded batches.

Work: as the package, each distinct text (candidates and references together) is encoded once, in batches
of similar length, and its pieces' unit vectors are kept on the host; the pairs are then matched in batches
of similar length. Batches are padded to `batch_size` rows and to their longest text rounded up to a
multiple of BUCKET (16, 32, ..., max_length), so that a corpus compiles few shapes (at most 32 lengths per
program at a 512 max length) and pads little (the package pads to the longest exactly).

Sharding: `embed` and `greedy_match` are pure functions of arrays with the batch first; `score(...,
mesh=mesh)` puts the batches on the mesh's 'data' axis and the variables on every device, also where the mesh
spans processes (each process holds every text and builds the global arrays from its host copy), and
returns every row to every process: the scores equal one process's (tests/test_multiprocess.py).
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import functools
import math
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.core import sharding
from cxrjax.core.errors import UserError
from cxrjax.evaluators import base
from cxrjax.text import hf_tokenizers
from cxrjax.weights import hf_text

# bert_score 0.3.13's model2layers for the models these encoders run (BERT, RoBERTa, DistilBERT, DeBERTa v1
# architectures; not DeBERTa v2 / v3, a SentencePiece tokenizer and another attention).
MODEL_LAYERS = {
  "bert-base-uncased": 9,
  "bert-large-uncased": 18,
  "bert-base-cased-finetuned-mrpc": 9,
  "bert-base-multilingual-cased": 9,
  "bert-base-chinese": 8,
  "roberta-base": 10,
  "roberta-large": 17,
  "roberta-large-mnli": 19,
  "roberta-base-openai-detector": 7,
  "roberta-large-openai-detector": 15,
  "allenai/scibert_scivocab_uncased": 8,
  "allenai/scibert_scivocab_cased": 9,
  "nfliu/scibert_basevocab_uncased": 9,
  "distilroberta-base": 5,
  "distilbert-base-uncased": 5,
  "distilbert-base-uncased-distilled-squad": 4,
  "distilbert-base-multilingual-cased": 5,
  "princeton-nlp/unsup-simcse-bert-base-uncased": 10,
  "princeton-nlp/unsup-simcse-bert-large-uncased": 18,
  "princeton-nlp/unsup-simcse-roberta-base": 8,
  "princeton-nlp/unsup-simcse-roberta-large": 13,
  "princeton-nlp/sup-simcse-bert-base-uncased": 10,
  "princeton-nlp/sup-simcse-bert-large-uncased": 18,
  "princeton-nlp/sup-simcse-roberta-base": 10,
  "princeton-nlp/sup-simcse-roberta-large": 16,
  "dbmdz/bert-base-turkish-cased": 10,
  "dbmdz/distilbert-base-turkish-cased": 4,
  "ProsusAI/finbert": 10,
  "microsoft/deberta-base": 9,
  "microsoft/deberta-base-mnli": 9,
  "microsoft/deberta-large": 16,
  "microsoft/deberta-large-mnli": 18,
  "microsoft/deberta-xlarge": 18,
  "microsoft/deberta-xlarge-mnli": 40,  # ImageCLEFmedical Caption's.
}
# Organisations the hub moved the package's models under ("FacebookAI/roberta-large" is "roberta-large").
RENAMED_ORGS = ("FacebookAI/", "google-bert/", "distilbert/")
BASELINE_COLUMNS = ("P", "R", "F")
BUCKET = 16  # Padded lengths are multiples of it (module doc).


class BertScoreError(UserError):
  """A BERTScore input that cannot be used (baseline file, layer, texts); one line naming it."""


def model_type_of(directory: str | pathlib.Path) -> str:
  """The package's model name of a Hugging Face directory: its folder name, or "org/name" of a hub cache's
  ".../models--org--name/snapshots/<revision>", without the hub's RENAMED_ORGS; a folder name that is no
  MODEL_LAYERS entry but the name of exactly one after its organisation is that entry ("deberta-xlarge-mnli"
  -> "microsoft/deberta-xlarge-mnli")."""
  parts = pathlib.Path(directory).absolute().parts
  name = parts[-1]
  for index, part in enumerate(parts[:-2]):
    if part.startswith("models--") and parts[index + 1] == "snapshots":
      name = part[len("models--") :].replace("--", "/")
  for org in RENAMED_ORGS:
    name = name.removeprefix(org)
  if name not in MODEL_LAYERS:
    owned = [entry for entry in MODEL_LAYERS if entry.partition("/")[2] == name]
    if len(owned) == 1:
      return owned[0]
  return name


def baseline_name(model_type: str, lang: str = "en") -> str:
  """The package's baseline file of a model, relative to its rescale_baseline folder: "en/roberta-large.tsv"."""
  return f"{lang}/{model_type}.tsv"


def read_baseline(path: str | pathlib.Path, num_layers: int) -> np.ndarray:
  """A baseline file (CSV text "LAYER,P,R,F", one row per layer from 0, as bert-score ships) -> the P, R, F
  baselines float32 [3] of row `num_layers` (counted as the package does: the data rows' position)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise BertScoreError(f"{path}: baseline file not found")
  try:
    with path.open(newline="") as file:
      rows = [row for row in csv.reader(file) if row]  # pandas skips blank lines too.
  except (UnicodeDecodeError, csv.Error) as error:
    raise BertScoreError(f"{path}: not a CSV baseline file ({error})") from None
  if not rows or tuple(cell.strip() for cell in rows[0][1:]) != BASELINE_COLUMNS:
    raise BertScoreError(f"{path}: the header is {rows[0] if rows else []}; expected LAYER,P,R,F")
  body = rows[1:]
  if not 0 <= num_layers < len(body):
    raise BertScoreError(f"{path}: no row for layer {num_layers} (rows for layers 0 to {len(body) - 1})")
  try:
    values = [float(cell) for cell in body[num_layers][1:]]
  except ValueError:
    values = []
  if len(values) != len(BASELINE_COLUMNS):
    raise BertScoreError(f"{path}: the row of layer {num_layers} {body[num_layers]} is not 3 numbers")
  return np.asarray(values, np.float64).astype(np.float32)


def rescale(scores: np.ndarray, baseline: np.ndarray) -> np.ndarray:
  """(x - b) / (1 - b): scores float32 [..., 3] (P, R, F1), baseline [3]."""
  return (scores - baseline) / (1 - baseline)


def idf_table(reference_ids: Sequence[Sequence[int]]) -> tuple[dict[int, float], float]:
  """Token ids of M references -> ({id: log((M + 1) / (df + 1))}, log(M + 1) for ids no reference holds)."""
  counts = collections.Counter(token for ids in reference_ids for token in set(ids))
  documents = len(reference_ids)
  return {token: math.log((documents + 1) / (count + 1)) for token, count in counts.items()}, math.log(
    (documents + 1) / 1
  )


def _greedy_match(
  cand_units: jax.Array,
  cand_mask: jax.Array,
  cand_weights: jax.Array,
  ref_units: jax.Array,
  ref_mask: jax.Array,
  ref_weights: jax.Array,
) -> jax.Array:
  """Greedy cosine matching (module doc): the unit vectors of the pieces (`embed`'s) [batch, length, hidden],
  masks bool [batch, length] (True: a real piece; padded pieces are ignored whatever their vectors), weights
  float32 [batch, length] of candidates (cand_) and references (ref_) -> P, R, F1 float32 [batch, 3]."""
  # Full float32 products: TPUs default to bfloat16 passes, which move cosines by ~1e-3.
  similarity = jnp.einsum("bid,bjd->bij", cand_units, ref_units, precision=jax.lax.Precision.HIGHEST)
  similarity = jnp.where(cand_mask[:, :, None] & ref_mask[:, None, :], similarity, -jnp.inf)
  word_precision = jnp.where(cand_mask, similarity.max(axis=2), 0.0)  # [batch, cand_length]
  word_recall = jnp.where(ref_mask, similarity.max(axis=1), 0.0)  # [batch, ref_length]
  cand_weights, ref_weights = jnp.where(cand_mask, cand_weights, 0.0), jnp.where(ref_mask, ref_weights, 0.0)
  # Weights normalised first, as the package: all-zero weights give NaN, as there.
  precision = (word_precision * (cand_weights / cand_weights.sum(-1, keepdims=True))).sum(-1)
  recall = (word_recall * (ref_weights / ref_weights.sum(-1, keepdims=True))).sum(-1)
  f1 = 2 * precision * recall / (precision + recall)
  empty = (cand_mask.sum(-1) == 2) | (ref_mask.sum(-1) == 2)  # [CLS] [SEP] only.
  precision, recall = jnp.where(empty, 0.0, precision), jnp.where(empty, 0.0, recall)
  return jnp.stack([precision, recall, jnp.where(jnp.isnan(f1), 0.0, f1)], axis=-1)


def _embed(encoder: hf_text.Encoder, variables: Any, tokens: jax.Array, mask: jax.Array) -> jax.Array:
  """Encodes texts with `encoder` (cut to the scoring layer): tokens int32 [batch, length], mask bool ->
  each piece's hidden state divided by its norm [batch, length, hidden] (per piece: done once per text, not
  once per pair it is in)."""
  states = encoder.apply(variables, tokens, mask)
  return states / jnp.linalg.norm(states, axis=-1, keepdims=True)


greedy_match = jax.jit(_greedy_match)
embed = jax.jit(_embed, static_argnums=0)


@functools.cache
def _jitted_for(mesh: jax.sharding.Mesh) -> tuple[Any, Any]:
  """(embed, greedy_match) for arguments on `mesh`, their results replicated: each process reads every row
  back without a gather, where the mesh spans processes too. One pair per mesh, so each compiles once."""
  replicated = sharding.replicated(mesh)
  return (
    jax.jit(_embed, static_argnums=0, out_shardings=replicated),
    jax.jit(_greedy_match, out_shardings=replicated),
  )


def bucket_length(length: int, max_length: int) -> int:
  """The padded length of a batch whose longest row has `length` tokens: rounded up to a multiple of BUCKET,
  at most `max_length`, so a corpus compiles few shapes and pads little."""
  return min(-(-max(length, 1) // BUCKET) * BUCKET, max_length)


def _layer_variables(variables: Any, num_layers: int) -> Any:
  """The encoder variables of embeddings and layers 0 .. num_layers - 1."""
  params = variables["params"]
  kept = {
    name: value
    for name, value in params.items()
    if not (name.startswith("layers_") and int(name.removeprefix("layers_")) >= num_layers)
  }
  return {**variables, "params": kept}


@dataclasses.dataclass(frozen=True)
class BertScorer:
  """BERTScore of one encoder at one layer (module doc). Build with `from_directory`."""

  encoder: hf_text.Encoder  # Cut to `num_layers` layers: its output is the scoring layer.
  variables: Any
  tokenizer: hf_tokenizers.HFTokenizer
  family: str
  model_type: str
  num_layers: int
  max_length: int
  idf: bool = False
  baseline: np.ndarray | None = None  # float32 [3]: P, R, F baselines; None: no rescaling.

  @classmethod
  def from_directory(
    cls,
    directory: str | pathlib.Path,
    num_layers: int | None = None,
    idf: bool = False,
    baseline_file: str | pathlib.Path | None = None,
    model_type: str | None = None,
  ) -> BertScorer:
    """A Hugging Face bert / roberta / distilbert / deberta directory (config.json, model.safetensors and the
    tokenizer's files) -> a scorer. `num_layers` None: MODEL_LAYERS[model_type] (model_type None: the
    directory's, model_type_of); `baseline_file`: rescale with its row `num_layers`."""
    directory = pathlib.Path(directory)
    model_type = model_type or model_type_of(directory)
    encoder, variables, family = hf_text.import_directory(directory)
    if num_layers is None:
      if model_type not in MODEL_LAYERS:
        raise BertScoreError(
          f"{directory}: model type {model_type!r} has no default layer in bert-score's model2layers; give num_layers"
        )
      num_layers = MODEL_LAYERS[model_type]
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or not 0 <= num_layers <= encoder.num_layers:
      raise BertScoreError(
        f"num_layers {num_layers!r}: {directory} has layers 0 to {encoder.num_layers} (0: the embeddings)"
      )
    tokenizer, model_max_length = hf_tokenizers.from_directory(directory, family)
    if len(tokenizer) > encoder.vocab_size:
      raise BertScoreError(
        f"{directory}: the tokenizer has {len(tokenizer)} tokens, the encoder's embedding {encoder.vocab_size} rows"
      )
    offset = 0
    if family == "roberta":
      if tokenizer.pad_id != encoder.pad_id:
        raise BertScoreError(
          f"{directory}: the tokenizer's pad id {tokenizer.pad_id} is not config.json's "
          f"pad_token_id {encoder.pad_id} (RoBERTa's positions count from it)"
        )
      offset = encoder.pad_id + 1  # RoBERTa's positions start after the pad id.
    capacity = encoder.max_positions - offset
    max_length = capacity if model_max_length is None else min(model_max_length, capacity)
    baseline = None if baseline_file is None else read_baseline(baseline_file, num_layers)
    return cls(
      encoder.clone(num_layers=num_layers),
      _layer_variables(variables, num_layers),
      tokenizer,
      family,
      model_type,
      num_layers,
      max_length,
      idf,
      baseline,
    )

  def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
    """The package's sent_encode: each text stripped -> [CLS] pieces [SEP], at most max_length ids."""
    return [self.tokenizer.encode(sentence.strip(), max_length=self.max_length) for sentence in texts]

  def _weights(self, ids: list[int], table: dict[int, float] | None, unseen: float) -> np.ndarray:
    if table is None:
      specials = (self.tokenizer.start_id, self.tokenizer.end_id)
      return np.asarray([0.0 if token in specials else 1.0 for token in ids], np.float32)
    return np.asarray([table.get(token, unseen) for token in ids], np.float32)

  def _token_batch(self, rows: list[list[int]], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ids -> tokens int32, mask bool [batch_size, bucket]; rows past len(rows) are [CLS] [SEP]
    fillers (every row needs a real piece) whose states are dropped."""
    length = bucket_length(max(len(row) for row in rows), self.max_length)
    tokens = np.full((batch_size, length), self.tokenizer.pad_id, np.int32)
    tokens[len(rows) :, :2] = self.tokenizer.start_id, self.tokenizer.end_id
    mask = np.zeros((batch_size, length), bool)
    mask[len(rows) :, :2] = True
    for index, row in enumerate(rows):
      tokens[index, : len(row)], mask[index, : len(row)] = row, True
    return tokens, mask

  def _unit_batch(
    self, units: list[np.ndarray], weights: list[np.ndarray], batch_size: int
  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Texts' unit vectors [pieces, hidden] and weights [pieces] -> units float32 [batch_size, bucket,
    hidden], mask bool, weights float32 [batch_size, bucket]; rows past len(units) are empty fillers whose
    scores are dropped."""
    length = bucket_length(max(len(row) for row in units), self.max_length)
    padded = np.zeros((batch_size, length, units[0].shape[-1]), np.float32)
    mask = np.zeros((batch_size, length), bool)
    padded_weights = np.zeros((batch_size, length), np.float32)
    for index, (row, row_weights) in enumerate(zip(units, weights)):
      padded[index, : len(row)], mask[index, : len(row)], padded_weights[index, : len(row)] = row, True, row_weights
    return padded, mask, padded_weights

  def score(
    self,
    candidates: Sequence[str],
    references: Sequence[str] | Sequence[Sequence[str]],
    batch_size: int = 64,
    mesh: jax.sharding.Mesh | None = None,
  ) -> dict[str, Any]:
    """P, R, F1 of each candidate against its reference (a string) or references (a list of strings: the
    maximum over them), idf weights from these references when `idf`, rescaled when a baseline is set.

    Returns {"P", "R", "F1": float32 [candidates], "P_mean", "R_mean", "F1_mean": their means (floats)}.
    `mesh`: batches sharded over its 'data' axis (batch_size a multiple of its size); where it spans
    processes, every process calls with the same texts and gets every score.
    """
    if isinstance(candidates, str) or isinstance(references, str) or len(candidates) != len(references):
      raise BertScoreError(
        "candidates and references must be lists of the same length "
        f"(got {type(candidates).__name__} / {type(references).__name__})"
      )
    groups = [[group] if isinstance(group, str) else list(group) for group in references]
    if any(not group or not all(isinstance(ref, str) for ref in group) for group in groups):
      raise BertScoreError("references: each candidate needs one reference string or a non-empty list of them")
    if not all(isinstance(cand, str) for cand in candidates):
      raise BertScoreError("candidates: every candidate must be a string")
    if batch_size < 1 or (mesh is not None and batch_size % mesh.shape["data"]):
      raise BertScoreError(
        f"batch_size {batch_size}: must be positive"
        + ("" if mesh is None else f" and a multiple of the mesh's data axis {mesh.shape['data']}")
      )
    flat_refs = [ref for group in groups for ref in group]
    flat_cands = [cand for cand, group in zip(candidates, groups) for _ in group]
    if not flat_refs:
      return dict(
        P=np.zeros(0, np.float32),
        R=np.zeros(0, np.float32),
        F1=np.zeros(0, np.float32),
        P_mean=math.nan,
        R_mean=math.nan,
        F1_mean=math.nan,
      )
    # Each distinct text is tokenised and encoded once, however many pairs hold it (as the package does).
    texts = list(dict.fromkeys([*flat_cands, *flat_refs]))
    text_ids = self.token_ids(texts)
    row_of = {text_: row for row, text_ in enumerate(texts)}
    cand_rows, ref_rows = [row_of[cand] for cand in flat_cands], [row_of[ref] for ref in flat_refs]
    # idf over the references as given (a reference repeated counts as often as it appears), as the package.
    table, unseen = idf_table([text_ids[row] for row in ref_rows]) if self.idf else (None, 0.0)
    weights = [self._weights(ids, table, unseen) for ids in text_ids]

    encode, match, variables, put = embed, greedy_match, self.variables, jnp.asarray
    if mesh is not None:
      # Global arrays built from the host copy that every process holds (every process has all the texts):
      # jax.device_put cannot place arrays on another process's devices.
      encode, match = _jitted_for(mesh)
      variables = sharding.from_host(variables, sharding.replicated(mesh))
      put = functools.partial(sharding.from_host, sharding=sharding.data_sharded(mesh))
    # Texts, then pairs, of similar length batched together: fewer padded positions.
    units: list[np.ndarray] = [np.zeros(0)] * len(texts)  # Each text's unit vectors [pieces, hidden].
    order = np.argsort([-len(ids) for ids in text_ids], kind="stable")
    for start in range(0, len(order), batch_size):
      chosen = order[start : start + batch_size]
      tokens, mask = self._token_batch([text_ids[row] for row in chosen], batch_size)
      states = np.asarray(encode(self.encoder, variables, put(tokens), put(mask)))
      for index, row in enumerate(chosen):
        units[row] = states[index, : len(text_ids[row])]
    order = np.argsort([-max(len(text_ids[c]), len(text_ids[r])) for c, r in zip(cand_rows, ref_rows)], kind="stable")
    pair_results = np.zeros((len(flat_refs), 3), np.float32)
    for start in range(0, len(order), batch_size):
      chosen = order[start : start + batch_size]
      cand_batch = self._unit_batch(
        [units[cand_rows[i]] for i in chosen], [weights[cand_rows[i]] for i in chosen], batch_size
      )
      ref_batch = self._unit_batch(
        [units[ref_rows[i]] for i in chosen], [weights[ref_rows[i]] for i in chosen], batch_size
      )
      arrays = [put(array) for array in (*cand_batch, *ref_batch)]
      pair_results[chosen] = np.asarray(match(*arrays))[: len(chosen)]

    bounds = np.cumsum([0] + [len(group) for group in groups])
    results = np.stack([pair_results[begin:end].max(axis=0) for begin, end in zip(bounds[:-1], bounds[1:])])
    if self.baseline is not None:
      results = rescale(results, self.baseline)
    precision, recall, f1 = results[:, 0], results[:, 1], results[:, 2]
    return dict(
      P=precision,
      R=recall,
      F1=f1,
      P_mean=float(precision.mean()),
      R_mean=float(recall.mean()),
      F1_mean=float(f1.mean()),
    )


@base.register("bertscore")
class BERTScore(base.Evaluator):
  """BERTScore of the generated reports against their references (bert-score's P, R, F1, averaged) with a
  Hugging Face encoder directory, in jitted batches sharded over the mesh's 'data' axis: model, layer (None:
  bert-score's default for the model type), idf, baseline (a rescaling baseline file, or None), batch_size.
  Keys "BERTScore/P", "BERTScore/R", "BERTScore/F1"."""

  FIELDS = {"model": base.REQUIRED, "layer": None, "idf": False, "baseline": None, "batch_size": 64}
  HEADLINE = ("BERTScore/F1",)

  def __init__(self, config: Mapping[str, Any], mesh: jax.sharding.Mesh | None = None, where: str = "bertscore"):
    super().__init__(config, mesh, where)
    base.positive_int(self.config["batch_size"], f"{where}.batch_size")
    self.mesh = mesh
    self.scorer = BertScorer.from_directory(
      self.config["model"],
      num_layers=self.config["layer"],
      idf=bool(self.config["idf"]),
      baseline_file=self.config["baseline"],
    )

  def __call__(self, predictions: base.Predictions, progress: base.Progress | None = None) -> dict[str, Any]:
    rows = self.config["batch_size"]
    if self.mesh is not None:  # The scorer takes a multiple of the 'data' axis: every device gets equal rows.
      data = self.mesh.shape[sharding.DATA_AXIS]
      rows = -(-rows // data) * data
    result = self.scorer.score(
      list(predictions.generated), list(predictions.references), batch_size=rows, mesh=self.mesh
    )
    if progress is not None:
      progress(2 * len(predictions.ids))
    return {f"BERTScore/{name}": result[f"{name}_mean"] for name in ("P", "R", "F1")}

  def provenance(self) -> dict[str, Any]:
    return {
      "model": str(self.config["model"]),
      "model_type": self.scorer.model_type,
      "layer": self.scorer.num_layers,
      "idf": self.scorer.idf,
      "baseline": None if self.config["baseline"] is None else str(self.config["baseline"]),
      "batch_size": self.config["batch_size"],
    }
