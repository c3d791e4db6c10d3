r"""Seed 002: Salesforce BLIP-base captioning, fine-tuned on ROCO's chest X-ray subset.

  # Salesforce/blip-image-captioning-base as downloaded from the hub (config.json, model.safetensors,
  # vocab.txt / tokenizer.json) -> a cxrjax workdir (BLIP's captioning prompt kept in its config):
  cxrjax port-weights --format hf --prompt "a picture of" $BLIP_DIR workdirs/blip_base
  cxrjax prepare roco --manual-dir=$ROCO --data-dir=$DATA --subset chest_xray
  cxrjax train --config=configs/roco_blip.py --workdir=workdirs/roco_blip \
      --config.init.from_workdir=workdirs/blip_base \
      --config.data.tokenizer=workdirs/blip_base/tokenizer.json --config.data.data_dir=$DATA
  cxrjax evaluate --workdir=workdirs/roco_blip --split=test

The seed's scores (BLIP-base fine-tuned, ROCO chest X-ray test split): ROUGE-1 0.34, ROUGE-2 0.22,
ROUGE-L 0.33, ROUGE-Lsum 0.35, BLEU 0.08, METEOR 0.12 (before fine-tuning: 0.2, 0.06, 0.19, 0.19, 0, 0.08).
Not reproduced here: no ROCO images can be used in this environment.

Recipe (cxrjax/core/recipes.py `roco_chest_experiment`): 384 x 384, bicubic, CLIP statistics (BlipImageProcessor),
AdamW 5e-5, weight decay 1e-8, 10 epochs, batch 8 per device, gradients accumulated over 2 batches
(`optimizer.accumulate_steps`), cross-entropy over caption tokens with `train.label_smoothing` (0.0, BLIP's
config default; the seed does not state one) and the prompt masked (the model returns no logits for it:
cxrjax/models/blip.py). `tpu` adds bfloat16 compute over float32 master weights (the seed used fp16 on GPUs).
Decoding: BLIP's captioning setup, the prompt "[DEC] a picture of" (`model.prompt_ids`, bert-base-uncased
ids), beam search of 3 with transformers' rules (`decode.length_normalization="hf"`: its finished-hypothesis
pool, score = log-probability / length ** length_penalty, length_penalty 1.0), so that the captions equal
`model.generate(pixel_values, input_ids, num_beams=3, max_new_tokens=50)`. The `port-weights` workdir
itself decodes as `model.generate(pixel_values, input_ids)` does: greedy, 20 new tokens (transformers'
defaults; BLIP's `generate` reads no generation setting of the directory).
Training sees the BlipImageProcessor's view too, as the seed did: no crop, flip or rotation (`data.augment`).

The model section is blip-base's config.json (Salesforce/blip-image-captioning-base): ViT-B/16 at 384 with
layer_norm_eps 1e-5; a 12-layer BERT decoder of width 768 with 12 heads (not BlipTextConfig's default 8),
eps 1e-12, 512 positions, vocabulary 30524 (bert-base-uncased + [DEC] + [ENC]). init.from_workdir needs
the same architecture (a `port-weights` workdir of that checkpoint).

The demo trains a tiny BLIP from scratch on the embedded phantom caption set (no download, word vocabulary,
no prompt):
  cxrjax train --config=configs/roco_blip.py:demo --workdir=workdirs/blip_demo
  cxrjax evaluate --workdir=workdirs/blip_demo --split=test --no-meteor
Its measured scores and those of the image-free baselines: README.md, "The other captioners' demos".

Arguments:
  demo     the embedded phantom caption set: a tiny BLIP, a short CPU run
  tpu      bfloat16 compute, parameters and optimizer state split over the devices (fsdp;
           --config.sharding.fsdp=False replicates them)
  smoke    tiny sizes for a quick end-to-end check
  model_parallel=N, fsdp  the parameter layout over the devices (config.sharding; as in roco_git.py)
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes
from cxrjax.models.encoders import vit
from cxrjax.weights import hf_blip

# [DEC] a picture of: BLIP's bos 30522, then bert-base-uncased's "a", "picture", "of"
# (tests/weights/test_hf_blip.py checks them against `port-weights --prompt "a picture of"`).
PROMPT_IDS = (30522, 1037, 3861, 1997)
# The config.json fields of Salesforce/blip-image-captioning-base that differ from transformers' defaults
# (hf_blip.TEXT_DEFAULTS / VISION_DEFAULTS, checked against transformers); the rest are the defaults.
BLIP_BASE_HF_CONFIG = dict(model_type="blip", text_config=dict(num_attention_heads=12), vision_config={})
# The smoke variant's model, as a Hugging Face config: the tests' $BLIP_DIR is
# BlipForConditionalGeneration(BlipConfig(**SMOKE_HF_CONFIG)).save_pretrained(...), so that the smoke
# run fine-tunes from its `port-weights` workdir.
SMOKE_HF_CONFIG = dict(
  model_type="blip",
  vision_config=dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
  ),
  text_config=dict(
    hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=64
  ),
)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, tpu=False, demo=False, model_parallel=1, fsdp=False)
  hf_config = SMOKE_HF_CONFIG if arg.smoke and not arg.demo else BLIP_BASE_HF_CONFIG
  section = hf_blip.with_prompt(hf_blip.model_section(hf_config, "configs/roco_blip.py"), PROMPT_IDS)
  config = hf_blip.fit_lengths(recipes.roco_chest_experiment(dict(section)), section)  # Seed 002's recipe.
  # BLIP's captioning search: beam 3 with transformers' rules (a ported checkpoint's own is `generate`'s greedy).
  config.decode.update(beam_size=3, length_penalty=1.0, length_normalization="hf")
  config.train.label_smoothing = 0.0
  if arg.tpu:
    config.model.dtype = "bfloat16"
    arg.fsdp = True
  if arg.demo:
    config.data = recipes.phantom_captions_demo_data()
    encoder = dict(
      vit.ViTConfig(
        image_size=64,
        patch_size=8,
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        mlp_dim=128,
        layer_norm_eps=1e-5,
        activation="gelu",
        patch_bias=True,
        pre_norm=False,
      ).to_dict(),
      preprocessing=dict(hf_blip.PREPROCESSING),
    )
    config.model.update(
      encoder=encoder,
      hidden_size=64,
      num_heads=4,
      num_layers=2,
      intermediate_size=128,
      max_positions=32,
      prompt_ids=(),
      cache_length=24,
      dropout_rate=0.1,
      attention_dropout_rate=0.1,
    )
    config.optimizer.update(
      learning_rate=1e-3, warmup_steps=50, final_lr_fraction=0.05, weight_decay=1e-4, accumulate_steps=1
    )
    config.train.update(batch_size=32, num_steps=1500, log_every=50, eval_every=500, checkpoint_every=500)
    config.decode.update(max_length=23)
    config.eval.update(batch_size=50, best_metric="BLEU-4", max_val_examples=100)
  if arg.smoke:
    config.data.update(read_threads=0, max_length=24)
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.decode.update(max_length=16)
    config.eval.update(batch_size=8, max_val_examples=8)
    if arg.demo:
      config.model.update(
        encoder=dict(
          vit.tiny_config(),
          activation="gelu",
          patch_bias=True,
          pre_norm=False,
          preprocessing=dict(hf_blip.PREPROCESSING),
        ),
        hidden_size=16,
        num_heads=2,
        num_layers=2,
        intermediate_size=32,
      )
      config.data.update(image_size=32, num_train=64, num_val=8, num_test=8)
  if arg.fsdp or arg.model_parallel > 1:
    config.sharding = recipes.sharding_section(arg.model_parallel, arg.fsdp)
  return config
