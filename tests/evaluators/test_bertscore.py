"""cxrjax/evaluators/bertscore.py against the bert-score package (0.3.13): P, R, F1 per pair of random tiny local
BERT / RoBERTa / DistilBERT / DeBERTa models (save_pretrained with a WordPiece vocab.txt or a byte-level BPE
trained here; the DeBERTa one with disentangled attention over a relative table shorter than its long texts),
with and without idf and baseline rescaling, on real report texts (IU X-ray findings, ROCOv2 captions), an
empty candidate, an empty reference and texts cut at the model's max length included.

bert-score 0.3.13 meets transformers 5 in two places, both patched for the reference here (not in cxrjax):
transformers 5's tokenizers lost `build_inputs_with_special_tokens`, which sent_encode calls for an empty text
(restored as transformers 4 defined it for one text: [CLS] ids [SEP]), and they ignore the
`add_prefix_space=True` sent_encode passes to encode, so the RoBERTa directory's tokenizer_config.json sets it.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import json
import pathlib
import random
import shutil

import bert_score
import bert_score.utils
import jax
import numpy as np
import pytest
import tokenizers
import torch
import transformers

from cxrjax import cli
from cxrjax.evaluators import bertscore
from cxrjax.evaluators.bertscore import BertScoreError, BertScorer
from cxrjax.text import hf_tokenizers

HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_LENGTH = 32, 3, 4, 48, 32
SCORING_LAYER = {"bert": 2, "roberta": 3, "distilbert": 1, "deberta": 2}  # A cut stack, the whole stack, one layer.
FAMILIES = list(SCORING_LAYER)
PACKAGE_BASELINES = pathlib.Path(bert_score.__file__).parent / "rescale_baseline"


@pytest.fixture(scope="module")
def texts(shared_data) -> dict[str, list[str]]:
  """Raw IU X-ray findings (case and punctuation kept: BERTScore takes texts as they are) and ROCOv2 captions."""
  with open(shared_data / "iu_xray" / "kaggle_csv" / "indiana_reports.csv", newline="") as file:
    findings = [row["findings"] for row in csv.DictReader(file) if row["findings"]][:40]
  with open(shared_data / "rocov2" / "test_captions.head30.csv", newline="") as file:
    captions = [row["Caption"] for row in csv.DictReader(file)]
  return dict(findings=findings, captions=captions)


@pytest.fixture(scope="module")
def pairs(texts) -> tuple[list[str], list[str]]:
  """Candidates and references: exact, cut, shuffled, unrelated, empty, whitespace, over-long (cut at
  MAX_LENGTH), unicode captions, and an empty reference."""
  rng = random.Random(22)
  findings, captions = texts["findings"], texts["captions"]
  candidates, references = [], []
  for index, reference in enumerate(findings[:10]):
    words = reference.split()
    variant = [
      reference,
      " ".join(words[: len(words) // 2]),
      " ".join(rng.sample(words, len(words))),
      findings[index + 20],
      reference.lower(),
    ][index % 5]
    candidates.append(variant)
    references.append(reference)
  candidates += ["", "   ", " ".join(findings[30:33]), captions[10], captions[3], captions[0] + "  ", "Clear lungs."]
  references += [findings[11], captions[2], findings[12], captions[11], captions[4], captions[0], ""]
  return candidates, references


def _save_bert_family(directory: pathlib.Path, family: str, vocab_file: pathlib.Path) -> None:
  shutil.copy(vocab_file, directory / "vocab.txt")
  vocab_size = sum(1 for _ in open(vocab_file))
  torch.manual_seed(1)
  if family == "bert":
    model = transformers.BertModel(
      transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=INTERMEDIATE,
        max_position_embeddings=40,
      )
    )
  else:
    model = transformers.DistilBertModel(
      transformers.DistilBertConfig(
        vocab_size=vocab_size,
        dim=HIDDEN,
        n_layers=LAYERS,
        n_heads=HEADS,
        hidden_dim=INTERMEDIATE,
        max_position_embeddings=40,
      )
    )
  model.save_pretrained(directory)
  (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": MAX_LENGTH}))


def _save_roberta(directory: pathlib.Path, corpus: list[str]) -> None:
  bpe = tokenizers.ByteLevelBPETokenizer(add_prefix_space=True)
  bpe.train_from_iterator(
    corpus, vocab_size=400, min_frequency=2, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
  )  # RoBERTa's ids 0-4.
  bpe.save_model(str(directory))  # vocab.json, merges.txt
  torch.manual_seed(2)
  transformers.RobertaModel(
    transformers.RobertaConfig(
      vocab_size=bpe.get_vocab_size(),
      hidden_size=HIDDEN,
      num_hidden_layers=LAYERS,
      num_attention_heads=HEADS,
      intermediate_size=INTERMEDIATE,
      max_position_embeddings=42,
      type_vocab_size=1,
      pad_token_id=1,
      bos_token_id=0,
      eos_token_id=2,
      layer_norm_eps=1e-5,
    ),
    add_pooling_layer=False,
  ).save_pretrained(directory)
  (directory / "tokenizer_config.json").write_text(
    json.dumps({"model_max_length": MAX_LENGTH, "add_prefix_space": True})
  )


def _save_deberta(directory: pathlib.Path, corpus: list[str], num_layers: int = LAYERS) -> None:
  """DeBERTa v1 as microsoft/deberta-*: relative positions only, c2p and p2c, GPT-2 style BPE with [CLS] ...
  [SEP]; a relative table of 8 distances, so that the long texts' far distances are clipped."""
  bpe = tokenizers.ByteLevelBPETokenizer()
  bpe.train_from_iterator(
    corpus, vocab_size=400, min_frequency=2, special_tokens=["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
  )
  bpe.save_model(str(directory))
  torch.manual_seed(3)
  model = transformers.DebertaModel(
    transformers.DebertaConfig(
      vocab_size=bpe.get_vocab_size(),
      hidden_size=HIDDEN,
      num_hidden_layers=num_layers,
      num_attention_heads=HEADS,
      intermediate_size=INTERMEDIATE,
      max_position_embeddings=64,
      max_relative_positions=8,
      relative_attention=True,
      position_biased_input=False,
      pos_att_type=["c2p", "p2c"],
      type_vocab_size=0,
      pad_token_id=0,
    )
  )
  with torch.no_grad():  # Position projections that matter: transformers starts the biases at 0.
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
  model.save_pretrained(directory)
  (directory / "tokenizer_config.json").write_text(json.dumps({"model_max_length": MAX_LENGTH}))


@pytest.fixture(scope="module")
def models(tmp_path_factory, shared_data, texts) -> dict[str, pathlib.Path]:
  """family -> a Hugging Face directory of a random tiny encoder and its tokenizer."""
  root = tmp_path_factory.mktemp("bertscore_models")
  directories = {}
  for family in FAMILIES:
    directories[family] = root / family
    directories[family].mkdir()
    if family == "roberta":
      _save_roberta(directories[family], texts["findings"] + texts["captions"])
    elif family == "deberta":
      _save_deberta(directories[family], texts["findings"] + texts["captions"])
    else:
      _save_bert_family(directories[family], family, shared_data / "text" / "bert-base-uncased-vocab.txt")
  return directories


@pytest.fixture()
def package(monkeypatch):
  """bert_score.score on transformers 5 (module doc)."""
  backend = transformers.tokenization_utils_tokenizers.TokenizersBackend
  monkeypatch.setattr(
    backend,
    "build_inputs_with_special_tokens",
    lambda self, ids: [self.cls_token_id, *ids, self.sep_token_id],
    raising=False,
  )
  return bert_score.score


@pytest.fixture(scope="module")
def baseline_file(tmp_path_factory) -> pathlib.Path:
  """A baseline file for the tiny models, in the package's format: a different b per layer and column."""
  path = tmp_path_factory.mktemp("baseline") / "tiny.tsv"
  rows = [
    f"{layer},{0.5 + 0.03 * layer:.8f},{0.45 + 0.05 * layer:.8f},{0.4 + 0.07 * layer:.8f}"
    for layer in range(LAYERS + 1)
  ]
  path.write_text("LAYER,P,R,F\n" + "\n".join(rows) + "\n")
  return path


@pytest.mark.parametrize("family", FAMILIES)
def test_token_ids_match_the_packages_sent_encode(family, models, pairs, package):
  candidates, references = pairs
  scorer = BertScorer.from_directory(models[family], num_layers=1)
  reference_tokenizer = bert_score.utils.get_tokenizer(str(models[family]))
  texts = candidates + references
  expected = [bert_score.utils.sent_encode(reference_tokenizer, text) for text in texts]
  assert scorer.token_ids(texts) == expected
  assert max(len(ids) for ids in expected) == MAX_LENGTH  # The long texts are cut.
  assert scorer.max_length == MAX_LENGTH


@pytest.mark.parametrize("idf", [False, True])
@pytest.mark.parametrize("family", FAMILIES)
def test_scores_match_bert_score(family, idf, models, pairs, baseline_file, package):
  candidates, references = pairs
  layer = SCORING_LAYER[family]
  for rescaled in (False, True):
    expected = package(
      candidates,
      references,
      model_type=str(models[family]),
      num_layers=layer,
      idf=idf,
      lang="en",
      rescale_with_baseline=rescaled,
      baseline_path=str(baseline_file) if rescaled else None,
      nthreads=0,
    )
    expected = np.stack([score.numpy() for score in expected], axis=-1)  # [pairs, 3]
    scorer = BertScorer.from_directory(
      models[family], num_layers=layer, idf=idf, baseline_file=baseline_file if rescaled else None
    )
    scores = scorer.score(candidates, references, batch_size=4)
    found = np.stack([scores["P"], scores["R"], scores["F1"]], axis=-1)
    assert np.isfinite(expected).all()
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5, err_msg=f"{family} idf={idf} rescaled={rescaled}")
    np.testing.assert_allclose(scores["F1_mean"], expected[:, 2].mean(), rtol=0, atol=1e-5)
    if not rescaled:
      assert (found[10] == 0).all() and (found[11] == 0).all()  # Empty and whitespace-only candidates.
      assert (found[-1] == 0).all()  # The empty reference.
      assert not np.allclose(found[:10], found[:10].mean(axis=0))  # The scores tell the pairs apart.


