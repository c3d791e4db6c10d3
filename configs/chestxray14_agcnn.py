r"""AG-CNN (seed 004, "Diagnose like a Radiologist") on ChestX-ray14, one stage per run.

  cxrjax prepare chestxray14 --manual-dir=$NIH --data-dir=$DATA --split=random
  cxrjax port-weights --format=torch model.pth.tar weights/chexnet            # optional start point
  cxrjax train --config=configs/chestxray14_agcnn.py:stage=1 --workdir=workdirs/agcnn1 \
      --config.data.data_dir=$DATA --config.init.encoder=weights/chexnet
  cxrjax train --config=configs/chestxray14_agcnn.py:stage=2 --workdir=workdirs/agcnn2 \
      --config.data.data_dir=$DATA --config.init.from_workdir=workdirs/agcnn1
  cxrjax train --config=configs/chestxray14_agcnn.py:stage=3 --workdir=workdirs/agcnn3 \
      --config.data.data_dir=$DATA --config.init.from_workdir=workdirs/agcnn2
  cxrjax evaluate --workdir=workdirs/agcnn3 --split=test       # per-class AUROC + predictions.csv

Stages as seed 004: (1) the global branch; (2) the local branch on attention-guided crops, global
frozen; (3) the fusion branch, both frozen. Binary cross-entropy, Adam with an L2 penalty of 1e-4 on
convolution kernels, the learning rate divided by 10 every 20 epochs, 15 classes (14 findings +
No Finding), 224x224 (training: AG-CNN's random 224 crops of a 256 resize, flipped at random; evaluation:
the whole image resized to 224x224; `data.augment`), patient-level 70/10/20 split available as split=random.
Arguments: stage=1|2|3, split=official|random, classes=14|15, smoke (tiny sizes on the same data, a few
steps), phantom (the embedded phantom set's five findings instead of ChestX-ray14: no download needed),
demo (a small CPU run on the phantom set). The frozen branches of a stage are `optimizer.param_groups`.
No ChestX-ray14 image set can be used in this environment, so no published AUROC is reproduced here
(seed 004 / the AG-CNN paper report a mean AUROC of 0.871 over the 14 findings).
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes
from cxrjax.models import agcnn

# The patient-level 70% training split of the 112,120 images (data/chestxray14, split=random, seed 0;
# tests/data/test_chestxray14.py checks it against the real label file).
IMAGES_PER_EPOCH = 78_329


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, stage=1, split="random", classes=15, batch=32, smoke=False, phantom=False, demo=False)
  if arg.stage not in agcnn.STAGE_MODULES:
    raise config_lib.ConfigError(f"stage={arg.stage}; expected 1, 2 or 3")
  config = ml_collections.ConfigDict()
  config.data = dict(
    name="chestxray14",
    data_dir="",
    tfds_config=arg.split,
    include_no_finding=arg.classes == 15,
    image_size=224,
    num_views=1,
    # AG-CNN's 256 resize + random 224 crop (crop_resize 0: image_size * 8 / 7) and flip (no
    # text: a flipped image keeps its labels); evaluation squashes to 224 x 224.
    augment=dict(random_crop=True, crop_resize=0, flip=True, rotation=0.0),
    max_length=2,
    cleaning="r2gen",
    read_threads=2,
  )
  config.model = dict(
    name="agcnn",
    stage=arg.stage,
    encoder=recipes.densenet121_encoder(),
    num_classes=arg.classes,
    threshold=0.7,
    crop_size=224,
    dtype="float32",
  )
  config.init = recipes.no_init()
  steps_per_epoch = IMAGES_PER_EPOCH // arg.batch
  config.optimizer = dict(
    name="adam_l2",
    schedule="step",
    learning_rate=1e-4,
    decay_every_steps=20 * steps_per_epoch,
    weight_decay=1e-4,
    grad_clip_norm=1e3,
    b1=0.9,
    b2=0.999,
    warmup_steps=0,
    final_lr_fraction=1.0,
    # Each stage trains its branch; the others stay as the previous stage left them.
    param_groups=((agcnn.STAGE_MODULES[arg.stage] + "/.*", 1.0), (".*", None)),
  )
  config.train = dict(
    batch_size=arg.batch,
    num_steps=50 * steps_per_epoch,
    seed=0,
    profile_steps=(),
    log_every=100,
    eval_every=steps_per_epoch,
    checkpoint_every=1000,
    cache_features=False,
  )
  config.eval = dict(batch_size=64, best_metric="mean_AUROC", max_val_examples=0)
  if arg.phantom or arg.demo:
    # The phantom set carries five finding labels; the classifier reads its frontal view.
    config.data.update(
      name="phantom",
      num_views=2,
      num_train=64,
      num_val=16,
      num_test=16,
      phantom_prevalences=dict(cardiomegaly=0.5, effusion=0.5, pneumothorax=0.5, opacity=0.5, nodule=0.5),
    )
    config.data.augment.flip = False  # Its findings have sides (Effusion/left).
    config.model.num_classes = 5
  if arg.smoke:
    config.model.update(encoder=recipes.smoke_chexnet_encoder(), crop_size=64)
    config.data.update(image_size=64, read_threads=0)
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.optimizer.update(decay_every_steps=2, learning_rate=1e-3)
    config.eval.update(batch_size=8)
  if arg.demo:
    config.data.update(image_size=96, num_train=2000, num_val=200, num_test=500)
    config.model.update(encoder=recipes.tiny_encoder(), crop_size=96)
    config.train.update(batch_size=32, num_steps=600, eval_every=200, checkpoint_every=200, log_every=50)
    config.optimizer.update(decay_every_steps=400, learning_rate=1e-3)
    config.eval.update(batch_size=50)
  return config
