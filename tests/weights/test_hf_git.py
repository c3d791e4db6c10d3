"""GIT imported from a Hugging Face directory, against transformers' GitForCausalLM on real chest X-rays.

The reference is a small random `GitForCausalLM` built offline (vision and text widths differ), every
tensor drawn at random (LayerNorm gains and biases included) so that a dropped or mis-mapped tensor
moves the logits, saved with `save_pretrained` beside bert-base-uncased's vocab.txt, ported with
`cxrjax port-weights --format hf`, and compared: the image processor, teacher-forced logits,
`cxrjax predict` greedy and beam captions against `model.generate`.
"""

import json
import os
import shutil

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax
import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from cxrjax import cli
from cxrjax.run import workdir
from cxrjax.data import transforms
from cxrjax.weights import hf, hf_git
from tests.weights import generation_checks

CLS, SEP = 101, 102
IMAGE_SIZE, MAX_NEW_TOKENS = 32, 8
DEFAULT_NEW_TOKENS = 20  # transformers' `generate` where nothing sets a length.
CONFIG = dict(
  vision_config=dict(
    hidden_size=32,
    intermediate_size=40,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=IMAGE_SIZE,
    patch_size=8,
    layer_norm_eps=1e-5,
  ),
  vocab_size=30522,
  hidden_size=24,
  num_hidden_layers=2,
  num_attention_heads=3,
  intermediate_size=48,
  max_position_embeddings=40,
  layer_norm_eps=1e-12,
)


def clip_processor(size: int) -> transformers.CLIPImageProcessor:
  """GIT's image processor (microsoft/git-base's preprocessor_config.json) at `size`."""
  return transformers.CLIPImageProcessor(
    size={"shortest_edge": size}, crop_size={"height": size, "width": size}, do_convert_rgb=True
  )


def pixel_values(paths, size: int) -> np.ndarray:
  """transformers' preprocessing of the files -> [n, 3, size, size]."""
  return clip_processor(size)([Image.open(p) for p in paths], return_tensors="np")["pixel_values"]


def randomized_git(seed: int = 0) -> transformers.GitForCausalLM:
  torch.manual_seed(seed)
  model = transformers.GitForCausalLM(transformers.GitConfig(**CONFIG)).eval()
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, tensor in model.state_dict().items():
      noise = torch.randn(tensor.shape, generator=generator)
      if ("LayerNorm" in name or "norm" in name or "visual_projection.1" in name) and name.endswith("weight"):
        tensor.copy_(1.0 + 0.2 * noise)
      elif name.startswith("output."):
        tensor.copy_(2.0 * noise)  # Large logits: greedy and beam choices are far from ties.
      else:
        tensor.copy_(0.2 * noise)
  return model


@pytest.fixture(scope="module")
def image_paths(shared_data):
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  assert len(paths) == 4 and len({Image.open(p).size for p in paths}) > 1  # Several aspect ratios.
  return paths


@pytest.fixture(scope="module")
def reference(image_paths):
  model = randomized_git()
  pixels = torch.from_numpy(pixel_values(image_paths, IMAGE_SIZE))
  with torch.no_grad():  # The end token wins for some images, not at once: captions of several lengths.
    sequences = model.generate(
      pixel_values=pixels, max_new_tokens=MAX_NEW_TOKENS, output_scores=True, return_dict_in_generate=True
    )
    margins = torch.stack([s.max(-1).values - s[:, SEP] for s in sequences.scores], 1)[:, 1:]  # [n, steps]
    model.output.bias[SEP] += float(margins.min(1).values.median())
  return model, pixels


@pytest.fixture(scope="module")
def ported(tmp_path_factory, reference, shared_data):
  model, _ = reference
  directory = tmp_path_factory.mktemp("git_hf")
  model.save_pretrained(directory)
  (directory / "vocab.txt").write_bytes((shared_data / "text" / "bert-base-uncased-vocab.txt").read_bytes())
  out = directory.parent / "git_workdir"
  assert cli.main(["port-weights", "--format", "hf", str(directory), str(out)]) == 0
  return directory, out


@pytest.fixture(scope="module")
def favouring_git(image_paths):
  """A random GIT shaped as tests/weights/generation_checks.py says: two favoured words, and [SEP] raised so
  that some of the default length's greedy captions end early."""
  model = randomized_git(seed=1)
  pixels = torch.from_numpy(pixel_values(image_paths, IMAGE_SIZE))
  with torch.no_grad():
    model.output.bias[list(generation_checks.FAVOURED)] += generation_checks.FAVOUR
    scores = model.generate(
      pixel_values=pixels, max_new_tokens=DEFAULT_NEW_TOKENS, output_scores=True, return_dict_in_generate=True
    ).scores
    model.output.bias[SEP] += generation_checks.end_bias(generation_checks.margins_to_end(scores, SEP))
  return model, pixels


