"""One process of a multi-process CPU run (tests/test_multiprocess.py starts two at a time).

  python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR preempted         # train; process 1 gets a SIGTERM
  python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR evaluate [ORDER]  # `cxrjax evaluate`'s job, test split
  python tests/multiprocess_worker.py PROCESS_ID PORT - batches ORDER           # the trainer's first global batch
  python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR save ORDER        # the trainer's save of a checkpoint

Joins JAX's distributed runtime on localhost as one of 2 processes (what `--distributed=localhost:PORT,2,ID`
does) with the simulated CPU devices XLA_FLAGS gives it (collectives over gloo), then prints one JSON line.
`preempted` trains the demo smoke config with data.num_test=7, as tests/test_multiprocess.py's
one-process run, and a preempted TPU VM's SIGTERM reaches one host (here process 1, before its
first step); JAX's distributed runtime makes every process stop at the same step with a checkpoint, and
both exit with the preempted status (143).
ORDER (e.g. 0,0,1,1,1,1,0,0) lays the mesh's devices out by process as a multi-host TPU slice does
(sharding.mesh_process_order; tests/core/test_sharding.py reads such orders with libtpu). `batches` builds the
demo smoke config's first training batch as the trainer does and says whether every device holds the rows
one process would give it, and whether the whole global batch is one process's. `save` writes step 3 of a
state with the trainer's save (workdir.save) to WORKDIR's `latest` checkpoints, both processes writing, and
process 0 the saved values to WORKDIR/values.npz.
"""

import json
import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ beside cxrjax/.
process_id, port, workdir, job = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
order = [int(p) for p in sys.argv[5].split(",")] if len(sys.argv) > 5 else None

import jax  # noqa: E402
import numpy as np  # noqa: E402

from cxrjax.jobs import evaluate, train
from cxrjax.core import sharding
from cxrjax.run import workdir as workdir_lib  # noqa: E402
from cxrjax import tasks  # noqa: E402
from cxrjax.data import datasets  # noqa: E402
from cxrjax.tasks import evaluation  # noqa: E402
from configs import demo  # noqa: E402

sharding.initialize_distributed(f"localhost:{port},2,{process_id}")
summary = {"process": jax.process_index(), "devices": jax.device_count(), "local_devices": jax.local_device_count()}
if job == "preempted":
  config = demo.get_config("smoke")
  config.data.num_test = 7
  if process_id == 1:
    os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier receives it, not the default action.
  train.train_and_evaluate(config, workdir)  # Raises train.Preempted: exit status 143.
elif job == "batches":
  config = demo.get_config("smoke")
  source, _ = datasets.make_source(config.data, "train")
  tokenizer = datasets.load_or_build_tokenizer(config.data, source)
  task = tasks.make(config, tokenizer)
  with sharding.mesh_process_order(order):
    mesh = sharding.create_mesh(config.get("sharding"))
  data_sharding, global_rows = sharding.data_sharded(mesh), config.train.batch_size
  local = next(
    iter(
      evaluation.split_batches(
        config, source, task, train=True, mesh=mesh, batch_size=global_rows // jax.process_count()
      )
    )
  )
  batch = sharding.to_global(local, data_sharding)
  # What one process with every device would train on: its whole global batch.
  single = next(
    iter(
      evaluation.split_batches(config, source, task, train=True, batch_size=global_rows, shard_index=0, shard_count=1)
    )
  )
  own = [
    bool(np.array_equal(np.asarray(shard.data), single[key][shard.index]))
    for key, value in batch.items()
    for shard in value.addressable_shards
  ]
  whole = sharding.gather(batch)
  summary.update(
    mesh_processes=[d.process_index for d in mesh.devices.flat],
    rows=sharding.process_rows(data_sharding, global_rows).tolist(),
    devices_hold_their_rows=all(own),
    global_batch_is_one_process_batch=all(np.array_equal(whole[key], single[key]) for key in whole),
    misplaced_rows=sum(
      not all(np.array_equal(whole[key][row], single[key][row]) for key in whole) for row in range(global_rows)
    ),
  )
elif job == "save":
  with sharding.mesh_process_order(order):
    mesh = sharding.create_mesh(None)
  # Every element distinct, so a part written to the wrong place shows. "large" is replicated over the 8
  # devices with 4 MiB to each replica's part (2048 x 4096 float32 / 8), so orbax writes it replica-parallel,
  # each process its devices' parts (workdir.REPLICA_PARALLEL_MIN_BYTES); "small" is replicated under that
  # size (one replica writes it); "split" has its rows over the 'data' axis.
  values = {
    "large": np.arange(2048 * 4096, dtype=np.float32).reshape(2048, 4096) / 7,
    "small": np.arange(24, dtype=np.float32).reshape(8, 3) - 5,
    "split": np.arange(8 * 5, dtype=np.float32).reshape(8, 5) * 3,
  }
  replicated, split = sharding.replicated(mesh), sharding.data_sharded(mesh)
  state = workdir_lib.TrainState(
    step=sharding.from_host(np.int32(3), replicated),
    params=sharding.from_host({"large": values["large"], "small": values["small"]}, replicated),
    batch_stats={"split": sharding.from_host(values["split"], split)},
    opt_state={},
  )
  manager = workdir_lib.checkpoint_manager(workdir, workdir_lib.LATEST)
  workdir_lib.save(manager, state, {"next_index": 3}, {"step": 3})
  manager.wait_until_finished()
  summary["saved_step"] = manager.latest_step()
  manager.close()
  if process_id == 0:
    np.savez(pathlib.Path(workdir) / "values.npz", **values)
else:
  with sharding.mesh_process_order(order):
    output = evaluate.evaluate(workdir, "test", meteor=False, baselines_too=False)
  summary.update(
    num_studies=output["scores"].get("num_studies", output["scores"].get("num_examples")),
    bleu4=output["scores"].get("BLEU-4"),
  )
print(json.dumps(summary))
