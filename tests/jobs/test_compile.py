"""`cxrjax compile` (cxrjax/jobs/aot.py): every registered family's smoke config, its train step and its evaluation
compiled by XLA's TPU compiler (libtpu, the `tpu-compile` extra) for a single-host slice (v5e:2x2) and a
multi-host one (v5e:4x4, 4 processes), with replicated parameters and, for the transformer families, with
FSDP and tensor parallelism: each fits, has FLOPs, and runs the collectives its layout implies. Also: the
batch shapes the programs are compiled for are those the real loops feed; the batch-size search; the
command's errors and its exit status for a program that does not fit.

TPU compiles cannot use JAX's persistent cache (a compile-only client cannot load executables), so every
case is a real compile of a few seconds to half a minute on 2 CPU cores; the cases are chosen so that each
family compiles each program once, with each slice and layout covered across them, not every product.
"""

import functools
import importlib
import importlib.metadata
import importlib.util
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cxrjax.jobs import aot
from cxrjax import cli, models
from cxrjax.core import sharding
from cxrjax.run import workdir as workdir_lib
from cxrjax.data import datasets, pipeline
from cxrjax.tasks import evaluation

ROOT = pathlib.Path(__file__).resolve().parents[2]
SINGLE_HOST, MULTI_HOST = "v5e:2x2", "v5e:4x4"
# A smoke run's word vocabulary is of this order; the default (bert-base-uncased's 30522) would make the
# output layers of these tiny models most of their compile.
VOCAB_SIZE = 64

if importlib.util.find_spec("libtpu") is None:
  pytest.fail("libtpu is not installed: `pip install -e '.[test]'` installs it (the tpu-compile extra)", pytrace=False)


def smoke_configs() -> dict[str, str]:
  """{family: the first configs/*.py (by name) whose smoke variant builds it}, for every registered family."""
  found = {}
  for path in sorted((ROOT / "configs").glob("*.py")):
    if path.stem.startswith("_"):
      continue
    family = importlib.import_module(f"configs.{path.stem}").get_config("smoke").model.name
    found.setdefault(family, path.stem)
  return found


FAMILIES = smoke_configs()


def test_every_registered_family_has_a_smoke_config():
  assert set(FAMILIES) == set(models.FAMILIES)


def tiny_config(family: str, arg: str = "smoke"):
  """The family's smoke config (`arg`), BLIP's prompt ([DEC] a picture of) moved inside VOCAB_SIZE."""
  config = importlib.import_module(f"configs.{FAMILIES[family]}").get_config(arg)
  if config.model.get("prompt_ids"):
    config.model.prompt_ids = tuple(range(VOCAB_SIZE - len(config.model.prompt_ids), VOCAB_SIZE))
  return config


@functools.cache
def tpu_slice(topology: str) -> aot.Slice:
  return aot.describe_slice(topology)


@functools.cache
def compiled(family: str, program: str, topology: str, layout: str = "") -> aot.Report:
  """One compile, shared by the tests that read it. `layout`: config arguments (model_parallel=2, fsdp); FSDP
  splits every parameter here (fsdp_min_size 0: the smoke models' are all small)."""
  config = tiny_config(family, ",".join(["smoke", layout]).strip(","))
  if "fsdp" in layout:
    config.sharding.fsdp_min_size = 0
  # One example per chip: the smoke batches (8) do not split over the 16 chips of v5e:4x4.
  batch_per_chip = 1 if topology == MULTI_HOST and program == "train" else None
  return aot.compile_config(config, tpu_slice(topology), (program,), batch_per_chip, VOCAB_SIZE)[0]


def check_compiled(report: aot.Report, topology: str, chips: int | None = None) -> None:
  assert report.fits and report.hbm_used <= report.hbm_capacity
  assert report.chips == (chips or tpu_slice(topology).chips)
  assert report.hosts == len({d.process_index for d in tpu_slice(topology).devices[: report.chips]})
  assert report.flops > 0 and report.model_flops > 0 and report.bytes_accessed > 0
  assert report.estimated_seconds >= report.roofline_seconds > 0 and report.examples_per_s_per_chip > 0
  assert report.memory["parameters"] > 0 and report.memory["batch"] > 0 and sum(report.products.values()) > 0


