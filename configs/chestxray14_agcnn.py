r"""AG-CNN (seed 004, "Diagnose like a Radiologist") on ChestX-ray14, one stage per run.

  cxrjax prepare chestxray14 --manual-dir=$NIH --data-dir=$DATA
  cxrjax port-weights --format=torch model.pth.tar weights/chexnet            # optional start point
  cxrjax train --config=configs/chestxray14_agcnn.py:stage=1 --workdir=workdirs/agcnn1 \
      --config.data.data_dir=$DATA --config.model.encoder_weights=weights/chexnet
  cxrjax train --config=configs/chestxray14_agcnn.py:stage=2 --workdir=workdirs/agcnn2 \
      --config.data.data_dir=$DATA --config.model.init_from=workdirs/agcnn1
  cxrjax train --config=configs/chestxray14_agcnn.py:stage=3 --workdir=workdirs/agcnn3 \
      --config.data.data_dir=$DATA --config.model.init_from=workdirs/agcnn2
  cxrjax evaluate --workdir=workdirs/agcnn3 --split=test       # per-class AUROC + predictions.csv

Stages as seed 004: (1) the global branch; (2) the local branch on attention-guided crops, global
frozen; (3) the fusion branch, both frozen. Binary cross-entropy, Adam with an L2 penalty of 1e-4 on
convolution kernels, the learning rate divided by 10 every 20 epochs, 15 classes (14 findings +
No Finding), 224x224, patient-level 70/10/20 split available as split=random.
Arguments: stage=1|2|3, split=official|random, classes=14|15, smoke (tiny, on the phantom set; used by
the tests), demo (a small CPU run on the phantom set's five findings).
No ChestX-ray14 image set can be used in this environment, so no published AUROC is reproduced here
(seed 004 / the AG-CNN paper report a mean AUROC of 0.871 over the 14 findings).
"""

import ml_collections

from cxrjax import config as config_lib

IMAGES_PER_EPOCH = 78_484  # The 70% patient split of the 112,120 images.


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  arg = config_lib.parse_arg(arg, stage=1, split="random", classes=15, batch=32, smoke=False, demo=False)
  config = ml_collections.ConfigDict()
  config.data = dict(name="chestxray14", data_dir="", tfds_config=arg.split,
                     include_no_finding=arg.classes == 15, image_size=224, num_views=1,
                     random_flip=True, max_length=2, cleaning="r2gen", read_threads=2)
  config.model = dict(name="agcnn", stage=arg.stage, init_from="", encoder_weights="",
                      encoder=config_lib.densenet121_encoder(), num_classes=arg.classes, threshold=0.7,
                      crop_size=224, dtype="float32")
  steps_per_epoch = IMAGES_PER_EPOCH // arg.batch
  config.train = dict(
      batch_size=arg.batch, num_steps=50 * steps_per_epoch, optimizer="adam_l2", schedule="step",
      learning_rate=1e-4, decay_every_steps=20 * steps_per_epoch, weight_decay=1e-4, grad_clip_norm=1e3,
      b1=0.9, b2=0.999, seed=0, warmup_steps=0, final_lr_fraction=1.0,
      log_every=100, eval_every=steps_per_epoch, checkpoint_every=1000)
  config.eval = dict(batch_size=64, best_metric="mean_AUROC", max_val_examples=0)
  if arg.smoke or arg.demo:
    # The phantom set carries five finding labels; the classifier reads its frontal view.
    config.data.update(name="phantom", num_views=2, random_flip=False, num_train=64, num_val=16,
                       num_test=16, phantom_prevalences=dict(cardiomegaly=0.5, effusion=0.5,
                                                              pneumothorax=0.5, opacity=0.5, nodule=0.5))
    config.model.update(num_classes=5, encoder=dict(block_sizes=(1, 1), growth_rate=4, stem_features=8,
                                                    bn_epsilon=1e-5), crop_size=32)
    config.data.image_size = 32
    config.train.update(batch_size=8, num_steps=4, log_every=2, eval_every=4, checkpoint_every=2,
                        decay_every_steps=2, learning_rate=1e-3)
    config.eval.update(batch_size=8)
  if arg.demo:
    config.data.update(image_size=96, num_train=2000, num_val=200, num_test=500)
    config.model.update(encoder=config_lib.tiny_encoder(), crop_size=96)
    config.train.update(batch_size=32, num_steps=600, eval_every=200, checkpoint_every=200, log_every=50,
                        decay_every_steps=400)
    config.eval.update(batch_size=50)
  return config
