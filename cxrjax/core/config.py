r"""Run configs: big_vision-style `get_config(arg)` argument parsing, config files and --config overrides, as
the configs/ and `cxrjax train / sweep / compile` read them; the experiment recipes that fill the sections
(encoders, optimizers, the seeds' setups) are in cxrjax/core/recipes.py.

A run config has these sections (every config in configs/ fills all of them):
  data       the dataset, its split, image size, views per example, report length, cleaning, tokenizer, and
             `augment`: what training adds to the evaluation view (random_crop, crop_resize, flip, rotation;
             cxrjax/data/transforms.py); `caption_protocol`: the rule that normalises references and generated
             texts alike before the text metrics (cxrjax/metrics/protocols.py; absent: the dataset's default)
  model      the family (`name`, models/__init__.py) and its architecture; `model.encoder` holds the encoder
             architecture and its image `preprocessing` (normalization, resize_filter, resize_rule)
  init       pretrained files the run starts from (weights/pretrained.py): encoder, word_vectors, from_workdir
  optimizer  AdamW / Adam-L2, learning-rate schedule, and `param_groups`: what is frozen or trained at which
             rate (cxrjax/core/optim.py)
  train      batch size, steps, seed, logging / validation / checkpoint intervals, cache_features
  decode     generation (captioners): beam size, max length, length penalty, n-gram blocking
  eval       evaluation batch size, the validation metric that picks the best checkpoint, validation size
and, optionally (the transformer configs' `model_parallel=N` / `fsdp` arguments; absent: replicated):
  sharding   the device mesh and the parameters' layout on it (cxrjax/core/sharding.py; recipes.py `sharding_section`)
  evaluators what scores validation and `cxrjax evaluate`, {name: section} as cxrjax/evaluators/__init__.py builds
             them, added to the task's defaults (report generators: "text" under the dataset's protocol, and
             for `evaluate` the image-free "baselines" and "findings_oracle"; classifiers: "auroc"); a section
             named as a default changes its fields (text=dict(meteor=True)) or, None, drops it. Each section's
             `stages` say where it runs ("train": validation; "evaluate"), and, for training only (`evaluate`
             ignores them), `every_steps` the validations it runs at (those of steps that are multiples of
             it, a multiple of train.eval_every; default every validation; the last step's runs every
             evaluator) and `split` the split it scores ("validation", default, or "test": metrics.jsonl's
             {"split": "test"} records; each split is predicted once per validation for all its
             evaluators), e.g. text=dict(every_steps=1000, split="test") beside the default. E.g. dict(chexbert=
             dict(labeler=DIR), bertscore=dict(model=DIR, layer=17)): built once per run; one of their headline
             scores, e.g. "CE/uncertain_positive/all14/micro/F1" or "BERTScore/F1", can be eval.best_metric
             (of an evaluator that runs at every validation on the validation split);
             `evaluate`'s metrics.json gets every evaluator's scores and provenance (e.g. the labeler
             checkpoint's SHA-256). The configs in configs/ set none; a
             command adds them, creating the section's entries (`--config.evaluators.NAME.FIELD=VALUE`, which
             other --config overrides cannot do):
               cxrjax train --config=configs/demo.py --workdir=workdirs/demo_ce \
                   --config.evaluators.chexbert.labeler=labeler/ \
                   --config.eval.best_metric=CE/uncertain_positive/all14/micro/F1
"""

import ast
from collections.abc import Callable, Sequence
import importlib.util
import pathlib

from absl import flags
import ml_collections
from ml_collections import config_flags

from cxrjax.core.errors import ConfigError


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses "smoke,res=128" into a ConfigDict over `defaults` (types follow the defaults; a bare name
  sets a boolean to True). Unknown names are an error, so a typo never passes silently."""
  result = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    name, _, value = item.partition("=")
    if name not in defaults:
      raise ConfigError(f"unknown config argument {name!r}; known: {sorted(defaults)}")
    default = defaults[name]
    try:
      result[name] = value.lower() in ("", "1", "true", "yes") if isinstance(default, bool) else type(default)(value)
    except ValueError:
      raise ConfigError(f"config argument {name}={value!r}: expected a {type(default).__name__}") from None
  return result


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """ "configs/demo.py:smoke,res=128" -> the ConfigDict of that file's `get_config(arg)` (ml_collections'
  convention: `get_config()` without an argument). A missing file, or a ConfigError of the file, is a
  ConfigError naming the file; an error in the file's own code keeps its traceback."""
  path, _, arg = spec.partition(":")
  file = pathlib.Path(path)
  if not path:
    raise ConfigError("--config: empty; expected configs/X.py[:arg]")
  if not file.is_file():
    raise ConfigError(
      f"{path}: config file not found"
      if not file.exists()
      else f"{path}: not a file; --config expects a configs/X.py file"
    )
  module_spec = importlib.util.spec_from_file_location(f"cxrjax_config_{file.stem}", file)
  if module_spec is None or module_spec.loader is None:
    raise ConfigError(f"{path}: not a Python config file (configs/X.py)")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  if not callable(getattr(module, "get_config", None)):
    raise ConfigError(f"{path}: has no get_config() function")
  try:
    config = module.get_config(arg) if arg else module.get_config()
  except ConfigError as error:
    raise ConfigError(f"{spec}: {error}") from None
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() returned a {type(config).__name__}, not a ConfigDict")
  return config


