"""Experiment recipes: the sections configs/ build run configs from (encoders, the optimizer, data of the
demos, the device layout) and the seeds' whole setups (`iu_xray_experiment`, `rocov2_experiment`,
`roco_chest_experiment`), which also give the run config of a ported checkpoint (`cxrjax port-weights`,
cxrjax/weights/). What each config section holds: cxrjax/core/config.py, which parses the configs' arguments.
"""

import ml_collections

from cxrjax.core import sharding
from cxrjax.models.encoders import densenet

FROZEN_ENCODER = (("image_encoder/.*", None), (".*", 1.0))
TRAINED_EVERYWHERE = ((".*", 1.0),)
IMAGENET_PREPROCESSING = dict(normalization="imagenet", resize_filter="bilinear", resize_rule="square")


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
  """config.sharding (cxrjax/core/sharding.py): the batch over 'data' (the devices left), the transformer
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