def parameter_bytes(family: str) -> int:
  """The bytes of all of a family's smoke parameters (what a replicated layout puts on every chip)."""
  config = tiny_config(family)
  tokenizer, _ = aot.load_tokenizer(config, VOCAB_SIZE)
  components = workdir_lib.build(config, tokenizer)
  params = jax.eval_shape(lambda rng: workdir_lib.init_state(components, rng), jax.random.key(0)).params
  return sum(np.dtype(a.dtype).itemsize * a.size for a in jax.tree.leaves(params))


# The cases: every family's train step and evaluation, each compiled once, the slices alternating between
# the two programs and between families. The train steps are replicated, but the transformer families' (git,
# blip, graph_captioner), which are FSDP, tensor parallel or both; every evaluation is replicated, and two
# more are sharded.
SHARDED_TRAIN = {"git": "model_parallel=2,fsdp", "blip": "model_parallel=2", "graph_captioner": "fsdp"}
CASES = []
for index, family in enumerate(sorted(FAMILIES)):
  train_slice, evaluate_slice = (SINGLE_HOST, MULTI_HOST)[:: 1 if index % 2 else -1]
  CASES.append((family, "train", train_slice, SHARDED_TRAIN.get(family, "")))
  CASES.append((family, "evaluate", evaluate_slice, ""))
CASES += [("git", "evaluate", SINGLE_HOST, "model_parallel=2"), ("graph_captioner", "evaluate", MULTI_HOST, "fsdp")]


def test_every_family_and_slice_and_layout_is_covered():
  assert {(f, p) for f, p, _, _ in CASES} == {(f, p) for f in FAMILIES for p in ("train", "evaluate")}
  for program in ("train", "evaluate"):
    assert {t for _, p, t, _ in CASES if p == program} == {SINGLE_HOST, MULTI_HOST}
  assert {layout for _, p, _, layout in CASES if p == "train"} >= {"", "fsdp", "model_parallel=2"}


@pytest.mark.parametrize("family,program,topology,layout", CASES)
def test_every_family_compiles_and_fits(family, program, topology, layout):
  report = compiled(family, program, topology, layout)
  check_compiled(report, topology)
  mesh = report.mesh
  assert mesh["model"] == (2 if "model_parallel=2" in layout else 1)
  assert mesh["data"] * mesh["model"] == report.chips
  whole = parameter_bytes(family)
  if not layout:
    assert report.memory["parameters"] == whole, "replicated: every chip holds every parameter"
    assert report.collectives["all-gather"] == 0, "a replicated run gathers no parameters"
  else:
    # FSDP: each chip holds about 1 / (data chips); tensor parallelism: about half of the transformer's.
    assert report.memory["parameters"] < whole * (0.5 if "fsdp" in layout else 0.9)
  if program == "train":
    assert report.memory["optimizer_state"] >= report.memory["parameters"]
    # Gradients summed over the data-parallel chips; tensor parallelism's row-parallel products too.
    assert report.collectives["all-reduce"] >= (2 if "model_parallel" in layout else 1)
    if "fsdp" in layout:
      assert report.collectives["all-gather"] >= 1, "FSDP gathers each split parameter where it is used"
    elif not layout:
      assert report.collectives["reduce-scatter"] == 0


def test_the_served_search_compiles_on_one_host():
  report = compiled("attention_captioner", "serve", MULTI_HOST)
  check_compiled(report, MULTI_HOST, chips=len(tpu_slice(MULTI_HOST).host_devices()))
  assert report.hosts == 1
  assert sum(report.collectives.values()) == 0, "a replicated batch on replicated parameters needs no collective"


