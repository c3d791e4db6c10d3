r"""Helpers shared by configs/: big_vision-style `get_config(arg)` argument parsing and common sections.

A run config has these sections (every config in configs/ fills all of them):
  data       the dataset, its split, image size, views per example, report length, cleaning, tokenizer, and
             `augment`: what training adds to the evaluation view (random_crop, crop_resize, flip, rotation;
             cxrjax/data/transforms.py); `caption_protocol`: the rule that normalises references and generated
             texts alike before the text metrics (cxrjax/metrics/protocols.py; absent: the dataset's default)
  model      the family (`name`, models/__init__.py) and its architecture; `model.encoder` holds the encoder
             architecture and its image `preprocessing` (normalization, resize_filter, resize_rule)
  init       pretrained files the run starts from (weights/pretrained.py): encoder, word_vectors, from_workdir
  optimizer  AdamW / Adam-L2, learning-rate schedule, and `param_groups`: what is frozen or trained at which
             rate (cxrjax/optim.py)
  train      batch size, steps, seed, logging / validation / checkpoint intervals, cache_features
  decode     generation (captioners): beam size, max length, length penalty, n-gram blocking
  eval       evaluation batch size, the validation metric that picks the best checkpoint, validation size
and, optionally (the transformer configs' `model_parallel=N` / `fsdp` arguments; absent: replicated):
  sharding   the device mesh and the parameters' layout on it (cxrjax/sharding.py; `sharding_section`)
  evaluators report generators: scores beyond the task's text metrics, {name: section} as
             cxrjax/evaluators/__init__.py builds them (e.g. dict(chexbert=dict(labeler=DIR),
             bertscore=dict(model=DIR, layer=17))); built once per run, run at every validation (one of their
             headline scores, e.g. "CE/uncertain_positive/all14/micro/F1" or "BERTScore/F1", can be
             eval.best_metric) and by `cxrjax evaluate`, whose metrics.json gets their scores and provenance
             (the labeler checkpoint's SHA-256). Absent or empty: none. The configs in configs/ set none; a
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

from cxrjax import sharding
from cxrjax.errors import ConfigError
from cxrjax.models.encoders import densenet

FROZEN_ENCODER = (("image_encoder/.*", None), (".*", 1.0))
TRAINED_EVERYWHERE = ((".*", 1.0),)
IMAGENET_PREPROCESSING = dict(normalization="imagenet", resize_filter="bilinear", resize_rule="square")


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


def densenet121_encoder() -> dict:
  """DenseNet-121 as CheXNet (Keras batch-norm epsilon, so CheXNet-Keras weights load exactly), with
  CheXNet's ImageNet preprocessing."""
  return dict(
    block_sizes=(6, 12, 24, 16),
    growth_rate=32,
    stem_features=64,
    bn_epsilon=1.001e-5,
    preprocessing=dict(IMAGENET_PREPROCESSING),
  )


def tiny_encoder() -> dict:
  """A small DenseNet for CPU demos (same code path, a fraction of the compute)."""
  return dict(
    block_sizes=(2, 2, 2),
    growth_rate=16,
    stem_features=32,
    bn_epsilon=1.001e-5,
    preprocessing=dict(IMAGENET_PREPROCESSING),
  )


def smoke_encoder() -> dict:
  """The DenseNet of smoke variants: two blocks of one layer."""
  return dict(densenet.tiny_config(), preprocessing=dict(IMAGENET_PREPROCESSING))


def smoke_chexnet_encoder() -> dict:
  """The DenseNet of the CheXNet configs' smoke variants: DenseNet-121's layout (four blocks, growth 32,
  stem 64, Keras batch-norm epsilon) with one layer per block, so that `cxrjax port-weights` files of the
  same layout load into it, at a fraction of the compute."""
  return dict(
    block_sizes=(1, 1, 1, 1),
    growth_rate=32,
    stem_features=64,
    bn_epsilon=1.001e-5,
    preprocessing=dict(IMAGENET_PREPROCESSING),
  )


def adamw(learning_rate: float, warmup_steps: int, param_groups=TRAINED_EVERYWHERE, **overrides) -> dict:
  """The report generators' optimizer: AdamW, warm-up then cosine decay, global-norm clipping 1."""
  return dict(
    dict(
      name="adamw",
      learning_rate=learning_rate,
      schedule="cosine",
      warmup_steps=warmup_steps,
      final_lr_fraction=0.01,
      decay_every_steps=0,
      weight_decay=1e-4,
      grad_clip_norm=1.0,
      b1=0.9,
      b2=0.999,
      param_groups=param_groups,
    ),
    **overrides,
  )


def no_init() -> dict:
  return dict(encoder="", word_vectors="", from_workdir="")


