"""The captioning task's scoring under each config family's protocol, on real ROCO / ROCOv2 captions and
IU X-ray reports: a perfect model (the tokenizer's round trip of each reference) gets every metric's
maximum, and a constant caption scores the same as an image-free baseline and as a model's output."""

import json
import numbers
import pathlib
import shutil

import pytest

from cxrjax.core import config as config_lib
from cxrjax import evaluators
from cxrjax.core import recipes
from cxrjax.data import datasets
from cxrjax.data.roco import captions as roco_captions, chest
from cxrjax.core.errors import ConfigError
from cxrjax.metrics import baselines, protocols
from cxrjax.metrics import captioning as caption_metrics
from cxrjax.tasks import captioning
from cxrjax.text import cleaning, tokenizers
from cxrjax.weights import hf, seed003

ROOT = pathlib.Path(__file__).resolve().parents[2]
BERT_VOCAB = "text/bert-base-uncased-vocab.txt"
# Scoring reads no tokenizer; a task is built with one.
ANY_TOKENIZER = tokenizers.WordVocabulary.build(["a"], min_count=1)
# Metrics whose maximum is 1 (CIDEr-D's and METEOR's are the references' own scores: CIDEr-D gives a
# caption of fewer than four tokens no 4-gram similarity, METEOR's fragmentation penalty is never 0).
MAX_ONE = (
  "BLEU-1",
  "BLEU-2",
  "BLEU-3",
  "BLEU-4",
  "sacreBLEU",
  "ROUGE-L",
  "ROUGE-1",
  "ROUGE-2",
  "ROUGE-L (rouge-score)",
  "ROUGE-Lsum",
)


def _numbers(scores):
  return {
    name: value
    for name, value in scores.items()
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and name != "num_studies"
  }


@pytest.fixture(scope="module")
def family_configs():
  """Every captioning config family, and the run configs `cxrjax port-weights` writes into a workdir
  (the recipe of the imported model section, as the format's porting function builds it)."""
  families = ("iu_xray_attention", "iu_xray_lstm", "iu_xray_cam", "roco_git", "roco_blip", "rocov2_graph")
  configs = {name: config_lib.load_config_file(str(ROOT / "configs" / f"{name}.py")) for name in families}
  configs["port-weights hf (GIT)"] = hf.FAMILIES.get("git").ported_run_config(configs["roco_git"].model.to_dict())
  configs["port-weights hf (BLIP)"] = hf.FAMILIES.get("blip").ported_run_config(configs["roco_blip"].model.to_dict())
  graph = configs["rocov2_graph"].model
  configs["port-weights seed003-torch"] = seed003.fit_lengths(recipes.rocov2_experiment(graph.to_dict()), graph)
  return configs


@pytest.fixture(scope="module")
def roco_raw_captions(shared_data):
  """200 real ROCO chest X-ray captions (test split, by cxrjax/data/roco/chest.py's rule) and the ROCOv2
  test head, as written."""
  folder = shared_data / "roco" / "test" / "radiology"
  concepts = roco_captions.read_roco_v1_lists(folder / "cuis.txt")
  captions = [
    caption
    for image_id, caption in roco_captions.read_roco_v1_captions(folder / "captions.txt")
    if chest.is_chest_xray(caption, concepts.get(image_id, []))
  ][:200]
  assert len(captions) == 200
  return captions + [
    caption for _, caption in roco_captions.read_rocov2_captions(shared_data / "rocov2" / "test_captions.head30.csv")
  ]


@pytest.fixture(scope="module")
def iu_raw_reports(shared_data):
  """The reports of R2Gen's IU X-ray test split."""
  with open(shared_data / "iu_xray" / "r2gen" / "annotation.json", encoding="utf-8") as f:
    return [study["report"] for study in json.load(f)["test"]]


def _tokenizer(config, shared_data, references):
  """The family's tokenizer kind: WordPiece (bert-base-uncased's vocab.txt, as GIT, BLIP and seed 003 use)
  for the raw captions; the word vocabulary for IU X-ray, over every reference word (so that a perfect
  model can write each; words outside a real vocabulary are the model's limit, not the protocol's)."""
  if config.data.name == "iu_xray":
    return tokenizers.WordVocabulary.build(references, min_count=1, cleaning_style=config.data.cleaning)
  data = config.data.copy_and_resolve_references()
  data.tokenizer = str(shared_data / BERT_VOCAB)
  return datasets.load_or_build_tokenizer(data, None)