def test_deberta_tokens_are_debertatokenizers(models, texts, tmp_path):
  """DebertaTokenizer's ids on every ROCOv2 caption and IU X-ray finding: no space before the first word
  (DebertaTokenizer's add_prefix_space false), or one where tokenizer_config.json asks for it."""
  all_texts = texts["captions"] + texts["findings"]
  for prefix_space in (False, True):
    directory = tmp_path / f"prefix_{prefix_space}"
    shutil.copytree(models["deberta"], directory)
    settings = {"model_max_length": 512, "add_prefix_space": prefix_space}
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    reference = transformers.DebertaTokenizer.from_pretrained(directory)
    tokenizer, limit = hf_tokenizers.from_directory(directory, "deberta")
    assert limit == 512 and (tokenizer.start_id, tokenizer.end_id, tokenizer.pad_id) == (1, 2, 0)
    expected = [reference.encode(text.strip(), max_length=512, truncation=True) for text in all_texts]
    assert [tokenizer.encode(text.strip(), 512) for text in all_texts] == expected
    first = reference.convert_ids_to_tokens(expected[0][1])
    assert first.startswith("Ġ") == prefix_space, first


def test_several_references_take_the_maximum_of_each_score(models, texts, baseline_file, package):
  findings = texts["findings"]
  # The second candidate's references: one that holds it and more (the best P), a part of it (the best R).
  words, more = findings[1].split()[:5], findings[5].split()[:4]  # Within MAX_LENGTH pieces.
  candidates = [findings[0], " ".join(words), "", findings[3]]
  references = [
    [findings[0]],
    [" ".join(words + more), " ".join(words[:2]), ""],
    [findings[2], findings[6]],
    [findings[7], findings[8]],
  ]
  expected = package(
    candidates,
    references,
    model_type=str(models["roberta"]),
    num_layers=2,
    idf=True,
    lang="en",
    rescale_with_baseline=True,
    baseline_path=str(baseline_file),
    nthreads=0,
  )
  scorer = BertScorer.from_directory(models["roberta"], num_layers=2, idf=True, baseline_file=baseline_file)
  scores = scorer.score(candidates, references, batch_size=3)
  for name, score in zip(("P", "R", "F1"), expected):
    np.testing.assert_allclose(scores[name], score.numpy(), rtol=0, atol=1e-5, err_msg=name)
  # Each column's own maximum over the group (the flattened pairs give the same idf weights), not the scores of
  # one reference.
  flat = scorer.score(
    [cand for cand, group in zip(candidates, references) for _ in group],
    [ref for group in references for ref in group],
    batch_size=3,
  )
  bounds = np.cumsum([0] + [len(group) for group in references])
  for name in ("P", "R", "F1"):
    np.testing.assert_array_equal(scores[name], [flat[name][b:e].max() for b, e in zip(bounds[:-1], bounds[1:])])
  assert np.argmax(flat["P"][1:4]) == 0 and np.argmax(flat["R"][1:4]) == 1