def phantom_captions_demo_data() -> dict:
  """config.data of the captioners' `demo` variants: the embedded phantom caption set (single frontal images
  with one-line captions written from the findings drawn into them; no download), 3,000 training images,
  trained unflipped on random crops of an 8/7 shortest-side resize (R2Gen's 256 -> 224), as the demos'
  numbers were measured."""
  return dict(
    name="phantom_captions",
    image_size=64,
    num_views=1,
    max_length=24,
    cleaning="r2gen",
    tokenizer="",
    vocabulary_min_count=1,
    caption_protocol="r2gen",  # Cleaned captions, scored as cleaned.
    augment=dict(random_crop=True, crop_resize=0, flip=False, rotation=0.0),  # Phantom captions name sides.
    read_threads=1,
    num_train=3000,
    num_val=100,
    num_test=300,
    phantom_seed=0,
    phantom_prevalences=dict(cardiomegaly=0.4, effusion=0.4, pneumothorax=0.3, opacity=0.3, nodule=0.3),
  )


def sharding_section(model_parallel: int = 1, fsdp: bool = False) -> dict:
  """config.sharding (cxrjax/sharding.py): the batch over 'data' (the devices left), the transformer
  families' heads, MLP units and vocabulary split over `model_parallel` devices ('model'), and with
  `fsdp` every parameter of at least sharding.FSDP_MIN_SIZE elements split over 'data' as well."""
  return dict(
    mesh=((sharding.DATA_AXIS, -1), (sharding.MODEL_AXIS, model_parallel)),
    rules=sharding.DEFAULT_RULES,
    fsdp=fsdp,
    fsdp_min_size=sharding.FSDP_MIN_SIZE,
  )


def rocov2_experiment(model: dict, tokenizer: str = "") -> ml_collections.ConfigDict:
  """Seed 003's ROCOv2 setup (configs/rocov2_graph.py; also the run config of an imported seed checkpoint):
  one view squashed to 224 x 224 with ImageNet statistics (the seed's Resize((224, 224))), trained with random
  horizontal flips and rotations of up to 10 degrees and no crop, captions of at most 80 WordPiece tokens
  ([CLS] ... [SEP]), AdamW 1e-4, batch 200, 15 epochs of the 56,963 training images; decoding as the seed's
  `generate_caption`: greedy, no n-gram blocking, at most 80 generated tokens (configs/rocov2_graph.py's recipe
  adds beam 3 and trigram blocking)."""
  steps_per_epoch = 56_963 // 200
  config = ml_collections.ConfigDict()
  config.data = dict(
    name="rocov2",
    data_dir="",
    subset="all",
    image_size=224,
    num_views=1,
    max_length=80,
    cleaning="none",
    tokenizer=tokenizer,  # bert-base-uncased's vocab.txt (WordPiece); "" builds a word vocabulary instead
    vocabulary_min_count=3,
    caption_protocol="imageclef",  # ImageCLEFmedical Caption's scoring ("coco": the COCO caption evaluation's)
    # The seed's: flips (its captions seldom name sides) and RandomRotation(10) on the 224 x 224 squash.
    augment=dict(random_crop=False, crop_resize=0, flip=True, rotation=10.0),
    read_threads=2,
  )
  config.model = model
  config.init = no_init()  # init.encoder: a Hugging Face ResNetModel folder (microsoft/resnet-50)
  config.optimizer = adamw(1e-4, 0, TRAINED_EVERYWHERE, final_lr_fraction=1.0, weight_decay=1e-2, grad_clip_norm=1e3)
  config.train = dict(
    batch_size=200,
    num_steps=15 * steps_per_epoch,
    seed=0,
    profile_steps=(),
    log_every=50,
    eval_every=steps_per_epoch,
    checkpoint_every=steps_per_epoch,
    cache_features=False,
  )
  # generate_caption(max_len=80): 80 argmax steps from [CLS], the one that picks [SEP] included ([CLS] is not
  # counted), so 80 in decoding.py's count; nothing blocked.
  config.decode = dict(beam_size=1, max_length=80, length_penalty=0.0, block_ngram_repeat=0)
  config.eval = dict(batch_size=64, best_metric="BLEU-4", max_val_examples=1000)
  return config


ROCO_CHEST_TRAIN_IMAGES = 3_200  # About: cxrjax/data/roco/chest.py's rule on ROCO v1's training split.


