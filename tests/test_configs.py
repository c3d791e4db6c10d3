"""Every command written in a config's docstring, run as written (the config in its smoke variant) on the
real data fixtures: the real report XMLs of 300 IU X-ray studies with their image ids linked to the real
Open-i PNGs, the 15 real ChestX-ray14 images with the real label file, real ROCOv2 and ROCO captions with
real chest X-rays as their JPEGs, and weight files of the public formats written here from random
reference models (Keras, PyTorch, transformers) in the layouts that the smoke models have. Also checks
what the configs claim about the data."""

import gzip
import importlib
import io
import json
import os
import pathlib
import re
import shlex
import tarfile

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
from PIL import Image

from cxrjax import cli
from cxrjax.data import chestxray14
from cxrjax.data import images as image_lib
from tests.data.test_prepare import make_openi_layout
from tests.data.test_roco import _roco_v1_layout

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.py") if not p.stem.startswith("_"))
NUM_IU_STUDIES = 300


def docstring_commands(name: str) -> list[list[str]]:
  """The `cxrjax ...` commands of configs/<name>.py's docstring (continuation lines joined, comments cut)."""
  doc = importlib.import_module(f"configs.{name}").__doc__
  commands, current = [], ""
  for line in doc.splitlines():
    line = line.strip()
    if current:
      current += " " + line
    elif line.startswith("cxrjax "):
      current = line
    if current and not current.endswith("\\"):
      commands.append(shlex.split(current.split("  #")[0]))
      current = ""
    current = current[:-1] if current.endswith("\\") else current
  return commands


def smoke(argv: list[str]) -> list[str]:
  """The same command with the smoke variant of its config (`configs/x.py[:args]` -> `...:args,smoke`)."""
  result = []
  for arg in argv:
    if arg.startswith("--config=configs/"):
      path, _, args = arg.removeprefix("--config=").partition(":")
      arg = f"--config={path}:{args + ',' if args else ''}smoke"
    result.append(arg)
  return result


def test_every_config_documents_its_commands():
  for name in CONFIGS:
    commands = docstring_commands(name)
    assert any(c[:2] == ["cxrjax", "train"] for c in commands), name
    assert any(c[:2] == ["cxrjax", "evaluate"] for c in commands), name


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, shared_data):
  """A working folder as a user has it: configs/, the downloads the docstrings name, $IU_XRAY, $NIH."""
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
      "\n".join([lines[0]] + [line for line in lines[1:] if line.split(",")[0] in names]) + "\n")
  _write_keras_chexnet(folder / "brucechou1983_CheXNet_Keras_0.3.0_weights.h5")
  _write_torch_chexnet(folder / "model.pth.tar")
  _write_word_vectors(shared_data / "text/glove.6B.50d.first76.txt", folder / "glove.6B.300d.txt", dim=16)
  _write_rocov2_release(shared_data, folder / "rocov2_download")
  _roco_v1_layout(shared_data, folder / "roco_download", _small_jpegs(shared_data))
  _write_hf_smoke_models(folder, shared_data / "text/bert-base-uncased-vocab.txt")
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
      ("blip_download", transformers.BlipForConditionalGeneration(
          transformers.BlipConfig(**roco_blip.SMOKE_HF_CONFIG)))):
    model.save_pretrained(folder / name)
    (folder / name / "vocab.txt").write_bytes(vocab.read_bytes())


def _write_rocov2_release(shared_data, folder):
  """ROCOv2's official layout from the 30 real caption rows (train 1-14, valid 15-22, test 23-30), each
  with a real chest X-ray shrunk to a small JPEG."""
  pngs = sorted((shared_data / "iu_xray/images").glob("*.png")) + sorted(
      (shared_data / "nih_chestxray14/images").glob("*.png"))
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
  base = keras_densenet.DenseNet([1, 1, 1, 1], include_top=False, weights=None, input_shape=(64, 64, 3),
                                 pooling="avg")
  model = keras.Model(base.input, keras.layers.Dense(14, name="predictions")(base.output))
  _write_keras2_h5(model, path)


