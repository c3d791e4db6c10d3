"""The Hugging Face directory reader: every broken directory is one clear error naming the file and the
tensor at fault, through `cxrjax port-weights --format hf` and the library functions.

The directory is a small random GitForCausalLM saved by transformers' `save_pretrained` with a small
vocab.txt; each test breaks a copy of it.
"""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import safetensors.numpy
import transformers

from cxrjax import cli
from cxrjax.weights import hf
from cxrjax.weights.store import WeightsError

WORDS = ("the", "heart", "is", "normal", "lungs", "are", "clear", "no", "effusion", ".")
VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") + WORDS
WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  config = transformers.GitConfig(
    vision_config=dict(
      hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2, image_size=16, patch_size=8
    ),
    vocab_size=len(VOCAB),
    hidden_size=8,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=16,
    max_position_embeddings=16,
    bos_token_id=2,
    eos_token_id=3,
    pad_token_id=0,
  )
  directory = tmp_path_factory.mktemp("hf") / "git"
  transformers.GitForCausalLM(config).save_pretrained(directory)
  (directory / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  return directory


@pytest.fixture
def copy(checkpoint, tmp_path):
  directory = tmp_path / "git"
  shutil.copytree(checkpoint, directory)
  return directory


def _port_error(directory, out, capsys, *extra) -> str:
  """`cxrjax port-weights --format hf` -> its one-line error (exit status 2)."""
  capsys.readouterr()
  assert cli.main(["port-weights", "--format", "hf", *extra, str(directory), str(out)]) == 2
  error = capsys.readouterr().err.strip()
  assert len(error.splitlines()) == 1 and error.startswith("cxrjax port-weights: error: "), error
  assert not (out / "config.json").exists()
  return error


def _rewrite(directory, change) -> None:
  tensors = safetensors.numpy.load_file(directory / WEIGHTS)
  change(tensors)
  safetensors.numpy.save_file(tensors, directory / WEIGHTS)


def test_a_good_directory_reads(checkpoint):
  hf_config, tensors = hf.read_directory(checkpoint)
  assert hf_config["model_type"] == "git"
  assert "output.weight" in tensors and all(a.dtype == np.float32 for a in tensors.values())


def test_old_checkpoints_position_ids_buffers_are_ignored(copy, tmp_path, capsys):
  def change(tensors):
    tensors["git.embeddings.position_ids"] = np.arange(16, dtype=np.int64)[None]
    tensors["git.image_encoder.vision_model.embeddings.position_ids"] = np.arange(5, dtype=np.int64)[None]

  _rewrite(copy, change)
  assert cli.main(["port-weights", "--format", "hf", str(copy), str(tmp_path / "out")]) == 0
  assert json.loads(capsys.readouterr().out)["model"] == "git"


def test_no_config_json(copy, tmp_path, capsys):
  (copy / "config.json").unlink()
  assert f"{copy / 'config.json'}: not found" in _port_error(copy, tmp_path / "out", capsys)
  assert "not a directory" in _port_error(copy / WEIGHTS, tmp_path / "out", capsys)


def test_config_json_that_is_not_json(copy, tmp_path, capsys):
  (copy / "config.json").write_text('{"model_type": "git",')
  assert f"{copy / 'config.json'}: not valid JSON" in _port_error(copy, tmp_path / "out", capsys)


def test_unknown_model_type(copy, tmp_path, capsys):
  (copy / "config.json").write_text(
    json.dumps(dict(json.loads((copy / "config.json").read_text()), model_type="llama"))
  )
  error = _port_error(copy, tmp_path / "out", capsys)
  assert f"{copy / 'config.json'}: model_type 'llama' is not supported" in error and "'git'" in error


def test_missing_and_truncated_safetensors(copy, tmp_path, capsys):
  data = (copy / WEIGHTS).read_bytes()
  (copy / WEIGHTS).write_bytes(data[: len(data) // 2])
  error = _port_error(copy, tmp_path / "out", capsys)
  assert f"{copy / WEIGHTS}: cannot be read as safetensors" in error
  (copy / WEIGHTS).unlink()
  (copy / "pytorch_model.bin").write_bytes(b"")
  error = _port_error(copy, tmp_path / "out", capsys)
  assert f"{copy / WEIGHTS}: not found" in error and "pytorch_model.bin" in error


def test_a_tensor_of_the_wrong_shape(copy, tmp_path, capsys):
  name = "git.encoder.layer.0.attention.self.key.weight"
  _rewrite(copy, lambda tensors: tensors.update({name: np.zeros((8, 9), np.float32)}))
  error = _port_error(copy, tmp_path / "out", capsys)
  assert "1 tensors of the wrong shape" in error and f"{name} (8, 9)" in error and str(copy) in error


def test_missing_and_unexpected_tensors(copy, tmp_path, capsys):
  def change(tensors):
    tensors["git.encoder.layer.0.attention.self.kee.weight"] = tensors.pop(
      "git.encoder.layer.0.attention.self.key.weight"
    )

  _rewrite(copy, change)
  error = _port_error(copy, tmp_path / "out", capsys)
  assert "1 missing tensors ['git.encoder.layer.0.attention.self.key.weight']" in error
  assert "1 unexpected tensors ['git.encoder.layer.0.attention.self.kee.weight']" in error


def test_a_tensor_with_nan(copy, tmp_path, capsys):
  def change(tensors):
    tensors["git.embeddings.LayerNorm.bias"][3] = np.nan

  _rewrite(copy, change)
  error = _port_error(copy, tmp_path / "out", capsys)
  assert f"{copy / WEIGHTS}: tensor 'git.embeddings.LayerNorm.bias' has 1 NaN or infinite values" in error


def test_tokenizer_problems(copy, tmp_path, capsys):
  (copy / "vocab.txt").unlink()
  assert "pass --tokenizer VOCAB" in _port_error(copy, tmp_path / "out", capsys)
  longer = tmp_path / "vocab.txt"
  longer.write_text("\n".join(VOCAB + ("lung",)) + "\n")
  error = _port_error(copy, tmp_path / "out", capsys, "--tokenizer", str(longer))
  assert f"{copy / 'config.json'}: vocab_size is {len(VOCAB)}, but the tokenizer has {len(VOCAB) + 1}" in error


def test_unsupported_configurations_are_named(copy):
  hf_config = json.loads((copy / "config.json").read_text())
  with pytest.raises(WeightsError, match="num_image_with_embedding=6"):
    hf.FAMILIES.get("git").model_section(dict(hf_config, num_image_with_embedding=6), "config.json")
  with pytest.raises(WeightsError, match="hidden_size 8 is not divisible by its 3 attention heads"):
    hf.FAMILIES.get("git").model_section(dict(hf_config, num_attention_heads=3), "config.json")


def test_strict_map_names_a_variable_without_source():
  def source_of(path):
    raise KeyError(path)

  abstract = {"params": {"head": {"kernel": np.zeros((2, 2))}}}
  with pytest.raises(WeightsError, match="params/head/kernel has no source tensor"):
    hf.strict_map({}, abstract, source_of, "DIR")


def test_generation_defaults_are_transformers():
  """The defaults a ported decode follows, and the settings it refuses unless at their default, are
  transformers' own (a misspelt setting would never be checked)."""
  defaults = transformers.GenerationConfig._get_default_generation_params()  # pylint: disable=protected-access
  fields = transformers.GenerationConfig().to_dict()
  assert {name: defaults[name] for name in hf.GENERATE_DEFAULTS} == hf.GENERATE_DEFAULTS
  for name, value in hf.REPRODUCED_ONLY_AS.items():
    assert name in fields and defaults.get(name, fields[name]) == value, name


def test_a_generation_config_that_is_not_an_object(copy, tmp_path, capsys):
  (copy / hf.GENERATION_CONFIG).write_text("[1, 2]")
  error = _port_error(copy, tmp_path / "out", capsys)
  assert error.endswith(f"{copy / hf.GENERATION_CONFIG}: expected a JSON object, got list")
  (copy / hf.GENERATION_CONFIG).write_text('{"num_beams": "three"}')
  error = _port_error(copy, tmp_path / "out", capsys)
  assert error.endswith(f"{copy / hf.GENERATION_CONFIG}: num_beams is 'three'; expected an integer")
