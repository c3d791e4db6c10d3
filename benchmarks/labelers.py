"""Reports/s of cxrjax's CheXbert labelling and BERTScore beside the PyTorch references, same weights, same batch.

  python benchmarks/labelers.py [--reports 64] [--batch 32] [--repeats 2] [--skip-bertscore] [--smoke]
  python benchmarks/labelers.py --tpu-topology v5e:2x2 [--tpu-batch-per-chip 64] [--tpu-length 128]

The texts are the first --reports real IU X-ray reports (findings + impression, NLMCXR_reports.tgz). Weights are
random, at bert-base-uncased's size (CheXbert's release and BERTScore's bert-base-uncased: 12 layers, 768 wide,
the 30,522-piece vocabulary); --smoke uses a 2-layer, 32-wide model, a check that the script runs, not a figure.
One JSON line per measurement:
  chexbert_labelling  cxrjax: weights/chexbert_labeler.Labeler.logits (jitted batches of --batch sorted by
                      length, lengths rounded up to multiples of 16, sharded over every device's 'data' axis;
                      compile excluded by a warm-up pass) beside the reference `bert_labeler` (CheXbert's
                      src/models/bert_labeler.py, tests/weights/test_chexbert_labeler.py) batched as its
                      label.py does (sorted by length, padded to the batch's longest), torch.no_grad, on the
                      CPU. Both time texts -> logits: cleaning and tokenisation included on both sides
                      (cxrjax's WordPiece; transformers' BertTokenizer, as label.py).
  bertscore           cxrjax: evaluators/bertscore.BertScorer.score (layer 9, bert-base-uncased's default, no
                      idf, no baseline) beside bert_score.BERTScorer.score (model loaded once) on the same
                      Hugging Face directory, each report's candidate the next report (so every text is both a
                      candidate and a reference; both encode each distinct text once). Both time texts ->
                      scores, tokenisation included.
  comparison          per benchmark: cxrjax's reports/s over PyTorch's, and how far the outputs differ.
Timings are the best of --repeats passes over all the reports, cxrjax's and PyTorch's passes alternating (after
one untimed pass each), so that both sides meet the same load on a shared machine. The PyTorch references (torch, transformers,
bert-score) are test-only extras: `pip install -e '.[test]' bert-score`.

--tpu-topology v5e:2x2 measures nothing here: it compiles the steps for that TPU slice with cxrjax/jobs/aot.py
(libtpu: `pip install -e '.[tpu-compile]'`; nothing runs) and prints one JSON line per program, from
aot.compile_program's Report: HBM per chip, XLA's FLOPs and bytes, the estimated step time (XLA's
optimal_seconds where sane, else the roofline) and the reports/s per chip it implies. Random weights do not
matter to a compile; the shapes are --tpu-batch-per-chip rows per chip (the batch sharded over the mesh's
'data' axis, every chip a 'data' device) of --tpu-length ids, float32 as the labelers run:
  chexbert_labelling  chexbert_labeler.jit_logits of CheXbert at bert-base size.
  bertscore           bertscore.embed (the encoder cut to the scoring layer, unit vectors) plus
                      bertscore.greedy_match of as many pairs, at bert-base-uncased (layer 9) and roberta-large
                      (layer 17, the package's default English model) sizes; reports/s per chip counts each
                      report embedded once and matched once (every candidate also a reference, as above).
"""

import argparse
import json
import math
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bert_score
import jax
import jax.numpy as jnp
import numpy as np
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrjax.core import sharding
from cxrjax.data.iu_xray import reports as iu_reports
from cxrjax.evaluators import bertscore
from cxrjax.models import chexbert
from cxrjax.models.encoders import text
from cxrjax.weights import chexbert_labeler, hf_text
from tests.weights.test_chexbert_labeler import TINY, bert_labeler, reference_ids, reference_logits, save_release

SHARED = ROOT.parent / "shared/data"
VOCAB = SHARED / "text/bert-base-uncased-vocab.txt"
BERTSCORE_LAYER = {"bert-base": 9, "smoke": 1}  # bert-score's model2layers["bert-base-uncased"]; smoke: its 2nd.
# roberta-large's config.json (the hub's), for the compile-only estimate: the sizes are all it needs.
ROBERTA_LARGE = dict(
  vocab_size=50265,
  hidden_size=1024,
  num_hidden_layers=24,
  num_attention_heads=16,
  intermediate_size=4096,
  max_position_embeddings=514,
  type_vocab_size=1,
  layer_norm_eps=1e-5,
  pad_token_id=1,
)


