"""CheXbert: the imported labeler against the reference `bert_labeler` (PyTorch, transformers' BertModel) on every
real IU X-ray report, the reference's tokenisation, strict checkpoint checks, and `port-weights` + `label`.

The reference class below is src/models/bert_labeler.py of github.com/stanfordmlgroup/CheXbert as it defines
the model, with one change: `BertModel(config)` with a tiny random config instead of
`BertModel.from_pretrained('bert-base-uncased')` (offline). Its state dict is saved as the release is
({"model_state_dict": ...}, names prefixed "module." by DataParallel). Nothing is committed: every checkpoint
is written here.
"""

import json
import os
import re

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn as nn
import transformers

from cxrjax import cli
from cxrjax.data.iu_xray import reports as iu_reports
from cxrjax.models import chexbert
from cxrjax.weights import chexbert_labeler
from cxrjax.weights.store import WeightsError

TINY = dict(
  vocab_size=30522,
  hidden_size=32,
  num_hidden_layers=2,
  num_attention_heads=2,
  intermediate_size=64,
  max_position_embeddings=512,
)
CLS, SEP, PAD = 101, 102, 0


class bert_labeler(nn.Module):  # noqa: N801  (the reference's name)
  """src/models/bert_labeler.py, with BertModel(config) in place of from_pretrained."""

  def __init__(self, config, p=0.1):
    super().__init__()
    self.bert = transformers.BertModel(config)
    self.dropout = nn.Dropout(p)
    hidden_size = self.bert.pooler.dense.in_features
    self.linear_heads = nn.ModuleList([nn.Linear(hidden_size, 4, bias=True) for _ in range(13)])
    self.linear_heads.append(nn.Linear(hidden_size, 2, bias=True))

  def forward(self, source_padded, attention_mask):
    final_hidden = self.bert(source_padded, attention_mask=attention_mask)[0]
    cls_hidden = final_hidden[:, 0, :].squeeze(dim=1)
    cls_hidden = self.dropout(cls_hidden)
    out = []
    for i in range(14):
      out.append(self.linear_heads[i](cls_hidden))
    return out


def reference_ids(tokenizer, report: str) -> list[int]:
  """src/bert_tokenizer.py: get_impressions_from_csv's cleaning, then `tokenize`. Its
  `encode_plus(list of tokens)` (transformers 3.0.2) converts the tokens to ids and adds [CLS] / [SEP];
  transformers 5 re-tokenises a token list, so the conversion is spelled out."""
  report = re.sub(r"\s+", " ", report.strip().replace("\n", " ")).strip()
  tokens = tokenizer.tokenize(report)
  if not tokens:
    return [tokenizer.cls_token_id, tokenizer.sep_token_id]
  ids = [tokenizer.cls_token_id] + tokenizer.convert_tokens_to_ids(tokens) + [tokenizer.sep_token_id]
  return ids[:511] + [tokenizer.sep_token_id] if len(ids) > 512 else ids


def reference_model(calibration_ids: list[list[int]], seed: int = 0) -> bert_labeler:
  """A tiny random labeler whose labels depend on the report: transformers' N(0, 0.02) weights make every
  [CLS] state alike, so the weights are drawn wider, the heads wider still, and each head's bias centres its
  logits over `calibration_ids` (reports' ids) so that no class wins everywhere. Margins stay far above the
  1e-4 agreement."""
  torch.manual_seed(seed)
  model = bert_labeler(transformers.BertConfig(**TINY)).eval()
  with torch.no_grad():
    for name, parameter in model.named_parameters():
      if "LayerNorm" in name:
        parameter.normal_(1.0 if name.endswith("weight") else 0.0, 0.1)
      elif name.startswith("linear_heads"):
        parameter.normal_(0.0, 2.0 if name.endswith("weight") else 0.0)
      else:
        parameter.normal_(0.0, 0.2)
    logits = reference_logits(model, calibration_ids)
    for j, head in enumerate(model.linear_heads):
      head.bias -= torch.from_numpy(logits[:, j, : head.out_features].mean(0))
  return model


