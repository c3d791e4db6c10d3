"""The sandbox in which tests/configs/ run each config's docstring commands as written (the config in its
smoke variant) on the real data fixtures: the real report XMLs of 300 IU X-ray studies with their image
ids linked to the real Open-i PNGs, the 15 real ChestX-ray14 images with the real label file, real ROCOv2
and ROCO captions with real chest X-rays as their JPEGs, and weight files of the public formats written
here from random reference models (Keras, PyTorch, transformers) in the layouts that the smoke models
have. One file per config, so that pytest-xdist spreads the configs over its workers."""

import contextlib
import gzip
import io
import json
import os
import re
import shlex
import tarfile

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from PIL import Image

from cxrjax import cli
from cxrjax.data import images as image_lib
from tests.configs.commands import ROOT, docstring_commands, smoke
from tests.data.test_prepare import make_openi_layout
from tests.data.test_roco import _roco_v1_layout

NUM_IU_STUDIES = 300


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory, shared_data):
  """A working folder as a user has it: configs/, the downloads the docstrings name, $IU_XRAY, $NIH. One
  per test process (pytest-xdist worker), shared by every config's file: each config writes its own
  workdirs/ and data/ folders."""
  folder = tmp_path_factory.mktemp("user")
  (folder / "configs").symlink_to(ROOT / "configs")
  iu_dir = shared_data / "iu_xray"
  with tarfile.open(iu_dir / "NLMCXR_reports.tgz") as tar:
    numbers = sorted(int(m) for m in re.findall(r"ecgen-radiology/(\d+)\.xml", " ".join(tar.getnames())))
  make_openi_layout(iu_dir, folder / "iu_xray_download", numbers=numbers[:NUM_IU_STUDIES])
  nih = folder / "nih_download"
  (nih / "images").mkdir(parents=True)
  images = sorted((shared_data / "nih_chestxray14" / "images").glob("*.png"))
  for image in images:
    (nih / "images" / image.name).symlink_to(image)
  with gzip.open(shared_data / "nih_chestxray14/Data_Entry_2017_v2020.csv.gz", "rt") as handle:
    lines = handle.read().splitlines()
  names = {image.name for image in images}
  (nih / "Data_Entry_2017_v2020.csv").write_text(
    "\n".join([lines[0]] + [line for line in lines[1:] if line.split(",")[0] in names]) + "\n"
  )
  _write_keras_chexnet(folder / "brucechou1983_CheXNet_Keras_0.3.0_weights.h5")
  _write_torch_chexnet(folder / "model.pth.tar")
  _write_word_vectors(shared_data / "text/glove.6B.50d.first76.txt", folder / "glove.6B.300d.txt", dim=16)
  _write_rocov2_release(shared_data, folder / "rocov2_download")
  _roco_v1_layout(shared_data, folder / "roco_download", _small_jpegs(shared_data))
  _write_hf_smoke_models(folder, shared_data / "text/bert-base-uncased-vocab.txt")
  _write_deberta_download(shared_data, folder / "deberta-xlarge-mnli")
  return folder


def _small_jpegs(shared_data) -> list[bytes]:
  """The fixture's real chest X-ray PNGs as small JPEGs (ROCO ships JPEGs)."""
  out = []
  for path in sorted((shared_data / "iu_xray/images").glob("*.png")):
    buffer = io.BytesIO()
    Image.fromarray(image_lib.load_image(path)).resize((40, 40)).save(buffer, format="JPEG", quality=90)
    out.append(buffer.getvalue())
  return out


def _write_hf_smoke_models(folder, vocab):
  """$GIT_DIR and $BLIP_DIR as a hub download has them (config.json, model.safetensors, vocab.txt), from
  random transformers models of the configs' smoke sizes (configs/roco_{git,blip}.py SMOKE_HF_CONFIG)."""
  import torch  # pylint: disable=g-import-not-at-top  (test-only reference)
  import transformers  # pylint: disable=g-import-not-at-top
  from configs import roco_blip, roco_git  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  for name, model in (
    ("git_download", transformers.GitForCausalLM(transformers.GitConfig(**roco_git.SMOKE_HF_CONFIG))),
    ("blip_download", transformers.BlipForConditionalGeneration(transformers.BlipConfig(**roco_blip.SMOKE_HF_CONFIG))),
  ):
    model.save_pretrained(folder / name)
    (folder / name / "vocab.txt").write_bytes(vocab.read_bytes())


def _write_deberta_download(shared_data, folder):
  """`deberta-xlarge-mnli/` (configs/rocov2_graph.py's ImageCLEF BERTScore command) as a hub download has it,
  from a random tiny transformers DebertaModel with the 40 layers that bert-score's table reads for that name."""
  from tests.evaluators.test_bertscore import _save_deberta  # pylint: disable=g-import-not-at-top

  folder.mkdir()
  captions = (shared_data / "rocov2/test_captions.head30.csv").read_text(encoding="utf-8").splitlines()[1:]
  _save_deberta(folder, [line.split(",", 1)[1] for line in captions], num_layers=40)


