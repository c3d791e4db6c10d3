"""transformers' text encoders (`BertModel`, `RobertaModel`, `DistilBertModel`) -> cxrjax/models/encoders/text.py,
and `DebertaModel` (v1) -> cxrjax/models/encoders/deberta.py.

`encoder_source(family, path, prefix)` names the checkpoint tensor of one TextEncoder variable (the strict
name map of every importer of these encoders: CheXbert's checkpoint, Hugging Face directories):

    Flax path (TextEncoder)                      bert / roberta                   distilbert
    embeddings/word_embeddings/embedding         embeddings.word_embeddings.weight (both)
    embeddings/position_embeddings/embedding     embeddings.position_embeddings.weight (both)
    embeddings/token_type_embeddings/embedding   embeddings.token_type_embeddings.weight   (no table)
    embeddings/norm/{scale,bias}                 embeddings.LayerNorm.{weight,bias} (both)
    layers_i/attention/{query,key,value}         encoder.layer.i.attention.self.*  transformer.layer.i.attention.{q,k,v}_lin
    layers_i/attention/output                    ...attention.output.dense        ...attention.out_lin
    layers_i/attention/norm                      ...attention.output.LayerNorm    ...sa_layer_norm
    layers_i/intermediate                        ...intermediate.dense            ...ffn.lin1
    layers_i/output                              ...output.dense                  ...ffn.lin2
    layers_i/output_norm                         ...output.LayerNorm              ...output_layer_norm
Dense kernels are the transposed Linear weights; LayerNorm scale is `weight`. A deberta DebertaEncoder's map
(prefix "deberta." in hub checkpoints) is in its module's doc: the embeddings as bert's (no position table when
position_biased_input is false, no token type table when type_vocab_size is 0), encoder.rel_embeddings.weight,
and per layer attention.self.{in_proj,q_bias,v_bias,pos_proj,pos_q_proj} beside bert's other names.

`import_directory(directory)` reads a Hugging Face directory (config.json + model.safetensors, as
`save_pretrained` writes; a hub download of BertForPreTraining / RobertaForMaskedLM / DistilBertForMaskedLM /
DebertaForSequenceClassification (microsoft/deberta-xlarge-mnli) too, whose tensors carry the "bert." /
"roberta." / "distilbert." / "deberta." prefix and whose heads are left unused) into a TextEncoder (a
DebertaEncoder for model_type "deberta") and its variables; the sizes, epsilon and positions come from
config.json.

`architecture(tensors, family, prefix)` reads the sizes the tensors' shapes give (the head count is not
among them). Tensors no encoder variable uses but a checkpoint of the family may hold: the pooler
(`pooler.dense.*`, not part of the hidden states), and the position / token type id buffers older
transformers versions saved (accepted only when they hold the values the model computes itself,
`check_buffers`); in a DeBERTa checkpoint without position_biased_input, a position table (transformers
drops it on loading too).
"""

import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cxrjax.models.encoders import deberta, text
from cxrjax.weights import hf, store
from cxrjax.weights.store import WeightsError

FAMILIES = ("bert", "roberta", "distilbert", "deberta")
Encoder = text.TextEncoder | deberta.DebertaEncoder

_BERT_LAYER = {
  "attention/query": "attention.self.query",
  "attention/key": "attention.self.key",
  "attention/value": "attention.self.value",
  "attention/output": "attention.output.dense",
  "attention/norm": "attention.output.LayerNorm",
  "intermediate": "intermediate.dense",
  "output": "output.dense",
  "output_norm": "output.LayerNorm",
}
_DISTILBERT_LAYER = {
  "attention/query": "attention.q_lin",
  "attention/key": "attention.k_lin",
  "attention/value": "attention.v_lin",
  "attention/output": "attention.out_lin",
  "attention/norm": "sa_layer_norm",
  "intermediate": "ffn.lin1",
  "output": "ffn.lin2",
  "output_norm": "output_layer_norm",
}
_LEAVES = {
  "kernel": ("weight", np.transpose),
  "bias": ("bias", lambda a: a),
  "scale": ("weight", lambda a: a),
  "embedding": ("weight", lambda a: a),
}
# DebertaEncoder paths (after "layers_i/") -> DebertaLayer names (after "encoder.layer.i.").
_DEBERTA_LAYER = {
  **_BERT_LAYER,
  "attention/in_proj": "attention.self.in_proj",
  "attention/pos_proj": "attention.self.pos_proj",
  "attention/pos_q_proj": "attention.self.pos_q_proj",
}
_DEBERTA_BIASES = {"attention/q_bias": "attention.self.q_bias", "attention/v_bias": "attention.self.v_bias"}
POOLER = ("pooler.dense.weight", "pooler.dense.bias")
BUFFERS = ("embeddings.position_ids", "embeddings.token_type_ids")


