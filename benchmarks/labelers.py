"""Reports/s of cxrjax's CheXbert labelling and BERTScore beside the PyTorch references, same weights, same batch.

  python benchmarks/labelers.py [--reports 64] [--batch 32] [--repeats 2] [--skip-bertscore] [--smoke]

The texts are the first --reports real IU X-ray reports (findings + impression, NLMCXR_reports.tgz). Weights are
random, at bert-base-uncased's size (CheXbert's release and BERTScore's bert-base-uncased: 12 layers, 768 wide,
the 30,522-piece vocabulary); --smoke uses a 2-layer, 32-wide model, a check that the script runs, not a figure.
One JSON line per measurement:
  chexbert_labelling  cxrjax: weights/chexbert_labeler.Labeler.logits (jitted batches of --batch sorted by
                      length, power-of-two lengths, sharded over every device's 'data' axis; compile excluded
                      by a warm-up pass) beside the reference `bert_labeler` (CheXbert's src/models/
                      bert_labeler.py, tests/weights/test_chexbert_labeler.py) batched as its label.py does
                      (sorted by length, padded to the batch's longest), torch.no_grad, on the CPU.
  bertscore           cxrjax: evaluators/bertscore.BertScorer.score (layer 9, bert-base-uncased's default, no
                      idf, no baseline) beside bert_score.BERTScorer.score (model loaded once) on the same
                      Hugging Face directory, each report's candidate the next report.
  comparison          per benchmark: cxrjax's reports/s over PyTorch's, and how far the outputs differ.
Timings are the best of --repeats passes over all the reports. The PyTorch references (torch, transformers,
bert-score) are test-only extras: `pip install -e '.[test]' bert-score`.
"""

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import bert_score
import jax
import numpy as np
import torch
import transformers

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cxrjax import sharding
from cxrjax.data.iu_xray import reports as iu_reports
from cxrjax.evaluators import bertscore
from cxrjax.weights import chexbert_labeler
from tests.weights.test_chexbert_labeler import TINY, bert_labeler, reference_ids, reference_logits, save_release

SHARED = ROOT.parent / "shared/data"
VOCAB = SHARED / "text/bert-base-uncased-vocab.txt"
BERTSCORE_LAYER = {"bert-base": 9, "smoke": 1}  # bert-score's model2layers["bert-base-uncased"]; smoke: its 2nd.


def _best_time(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


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
  common = dict(benchmark="chexbert_labelling", model=f"{size} (random weights)", reports=len(reports),
                batch_size=batch)

  start = time.perf_counter()
  ours = labeler.logits(reports, batch_size=batch)  # Compiles every bucket length the reports need.
  compile_and_first = time.perf_counter() - start
  seconds = _best_time(lambda: labeler.logits(reports, batch_size=batch), repeats)
  _line(**common, implementation="cxrjax", device=f"{jax.devices()[0].device_kind} x{mesh.size}",
        seconds=round(seconds, 3), reports_per_s=round(len(reports) / seconds, 2),
        first_pass_with_compile_s=round(compile_and_first, 2))

  tokenizer = transformers.BertTokenizer(vocab=str(VOCAB))
  ids = [reference_ids(tokenizer, report) for report in reports]  # label.py tokenises before it batches.
  theirs = reference_logits(model, ids, batch_size=batch)
  seconds_torch = _best_time(lambda: reference_logits(model, ids, batch_size=batch), repeats)
  _line(**common, implementation="pytorch", device=f"cpu ({torch.get_num_threads()} threads)",
        seconds=round(seconds_torch, 3), reports_per_s=round(len(reports) / seconds_torch, 2),
        note="tokenisation excluded")
  finite = np.isfinite(theirs)
  _line(benchmark="chexbert_labelling", comparison="cxrjax / pytorch reports/s",
        ratio=round(seconds_torch / seconds, 3),
        max_abs_logit_difference=float(np.abs(ours[finite] - theirs[finite]).max()),
        classes_agree=float((ours.argmax(-1) == theirs.argmax(-1)).mean()))


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
  common = dict(benchmark="bertscore", model=f"{size} (random weights), layer {layer}", reports=len(reports),
                batch_size=batch)

  mesh = sharding.create_mesh()
  scorer = bertscore.BertScorer.from_directory(directory, num_layers=layer)
  rows = -(-batch // mesh.size) * mesh.size  # score() takes a multiple of the 'data' axis.
  start = time.perf_counter()
  ours = scorer.score(candidates, references, batch_size=rows, mesh=mesh)["F1"]
  compile_and_first = time.perf_counter() - start
  seconds = _best_time(lambda: scorer.score(candidates, references, batch_size=rows, mesh=mesh), repeats)
  _line(**common, implementation="cxrjax", device=f"{jax.devices()[0].device_kind} x{mesh.size}",
        seconds=round(seconds, 3), reports_per_s=round(len(reports) / seconds, 2),
        first_pass_with_compile_s=round(compile_and_first, 2))

  package = _patched_bert_score()(model_type=str(directory), num_layers=layer, batch_size=batch, device="cpu",
                                  idf=False)  # Loads the model once, as cxrjax's scorer holds it.
  run_package = lambda: package.score(candidates, references, batch_size=batch)[2].numpy()  # noqa: E731
  theirs = run_package()
  seconds_torch = _best_time(run_package, repeats)
  _line(**common, implementation="pytorch bert_score.BERTScorer.score", device=f"cpu ({torch.get_num_threads()} "
        "threads)", seconds=round(seconds_torch, 3), reports_per_s=round(len(reports) / seconds_torch, 2))
  _line(benchmark="bertscore", comparison="cxrjax / pytorch reports/s", ratio=round(seconds_torch / seconds, 3),
        max_abs_f1_difference=float(np.abs(ours - theirs).max()))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--reports", type=int, default=64)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--skip-bertscore", action="store_true")
  parser.add_argument("--smoke", action="store_true", help="a tiny model: checks that the script runs")
  args = parser.parse_args()
  reports = iu_reports_text(args.reports)
  with tempfile.TemporaryDirectory(prefix="cxrjax-labelers-") as folder:
    folder = pathlib.Path(folder)
    bench_chexbert(reports, args.batch, args.repeats, args.smoke, folder)
    if not args.skip_bertscore:
      bench_bertscore(reports, args.batch, args.repeats, args.smoke, folder)


if __name__ == "__main__":
  main()
