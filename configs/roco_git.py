r"""Seed 002: Microsoft GIT-base captioning, fine-tuned on ROCO's chest X-ray subset.

  # microsoft/git-base as downloaded from the hub (config.json, model.safetensors, vocab.txt /
  # tokenizer.json) -> a cxrjax workdir:
  cxrjax port-weights --format hf $GIT_DIR workdirs/git_base
  cxrjax prepare roco --manual-dir=$ROCO --data-dir=$DATA --subset chest_xray
  cxrjax train --config=configs/roco_git.py --workdir=workdirs/roco_git \
      --config.init.from_workdir=workdirs/git_base \
      --config.data.tokenizer=workdirs/git_base/tokenizer.json --config.data.data_dir=$DATA
  cxrjax evaluate --workdir=workdirs/roco_git --split=test

The seed's scores (GIT-base fine-tuned, ROCO chest X-ray test split): ROUGE-1 0.35, ROUGE-2 0.22,
ROUGE-L 0.33, ROUGE-Lsum 0.34, BLEU 0, METEOR 0.14 (before fine-tuning: 0.1, 0.01, 0.8, 0.8, 0, 0.05, as
the deck prints them). Not reproduced here: no ROCO images can be used in this environment.

Recipe (cxrjax/core/recipes.py `roco_chest_experiment`): 224 x 224 as GIT's CLIPImageProcessor (bicubic resize of
the shortest side, centre crop, CLIP statistics), AdamW 5e-5, weight decay 1e-8, 10 epochs, batch 8 per
device, gradients accumulated over 2 batches (`optimizer.accumulate_steps`), cross-entropy over the caption
tokens (GIT's loss: the text positions after [CLS], padding masked). `tpu` adds bfloat16 compute over
float32 master weights (the seed used fp16 on GPUs). Decoding, this recipe's: greedy from [CLS] (101) to
[SEP] (102), at most 50 new tokens; `--beam-size 3` (predict, evaluate) runs transformers' beam search
(`decode.length_normalization="hf"`, length_penalty 1.0), so that the captions equal
`model.generate(pixel_values, num_beams=3, max_new_tokens=50)`. The `port-weights` workdir itself decodes as
`model.generate(pixel_values)` on its directory: its generation settings, else transformers' defaults
(greedy, 20 new tokens).
Training sees the CLIPImageProcessor's view too, as the seed did: no crop, flip or rotation (`data.augment`).

The model section is git-base's config.json (transformers' GitConfig defaults are microsoft/git-base):
CLIP ViT-B/16 at 224 (197 image tokens, quick GELU, eps 1e-5), a 6-layer BERT of width 768 with 12 heads
(exact GELU, eps 1e-12), 1024 positions, bert-base-uncased's 30522 tokens, an untied output layer.
init.from_workdir needs the same architecture (a `port-weights` workdir of that checkpoint).

The demo trains a tiny GIT from scratch on the embedded phantom caption set (no download, word vocabulary):
  cxrjax train --config=configs/roco_git.py:demo --workdir=workdirs/git_demo
  cxrjax evaluate --workdir=workdirs/git_demo --split=test --no-meteor
Its measured scores and those of the image-free baselines: README.md, "The other captioners' demos".

Arguments:
  demo     the embedded phantom caption set: a tiny GIT, a short CPU run
  tpu      bfloat16 compute, 8 devices of batch 8, parameters and optimizer state split over the devices
           (fsdp; --config.sharding.fsdp=False replicates them)
  smoke    tiny sizes for a quick end-to-end check
  model_parallel=N  the heads, MLP units and vocabulary split over N devices (tensor parallelism; the
           batch over the rest); fsdp  every parameter split over the data devices too (config.sharding,
           cxrjax/core/sharding.py; neither: replicated parameters)
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes
from cxrjax.models.encoders import vit
from cxrjax.weights import hf_git

# microsoft/git-base's config.json differs from transformers' GitConfig defaults in no architecture field.
GIT_BASE_HF_CONFIG = dict(model_type="git")
# The smoke variant's model, as a Hugging Face config: the tests' $GIT_DIR is
# GitForCausalLM(GitConfig(**SMOKE_HF_CONFIG)).save_pretrained(...) beside bert-base-uncased's vocab.txt,
# so that the smoke run fine-tunes from its `port-weights` workdir.
SMOKE_HF_CONFIG = dict(
  model_type="git",
  vision_config=dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
  ),
  hidden_size=24,
  intermediate_size=48,
  num_hidden_layers=2,
  num_attention_heads=2,
  max_position_embeddings=64,
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, tpu=False, demo=False, model_parallel=1, fsdp=False)
  hf_config = SMOKE_HF_CONFIG if arg.smoke and not arg.demo else GIT_BASE_HF_CONFIG
  config = recipes.roco_chest_experiment(hf_git.model_section(hf_config, "configs/roco_git.py"))  # Seed 002's.
  if arg.tpu:
    config.model.dtype = "bfloat16"
    arg.fsdp = True
    batches_per_epoch = recipes.ROCO_CHEST_TRAIN_IMAGES // 64
    config.train.update(
      batch_size=64, num_steps=10 * batches_per_epoch, eval_every=batches_per_epoch, checkpoint_every=batches_per_epoch
    )
    config.eval.batch_size = 64
  if arg.demo:
    config.data = recipes.phantom_captions_demo_data()
    encoder = dict(
      vit.ViTConfig(image_size=64, patch_size=8, hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128).to_dict(),
      preprocessing=dict(hf_git.PREPROCESSING),
    )
    config.model.update(
      encoder=encoder,
      hidden_size=64,
      num_heads=4,
      num_layers=2,
      intermediate_size=128,
      max_positions=32,
      cache_length=24,
    )
    config.optimizer.update(
      learning_rate=1e-3, warmup_steps=50, final_lr_fraction=0.05, weight_decay=1e-4, accumulate_steps=1
    )
    config.train.update(batch_size=32, num_steps=1500, log_every=50, eval_every=500, checkpoint_every=500)
    config.decode.update(max_length=23)
    config.eval.update(batch_size=50, best_metric="BLEU-4", max_val_examples=100)
  if arg.smoke:
    config.data.update(read_threads=0, max_length=24)
    config.model.cache_length = 24
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.decode.update(max_length=16)
    config.eval.update(batch_size=8, max_val_examples=8)
    if arg.demo:
      config.model.update(
        encoder=dict(vit.tiny_config(), preprocessing=dict(hf_git.PREPROCESSING)),
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        intermediate_size=32,
      )
      config.data.update(image_size=32, num_train=64, num_val=8, num_test=8)
  if arg.fsdp or arg.model_parallel > 1:
    config.sharding = recipes.sharding_section(arg.model_parallel, arg.fsdp)
  return config