def test_texts_of_pieces_every_reference_holds_have_the_packages_nan_scores(models, package):
  candidates, references = (
    ["lungs", "Clear lungs.", "No effusion."],
    ["Clear lungs.", "The lungs are clear.", "lungs clear."],
  )
  expected = package(
    candidates, references, model_type=str(models["distilbert"]), num_layers=1, idf=True, lang="en", nthreads=0
  )
  scores = BertScorer.from_directory(models["distilbert"], num_layers=1, idf=True).score(candidates, references)
  assert np.isnan(scores["P"][:2]).all() and np.isfinite(scores["P"][2])  # idf 0 for "lungs", "clear" and ".".
  assert np.isnan(scores["R"][[0, 2]]).all()  # So are the pieces of the first and the last reference.
  assert (scores["F1"] == 0).all()
  for name, score in zip(("P", "R", "F1"), expected):
    np.testing.assert_allclose(scores[name], score.numpy(), rtol=0, atol=1e-5, err_msg=name)


def test_idf_weights_follow_the_package(models, pairs, package):
  _, references = pairs
  scorer = BertScorer.from_directory(models["bert"], num_layers=1, idf=True)
  table, unseen = bertscore.idf_table(scorer.token_ids(references))
  tokenizer = bert_score.utils.get_tokenizer(str(models["bert"]))
  expected = bert_score.utils.get_idf_dict(references, tokenizer, nthreads=0)
  assert table == {token: expected[token] for token in table} and len(table) == len(expected)
  assert unseen == expected[999_999] == pytest.approx(np.log(len(references) + 1))
  assert table[tokenizer.cls_token_id] == table[tokenizer.sep_token_id] == 0.0


