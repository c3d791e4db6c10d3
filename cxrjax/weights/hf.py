"""Hugging Face model directories (`save_pretrained` output or a hub download) -> cxrjax runs.

    cxrjax port-weights --format hf HF_DIR OUT [--tokenizer VOCAB]

HF_DIR holds `config.json` and `model.safetensors` (or a sharded `model.safetensors.index.json`), read
with `safetensors` (no torch), plus the tokenizer files when present (`tokenizer.json` or `vocab.txt`).
config.json's `model_type` picks the family (`FAMILIES`, a registry: each family module adds its `Family`
beside its definition, and weights/__init__.py imports the family modules), which says how the checkpoint
becomes a cxrjax model; this module reads the directory, checks it, and applies the family's strict name map.

A `Family` holds:
    model_name                          the cxrjax `model.name`
    model_section(hf_config, source)    config.json -> the cxrjax `model` section (the encoder's
                                        image_size and preprocessing included)
    vocab_size(hf_config)               rows of the vocabulary (checked against the tokenizer)
    special_tokens(hf_config)           {"start_token", "end_token", "pad_token", "extra": tokens a
                                        vocab.txt lacks, given the next ids in order}
    source_of(path)                     a "/"-joined Flax variable path ("params/output/kernel") -> (the
                                        checkpoint's tensor name, its layout change to Flax)
    ignored(name)                       checkpoint tensors the model does not use
    recipe(model_section)               the recipe (cxrjax/core/recipes.py) whose run config is written into OUT
                                        (its decode section then replaced by the checkpoint's own,
                                        `generation_decode`)
    generation_settings(hf_config, generation_config)
                                        the generation settings transformers' `generate` runs this family
                                        with, from config.json and generation_config.json ({} if absent)
  and optionally (None otherwise):
    with_prompt(model_section, ids)     the section with a caption prompt (ids from the start token on)
    check_tensors(tensors, source)      checks beyond names and shapes (raises WeightsError)
    fit_lengths(run_config, section)    the recipe's lengths fitted to the model's positions and cache
Family modules import this one to register (it does not import them): the reading and checking stay here.

The imported run decodes as transformers' `generate` on the directory does (`generation_decode`): its
beam count, length penalty and length, with transformers' defaults (greedy, 20 new tokens) where the
directory sets none; the KV cache grows to hold that length.

Every problem is a WeightsError naming the file and, where one is at fault, the tensor: no config.json,
config.json that is not JSON, an unknown model_type, missing or unreadable (truncated) safetensors,
missing / unexpected / mis-shaped tensors, tensors with NaN or infinite values, generation settings that
no cxrjax search reproduces (sampling, penalties, ...) or a length past the text position table.
"""

import dataclasses
import hashlib
import json
import pathlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import safetensors.numpy

from cxrjax import models
from cxrjax.core import registry
from cxrjax.data import datasets
from cxrjax.text import tokenizers
from cxrjax.weights import formats, store
from cxrjax.weights.store import WeightsError

FORMAT = "hf"  # A Hugging Face model directory (GIT, BLIP): config.json + model.safetensors.
CONFIG_FILE, WEIGHTS_FILE, INDEX_FILE = "config.json", "model.safetensors", "model.safetensors.index.json"
TOKENIZER_JSON, VOCAB_TXT, TOKENIZER_CONFIG = "tokenizer.json", "vocab.txt", "tokenizer_config.json"
GENERATION_CONFIG = "generation_config.json"

