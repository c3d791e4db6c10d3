"""A gs:// workdir, through the code a TPU VM runs: training, resuming, evaluation and prediction with
every file (checkpoints included) in the bucket, equal to a local run; and files.py / summaries.py on
gs:// URLs.

A local GCS emulator (gcp-storage-emulator, in memory) stands in for the bucket, and every client talks
to it over HTTP as it would to Google: etils.epath through fsspec's gcsfs (config.json, tokenizer.json,
metrics.jsonl, eval/, attention maps), orbax through TensorStore's gcs driver and google-cloud-storage
(checkpoints). gs://bucket/x is no local path: a stray `open` or `os.makedirs` on it would make the local
folder ./gs:/bucket/x, which each test checks does not exist (the tests run in an empty folder).
"""

import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap

import fsspec
import jax
import numpy as np
import pytest
from etils import epath
from etils.epath import backend as epath_backend

from cxrjax import cli
from cxrjax.core import files
from cxrjax.run import summaries, workdir as workdir_lib
from cxrjax.jobs import train
from configs import demo

# gcsfs's experimental zonal-bucket support asks GCS's gRPC storage-control API for the bucket type
# (the emulator has none: a 60 s timeout); plain buckets need none of it. Read when gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
gcsfs = pytest.importorskip("gcsfs")
emulator_server = pytest.importorskip("gcp_storage_emulator.server")
emulator_objects = pytest.importorskip("gcp_storage_emulator.handlers.objects")

BUCKET = "cxrjax-test"


@pytest.fixture(scope="module")
def bucket():
  """gs://BUCKET served by an in-memory emulator; every client pointed at it."""
  original_download = emulator_objects.download

  def download(request, response, storage, *args, **kwargs):
    # GCS sends an object's generation with every download; the emulator does not. TensorStore reads it
    # when OCDBT updates an existing manifest (a checkpoint written in more than one commit), and without
    # it fails with "Malformed StorageGeneration".
    original_download(request, response, storage, *args, **kwargs)
    if response.status.value in (200, 206):
      record = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
      response["x-goog-generation"] = record["generation"]
      response["x-goog-metageneration"] = record["metageneration"]

  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
  server = emulator_server.create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
  server.start()
  # Quiet: the emulator logs every expected miss (orbax probes absent files) and clients' early hang-ups.
  server._api._httpd.handle_error = lambda request, address: None  # pylint: disable=protected-access
  logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)
  url = f"http://127.0.0.1:{port}"
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(emulator_objects, "download", download)
    for _, methods in emulator_server.HANDLERS:
      for method, handler in list(methods.items()):
        if handler is original_download:
          patch.setitem(methods, method, download)
    for name in (
      "STORAGE_EMULATOR_HOST",  # gcsfs, google-cloud-storage (orbax's bucket lookup)
      "TENSORSTORE_GCS_HTTP_URL",  # orbax's arrays
      "CLOUD_STORAGE_EMULATOR_ENDPOINT",
    ):  # array_record's reader
      patch.setenv(name, url)
    patch.setenv("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")  # TensorStore's credentials
    patch.setitem(fsspec.config.conf, "gcs", {"token": "anon"})
    fsspec.register_implementation("gs", gcsfs.core.GCSFileSystem, clobber=True)
    fsspec.register_implementation("gcs", gcsfs.core.GCSFileSystem, clobber=True)
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    gcsfs.core.GCSFileSystem.clear_instance_cache()
    yield f"gs://{BUCKET}"
    epath_backend.fsspec_backend._get_filesystem.cache_clear()  # pylint: disable=protected-access
    gcsfs.core.GCSFileSystem.clear_instance_cache()
  server.stop()