def _write_torch_chexnet(path):
  import torch  # pylint: disable=g-import-not-at-top  (test-only reference)
  from tests.weights import torch_densenet  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_densenet.TorchDenseNet(block_sizes=(1, 1, 1, 1), growth_rate=32, stem_features=64,
                                       num_classes=14)
  torch.save(torch_densenet.chexnet_checkpoint(model), path)


def _write_word_vectors(sample, path, dim):
  """The real GloVe sample's words, cut to the smoke embedding's `dim` values (the same text format)."""
  rows = [line.split(" ") for line in sample.read_text(encoding="utf-8").splitlines()]
  path.write_text("".join(" ".join(row[:1 + dim]) + "\n" for row in rows), encoding="utf-8")


@pytest.mark.parametrize("name", CONFIGS)
def test_docstring_commands_run_as_written(name, sandbox, monkeypatch, capsys):
  monkeypatch.chdir(sandbox)
  monkeypatch.setenv("IU_XRAY", str(sandbox / "iu_xray_download"))
  monkeypatch.setenv("NIH", str(sandbox / "nih_download"))
  monkeypatch.setenv("DATA", str(sandbox / "data"))
  monkeypatch.setenv("ROCOV2", str(sandbox / "rocov2_download"))
  monkeypatch.setenv("ROCO", str(sandbox / "roco_download"))
  monkeypatch.setenv("GIT_DIR", str(sandbox / "git_download"))
  monkeypatch.setenv("BLIP_DIR", str(sandbox / "blip_download"))
  monkeypatch.setenv("VOCAB", str(ROOT.parent / "shared/data/text/bert-base-uncased-vocab.txt"))
  for argv in docstring_commands(name):
    argv = smoke([os.path.expandvars(arg) for arg in argv[1:]])
    status = cli.main(argv)
    output = capsys.readouterr()
    assert status == 0, f"cxrjax {shlex.join(argv)} exited with {status}:\n{output.err[-2000:]}"
    assert "Traceback" not in output.err
    if argv[0] == "evaluate":
      summary = json.loads(output.out.strip().splitlines()[-1])
      written = sandbox / summary["written"]
      assert (written / "metrics.json").is_file()
      assert (written / "predictions.jsonl").is_file() or (written / "predictions.csv").is_file()


def test_iu_xray_real_reports_end_to_end_to_predict(sandbox, monkeypatch, capsys):
  """After the IU X-ray docstring's commands: every test study was scored once against its real cleaned
  report, and `predict` on two real Open-i PNGs writes a report and its attention maps."""
  monkeypatch.chdir(sandbox)
  workdir = sandbox / "workdirs/iu_attention"
  if not (workdir / "eval/test/predictions.jsonl").is_file():
    pytest.skip("needs test_docstring_commands_run_as_written[iu_xray_attention] to have run first")
  predictions = [json.loads(line) for line in (workdir / "eval/test/predictions.jsonl").read_text().splitlines()]
  assert len(predictions) == len({p["id"] for p in predictions}) > 30
  assert all(p["reference"].strip(" .") for p in predictions)
  metrics = json.loads((workdir / "eval/test/metrics.json").read_text())
  assert metrics["scores"]["num_studies"] == len(predictions)
  assert set(metrics["baselines"]) == {"most_common_report", "best_constant_report"}
  images = sorted(str(p) for p in (ROOT.parent / "shared/data/iu_xray/images").glob("CXR54_*.png"))
  assert cli.main(["predict", "--workdir", str(workdir), "--attention-maps", "maps", *images]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["images"] == images and isinstance(result["report"], str)
  if result["token_ids"]:
    assert len(result["attention_maps"]) == len(result["token_ids"]) + 1


def test_agcnn_images_per_epoch_is_the_real_patient_split_train_set(shared_data):
  from configs import chestxray14_agcnn  # pylint: disable=g-import-not-at-top
  entries = chestxray14.read_label_file(shared_data / "nih_chestxray14/Data_Entry_2017_v2020.csv.gz")
  split = chestxray14.patient_split(entries)  # What `prepare chestxray14 --split=random` builds.
  assert len(split["train"]) == chestxray14_agcnn.IMAGES_PER_EPOCH
