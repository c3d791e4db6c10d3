"""GIT's Hugging Face checkpoint (transformers' `GitForCausalLM`, microsoft/git-base): config.json -> the
cxrjax `model` section, and the strict name map of its tensors onto `GitCaptioner` (cxrjax/models/git.py).

A family of cxrjax/weights/hf.py (added to `hf.FAMILIES` at the end), which reads the directory, builds the
model and applies the map (every variable from exactly one tensor; missing, unexpected and mis-shaped tensors
are errors). Layout changes: Linear [out, in] -> Dense kernel [in, out]; the patch convolution [out, in, kh,
kw] -> [kh, kw, in, out]; LayerNorm weight -> scale; embedding tables as they are.

    git.image_encoder.vision_model.<CLIP names>     image_encoder/... (models/encoders/vit.py)
    git.visual_projection.visual_projection.0 / .1  visual_projection / visual_projection_norm
    git.embeddings.{word,position}_embeddings       embeddings/{word,position}_embeddings
    git.embeddings.LayerNorm                        embeddings/norm
    git.encoder.layer.N.<BERT names>                text_decoder/layers_N/... (models/decoders/bert.py)
    output                                          output
"""

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from cxrjax.core import recipes
from cxrjax.weights import hf
from cxrjax.weights.store import WeightsError

MODEL_NAME = "git"
# GIT's image processor (CLIPImageProcessor): bicubic resize of the shortest side, centre crop, CLIP statistics.
PREPROCESSING = dict(normalization="clip", resize_filter="bicubic", resize_rule="shortest_side_crop")
CACHE_LENGTH = 64  # Text positions of the decoding cache: the ROCO recipe's captions (recipes.py).

_VISION = "git.image_encoder.vision_model."
_BERT_MODULES = {
  "attention/query": "attention.self.query",
  "attention/key": "attention.self.key",
  "attention/value": "attention.self.value",
  "attention/output": "attention.output.dense",
  "attention/norm": "attention.output.LayerNorm",
  "intermediate": "intermediate.dense",
  "output": "output.dense",
  "output_norm": "output.LayerNorm",
}


# transformers' GitConfig / GitVisionConfig defaults: what `from_pretrained` uses for a key config.json lacks.
TEXT_DEFAULTS = dict(
  vocab_size=30522,
  hidden_size=768,
  num_hidden_layers=6,
  num_attention_heads=12,
  intermediate_size=3072,
  hidden_act="gelu",
  hidden_dropout_prob=0.1,
  attention_probs_dropout_prob=0.1,
  max_position_embeddings=1024,
  layer_norm_eps=1e-12,
  tie_word_embeddings=False,
  num_image_with_embedding=None,
  position_embedding_type="absolute",
)
VISION_DEFAULTS = dict(
  hidden_size=768,
  intermediate_size=3072,
  num_hidden_layers=12,
  num_attention_heads=12,
  num_channels=3,
  image_size=224,
  patch_size=16,
  hidden_act="quick_gelu",
  layer_norm_eps=1e-5,
)


def _settings(hf_config: dict, source: str) -> tuple[dict, dict]:
  """(text, vision) settings of a GitConfig: config.json's values over transformers' defaults."""
  vision = hf_config.get("vision_config", {})
  if not isinstance(vision, dict):
    raise WeightsError(f'{source}: "vision_config" is not an object; expected a GitForCausalLM config.json')
  text = dict(TEXT_DEFAULTS, **{k: v for k, v in hf_config.items() if k in TEXT_DEFAULTS})
  vision = dict(VISION_DEFAULTS, **{k: v for k, v in vision.items() if k in VISION_DEFAULTS})
  return text, vision