def _check_family(family: str) -> None:
  if family not in FAMILIES:
    raise ValueError(f"unknown text encoder family {family!r}; known: {FAMILIES}")


def encoder_source(family: str, path: str, prefix: str = "") -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  """A "/"-joined TextEncoder variable path ("layers_0/attention/query/kernel") -> (the checkpoint tensor's
  name, with `prefix` ("bert."), its layout change to Flax). KeyError for a path outside the map."""
  _check_family(family)
  if family == "deberta":
    return _deberta_source(path, prefix)
  module, _, leaf = path.rpartition("/")
  name, to_flax = _LEAVES[leaf]
  if module == "embeddings/norm":
    return f"{prefix}embeddings.LayerNorm.{name}", to_flax
  match = re.fullmatch(r"embeddings/(word|position|token_type)_embeddings", module)
  if match and not (family == "distilbert" and match.group(1) == "token_type"):
    return f"{prefix}embeddings.{match.group(1)}_embeddings.{name}", to_flax
  match = re.fullmatch(r"layers_(\d+)/(.+)", module)
  if match:
    index, part = match.groups()
    if family == "distilbert":
      return f"{prefix}transformer.layer.{index}.{_DISTILBERT_LAYER[part]}.{name}", to_flax
    return f"{prefix}encoder.layer.{index}.{_BERT_LAYER[part]}.{name}", to_flax
  raise KeyError(path)


def _deberta_source(path: str, prefix: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  """encoder_source of a DebertaEncoder variable."""
  match = re.fullmatch(r"layers_(\d+)/(attention/[qv]_bias)", path)
  if match:
    return f"{prefix}encoder.layer.{match.group(1)}.{_DEBERTA_BIASES[match.group(2)]}", lambda a: a
  module, _, leaf = path.rpartition("/")
  name, to_flax = _LEAVES[leaf]
  if module == "rel_embeddings":
    return f"{prefix}encoder.rel_embeddings.{name}", to_flax
  if module == "embeddings/norm":
    return f"{prefix}embeddings.LayerNorm.{name}", to_flax
  match = re.fullmatch(r"embeddings/(word|position|token_type)_embeddings", module)
  if match:
    return f"{prefix}embeddings.{match.group(1)}_embeddings.{name}", to_flax
  match = re.fullmatch(r"layers_(\d+)/(.+)", module)
  if match and match.group(2) in _DEBERTA_LAYER:
    return f"{prefix}encoder.layer.{match.group(1)}.{_DEBERTA_LAYER[match.group(2)]}.{name}", to_flax
  raise KeyError(path)


def architecture(tensors: dict[str, np.ndarray], family: str, prefix: str, source: str) -> dict[str, int]:
  """The TextEncoder sizes the tensors' shapes give: vocab_size, hidden_size, num_layers,
  intermediate_size, max_positions, type_vocab_size (deberta: max_positions only where a position table is).
  A checkpoint without the embedding tables is a WeightsError naming `source`."""
  _check_family(family)
  word, position = f"{prefix}embeddings.word_embeddings.weight", f"{prefix}embeddings.position_embeddings.weight"
  # DeBERTa's released models read relative positions only: no absolute table.
  for name in (word,) if family == "deberta" and position not in tensors else (word, position):
    if name not in tensors or np.ndim(tensors[name]) != 2:
      raise WeightsError(f"{source}: no 2-D tensor {name}; not a {family} encoder checkpoint")
  stack = "transformer.layer" if family == "distilbert" else "encoder.layer"
  pattern = re.compile(re.escape(f"{prefix}{stack}.") + r"(\d+)\.")
  layers = {int(match.group(1)) for name in tensors if (match := pattern.match(name))}
  if layers != set(range(len(layers))):
    raise WeightsError(f"{source}: layer numbers {sorted(layers)} of {prefix}{stack} are not 0..N-1")
  intermediate = encoder_source(family, "layers_0/intermediate/kernel", prefix)[0]
  if intermediate not in tensors:
    raise WeightsError(f"{source}: no tensor {intermediate}; not a {family} encoder checkpoint")
  token_types = tensors.get(f"{prefix}embeddings.token_type_embeddings.weight")
  sizes = dict(
    vocab_size=int(tensors[word].shape[0]),
    hidden_size=int(tensors[word].shape[1]),
    num_layers=len(layers),
    intermediate_size=int(tensors[intermediate].shape[0]),
    type_vocab_size=0 if family == "distilbert" or token_types is None else int(token_types.shape[0]),
  )
  if position in tensors:
    sizes["max_positions"] = int(tensors[position].shape[0])
  return sizes


def check_buffers(tensors: dict[str, np.ndarray], prefix: str, source: str) -> list[str]:
  """The id buffers older transformers saved (BUFFERS, under `prefix`) present in `tensors`, after checking
  that they hold what the model computes (positions 0, 1, ...; token types 0): a WeightsError naming
  `source` and the tensor otherwise. Returns their names, for the importer to leave unused."""
  present = []
  for buffer in BUFFERS:
    name = prefix + buffer
    if name not in tensors:
      continue
    value = np.asarray(tensors[name]).reshape(-1)
    expected = np.arange(value.size) if buffer.endswith("position_ids") else np.zeros(value.size)
    if not np.array_equal(value, expected):
      raise WeightsError(
        f"{source}: buffer {name} holds other ids than the model's own "
        f"({'0, 1, 2, ...' if buffer.endswith('position_ids') else 'all 0'}); not supported"
      )
    present.append(name)
  return present


# The pretraining heads of hub checkpoints (BertForPreTraining, RobertaForMaskedLM, DistilBertForMaskedLM): not
# part of the encoder.
HEAD_PREFIXES = {
  "bert": ("cls.",),
  "roberta": ("lm_head.",),
  "distilbert": ("vocab_transform.", "vocab_layer_norm.", "vocab_projector."),
  # DebertaForSequenceClassification (the -mnli models), DebertaForMaskedLM (both head layouts).
  "deberta": ("pooler.", "classifier.", "cls.", "lm_predictions."),
}


def _field(hf_config: dict, name: str, source: str, kind: type = int) -> Any:
  value = hf_config.get(name)
  if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else kind):
    raise WeightsError(f"{source}: {name} is {value!r}; expected a {kind.__name__}")
  return value