def test_train_batches_have_the_shapes_the_step_is_compiled_for():
  config = importlib.import_module("configs.demo").get_config("smoke")
  source, _ = datasets.make_source(config.data, "train")
  tokenizer = datasets.load_or_build_tokenizer(config.data, source)
  batch = next(iter(pipeline.make_batches(config, source=source, tokenizer=tokenizer, train=True)))
  spec = pipeline.batch_spec(config, config.train.batch_size, tokenizer)
  assert {k: (v.shape, v.dtype) for k, v in batch.items() if v.dtype.kind in "biuf"} == {
    k: (v.shape, v.dtype) for k, v in spec.items()
  }


def test_evaluation_feeds_predict_the_global_batches_it_is_compiled_for():
  config = importlib.import_module("configs.demo").get_config("smoke")
  config.eval.batch_size = 5  # Padded to 8 rows: a multiple of the 8 simulated devices.
  source, _ = datasets.make_source(config.data, "val")
  tokenizer = datasets.load_or_build_tokenizer(config.data, datasets.make_source(config.data, "train")[0])
  task = workdir_lib.build(config, tokenizer).task
  mesh = sharding.create_mesh()
  fed = []

  def predict(variables, batch):
    del variables
    fed.append({key: (value.shape, value.dtype, value.sharding) for key, value in batch.items()})
    return {"tokens": jnp.zeros((batch["mask"].shape[0], config.decode.max_length), jnp.int32)}

  evaluation.predict_split(
    task,
    {},
    pipeline.Subset(source, 6),
    config,
    mesh=mesh,
    predict=predict,
    batch_size=config.eval.batch_size,
  )
  spec = evaluation.predict_batch_spec(config, task, config.eval.batch_size, mesh)
  assert fed and all(batch == {k: (v.shape, v.dtype, v.sharding) for k, v in spec.items()} for batch in fed)


@pytest.mark.parametrize("start", [1, 7, 52, 53, 1000])
def test_the_batch_search_brackets_then_bisects(start):
  """With HBM growing by 300 MiB an example (and a little unevenly, as XLA's does), the search ends at the
  largest batch that fits, in a few probes, whatever the start; the answer is bracketed by two probes."""
  capacity, base, step = 16 * 2**30, 700 * 2**20, 300 * 2**20
  use = lambda batch: base + step * batch + (batch % 3) * 2**20
  largest = max(b for b in range(1, 2000) if use(b) <= capacity)
  probes = []

  def probe(batch):
    probes.append(batch)
    return use(batch) <= capacity, use(batch)

  assert aot.largest_fitting(probe, start, limit=4096, capacity=capacity) == largest
  assert largest in probes and largest + 1 in probes and len(probes) <= 8, probes


def test_the_batch_search_does_not_step_by_one_where_the_use_stops_growing():
  """Near the capacity XLA rematerialises and a larger batch can need less HBM (roco_git.py:tpu on v5e:2x4:
  15.20 GiB per chip at 77 per chip, 14.32 at 82): the line through the probes nearest the capacity then
  lands at the largest fitting batch, and the search stepped up one full compile (10 minutes) at a time.
  It must bisect instead."""
  gib, capacity, largest = 2**30, int(15.75 * 2**30), 140

  def use(batch):
    if batch <= 77:
      return int((15.2 - 0.1 * (77 - batch)) * gib)
    if batch <= largest:
      return int((14.5 + 0.01 * (batch - 109)) * gib)  # rematerialised: below the line through 77 and 154
    return int((15.9 + 0.046 * (batch - 141)) * gib)

  probes = []

  def probe(batch):
    probes.append(batch)
    return use(batch) <= capacity, use(batch)

  assert aot.largest_fitting(probe, 77, limit=4096, capacity=capacity) == largest
  assert largest in probes and largest + 1 in probes and len(probes) <= 10, probes


def test_the_batch_search_stops_at_its_limit_and_at_nothing_fitting():
  assert aot.largest_fitting(lambda b: (True, b), 3, limit=100, capacity=2**30) == 100
  probes = []
  assert aot.largest_fitting(lambda b: (probes.append(b), (False, 2**40))[1], 16, 4096, 2**30) == 0
  assert probes == [16, 8, 4, 2, 1]