def save_release(model: nn.Module, path, edit=None):
  """As the release: {"model_state_dict": DataParallel's state dict ("module." names)}."""
  state = {f"module.{name}": tensor.clone() for name, tensor in model.state_dict().items()}
  if edit:
    edit(state)
  torch.save({"model_state_dict": state, "epoch": 3}, path)
  return path


@pytest.fixture(scope="module")
def iu_reports_text(shared_data):
  """The findings + impression text of every report in NLMCXR_reports.tgz (3,955), as the dataset reads
  them, and one longer than 512 tokens."""
  texts = []
  for name, data in iu_reports._iter_openi_xml(shared_data / "iu_xray" / "NLMCXR_reports.tgz"):
    study = iu_reports._parse_openi_xml(data, name, shared_data)
    texts.append(" ".join(study.sections[s] for s in ("findings", "impression") if study.sections[s]))
  assert len(texts) == 3955
  long_report = "\n".join(texts[:60])  # Newlines too: the cleaning collapses them.
  return texts + [long_report, "   ", "No acute  cardiopulmonary\n\tabnormality."]


@pytest.fixture(scope="module")
def bert_tokenizer(shared_data):
  return transformers.BertTokenizer(vocab=str(shared_data / "text" / "bert-base-uncased-vocab.txt"))


@pytest.fixture(scope="module")
def ported(tmp_path_factory, shared_data, iu_reports_text, bert_tokenizer):
  # Seed 10: of seeds 0-11, the one whose closest pair of class logits (over every report and head) is
  # farthest apart (1.7e-4), so that float32 rounding cannot flip an argmax.
  model = reference_model([reference_ids(bert_tokenizer, report) for report in iu_reports_text[:300]], seed=10)
  directory = tmp_path_factory.mktemp("chexbert")
  checkpoint = save_release(model, directory / "chexbert.pth")
  description = chexbert_labeler.port(
    checkpoint,
    directory / "labeler",
    tokenizer=shared_data / "text" / "bert-base-uncased-vocab.txt",
    num_heads=TINY["num_attention_heads"],
  )
  return model, checkpoint, directory / "labeler", description


def reference_logits(model, ids: list[list[int]], batch_size: int = 128) -> np.ndarray:
  """label.py's batching: pad_sequence with PAD and a mask of the lengths; -> [n, 14, 4], No Finding's
  missing classes -inf."""
  out = np.zeros((len(ids), 14, 4), np.float32)
  out[:, 13, 2:] = -np.inf
  order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
  with torch.no_grad():
    for start in range(0, len(order), batch_size):
      chosen = order[start : start + batch_size]
      batch = torch.nn.utils.rnn.pad_sequence(
        [torch.tensor(ids[i]) for i in chosen], batch_first=True, padding_value=PAD
      )
      mask = torch.ones(batch.shape, dtype=torch.float)
      for row, i in enumerate(chosen):
        mask[row, len(ids[i]) :] = 0
      heads = model(batch, mask)
      for j, head in enumerate(heads):
        out[chosen, j, : head.shape[1]] = head.numpy()
  return out


def test_tokenisation_equals_the_references_on_every_iu_report(ported, iu_reports_text, bert_tokenizer):
  labeler = chexbert_labeler.Labeler.load(ported[2])
  lengths = []
  for report in iu_reports_text:
    expected = reference_ids(bert_tokenizer, report)
    assert labeler.encode(report) == expected, report[:80]
    lengths.append(len(expected))
  assert max(lengths) == 512 and lengths[-3] == 512  # The long report is cut, keeping [SEP].
  assert labeler.encode("   ") == [CLS, SEP]