def _best_times(functions, repeats: int) -> list[float]:
  """The best time of each function over `repeats` passes that run every function once, alternating: on a
  shared machine whose load drifts, each side is timed beside the other rather than minutes apart."""
  times = [[] for _ in functions]
  for _ in range(repeats):
    for function, found in zip(functions, times):
      start = time.perf_counter()
      function()
      found.append(time.perf_counter() - start)
  return [min(found) for found in times]


def iu_reports_text(count: int) -> list[str]:
  """The findings + impression of the first `count` real reports with text."""
  texts = []
  for name, data in iu_reports._iter_openi_xml(SHARED / "iu_xray/NLMCXR_reports.tgz"):
    study = iu_reports._parse_openi_xml(data, name, SHARED)
    text = " ".join(study.sections[s] for s in ("findings", "impression") if study.sections[s])
    if text:
      texts.append(text)
    if len(texts) == count:
      return texts
  raise SystemExit(f"only {len(texts)} reports with text; asked for {count}")


def bert_config(smoke: bool) -> transformers.BertConfig:
  return transformers.BertConfig(**TINY) if smoke else transformers.BertConfig()  # Defaults: bert-base-uncased.


def _line(**fields) -> None:
  print(json.dumps(fields), flush=True)


def bench_chexbert(reports: list[str], batch: int, repeats: int, smoke: bool, folder: pathlib.Path) -> None:
  torch.manual_seed(0)
  config = bert_config(smoke)
  model = bert_labeler(config).eval()
  checkpoint = save_release(model, folder / "chexbert.pth")
  chexbert_labeler.port(checkpoint, folder / "labeler", tokenizer=VOCAB, num_heads=config.num_attention_heads)
  mesh = sharding.create_mesh()
  labeler = chexbert_labeler.Labeler.load(folder / "labeler", mesh=mesh)
  size = "smoke" if smoke else "bert-base"
  common = dict(
    benchmark="chexbert_labelling", model=f"{size} (random weights)", reports=len(reports), batch_size=batch
  )

  run_ours = lambda: labeler.logits(reports, batch_size=batch)  # noqa: E731
  start = time.perf_counter()
  ours = run_ours()  # Compiles every bucket length the reports need.
  compile_and_first = time.perf_counter() - start
  tokenizer = transformers.BertTokenizer(vocab=str(VOCAB))
  # label.py tokenises every report, then batches; Labeler.logits tokenises inside, so both time texts -> logits.
  run_reference = lambda: reference_logits(
    model,
    [reference_ids(tokenizer, report) for report in reports],  # noqa: E731
    batch_size=batch,
  )
  theirs = run_reference()
  seconds, seconds_torch = _best_times([run_ours, run_reference], repeats)
  _line(
    **common,
    implementation="cxrjax",
    device=f"{jax.devices()[0].device_kind} x{mesh.size}",
    seconds=round(seconds, 3),
    reports_per_s=round(len(reports) / seconds, 2),
    first_pass_with_compile_s=round(compile_and_first, 2),
  )
  start = time.perf_counter()
  for report in reports:
    reference_ids(tokenizer, report)
  tokenising = time.perf_counter() - start
  _line(
    **common,
    implementation="pytorch",
    device=f"cpu ({torch.get_num_threads()} threads)",
    seconds=round(seconds_torch, 3),
    reports_per_s=round(len(reports) / seconds_torch, 2),
    note=f"tokenisation included (transformers' BertTokenizer alone: {tokenising:.3f} s)",
  )
  finite = np.isfinite(theirs)
  _line(
    benchmark="chexbert_labelling",
    comparison="cxrjax / pytorch reports/s",
    ratio=round(seconds_torch / seconds, 3),
    max_abs_logit_difference=float(np.abs(ours[finite] - theirs[finite]).max()),
    classes_agree=float((ours.argmax(-1) == theirs.argmax(-1)).mean()),
  )