def check_overrides(config: ml_collections.ConfigDict, argv: list[str], prefix: str = "--config.") -> None:
  """Raises a ConfigError naming the first `--config.a.b=value` of `argv` whose field the config lacks,
  with the fields it has there (absl's own message is only the missing key)."""
  for item in argv:
    if not item.startswith(prefix):
      continue
    dotted = item[len(prefix) :].split("=", 1)[0]
    node, walked = config, []
    for key in dotted.split("."):
      if not isinstance(node, ml_collections.ConfigDict):
        break  # Inside a plain value (a tuple, a dict): absl checks the rest.
      if key not in node:
        where = "config." + ".".join(walked) if walked else "the config"
        raise ConfigError(f"{item}: unknown config field {key!r} in {where}; its fields are {sorted(node.keys())}")
      node, walked = node[key], walked + [key]


EVALUATORS_OVERRIDE = "--config.evaluators."


def _override_value(text: str, current: object) -> object:
  """An override's text as a value: a string where the field holds one, else a Python literal (an integer, a
  float, None, True / true) where it reads as one, else the text itself (a path)."""
  if isinstance(current, str):
    return text
  if text.lower() in ("true", "false"):
    return text.lower() == "true"
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return value if value is None or isinstance(value, (bool, int, float)) else text


def add_evaluator_overrides(config: ml_collections.ConfigDict, argv: Sequence[str]) -> list[str]:
  """Applies every `--config.evaluators.NAME.FIELD=VALUE` of `argv` to `config`, creating config.evaluators and
  its NAME section where absent (the section's names are the user's, so absl's overrides, which only change
  existing fields, cannot add them); returns the other arguments. The evaluators check the fields when built."""
  rest = []
  for item in argv:
    if not item.startswith(EVALUATORS_OVERRIDE):
      rest.append(item)
      continue
    dotted, sep, text = item[len(EVALUATORS_OVERRIDE) :].partition("=")
    name, _, field = dotted.partition(".")
    if not sep or not name or not field or "." in field:
      raise ConfigError(
        f"{item}: expected --config.evaluators.NAME.FIELD=VALUE (e.g. --config.evaluators.chexbert.labeler=DIR)"
      )
    if config.get("evaluators") is None:
      config.evaluators = ml_collections.ConfigDict()
    if name not in config.evaluators:
      config.evaluators[name] = ml_collections.ConfigDict()
    section = config.evaluators[name]
    if not isinstance(section, ml_collections.ConfigDict):
      raise ConfigError(f"{item}: config.evaluators.{name} is {section!r}, not a section")
    try:
      section[field] = _override_value(text, section.get(field))
    except TypeError as error:  # ConfigDict keeps a field's type.
      raise ConfigError(f"{item}: {' '.join(str(error).split())}") from None
  return rest


def split_config_argument(argv: Sequence[str]) -> tuple[str | None, list[str]]:
  """(the value of --config, the other arguments)."""
  argv = list(argv)
  for index, item in enumerate(argv):
    if item.startswith("--config="):
      return item.split("=", 1)[1], argv[:index] + argv[index + 1 :]
    if item == "--config" and index + 1 < len(argv):
      return argv[index + 1], argv[:index] + argv[index + 2 :]
  return None, argv


def parse_run_flags(
  argv: Sequence[str], program: str, usage: str, define_flags: Callable[[flags.FlagValues], None]
) -> flags.FlagValues:
  """`--config=configs/X.py[:arg] [--config.field=value ...]` plus the flags `define_flags` adds -> the parsed
  absl flags (`.config` is the ConfigDict with the overrides applied; `--config.evaluators.NAME.FIELD=VALUE`
  by `add_evaluator_overrides`). Every mistake is a ConfigError: the file is loaded by `load_config_file`
  (config_flags' own errors carry a traceback in their text), unknown fields are named by `check_overrides`."""
  spec, rest = split_config_argument(argv)
  if spec is None:
    raise ConfigError(f"--config is required ({usage})")
  config = load_config_file(spec)
  rest = add_evaluator_overrides(config, rest)
  check_overrides(config, rest)
  flag_values = flags.FlagValues()
  # sys_argv: the overrides (--config.x=y) are found in these arguments, not in the process's own.
  config_flags.DEFINE_config_dict(
    "config", config, "the run config", flag_values=flag_values, lock_config=True, sys_argv=[program, *rest]
  )
  define_flags(flag_values)
  try:
    flag_values([program, *rest])
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as error:  # Bad override values.
    raise ConfigError(" ".join(str(error).split())) from None
  return flag_values
