"""Salesforce BLIP captioning checkpoints (`BlipForConditionalGeneration`, e.g.
Salesforce/blip-image-captioning-base) -> cxrjax/models/blip.py, a family of cxrjax/weights/hf.py (added to
`hf.FAMILIES` at the end).

The model section comes from config.json (`vision_config`, `text_config`); a field config.json leaves out
takes transformers' default for it (BlipTextConfig / BlipVisionConfig, 5.x), as `from_pretrained` does, so
blip-base's 12 text heads come from its file, not from BlipTextConfig's default of 8.

Tensor map (flax path <- transformers name; Dense kernels are the transposed Linear weights):
    image_encoder/embeddings/class_embedding [D]         vision_model.embeddings.class_embedding (1, 1, D)
    image_encoder/embeddings/position_embedding [N, D]   vision_model.embeddings.position_embedding (1, N, D)
    image_encoder/embeddings/patch_embedding             vision_model.embeddings.patch_embedding (OIHW -> HWIO)
    image_encoder/layers_i/self_attn/{q,k,v}_proj        vision_model.encoder.layers.i.self_attn.qkv, rows
                                                         split in q, k, v order
    image_encoder/layers_i/self_attn/out_proj            ...self_attn.projection
    image_encoder/layers_i/{layer_norm1,layer_norm2,mlp/fc1,mlp/fc2}, image_encoder/post_layernorm
    embeddings/{word_embeddings,position_embeddings}     text_decoder.bert.embeddings.*_embeddings
    embeddings/norm                                      text_decoder.bert.embeddings.LayerNorm
    decoder/layers_i/...                                 text_decoder.bert.encoder.layer.i... (bert.py's doc)
    head_dense, head_norm                                text_decoder.cls.predictions.transform.{dense,LayerNorm}
    output_bias                                          text_decoder.cls.predictions.bias
The output layer is tied to the word embeddings: transformers 5 checkpoints leave out
`cls.predictions.decoder.{weight,bias}`; older ones hold them, and they are accepted only when equal to
the word embeddings and `cls.predictions.bias` (`check_tensors`).
"""

from collections.abc import Callable, Mapping
from typing import Any

import ml_collections
import numpy as np

from cxrjax.core import recipes
from cxrjax.weights import hf
from cxrjax.weights.store import WeightsError

MODEL_NAME = "blip"

# transformers 5.x defaults of the fields read (BlipTextConfig, BlipVisionConfig); tests/weights/
# test_hf_blip.py checks them against transformers.
TEXT_DEFAULTS = dict(
  vocab_size=30524,
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=8,
  max_position_embeddings=512,
  hidden_act="gelu",
  layer_norm_eps=1e-12,
  hidden_dropout_prob=0.0,
  attention_probs_dropout_prob=0.0,
  bos_token_id=30522,
  pad_token_id=0,
  sep_token_id=102,
)
VISION_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  image_size=384,
  patch_size=16,
  hidden_act="gelu",
  layer_norm_eps=1e-5,
)
TIED = {
  "text_decoder.cls.predictions.decoder.weight": "text_decoder.bert.embeddings.word_embeddings.weight",
  "text_decoder.cls.predictions.decoder.bias": "text_decoder.cls.predictions.bias",
}
# BLIP's tokenizer: bert-base-uncased's vocabulary, then [DEC] (the bos, 30522) and [ENC] (30523).
ADDED_TOKENS = ("[DEC]", "[ENC]")
PREPROCESSING = dict(normalization="clip", resize_filter="bicubic", resize_rule="square")


def _fields(hf_config: Mapping[str, Any], key: str, defaults: dict, source: str) -> dict:
  section = hf_config.get(key) or {}
  if not isinstance(section, Mapping):
    raise WeightsError(f"{source}: `{key}` is not an object")
  values = {name: section.get(name, default) for name, default in defaults.items()}
  for name, value in values.items():
    if value is None or (isinstance(default := defaults[name], (int, float)) and not isinstance(value, (int, float))):
      raise WeightsError(f"{source}: {key}.{name} is {value!r}; expected a {type(default).__name__}")
  return values


