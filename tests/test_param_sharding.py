"""Parameter sharding by config (cxrjax/core/sharding.py) on the 8 simulated devices of tests/conftest.py: a GIT
trained by `cxrjax train` with tensor parallelism over 'model' and FSDP over 'data', and a DenseNet
captioner with FSDP, each against the replicated run of the same steps through the same train step;
their shards really distributed; checkpoints restored onto another mesh shape; the section's errors."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cxrjax import cli
from cxrjax.core import sharding
from cxrjax.jobs import train
from cxrjax.run import workdir as workdir_lib
from cxrjax.core.config import load_config_file
from cxrjax.data import datasets
from cxrjax.core.errors import ConfigError
from cxrjax.tasks import evaluation

GIT = "configs/roco_git.py:smoke,demo"
STEPS = 2
# Tensor parallel over 2 devices, FSDP over the other 4; every parameter a candidate (the smoke models
# are far below the default size threshold).
GIT_LAYOUT = ["model_parallel=2", "fsdp"]
GIT_SECTION = dict(mesh=(("data", 4), ("model", 2)), rules=sharding.DEFAULT_RULES, fsdp=True, fsdp_min_size=0)
FSDP_SECTION = dict(mesh=(("data", -1),), fsdp=True, fsdp_min_size=0)


def _replicated_run(config, steps=STEPS, layout=None):
  """What train_and_evaluate does for `steps` steps (same init, batches, dropout keys, jitted step), with
  `layout` (None: replicated parameters): (per-step losses, the final state)."""
  train_source, _ = datasets.make_source(config.data, "train")
  tokenizer = datasets.load_or_build_tokenizer(config.data, train_source)
  components = workdir_lib.build(config, tokenizer)
  mesh = sharding.create_mesh(layout)
  target = workdir_lib.abstract_state(components, mesh, layout)
  state_sharding = jax.tree.map(lambda a: a.sharding, target)
  state = jax.jit(lambda rng: workdir_lib.init_state(components, rng), out_shardings=state_sharding)(
    jax.random.key(config.train.seed)
  )
  step = jax.jit(
    train.make_train_step(components, components.make_optimizer(target.params), config.train.seed),
    in_shardings=(state_sharding, sharding.data_sharded(mesh)),
    out_shardings=(state_sharding, sharding.replicated(mesh)),
    donate_argnums=(0,),
  )
  batches = iter(
    evaluation.split_batches(config, train_source, components.task, train=True, batch_size=config.train.batch_size)
  )
  losses = []
  for _ in range(steps):
    state, metrics = step(state, sharding.to_global(next(batches), sharding.data_sharded(mesh)))
    losses.append(float(metrics["loss"]))
  return losses, state


def _assert_trees_close(actual, expected, loose=()):
  """rtol as float32 sums in another order; atol for parameters near zero (biases after two steps), where
  Adam's first updates (lr * g / (|g| + eps)) magnify the last bits of a small gradient. `loose`: leaves
  (key paths) whose gradient is zero but for rounding, which Adam turns into steps of about +-lr in any
  run: only bounded by a few steps of the demo's learning rate."""
  for (path, a), b in zip(
    jax.tree_util.tree_leaves_with_path(jax.device_get(actual)), jax.tree.leaves(jax.device_get(expected))
  ):
    name = jax.tree_util.keystr(path)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-4 if name in loose else 1e-6, err_msg=name)


def _specs(tree):
  return jax.tree.map(lambda a: a.sharding.spec, tree)


@pytest.fixture(scope="module")
def git_runs(tmp_path_factory):
  """(the workdir of `cxrjax train` with GIT_LAYOUT for STEPS steps, validation included; its status and
  printed output; the replicated run's losses and final state)."""
  workdir = tmp_path_factory.mktemp("git_sharded")
  with contextlib.redirect_stdout(io.StringIO()) as out:
    status = cli.main(
      [
        "train",
        f"--config={GIT},{','.join(GIT_LAYOUT)}",
        f"--workdir={workdir}",
        "--config.sharding.fsdp_min_size=0",
        f"--config.train.num_steps={STEPS}",
        f"--config.train.log_every={STEPS}",
        f"--config.train.checkpoint_every={STEPS}",
      ]
    )
  losses, state = _replicated_run(load_config_file(GIT))
  return workdir, (status, out.getvalue()), losses, state