def roco_chest_experiment(model: dict, tokenizer: str = "") -> ml_collections.ConfigDict:
  """Seed 002's fine-tuning recipe on ROCO's chest X-ray subset (configs/roco_git.py, roco_blip.py; also
  the run config of an imported Hugging Face checkpoint, with the checkpoint's own decode section,
  weights/hf.py `generation_decode`): one view at the encoder's image_size with its
  preprocessing (the model's image processor), in training too (the seed augments nothing), captions as
  written of at most 64 WordPiece tokens, AdamW 5e-5 with weight decay 1e-8, batch 8 with gradients
  accumulated over 2 batches, 10 epochs; decoding as transformers' `generate` (greedy by default; with
  decode.beam_size > 1, its beam search: "hf" length normalization, length penalty 1.0), up to 50 new
  tokens."""
  batches_per_epoch = ROCO_CHEST_TRAIN_IMAGES // 8
  config = ml_collections.ConfigDict()
  config.data = dict(
    name="roco",
    data_dir="",
    subset="chest_xray",
    image_size=int(model["encoder"]["image_size"]),
    num_views=1,
    max_length=64,
    cleaning="none",
    tokenizer=tokenizer,  # the imported workdir's tokenizer.json (the checkpoint's WordPiece vocabulary)
    vocabulary_min_count=1,
    caption_protocol="coco",  # The COCO caption evaluation's scoring ("imageclef": ImageCLEFmedical Caption's)
    # Training sees the processor's view, as in the seed: no crop it does not take, no flip (captions name
    # sides).
    augment=dict(random_crop=False, crop_resize=0, flip=False, rotation=0.0),
    read_threads=2,
  )
  config.model = model
  config.init = no_init()  # init.from_workdir: a `cxrjax port-weights --format hf` workdir
  # transformers' Trainer defaults beside the seed's settings: no warm-up, linear decay to 0, clipping at 1.
  config.optimizer = adamw(
    5e-5,
    0,
    TRAINED_EVERYWHERE,
    schedule="linear",
    final_lr_fraction=0.0,
    weight_decay=1e-8,
    grad_clip_norm=1.0,
    accumulate_steps=2,
  )
  config.train = dict(
    batch_size=8,
    num_steps=10 * batches_per_epoch,
    seed=0,
    profile_steps=(),
    log_every=50,
    eval_every=batches_per_epoch,
    checkpoint_every=batches_per_epoch,
    cache_features=False,
  )
  config.decode = dict(beam_size=1, max_length=50, length_penalty=1.0, length_normalization="hf", block_ngram_repeat=0)
  config.eval = dict(batch_size=8, best_metric="ROUGE-L", max_val_examples=0)
  return config


def iu_xray_experiment(
  arg: ml_collections.ConfigDict, model: dict, smoke_model: dict, param_groups=FROZEN_ENCODER
) -> ml_collections.ConfigDict:
  """The seed-000/001 IU X-ray setup shared by the three report generators: two views at 224 (evaluation:
  squashed, as the seeds' (224, 224) resize; training: R2Gen's random 224 crop of a 256 shortest-side resize,
  unflipped), reports of up to 60 tokens (R2Gen), words seen 3 times, CheXNet frozen, AdamW, beam 3;
  `arg.tpu` and `arg.smoke`.

  Args:
    arg: parsed arguments with `split` ("random" or "r2gen"), `sections` ("findings" or
      "findings_impression": config.data.report_sections), `tpu` and `smoke`.
    model: the model section (its DenseNet-121 encoder included).
    smoke_model: model fields replaced in the smoke variant (the encoder becomes `smoke_chexnet_encoder()`).
    param_groups: the optimizer's (default: CheXNet frozen, the rest trained).
  """
  config = ml_collections.ConfigDict()
  config.data = dict(
    name="iu_xray",
    data_dir="",
    tfds_config=arg.split,
    image_size=224,
    num_views=2,
    max_length=60,
    cleaning="r2gen",
    vocabulary_min_count=3,
    # The report sections trained on and scored against: "findings" (R2Gen's protocol, its published tables)
    # or "findings_impression" (ReXrank's IU X-ray leaderboard); `cxrjax prepare --sections` builds its vocabulary.
    report_sections=arg.sections,
    tokenizer="",  # "": a word vocabulary (prepared by `cxrjax prepare`); or a WordPiece vocab.txt / tokenizer.json
    caption_protocol="r2gen",  # R2Gen's cleaned reports, as the published IU X-ray tables score them
    # R2Gen's Resize(256) + RandomCrop(224) (crop_resize 0: image_size * 8 / 7), without its flip: the
    # reports name sides, and a flipped image would contradict its report.
    augment=dict(random_crop=True, crop_resize=0, flip=False, rotation=0.0),
  )
  config.model = model
  config.init = no_init()
  config.optimizer = adamw(1e-3, 500, param_groups)
  config.train = dict(
    batch_size=32,
    num_steps=20_000,
    seed=0,
    profile_steps=(),
    log_every=100,
    eval_every=1000,
    checkpoint_every=1000,
    cache_features=False,
  )  # True: the frozen CheXNet's features computed once
  config.decode = dict(beam_size=3, max_length=59, length_penalty=0.0, block_ngram_repeat=0)
  config.eval = dict(batch_size=32, best_metric="BLEU-4", max_val_examples=0)
  if arg.tpu:
    config.model.dtype = "bfloat16"
    config.train.update(batch_size=256, num_steps=3_000, eval_every=500)
    config.optimizer.learning_rate = 3e-3
    config.eval.batch_size = 256
  if arg.smoke:
    config.model.update(encoder=smoke_chexnet_encoder(), **smoke_model)
    config.data.image_size = 64
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.decode.max_length = 16
    config.eval.update(batch_size=8, max_val_examples=8)
  return config