def _text(hf_config, source: str = "config.json") -> dict:
  return _fields(hf_config, "text_config", TEXT_DEFAULTS, source)


def _vision(hf_config, source: str = "config.json") -> dict:
  return _fields(hf_config, "vision_config", VISION_DEFAULTS, source)


def model_section(hf_config: Mapping[str, Any], source: str) -> dict:
  """config.json -> the `model` section of cxrjax/models/blip.py (no prompt; `with_prompt` adds one)."""
  text, vision = _text(hf_config, source), _vision(hf_config, source)
  for key, values in (("text_config", text), ("vision_config", vision)):
    if values["hidden_act"] != "gelu":
      raise WeightsError(f'{source}: {key}.hidden_act {values["hidden_act"]!r} is not supported (only "gelu")')
  # text_config.encoder_hidden_size is not read: BlipConfig sets it to the vision width whatever the file
  # says, and the cross-attention here reads the memory's width.
  for key, values, heads in (
    ("text_config", text, "num_attention_heads"),
    ("vision_config", vision, "num_attention_heads"),
  ):
    if values["hidden_size"] % values[heads]:
      raise WeightsError(
        f"{source}: {key}.hidden_size {values['hidden_size']} is not divisible by {heads} {values[heads]}"
      )
  image_size, patch_size = vision["image_size"], vision["patch_size"]
  if not isinstance(image_size, int) or not isinstance(patch_size, int) or image_size % patch_size:
    raise WeightsError(
      f"{source}: vision_config.image_size {image_size!r} is not a multiple of patch_size {patch_size!r}"
    )
  encoder = dict(
    image_size=image_size,
    patch_size=patch_size,
    hidden_size=vision["hidden_size"],
    num_layers=vision["num_hidden_layers"],
    num_heads=vision["num_attention_heads"],
    mlp_dim=vision["intermediate_size"],
    layer_norm_eps=float(vision["layer_norm_eps"]),
    activation="gelu",
    patch_bias=True,
    pre_norm=False,
    preprocessing=dict(PREPROCESSING),
  )
  return dict(
    name=MODEL_NAME,
    encoder=encoder,
    hidden_size=text["hidden_size"],
    num_heads=text["num_attention_heads"],
    num_layers=text["num_hidden_layers"],
    intermediate_size=text["intermediate_size"],
    layer_norm_eps=float(text["layer_norm_eps"]),
    max_positions=text["max_position_embeddings"],
    dropout_rate=float(text["hidden_dropout_prob"]),
    attention_dropout_rate=float(text["attention_probs_dropout_prob"]),
    prompt_ids=(),
    cache_length=min(64, text["max_position_embeddings"]),
    dtype="float32",
  )


def with_prompt(section: Mapping[str, Any], prompt_ids) -> dict:
  """The model section with a prompt: `prompt_ids` from the start token ([DEC] a picture of)."""
  prompt_ids = tuple(int(i) for i in prompt_ids)
  room = section["max_positions"] - (len(prompt_ids) - 1)  # Text positions left after the prefix.
  if room < 2:
    raise WeightsError(
      f"a prompt of {len(prompt_ids)} tokens leaves no room in {section['max_positions']} text positions"
    )
  return dict(section, prompt_ids=prompt_ids, cache_length=min(section["cache_length"], room))


def vocab_size(hf_config: Mapping[str, Any]) -> int:
  return int(_text(hf_config)["vocab_size"])


def special_tokens(hf_config: Mapping[str, Any]) -> dict:
  """The tokenizer roles: generation starts at [DEC] (text_config.bos_token_id) and ends at [SEP]
  (sep_token_id, not the config's eos), as BlipForConditionalGeneration.generate."""
  return dict(start_token="[DEC]", end_token="[SEP]", pad_token="[PAD]", extra=ADDED_TOKENS)


