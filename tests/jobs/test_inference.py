"""The predictor of cxrjax/jobs/inference.py through its commands: `predict` (a study's report and attention
maps), `classify` (ported CheXNet weights) and `predict-agcnn` (tests/tasks/test_classification.py); decode
lengths past a model's KV cache, refused by every command that decodes."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from cxrjax import cli
from cxrjax.jobs import inference, train
from cxrjax.data import phantom
from cxrjax.models.encoders import densenet
from cxrjax.jobs.serve import server as serve_server
from cxrjax.weights import chexnet
from configs import demo

TINY = densenet.DenseNetConfig(block_sizes=(1, 1), growth_rate=4, stem_features=8, num_classes=14)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("run")
  train.train_and_evaluate(demo.get_config("smoke"), workdir)
  return workdir


@pytest.fixture(scope="module")
def study_files(tmp_path_factory):
  folder = tmp_path_factory.mktemp("study")
  record = phantom.generate_study(3, phantom.PhantomConfig(image_size=48))
  paths = []
  for view, image in zip(record["views"], record["images"]):
    Image.fromarray(image).save(folder / f"{view}.png")
    paths.append(str(folder / f"{view}.png"))
  return paths


def test_predict_writes_one_map_per_generated_token_and_a_summary(smoke_run, study_files, tmp_path, capsys):
  status = cli.main(["predict", "--workdir", str(smoke_run), "--attention-maps", str(tmp_path / "maps"), *study_files])
  assert status == 0
  result = json.loads(capsys.readouterr().out)
  assert result["report"], "the smoke model writes some words (deterministic: same seed, same data)"
  # Independently of the tokenizer class: the words of the run's tokenizer.json for the generated ids, which
  # stop before the end token and hold no padding.
  words = json.loads((smoke_run / "tokenizer.json").read_text())["tokens"]
  assert result["token_ids"] and all(i not in (0, 2, 3) and i < len(words) for i in result["token_ids"])
  assert result["report"] == " ".join(words[i] for i in result["token_ids"])
  maps = result["attention_maps"]
  assert len(maps) == len(result["token_ids"]) + 1 and maps[-1].endswith("summary.png")
  first = np.asarray(Image.open(maps[0]))
  assert first.ndim == 3 and first.shape[1] == 2 * first.shape[0] - 32  # Two views side by side.


def test_attention_maps_are_distributions_over_both_views(smoke_run, study_files):
  predictor = inference.Predictor.from_workdir(smoke_run)
  images, _ = predictor.load_views(study_files)
  tokens = np.array([predictor.tokenizer.token_id(w) for w in "the heart is normal".split()], np.int32)
  maps = predictor.attention(images, tokens)
  assert maps.shape[:2] == (4, 2)
  np.testing.assert_allclose(maps.sum(axis=(1, 2, 3)), 1.0, rtol=1e-5)


def test_empty_report_has_no_maps_and_says_why(smoke_run, study_files, tmp_path, monkeypatch):
  predictor = inference.Predictor.from_workdir(smoke_run)
  end = predictor.tokenizer.end_id
  # A program whose every token is the end token: the search's outputs of an empty report.
  empty = {"tokens": np.full((1, 5), end, np.int32), "token_log_probs": np.zeros((1, 5)), "scores": np.zeros(1)}
  monkeypatch.setattr(predictor, "program", lambda options: lambda variables, batch: dict(empty, attention=None))
  result = predictor.predict_report(study_files, attention_dir=str(tmp_path / "maps"))
  assert result["report"] == "" and result["token_ids"] == []
  assert result["attention_maps"] == "none: the generated report is empty"
  assert not (tmp_path / "maps").exists()


def test_single_view_is_repeated_and_bad_files_are_named(smoke_run, study_files, tmp_path, capsys):
  predictor = inference.Predictor.from_workdir(smoke_run)
  images, _ = predictor.load_views(study_files[:1])
  assert images.shape == (1, 2, 32, 32, 3)
  np.testing.assert_array_equal(images[0, 0], images[0, 1])
  assert cli.main(["predict", "--workdir", str(smoke_run), str(tmp_path / "absent.png")]) == 2
  assert "absent.png: image file not found" in capsys.readouterr().err
  assert cli.main(["predict", "--workdir", str(smoke_run), *study_files, study_files[0]]) == 2
  assert "got 3 image files" in capsys.readouterr().err
  assert cli.main(["predict", "--workdir", str(tmp_path / "not_a_run"), *study_files]) == 2
  error = capsys.readouterr().err
  assert "not_a_run" in error and "Traceback" not in error


def test_classify_reports_bad_images_and_classifies_the_rest(tmp_path, shared_data, capsys):
  variables = densenet.DenseNet(TINY).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  chexnet.save_chexnet(tmp_path / "weights", variables, TINY, source={"format": "test"})
  real = sorted((shared_data / "nih_chestxray14" / "images").glob("*.png"))[:3]
  corrupt = tmp_path / "corrupt.png"
  corrupt.write_bytes(b"garbage")
  missing = tmp_path / "missing.png"
  sixteen = tmp_path / "sixteen.png"
  Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 8).save(sixteen)
  paths = [str(real[0]), str(corrupt), str(real[1]), str(missing), str(real[2]), str(sixteen)]

  status = cli.main(
    ["classify", "--weights", str(tmp_path / "weights"), "--batch-size", "2", "--image-size", "64", *paths]
  )
  captured = capsys.readouterr()
  assert status == 1
  lines = [json.loads(line) for line in captured.out.splitlines()]
  assert [line["image"] for line in lines] == [paths[0], paths[2], paths[4], paths[5]]
  for line in lines:
    assert list(line["probabilities"]) == list(densenet.CHEXNET_CLASSES)
    assert all(0.0 < p < 1.0 for p in line["probabilities"].values())
  assert "corrupt.png: cannot decode" in captured.err
  assert "missing.png: image file not found" in captured.err
  assert "2 of 6 images could not be read" in captured.err

  # The same image gives the same probabilities whichever batch it lands in.
  status = cli.main(["classify", "--weights", str(tmp_path / "weights"), "--image-size", "64", paths[4]])
  alone = json.loads(capsys.readouterr().out)
  assert status == 0
  assert alone["probabilities"] == lines[2]["probabilities"]


def test_greedy_predict_gives_each_tokens_log_probability_the_maximum_of_its_step(smoke_run, study_files, capsys):
  """--greedy picks the most likely token at every step: re-read with teacher forcing, each generated
  token's log-probability is the largest of its step's distribution (and all are <= 0)."""
  assert cli.main(["predict", "--workdir", str(smoke_run), "--greedy", *study_files]) == 0
  result = json.loads(capsys.readouterr().out)
  tokens, log_probs = result["token_ids"], result["token_logprobs"]
  assert tokens and len(log_probs) == len(tokens) and all(p <= 0 for p in log_probs)
  predictor = inference.Predictor.from_workdir(smoke_run)
  images, _ = predictor.load_views(study_files)
  inputs = np.array([[predictor.tokenizer.start_id, *tokens]], np.int32)
  logits = predictor.model.apply(predictor.variables, images, inputs)["logits"][0, : len(tokens)]
  best = np.asarray(jax.nn.log_softmax(logits)).max(axis=-1)
  np.testing.assert_allclose(log_probs, best, atol=1e-5)


def test_predict_beam_size_and_max_new_tokens(smoke_run, study_files, capsys):
  """--beam-size / --max-new-tokens: the beam's tokens, each one's log-probability (equal to re-reading them
  with teacher forcing) and the hypothesis score; a bad beam size is one line."""
  assert (
    cli.main(["predict", "--workdir", str(smoke_run), "--beam-size", "3", "--max-new-tokens", "5", *study_files]) == 0
  )
  result = json.loads(capsys.readouterr().out)
  assert 1 <= len(result["token_ids"]) <= 5 and len(result["token_logprobs"]) == len(result["token_ids"])
  assert "score" in result
  predictor = inference.Predictor.from_workdir(smoke_run)
  images, _ = predictor.load_views(study_files)
  reread = predictor.reread(images, np.array(result["token_ids"], np.int32))[0]
  np.testing.assert_allclose(result["token_logprobs"], reread, atol=1e-5)
  assert cli.main(["predict", "--workdir", str(smoke_run), "--beam-size", "0", *study_files]) == 2
  assert "beam" in capsys.readouterr().err


@pytest.fixture(scope="module")
def git_run(tmp_path_factory, shared_data):
  """A tiny random GIT (configs/roco_git.py's smoke sizes, 24 text positions) ported from a transformers
  directory, no training: a KV cache of 24 positions, decoding 20 tokens (transformers' default)."""
  os.environ.setdefault("HF_HUB_OFFLINE", "1")
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from configs import roco_git  # pylint: disable=g-import-not-at-top

  folder = tmp_path_factory.mktemp("git")
  settings = {key: value for key, value in roco_git.SMOKE_HF_CONFIG.items() if key != "model_type"}
  torch.manual_seed(0)
  model = transformers.GitForCausalLM(transformers.GitConfig(**dict(settings, max_position_embeddings=24)))
  model.save_pretrained(folder / "hf")
  (folder / "hf" / "vocab.txt").write_bytes((shared_data / "text" / "bert-base-uncased-vocab.txt").read_bytes())
  assert cli.main(["port-weights", "--format", "hf", str(folder / "hf"), str(folder / "run")]) == 0
  return folder / "run"


def test_a_decode_past_the_kv_cache_is_refused_by_every_command(git_run, study_files, tmp_path, capsys, monkeypatch):
  """A decode length above the model's KV cache is one line naming the flag or config field and the limit,
  from `predict`, `evaluate`, `serve` and `train`, before any data is read or any search runs (past the cache
  the writes were clamped and the tokens silently wrong); the limit itself decodes."""
  limit = "the git model decodes at most 24 tokens (its KV cache's positions, model.cache_length=24)"

  def refused(command: list[str], field: str) -> None:
    assert cli.main(command) == 2
    error = capsys.readouterr().err
    assert f"cxrjax {command[0]}: error: {field}=25: {limit}" in error.splitlines() and "Traceback" not in error

  refused(["predict", "--workdir", str(git_run), "--max-new-tokens", "25", study_files[0]], "--max-new-tokens")
  assert cli.main(["predict", "--workdir", str(git_run), "--greedy", "--max-new-tokens", "24", study_files[0]]) == 0
  assert len(json.loads(capsys.readouterr().out)["token_ids"]) <= 24
  # A run whose own config asks for more (edited by hand, or written before lengths were checked).
  long_run = tmp_path / "long_run"
  shutil.copytree(git_run, long_run)
  config = json.loads((long_run / "config.json").read_text())
  config["decode"]["max_length"] = 25
  (long_run / "config.json").write_text(json.dumps(config))
  refused(["predict", "--workdir", str(long_run), study_files[0]], "config.decode.max_length")
  refused(["evaluate", "--workdir", str(long_run), "--split", "test"], "config.decode.max_length")
  # A server that started would serve until stopped: fail instead.
  monkeypatch.setattr(serve_server, "build_server", lambda *args, **kwargs: pytest.fail("serve started"))
  refused(["serve", "--workdir", str(long_run), "--port", "0"], "config.decode.max_length")
  # train: the smoke GIT's cache holds 24 too.
  refused(
    ["train", "--config=configs/roco_git.py:smoke", "--config.decode.max_length=25", f"--workdir={tmp_path / 'train'}"],
    "config.decode.max_length",
  )
  assert not (tmp_path / "train").exists()
