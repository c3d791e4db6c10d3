"""`cxrjax score` and the evaluators on real IU X-ray reports: every predictions format reads the same
predictions and gives the same scores, the scores equal the metric functions called directly, a perfect
prediction reaches every metric's maximum, a bad file is one line naming the file and line, and the CheXbert
labeler sharded over 8 devices labels as one device does.

References are "Findings: <findings> Impression: <impression>" of real reports (ReXrank's form, so that its
JSON holds the same predictions as the CSV and JSONL); generated reports are the references perturbed
(sentences dropped, reordered, negations removed, another study's report). The labeler is a tiny random
CheXbert written as the release is and ported (tests/weights/test_chexbert_labeler.py), calibrated on these
texts so that its labels vary between reports. BERTScore's encoder is a tiny random BERT saved as a Hugging
Face directory (tests/metrics/test_bertscore.py).
"""

import csv
import json
import re
import shutil

import jax
import numpy as np
import pytest
import transformers

from cxrjax import cli, evaluators
from cxrjax.jobs import score
from cxrjax.core import sharding
from cxrjax.data.iu_xray import reports as iu_reports
from cxrjax.core.errors import ConfigError
from cxrjax.evaluators import bertscore
from cxrjax.metrics import captioning, clinical
from cxrjax.models import chexbert
from cxrjax.weights import chexbert_labeler
from tests.weights.test_chexbert_labeler import TINY, reference_ids, reference_model, save_release

NUM_STUDIES = 40


def _perturbed(texts: list[str]) -> list[str]:
  """A different text per report, by four real-looking edits in turn."""
  out = []
  for index, text in enumerate(texts):
    sentences = [s for s in text.split(". ") if s]
    if index % 4 == 0:
      out.append(". ".join(sentences[1:]) or text.upper())
    elif index % 4 == 1:
      out.append(text.replace("No ", "").replace(" no ", " "))
    elif index % 4 == 2:
      out.append(". ".join(reversed(sentences)))
    else:
      out.append(texts[(index + 7) % len(texts)])
  return out


@pytest.fixture(scope="module")
def studies(shared_data):
  """(ids, findings, impressions) of the first NUM_STUDIES real reports with both sections."""
  ids, findings, impressions = [], [], []
  for name, data in iu_reports._iter_openi_xml(shared_data / "iu_xray" / "NLMCXR_reports.tgz"):
    study = iu_reports._parse_openi_xml(data, name, shared_data)
    if study.sections["findings"] and study.sections["impression"]:
      ids.append(study.uid)
      findings.append(study.sections["findings"])
      impressions.append(study.sections["impression"])
    if len(ids) == NUM_STUDIES:
      break
  findings[3] = findings[3].replace(". ", ".\n", 1)  # A line break inside a CSV field and a JSON string.
  return ids, findings, impressions


@pytest.fixture(scope="module")
def predictions(studies):
  ids, findings, impressions = studies
  references = [score.rexrank_reference(f, i) for f, i in zip(findings, impressions)]
  return ids, references, _perturbed(references)