# transformers 5.x `generate` defaults (GenerationConfig._get_default_generation_params; tests/weights/
# test_hf.py checks them) of the settings a ported decode follows: without max_length or max_new_tokens,
# 20 new tokens (capped by the position table).
GENERATE_DEFAULTS = dict(max_length=20, num_beams=1, length_penalty=1.0)
# Settings whose transformers default is the only value cxrjax's searches reproduce: a checkpoint asking for
# another (sampling, penalties, n-gram blocking over the prompt too, minimum lengths, early stopping, forced
# or suppressed tokens) is refused rather than decoded otherwise.
REPRODUCED_ONLY_AS = dict(
  do_sample=False,
  early_stopping=False,
  num_beam_groups=1,
  diversity_penalty=0.0,
  repetition_penalty=1.0,
  encoder_repetition_penalty=1.0,
  no_repeat_ngram_size=0,
  encoder_no_repeat_ngram_size=0,
  min_length=0,
  min_new_tokens=None,
  bad_words_ids=None,
  force_words_ids=None,
  sequence_bias=None,
  forced_bos_token_id=None,
  forced_eos_token_id=None,
  suppress_tokens=None,
  begin_suppress_tokens=None,
  exponential_decay_length_penalty=None,
  num_return_sequences=1,
  penalty_alpha=None,
  guidance_scale=None,
  stop_strings=None,
  max_time=None,
)