def _write_rocov2_release(shared_data, folder):
  """ROCOv2's official layout from the 30 real caption rows (train 1-14, valid 15-22, test 23-30), each
  with a real chest X-ray shrunk to a small JPEG."""
  pngs = sorted((shared_data / "iu_xray/images").glob("*.png")) + sorted(
    (shared_data / "nih_chestxray14/images").glob("*.png")
  )
  lines = (shared_data / "rocov2/test_captions.head30.csv").read_text(encoding="utf-8").splitlines(keepends=True)
  parts = {"train": lines[1:15], "valid": lines[15:23], "test": lines[23:]}
  count = 0
  for name, rows in parts.items():
    (folder / name).mkdir(parents=True)
    (folder / f"{name}_captions.csv").write_text(lines[0] + "".join(rows), encoding="utf-8")
    for row in rows:
      image = Image.fromarray(image_lib.load_image(pngs[count % len(pngs)])).resize((48, 48))
      image.save(folder / name / f"{row.split(',', 1)[0]}.jpg", quality=90)
      count += 1


def _write_keras_chexnet(path):
  """CheXNet-Keras's file layout from a random Keras DenseNet with DenseNet-121's names, one layer a block."""
  import keras  # pylint: disable=g-import-not-at-top  (test-only reference)
  from keras.src.applications import densenet as keras_densenet  # pylint: disable=g-import-not-at-top
  from tests.weights.test_chexnet import _write_keras2_h5  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  # keras.applications' own DenseNet builder (public DenseNet121 is blocks [6, 12, 24, 16]).
  base = keras_densenet.DenseNet([1, 1, 1, 1], include_top=False, weights=None, input_shape=(64, 64, 3), pooling="avg")
  model = keras.Model(base.input, keras.layers.Dense(14, name="predictions")(base.output))
  _write_keras2_h5(model, path)


def _write_torch_chexnet(path):
  import torch  # pylint: disable=g-import-not-at-top  (test-only reference)
  from tests.weights import torch_densenet  # pylint: disable=g-import-not-at-top

  torch.manual_seed(0)
  model = torch_densenet.TorchDenseNet(block_sizes=(1, 1, 1, 1), growth_rate=32, stem_features=64, num_classes=14)
  torch.save(torch_densenet.chexnet_checkpoint(model), path)


def _write_word_vectors(sample, path, dim):
  """The real GloVe sample's words, cut to the smoke embedding's `dim` values (the same text format)."""
  rows = [line.split(" ") for line in sample.read_text(encoding="utf-8").splitlines()]
  path.write_text("".join(" ".join(row[: 1 + dim]) + "\n" for row in rows), encoding="utf-8")


@pytest.fixture(scope="session")
def docstring_runs(sandbox):
  """name -> [(argv, exit status, stdout, stderr)] of configs/<name>.py's docstring commands (smoke
  variant) run in the sandbox, each config's at most once per test process: a test that needs a
  config's workdir runs them itself when alone, and shares the run when another test made it first."""
  runs = {}

  def run(name: str) -> list[tuple[list[str], int, str, str]]:
    if name in runs:
      return runs[name]
    results = []
    with pytest.MonkeyPatch.context() as patch:
      patch.chdir(sandbox)
      for variable, folder in (
        ("IU_XRAY", "iu_xray_download"),
        ("NIH", "nih_download"),
        ("DATA", "data"),
        ("ROCOV2", "rocov2_download"),
        ("ROCO", "roco_download"),
        ("GIT_DIR", "git_download"),
        ("BLIP_DIR", "blip_download"),
      ):
        patch.setenv(variable, str(sandbox / folder))
      patch.setenv("VOCAB", str(ROOT.parent / "shared/data/text/bert-base-uncased-vocab.txt"))
      for argv in docstring_commands(name):
        argv = smoke([os.path.expandvars(arg) for arg in argv[1:]])
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
          status = cli.main(argv)
        results.append((argv, status, out.getvalue(), err.getvalue()))
        if status != 0:
          break
    runs[name] = results
    return results

  return run


def check_commands_ran(name: str, sandbox, docstring_runs) -> None:
  """Every docstring command of configs/<name>.py exited 0 with no traceback; `evaluate` wrote its files."""
  for argv, status, out, err in docstring_runs(name):
    assert status == 0, f"cxrjax {shlex.join(argv)} exited with {status}:\n{err[-2000:]}"
    assert "Traceback" not in err
    if argv[0] == "evaluate":
      summary = json.loads(out.strip().splitlines()[-1])
      written = sandbox / summary["written"]
      assert (written / "metrics.json").is_file()
      assert (written / "predictions.jsonl").is_file() or (written / "predictions.csv").is_file()
