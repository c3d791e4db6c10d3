"""One process of a multi-process CPU run (tests/test_multiprocess.py starts two at a time).

  python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR preempted    # train; process 1 gets a SIGTERM
  python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR evaluate     # `cxrjax evaluate`'s job, test split

Joins JAX's distributed runtime on localhost as one of 2 processes (what `--distributed=localhost:PORT,2,ID`
does) with the simulated CPU devices XLA_FLAGS gives it (collectives over gloo), then prints one JSON line.
`preempted` trains the demo smoke config with data.num_test=7, as tests/test_multiprocess.py's
one-process run, and a preempted TPU VM's SIGTERM reaches one host (here process 1, before its
first step); JAX's distributed runtime makes every process stop at the same step with a checkpoint, and
both exit with the preempted status (143).
"""

import json
import os
import pathlib
import signal
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # configs/ beside cxrjax/.
process_id, port, workdir, job = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

import jax  # noqa: E402

from cxrjax import evaluate, sharding, train  # noqa: E402
from configs import demo  # noqa: E402

sharding.initialize_distributed(f"localhost:{port},2,{process_id}")
summary = {"process": jax.process_index(), "devices": jax.device_count(),
           "local_devices": jax.local_device_count()}
if job == "preempted":
  config = demo.get_config("smoke")
  config.data.num_test = 7
  if process_id == 1:
    os.kill(os.getpid(), signal.SIGTERM)  # JAX's preemption notifier receives it, not the default action.
  train.train_and_evaluate(config, workdir)  # Raises train.Preempted: exit status 143.
else:
  output = evaluate.evaluate(workdir, "test", meteor=False, baselines_too=False)
  summary.update(num_studies=output["scores"]["num_studies"], bleu4=output["scores"]["BLEU-4"])
print(json.dumps(summary))