def _patched_bert_score():
  """bert_score.BERTScorer on transformers 5: its sent_encode calls build_inputs_with_special_tokens, which the
  fast tokenizers of transformers 5 no longer have (as tests/metrics/test_bertscore.py patches it)."""
  backend = transformers.tokenization_utils_tokenizers.TokenizersBackend
  if not hasattr(backend, "build_inputs_with_special_tokens"):
    backend.build_inputs_with_special_tokens = lambda self, ids: [self.cls_token_id, *ids, self.sep_token_id]
  return bert_score.BERTScorer


def bench_bertscore(reports: list[str], batch: int, repeats: int, smoke: bool, folder: pathlib.Path) -> None:
  torch.manual_seed(1)
  directory = folder / "bert"
  directory.mkdir()
  transformers.BertModel(bert_config(smoke), add_pooling_layer=False).save_pretrained(directory)
  shutil.copy(VOCAB, directory / "vocab.txt")
  (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
  size = "smoke" if smoke else "bert-base"
  layer = BERTSCORE_LAYER[size]
  candidates, references = reports[1:] + reports[:1], reports
  common = dict(
    benchmark="bertscore", model=f"{size} (random weights), layer {layer}", reports=len(reports), batch_size=batch
  )

  mesh = sharding.create_mesh()
  scorer = bertscore.BertScorer.from_directory(directory, num_layers=layer)
  rows = -(-batch // mesh.size) * mesh.size  # score() takes a multiple of the 'data' axis.
  run_ours = lambda: scorer.score(candidates, references, batch_size=rows, mesh=mesh)["F1"]  # noqa: E731
  start = time.perf_counter()
  ours = run_ours()
  compile_and_first = time.perf_counter() - start
  package = _patched_bert_score()(
    model_type=str(directory), num_layers=layer, batch_size=batch, device="cpu", idf=False
  )  # Loads the model once, as cxrjax's scorer holds it.
  run_package = lambda: package.score(candidates, references, batch_size=batch)[2].numpy()  # noqa: E731
  theirs = run_package()
  seconds, seconds_torch = _best_times([run_ours, run_package], repeats)
  _line(
    **common,
    implementation="cxrjax",
    device=f"{jax.devices()[0].device_kind} x{mesh.size}",
    seconds=round(seconds, 3),
    reports_per_s=round(len(reports) / seconds, 2),
    first_pass_with_compile_s=round(compile_and_first, 2),
  )
  _line(
    **common,
    implementation="pytorch bert_score.BERTScorer.score",
    device=f"cpu ({torch.get_num_threads()} threads)",
    seconds=round(seconds_torch, 3),
    reports_per_s=round(len(reports) / seconds_torch, 2),
  )
  _line(
    benchmark="bertscore",
    comparison="cxrjax / pytorch reports/s",
    ratio=round(seconds_torch / seconds, 3),
    max_abs_f1_difference=float(np.abs(ours - theirs).max()),
  )


def _abstract(tree, target: jax.sharding.NamedSharding):
  return jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=target), tree)


def _compiled(aot, tpu_slice, name: str, function, arguments: tuple, variables, batch_parts, mesh):
  """aot.compile_program's Report of `function(*arguments)` (abstract arrays laid out on `mesh`)."""
  rows = jax.tree.leaves(batch_parts)[0].shape[0]
  built = aot.Built(
    name=name,
    function=function,
    arguments=arguments,
    mesh=mesh,
    batch=rows,
    chips=tpu_slice.chips,
    hosts=tpu_slice.hosts,
    state=variables,
    parts=dict(parameters=variables, batch=batch_parts),
  )
  return aot.compile_program(built, tpu_slice, explain=False)


def _estimate_fields(report) -> dict:
  return dict(
    fits=report.fits,
    hbm_used_mib=round(report.hbm_used / 2**20, 1),
    flops=report.flops,
    bytes_accessed=report.bytes_accessed,
    estimated_ms=None if report.estimated_seconds is None else round(report.estimated_seconds * 1e3, 3),
    estimate=report.estimate,
    compile_s=round(report.compile_seconds, 1),
  )


