"""A split through a task: batches -> jitted prediction on the mesh -> gathered records -> scores.

Every process predicts its own shard of the split (studies i, i + P, ...); the predictions of all
processes are gathered and put back in split order, padding dropped, so each study is scored exactly once
whatever the number of processes or devices. The trainer's validation and `cxrjax evaluate` both run this.
"""

from typing import Any

import jax
import numpy as np

from cxrjax import sharding
from cxrjax.data import pipeline


def split_batches(config: Any, source: Any, tokenizer: Any, task: Any, *, train: bool, batch_size: int,
                  shard_index: int | None = None, shard_count: int | None = None):
  """The batches of `source` for `task` (train: shuffled, augmented, repeated; else one padded pass)."""
  return pipeline.make_batches(config, source=source, tokenizer=tokenizer, train=train,
                               batch_size=batch_size, shard_index=shard_index, shard_count=shard_count,
                               label_names=getattr(task, "label_names", None))


def predict_split(task: Any, variables: Any, source: Any, tokenizer: Any, config: Any, *,
                  mesh: jax.sharding.Mesh, predict: Any, batch_size: int) -> list[dict[str, Any]]:
  """`task.records` of every study of `source`, in source order, predicted by the jitted `predict`."""
  shard_index, shard_count = jax.process_index(), jax.process_count()
  batches = split_batches(config, source, tokenizer, task, train=False, batch_size=batch_size,
                          shard_index=shard_index, shard_count=shard_count)
  data_sharding = sharding.data_sharded(mesh)
  outputs, masks, indices = [], [], []
  host = {field: [] for field in task.host_fields}
  position = 0
  for batch in batches:
    size = len(batch["mask"])
    # Shard s holds the studies s, s + P, s + 2P, ... of the split (data/pipeline.py).
    batch["index"] = (shard_index + shard_count * (position + np.arange(size))).astype(np.int32)
    position += size
    numeric = sharding.pad_batch({k: v for k, v in batch.items() if v.dtype.kind in "biuf"},
                                 jax.local_device_count())
    padding = len(numeric["mask"]) - size
    outputs.append(sharding.gather(predict(variables, sharding.to_global(numeric, data_sharding))))
    masks.append(sharding.gather(numeric["mask"]))
    indices.append(sharding.gather(numeric["index"]))
    for field in task.host_fields:
      host[field].extend(sharding.gather_strings([str(s) for s in batch[field]] + [""] * padding))
  if not outputs:
    return []
  keep = np.concatenate(masks).astype(bool)
  order = np.argsort(np.concatenate(indices)[keep], kind="stable")
  gathered = {key: np.concatenate([o[key] for o in outputs])[keep][order] for key in outputs[0]}
  host = {field: [values[i] for i in np.flatnonzero(keep)[order]] for field, values in host.items()}
  return task.records(gathered, host, tokenizer)