def special_ids(hf_config: Mapping[str, Any]) -> dict:
  """The ids the tokenizer's roles must have (start, end, pad), from config.json."""
  text = _text(hf_config)
  return dict(start_id=text["bos_token_id"], end_id=text["sep_token_id"], pad_id=text["pad_token_id"])


def _transpose(array: np.ndarray) -> np.ndarray:
  return array.T


def _qkv_rows(block: int) -> Callable[[np.ndarray], np.ndarray]:
  """The q (0), k (1) or v (2) third of a fused qkv weight [3D, D] (transposed) or bias [3D]."""

  def convert(array: np.ndarray) -> np.ndarray:
    third = array.shape[0] // 3
    rows = array[block * third : (block + 1) * third]
    return rows.T if rows.ndim == 2 else rows

  return convert


_LINEAR = {"kernel": ("weight", _transpose), "bias": ("bias", lambda a: a)}
_NORM = {"scale": ("weight", lambda a: a), "bias": ("bias", lambda a: a)}
_BERT_ATTENTION = {"query": "self.query", "key": "self.key", "value": "self.value", "output": "output.dense"}
_BERT_LAYER = {"intermediate": "intermediate.dense", "output": "output.dense"}


def _linear_or_norm(prefix: str, leaf: str, norm: bool) -> tuple[str, Callable]:
  table = _NORM if norm else _LINEAR
  if leaf not in table:
    raise KeyError(leaf)
  name, convert = table[leaf]
  return f"{prefix}.{name}", convert


def _vision_source(parts: list[str]) -> tuple[str, Callable]:
  root = "vision_model"
  if parts[0] == "embeddings":
    name = parts[1]
    if name == "class_embedding":
      return f"{root}.embeddings.class_embedding", lambda a: a.reshape(-1)
    if name == "position_embedding":
      return f"{root}.embeddings.position_embedding", lambda a: a.reshape(a.shape[-2], a.shape[-1])
    if name == "patch_embedding":
      if parts[2] == "kernel":  # torch OIHW -> flax HWIO.
        return f"{root}.embeddings.patch_embedding.weight", lambda a: a.transpose(2, 3, 1, 0)
      return _linear_or_norm(f"{root}.embeddings.patch_embedding", parts[2], norm=False)
  if parts[0] == "post_layernorm":
    return _linear_or_norm(f"{root}.post_layernorm", parts[1], norm=True)
  if parts[0].startswith("layers_"):
    layer = f"{root}.encoder.layers.{int(parts[0][len('layers_') :])}"
    if parts[1] in ("layer_norm1", "layer_norm2"):
      return _linear_or_norm(f"{layer}.{parts[1]}", parts[2], norm=True)
    if parts[1] == "mlp":
      return _linear_or_norm(f"{layer}.mlp.{parts[2]}", parts[3], norm=False)
    if parts[1] == "self_attn":
      if parts[2] == "out_proj":
        return _linear_or_norm(f"{layer}.self_attn.projection", parts[3], norm=False)
      block = ("q_proj", "k_proj", "v_proj").index(parts[2])
      return f"{layer}.self_attn.qkv.{_LINEAR[parts[3]][0]}", _qkv_rows(block)
  raise KeyError("/".join(parts))


def _decoder_source(parts: list[str]) -> tuple[str, Callable]:
  layer = f"text_decoder.bert.encoder.layer.{int(parts[0][len('layers_') :])}"
  if parts[1] in ("attention", "crossattention"):
    if parts[2] == "norm":
      return _linear_or_norm(f"{layer}.{parts[1]}.output.LayerNorm", parts[3], norm=True)
    return _linear_or_norm(f"{layer}.{parts[1]}.{_BERT_ATTENTION[parts[2]]}", parts[3], norm=False)
  if parts[1] == "output_norm":
    return _linear_or_norm(f"{layer}.output.LayerNorm", parts[2], norm=True)
  return _linear_or_norm(f"{layer}.{_BERT_LAYER[parts[1]]}", parts[2], norm=False)


