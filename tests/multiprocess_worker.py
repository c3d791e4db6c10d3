"""One process of a multi-process CPU run (tests/test_multiprocess.py starts two).

  python tests/multiprocess_worker.py PROCESS_ID PORT WORKDIR

Joins JAX's distributed runtime on localhost with 2 simulated CPU devices of its own (collectives over
gloo), then runs `cxrjax evaluate`'s job on WORKDIR's test split and prints one JSON line.
"""

import json
import os
import sys

process_id, port, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402  (after XLA_FLAGS)

from cxrjax import evaluate, sharding  # noqa: E402

sharding.initialize_distributed(f"localhost:{port},2,{process_id}")  # What `--distributed=...` does.

output = evaluate.evaluate(workdir, "test", meteor=False, baselines_too=False)
print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(),
                  "num_studies": output["scores"]["num_studies"], "BLEU-4": output["scores"]["BLEU-4"]}))