SourceOf = Callable[[str], tuple[str, Callable[[np.ndarray], np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class Family:
  """How a Hugging Face model family's checkpoint becomes a cxrjax run (module doc)."""

  model_name: str
  model_section: Callable[[dict[str, Any], str], dict[str, Any]]
  vocab_size: Callable[[dict[str, Any]], int]
  special_tokens: Callable[[dict[str, Any]], dict[str, Any]]
  source_of: SourceOf
  ignored: Callable[[str], bool]
  recipe: Callable[[dict[str, Any]], ml_collections.ConfigDict]
  generation_settings: Callable[[dict[str, Any], dict[str, Any]], dict[str, Any]]
  with_prompt: Callable[[dict[str, Any], list[int]], dict[str, Any]] | None = None
  check_tensors: Callable[[dict[str, np.ndarray], str], None] | None = None
  fit_lengths: Callable[[ml_collections.ConfigDict, dict[str, Any]], ml_collections.ConfigDict] | None = None

  def ported_run_config(self, section: dict[str, Any]) -> ml_collections.ConfigDict:
    """The run config of a ported checkpoint whose model section is `section`: the family's recipe, its
    lengths fitted to the model where the family says how."""
    config = self.recipe(dict(section))
    return config if self.fit_lengths is None else self.fit_lengths(config, section)


# config.json's model_type -> its Family (hf_git.py, hf_blip.py).
FAMILIES: registry.Registry[Family] = registry.Registry("Hugging Face model family", "model_type", WeightsError)


def _read_json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as error:
    raise WeightsError(f"{path}: not valid JSON ({error})") from None


def read_config(directory: str | pathlib.Path) -> dict[str, Any]:
  """DIR/config.json, checked to be an object whose model_type is one of FAMILIES."""
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise WeightsError(
      f"{directory}: not a directory; expected a Hugging Face model directory "
      f"({CONFIG_FILE} + {WEIGHTS_FILE}, as save_pretrained writes)"
    )
  path = directory / CONFIG_FILE
  if not path.is_file():
    raise WeightsError(
      f"{path}: not found; expected a Hugging Face model directory ({CONFIG_FILE} + "
      f"{WEIGHTS_FILE}, as save_pretrained writes)"
    )
  hf_config = _read_json(path)
  if not isinstance(hf_config, dict):
    raise WeightsError(f"{path}: expected a JSON object, got {type(hf_config).__name__}")
  model_type = hf_config.get("model_type")
  if model_type not in FAMILIES:
    raise WeightsError(f"{path}: model_type {model_type!r} is not supported; known: {sorted(FAMILIES.names())}")
  return hf_config


def _weights_files(directory: pathlib.Path) -> list[pathlib.Path]:
  single, index = directory / WEIGHTS_FILE, directory / INDEX_FILE
  if single.is_file():
    return [single]
  if index.is_file():
    listing = _read_json(index)
    weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
    if not isinstance(weight_map, dict):
      raise WeightsError(f'{index}: no "weight_map" object')
    files = [directory / name for name in sorted(set(weight_map.values()))]
    for path in files:
      if not path.is_file():
        raise WeightsError(f"{path}: not found (listed in {index})")
    return files
  others = sorted(p.name for p in directory.glob("*.bin")) + sorted(p.name for p in directory.glob("*.pth"))
  hint = f"; it has {others}: save the model with safe_serialization (the default) instead" if others else ""
  raise WeightsError(f"{single}: not found{hint}")


def read_tensors(directory: str | pathlib.Path) -> dict[str, np.ndarray]:
  """The directory's safetensors -> {name: float32 array}; unreadable files and non-finite values are
  errors naming the file (and the tensor)."""
  tensors = {}
  for path in _weights_files(pathlib.Path(directory)):
    try:
      loaded = safetensors.numpy.load_file(path)
    except Exception as error:  # safetensors raises its own SafetensorError and OSError kinds.
      raise WeightsError(f"{path}: cannot be read as safetensors, truncated or corrupt? ({error})") from None
    for name, value in loaded.items():
      value = np.asarray(value, np.float32) if np.issubdtype(value.dtype, np.floating) else value
      if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all():
        bad = int(np.size(value) - np.isfinite(value).sum())
        raise WeightsError(f"{path}: tensor {name!r} has {bad} NaN or infinite values of {np.size(value)}")
      tensors[name] = value
  return tensors


def read_directory(directory: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json as a dict, {tensor name: array}) of a Hugging Face model directory (module doc)."""
  hf_config = read_config(directory)
  return hf_config, read_tensors(directory)


def read_generation_config(directory: str | pathlib.Path) -> dict[str, Any]:
  """DIR/generation_config.json as a dict ({} when the directory has none)."""
  path = pathlib.Path(directory) / GENERATION_CONFIG
  if not path.is_file():
    return {}
  settings = _read_json(path)
  if not isinstance(settings, dict):
    raise WeightsError(f"{path}: expected a JSON object, got {type(settings).__name__}")
  return settings


def _token_count(settings: dict[str, Any], name: str, source: str) -> int:
  value = settings[name]
  if isinstance(value, bool) or not isinstance(value, int):
    raise WeightsError(f"{source}: {name} is {value!r}; expected an integer")
  return value


def _token_ids(value: Any) -> set[int]:
  return set(value) if isinstance(value, list) else {value}


def generation_decode(
  settings: dict[str, Any], source: str, input_length: int, max_positions: int, start_id: int, end_id: int
) -> dict[str, Any]:
  """transformers' `generate` settings (the family's `generation_settings`) -> the `decode` config section
  that reproduces them token for token: num_beams, length_penalty and transformers' beam rules ("hf"), no
  blocking, and the most new tokens: max_new_tokens; else max_length less the `input_length` tokens fed
  before the first generated one ([CLS]; BLIP's prompt from [DEC]); else transformers' default of 20 new
  tokens, capped as it caps them by the `max_positions` text positions. Settings no cxrjax search
  reproduces, another start or end token, and a length past the position table are WeightsErrors naming
  `source` and the setting."""
  given = {name: value for name, value in settings.items() if value is not None}
  for name, default in REPRODUCED_ONLY_AS.items():
    if name in given and given[name] != default:
      raise WeightsError(
        f"{source}: {name}={given[name]!r} is not supported: cxrjax decodes greedily or by beam "
        f"search with {name}={default!r} only"
      )
  for name, expected in (("bos_token_id", start_id), ("eos_token_id", end_id)):
    if name in given and _token_ids(given[name]) != {expected}:
      raise WeightsError(f"{source}: {name}={given[name]!r}; the tokenizer's {name[:3]} token is {expected}")
  if "max_new_tokens" in given:
    field, new_tokens = "max_new_tokens", _token_count(given, "max_new_tokens", source)
  elif "max_length" in given:
    field, new_tokens = "max_length", _token_count(given, "max_length", source) - input_length
  else:  # transformers' default: 20 new tokens, within the position table.
    field, new_tokens = None, min(GENERATE_DEFAULTS["max_length"] + input_length, max_positions) - input_length
  if new_tokens < 1:
    raise WeightsError(
      f"{source}: {field}={given.get(field)} leaves no token to generate after the {input_length} input token(s)"
    )
  # Positions fed: the inputs, then every generated token but the last.
  room = max_positions - input_length + 1
  if new_tokens > room:
    raise WeightsError(
      f"{source}: {field}={given[field]} asks for {new_tokens} new tokens; the text position "
      f"table (max_position_embeddings {max_positions}) holds {room} after the {input_length} "
      "input token(s)"
    )
  beams = _token_count(given, "num_beams", source) if "num_beams" in given else GENERATE_DEFAULTS["num_beams"]
  if beams < 1:
    raise WeightsError(f"{source}: num_beams={beams}; expected at least 1")
  length_penalty = given.get("length_penalty", GENERATE_DEFAULTS["length_penalty"])
  if isinstance(length_penalty, bool) or not isinstance(length_penalty, (int, float)):
    raise WeightsError(f"{source}: length_penalty is {length_penalty!r}; expected a number")
  return dict(
    beam_size=beams,
    max_length=new_tokens,
    length_penalty=float(length_penalty),
    length_normalization="hf",
    block_ngram_repeat=0,
  )


def checksums(directory: str | pathlib.Path) -> dict[str, str]:
  """{weights file name: sha256} of the directory (recorded in the imported run's metadata)."""
  digests = {}
  for path in _weights_files(pathlib.Path(directory)):
    digest = hashlib.sha256()
    with path.open("rb") as handle:
      for block in iter(lambda: handle.read(1 << 24), b""):
        digest.update(block)
    digests[path.name] = digest.hexdigest()
  return digests


def strict_map(
  tensors: dict[str, np.ndarray],
  abstract: Any,
  source_of: SourceOf,
  source: str,
  ignored: Callable[[str], bool] = lambda name: False,
) -> dict[str, Any]:
  """Checkpoint tensors -> Flax variables shaped as `abstract` (store.strict_map), each variable from the
  tensor `source_of("/"-joined variable path)` names."""
  return store.strict_map(
    tensors, abstract, lambda path: source_of("/".join(path)), source, "the model of its config.json", ignored
  )


def _lowercase(directory: pathlib.Path) -> bool:
  path = directory / TOKENIZER_CONFIG
  settings = _read_json(path) if path.is_file() else {}
  return bool(settings.get("do_lower_case", True)) if isinstance(settings, dict) else True


def load_tokenizer(
  directory: str | pathlib.Path, tokenizer: str | pathlib.Path | None, special: dict[str, Any], cleaning_style: str
) -> tokenizers.WordPieceTokenizer:
  """`tokenizer` (a vocab.txt or tokenizer.json) when given, else the directory's tokenizer.json or
  vocab.txt, with the family's special tokens (`special_tokens`)."""
  directory = pathlib.Path(directory)
  roles = dict(
    start_token=special["start_token"],
    end_token=special["end_token"],
    pad_token=special["pad_token"],
    cleaning_style=cleaning_style,
  )
  if tokenizer:
    path = pathlib.Path(tokenizer)
    if not path.is_file():
      raise WeightsError(f"--tokenizer {path}: not found")
  elif (directory / TOKENIZER_JSON).is_file():
    path = directory / TOKENIZER_JSON
  elif (directory / VOCAB_TXT).is_file():
    path = directory / VOCAB_TXT
  else:
    raise WeightsError(
      f"{directory}: has no {TOKENIZER_JSON} or {VOCAB_TXT}; pass --tokenizer VOCAB (the "
      "checkpoint's vocab.txt or tokenizer.json)"
    )
  if path.suffix == ".txt":
    return tokenizers.WordPieceTokenizer.from_vocab(
      path,
      lowercase=_lowercase(path.parent),
      special_tokens=tuple(tokenizers.BERT_SPECIAL_TOKENS) + tuple(special["extra"]),
      **roles,
    )
  return tokenizers.WordPieceTokenizer.from_tokenizer_json(path, **roles)


def abstract_variables(model_section: dict, vocab_size: int) -> Any:
  """Shapes of the variables of the model `model_section` describes (no compute)."""
  model = models.build(ml_collections.ConfigDict(model_section), vocab_size)
  size = int(model_section["encoder"]["image_size"])
  images, tokens = jnp.zeros((1, 1, size, size, 3)), jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), images, tokens))


def import_hf(
  directory: str | pathlib.Path, tokenizer: str | pathlib.Path | None = None, prompt: str = ""
) -> tuple[ml_collections.ConfigDict, tokenizers.WordPieceTokenizer, dict[str, Any]]:
  """A Hugging Face model directory -> (the run config, its tokenizer, the model's variables).

  `prompt`: text every caption starts with (BLIP's "a picture of"), for families that take one
  (`with_prompt(model_section, prompt_ids)`, the ids from the start token on)."""
  directory = pathlib.Path(directory)
  hf_config = read_config(directory)
  family = FAMILIES.get(hf_config["model_type"])
  section = family.model_section(hf_config, str(directory / CONFIG_FILE))
  cleaning = datasets.cleaning_style(family.ported_run_config(section).data)
  loaded = load_tokenizer(directory, tokenizer, family.special_tokens(hf_config), cleaning)
  vocab_size = family.vocab_size(hf_config)
  if len(loaded) != vocab_size:
    raise WeightsError(
      f"{directory / CONFIG_FILE}: vocab_size is {vocab_size}, but the tokenizer has {len(loaded)} tokens ({loaded!r})"
    )
  if prompt:
    if family.with_prompt is None:
      raise WeightsError(f"--prompt: the {family.model_name} family takes no prompt")
    section = family.with_prompt(section, [loaded.start_id] + loaded.encode(prompt)[1:-1])
  # Decoding as `generate` on this directory; the KV cache holds that many tokens.
  source = str(directory / (GENERATION_CONFIG if (directory / GENERATION_CONFIG).is_file() else CONFIG_FILE))
  decode = generation_decode(
    family.generation_settings(hf_config, read_generation_config(directory)),
    source,
    input_length=max(len(section.get("prompt_ids", ())), 1),
    max_positions=section["max_positions"],
    start_id=loaded.start_id,
    end_id=loaded.end_id,
  )
  section = dict(section, cache_length=max(section["cache_length"], decode["max_length"]))
  run_config = family.ported_run_config(section)
  run_config.decode = decode
  tensors = read_tensors(directory)
  if family.check_tensors is not None:  # Checks beyond names and shapes (BLIP: tied copies are equal).
    family.check_tensors(tensors, str(directory))
  variables = strict_map(
    tensors, abstract_variables(section, vocab_size), family.source_of, str(directory), family.ignored
  )
  return run_config, loaded, variables


@formats.register(
  FORMAT,
  options=("tokenizer", "prompt"),
  help="a Hugging Face model directory (GIT, BLIP) -> a workdir that evaluate / predict / config.init.from_workdir "
  "read",
)
def port(
  directory: str | pathlib.Path, output: str | pathlib.Path, tokenizer: str | None = None, prompt: str = ""
) -> formats.Ported:
  """A Hugging Face model directory (its model_type picks the family) -> the run of a workdir that `evaluate`,
  `predict` and `config.init.from_workdir` read; its config.data.tokenizer is the workdir's tokenizer.json,
  so that fine-tuning uses the checkpoint's vocabulary."""
  config, loaded, variables = import_hf(directory, tokenizer=tokenizer, prompt=prompt)
  return formats.Ported(
    dict(
      model=config.model.name,
      vocab_size=len(loaded),
      hidden_size=config.model.get("hidden_size"),
      num_layers=config.model.get("num_layers"),
    ),
    config=config,
    tokenizer=loaded,
    variables=variables,
    meta={"imported_from": str(directory), "sha256": checksums(directory)},
    tokenizer_in_workdir=True,
  )