def test_labels_match_the_reference_on_every_iu_report(ported, iu_reports_text, bert_tokenizer):
  model, _, directory, _ = ported
  labeler = chexbert_labeler.Labeler.load(directory)
  expected = reference_logits(model, [reference_ids(bert_tokenizer, report) for report in iu_reports_text])
  logits = labeler.logits(iu_reports_text, batch_size=64)
  assert logits.shape == (len(iu_reports_text), 14, 4)
  np.testing.assert_allclose(logits[:, :13], expected[:, :13], rtol=0, atol=1e-4)
  np.testing.assert_allclose(logits[:, 13, :2], expected[:, 13, :2], rtol=0, atol=1e-4)
  assert np.all(np.isneginf(logits[:, 13, 2:]))
  difference = max(
    np.abs(logits[:, :13] - expected[:, :13]).max(), np.abs(logits[:, 13, :2] - expected[:, 13, :2]).max()
  )
  top_two = np.sort(expected[:, :13], axis=-1)[..., -2:]
  margin = min((top_two[..., 1] - top_two[..., 0]).min(), np.abs(np.diff(expected[:, 13, :2])).min())
  print(f"max |logit difference| {difference:.2e}; smallest reference margin {margin:.2e}")
  assert margin > 2 * difference  # No argmax within rounding of a tie: equal labels are a real check.
  classes = labeler.classes(iu_reports_text, batch_size=64)
  np.testing.assert_array_equal(classes, expected.argmax(-1))
  # Labels that depend on the report: every class appears, and each head gives several.
  assert set(np.unique(classes[:, :13])) == {0, 1, 2, 3}
  assert all(len(np.unique(classes[:, j])) > 1 for j in range(14))


def test_batch_size_does_not_change_the_logits(ported, iu_reports_text):
  labeler = chexbert_labeler.Labeler.load(ported[2])
  some = iu_reports_text[:37] + iu_reports_text[-3:]
  np.testing.assert_allclose(labeler.logits(some, batch_size=3), labeler.logits(some, batch_size=16), atol=1e-4)


