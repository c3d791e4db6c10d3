r"""CheXNet (Rajpurkar et al., 2017) trained on ChestX-ray14: DenseNet-121 with a sigmoid head over the 14
findings (models/chexnet.py, the family `cxrjax classify` and `serve --weights` run ported CheXNet weights in).

  cxrjax prepare chestxray14 --manual-dir=$NIH --data-dir=$DATA --split=random
  cxrjax train --config=configs/chestxray14_chexnet.py --workdir=workdirs/chexnet --config.data.data_dir=$DATA
  cxrjax evaluate --workdir=workdirs/chexnet --split=test        # per-class AUROC + predictions.csv

As the paper: 224 x 224 images (the whole image resized; training flips at random), binary cross-entropy,
Adam (b1 0.9, b2 0.999) from a learning rate of 1e-3 divided by 10 (the paper on a validation plateau; here
every 10 epochs, a fixed step schedule), batches of 16, the 14 findings. The paper starts from ImageNet
weights, which cannot be downloaded here: this trains from scratch. Arguments: split=official|random,
batch, smoke (tiny sizes on the same data, a few steps), phantom (the embedded phantom set's five findings:
no download needed). No ChestX-ray14 image set can be used in this environment, so the paper's mean AUROC
(0.841 over the 14 findings) is not reproduced here.
"""

import ml_collections

from cxrjax.core import config as config_lib
from cxrjax.core import recipes

# The patient-level 70% training split of the 112,120 images (configs/chestxray14_agcnn.py's count).
IMAGES_PER_EPOCH = 78_329


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, split="random", batch=16, smoke=False, phantom=False)
  config = ml_collections.ConfigDict()
  config.data = dict(
    name="chestxray14",
    data_dir="",
    tfds_config=arg.split,
    include_no_finding=False,
    image_size=224,
    num_views=1,
    augment=dict(random_crop=False, crop_resize=0, flip=True, rotation=0.0),
    max_length=2,
    cleaning="r2gen",
    read_threads=2,
  )
  config.model = dict(name="chexnet", encoder=recipes.densenet121_encoder(), num_classes=14, dtype="float32")
  config.init = recipes.no_init()
  steps_per_epoch = IMAGES_PER_EPOCH // arg.batch
  config.optimizer = dict(
    name="adam_l2",
    schedule="step",
    learning_rate=1e-3,
    decay_every_steps=10 * steps_per_epoch,
    weight_decay=0.0,
    grad_clip_norm=1e3,
    b1=0.9,
    b2=0.999,
    warmup_steps=0,
    final_lr_fraction=1.0,
    param_groups=recipes.TRAINED_EVERYWHERE,
  )
  config.train = dict(
    batch_size=arg.batch,
    num_steps=30 * steps_per_epoch,
    seed=0,
    profile_steps=(),
    log_every=100,
    eval_every=steps_per_epoch,
    checkpoint_every=1000,
    cache_features=False,
  )
  config.eval = dict(batch_size=64, best_metric="mean_AUROC", max_val_examples=0)
  if arg.phantom:
    config.data.update(name="phantom", num_views=2, num_train=64, num_val=16, num_test=16)
    config.data.augment.flip = False  # Its findings have sides (Effusion/left).
    config.model.num_classes = 5
  if arg.smoke:
    config.model.update(encoder=recipes.smoke_chexnet_encoder())
    config.data.update(image_size=64, read_threads=0)
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2)
    config.optimizer.update(decay_every_steps=2)
    config.eval.update(batch_size=8)
  return config