@pytest.fixture(scope="module")
def labeler_dir(tmp_path_factory, shared_data, predictions):
  vocab = shared_data / "text" / "bert-base-uncased-vocab.txt"
  tokenizer = transformers.BertTokenizer(vocab=str(vocab))
  _, references, generated = predictions
  model = reference_model([reference_ids(tokenizer, text) for text in references + generated], seed=10)
  directory = tmp_path_factory.mktemp("chexbert")
  checkpoint = save_release(model, directory / "chexbert.pth")
  chexbert_labeler.port(checkpoint, directory / "labeler", tokenizer=vocab, num_heads=TINY["num_attention_heads"])
  return directory / "labeler", checkpoint


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, shared_data):
  """A tiny random BERT (3 layers, 32 wide) with bert-base-uncased's vocabulary, as save_pretrained writes it."""
  directory = tmp_path_factory.mktemp("bert")
  shutil.copy(shared_data / "text" / "bert-base-uncased-vocab.txt", directory / "vocab.txt")
  transformers.set_seed(3)
  transformers.BertModel(
    transformers.BertConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48),
    add_pooling_layer=False,
  ).save_pretrained(directory)
  (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
  return directory


def _write_jsonl(path, ids, references, generated, with_ids=True):
  with open(path, "w") as handle:
    for i, r, g in zip(ids, references, generated):
      handle.write(
        json.dumps(
          {"id": i, "reference": r, "generated": g, "beam_size": 3} if with_ids else {"reference": r, "generated": g}
        )
        + "\n"
      )
  return path


def _write_csv(path, ids, references, generated):
  with open(path, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["generated", "id", "reference"])  # Any column order.
    writer.writerows(zip(generated, ids, references))
  return path


def _write_rexrank(path, studies, generated):
  ids, findings, impressions = studies
  path.write_text(
    json.dumps(
      {
        i: {"model_prediction": g, "section_findings": f, "section_impression": m}
        for i, f, m, g in zip(ids, findings, impressions, generated)
      },
      indent=2,
    )
  )
  return path


@pytest.fixture(scope="module")
def files_of_every_format(tmp_path_factory, studies, predictions):
  ids, references, generated = predictions
  folder = tmp_path_factory.mktemp("predictions")
  return {
    "jsonl": _write_jsonl(folder / "predictions.jsonl", ids, references, generated),
    "csv": _write_csv(folder / "other_system.csv", ids, references, generated),
    "rexrank": _write_rexrank(folder / "rexrank.json", studies, generated),
  }


BERTSCORE_LAYER = 2


def _config(labeler, bert, batch_size=8):
  return score.evaluator_config(
    ["text", "chexbert", "bertscore"],
    protocol="r2gen",
    meteor=False,
    labeler=str(labeler),
    batch_size=batch_size,
    bertscore_model=str(bert),
    bertscore_layer=BERTSCORE_LAYER,
  )


@pytest.fixture(scope="module")
def scored(tmp_path_factory, files_of_every_format, labeler_dir, bert_dir):
  """metrics.json of each format, scored over every device (8)."""
  out = tmp_path_factory.mktemp("metrics")
  result = {}
  for name, path in files_of_every_format.items():
    score.score_file(str(path), _config(labeler_dir[0], bert_dir), out=str(out / f"{name}.json"), progress=False)
    result[name] = json.loads((out / f"{name}.json").read_text())
  return result


def test_every_format_reads_the_same_predictions(files_of_every_format, predictions):
  ids, references, generated = predictions
  for name, path in files_of_every_format.items():
    read = score.read_predictions(path)
    assert read.format == name
    assert (read.ids, read.references, read.generated) == (ids, references, generated), name
  assert "\n" in references[3]  # The multi-line field survived each format.


def test_every_format_gives_the_same_scores(scored, predictions):
  assert jax.device_count() == 8 and scored["jsonl"]["devices"] == 8
  for name in ("csv", "rexrank"):
    assert scored[name]["scores"] == scored["jsonl"]["scores"], name
    assert scored[name]["num_studies"] == NUM_STUDIES
  assert scored["rexrank"]["predictions"]["format"] == "rexrank"


def test_text_scores_equal_caption_metrics_called_directly(scored, predictions):
  _, references, generated = predictions
  expected = captioning.caption_metrics(references, generated, protocol="r2gen", meteor=False)
  got = {key: value for key, value in scored["jsonl"]["scores"].items() if not key.startswith(("CE/", "BERTScore/"))}
  assert got == json.loads(json.dumps(dict(expected, num_studies=NUM_STUDIES)))
  assert 0.05 < got["BLEU-4"] < 0.95  # The perturbations score between nothing and everything.


def test_clinical_scores_equal_clinical_efficacy_on_the_labelers_labels(scored, predictions, labeler_dir):
  _, references, generated = predictions
  labeler = chexbert_labeler.Labeler.load(labeler_dir[0])  # One device.
  values = np.array([np.nan if value is None else value for value in chexbert.CLASS_VALUES])
  generated_labels = values[labeler.classes(generated, batch_size=5)]
  reference_labels = values[labeler.classes(references, batch_size=5)]
  expected = clinical.clinical_efficacy(generated_labels, reference_labels)
  got = {key: value for key, value in scored["jsonl"]["scores"].items() if key.startswith("CE/")}
  assert got == pytest.approx(expected, abs=0, rel=0)
  # A real check: the labels differ between reports and between the two sides.
  assert len({tuple(row) for row in np.nan_to_num(reference_labels, nan=9)}) > 3
  assert 0 < got["CE/uncertain_positive/all14/micro/F1"] < 1


def test_bertscore_equals_the_scorer_called_directly(scored, predictions, bert_dir):
  _, references, generated = predictions
  expected = bertscore.BertScorer.from_directory(bert_dir, num_layers=BERTSCORE_LAYER).score(
    generated, references, batch_size=1
  )  # One device, no padded rows.
  for name in ("P", "R", "F1"):
    assert scored["jsonl"]["scores"][f"BERTScore/{name}"] == pytest.approx(expected[f"{name}_mean"], abs=1e-6)
  assert scored["jsonl"]["provenance"]["bertscore"]["layer"] == BERTSCORE_LAYER


def test_provenance_records_the_labeler_checkpoints_sha256(scored, labeler_dir, files_of_every_format):
  provenance = scored["jsonl"]["provenance"]
  assert provenance["chexbert"]["sha256"] == chexbert_labeler.sha256(labeler_dir[1])
  assert provenance["chexbert"]["labeler"] == str(labeler_dir[0])
  assert provenance["text"] == {"type": "text", "protocol": "r2gen", "meteor": False}
  assert scored["csv"]["predictions"]["sha256"] == score.sha256(str(files_of_every_format["csv"]))


def test_a_perfect_prediction_gets_every_maximum(tmp_path, predictions, labeler_dir, bert_dir, scored):
  ids, references, _ = predictions
  path = _write_jsonl(tmp_path / "perfect.jsonl", ids, references, references, with_ids=False)
  score.score_file(str(path), _config(labeler_dir[0], bert_dir), out=str(tmp_path / "m.json"), progress=False)
  scores = json.loads((tmp_path / "m.json").read_text())["scores"]
  for name in (
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
  ):
    assert scores[name] == pytest.approx(1.0, abs=1e-6), name
  assert scores["CIDEr"] > scored["jsonl"]["scores"]["CIDEr"]  # CIDEr has no fixed maximum.
  for name in ("P", "R", "F1"):  # Every piece matches itself: cosine 1.
    assert scores[f"BERTScore/{name}"] == pytest.approx(1.0, abs=1e-5)
    assert scored["jsonl"]["scores"][f"BERTScore/{name}"] < 0.999
  values = np.array([np.nan if value is None else value for value in chexbert.CLASS_VALUES])
  reference_labels = values[chexbert_labeler.Labeler.load(labeler_dir[0]).classes(references)]
  for policy in clinical.UNCERTAIN_POLICIES:
    for observations in clinical.OBSERVATION_SETS:
      prefix = f"CE/{policy}/{observations}"
      names = clinical.OBSERVATION_SETS[observations]
      assert scores[f"{prefix}/subset_accuracy"] == scores[f"{prefix}/label_accuracy"] == 1.0
      assert scores[f"{prefix}/micro/F1"] == 1.0
      positive = [n for n in names if scores[f"{prefix}/{n}/support"] > 0]
      for name in positive:
        assert scores[f"{prefix}/{name}/F1"] == 1.0
      # zero_division=0: an observation never positive, or a report with no positive, scores 0, so the macro
      # and samples maxima are the shares of the observations, and of the reports, with a positive.
      assert scores[f"{prefix}/macro/F1"] == pytest.approx(len(positive) / len(names))
      binary = clinical.binarize(reference_labels, policy)[:, [clinical.OBSERVATIONS.index(n) for n in names]]
      assert scores[f"{prefix}/samples/F1"] == pytest.approx(binary.any(1).mean())
  assert scores["CE/uncertain_positive/all14/micro/F1"] == 1.0


def test_sharded_labelling_over_8_devices_equals_one_device(labeler_dir, predictions):
  _, references, generated = predictions
  texts = references + generated[:13]  # 53 reports: the last batch is padded.
  one = chexbert_labeler.Labeler.load(labeler_dir[0])
  mesh = sharding.create_mesh()
  eight = chexbert_labeler.Labeler.load(labeler_dir[0], mesh=mesh)
  assert mesh.shape["data"] == 8 and eight.rows_multiple == 8
  leaf = jax.tree.leaves(eight.variables)[0]
  assert len(leaf.sharding.device_set) == 8 and leaf.sharding.is_fully_replicated
  done = []
  logits = eight.logits(texts, batch_size=5, progress=done.append)  # Rounded up to 8 rows, 1 per device.
  assert sum(done) == len(texts) and len(done) == 7
  # The same batches (8 rows, the same padded lengths) on one device. XLA's CPU matmuls of 1 row and of 8 rows
  # round differently (float32, logits of order 1: up to 1.5e-5 seen); the classes are equal.
  np.testing.assert_allclose(logits, one.logits(texts, batch_size=8), rtol=0, atol=5e-5)
  np.testing.assert_array_equal(chexbert.classes_of(logits), one.classes(texts, batch_size=16))


def test_cli_prints_one_summary_line_and_writes_metrics(
  tmp_path, capsys, files_of_every_format, labeler_dir, bert_dir, scored
):
  out = tmp_path / "metrics.json"
  assert (
    cli.main(
      [
        "score",
        str(files_of_every_format["csv"]),
        "--evaluators",
        "text,chexbert,bertscore",
        "--labeler",
        str(labeler_dir[0]),
        "--bertscore-model",
        str(bert_dir),
        "--bertscore-layer",
        str(BERTSCORE_LAYER),
        "--no-meteor",
        "--batch-size",
        "8",
        "--out",
        str(out),
      ]
    )
    == 0
  )
  captured = capsys.readouterr()
  lines = captured.out.strip().splitlines()
  assert len(lines) == 1
  summary = json.loads(lines[0])
  assert summary["format"] == "csv" and summary["num_studies"] == NUM_STUDIES and summary["written"] == str(out)
  expected = scored["jsonl"]["scores"]
  assert summary["scores"]["BLEU-4"] == expected["BLEU-4"]
  assert summary["scores"]["CE/uncertain_positive/all14/micro/F1"] == expected["CE/uncertain_positive/all14/micro/F1"]
  assert summary["scores"]["BERTScore/F1"] == expected["BERTScore/F1"]
  assert "METEOR" not in summary["scores"]
  assert f"{6 * NUM_STUDIES}/{6 * NUM_STUDIES}" in captured.err  # The progress bar: 3 evaluators x 2 sides.
  assert json.loads(out.read_text())["scores"] == expected


@pytest.mark.parametrize(
  "name, content, message",
  [
    ("empty.jsonl", "", r"empty file; no predictions"),
    ("blank.csv", "\n\n", r"empty file; no predictions"),
    (
      "bad_line.jsonl",
      '{"reference": "a", "generated": "b"}\n\n{"reference": "a", "generated": \n',
      r"line 3: not valid JSON \(Expecting value at column 33\)",
    ),
    ("list.jsonl", '["a", "b"]\n', r"line 1: a JSON list, not an object"),
    ("no_generated.jsonl", '{"reference": "a", "text": "b"}\n', r"line 1: no 'generated' key"),
    ("number.jsonl", '{"reference": "a", "generated": 3}\n', r"line 1: 'generated' is int 3, not a string"),
    (
      "duplicate.jsonl",
      '{"id": "s1", "reference": "a", "generated": "b"}\n{"id": "s2", "reference": "a", '
      '"generated": "b"}\n{"id": "s1", "reference": "c", "generated": "d"}\n',
      r"line 3: id 's1' again \(first on line 1\)",
    ),
    ("missing_column.csv", "id,reference,prediction\n1,a,b\n", r"line 1: no 'generated' column"),
    ("header_only.csv", "reference,generated\n", r"no predictions \(a csv file with no records\)"),
    ("short_row.csv", 'reference,generated\n"a\nb",c\nd\n', r"line 4: 1 fields, the header has 2"),
    (
      "duplicate.csv",
      'id,reference,generated\nx,"a\nb",c\ny,d,e\nx,f,g\n',
      r"line 5: id 'x' again \(first on line 2\)",
    ),
    ("bad.json", '{\n  "s1": {"model_prediction": "a",\n', r"line 3: not valid JSON"),
    (
      "no_findings.json",
      '{\n  "s1": {"model_prediction": "a", "section_impression": "b"}\n}\n',
      r"line 2: study 's1' has no 'section_findings'",
    ),
    (
      "twice.json",
      '{\n "s1": {"model_prediction": "a", "section_findings": "b", "section_impression": "c"},\n'
      ' "s1": {"model_prediction": "a", "section_findings": "b", "section_impression": "c"}\n}\n',
      r"line 3: key 's1' again in one object \(first on line 2\)",
    ),
    ("array.json", '[{"model_prediction": "a"}]', r"line 1: a JSON list; ReXrank's file is one object"),
    ("predictions.txt", "reference,generated\na,b\n", r"cannot tell the format from the suffix '\.txt'; pass --format"),
    ("latin1.csv", b"reference,generated\n\xe9,b\n", r"not UTF-8 text \(invalid continuation byte at byte 20\)"),
  ],
)
def test_a_bad_file_is_one_line_naming_the_file_and_the_problem(tmp_path, capsys, name, content, message):
  path = tmp_path / name
  path.write_bytes(content if isinstance(content, bytes) else content.encode())
  assert cli.main(["score", str(path), "--no-meteor"]) == 2
  captured = capsys.readouterr()
  assert captured.out == ""
  lines = captured.err.strip().splitlines()
  assert len(lines) == 1, captured.err
  assert lines[0].startswith(f"cxrjax score: error: {path}: ")
  assert re.search(message, lines[0]), lines[0]


@pytest.mark.parametrize(
  "arguments, message",
  [
    (["--evaluators", "text,chexbert"], r"--evaluators chexbert: needs --labeler DIR"),
    (["--evaluators", "text,bleurt"], r"--evaluators bleurt: unknown evaluator; expected some of"),
    (["--protocol", "mimic"], r"--protocol mimic: expected one of coco, imageclef, r2gen"),
    (["--evaluators", "bertscore"], r"--evaluators bertscore: needs --bertscore-model DIR"),
    (["--evaluators", "chexbert", "--labeler", "/nonexistent/labeler"], r"/nonexistent/labeler/model\.json: not found"),
  ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, arguments, message, predictions):
  ids, references, generated = predictions
  path = _write_jsonl(tmp_path / "p.jsonl", ids[:2], references[:2], generated[:2])
  assert cli.main(["score", str(path), "--no-meteor", *arguments]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and re.search(message, err[0]), err


def test_the_registry_builds_evaluators_from_config_sections(predictions):
  ids, references, generated = predictions
  built = evaluators.from_config(
    {"text": {"protocol": "r2gen", "meteor": False}, "coco_text": {"type": "text", "protocol": "coco", "meteor": False}}
  )
  result = evaluators.run(built, evaluators.Predictions(ids, references, generated))
  coco = captioning.caption_metrics(references, generated, protocol="coco", meteor=False)
  assert result["scores"]["coco_text/BLEU-4"] == coco["BLEU-4"] != result["scores"]["BLEU-4"]
  assert result["provenance"]["coco_text"] == {"type": "text", "protocol": "coco", "meteor": False}
  assert evaluators.headline(built, result["scores"])["coco_text/BLEU-1"] == coco["BLEU-1"]
  for section, message in [
    ({"text": {"meteor": False}}, r"^config\.evaluators\.text\.protocol: required"),
    ({"text": {"protocol": "r2gen", "beam": 3}}, r"^config\.evaluators\.text\.beam: unknown"),
    (
      {"x": {"type": "bleurt"}},
      r"^config\.evaluators\.x\.type='bleurt': unknown evaluator; known: auroc, baselines, bertscore, chexbert, "
      r"findings_oracle, text$",
    ),
    ({"chexbert": {"batch_size": 4}}, r"^config\.evaluators\.chexbert\.labeler: required"),
    ({}, r"^config\.evaluators: no evaluators"),
  ]:
    with pytest.raises(ConfigError, match=message):
      evaluators.from_config(section)