def test_git_tensor_parallel_and_fsdp_train_as_replicated(git_runs):
  workdir, (status, out), losses, replicated_state = git_runs
  assert status == 0
  assert "parameters: " in out and "per device (mesh data 4 x model 2" in out
  saved = json.loads((workdir / "config.json").read_text())["sharding"]
  assert saved["mesh"] == [["data", -1], ["model", 2]] and saved["fsdp"] and saved["fsdp_min_size"] == 0

  run = workdir_lib.load_run(workdir, workdir_lib.LATEST, optimizer_state=True)  # Onto the run's own layout.
  assert run.mesh.shape == {"data": 4, "model": 2}
  params, specs = run.state.params, _specs(run.state.params)
  layer = specs["text_decoder"]["layers_0"]
  # Tensor parallel: the column-split kernels over 'model' by the rules, FSDP over 'data' on the other axis.
  assert layer["intermediate"]["kernel"] == P("data", "model")
  assert layer["attention"]["query"]["kernel"] == P("data", "model")
  assert layer["output"]["kernel"] == P("model", "data")
  assert specs["image_encoder"]["layers_0"]["mlp"]["fc1"]["kernel"] == P("data", "model")
  assert jax.tree.structure(params) == jax.tree.structure(replicated_state.params)  # Plain arrays, same names.
  # The optimizer state follows the parameters (Adam's moments), its counts replicated.
  adam = next(s for s in jax.tree.leaves(run.state.opt_state, is_leaf=lambda s: hasattr(s, "mu")) if hasattr(s, "mu"))
  assert _specs(adam.mu) == specs and _specs(adam.nu) == specs and adam.count.sharding.spec == P()

  report = sharding.parameter_bytes_per_device(params)
  assert report["devices"] == 8 and report["per_device_max"] == report["per_device_min"]
  assert report["total"] == sum(a.nbytes for a in jax.tree.leaves(replicated_state.params))
  # Sharded 8 ways (data x model) or 4 ways (data only, where 'model' does not divide: the 57 words).
  assert report["total"] / 8 <= report["per_device_max"] < report["total"] / 4
  assert sharding.parameter_bytes_per_device(replicated_state.params)["per_device_max"] == report["total"]

  _assert_trees_close(params, replicated_state.params)
  record = [
    json.loads(line)
    for line in (workdir / "metrics.jsonl").read_text().splitlines()
    if json.loads(line)["split"] == "train"
  ][-1]
  np.testing.assert_allclose(record["loss"], np.mean(losses), rtol=1e-5)


def test_checkpoints_restore_onto_another_mesh_shape(git_runs, tmp_path):
  workdir, (status, _), _, replicated_state = git_runs
  assert status == 0
  config = workdir_lib.read_config(workdir)
  run = workdir_lib.load_run(workdir, workdir_lib.LATEST, optimizer_state=True)
  components = workdir_lib.build(config, run.tokenizer)
  # Saved with (data 4, model 2) + FSDP -> restored replicated on (data 8, model 1).
  replicated_mesh = sharding.create_mesh()
  manager = workdir_lib.checkpoint_manager(workdir, workdir_lib.LATEST, create=False)
  state, _, _ = workdir_lib.restore(manager, workdir_lib.abstract_state(components, replicated_mesh))
  manager.close()
  assert all(a.sharding.is_fully_replicated for a in jax.tree.leaves(state))
  for restored, saved in zip(jax.tree.leaves(state), jax.tree.leaves(run.state)):
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(saved))

  # Saved replicated -> restored onto (data 4, model 2) + FSDP.
  manager = workdir_lib.checkpoint_manager(tmp_path, workdir_lib.LATEST)
  workdir_lib.save(manager, replicated_state, {}, {"step": STEPS})
  manager.wait_until_finished()
  sharded_mesh = sharding.create_mesh(GIT_SECTION)
  target = workdir_lib.abstract_state(components, sharded_mesh, GIT_SECTION)
  state, _, _ = workdir_lib.restore(manager, target)
  manager.close()
  assert _specs(state) == _specs(target) == _specs(run.state)
  for restored, saved in zip(jax.tree.leaves(state), jax.tree.leaves(replicated_state)):
    np.testing.assert_array_equal(np.asarray(restored), np.asarray(saved))