@pytest.fixture
def in_empty_folder(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  yield
  assert not (tmp_path / "gs:").exists(), "a gs:// path was written as a local path"


def _records(path):
  return [json.loads(line) for line in epath.Path(path).read_text().splitlines()]


def test_files_write_whole_objects_on_a_url(bucket, in_empty_folder):
  folder = epath.Path(bucket) / "files"
  files.write_json(folder / "a.json", {"x": 1})
  assert json.loads((folder / "a.json").read_text()) == {"x": 1}
  with files.open_atomic(folder / "t.csv", "w", newline="") as handle:
    handle.write("é,1\r\n")
  assert (folder / "t.csv").read_bytes() == "é,1\r\n".encode()
  files.write_text(folder / "a.json", "kept\n")
  with pytest.raises(RuntimeError, match="interrupted"):
    with files.open_atomic(folder / "a.json") as handle:
      handle.write("half")
      raise RuntimeError("interrupted")
  assert (folder / "a.json").read_text() == "kept\n"  # The failed write left the previous object.
  with files.replaced_on_success(folder / "w.bin") as temporary:
    assert not files.is_url(temporary)  # For writers that take a local path (safetensors, tokenizers).
    with open(temporary, "wb") as handle:
      handle.write(b"\x00weights")
  assert (folder / "w.bin").read_bytes() == b"\x00weights"
  with pytest.raises(ValueError):
    with files.replaced_on_success(folder / "never.bin") as temporary:
      raise ValueError
  assert not (folder / "never.bin").exists()
  assert sorted(p.name for p in folder.iterdir()) == ["a.json", "t.csv", "w.bin"]  # No temporary objects.


def test_append_log_keeps_earlier_lines_on_a_url(bucket, in_empty_folder):
  """An object store cannot append (gcsfs's "a" mode overwrites): the log rewrites the whole object."""
  path = epath.Path(bucket) / "log" / "metrics.jsonl"
  files.write_lines(path, ["1"])
  log = files.AppendLog(path, upload_every_s=3600)
  log.write("2")
  assert path.read_text() == "1\n"  # Uploads are spaced (GCS: about one write a second per object).
  log.write("3")
  log.close()
  assert path.read_text() == "1\n2\n3\n"
  metrics = summaries.MetricsLog(
    epath.Path(bucket) / "log" / "m.jsonl", epath.Path(bucket) / "log" / "tb", upload_every_s=0
  )
  for step in (1, 2):
    metrics.write({"split": "train", "step": step, "loss": float(step)})
  metrics.close()
  assert _records(epath.Path(bucket) / "log" / "m.jsonl") == [
    {"split": "train", "step": 1, "loss": 1.0},
    {"split": "train", "step": 2, "loss": 2.0},
  ]
  events = list((epath.Path(bucket) / "log" / "tb").iterdir())
  assert len(events) == 1 and events[0].name.startswith("events.out.tfevents.")
  assert b"train/loss" in events[0].read_bytes()


def _train_records(path):
  """metrics.jsonl without the timings (steps/s, examples/s, FLOP/s differ between runs)."""
  return [{k: v for k, v in r.items() if not k.endswith("_per_s") and k != "flops_utilisation"} for r in _records(path)]


def test_a_gs_workdir_trains_resumes_evaluates_and_predicts_as_a_local_one(
  bucket, in_empty_folder, tmp_path, shared_data, capsys
):
  config = demo.get_config("smoke")
  remote, local = f"{bucket}/run", tmp_path / "local"
  train.train_and_evaluate(config, remote, stop_after_steps=2)  # An interrupted run: checkpoint at step 2.
  train.train_and_evaluate(config, remote)
  assert "resumed from gs://" in capsys.readouterr().out
  train.train_and_evaluate(config, local)
  assert _train_records(f"{remote}/metrics.jsonl") == _train_records(local / "metrics.jsonl")
  one, other = (
    jax.device_get(workdir_lib.load_run(w, workdir_lib.LATEST, optimizer_state=True).state) for w in (remote, local)
  )
  for first, second in zip(jax.tree.leaves(one), jax.tree.leaves(other), strict=True):
    np.testing.assert_array_equal(first, second)
  names = {p.name for p in epath.Path(remote).iterdir()}
  assert {"config.json", "tokenizer.json", "metrics.jsonl", "checkpoints", "tensorboard"} <= names

  for workdir in (remote, str(local)):
    assert cli.main(["evaluate", f"--workdir={workdir}", "--split=test", "--no-meteor"]) == 0
  capsys.readouterr()
  assert (epath.Path(remote) / "eval/test/predictions.jsonl").read_text() == (
    local / "eval/test/predictions.jsonl"
  ).read_text()
  images = sorted(str(p) for p in (shared_data / "iu_xray/images").glob("CXR54_*.png"))
  assert cli.main(["predict", "--workdir", remote, "--attention-maps", f"{bucket}/maps", *images]) == 0
  result = json.loads(capsys.readouterr().out)
  assert isinstance(result["report"], str)
  if result["token_ids"]:  # One map per word and the end (an empty report has none to draw).
    assert len(result["attention_maps"]) == len(result["token_ids"]) + 1
    assert all(path.startswith("gs://") and epath.Path(path).exists() for path in result["attention_maps"])


REPO = pathlib.Path(__file__).resolve().parents[1]
KILL_OVERRIDES = {"train.num_steps": 8, "train.checkpoint_every": 1, "train.eval_every": 3, "train.log_every": 1}

# The child trains on the bucket with the log's uploads spaced an hour apart (a kill always falls between
# two of them), and kills itself once checkpoints/latest/5 is complete.
KILL_AFTER_CHECKPOINT_5 = """
import os, signal, sys
import fsspec
fsspec.config.conf["gcs"] = {"token": "anon"}
from cxrjax import cli
from cxrjax.run import summaries, workdir
init = summaries.MetricsLog.__init__
summaries.MetricsLog.__init__ = lambda self, *args, **kwargs: init(self, *args, **dict(kwargs, upload_every_s=3600))
save = workdir.save
def killing_save(manager, state, *args, **kwargs):
  save(manager, state, *args, **kwargs)
  if manager.directory.name == "latest" and int(state.step) == 5:
    manager.wait_until_finished()
    os.kill(os.getpid(), signal.SIGKILL)
workdir.save = killing_save
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_gs_run_killed_after_a_checkpoint_resumes_with_no_gap_in_metrics(bucket, in_empty_folder, capsys):
  """metrics.jsonl on an object store is uploaded every few seconds; it is also uploaded before each
  checkpoint, so that a run killed after checkpoint 5 and resumed from it has every record of steps 1..8
  once (before: the records since the last upload were lost for good, a gap before the resumed lines)."""
  remote = f"{bucket}/killed"
  argv = [
    "train",
    f"--config={REPO}/configs/demo.py:smoke",
    f"--workdir={remote}",
    *(f"--config.{k}={v}" for k, v in KILL_OVERRIDES.items()),
  ]
  child = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(KILL_AFTER_CHECKPOINT_5), *argv],
    cwd=REPO,
    env=dict(os.environ, PYTHONPATH=str(REPO)),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
    text=True,
    timeout=600,
  )
  assert child.returncode == -signal.SIGKILL, child.stderr
  killed = [(r["split"], r["step"]) for r in _records(f"{remote}/metrics.jsonl")]
  assert ("train", 5) in killed and ("val", 3) in killed  # Uploaded before checkpoint 5, not on exit.
  assert cli.main(argv) == 0
  assert f"resumed from {remote}/checkpoints/latest at step 5" in capsys.readouterr().out
  records = [(r["split"], r["step"]) for r in _records(f"{remote}/metrics.jsonl")]
  assert [step for split, step in records if split == "train"] == list(range(1, 9))
  assert [step for split, step in records if split == "val"] == [3, 6, 8]


@pytest.mark.parametrize("dataset", ["iu_xray", "chestxray14", "rocov2", "roco"])
def test_prepare_refuses_a_gs_data_dir_in_one_line_before_touching_it(dataset, in_empty_folder, shared_data, capsys):
  """array_record's writer needs a local folder; no bucket is asked anything (none is served here)."""
  status = cli.main(["prepare", dataset, "--manual-dir", str(shared_data), "--data-dir", "gs://cxrjax-test/data"])
  error = capsys.readouterr().err.strip()
  assert status == 2 and len(error.splitlines()) == 1
  assert error.startswith(
    f"cxrjax prepare: error: --data-dir gs://cxrjax-test/data: {dataset} is written as array_record files"
  )
