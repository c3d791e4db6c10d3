"""CheXbert (Smit et al., EMNLP 2020): a BERT report labeler for the 14 CheXpert observations.

The reference (github.com/stanfordmlgroup/CheXbert, src/models/bert_labeler.py) is bert-base-uncased
(`BertModel`) whose last hidden state at [CLS] goes through dropout to 14 linear heads: 13 of 4 classes
(blank, positive, negative, uncertain) and one of 2 (blank, positive) for "No Finding".

Reports are prepared as its label.py does (src/bert_tokenizer.py): stripped, whitespace runs (newlines
included) collapsed to one space, stripped again (`clean_report`); then bert-base-uncased WordPiece,
[CLS] pieces [SEP], cut to 512 ids keeping the final [SEP]; an empty report is [CLS] [SEP]. A report's
class for each observation is the argmax of its head.

Labels in two conventions (`label_record`):
    classes                 blank / positive / negative / uncertain (label.py's CSV: NaN / 1 / 0 / -1)
    uncertain_as_positive   1 for positive or uncertain, else 0 (the clinical-efficacy convention of
                            report-generation papers)
"""

import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.encoders.text import TextEncoder

# src/constants.py CONDITIONS: the heads' order.
CONDITIONS = (
  "Enlarged Cardiomediastinum",
  "Cardiomegaly",
  "Lung Opacity",
  "Lung Lesion",
  "Edema",
  "Consolidation",
  "Pneumonia",
  "Atelectasis",
  "Pneumothorax",
  "Pleural Effusion",
  "Pleural Other",
  "Fracture",
  "Support Devices",
  "No Finding",
)
# Class ids of the heads (src/constants.py CLASS_MAPPING); "No Finding" has the first two only.
CLASSES = ("blank", "positive", "negative", "uncertain")
BLANK, POSITIVE, NEGATIVE, UNCERTAIN = range(4)
# label.py's CSV values of the classes (blank is an empty cell, NaN).
CLASS_VALUES = (None, 1, 0, -1)
MAX_TOKENS = 512  # bert_tokenizer.py: longer reports keep their first 511 ids and [SEP].

# bert-base-uncased, the released checkpoint's encoder (the heads count is not in the tensors' shapes).
BERT_BASE = dict(
  vocab_size=30522,
  hidden_size=768,
  num_layers=12,
  num_heads=12,
  intermediate_size=3072,
  max_positions=512,
  type_vocab_size=2,
)


def clean_report(text: str) -> str:
  """CheXbert's report cleaning (bert_tokenizer.py get_impressions_from_csv): strip, every whitespace run
  (newlines included) -> one space, strip."""
  return re.sub(r"\s+", " ", text.strip()).strip()


class CheXbert(nn.Module):
  """`bert_labeler`: a BERT encoder, dropout on the [CLS] state, 14 linear heads (`heads_0`...`heads_13`).

  __call__(tokens, mask) -> logits [batch, 14, 4]: tokens int32 [batch, length] ([CLS] first), mask
  [batch, length] (1: a real token); row j holds head j's logits in CLASSES order; "No Finding" (j = 13)
  has 2 classes, its last two columns are -inf (so an argmax over the row is the head's argmax).
  """

  vocab_size: int
  hidden_size: int
  num_layers: int
  num_heads: int
  intermediate_size: int
  max_positions: int = 512
  type_vocab_size: int = 2
  epsilon: float = 1e-12
  dropout_rate: float = 0.1
  dtype: Any = jnp.float32

  def setup(self):
    self.bert = TextEncoder(
      self.vocab_size,
      self.hidden_size,
      self.num_layers,
      self.num_heads,
      self.intermediate_size,
      self.max_positions,
      self.type_vocab_size,
      epsilon=self.epsilon,
      dropout_rate=self.dropout_rate,
      attention_dropout_rate=self.dropout_rate,
      dtype=self.dtype,
    )
    self.dropout = nn.Dropout(self.dropout_rate)
    self.heads = [
      nn.Dense(4 if index < len(CONDITIONS) - 1 else 2, dtype=self.dtype) for index in range(len(CONDITIONS))
    ]

  def __call__(self, tokens: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    cls_state = self.dropout(self.bert(tokens, mask, train=train)[:, 0], deterministic=not train)  # [batch, hidden]
    logits = []
    for head in self.heads:
      head_logits = head(cls_state).astype(jnp.float32)  # [batch, 4] or [batch, 2]
      logits.append(jnp.pad(head_logits, ((0, 0), (0, 4 - head_logits.shape[-1])), constant_values=-jnp.inf))
    return jnp.stack(logits, axis=1)  # [batch, 14, 4]


def classes_of(logits: Any) -> np.ndarray:
  """logits [batch, 14, 4] -> class ids int [batch, 14] (CLASSES order), each head's argmax."""
  return np.asarray(jnp.argmax(jnp.asarray(logits), axis=-1))


def label_record(classes: Any) -> dict[str, dict[str, Any]]:
  """One report's class ids [14] -> {"classes": {observation: "blank" | "positive" | "negative" |
  "uncertain"}, "values": {observation: 1 | 0 | -1 | None} (label.py's CSV), "uncertain_as_positive":
  {observation: 1 if positive or uncertain else 0}}."""
  classes = [int(value) for value in np.asarray(classes)]
  if len(classes) != len(CONDITIONS) or not all(0 <= value < len(CLASSES) for value in classes):
    raise ValueError(f"expected {len(CONDITIONS)} class ids in 0..{len(CLASSES) - 1}, got {classes}")
  return {
    "classes": {name: CLASSES[value] for name, value in zip(CONDITIONS, classes)},
    "values": {name: CLASS_VALUES[value] for name, value in zip(CONDITIONS, classes)},
    "uncertain_as_positive": {name: int(value in (POSITIVE, UNCERTAIN)) for name, value in zip(CONDITIONS, classes)},
  }


def uncertain_as_positive(classes: Any) -> np.ndarray:
  """Class ids int [..., 14] -> 0/1 int32 [..., 14]: 1 where positive or uncertain."""
  classes = np.asarray(classes)
  return ((classes == POSITIVE) | (classes == UNCERTAIN)).astype(np.int32)
