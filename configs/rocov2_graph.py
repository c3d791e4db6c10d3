r"""Seed 003: ResNet-50 + graph propagation + transformer decoder captioner on ROCOv2.

  cxrjax prepare rocov2 --manual-dir=$ROCOV2 --data-dir=$DATA
  cxrjax train --config=configs/rocov2_graph.py --workdir=workdirs/rocov2_graph \
      --config.data.data_dir=$DATA --config.data.tokenizer=$VOCAB
  cxrjax evaluate --workdir=workdirs/rocov2_graph --split=test

The demo, on the embedded phantom caption set (no download; single frontal images with one-line captions
written from the findings drawn into them):
  cxrjax train --config=configs/rocov2_graph.py:demo --workdir=workdirs/graph_demo
  cxrjax evaluate --workdir=workdirs/graph_demo --split=test
Its measured scores and those of the image-free baselines: README.md, "The other captioners' demos".

Scoring as ImageCLEFmedical Caption ranks ROCOv2 submissions: its evaluator lower-cases both captions,
replaces digit runs with "number" and deletes punctuation (config.data.caption_protocol "imageclef", ROCOv2's
default), then ranks by BERTScore first and ROUGE-1 second, each computed caption by caption and averaged. Its
2025 evaluator's BERTScore is the recall of microsoft/deberta-xlarge-mnli (bert-score's default layer 40) with
idf weights over the references, not rescaled. cxrjax's BERTScore (cxrjax/evaluators/bertscore.py) runs that
encoder (DeBERTa v1, cxrjax/models/encoders/deberta.py) from a Hugging Face download of it, README.md
"Clinical efficacy and BERTScore":
  cxrjax evaluate --workdir=workdirs/rocov2_graph --split=test \
      --bertscore-model=deberta-xlarge-mnli/ --bertscore-idf
(or `cxrjax score PREDICTIONS --evaluators text,bertscore --protocol imageclef` with the same two flags) and
reads BERTScore/R, the mean recall over the captions (P and F1 come with it). The protocol normalises the text
metrics' captions only: BERTScore encodes the texts as given, as bert-score does. cxrjax's BERTScore equals
bert-score's on random tiny DeBERTa models (tests/evaluators/test_bertscore.py); no score of the real encoder
was measured here (no download), so none is claimed.

$ROCOV2 holds the official release (train/valid/test_captions.csv and the image folders) or the Hugging
Face `eltorio/ROCOv2-radiology` parquet files; $VOCAB is bert-base-uncased's `vocab.txt` (captions are
WordPiece tokens, [CLS] ... [SEP], at most 80). Seed setup: resized to 224x224 (no crop, whatever the aspect
ratio) with ImageNet statistics, trained with random horizontal flips and rotations of up to 10 degrees
(`data.augment`), AdamW 1e-4, batch 200, 15 epochs of the 56,963 training images, cross-entropy with [PAD]
masked; the seed reports a training loss of 2.49 (perplexity 12.1, both logged in metrics.jsonl) after 15
epochs. Decoding, this recipe's choice: beam 3 with no trigram repeated (`config.decode`), at most 80 tokens; the
seed's generate_caption, which a `cxrjax port-weights --format seed003-torch` workdir reproduces, is greedy
without blocking. Not reproduced here: no ROCOv2 images can be used in this environment. Arguments:
  demo     the embedded phantom caption set (no download): a small model, a short CPU run
  chest    only the chest X-ray subset of the captions (data.subset="chest_xray")
  tpu      bfloat16 compute, batch 256
  smoke    tiny sizes for a quick end-to-end check
  model_parallel=N, fsdp  the parameter layout over the devices (config.sharding; as in roco_git.py)
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes
from cxrjax.models.encoders import resnet


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, smoke=False, tpu=False, demo=False, chest=False, model_parallel=1, fsdp=False)
  model = dict(
    name="graph_captioner",
    encoder=dict(resnet.RESNET50.to_dict(), preprocessing=dict(recipes.IMAGENET_PREPROCESSING)),
    d_model=512,
    num_heads=8,
    num_layers=4,
    ff_dim=1024,
    dropout_rate=0.1,
    graph_window=3,
    graph_steps=3,
    max_positions=2000,
    cache_length=80,
    dtype="float32",
  )
  config = recipes.rocov2_experiment(model)
  config.decode.update(beam_size=3, block_ngram_repeat=3)  # This recipe's search (the seed's is greedy, unblocked).
  config.data.subset = "chest_xray" if arg.chest else "all"
  if arg.tpu:
    config.model.dtype = "bfloat16"
    config.train.batch_size = 256
    config.eval.batch_size = 256
  if arg.demo:
    config.data = recipes.phantom_captions_demo_data()
    config.model.update(
      encoder=dict(
        embedding_size=16,
        hidden_sizes=(32, 64, 96, 128),
        depths=(1, 1, 1, 1),
        preprocessing=dict(recipes.IMAGENET_PREPROCESSING),
      ),
      d_model=128,
      num_heads=4,
      num_layers=2,
      ff_dim=256,
      max_positions=64,
      cache_length=24,
    )
    config.optimizer.update(learning_rate=1e-3, warmup_steps=50, final_lr_fraction=0.05)
    config.train.update(batch_size=32, num_steps=1500, log_every=50, eval_every=500, checkpoint_every=500)
    config.decode.update(max_length=23, block_ngram_repeat=0)
    config.eval.update(batch_size=50, max_val_examples=100)
  if arg.smoke:
    config.model.update(
      encoder=dict(resnet.tiny_config(), preprocessing=dict(recipes.IMAGENET_PREPROCESSING)),
      d_model=16,
      num_heads=2,
      num_layers=2,
      ff_dim=32,
      max_positions=96,
      cache_length=80,
    )
    config.data.update(image_size=32, read_threads=0)
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.optimizer.warmup_steps = 1
    config.decode.update(max_length=min(config.decode.max_length, 16))
    config.eval.update(batch_size=8, max_val_examples=8)
    if arg.demo:
      config.data.update(num_train=64, num_val=8, num_test=8)
      config.model.update(max_positions=32, cache_length=24)
  if arg.fsdp or arg.model_parallel > 1:
    config.sharding = recipes.sharding_section(arg.model_parallel, arg.fsdp)
  return config
