"""`--distributed` specs (sharding.parse_distributed); joining the runtime itself is run by
tests/test_multiprocess.py, whose worker processes call sharding.initialize_distributed. Which rows of a
batch each process holds on a mesh laid out as a multi-host TPU slice lays it out (libtpu describes slices
on a CPU machine; those tests skip without it)."""

import jax
import numpy as np
import pytest
from jax.experimental import topologies

from cxrjax import cli
from cxrjax.core import sharding
from cxrjax.core.errors import ConfigError

# The processes along jax.make_mesh's 'data' axis over a v5p:2x2x2 slice (2 hosts of 4 chips: the shape of
# tests/test_multiprocess.py's 2 processes of 4 CPU devices, which lay their devices out so), read with
# libtpu 0.0.42.1 and jax 0.10.2 on a CPU machine; test_slice_process_order_is_libtpus re-reads it:
#   TPU_WORKER_HOSTNAMES=localhost python -c 'import jax; from jax.experimental import topologies;
#     devices = topologies.get_topology_desc(platform="tpu", topology_name="v5p:2x2x2").devices;
#     print([d.process_index for d in jax.make_mesh((8,), ("data",), devices=devices).devices.flat])'
# (v5e:4x4 gives [0,0,1,1,1,1,0,2,3,3,3,3,2,2,2,0] over its 4 hosts; CPU processes come in blocks.)
SLICE_TOPOLOGY, SLICE_PROCESS_ORDER = "v5p:2x2x2", (0, 1, 0, 1, 0, 1, 0, 1)


def test_distributed_specs():
  assert sharding.parse_distributed("") is None
  assert sharding.parse_distributed("auto") == {}
  assert sharding.parse_distributed("10.0.0.2:1234,4,3") == dict(
    coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3
  )


@pytest.mark.parametrize("spec", ["localhost", "localhost:1,2", "localhost:1,2,2", "localhost:1,x,0", "host,2,0"])
def test_bad_distributed_specs(spec):
  with pytest.raises(ConfigError, match="--distributed"):
    sharding.parse_distributed(spec)


def test_bad_distributed_spec_is_one_line_before_any_work(capsys):
  assert (
    cli.main(["train", "--config=configs/demo.py:smoke", "--workdir=/nonexistent/x", "--distributed=localhost:1,2,5"])
    == 2
  )
  error = capsys.readouterr().err
  assert error.strip() == ("cxrjax train: error: --distributed='localhost:1,2,5': process id 5 is not in 0..1")


def _slice_devices(topology: str, monkeypatch) -> list:
  pytest.importorskip("libtpu", reason="libtpu (pip install libtpu==0.0.42.1) describes TPU slices")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")  # Else libtpu logs harmless start-up errors.
  return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices


def _slice_mesh(devices: list, model: int = 1) -> jax.sharding.Mesh:
  """What sharding.create_mesh builds on the slice (jax.make_mesh over its devices)."""
  return jax.make_mesh(
    (len(devices) // model, model), sharding.MESH_AXES, devices=devices, axis_types=(jax.sharding.AxisType.Auto,) * 2
  )


def test_slice_process_order_is_libtpus(monkeypatch):
  mesh = _slice_mesh(_slice_devices(SLICE_TOPOLOGY, monkeypatch))
  assert tuple(device.process_index for device in mesh.devices.flat) == SLICE_PROCESS_ORDER


@pytest.mark.parametrize("topology, model", [("v5p:2x2x2", 1), ("v5p:2x2x2", 2), ("v5e:4x4", 1), ("v5e:4x4", 2)])
def test_each_process_holds_the_rows_where_the_slice_puts_its_devices(topology, model, monkeypatch):
  mesh = _slice_mesh(_slice_devices(topology, monkeypatch), model)
  data, per_device = sharding.data_sharded(mesh), 3
  rows = per_device * mesh.shape["data"]
  # The process of each row: its 'data' position's devices' (the same for every 'model' position here).
  owner = [mesh.devices[row // per_device, 0].process_index for row in range(rows)]
  assert all(len({d.process_index for d in devices}) == 1 for devices in mesh.devices)
  held = {process: sharding.process_rows(data, rows, process) for process in sorted(set(owner))}
  for process, process_rows in held.items():
    assert process_rows.tolist() == [row for row in range(rows) if owner[row] == process]
  in_process_order = np.concatenate(list(held.values())).tolist()
  assert sorted(in_process_order) == list(range(rows))  # Each row once.
  assert in_process_order != list(range(rows))  # What gathering per process, in process order, assumed.


def test_mesh_process_order_lays_out_each_process_devices():
  plain = sharding.create_mesh()
  with sharding.mesh_process_order([0] * jax.device_count()):  # One process: make_mesh's order.
    assert sharding.create_mesh().devices.tolist() == plain.devices.tolist()
  assert sharding.process_rows(sharding.data_sharded(plain), 16).tolist() == list(range(16))
  with sharding.mesh_process_order(SLICE_PROCESS_ORDER), pytest.raises(ValueError, match="device counts"):
    sharding.create_mesh()
  assert sharding.create_mesh().devices.tolist() == plain.devices.tolist()  # The hook is gone again.


def test_from_host_places_each_devices_part_of_the_host_copy():
  mesh = sharding.create_mesh()
  tokens, table = np.arange(16 * 3, dtype=np.int32).reshape(16, 3), {"w": np.ones((4, 2), np.float32)}
  rows = sharding.from_host(tokens, sharding.data_sharded(mesh))
  variables = sharding.from_host(table, sharding.replicated(mesh))
  assert rows.sharding == sharding.data_sharded(mesh) and variables["w"].sharding.is_fully_replicated
  for shard in rows.addressable_shards:  # 2 rows a device, where the mesh puts it.
    np.testing.assert_array_equal(shard.data, tokens[shard.index])
  np.testing.assert_array_equal(rows, tokens)
  np.testing.assert_array_equal(variables["w"], table["w"])
