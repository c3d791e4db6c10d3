"""AG-CNN: the three branches against the parts called one by one, stages, the loss, CheXNet initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import chestxray14_agcnn
from cxrjax import models
from cxrjax.core import optim
from cxrjax.jobs import train
from cxrjax.run import workdir
from cxrjax.models import agcnn
from cxrjax.models.encoders import densenet
from cxrjax.ops import attention_crop
from cxrjax.weights import chexnet, pretrained

TINY = densenet.config_from_section(densenet.tiny_config())
BRANCH_OF_STAGE = {1: "global_branch", 2: "local_branch", 3: "fusion_classifier"}


@pytest.fixture(scope="module")
def tiny_model():
  model = agcnn.AGCNN(backbone=TINY, num_classes=15, crop_size=24)
  images = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
  variables = jax.jit(model.init)(jax.random.key(1), images)
  return model, variables, images


def test_agcnn_outputs(tiny_model):
  model, variables, images = tiny_model
  out = jax.jit(model.apply)(variables, images)
  shapes = {name: value.shape for name, value in out.items()}
  assert shapes == {
    "global_logits": (3, 15),
    "local_logits": (3, 15),
    "fusion_logits": (3, 15),
    "heatmap": (3, 32, 32),
    "boxes": (3, 4),
    "local_images": (3, 24, 24, 3),
    "global_pooled": (3, TINY.num_features),
    "local_pooled": (3, TINY.num_features),
  }
  params, stats = variables["params"], variables["batch_stats"]
  branch = agcnn.Branch(TINY, 15)

  @jax.jit
  def by_parts(images):
    """The three branches called one by one, with the crop in between."""
    global_out = branch.apply({"params": params["global_branch"], "batch_stats": stats["global_branch"]}, images)
    crop = attention_crop.attention_crop(images, global_out["feature_map"], 0.7, 24)
    local_out = branch.apply({"params": params["local_branch"], "batch_stats": stats["local_branch"]}, crop.crops)
    fusion = params["fusion_classifier"]
    joined = jnp.concatenate([global_out["pooled"], local_out["pooled"]], axis=-1)
    return global_out, crop, local_out, joined @ fusion["kernel"] + fusion["bias"]

  global_out, crop, local_out, fusion_logits = by_parts(images)
  np.testing.assert_allclose(global_out["pooled"], global_out["feature_map"].max(axis=(1, 2)))
  np.testing.assert_allclose(out["global_logits"], global_out["logits"], atol=1e-5)
  np.testing.assert_array_equal(out["boxes"], crop.boxes)
  np.testing.assert_allclose(out["local_images"], crop.crops, atol=1e-5)
  np.testing.assert_allclose(out["local_logits"], local_out["logits"], atol=1e-4)
  np.testing.assert_allclose(out["fusion_logits"], fusion_logits, atol=1e-4)
  assert params["fusion_classifier"]["kernel"].shape == (2 * TINY.num_features, 15)
  assert len({tuple(box) for box in np.asarray(out["boxes"]).tolist()}) > 1


def test_stages_train_only_their_branch(tiny_model):
  model, variables, images = tiny_model
  labels = jnp.asarray(np.random.default_rng(0).integers(0, 2, (3, 15)), jnp.float32)

  def loss(params, stage):
    out, updates = model.clone(stage=stage).apply(
      {"params": params, "batch_stats": variables["batch_stats"]}, images, train=True, mutable=["batch_stats"]
    )
    return agcnn.stage_loss(out, labels, stage), updates["batch_stats"]

  grads = jax.jit(lambda p: {s: jax.grad(loss, has_aux=True)(p, s) for s in (1, 2, 3)})(variables["params"])
  for stage, trained in BRANCH_OF_STAGE.items():
    stage_grads, stats = grads[stage]
    for name in BRANCH_OF_STAGE.values():
      norm = optax.tree.norm(stage_grads[name])
      assert (norm > 0) == (name == trained), (stage, name, norm)
    for name in agcnn.BRANCHES:  # batch-norm statistics move only in the trained branch
      moved = optax.tree.norm(jax.tree.map(jnp.subtract, stats[name], variables["batch_stats"][name]))
      assert (moved > 0) == (name == trained), (stage, name)
    # The stage's config freezes every other part: its param groups label them so.
    config = chestxray14_agcnn.get_config(f"stage={stage}")
    labels_tree = optim.parameter_labels(config.optimizer, variables["params"])
    assert {name: set(jax.tree.leaves(tree)) for name, tree in labels_tree.items()} == {
      name: {"rate=1.0" if name == trained else optim.FROZEN} for name in variables["params"]
    }
    built = models.build(config.model, None, optim.frozen_predicate(config.optimizer))
    assert isinstance(built, agcnn.AGCNN) and built.stage == stage
    assert built.logits_key() == agcnn.STAGE_LOGITS[stage]


def test_stage_loss_is_bce():
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(4, 15)) * 5, jnp.float32)
  labels = jnp.asarray(rng.integers(0, 2, (4, 15)), jnp.float32)
  expected = optax.sigmoid_binary_cross_entropy(logits, labels).mean()
  assert agcnn.stage_loss({"local_logits": logits}, labels, 2) == pytest.approx(float(expected), rel=1e-5)
  mask = jnp.array([True, True, False, False])
  expected = optax.sigmoid_binary_cross_entropy(logits[:2], labels[:2]).mean()
  assert agcnn.stage_loss({"fusion_logits": logits}, labels, 3, mask) == pytest.approx(float(expected), rel=1e-5)


def _chexnet_weights(directory, encoder_section, seed: int = 7):
  """A ported CheXNet of the configured (tiny) DenseNet, written as `cxrjax port-weights` writes it."""
  config = densenet.config_from_section(encoder_section, num_classes=14)
  net = densenet.DenseNet(config)
  variables = jax.jit(net.init)(jax.random.key(seed), jnp.zeros((1, 64, 64, 3)))
  chexnet.save_chexnet(directory, variables, config, source={"test": True})
  return net, variables


def _assert_equal_trees(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_init_encoder_loads_chexnet_into_both_branches_and_stage_one_trains_only_the_global_one(tmp_path):
  config = chestxray14_agcnn.get_config("stage=1,smoke,phantom")
  net, chexnet_variables = _chexnet_weights(tmp_path / "weights", config.model.encoder)
  config.init.encoder = str(tmp_path / "weights")
  components = workdir.build(config, None)
  fresh = jax.jit(lambda rng: workdir.init_state(components, rng))(jax.random.key(config.train.seed))
  loaded = pretrained.initialize(config.init, agcnn.AGCNN, fresh.variables())
  size = config.data.image_size
  images = jax.random.normal(jax.random.key(0), (3, size, size, 3))
  branch = agcnn.Branch(densenet.config_from_section(config.model.encoder), config.model.num_classes)
  expected_map = jax.jit(net.apply)(chexnet_variables, images)["feature_map"]
  for name in agcnn.BRANCHES:  # Both backbones are CheXNet's: the same feature maps.
    ours = jax.jit(branch.apply)(
      {"params": loaded["params"][name], "batch_stats": loaded["batch_stats"][name]}, images
    )["feature_map"]
    np.testing.assert_allclose(ours, expected_map, atol=1e-6)
  # The heads are AG-CNN's own (max-pooled features, its classes): untouched.
  for head in (("global_branch", "classifier"), ("local_branch", "classifier"), ("fusion_classifier",)):
    before, after = fresh.params, loaded["params"]
    for key in head:
      before, after = before[key], after[key]
    _assert_equal_trees(before, after)

  # Training stage 1 from there moves the global branch only; the rest stays as loaded, bit for bit.
  train.train_and_evaluate(config, tmp_path / "run")
  state = workdir.load_run(tmp_path / "run", workdir.LATEST).state
  assert int(state.step) == config.train.num_steps
  for frozen in ("local_branch", "fusion_classifier"):
    _assert_equal_trees(state.params[frozen], loaded["params"][frozen])
  _assert_equal_trees(state.batch_stats["local_branch"], loaded["batch_stats"]["local_branch"])
  for collection in ("params", "batch_stats"):
    after, before = state.variables()[collection]["global_branch"], loaded[collection]["global_branch"]
    moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(after), jax.tree.leaves(before))]
    assert sum(moved) >= 0.5 * len(moved), (collection, sum(moved), len(moved))


def test_chexnet_of_another_architecture_is_a_clear_error(tmp_path):
  config = chestxray14_agcnn.get_config("stage=1,smoke,phantom")
  deeper = dict(config.model.encoder, block_sizes=(1, 2))
  _chexnet_weights(tmp_path / "deeper", deeper)
  config.init.encoder = str(tmp_path / "deeper")
  components = workdir.build(config, None)
  fresh = jax.jit(lambda rng: workdir.init_state(components, rng))(jax.random.key(0))
  with pytest.raises(
    chexnet.WeightsError, match="deeper: DenseNet.*does not fit the configured encoder at global_branch/backbone"
  ):
    pretrained.initialize(config.init, agcnn.AGCNN, fresh.variables())