def test_batches_are_padded_to_their_longest_report_rounded_up_to_16(ported, iu_reports_text):
  labeler = chexbert_labeler.Labeler.load(ported[2])
  shapes, jitted = [], labeler._logits
  labeler._logits = lambda variables, tokens, mask: shapes.append(tokens.shape) or jitted(variables, tokens, mask)
  some = iu_reports_text[:37] + iu_reports_text[-3:]  # The long report (512 ids) and the empty one included.
  labeler.logits(some, batch_size=8)
  lengths = sorted(len(labeler.encode(report)) for report in some)
  expected = [min(-(-max(lengths[start : start + 8]) // 16) * 16, 512) for start in range(0, len(some), 8)]
  assert shapes == [(8, length) for length in expected] and expected[-1] == 512
  assert [chexbert_labeler._bucket(length, 512) for length in (2, 16, 17, 170, 497, 512)] == [16, 16, 32, 176, 512, 512]


def test_port_writes_the_architecture_and_the_checkpoints_sha256(ported):
  _, checkpoint, directory, description = ported
  assert description["fields"] == dict(
    vocab_size=30522,
    hidden_size=32,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_positions=512,
    type_vocab_size=2,
  )
  assert description["source"]["sha256"] == chexbert_labeler.sha256(checkpoint)
  assert len(description["source"]["sha256"]) == 64
  assert json.loads((directory / "model.json").read_text())["conditions"] == list(chexbert.CONDITIONS)


def test_an_old_position_ids_buffer_is_accepted_only_with_the_models_positions(tmp_path, ported):
  model = ported[0]
  good = save_release(
    model,
    tmp_path / "old.pth",
    lambda state: state.update({"module.bert.embeddings.position_ids": torch.arange(512)[None]}),
  )
  variables, _ = chexbert_labeler.import_checkpoint(good, num_heads=2)
  assert "position_ids" not in str(variables.keys())
  bad = save_release(
    model,
    tmp_path / "shifted.pth",
    lambda state: state.update({"module.bert.embeddings.position_ids": torch.arange(512)[None] + 1}),
  )
  with pytest.raises(WeightsError, match=r"shifted\.pth: buffer bert\.embeddings\.position_ids"):
    chexbert_labeler.import_checkpoint(bad, num_heads=2)


@pytest.mark.parametrize(
  "edit, message",
  [
    (lambda s: s.pop("module.linear_heads.13.bias"), r"1 missing tensors \['linear_heads\.13\.bias'\]"),
    (
      lambda s: s.pop("module.bert.encoder.layer.1.output.LayerNorm.weight"),
      r"missing tensors \['bert\.encoder\.layer\.1\.output\.LayerNorm\.weight'\]",
    ),
    (
      lambda s: s.update({"module.classifier.weight": torch.zeros(2, 32)}),
      r"1 unexpected tensors \['classifier\.weight'\]",
    ),
    (
      lambda s: s["module.linear_heads.2.weight"].__setitem__((0, 0), float("nan")),
      r"tensor linear_heads\.2\.weight has 1 non-finite",
    ),
    (
      lambda s: s.update(
        {"module.linear_heads.13.weight": torch.zeros(4, 32), "module.linear_heads.13.bias": torch.zeros(4)}
      ),
      r"2 tensors of the wrong shape \['linear_heads\.13\.bias \(4,\) \(model params/heads_13/bias needs \(2,\)\)",
    ),
  ],
)
def test_a_damaged_checkpoint_is_one_error_naming_the_file(tmp_path, ported, edit, message):
  model = ported[0]
  path = save_release(model, tmp_path / "damaged.pth", edit)
  with pytest.raises(WeightsError, match=rf"^{re.escape(str(path))}: .*{message}"):
    chexbert_labeler.import_checkpoint(path, num_heads=2)


def test_a_pickled_object_is_refused_and_not_run(tmp_path):
  path = tmp_path / "chexbert.pth"
  torch.save({"model_state_dict": {}, "optimizer": torch.optim.SGD([torch.zeros(1, requires_grad=True)], 0.1)}, path)
  with pytest.raises(WeightsError, match=r"chexbert\.pth: holds pickled objects"):
    chexbert_labeler.import_checkpoint(path)
  plain = tmp_path / "state_dict.pth"
  torch.save({"module.bert.embeddings.word_embeddings.weight": torch.zeros(3, 2)}, plain)
  with pytest.raises(WeightsError, match=r"state_dict\.pth: expected CheXbert's \{\"model_state_dict\""):
    chexbert_labeler.import_checkpoint(plain)


def test_cli_ports_then_labels_reports_in_both_conventions(tmp_path, ported, shared_data, capsys, iu_reports_text):
  model, checkpoint, _, _ = ported
  out = tmp_path / "labeler"
  vocab = shared_data / "text" / "bert-base-uncased-vocab.txt"
  assert cli.main(["port-weights", "--format", "chexbert", "--num-heads", "2", str(checkpoint), str(out)]) == 2
  assert f"{checkpoint}: the checkpoint holds no vocabulary" in capsys.readouterr().err
  assert (
    cli.main(
      ["port-weights", "--format", "chexbert", "--num-heads", "2", "--tokenizer", str(vocab), str(checkpoint), str(out)]
    )
    == 0
  )
  ported_line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  assert ported_line["sha256"] == chexbert_labeler.sha256(checkpoint) and ported_line["num_layers"] == 2
  lines = iu_reports_text[:5] + ["", iu_reports_text[-3].replace("\n", " ")]  # The last one is cut at 512.
  reports = tmp_path / "reports.txt"
  reports.write_text("\n".join(lines) + "\n")
  assert cli.main(["label", "--workdir", str(out), "--batch-size", "4", str(reports)]) == 0
  printed = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
  assert [row["line"] for row in printed] == list(range(1, len(lines) + 1))
  tokenizer = transformers.BertTokenizer(vocab=str(vocab))
  expected = reference_logits(model, [reference_ids(tokenizer, line) for line in lines]).argmax(-1)
  for row, classes in zip(printed, expected):
    assert list(row["classes"]) == list(chexbert.CONDITIONS)
    assert row["classes"] == {name: chexbert.CLASSES[c] for name, c in zip(chexbert.CONDITIONS, classes)}
    assert row["values"] == {name: (None, 1, 0, -1)[c] for name, c in zip(chexbert.CONDITIONS, classes)}
    assert row["uncertain_as_positive"] == {name: int(c in (1, 3)) for name, c in zip(chexbert.CONDITIONS, classes)}
  assert cli.main(["label", "--workdir", str(tmp_path / "absent"), str(reports)]) == 2
  assert "model.json: not found" in capsys.readouterr().err
