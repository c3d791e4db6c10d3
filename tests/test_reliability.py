"""A corpus of malformed and hostile inputs, each fed through the real command (`cxrjax.cli.main`).

Every case is generated here, in the test's temporary folder (nothing binary is committed), and states
its outcome: the exit status and what the one-line error says (the file and the problem), or what the
output is. A user's mistake must never end in a traceback (cli.main would raise) nor in a silent
success. The models are the smoke sizes, so the whole corpus runs in seconds.
"""

import dataclasses
import gzip
import io
import json
import os
import pathlib
import pickle
import re
import shutil
import struct
import tarfile
import zlib
from typing import Callable

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from PIL import Image

from cxrjax import cli
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import datasets
from cxrjax.weights import store
from configs import chestxray14_agcnn, demo
from tests.data.test_prepare import make_openi_layout
from tests.weights import torch_densenet
from tests.weights.torch_seed003 import TINY_DECODER, TINY_RESNET, ResNetGraphCaptioner

TINY_TORCH = dict(block_sizes=(1, 1), growth_rate=4, stem_features=8, num_classes=14)
FINDINGS_HEADER = (
  "Image Index,prob_Atelectasis,prob_Cardiomegaly,prob_Effusion,prob_Infiltration,prob_Mass,"
  "prob_Nodule,prob_Pneumonia,prob_Pneumothorax,prob_Consolidation,prob_Edema,prob_Emphysema,"
  "prob_Fibrosis,prob_Pleural_Thickening,prob_Hernia"
)


@dataclasses.dataclass
class Case:
  """argv(ctx) -> the command; `status` its exit status; every string of `says` must be in the error
  line (or, with status 0, in the output); `check(ctx, out)` any further assertion."""

  name: str
  argv: Callable
  status: int
  says: tuple[str, ...] = ()
  check: Callable | None = None
  env: dict | None = None


class Context:
  """Shared inputs, built on first use: ported weights, a workdir, a good image."""

  def __init__(self, root: pathlib.Path, shared_data: pathlib.Path):
    self.root, self.shared = root, shared_data
    self._cache = {}

  def path(self, name: str) -> pathlib.Path:
    path = self.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path

  def once(self, key, make):
    if key not in self._cache:
      self._cache[key] = make()
    return self._cache[key]

  def state_dict(self):
    def make():
      torch.manual_seed(0)
      reference = torch_densenet.TorchDenseNet(**TINY_TORCH).eval()
      return reference.state_dict()

    return {k: v.clone() for k, v in self.once("state_dict", make).items()}

  def torch_file(self, name: str, state: dict) -> str:
    torch.save(state, self.path(name))
    return str(self.path(name))

  def weights(self) -> pathlib.Path:
    """A `cxrjax port-weights` directory of the tiny DenseNet (its port is itself a case's success)."""

    def make():
      out = self.root / "weights"
      assert (
        cli.main(["port-weights", "--format", "torch", self.torch_file("good.pth", self.state_dict()), str(out)]) == 0
      )
      return out

    return self.once("weights", make)

  def weights_copy(self, name: str) -> pathlib.Path:
    copy = self.root / name
    shutil.copytree(self.weights(), copy)
    return copy

  def image(self, name="good.png") -> pathlib.Path:
    path = self.path(name)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32), np.uint8)).save(path)
    return path

  def workdir(self) -> pathlib.Path:
    """The demo smoke captioner, untrained, as a workdir with its best checkpoint (no training needed)."""

    def make():
      config = demo.get_config("smoke")
      source, _ = datasets.make_source(config.data, "train")
      tokenizer = datasets.load_or_build_tokenizer(config.data, source)
      components = workdir_lib.build(config, tokenizer)
      state = workdir_lib.init_state(components, jax.random.key(0))
      out = self.root / "workdir"
      workdir_lib.create_from_variables(out, config, tokenizer, state.variables(), {"made_by": "test"})
      return out

    return self.once("workdir", make)

  def workdir_copy(self, name: str) -> pathlib.Path:
    copy = self.root / name
    shutil.copytree(self.workdir(), copy)
    return copy

  def agcnn_workdir(self) -> pathlib.Path:
    """An untrained smoke AG-CNN (phantom findings) as a workdir: a classifier, no text."""

    def make():
      config = chestxray14_agcnn.get_config("smoke,phantom")
      state = workdir_lib.init_state(workdir_lib.build(config, None), jax.random.key(0))
      out = self.root / "agcnn_workdir"
      workdir_lib.create_from_variables(out, config, None, state.variables(), {"made_by": "test"})
      return out

    return self.once("agcnn_workdir", make)