def tpu_estimates(topology: str, batch_per_chip: int, length: int) -> None:
  """The labelling and BERTScore steps compiled for `topology` (module doc); one JSON line each."""
  from cxrjax.jobs import aot  # libtpu's start-up and the compile machinery only where asked for.

  tpu_slice = aot.describe_slice(topology)
  mesh = sharding.create_mesh(None, tpu_slice.devices)
  replicated, rows = sharding.replicated(mesh), sharding.data_sharded(mesh)
  batch = batch_per_chip * mesh.shape[sharding.DATA_AXIS]
  ids = jax.ShapeDtypeStruct((batch, length), jnp.int32, sharding=rows)
  common = dict(
    topology=topology,
    chip=tpu_slice.kind,
    chips=tpu_slice.chips,
    mesh=dict(mesh.shape),
    batch=batch,
    batch_per_chip=batch_per_chip,
    length=length,
    dtype="float32",
  )

  model = chexbert.CheXbert(**chexbert.BERT_BASE)
  variables = _abstract(chexbert_labeler.abstract_variables(model), replicated)
  report = _compiled(
    aot,
    tpu_slice,
    "chexbert_labelling",
    chexbert_labeler.jit_logits(model, mesh),
    (variables, ids, ids),
    variables,
    (ids, ids),
    mesh,
  )
  _line(
    benchmark="chexbert_labelling",
    estimate_for="tpu",
    model="bert-base",
    **common,
    reports_per_s_per_chip=None if report.estimated_seconds is None else round(report.examples_per_s_per_chip, 1),
    **_estimate_fields(report),
  )

  for size, hf_config, layer in (
    ("bert-base-uncased", transformers.BertConfig().to_dict(), 9),
    ("roberta-large", transformers.RobertaConfig(**ROBERTA_LARGE).to_dict(), 17),
  ):
    encoder = text.TextEncoder(**hf_text.encoder_fields(hf_config, size)).clone(num_layers=layer)
    tokens = jnp.zeros((1, 2), jnp.int32)
    variables = _abstract(jax.eval_shape(lambda: encoder.init(jax.random.key(0), tokens, tokens)), replicated)
    mask = jax.ShapeDtypeStruct((batch, length), jnp.bool_, sharding=rows)
    embedded = _compiled(
      aot, tpu_slice, "bertscore_embed", bertscore.embed, (encoder, variables, ids, mask), variables, (ids, mask), mesh
    )
    units = jax.ShapeDtypeStruct((batch, length, encoder.hidden_size), jnp.float32, sharding=rows)
    weights = jax.ShapeDtypeStruct((batch, length), jnp.float32, sharding=rows)
    pair = (units, mask, weights)
    matched = _compiled(aot, tpu_slice, "bertscore_match", bertscore.greedy_match, pair + pair, {}, pair + pair, mesh)
    seconds = (embedded.estimated_seconds or math.nan) + (matched.estimated_seconds or math.nan)
    _line(
      benchmark="bertscore",
      estimate_for="tpu",
      model=f"{size}, layer {layer}",
      **common,
      reports_per_s_per_chip=round(batch_per_chip / seconds, 1),
      estimated_ms=round(seconds * 1e3, 3),
      embed=_estimate_fields(embedded),
      match=_estimate_fields(matched),
    )


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reports", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip-bertscore", action="store_true")
  parser.add_argument("--smoke", action="store_true", help="a tiny model: checks that the script runs")
  parser.add_argument(
    "--tpu-topology", help="compile for this TPU slice (e.g. v5e:2x2) and print estimates instead of measuring here"
  )
  parser.add_argument("--tpu-batch-per-chip", type=int, default=64)
  parser.add_argument("--tpu-length", type=int, default=128, help="padded ids per report in the estimate")
  args = parser.parse_args()
  if args.tpu_topology:
    tpu_estimates(args.tpu_topology, args.tpu_batch_per_chip, args.tpu_length)
    return
  reports = iu_reports_text(args.reports)
  with tempfile.TemporaryDirectory(prefix="cxrjax-labelers-") as folder:
    folder = pathlib.Path(folder)
    bench_chexbert(reports, args.batch, args.repeats, args.smoke, folder)
    if not args.skip_bertscore:
      bench_bertscore(reports, args.batch, args.repeats, args.smoke, folder)


if __name__ == "__main__":
  main()