def test_a_mesh_over_the_data_axis_gives_the_same_scores(models, pairs):
  candidates, references = pairs
  devices = jax.devices()
  assert len(devices) == 8, "expects XLA_FLAGS=--xla_force_host_platform_device_count=8 (tests/conftest.py)"
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  scorer = BertScorer.from_directory(models["distilbert"], num_layers=2, idf=True)
  alone = scorer.score(candidates, references, batch_size=8)
  sharded = scorer.score(candidates, references, batch_size=8, mesh=mesh)
  for name in ("P", "R", "F1"):
    np.testing.assert_allclose(sharded[name], alone[name], rtol=0, atol=1e-6)
  with pytest.raises(BertScoreError, match="multiple of the mesh's data axis 8"):
    scorer.score(candidates, references, batch_size=6, mesh=mesh)


def test_each_distinct_text_is_encoded_once(models, texts, monkeypatch):
  findings = texts["findings"][:9]
  candidates, references = findings[1:] + findings[:1], findings  # Every text a candidate and a reference.
  scorer = BertScorer.from_directory(models["bert"], num_layers=2)
  lengths, embed = [], bertscore.embed

  def recording(encoder, variables, tokens, mask):
    lengths.append(tokens.shape[1])
    return embed(encoder, variables, tokens, mask)

  monkeypatch.setattr(bertscore, "embed", recording)
  scores = scorer.score(candidates, references, batch_size=4)
  assert len(lengths) == -(-len(set(findings)) // 4)  # Not one encoding per pair and side.
  assert all(length % bertscore.BUCKET == 0 or length == MAX_LENGTH for length in lengths)
  for index in (0, 4, 8):  # A pair scored alone: its two texts encoded in batches of their own.
    alone = scorer.score([candidates[index]], [references[index]], batch_size=1)
    for name in ("P", "R", "F1"):
      np.testing.assert_allclose(scores[name][index], alone[name][0], rtol=0, atol=1e-6)


def test_the_shipped_baseline_files_are_read_as_the_package_reads_them():
  import pandas  # bert-score's own dependency: the reader it uses.

  for model_type in ("roberta-large", "distilroberta-base", "distilbert-base-uncased", "microsoft/deberta-xlarge-mnli"):
    path = PACKAGE_BASELINES / bertscore.baseline_name(model_type)
    layer = bertscore.MODEL_LAYERS[model_type]
    expected = pandas.read_csv(path).iloc[layer].to_numpy()[1:].astype(np.float32)
    np.testing.assert_array_equal(bertscore.read_baseline(path, layer), expected)
  np.testing.assert_array_equal(
    bertscore.read_baseline(PACKAGE_BASELINES / "en" / "roberta-large.tsv", 17),
    np.asarray([0.83150584, 0.8314941, 0.83122575], np.float32),
  )


def test_default_layers_are_the_packages():
  assert {name: bert_score.utils.model2layers[name] for name in bertscore.MODEL_LAYERS} == bertscore.MODEL_LAYERS
  assert bertscore.MODEL_LAYERS["roberta-large"] == 17
  assert bertscore.MODEL_LAYERS["microsoft/deberta-xlarge-mnli"] == 40  # ImageCLEFmedical Caption's encoder.
  for path in ("/models/deberta-xlarge-mnli", "/hub/models--microsoft--deberta-xlarge-mnli/snapshots/0a"):
    assert bertscore.model_type_of(path) == "microsoft/deberta-xlarge-mnli"
  assert bertscore.model_type_of("/cache/models--FacebookAI--roberta-large/snapshots/abc123") == "roberta-large"
  assert bertscore.model_type_of("/models/distilbert-base-uncased") == "distilbert-base-uncased"
  assert (
    bertscore.model_type_of("/hub/models--allenai--scibert_scivocab_uncased/snapshots/1f")
    == "allenai/scibert_scivocab_uncased"
  )


def test_without_a_model_max_length_the_position_table_sets_it(models, tmp_path, texts):
  directory = tmp_path / "roberta"
  shutil.copytree(models["roberta"], directory)
  (directory / "tokenizer_config.json").unlink()
  scorer = BertScorer.from_directory(directory, num_layers=1)
  assert scorer.max_length == 40  # max_position_embeddings 42 - pad id 1 - 1, as roberta-large's 514 -> 512.
  assert len(scorer.token_ids([" ".join(texts["findings"][:5])])[0]) == 40


def _one_line(error: pytest.ExceptionInfo) -> str:
  message = str(error.value)
  assert "\n" not in message
  return message


def test_bad_input_is_one_line_naming_it(models, tmp_path, baseline_file):
  with pytest.raises(BertScoreError) as error:
    BertScorer.from_directory(models["bert"], num_layers=1, baseline_file=tmp_path / "missing.tsv")
  assert _one_line(error) == f"{tmp_path / 'missing.tsv'}: baseline file not found"
  with pytest.raises(BertScoreError) as error:
    BertScorer.from_directory(models["bert"], num_layers=4)
  assert _one_line(error) == f"num_layers 4: {models['bert']} has layers 0 to 3 (0: the embeddings)"
  with pytest.raises(BertScoreError) as error:
    BertScorer.from_directory(models["bert"])  # The folder name "bert" is no model of model2layers.
  assert "model type 'bert' has no default layer" in _one_line(error)
  with pytest.raises(BertScoreError) as error:
    bertscore.read_baseline(PACKAGE_BASELINES / "en" / "distilbert-base-uncased.tsv", 7)
  assert _one_line(error).endswith("distilbert-base-uncased.tsv: no row for layer 7 (rows for layers 0 to 6)")
  bad = tmp_path / "bad.tsv"
  bad.write_text("layer,precision\n0,0.5\n")
  with pytest.raises(BertScoreError, match=r"bad.tsv: the header is \['layer', 'precision'\]; expected LAYER,P,R,F"):
    bertscore.read_baseline(bad, 0)
  scorer = BertScorer.from_directory(models["bert"], num_layers=1)
  with pytest.raises(BertScoreError, match="same length"):
    scorer.score(["a"], ["b", "c"])
  with pytest.raises(BertScoreError, match="non-empty list"):
    scorer.score(["a"], [[]])


def test_a_tokenizer_json_directory_encodes_as_the_vocabulary_files(models, tmp_path, pairs):
  candidates, references = pairs
  for family in ("bert", "roberta", "deberta"):
    directory = tmp_path / family
    directory.mkdir()
    transformers.AutoTokenizer.from_pretrained(models[family]).backend_tokenizer.save(str(directory / "tokenizer.json"))
    from_files, _ = hf_tokenizers.from_directory(models[family], family)
    from_json, limit = hf_tokenizers.from_directory(directory, family)
    assert limit is None
    texts = candidates + references
    assert [from_json.encode(t.strip(), MAX_LENGTH) for t in texts] == [
      from_files.encode(t.strip(), MAX_LENGTH) for t in texts
    ]
    assert from_json.decode(from_json.encode("Clear lungs.")) == from_files.decode(from_files.encode("Clear lungs."))


def test_the_cli_scores_a_deberta_directory_at_its_default_layer(tmp_path, texts, pairs, capsys, package):
  """`cxrjax score --evaluators bertscore --bertscore-model deberta-base/ --bertscore-idf`: the folder's name is
  bert-score's microsoft/deberta-base, whose layer 9 the table gives (a 9-layer tiny model here)."""
  directory = tmp_path / "deberta-base"
  directory.mkdir()
  _save_deberta(directory, texts["findings"] + texts["captions"], num_layers=9)
  candidates, references = pairs
  predictions = tmp_path / "predictions.jsonl"
  predictions.write_text(
    "".join(json.dumps({"reference": r, "generated": c}) + "\n" for c, r in zip(candidates, references))
  )
  out = tmp_path / "metrics.json"
  arguments = ["score", str(predictions), "--evaluators", "bertscore", "--bertscore-model", str(directory)]
  assert cli.main([*arguments, "--bertscore-idf", "--batch-size", "8", "--out", str(out)]) == 0
  capsys.readouterr()
  written = json.loads(out.read_text())
  assert written["provenance"]["bertscore"]["model_type"] == "microsoft/deberta-base"
  assert written["provenance"]["bertscore"]["layer"] == 9
  expected = package(candidates, references, model_type=str(directory), num_layers=9, idf=True, lang="en", nthreads=0)
  for name, score in zip(("P", "R", "F1"), expected):
    np.testing.assert_allclose(written["scores"][f"BERTScore/{name}"], score.numpy().mean(), rtol=0, atol=1e-5)