def test_the_compilers_out_of_memory_messages_are_read():
  # As XLA's TPU compiler words them (libtpu 0.0.42.1).
  early = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
    "(17.00G) exceeds available HBM (15.75G)."
  )
  late = (
    "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used "
    "20.58G of 15.75G hbm. Exceeded hbm capacity by 4.83G."
  )
  assert aot.parse_out_of_memory(early) == (int(17.0 * 2**30), int(15.75 * 2**30))
  assert aot.parse_out_of_memory(late) == (int(20.58 * 2**30), int(15.75 * 2**30))
  assert aot.parse_out_of_memory("INVALID_ARGUMENT: something else") is None
  assert tpu_slice(SINGLE_HOST).hbm_bytes == int(15.75 * 2**30)  # The compiler's own, not the brochure's.


def test_estimates_use_xla_only_where_sane():
  tpu = tpu_slice(SINGLE_HOST)
  flops, data = tpu.peak_flops * 2e-3, tpu.hbm_bandwidth * 1e-3  # 2 ms of arithmetic, 1 ms of memory
  roofline = aot.estimate(flops, data, -3.0, tpu)
  assert roofline["roofline_seconds"] == pytest.approx(2e-3) == roofline["estimated_seconds"]
  assert roofline["estimate"].startswith("roofline (FLOPs at peak")
  assert aot.estimate(flops, data, 1e-3, tpu)["estimated_seconds"] == pytest.approx(2e-3)  # Faster than peak.
  assert aot.estimate(flops, data, 5e-3, tpu)["estimate"] == "XLA's optimal_seconds"


def test_matmul_flops_counts_products_convolutions_and_loop_bodies():
  def f(x, w, kernel):
    y = x @ w  # 2 * 8 * 16 * 32
    image = jax.lax.conv_general_dilated(
      x[None, :, :, None], kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )  # 2 * 8*16 * 9 * 1 * 4
    _, y = jax.lax.while_loop(lambda c: c[0] < 5, lambda c: (c[0] + 1, c[1] @ jnp.eye(32)), (0, y))  # once
    scanned, _ = jax.lax.scan(lambda c, _: (c @ jnp.eye(32), None), y, None, length=3)  # 3 times
    return scanned.sum() + image.sum()

  jaxpr = jax.make_jaxpr(f)(jnp.ones((8, 16)), jnp.ones((16, 32)), jnp.ones((3, 3, 1, 4)))
  assert aot.matmul_flops(jaxpr) == 2 * 8 * 16 * 32 + 2 * 8 * 16 * 9 * 4 + 2 * 8 * 32 * 32 * (1 + 3)