def model_section(hf_config: dict, source: str) -> dict:
  """A GitConfig's config.json -> the cxrjax `model` section (name "git"); `source` names the file in
  errors. Sizes and epsilons come from the file (transformers' defaults where it has no such key)."""
  text, vision = _settings(hf_config, source)
  unsupported = []
  if text["num_image_with_embedding"] is not None:
    unsupported.append(f"num_image_with_embedding={text['num_image_with_embedding']} (video GIT)")
  if text["tie_word_embeddings"]:
    unsupported.append("tie_word_embeddings=true (GIT's output layer is untied)")
  if text["position_embedding_type"] != "absolute":
    unsupported.append(f"position_embedding_type={text['position_embedding_type']!r}")
  if text["hidden_act"] != "gelu":
    unsupported.append(f"hidden_act={text['hidden_act']!r} (cxrjax's BERT layers use exact GELU)")
  if vision["hidden_act"] not in ("quick_gelu", "gelu"):
    unsupported.append(f"vision_config.hidden_act={vision['hidden_act']!r}")
  if vision["num_channels"] != 3:
    unsupported.append(f"vision_config.num_channels={vision['num_channels']}")
  for what, width, heads in (
    ("hidden_size", text["hidden_size"], text["num_attention_heads"]),
    ("vision_config.hidden_size", vision["hidden_size"], vision["num_attention_heads"]),
  ):
    if heads < 1 or width % heads:
      unsupported.append(f"{what} {width} is not divisible by its {heads} attention heads")
  if vision["image_size"] % vision["patch_size"]:
    unsupported.append(
      f"vision_config.image_size {vision['image_size']} is not a multiple of its patch_size {vision['patch_size']}"
    )
  if unsupported:
    raise WeightsError(f"{source}: unsupported GIT configuration: {'; '.join(unsupported)}")
  encoder = dict(
    image_size=int(vision["image_size"]),
    patch_size=int(vision["patch_size"]),
    hidden_size=int(vision["hidden_size"]),
    num_layers=int(vision["num_hidden_layers"]),
    num_heads=int(vision["num_attention_heads"]),
    mlp_dim=int(vision["intermediate_size"]),
    layer_norm_eps=float(vision["layer_norm_eps"]),
    activation=vision["hidden_act"],
    patch_bias=False,
    pre_norm=True,
    preprocessing=dict(PREPROCESSING),
  )
  max_positions = int(text["max_position_embeddings"])
  return dict(
    name=MODEL_NAME,
    encoder=encoder,
    hidden_size=int(text["hidden_size"]),
    num_layers=int(text["num_hidden_layers"]),
    num_heads=int(text["num_attention_heads"]),
    intermediate_size=int(text["intermediate_size"]),
    max_positions=max_positions,
    layer_norm_eps=float(text["layer_norm_eps"]),
    projection_eps=encoder["layer_norm_eps"],  # transformers' GitProjection uses the vision config's.
    dropout_rate=float(text["hidden_dropout_prob"]),
    attention_dropout_rate=float(text["attention_probs_dropout_prob"]),
    cache_length=min(CACHE_LENGTH, max_positions),
    dtype="float32",
  )


def vocab_size(hf_config: dict) -> int:
  """Rows of the word embeddings and the output layer (the tokenizer must have as many tokens)."""
  return int(hf_config.get("vocab_size", TEXT_DEFAULTS["vocab_size"]))


def special_tokens(hf_config: dict) -> dict[str, Any]:
  """GIT generates from [CLS] (bos 101) to [SEP] (eos 102); BERT's vocabulary needs no extra token."""
  del hf_config
  return dict(start_token="[CLS]", end_token="[SEP]", pad_token="[PAD]", extra=())


def generation_settings(hf_config: dict, generation_config: dict) -> dict:
  """What `GitForCausalLM.generate` runs with: the directory's generation_config.json, else the generation
  fields of config.json itself (transformers' `GenerationConfig.from_model_config`); unset ones take
  transformers' defaults (hf.generation_decode)."""
  return generation_config or hf_config


def _leaf(leaf: str, name: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  """A Flax leaf of module `name` -> the tensor and its layout change."""
  if leaf == "kernel":
    return f"{name}.weight", lambda a: np.transpose(a, (2, 3, 1, 0)) if a.ndim == 4 else np.transpose(a)
  if leaf in ("scale", "embedding"):
    return f"{name}.weight", np.asarray
  if leaf == "bias":
    return f"{name}.bias", np.asarray
  raise KeyError(leaf)


def _vision_module(module: str) -> str:
  """A ViT module path ("layers_3/self_attn/q_proj") -> transformers' CLIP name."""
  module = re.sub(r"^layers_(\d+)", r"encoder.layers.\1", module)
  return _VISION + module.replace("/", ".")


def source_of(path: str) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
  """A "/"-joined GitCaptioner variable path ("params/text_decoder/layers_0/attention/query/kernel") -> (the
  GitForCausalLM tensor, its layout change to Flax). KeyError for a path GIT does not have."""
  collection, _, rest = path.partition("/")
  if collection != "params":
    raise KeyError(path)
  module, _, leaf = rest.rpartition("/")
  if module == "image_encoder/embeddings" and leaf in ("class_embedding", "position_embedding"):
    suffix = "" if leaf == "class_embedding" else ".weight"  # The class token is a bare nn.Parameter.
    return f"{_VISION}embeddings.{leaf}{suffix}", np.asarray
  if module.startswith("image_encoder/"):
    return _leaf(leaf, _vision_module(module.removeprefix("image_encoder/")))
  if module == "visual_projection":
    return _leaf(leaf, "git.visual_projection.visual_projection.0")
  if module == "visual_projection_norm":
    return _leaf(leaf, "git.visual_projection.visual_projection.1")
  if module in ("embeddings/word_embeddings", "embeddings/position_embeddings"):
    return _leaf(leaf, "git." + module.replace("/", "."))
  if module == "embeddings/norm":
    return _leaf(leaf, "git.embeddings.LayerNorm")
  match = re.fullmatch(r"text_decoder/layers_(\d+)/(.+)", module)
  if match and match.group(2) in _BERT_MODULES:
    return _leaf(leaf, f"git.encoder.layer.{match.group(1)}.{_BERT_MODULES[match.group(2)]}")
  if module == "output":
    return _leaf(leaf, "output")
  raise KeyError(path)


def ignored(name: str) -> bool:
  """The `position_ids` index buffers (arange), which checkpoints of transformers before 4.31 saved and
  later versions skip when loading, as they do; every other tensor must be used."""
  return name.endswith("embeddings.position_ids")


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
    generation_settings=generation_settings,
  ),
)