def _strip(row) -> list[int]:
  """transformers' sequence -> the generated ids: without the start token, up to the end token."""
  row = [int(t) for t in row[1:]]
  return row[: row.index(SEP)] if SEP in row else row


def test_preprocessing_equals_the_clip_image_processor_on_real_images(image_paths):
  for size in (224, IMAGE_SIZE):
    expected = pixel_values(image_paths, size).transpose(0, 2, 3, 1)
    preprocessing = transforms.Preprocessing(image_size=size, **hf_git.PREPROCESSING)
    ours = np.stack([transforms.load_for_model(p, preprocessing) for p in image_paths])
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_teacher_forced_logits_match_transformers(reference, ported):
  model, pixels = reference
  run = workdir.load_run(ported[1])
  tokens = np.concatenate([np.full((4, 1), CLS), np.random.default_rng(0).integers(1000, 30000, (4, 9))], 1)
  with torch.no_grad():
    expected = model(input_ids=torch.from_numpy(tokens), pixel_values=pixels).logits.numpy()
  num_image = (IMAGE_SIZE // 8) ** 2 + 1
  assert expected.shape == (4, num_image + 10, 30522)
  images = pixels.numpy().transpose(0, 2, 3, 1)[:, None]
  logits = jax.jit(lambda v, x, t: run.model.apply(v, x, t)["logits"])(run.state.variables(), images, tokens)
  assert np.abs(expected).max() > 5.0
  np.testing.assert_allclose(np.asarray(logits), expected[:, num_image:], rtol=0, atol=1e-4)


@pytest.mark.parametrize("beams", [1, 3])
def test_predict_equals_transformers_generate(reference, ported, image_paths, capsys, beams):
  model, pixels = reference
  with torch.no_grad():
    generated = model.generate(
      pixel_values=pixels,
      num_beams=beams,
      max_new_tokens=MAX_NEW_TOKENS,
      output_scores=True,
      return_dict_in_generate=True,
    )
  expected = [_strip(row) for row in generated.sequences.tolist()]
  lengths = {len(ids) for ids in expected}
  assert len(lengths) > 1 and min(lengths) < MAX_NEW_TOKENS  # Some end early, some run to the limit.
  search = ["--greedy"] if beams == 1 else ["--beam-size", str(beams)]
  capsys.readouterr()
  assert (
    cli.main(
      ["predict", "--workdir", str(ported[1]), *search, "--max-new-tokens", str(MAX_NEW_TOKENS), *map(str, image_paths)]
    )
    == 0
  )
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [line["token_ids"] for line in lines] == expected
  if beams == 1:  # Each token's log-probability, as transformers' scores give it.
    log_probs = torch.log_softmax(torch.stack(generated.scores, 1), -1).numpy()  # [n, steps, vocab]
    for index, line in enumerate(lines):
      np.testing.assert_allclose(
        line["token_logprobs"], log_probs[index, np.arange(len(expected[index])), expected[index]], atol=1e-4
      )
  else:
    np.testing.assert_allclose([line["score"] for line in lines], generated.sequences_scores.numpy(), atol=1e-4)


def test_the_runs_search_equals_transformers_generate(reference, ported):
  """The search `predict` and `evaluate` run (tasks/captioning.py), greedy and beam 3 under the run's decode
  config (transformers' rules), without the command line."""
  model, pixels = reference
  run = workdir.load_run(ported[1])
  images = pixels.numpy().transpose(0, 2, 3, 1)[:, None]
  for beams in (1, 3):
    with torch.no_grad():
      generated = model.generate(
        pixel_values=pixels,
        num_beams=beams,
        max_new_tokens=MAX_NEW_TOKENS,
        output_scores=True,
        return_dict_in_generate=True,
      )
    predict = jax.jit(run.task.predict_fn(run.model, run.task.options(beam_size=beams, max_length=MAX_NEW_TOKENS)))
    outputs = jax.device_get(predict(run.state.variables(), {"images": images}))
    ours = [_strip([CLS, *row]) for row in outputs["tokens"].tolist()]
    assert ours == [_strip(row) for row in generated.sequences.tolist()]
    if beams > 1:
      np.testing.assert_allclose(outputs["scores"], generated.sequences_scores.numpy(), atol=1e-4)


def test_the_imported_run_reads_the_checkpoints_sizes(ported):
  config = workdir.read_config(ported[1])
  assert config.model.name == "git" and config.model.hidden_size == 24 and config.model.num_heads == 3
  assert config.model.encoder.hidden_size == 32 and config.model.encoder.image_size == IMAGE_SIZE
  assert config.model.encoder.preprocessing.to_dict() == hf_git.PREPROCESSING
  assert config.data.image_size == IMAGE_SIZE and config.data.subset == "chest_xray"
  assert config.data.tokenizer == str(ported[1].absolute() / "tokenizer.json")
  assert config.optimizer.learning_rate == 5e-5 and config.optimizer.weight_decay == 1e-8


def test_a_prompt_is_refused_for_git(ported, tmp_path, capsys):
  assert (
    cli.main(["port-weights", "--format", "hf", "--prompt", "a picture of", str(ported[0]), str(tmp_path / "out")]) == 2
  )
  assert "takes no prompt" in capsys.readouterr().err


def test_every_tensor_is_mapped_once(ported):
  hf_config, tensors = hf.read_directory(ported[0])
  abstract = hf.abstract_variables(hf_git.model_section(hf_config, "config.json"), hf_git.vocab_size(hf_config))
  names = [hf_git.source_of("/".join(path))[0] for path in flax.traverse_util.flatten_dict(abstract)]
  assert sorted(names) == sorted(tensors)  # One to one: no tensor used twice, none left over.


@pytest.mark.parametrize(
  "generation, beams, new_tokens",
  [
    ({}, 1, DEFAULT_NEW_TOKENS),  # Nothing set: transformers' defaults, greedy and 20 new tokens.
    ({"num_beams": 3, "max_length": 16}, 3, 15),  # max_length counts the [CLS] fed first.
  ],
  ids=["defaults", "beam3_max_length"],
)
def test_a_ported_git_decodes_as_generate_on_its_directory(
  favouring_git, image_paths, shared_data, tmp_path, capsys, generation, beams, new_tokens
):
  """`port-weights`, then `predict` with no decoding option: the captions of transformers' `generate` on the
  directory as `from_pretrained` reads it (generation_config.json), some ending early, some at the limit,
  trigrams repeated (nothing blocked)."""
  model, pixels = favouring_git
  directory = tmp_path / "git_hf"
  model.save_pretrained(directory)
  settings = json.loads((directory / hf.GENERATION_CONFIG).read_text())
  (directory / hf.GENERATION_CONFIG).write_text(json.dumps(dict(settings, **generation)))
  (directory / "vocab.txt").write_bytes((shared_data / "text" / "bert-base-uncased-vocab.txt").read_bytes())
  assert cli.main(["port-weights", "--format", "hf", str(directory), str(tmp_path / "out")]) == 0
  config = workdir.read_config(tmp_path / "out")
  assert (config.decode.beam_size, config.decode.max_length, config.decode.block_ngram_repeat) == (beams, new_tokens, 0)
  assert config.model.cache_length >= new_tokens
  with torch.no_grad():
    reloaded = transformers.GitForCausalLM.from_pretrained(directory).eval()
    expected = [_strip(row) for row in reloaded.generate(pixel_values=pixels).tolist()]
  generation_checks.assert_shaped(expected, new_tokens)
  capsys.readouterr()
  assert cli.main(["predict", "--workdir", str(tmp_path / "out"), *map(str, image_paths)]) == 0
  assert [json.loads(line)["token_ids"] for line in capsys.readouterr().out.splitlines()] == expected


def test_generation_settings_from_config_json_and_those_no_search_reproduces(ported, tmp_path, capsys):
  """Without generation_config.json, config.json's generation fields count (as transformers reads them);
  a setting that cxrjax's searches do not reproduce, or a length past the position table, is refused in one
  line naming the file and the setting."""
  directory = tmp_path / "git_hf"
  shutil.copytree(ported[0], directory)
  (directory / hf.GENERATION_CONFIG).unlink()
  config_json = json.loads((directory / hf.CONFIG_FILE).read_text())
  (directory / hf.CONFIG_FILE).write_text(json.dumps(dict(config_json, num_beams=2, max_new_tokens=30)))
  config, _, _ = hf.import_hf(directory)
  assert (config.decode.beam_size, config.decode.max_length, config.model.cache_length) == (2, 30, 40)
  (directory / hf.CONFIG_FILE).write_text(json.dumps(config_json))
  for setting, message in (
    ({"do_sample": True}, "do_sample=True is not supported"),
    ({"no_repeat_ngram_size": 3}, "no_repeat_ngram_size=3 is not supported"),
    (
      {"max_new_tokens": 41},
      "max_new_tokens=41 asks for 41 new tokens; the text position table (max_position_embeddings 40) holds 40",
    ),
    ({"max_length": 1}, "max_length=1 leaves no token to generate"),
    ({"eos_token_id": 1012}, "eos_token_id=1012; the tokenizer's eos token is 102"),
  ):
    (directory / hf.GENERATION_CONFIG).write_text(json.dumps(setting))
    out = tmp_path / f"out_{next(iter(setting))}"
    assert cli.main(["port-weights", "--format", "hf", str(directory), str(out)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"cxrjax port-weights: error: {directory / hf.GENERATION_CONFIG}: {message}"), error
    assert len(error.splitlines()) == 1, error
    assert not out.exists()