def _classify(ctx, image) -> list[str]:
  return ["classify", "--weights", str(ctx.weights()), "--image-size", "32", str(image)]


def _png_header(width: int, height: int) -> bytes:
  """A PNG that declares width x height 8-bit gray pixels, with one tiny IDAT: a decompression bomb's header."""

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

  ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def _write(ctx, name, data: bytes | str) -> pathlib.Path:
  path = ctx.path(name)
  path.write_bytes(data.encode() if isinstance(data, str) else data)
  return path


def _symlink_loop(ctx) -> pathlib.Path:
  a, b = ctx.path("loop/a.png"), ctx.path("loop/b.png")
  a.symlink_to(b)
  b.symlink_to(a)
  return a


def _sixteen_bit_pair(ctx):
  values = np.random.default_rng(1).integers(0, 256, (32, 32)).astype(np.uint8)
  Image.fromarray(values).save(ctx.path("eight.png"))
  Image.fromarray(values.astype(np.uint16) * 257).save(ctx.path("sixteen.png"))
  return [str(ctx.path("eight.png")), str(ctx.path("sixteen.png"))]


def _same_probabilities(ctx, out):
  rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
  assert len(rows) == 2
  first, second = (row["probabilities"] for row in rows)
  assert first == second, (first, second)


# --- weights -------------------------------------------------------------------------------------


def _state_with(ctx, change):
  state = ctx.state_dict()
  change(state)
  return state


def _nan_state(state):
  state["features.denseblock1.denselayer1.conv2.weight"][0, 0, 0, 0] = float("nan")


def _seed003_with_nan(ctx) -> str:
  """The seed-003 captioner's state dict (tiny sizes, random weights) with one NaN in its output layer."""
  torch.manual_seed(0)
  model = ResNetGraphCaptioner(
    TINY_DECODER["vocab_size"],
    TINY_DECODER["embed_dim"],
    TINY_DECODER["num_layers"],
    TINY_DECODER["num_heads"],
    transformers.ResNetConfig(**TINY_RESNET),
  )
  state = model.state_dict()
  state["fc_out.weight"][1, 2] = float("nan")
  return ctx.torch_file("s3nan.bin", state)


def _evil_pickle(ctx) -> str:
  marker = ctx.path("evil_ran")

  class Evil:
    def __reduce__(self):
      return (os.system, (f"touch {marker}",))

  path = ctx.path("evil.pth")
  path.write_bytes(pickle.dumps({"state_dict": Evil()}))
  return str(path)


def _evil_not_run(ctx, out):
  assert not ctx.path("evil_ran").exists(), "the pickled command ran"


def _weights_dir(ctx, name, change):
  directory = ctx.weights_copy(name)
  change(directory)
  return str(directory)


def _edit_model_json(change):
  def edit(directory):
    model = json.loads((directory / "model.json").read_text())
    change(model)
    (directory / "model.json").write_text(json.dumps(model))

  return edit


def _nan_safetensors(directory):
  flat = safetensors.numpy.load_file(directory / store.VARIABLES_FILE)
  key = sorted(flat)[3]
  flat[key] = flat[key].copy()
  flat[key].reshape(-1)[0] = np.inf
  safetensors.numpy.save_file(flat, directory / store.VARIABLES_FILE)


# --- word vectors (the LSTM captioner's embedding: 8-d in the smoke config) ------------------------


def _train_with_vectors(ctx, name, lines: bytes | str | None = None, source: pathlib.Path | None = None):
  path = source if source is not None else _write(ctx, name, lines)
  return [
    "train",
    "--config=configs/demo.py:smoke,model=lstm",
    f"--workdir={ctx.root / ('w_' + name)}",
    f"--config.init.word_vectors={path}",
  ]


def _vectors(rows) -> str:
  return "".join(f"{word} " + " ".join(str(v) for v in values) + "\n" for word, values in rows)


# --- archives, XML, CSV --------------------------------------------------------------------------


def _openi_manual(ctx, name) -> pathlib.Path:
  """Open-i layout of real studies with every image linked (tests/data/test_prepare.py)."""
  return make_openi_layout(ctx.shared / "iu_xray", ctx.root / name)


