"""A model learns: on phantoms whose reports depend on one finding drawn into the images (cardiomegaly,
half the studies), a tiny attention captioner's loss falls and its greedy reports beat both answers that
ignore the images (the most common training report, and the best constant report chosen on training data).

About 50 s on 2 CPU cores.
"""

import json

import pytest

from cxrjax.jobs import evaluate, train
from configs import demo

STEPS = 160


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
  config = demo.get_config(f"res=32,steps={STEPS}")
  config.data.update(
    num_train=512,
    num_val=64,
    num_test=64,
    read_threads=0,
    phantom_prevalences=dict(cardiomegaly=0.5, effusion=0.0, pneumothorax=0.0, opacity=0.0, nodule=0.0),
  )
  config.model.update(
    encoder=dict(block_sizes=(2, 2), growth_rate=8, stem_features=16, bn_epsilon=1e-5),
    embed_dim=32,
    hidden_dim=64,
    region_dim=32,
    attention_dim=32,
  )
  config.train.update(log_every=STEPS // 4, eval_every=STEPS, checkpoint_every=STEPS)
  config.optimizer.warmup_steps = 20
  config.decode.beam_size = 1  # Greedy.
  config.eval.update(batch_size=64, max_val_examples=64)
  workdir = tmp_path_factory.mktemp("learned")
  train.train_and_evaluate(config, workdir)
  return workdir


def test_the_training_loss_falls(learned):
  losses = [
    json.loads(line)["loss"]
    for line in (learned / "metrics.jsonl").read_text().splitlines()
    if json.loads(line)["split"] == "train"
  ]
  assert len(losses) == 4
  assert losses[-1] < 0.3 * losses[0], losses


def test_greedy_reports_beat_the_image_free_baselines(learned):
  output = evaluate.evaluate(str(learned), "test", meteor=False)
  model = output["scores"]["BLEU-4"]
  constants = {
    name: output["baselines"][name]["scores"]["BLEU-4"] for name in ("most_common_report", "best_constant_report")
  }
  assert all(model > value + 0.02 for value in constants.values()), (model, constants)