def test_densenet_fsdp_trains_as_replicated():
  config = load_config_file("configs/demo.py:smoke")  # A tiny DenseNet + GRU: no logical names at all.
  losses, expected = _replicated_run(config)
  sharded_losses, state = _replicated_run(config, layout=FSDP_SECTION)
  np.testing.assert_allclose(sharded_losses, losses, rtol=1e-5)
  # The stem's norm0 feeds only per-channel batch norms in training mode, through ReLU and pooling, which
  # commute with a positive scale while norm0's bias is zero (initialised so, and the first update's
  # learning rate is 0): they cancel its scale, whose gradient is then zero but for rounding.
  _assert_trees_close(state.params, expected.params, loose=("['image_encoder']['densenet']['norm0']['scale']",))
  specs = _specs(state.params["image_encoder"]["densenet"])
  assert specs["conv0"]["kernel"] == P(None, None, None, "data")  # [7, 7, 3, 8]: the output channels.
  for tree in (state.params, state.opt_state):
    report = sharding.parameter_bytes_per_device(tree)
    # Every leaf is whole (replicated) or split 8 ways; here almost every byte is split.
    assert report["per_device_max"] == report["replicated"] + (report["total"] - report["replicated"]) // 8
    assert report["replicated"] < 0.05 * report["total"]


def test_parameter_specs_by_rules_and_fsdp():
  mesh = sharding.create_mesh(dict(mesh=(("data", 4), ("model", -1))))
  section = dict(mesh=(("data", 4), ("model", 2)))
  spec = lambda logical, shape, **kw: sharding.parameter_spec(P(*logical), shape, mesh, dict(section, **kw))
  assert sharding.parameter_spec(P("embed", "mlp"), (8, 16), mesh) == P()  # No section: replicated.
  assert spec(("embed", "mlp"), (8, 16)) == P(None, "model")
  assert spec(("vocab", "embed"), (57, 8)) == P()  # 'model' does not divide 57 rows: whole.
  assert spec(("heads", "mlp"), (8, 16)) == P("model")  # One mesh axis per parameter.
  assert spec(("embed", "mlp"), (8, 16), rules=(("embed", "data"),)) == P("data")
  # FSDP: the largest dimension 'data' divides and no rule split; small parameters whole.
  assert spec((None, None, None, None), (3, 3, 8, 16), fsdp=True, fsdp_min_size=0) == P(None, None, None, "data")
  assert spec(("embed", "mlp"), (12, 16), fsdp=True, fsdp_min_size=0) == P("data", "model")
  assert spec((None, None), (6, 10), fsdp=True, fsdp_min_size=0) == P()
  assert spec((None,), (64,), fsdp=True) == P()  # Below FSDP_MIN_SIZE.


@pytest.mark.parametrize(
  "section, message",
  [
    (dict(mesh=(("data", -1), ("tensor", 2))), "sharding.mesh: unknown axis 'tensor'"),
    (dict(mesh=(("data", 2), ("model", 2))), "the sizes multiply to 4, but there are 8 devices"),
    (dict(mesh=(("data", -1), ("model", 3))), "the other axes' 3 devices do not divide the 8 devices"),
    (dict(mesh=(("data", -1), ("model", -1))), "only one axis may have size -1"),
    (dict(mesh=(("data", 0),)), "sharding.mesh: data size 0"),
    (dict(mesh="data"), "expected ((axis, size), ...) pairs"),
    (dict(rules=(("mlp", "tensor"),)), "sharding.rules: 'mlp' -> unknown mesh axis 'tensor'"),
    (dict(rules=(("mlp", "model"), ("mlp", None))), "logical axis 'mlp' appears 2 times"),
    (dict(fsdp="yes"), "sharding.fsdp='yes': expected True or False"),
    (dict(fsdp_min_size=-1), "sharding.fsdp_min_size=-1"),
    (dict(fdsp=True), "sharding.fdsp: unknown field"),
  ],
)
def test_bad_sections_are_one_line_errors(section, message):
  with pytest.raises(ConfigError) as error:
    sharding.create_mesh(section)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_default_mesh_and_loading_where_the_mesh_does_not_fit(capsys, tmp_path):
  assert sharding.create_mesh().shape == {"data": 8, "model": 1}
  mesh, layout = sharding.mesh_for_loading(dict(mesh=(("data", 3), ("model", 2))), "run/config.json")
  assert mesh.shape == {"data": 8, "model": 1} and layout is None
  assert "warning: run/config.json: sharding.mesh" in capsys.readouterr().err
  status = cli.main(["train", f"--config={GIT},model_parallel=3", f"--workdir={tmp_path}"])
  assert status == 2
  assert "do not divide the 8 devices" in capsys.readouterr().err