def _reports_tgz(ctx, name, damage: Callable[[bytearray], None], level: int = 0) -> list[str]:
  """prepare iu_xray from NLMCXR_reports.tgz (stored at gzip `level`), damaged by `damage`."""
  manual = _openi_manual(ctx, name)
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    tar.add(manual / "ecgen-radiology", arcname="ecgen-radiology")
  shutil.rmtree(manual / "ecgen-radiology")
  data = bytearray(gzip.compress(buffer.getvalue(), compresslevel=level, mtime=0))
  damage(data)
  (manual / "NLMCXR_reports.tgz").write_bytes(bytes(data))
  return ["prepare", "iu_xray", "--manual-dir", str(manual), "--data-dir", str(ctx.root / f"data_{name}")]


def _flip_report_letter(data: bytearray) -> None:
  """Changes one letter of a report's text: with stored (level 0) deflate blocks, only the CRC tells."""
  index = data.index(b'<AbstractText Label="FINDINGS">') + len(b'<AbstractText Label="FINDINGS">')
  data[index] = data[index] + 1 if data[index] != ord("z") else ord("y")


def _report_xml(ctx, name, xml: str) -> list[str]:
  manual = _openi_manual(ctx, name)
  (manual / "ecgen-radiology" / "1.xml").write_text(xml)
  return ["prepare", "iu_xray", "--manual-dir", str(manual), "--data-dir", str(ctx.root / f"data_{name}")]


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
<!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
<!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
<!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
<!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
<!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
<!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">]>
<eCitation><uId id="CXR1"/><abstract>&lol9;</abstract></eCitation>"""


def _traversal_images_tgz(ctx) -> list[str]:
  """NLMCXR_png.tgz whose members climb out of the extraction folder ("../../escaped.png")."""
  manual = _openi_manual(ctx, "traversal")
  shutil.rmtree(manual / "images")
  buffer = io.BytesIO()
  png = io.BytesIO()
  Image.new("L", (8, 8)).save(png, format="PNG")
  with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
    for name in ("../../escaped.png", "/tmp/absolute_escaped.png"):
      info = tarfile.TarInfo(name)
      info.size = len(png.getvalue())
      tar.addfile(info, io.BytesIO(png.getvalue()))
  (manual / "NLMCXR_png.tgz").write_bytes(buffer.getvalue())
  return ["prepare", "iu_xray", "--manual-dir", str(manual), "--data-dir", str(ctx.root / "data_traversal")]


def _nothing_escaped(ctx, out):
  assert not (ctx.root / "escaped.png").exists() and not (ctx.root.parent / "escaped.png").exists()
  assert not pathlib.Path("/tmp/absolute_escaped.png").exists()


def _auroc(ctx, predictions: pathlib.Path, labels: pathlib.Path | None = None) -> list[str]:
  if labels is None:
    labels = _write(
      ctx,
      "labels.csv",
      "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,"
      "Patient Gender,View Position\na.png,Cardiomegaly,0,1,50,M,PA\nb.png,No Finding,0,2,40,F,PA\n",
    )
  return ["auroc", "--predictions", str(predictions), "--labels", str(labels)]


def _prediction_rows(first="0.5") -> str:
  return (
    FINDINGS_HEADER
    + "\n"
    + "a.png,"
    + ",".join([first] + ["0.5"] * 13)
    + "\n"
    + "b.png,"
    + ",".join(["0.2"] * 14)
    + "\n"
  )


def _gzip_crc_broken(text: str) -> bytes:
  data = bytearray(gzip.compress(text.encode(), compresslevel=0, mtime=0))
  data[-8] ^= 0xFF  # The CRC-32 of the trailer.
  return bytes(data)


# --- configs and workdirs ------------------------------------------------------------------------


def _train(ctx, *extra, workdir=None) -> list[str]:
  return ["train", "--config=configs/demo.py:smoke", f"--workdir={workdir or ctx.root / 'train_wd'}", *extra]


def _evaluate(workdir) -> list[str]:
  return ["evaluate", "--workdir", str(workdir), "--split", "val", "--no-meteor", "--max-examples", "8"]


def _damaged_workdir(ctx, name, change):
  workdir = ctx.workdir_copy(name)
  change(workdir)
  return workdir


def _truncate_checkpoint(workdir):
  """Cuts every array file of checkpoints/best short: a checkpoint damaged after it was written."""
  for path in (workdir / "checkpoints" / "best").rglob("*"):
    if path.is_file() and path.stat().st_size > 64 and "state" in path.parts and "metadata" not in path.name:
      path.write_bytes(path.read_bytes()[:16])


CASES = [
  # Images (classify: an unreadable image is reported and skipped, exit status 1).
  Case(
    "image-truncated-png",
    lambda c: _classify(c, _write(c, "trunc.png", c.image().read_bytes()[:60])),
    1,
    ("trunc.png", "cannot decode image"),
  ),
  Case(
    "image-zero-bytes", lambda c: _classify(c, _write(c, "empty.png", b"")), 1, ("empty.png", "empty file (0 bytes)")
  ),
  Case(
    "image-is-a-directory", lambda c: _classify(c, c.path("folder.png/x").parent), 1, ("folder.png", "is a directory")
  ),
  Case("image-symlink-loop", lambda c: _classify(c, _symlink_loop(c)), 1, ("a.png", "symbolic link loop")),
  Case(
    "image-broken-symlink",
    lambda c: _classify(c, (lambda p: (p.symlink_to(c.root / "gone.png"), p)[1])(c.path("dangling.png"))),
    1,
    ("dangling.png", "broken symbolic link"),
  ),
  Case("image-missing", lambda c: _classify(c, c.root / "absent.png"), 1, ("absent.png", "not found")),
  Case(
    "image-not-an-image",
    lambda c: _classify(c, _write(c, "text.png", "hello, not a picture\n")),
    1,
    ("text.png", "not an image of a known format"),
  ),
  Case(
    "image-decompression-bomb",
    lambda c: _classify(c, _write(c, "bomb.png", _png_header(30000, 30000))),
    1,
    ("bomb.png", "decompression bomb"),
  ),
  Case(
    "image-over-the-pixel-limit",
    lambda c: _classify(c, _write(c, "huge.png", _png_header(9000, 9000))),
    1,
    ("huge.png", "9000x9000 pixels exceed the limit", "CXRJAX_MAX_IMAGE_PIXELS"),
  ),
  Case(
    "image-limit-is-configurable",
    lambda c: _classify(c, c.image("small.png")),
    1,
    ("small.png", "32x32 pixels exceed the limit of 100 pixels"),
    env={"CXRJAX_MAX_IMAGE_PIXELS": "100"},
  ),
  Case(
    "image-16-bit-same-as-8-bit",
    lambda c: _classify(c, c.image())[:-1] + _sixteen_bit_pair(c),
    0,
    check=_same_probabilities,
  ),
  # Weights files (port-weights).
  Case(
    "weights-nan-tensor",
    lambda c: [
      "port-weights",
      "--format",
      "torch",
      c.torch_file("nan.pth", _state_with(c, _nan_state)),
      str(c.root / "out_nan"),
    ],
    2,
    ("nan.pth", "features.denseblock1.denselayer1.conv2.weight", "non-finite"),
    check=lambda c, out: not (c.root / "out_nan").exists() or pytest.fail("wrote weights"),
  ),
  Case(
    "weights-missing-classifier-bias",
    lambda c: [
      "port-weights",
      "--format",
      "torch",
      c.torch_file("nobias.pth", _state_with(c, lambda s: s.pop("classifier.bias"))),
      str(c.root / "out_nobias"),
    ],
    2,
    ("nobias.pth", "classifier.bias"),
  ),
  Case(
    "weights-malicious-pickle",
    lambda c: ["port-weights", "--format", "torch", _evil_pickle(c), str(c.root / "out_evil")],
    2,
    ("evil.pth", "pickled objects"),
    check=_evil_not_run,
  ),
  Case(
    "weights-not-a-zip",
    lambda c: [
      "port-weights",
      "--format",
      "torch",
      str(_write(c, "garbage.pth", b"PK\x03\x04garbage")),
      str(c.root / "o"),
    ],
    2,
    ("garbage.pth", "cannot be read by torch.load"),
  ),
  Case(
    "weights-output-is-a-file",
    lambda c: [
      "port-weights",
      "--format",
      "torch",
      c.torch_file("ok.pth", c.state_dict()),
      str(_write(c, "taken", "x")),
    ],
    2,
    ("taken", "exists and is not a directory"),
  ),
  Case(
    "weights-input-is-a-directory",
    lambda c: ["port-weights", "--format", "torch", str(c.root), str(c.root / "o2")],
    2,
    ("is a directory",),
  ),
  Case(
    "weights-h5-not-hdf5",
    lambda c: [
      "port-weights",
      "--format",
      "keras-h5",
      str(_write(c, "fake.h5", b"not hdf5 at all")),
      str(c.root / "o3"),
    ],
    2,
    ("fake.h5", "HDF5"),
  ),
  Case(
    "seed003-without-tokenizer",
    lambda c: ["port-weights", "--format", "seed003-torch", c.torch_file("s3.pth", c.state_dict()), str(c.root / "o4")],
    2,
    ("--tokenizer",),
  ),
  Case(
    "seed003-not-a-seed003-state-dict",
    lambda c: [
      "port-weights",
      "--format",
      "seed003-torch",
      "--tokenizer",
      str(c.shared / "text" / "bert-base-uncased-vocab.txt"),
      c.torch_file("s3b.pth", c.state_dict()),
      str(c.root / "o5"),
    ],
    2,
    ("s3b.pth", "not a"),
  ),
  Case(
    "seed003-nan-tensor",
    lambda c: [
      "port-weights",
      "--format",
      "seed003-torch",
      "--tokenizer",
      str(c.shared / "text" / "bert-base-uncased-vocab.txt"),
      _seed003_with_nan(c),
      str(c.root / "o6"),
    ],
    2,
    ("s3nan.bin", "non-finite"),
    check=lambda c, out: not (c.root / "o6").exists() or pytest.fail("wrote"),
  ),
  # Weights directories (classify --weights).
  Case(
    "weights-dir-model-json-without-config",
    lambda c: [
      "classify",
      "--weights",
      _weights_dir(c, "wd_noconfig", _edit_model_json(lambda m: m.pop("config"))),
      str(c.image()),
    ],
    2,
    ("model.json", "no 'config'"),
  ),
  Case(
    "weights-dir-model-json-not-json",
    lambda c: [
      "classify",
      "--weights",
      _weights_dir(c, "wd_badjson", lambda d: (d / "model.json").write_text("{not json")),
      str(c.image()),
    ],
    2,
    ("model.json", "not valid JSON"),
  ),
  Case(
    "weights-dir-config-unknown-field",
    lambda c: [
      "classify",
      "--weights",
      _weights_dir(c, "wd_field", _edit_model_json(lambda m: m["config"].update(depth=3))),
      str(c.image()),
    ],
    2,
    ("model.json", "not a DenseNet architecture", "depth"),
  ),
  Case(
    "weights-dir-truncated-safetensors",
    lambda c: [
      "classify",
      "--weights",
      _weights_dir(
        c, "wd_trunc", lambda d: (d / store.VARIABLES_FILE).write_bytes((d / store.VARIABLES_FILE).read_bytes()[:100])
      ),
      str(c.image()),
    ],
    2,
    ("variables.safetensors", "cannot be read as safetensors"),
  ),
  Case(
    "weights-dir-infinite-tensor",
    lambda c: ["classify", "--weights", _weights_dir(c, "wd_inf", _nan_safetensors), str(c.image())],
    2,
    ("variables.safetensors", "non-finite"),
  ),
  Case(
    "weights-dir-missing-tensors",
    lambda c: [
      "classify",
      "--weights",
      _weights_dir(c, "wd_missing", lambda d: (d / store.VARIABLES_FILE).unlink()),
      str(c.image()),
    ],
    2,
    ("variables.safetensors", "not found"),
  ),
  # Word vectors (train --config.init.word_vectors).
  Case(
    "vectors-wrong-dimension-on-a-line",
    lambda c: _train_with_vectors(c, "dim.txt", _vectors([("a", [0.1] * 8), ("b", [0.2] * 7)])),
    2,
    ("dim.txt", "line 2"),
  ),
  Case(
    "vectors-not-a-number",
    lambda c: _train_with_vectors(c, "nan.txt", _vectors([("no", [0.1] * 8)]).replace("0.1", "x", 1)),
    2,
    ("nan.txt", "not a number"),
  ),
  Case(
    "vectors-duplicate-word",
    lambda c: _train_with_vectors(c, "dup.txt", _vectors([("no", [0.1] * 8), ("no", [0.2] * 8)])),
    2,
    ("dup.txt", "duplicate word 'no'"),
  ),
  Case("vectors-empty-file", lambda c: _train_with_vectors(c, "empty.txt", ""), 2, ("empty.txt", "empty file")),
  Case(
    "vectors-50d-for-an-8d-embedding",
    lambda c: _train_with_vectors(c, "glove", source=c.shared / "text" / "glove.6B.50d.first76.txt"),
    2,
    ("glove.6B.50d.first76.txt", "50-d vectors; 8-d are expected"),
  ),
  Case(
    "vectors-not-utf8",
    lambda c: _train_with_vectors(c, "latin1.txt", "caf\xe9 ".encode("latin-1") + b"0.1 " * 7 + b"0.1\n"),
    2,
    ("latin1.txt", "not UTF-8"),
  ),
  Case(
    "vectors-missing-file",
    lambda c: _train_with_vectors(c, "absent", source=c.root / "absent.vec"),
    2,
    ("absent.vec", "not found"),
  ),
  # Configs (train).
  Case(
    "config-unknown-argument",
    lambda c: ["train", "--config=configs/demo.py:smoke,bogus=1", f"--workdir={c.root / 'x'}"],
    2,
    ("configs/demo.py", "unknown config argument 'bogus'"),
  ),
  Case(
    "config-file-missing",
    lambda c: ["train", "--config=configs/nothere.py", f"--workdir={c.root / 'x'}"],
    2,
    ("configs/nothere.py", "config file not found"),
  ),
  Case(
    "config-unknown-field",
    lambda c: _train(c, "--config.no_such_field=1"),
    2,
    ("--config.no_such_field=1", "unknown config field 'no_such_field'", "'train'"),
  ),
  Case(
    "config-unknown-nested-field",
    lambda c: _train(c, "--config.train.num_stepz=1"),
    2,
    ("unknown config field 'num_stepz' in config.train", "num_steps"),
  ),
  Case("config-bad-value", lambda c: _train(c, "--config.train.num_steps=many"), 2, ("--config.train.num_steps=many",)),
  Case(
    "config-without-get-config",
    lambda c: ["train", f"--config={_write(c, 'empty_config.py', 'x = 1')}", f"--workdir={c.root / 'x'}"],
    2,
    ("empty_config.py", "get_config"),
  ),
  Case("config-workdir-missing", lambda c: ["train", "--config=configs/demo.py:smoke"], 2, ("--workdir",)),
  Case(
    "config-workdir-is-a-file", lambda c: _train(c, workdir=_write(c, "a_file", "x")), 2, ("a_file", "not a directory")
  ),
  Case(
    "config-dataset-not-prepared",
    lambda c: [
      "train",
      "--config=configs/iu_xray_attention.py:smoke",
      f"--workdir={c.root / 'iu_wd'}",
      f"--config.data.data_dir={c.path('unprepared/x').parent}",
    ],
    2,
    ("not prepared", "cxrjax prepare"),
  ),
  # Workdirs (train, evaluate, predict).
  Case(
    "workdir-corrupt-config-json-train",
    lambda c: _train(
      c, workdir=_damaged_workdir(c, "wd_cfg_train", lambda w: (w / "config.json").write_text('{"data": {"na'))
    ),
    2,
    ("config.json", "not valid JSON"),
  ),
  Case(
    "workdir-corrupt-config-json-evaluate",
    lambda c: _evaluate(_damaged_workdir(c, "wd_cfg_eval", lambda w: (w / "config.json").write_text('{"data": {"na'))),
    2,
    ("config.json", "not valid JSON"),
  ),
  Case(
    "workdir-config-json-not-an-object",
    lambda c: _evaluate(_damaged_workdir(c, "wd_cfg_list", lambda w: (w / "config.json").write_text("[1, 2]"))),
    2,
    ("config.json", "not a run config"),
  ),
  Case(
    "workdir-of-another-model",
    lambda c: ["train", "--config=configs/demo.py:smoke,model=lstm", f"--workdir={c.workdir_copy('wd_other')}"],
    2,
    ("another model configuration",),
  ),
  Case(
    "workdir-of-another-data-configuration",
    lambda c: _train(c, "--config.data.image_size=48", workdir=c.workdir_copy("wd_res")),
    2,
    ("config.data.image_size=48", "another data configuration", "config.json has config.data.image_size=32"),
  ),
  Case(
    "config-unknown-model-name",
    lambda c: _train(c, "--config.model.name=transformer"),
    2,
    ("config.model.name='transformer'", "unknown model family", "attention_captioner"),
  ),
  Case(
    "evaluate-beam-size-zero",
    lambda c: _evaluate(c.workdir()) + ["--beam-size", "0"],
    2,
    ("--beam-size 0", "at least 1"),
  ),
  Case(
    "evaluate-max-examples-negative",
    lambda c: _evaluate(c.workdir())[:-2] + ["--max-examples", "-1"],
    2,
    ("--max-examples -1", "at least 1"),
  ),
  Case(
    "evaluate-beam-size-on-a-classifier",
    lambda c: ["evaluate", "--workdir", str(c.agcnn_workdir()), "--split", "val", "--beam-size", "2"],
    2,
    ("--beam-size 2", "holds a classifier (agcnn), which writes no text"),
  ),
  Case(
    "workdir-not-a-workdir",
    lambda c: _evaluate(c.path("plain/x").parent),
    2,
    ("config.json: not found", "cxrjax train"),
  ),
  Case(
    "workdir-no-checkpoint",
    lambda c: _evaluate(_damaged_workdir(c, "wd_nockpt", lambda w: shutil.rmtree(w / "checkpoints"))),
    2,
    ("no checkpoint",),
  ),
  Case(
    "workdir-damaged-checkpoint",
    lambda c: _evaluate(_damaged_workdir(c, "wd_ckpt", _truncate_checkpoint)),
    2,
    ("checkpoints/best", "none of its checkpoints", "can be restored"),
    check=lambda c, out: None,
  ),
  Case(
    "workdir-corrupt-tokenizer",
    lambda c: _evaluate(_damaged_workdir(c, "wd_tok", lambda w: (w / "tokenizer.json").write_text("{"))),
    2,
    ("tokenizer.json", "JSON"),
  ),
  Case(
    "predict-image-is-a-directory",
    lambda c: ["predict", "--workdir", str(c.workdir()), str(c.root)],
    2,
    ("is a directory",),
  ),
  Case(
    "predict-attention-maps-is-a-file",
    lambda c: [
      "predict",
      "--workdir",
      str(c.workdir()),
      "--greedy",
      "--attention-maps",
      str(_write(c, "maps", "x")),
      str(c.image()),
    ],
    2,
    ("maps", "not a directory"),
  ),
  # Archives and XML (prepare iu_xray).
  Case(
    "tgz-crc-failure",
    lambda c: _reports_tgz(c, "crc", _flip_report_letter),
    2,
    ("NLMCXR_reports.tgz", "CRC check failed"),
  ),
  Case(
    "tgz-truncated",
    lambda c: _reports_tgz(c, "cut", lambda d: d.__delitem__(slice(len(d) // 2, None)), level=6),
    2,
    ("NLMCXR_reports.tgz", "truncated"),
  ),
  Case(
    "tgz-not-an-archive",
    lambda c: _reports_tgz(c, "text", lambda d: d.__setitem__(slice(None), b"plain text, not an archive\n" * 10)),
    2,
    ("NLMCXR_reports.tgz", "not a readable tar"),
  ),
  Case(
    "xml-malformed", lambda c: _report_xml(c, "badxml", "<eCitation><uId id='CXR1'>"), 2, ("1.xml", "malformed XML")
  ),
  Case("xml-billion-laughs", lambda c: _report_xml(c, "laughs", BILLION_LAUGHS), 2, ("1.xml", "XML")),
  Case("tgz-path-traversal", _traversal_images_tgz, 2, (), check=_nothing_escaped),
  # CSVs (auroc).
  Case(
    "auroc-gz-not-gzip",
    lambda c: _auroc(c, _write(c, "p.csv.gz", _prediction_rows())),
    2,
    ("p.csv.gz", "gzip-compressed CSV"),
  ),
  Case(
    "auroc-not-utf8",
    lambda c: _auroc(c, _write(c, "p_latin.csv", _prediction_rows().replace("a.png", "\xe4.png").encode("latin-1"))),
    2,
    ("p_latin.csv", "UTF-8"),
  ),
  Case(
    "auroc-gzip-crc-failure",
    lambda c: _auroc(c, _write(c, "p_crc.csv.gz", _gzip_crc_broken(_prediction_rows()))),
    2,
    ("p_crc.csv.gz", "CRC check failed"),
  ),
  Case(
    "auroc-labels-gzip-crc-failure",
    lambda c: _auroc(
      c,
      _write(c, "p_ok.csv", _prediction_rows()),
      _write(
        c,
        "labels_crc.csv.gz",
        _gzip_crc_broken(
          "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"
          "a.png,Mass,0,1,50,M,PA\nb.png,No Finding,0,2,40,F,PA\n"
        ),
      ),
    ),
    2,
    ("labels_crc.csv.gz", "CRC check failed"),
  ),
  Case(
    "auroc-nan-probability",
    lambda c: _auroc(c, _write(c, "p_nan.csv", _prediction_rows("nan"))),
    2,
    ("p_nan.csv", "line 2", "not a probability"),
  ),
  Case(
    "auroc-missing-column",
    lambda c: _auroc(c, _write(c, "p_cols.csv", "Image Index,prob_Mass\na.png,0.1\n")),
    2,
    ("p_cols.csv", "missing columns"),
  ),
  # ROCO captions and parquet (prepare rocov2 / roco).
  Case(
    "rocov2-captions-not-utf8",
    lambda c: _rocov2(c, "r_latin", "ID,Caption\nROCOv2_1,caf\xe9\n".encode("latin-1")),
    2,
    ("test_captions.csv", "UTF-8"),
  ),
  Case(
    "rocov2-captions-wrong-header",
    lambda c: _rocov2(c, "r_header", b"Name,Text\nROCOv2_1,a chest\n"),
    2,
    ("test_captions.csv", "expected the header ID,Caption"),
  ),
  Case("rocov2-parquet-not-parquet", lambda c: _rocov2_parquet(c), 2, ("train-0.parquet", "parquet")),
  Case("roco-captions-not-utf8", lambda c: _roco_v1(c), 2, ("captions.txt", "UTF-8")),
]


def _rocov2(ctx, name, test_captions: bytes) -> list[str]:
  manual = ctx.path(f"{name}/x").parent
  for split in ("train", "valid"):
    (manual / f"{split}_captions.csv").write_text("ID,Caption\nROCOv2_1,a chest radiograph\n")
  (manual / "test_captions.csv").write_bytes(test_captions)
  return ["prepare", "rocov2", "--manual-dir", str(manual), "--data-dir", str(ctx.root / f"data_{name}")]


def _rocov2_parquet(ctx) -> list[str]:
  data = ctx.path("r_parquet/data/x").parent
  for split in ("train", "validation", "test"):
    (data / f"{split}-0.parquet").write_bytes(b"PAR1 this is not a parquet file PAR1")
  return ["prepare", "rocov2", "--manual-dir", str(data.parent), "--data-dir", str(ctx.root / "data_r_parquet")]


def _roco_v1(ctx) -> list[str]:
  manual = ctx.path("roco_v1/x").parent
  for split in ("train", "validation", "test"):
    folder = manual / split / "radiology"
    (folder / "images").mkdir(parents=True)
    (folder / "captions.txt").write_bytes("ROCO_00001\t caf\xe9 chest\n".encode("latin-1"))
  return ["prepare", "roco", "--manual-dir", str(manual), "--data-dir", str(ctx.root / "data_roco_v1")]


@pytest.fixture(scope="module")
def context(tmp_path_factory, shared_data):
  return Context(tmp_path_factory.mktemp("corpus"), shared_data)


def test_the_corpus_is_large_and_its_names_unique():
  assert len(CASES) >= 40 and len({case.name for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
def test_malformed_input(case, context, capsys, monkeypatch):
  for name, value in (case.env or {}).items():
    monkeypatch.setenv(name, value)
  argv = case.argv(context)
  capsys.readouterr()
  status = cli.main(argv)  # A traceback here (an exception) fails the case: a user's mistake is never one.
  out, err = capsys.readouterr()
  assert status == case.status, f"exit status {status}, expected {case.status}\nstdout: {out}\nstderr: {err}"
  errors = [line for line in err.splitlines() if re.match(r"cxrjax [\w-]+: error: ", line)]
  if case.status == 0:
    assert not errors, err
    for text in case.says:
      assert text in out, (text, out)
  else:
    assert errors, f"no `cxrjax <command>: error:` line in stderr:\n{err}"
    line = errors[0]
    for text in case.says:
      assert text in line, f"{text!r} not in the error line {line!r}"
    assert "Traceback" not in err and "BytesIO" not in line and "weights_only=False" not in line, err
  if case.check:
    case.check(context, out)