def test_a_perfect_model_gets_every_maximum_in_every_config_family(
  family_configs, roco_raw_captions, iu_raw_reports, shared_data
):
  expected_protocols = {"iu_xray": "r2gen", "roco": "coco", "rocov2": "imageclef"}
  scored = {}  # Families with the same protocol and texts get the same scores: computed once.
  for family, config in family_configs.items():
    raw = iu_raw_reports if config.data.name == "iu_xray" else roco_raw_captions
    references = [cleaning.clean_report(text, config.data.cleaning) for text in raw]  # The pipeline's.
    tokenizer = _tokenizer(config, shared_data, references)
    generated = [tokenizer.decode(tokenizer.encode(reference)) for reference in references]
    protocol = protocols.protocol_for(config.data)
    assert protocol == expected_protocols[config.data.name], family
    if config.data.name != "iu_xray":  # Raw captions: the decoded spelling differs nearly everywhere.
      assert sum(r != g for r, g in zip(references, generated)) > 0.9 * len(references), family
    # Every metric, METEOR included, sees the same texts on both sides.
    assert protocols.normalize(generated, protocol) == protocols.normalize(references, protocol), family
    key = (protocol, tuple(references), tuple(generated))
    if key not in scored:
      # The run's validation evaluators (`evaluate`'s add METEOR): its text metrics under its protocol.
      built = evaluators.for_run(config, "train")
      records = [
        {"id": str(i), "reference": reference, "generated": text}
        for i, (reference, text) in enumerate(zip(references, generated))
      ]
      own_records = [dict(record, generated=record["reference"]) for record in records]
      score = lambda records: evaluators.run(built, evaluators.Predictions.from_records(records))["scores"]  # noqa: E731
      scored[key] = score(records), score(own_records), records
    perfect, own, _ = scored[key]
    assert perfect["protocol"]["name"] == protocol, family
    assert _numbers(perfect) == _numbers(own), family  # The references' own scores: the maximum.
    for name in MAX_ONE:
      assert perfect[name] == pytest.approx(1.0, abs=1e-9), (family, name)
    assert 9 < perfect["CIDEr"] <= 10, family
  assert len(scored) == 3  # IU X-ray, ROCO under "coco", ROCOv2 under "imageclef".
  # METEOR once (the jar's start takes seconds): identical texts, so the references' own score.
  if shutil.which("java") is not None:
    (protocol, _, _), (_, _, records) = next((key, value) for key, value in scored.items() if key[0] == "coco")
    meteor = caption_metrics.caption_metrics(
      [r["reference"] for r in records], [r["generated"] for r in records], protocol=protocol, meteor=True
    )
    assert 0.99 < meteor["METEOR"] <= 1.0 and "jar" in meteor["implementations"]["METEOR"]


def test_without_a_protocol_the_perfect_model_scored_low(roco_raw_captions, shared_data):
  # The texts as written ("r2gen": whitespace only), what every family used before: the bug this fixes.
  wordpiece = tokenizers.WordPieceTokenizer.from_vocab(shared_data / BERT_VOCAB)
  references = [cleaning.clean_report(text, "none") for text in roco_raw_captions]
  generated = [wordpiece.decode(wordpiece.encode(reference)) for reference in references]
  scores = caption_metrics.caption_metrics(references, generated, protocol="r2gen", meteor=False)
  assert scores["BLEU-4"] < 0.7 and scores["ROUGE-L"] < 0.8 and scores["CIDEr"] < 5


class _Captions:
  """A training split of raw captions, as datasets.report_texts reads one."""

  def __init__(self, captions):
    self.captions = captions

  def reports(self):
    return list(self.captions)


@pytest.mark.parametrize("family", ["roco_git", "rocov2_graph"])
def test_a_constant_caption_scores_the_same_as_a_baseline_and_as_a_model_output(
  family, family_configs, roco_raw_captions, shared_data, monkeypatch
):
  config = family_configs[family]
  folder = shared_data / "roco" / "validation" / "radiology"
  captions = roco_captions.read_roco_v1_captions(folder / "captions.txt")
  train = [
    cleaning.clean_report(caption, config.data.cleaning) for _, caption in captions if chest.is_chest_xray(caption)
  ]
  monkeypatch.setattr(datasets, "make_source", lambda data, split: (_Captions(train), None))
  references = [cleaning.clean_report(text, config.data.cleaning) for text in roco_raw_captions]
  ids = [str(i) for i in range(len(references))]
  baselines_evaluator = evaluators.build("baselines", {"meteor": False})
  result = baselines_evaluator(evaluators.Predictions(ids, references, references, data=config.data))
  wordpiece = _tokenizer(config, shared_data, references)
  text = evaluators.for_run(config, "train")["text"]
  for name in ("most_common_report", "best_constant_report"):
    report = result[name]["report"]
    generated = wordpiece.decode(wordpiece.encode(report))
    assert report in train and generated != report, name  # A raw training caption; the model's spelling.
    as_model = text(evaluators.Predictions(ids, references, [generated] * len(references)))
    assert _numbers(as_model) == _numbers(result[name]["scores"]), name
    assert as_model["protocol"] == result[name]["scores"]["protocol"], name


def test_the_demo_texts_are_scored_as_before():
  """README's demo table (configs/demo.py) and the captioners' phantom demos: their cleaned references,
  findings oracles and training reports are single-spaced tokens, which the "r2gen" protocol leaves as
  they are; so every number, the baselines' choices included, is what it was without a protocol."""
  for spec in ("configs/demo.py", "configs/roco_git.py:demo", "configs/rocov2_graph.py:demo"):
    config = config_lib.load_config_file(str(ROOT / spec))
    assert protocols.protocol_for(config.data) == "r2gen", spec
    for split in ("train", "test"):
      source, _ = datasets.make_source(config.data, split)
      texts = datasets.report_texts(source, config.data.cleaning)
      texts += [cleaning.clean_report(report, config.data.cleaning) for report in source.oracle_reports()]
      assert protocols.normalize(texts, "r2gen") == texts, (spec, split)
  train = datasets.report_texts(datasets.make_source(config.data, "train")[0], config.data.cleaning)
  assert baselines.most_common_report(train, protocol="r2gen") == baselines.most_common_report(train)
  assert baselines.best_constant_report(train, protocol="r2gen") == baselines.best_constant_report(train)


def test_a_bad_protocol_is_refused_when_the_task_is_made(family_configs):
  config = family_configs["roco_git"].copy_and_resolve_references()
  config.data.caption_protocol = "bleu"
  with pytest.raises(
    ConfigError,
    match=r"^config\.data\.caption_protocol: unknown protocol 'bleu'; expected one of "
    r"\['coco', 'imageclef', 'r2gen'\]$",
  ):
    captioning.CaptioningTask(config, ANY_TOKENIZER)