def source_of(path: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  """A flax variable path ("params/decoder/layers_0/attention/query/kernel") -> (the transformers tensor
  name, its conversion to the flax array). KeyError for a path outside the map."""
  collection, *parts = path.split("/")
  if collection != "params" or not parts:
    raise KeyError(path)
  try:
    if parts[0] == "image_encoder":
      return _vision_source(parts[1:])
    if parts[0] == "embeddings":
      if parts[1] == "norm":
        return _linear_or_norm("text_decoder.bert.embeddings.LayerNorm", parts[2], norm=True)
      if parts[2] != "embedding":
        raise KeyError(path)
      return f"text_decoder.bert.embeddings.{parts[1]}.weight", lambda a: a
    if parts[0] == "decoder":
      return _decoder_source(parts[1:])
    if parts[0] == "head_dense":
      return _linear_or_norm("text_decoder.cls.predictions.transform.dense", parts[1], norm=False)
    if parts[0] == "head_norm":
      return _linear_or_norm("text_decoder.cls.predictions.transform.LayerNorm", parts[1], norm=True)
    if parts == ["output_bias"]:
      return "text_decoder.cls.predictions.bias", lambda a: a
  except (IndexError, ValueError) as e:
    raise KeyError(path) from e
  raise KeyError(path)


def ignored(name: str) -> bool:
  """File tensors the model does not read: the tied output layer (checked by `check_tensors`)."""
  return name in TIED


def check_tensors(tensors: Mapping[str, np.ndarray], source: str) -> None:
  """The tied output layer, where a checkpoint holds it, must equal what it is tied to."""
  for name, tied_to in TIED.items():
    if name in tensors and tied_to in tensors:
      if tensors[name].shape != tensors[tied_to].shape or not np.array_equal(tensors[name], tensors[tied_to]):
        raise WeightsError(f"{source}: {name} differs from {tied_to}, which it is tied to in BLIP")


def generation_settings(hf_config: Mapping[str, Any], generation_config: Mapping[str, Any]) -> dict:
  """What `BlipForConditionalGeneration.generate` runs with: nothing of the directory. It calls its text
  decoder's `generate`, whose generation config transformers (5.x) builds from text_config, which keeps no
  generation field, and not from generation_config.json or config.json's fields (tests/weights/
  test_hf_blip.py checks it): transformers' defaults, greedy and 20 new tokens (hf.generation_decode)."""
  del hf_config, generation_config
  return {}


def fit_lengths(config: ml_collections.ConfigDict, section: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """`config` (a BLIP's run config: seed 002's ROCO chest X-ray recipe, recipes.roco_chest_experiment;
  configs/roco_blip.py adds BLIP's beam 3) with data and decode lengths that fit the model's positions and
  cache; returns `config`, changed in place."""
  # Teacher forcing reads [prompt, caption after its start token]: prompt + max_length - 2 positions (a
  # small model's position table can be shorter than the recipe's captions); decoding, cache_length.
  prompt = max(len(section.get("prompt_ids", ())), 1)
  config.data.max_length = min(config.data.max_length, section["max_positions"] - prompt + 2)
  config.decode.max_length = min(config.decode.max_length, section["cache_length"], config.data.max_length - 1)
  return config


hf.FAMILIES.add(
  MODEL_NAME,  # config.json's model_type
  hf.Family(
    model_name=MODEL_NAME,
    model_section=model_section,
    vocab_size=vocab_size,
    special_tokens=special_tokens,
    source_of=source_of,
    ignored=ignored,
    recipe=recipes.roco_chest_experiment,  # Seed 002's ROCO chest X-ray recipe.
    fit_lengths=fit_lengths,
    generation_settings=generation_settings,
    with_prompt=with_prompt,
    check_tensors=check_tensors,
  ),
)