def _deberta_fields(hf_config: dict, source: str) -> dict[str, Any]:
  """config.json of a deberta model -> DebertaEncoder fields; absent settings take DebertaConfig's defaults."""
  if hf_config.get("hidden_act", "gelu") != "gelu":
    raise WeightsError(f'{source}: hidden_act {hf_config.get("hidden_act")!r} is not supported (only "gelu")')
  if hf_config.get("talking_head", False):
    raise WeightsError(f"{source}: talking_head is not supported")
  if hf_config.get("embedding_size", hf_config.get("hidden_size")) != hf_config.get("hidden_size"):
    raise WeightsError(
      f"{source}: embedding_size {hf_config['embedding_size']!r} other than hidden_size is not supported"
    )
  terms = hf_config.get("pos_att_type") or []
  if isinstance(terms, str):  # Older configs: "c2p|p2c", as DebertaConfig reads it.
    terms = [term.strip() for term in terms.lower().split("|")]
  if not isinstance(terms, list) or not set(terms) <= set(deberta.POSITION_TERMS):
    raise WeightsError(f"{source}: pos_att_type {terms!r} is not a list of {list(deberta.POSITION_TERMS)}")
  flags = {}
  for name, default in (("relative_attention", False), ("position_biased_input", True)):
    flags[name] = hf_config.get(name, default)
    if not isinstance(flags[name], bool):
      raise WeightsError(f"{source}: {name} is {flags[name]!r}; expected true or false")
  settings = {**dict(type_vocab_size=0, layer_norm_eps=1e-7, max_relative_positions=-1, pad_token_id=0), **hf_config}
  return dict(
    vocab_size=_field(hf_config, "vocab_size", source),
    hidden_size=_field(hf_config, "hidden_size", source),
    num_layers=_field(hf_config, "num_hidden_layers", source),
    num_heads=_field(hf_config, "num_attention_heads", source),
    intermediate_size=_field(hf_config, "intermediate_size", source),
    max_positions=_field(hf_config, "max_position_embeddings", source),
    type_vocab_size=_field(settings, "type_vocab_size", source),
    position_biased_input=flags["position_biased_input"],
    relative_attention=flags["relative_attention"],
    max_relative_positions=_field(settings, "max_relative_positions", source),
    pos_att_type=tuple(dict.fromkeys(terms)),
    pad_id=_field(settings, "pad_token_id", source),
    epsilon=float(_field(settings, "layer_norm_eps", source, float)),
  )