def test_the_compiled_products_are_counted_by_operand_dtype():
  """XLA's TPU programs write batched products (attention) as convolutions over dilated batch windows: their
  FLOPs read from the compiled text are the traced einsum's. A float32 convolution runs as bfloat16 x
  float32 at the default precision, on a kernel XLA may pad (its FLOPs at least the traced ones)."""
  mesh = jax.sharding.Mesh(np.array(tpu_slice(SINGLE_HOST).devices[:1]), ("chip",))

  def f(queries, keys, images, kernel):
    scores = jnp.einsum("bqhd,bkhd->bhqk", queries, keys)
    features = jax.lax.conv_general_dilated(images, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return scores.sum() + features.sum()

  arguments = (
    jax.ShapeDtypeStruct((4, 40, 12, 64), jnp.bfloat16),
    jax.ShapeDtypeStruct((4, 56, 12, 64), jnp.bfloat16),
    jax.ShapeDtypeStruct((2, 32, 32, 8), jnp.float32),
    jax.ShapeDtypeStruct((3, 3, 8, 16), jnp.float32),
  )
  products = aot.products_by_dtype(
    jax.jit(f, in_shardings=sharding.replicated(mesh)).lower(*arguments).compile().as_text()
  )
  assert set(products) == {"bf16 x bf16", "bf16 x f32"}
  assert products["bf16 x bf16"] == 2 * 4 * 12 * 40 * 56 * 64
  assert products["bf16 x f32"] >= 2 * 2 * 32 * 32 * 16 * 9 * 8


def run_cli(argv, capsys):
  status = cli.main(["compile", *argv])
  captured = capsys.readouterr()
  return status, captured.out, captured.err


def test_a_program_that_does_not_fit_names_its_largest_buffers_and_exits_2(capsys):
  # An output vocabulary of 2**27 tokens: its embedding and output kernel alone are 24 GiB per chip.
  status, out, err = run_cli(
    ["--config=configs/roco_git.py:smoke", f"--topology={SINGLE_HOST}", "--program=evaluate", f"--vocab-size={2**27}"],
    capsys,
  )
  assert status == 2, err
  assert "DOES NOT FIT" in out and "does not fit: the largest buffers are" in out
  assert "['output']['kernel'] float32[24, 134217728]" in out


def test_unknown_topology_and_missing_libtpu_are_one_line_naming_the_flag(capsys, monkeypatch):
  status, out, err = run_cli(["--config=configs/demo.py:smoke", "--topology=v5x:2x2"], capsys)
  assert status == 2 and out == "" and len(err.strip().splitlines()) == 1
  assert err.startswith("cxrjax compile: error: --topology=v5x:2x2: libtpu does not describe this slice")
  status, out, err = run_cli(["--config=configs/demo.py:smoke"], capsys)
  assert status == 2 and "--topology is required" in err
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, "find_spec", lambda name, *a: None if name == "libtpu" else real_find_spec(name, *a)
  )
  status, out, err = run_cli(["--config=configs/demo.py:smoke", "--topology=v5e:2x2"], capsys)
  assert status == 2 and len(err.strip().splitlines()) == 1
  assert err.strip() == (
    "cxrjax compile: error: --topology=v5e:2x2: describing a TPU slice needs libtpu, which is "
    "not installed here (pip install -e '.[tpu-compile]')"
  )


def test_the_command_prints_each_program(capsys):
  status, out, err = run_cli(
    ["--config=configs/demo.py:smoke", f"--topology={SINGLE_HOST}", "--program=evaluate"], capsys
  )
  assert status == 0, err
  assert out.startswith(f"evaluate: 4 chips (TPU v5 lite) on 1 host of {SINGLE_HOST}, mesh data 4 x model 1;")
  for line in (
    "vocabulary: ",
    "HBM per chip: ",
    "per step and chip: ",
    "step time: ",
    "roofline: FLOPs at 197 TFLOP/s",
    "examples/s per chip",
    "collectives: ",
    "compiled in ",
  ):
    assert line in out
  assert re.search(r"HBM per chip: [0-9.]+ MiB of 15\.75 GiB usable \(0%\): fits", out)


def test_the_launcher_installs_the_libtpu_that_compile_uses():
  """launch/tpu.py's pin is the tpu-compile extra's, and jax[tpu] at the pinned jax accepts it."""
  import tomllib  # pylint: disable=g-import-not-at-top
  from packaging.requirements import Requirement  # pylint: disable=g-import-not-at-top

  project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
  (pin,) = [Requirement(r) for r in project["optional-dependencies"]["tpu-compile"] if r.startswith("libtpu")]
  assert "cxrjax[tpu-compile]" in project["optional-dependencies"]["test"]
  spec = importlib.util.spec_from_file_location("launch_tpu", ROOT / "launch" / "tpu.py")
  launcher = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(launcher)
  version = launcher.pinned_libtpu_version()
  assert str(pin.specifier) == f"=={version}" and importlib.metadata.version("libtpu") == version
  jax_wants = [Requirement(r) for r in importlib.metadata.requires("jax") if r.startswith("libtpu")]
  assert any(r.marker.evaluate({"extra": "tpu"}) and version in r.specifier for r in jax_wants)
