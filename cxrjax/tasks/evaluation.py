"""A split through a task: batches -> jitted prediction on the mesh -> gathered records -> scores.

Every process predicts its own shard of the split (studies i, i + P, ...); the predictions of all
processes are gathered and put back in split order, padding dropped, so each study is scored exactly once
whatever the number of processes or devices. The trainer's validation and `cxrjax evaluate` both run this.
Predictions are matched to their studies by index, never by position: the gathered global arrays hold the
rows in the mesh's device order, which interleaves the processes on a multi-host TPU slice.
"""

from typing import Any

import jax
import numpy as np

from cxrjax.core import sharding
from cxrjax.data import pipeline
from cxrjax.tasks import base


def split_batches(
  config: Any,
  source: Any,
  task: base.Task,
  *,
  train: bool,
  batch_size: int,
  shard_index: int | None = None,
  shard_count: int | None = None,
  mesh: jax.sharding.Mesh | None = None,
):
  """The batches of `source` for `task` (train: shuffled, augmented, repeated; else one padded pass).
  Training on `mesh`: this process's `batch_size` rows of each global batch are those the mesh puts on its
  devices (sharding.process_rows), so the global batches are one process's whatever the device order
  (without `mesh`: the process's block of rows, right only where its devices are one block of 'data')."""
  rows = None
  if train and mesh is not None:
    count = jax.process_count() if shard_count is None else shard_count
    rows = sharding.process_rows(sharding.data_sharded(mesh), batch_size * count, shard_index)
  return pipeline.make_batches(
    config,
    source=source,
    tokenizer=task.tokenizer,
    train=train,
    batch_size=batch_size,
    shard_index=shard_index,
    shard_count=shard_count,
    rows=rows,
    label_names=task.label_names,
    preprocessing=task.preprocessing,
  )


def jit_predict(
  task: base.Task, model: Any, options: base.Options, mesh: jax.sharding.Mesh, variables_sharding: Any
) -> Any:
  """`task.predict_fn(model, options)` jitted as predict_split runs it:
  (variables in their layout `variables_sharding`, a global batch over 'data' of `mesh`) -> outputs over
  'data'. The trainer's validation, `cxrjax evaluate` and aot.py (a TPU slice's compile) build it here."""
  data = sharding.data_sharded(mesh)
  return jax.jit(task.predict_fn(model, options), in_shardings=(variables_sharding, data), out_shardings=data)


def predict_batch_spec(
  config: Any, task: base.Task, batch_size: int, mesh: jax.sharding.Mesh
) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes, dtypes and shardings of the global batches predict_split hands `predict`: each process's
  `batch_size` rows padded to a multiple of its devices of `mesh`, with their "index", over 'data'."""
  processes = len({device.process_index for device in mesh.devices.flat})
  local_rows = len(sharding.pad_batch({"mask": np.zeros(batch_size, bool)}, mesh.devices.size // processes)["mask"])
  spec = pipeline.batch_spec(config, local_rows * processes, task.tokenizer, task.label_names, task.preprocessing)
  spec["index"] = jax.ShapeDtypeStruct((local_rows * processes,), np.int32)
  data = sharding.data_sharded(mesh)
  return {key: jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=data) for key, value in spec.items()}


def predict_split(
  task: base.Task,
  variables: Any,
  source: Any,
  config: Any,
  *,
  mesh: jax.sharding.Mesh,
  predict: Any,
  batch_size: int,
) -> list[dict[str, Any]]:
  """`task.records` of every study of `source`, in source order, predicted by the jitted `predict`."""
  shard_index, shard_count = jax.process_index(), jax.process_count()
  batches = split_batches(
    config,
    source,
    task,
    train=False,
    batch_size=batch_size,
    shard_index=shard_index,
    shard_count=shard_count,
  )
  data_sharding = sharding.data_sharded(mesh)
  outputs, masks, indices = [], [], []
  host = {field: [] for field in task.host_fields}
  host_masks, host_indices = [], []
  position = 0
  for batch in batches:
    size = len(batch["mask"])
    # Shard s holds the studies s, s + P, s + 2P, ... of the split (data/pipeline.py).
    batch["index"] = (shard_index + shard_count * (position + np.arange(size))).astype(np.int32)
    position += size
    numeric = sharding.pad_batch({k: v for k, v in batch.items() if v.dtype.kind in "biuf"}, jax.local_device_count())
    inputs = sharding.to_global(numeric, data_sharding)
    # The predictions come back in the global arrays' row order, process order only where each process's
    # devices are one block of the mesh (sharding.process_rows): each row's study index and mask are
    # gathered from the same global arrays, so they stay beside its prediction.
    predicted, index, mask = sharding.gather((predict(variables, inputs), inputs["index"], inputs["mask"]))
    outputs.append(predicted)
    indices.append(index)
    masks.append(mask)
    # Strings cannot enter a global array: each process's are gathered in process order with their own
    # indices, and matched to the predictions by index below.
    host_index, host_mask = sharding.gather((batch["index"], batch["mask"]))
    host_indices.append(host_index)
    host_masks.append(host_mask)
    for field in task.host_fields:
      host[field].extend(sharding.gather_strings([str(s) for s in batch[field]]))
  if not outputs:
    return []
  keep = np.concatenate(masks).astype(bool)
  index = np.concatenate(indices)[keep]
  order = np.argsort(index, kind="stable")
  gathered = {key: np.concatenate([o[key] for o in outputs])[keep][order] for key in outputs[0]}
  host_keep = np.concatenate(host_masks).astype(bool)
  host_index = np.concatenate(host_indices)[host_keep]
  host_order = np.argsort(host_index, kind="stable")
  if not np.array_equal(index[order], host_index[host_order]):
    raise RuntimeError(
      f"evaluation: the gathered predictions are of {len(index)} studies and the hosts' "
      f"strings of {len(host_index)}, not the same ones"
    )
  host = {field: [values[i] for i in np.flatnonzero(host_keep)[host_order]] for field, values in host.items()}
  return task.records(gathered, host)