def encoder_fields(hf_config: dict, source: str) -> dict[str, Any]:
  """config.json of a bert / roberta / distilbert model -> TextEncoder fields, of a deberta model ->
  DebertaEncoder fields (dropout 0: inference)."""
  family = hf_config.get("model_type")
  if family not in FAMILIES:
    raise WeightsError(f"{source}: model_type {family!r} is not a text encoder; known: {list(FAMILIES)}")
  if family == "deberta":
    return _deberta_fields(hf_config, source)
  if family == "distilbert":
    if hf_config.get("activation", "gelu") != "gelu" or hf_config.get("sinusoidal_pos_embds", False):
      raise WeightsError(f"{source}: only gelu activations and learned positions are supported")
    return dict(
      vocab_size=_field(hf_config, "vocab_size", source),
      hidden_size=_field(hf_config, "dim", source),
      num_layers=_field(hf_config, "n_layers", source),
      num_heads=_field(hf_config, "n_heads", source),
      intermediate_size=_field(hf_config, "hidden_dim", source),
      max_positions=_field(hf_config, "max_position_embeddings", source),
      type_vocab_size=0,
      epsilon=1e-12,
    )  # DistilBERT's LayerNorms are built with eps=1e-12 whatever the config.
  if hf_config.get("hidden_act", "gelu") != "gelu":
    raise WeightsError(f'{source}: hidden_act {hf_config.get("hidden_act")!r} is not supported (only "gelu")')
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise WeightsError(
      f'{source}: position_embedding_type {hf_config["position_embedding_type"]!r} is not supported (only "absolute")'
    )
  fields = dict(
    vocab_size=_field(hf_config, "vocab_size", source),
    hidden_size=_field(hf_config, "hidden_size", source),
    num_layers=_field(hf_config, "num_hidden_layers", source),
    num_heads=_field(hf_config, "num_attention_heads", source),
    intermediate_size=_field(hf_config, "intermediate_size", source),
    max_positions=_field(hf_config, "max_position_embeddings", source),
    type_vocab_size=_field(hf_config, "type_vocab_size", source),
    epsilon=float(_field(hf_config, "layer_norm_eps", source, float)),
  )
  if family == "roberta":
    fields.update(positions="padding_offset", pad_id=_field(hf_config, "pad_token_id", source))
  return fields


def import_directory(directory: str | pathlib.Path) -> tuple[Encoder, dict[str, Any], str]:
  """A Hugging Face bert / roberta / distilbert / deberta directory -> (TextEncoder or DebertaEncoder, its
  variables, the family); strict: every encoder variable from its tensor, every tensor used but the pooler,
  id buffers holding the model's own ids, the heads (HEAD_PREFIXES) and an unread DeBERTa position table."""
  directory = pathlib.Path(directory)
  config_path = directory / hf.CONFIG_FILE
  if not config_path.is_file():
    raise WeightsError(f"{config_path}: not found; expected a Hugging Face model directory")
  try:
    hf_config = json.loads(config_path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise WeightsError(f"{config_path}: not valid JSON ({error})") from None
  if not isinstance(hf_config, dict):
    raise WeightsError(f"{config_path}: expected a JSON object")
  fields = encoder_fields(hf_config, str(config_path))
  family, source = hf_config["model_type"], str(directory)
  tensors = hf.read_tensors(directory)
  prefix = f"{family}." if any(name.startswith(f"{family}.") for name in tensors) else ""
  sizes = architecture(tensors, family, prefix, source)
  if family == "deberta" and not fields["position_biased_input"]:
    sizes.pop("max_positions", None)  # A table the model does not read says nothing of its length.
  for name, value in sizes.items():
    if fields[name] != value:
      raise WeightsError(f"{config_path}: gives {name} {fields[name]}, the tensors {value}")
  unused = set(check_buffers(tensors, prefix, source)) | {prefix + name for name in POOLER}
  if family == "deberta" and not fields["position_biased_input"]:
    unused.add(f"{prefix}embeddings.position_embeddings.weight")
  encoder = deberta.DebertaEncoder(**fields) if family == "deberta" else text.TextEncoder(**fields)
  tokens = jnp.zeros((1, 2), jnp.int32)
  abstract = jax.eval_shape(lambda: encoder.init(jax.random.key(0), tokens, jnp.ones_like(tokens)))
  variables = store.strict_map(
    tensors,
    abstract,
    lambda path: encoder_source(family, "/".join(path[1:]), prefix),
    source,
    f"the {family} encoder of its config.json",
    ignored=lambda name: name in unused or (bool(prefix) and name.startswith(HEAD_PREFIXES[family])),
  )
  return encoder, variables, family
