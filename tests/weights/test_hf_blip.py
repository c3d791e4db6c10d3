"""BLIP through the command line: a random transformers BlipForConditionalGeneration written by
`save_pretrained` -> `cxrjax port-weights --format hf` -> teacher-forced logits and `cxrjax predict` (greedy
and beam 3, with and without the prompt, [SEP] raised so that some captions end early) against
transformers on real chest X-rays; the ported run's own decoding, as `generate`; BLIP's image processor;
the tied output layer; config.json defaults."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from configs import roco_blip
from cxrjax import cli
from cxrjax.jobs import inference
from cxrjax.data import transforms
from cxrjax.weights import hf, hf_blip
from cxrjax.weights.store import WeightsError

from tests.models.test_blip import DEC, PROMPT_IDS, SEP, chest_xrays, ending_some_captions, tiny_hf_blip
from tests.weights import generation_checks

MAX_NEW = 8
DEFAULT_NEW_TOKENS = 20  # transformers' `generate` where nothing sets a length.


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  model = tiny_hf_blip(seed=6)  # Its captions, greedy and beam, end at mixed steps once [SEP] is raised.
  directory = tmp_path_factory.mktemp("blip_hf")
  model.save_pretrained(directory)
  return model, directory


@pytest.fixture(scope="module")
def vocab(shared_data):
  return shared_data / "text" / "bert-base-uncased-vocab.txt"


def _port(hf_directory, out, vocab, *extra) -> dict:
  assert (
    cli.main(["port-weights", "--format", "hf", str(hf_directory), str(out), "--tokenizer", str(vocab), *extra]) == 0
  )
  return inference.Predictor.from_workdir(str(out))


def _predict(capsys, out, paths, *options) -> list[dict]:
  capsys.readouterr()
  assert cli.main(["predict", "--workdir", str(out), "--max-new-tokens", str(MAX_NEW), *options, *map(str, paths)]) == 0
  return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def _hf_ids(rows, skip: int) -> list[list[int]]:
  out = []
  for row in rows.tolist():
    row = row[skip:]
    out.append(row[: row.index(SEP)] if SEP in row else row)
  return out


@pytest.mark.parametrize("prompt", ["", "a picture of"], ids=["no_prompt", "prompt"])
def test_port_weights_then_logits_and_predict_match_transformers(hf_dir, vocab, shared_data, tmp_path, capsys, prompt):
  model, _ = hf_dir
  images = chest_xrays(shared_data)
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  hf_prompt = dict(input_ids=torch.tensor([list(PROMPT_IDS) + [SEP]] * 4)) if prompt else {}
  model = ending_some_captions(model, pixels, MAX_NEW, **hf_prompt)
  directory = tmp_path / "hf"
  model.save_pretrained(directory)
  stored = safetensors.numpy.load_file(directory / "model.safetensors")
  assert not set(hf_blip.TIED) & set(stored)  # transformers 5 leaves the tied output layer out.
  predictor = _port(directory, tmp_path / "out", vocab, *(["--prompt", prompt] if prompt else []))
  assert tuple(predictor.config.model.prompt_ids) == (PROMPT_IDS if prompt else ())
  assert roco_blip.PROMPT_IDS == PROMPT_IDS  # The fine-tuning config's prompt is this tokenizer's.
  assert predictor.tokenizer.start_id == DEC and predictor.tokenizer.end_id == SEP

  captions = np.random.default_rng(1).integers(1000, 30000, size=(4, 5)).astype(np.int32)
  tokens = np.concatenate([np.full((4, 1), DEC, np.int32), captions], axis=1)
  hf_inputs = np.concatenate([np.tile(PROMPT_IDS, (4, 1)), captions], axis=1) if prompt else tokens
  with torch.no_grad():
    expected = model(pixel_values=pixels, input_ids=torch.from_numpy(hf_inputs).long()).logits.numpy()
  expected = expected[:, len(PROMPT_IDS) - 1 :] if prompt else expected
  logits = jax.jit(lambda v, x, t: predictor.model.apply(v, x, t)["logits"])(
    predictor.variables, images[:, None], tokens
  )
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)

  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  skip = len(PROMPT_IDS) if prompt else 1
  for options, beams in ((["--greedy"], 1), (["--beam-size", "3"], 3)):
    lines = _predict(capsys, tmp_path / "out", paths, *options)
    with torch.no_grad():
      reference = model.generate(pixel_values=pixels, num_beams=beams, max_new_tokens=MAX_NEW, **hf_prompt)
    expected = _hf_ids(reference.numpy(), skip)
    lengths = [len(ids) for ids in expected]
    assert min(lengths) < MAX_NEW and max(lengths) == MAX_NEW, (options, lengths)  # Some end, some run on.
    assert [line["token_ids"] for line in lines] == expected, options
    assert all(len(line["token_logprobs"]) == len(line["token_ids"]) for line in lines)


def test_a_ported_blip_decodes_as_generate_on_its_directory(vocab, shared_data, tmp_path, capsys):
  """`port-weights --prompt`, then `predict` with no decoding option: the captions of `generate` on the directory
  as `from_pretrained` reads it, which for BLIP is transformers' defaults (greedy, 20 new tokens) whatever its
  generation_config.json says; `--beam-size 3` as `generate(num_beams=3)`. The model favours two words and
  ends some captions early (tests/weights/generation_checks.py): trigrams repeat, nothing blocked."""
  images = chest_xrays(shared_data)
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  hf_prompt = dict(input_ids=torch.tensor([list(PROMPT_IDS) + [SEP]] * 4))
  model = tiny_hf_blip(seed=1)
  with torch.no_grad():
    model.text_decoder.cls.predictions.bias[list(generation_checks.FAVOURED)] += generation_checks.FAVOUR
  model = ending_some_captions(model, pixels, DEFAULT_NEW_TOKENS, **hf_prompt)
  directory = tmp_path / "hf"
  model.save_pretrained(directory)
  settings = json.loads((directory / hf.GENERATION_CONFIG).read_text())
  (directory / hf.GENERATION_CONFIG).write_text(json.dumps(dict(settings, num_beams=3, max_new_tokens=5)))
  predictor = _port(directory, tmp_path / "out", vocab, "--prompt", "a picture of")
  decode = predictor.config.decode
  assert (decode.beam_size, decode.max_length, decode.block_ngram_repeat) == (1, DEFAULT_NEW_TOKENS, 0)
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  reloaded = transformers.BlipForConditionalGeneration.from_pretrained(directory).eval()
  for options, beams in (([], None), (["--beam-size", "3"], 3)):
    with torch.no_grad():
      reference = reloaded.generate(pixel_values=pixels, **hf_prompt, **({"num_beams": beams} if beams else {}))
    expected = _hf_ids(reference.numpy(), len(PROMPT_IDS))
    generation_checks.assert_shaped(expected, DEFAULT_NEW_TOKENS)
    capsys.readouterr()
    assert cli.main(["predict", "--workdir", str(tmp_path / "out"), *options, *map(str, paths)]) == 0
    assert [json.loads(line)["token_ids"] for line in capsys.readouterr().out.splitlines()] == expected, options


def test_blip_processing_equals_blip_image_processor(shared_data):
  hf_config = transformers.BlipConfig().to_dict()  # blip-base's sizes: 384 x 384.
  config = hf.FAMILIES.get("blip").ported_run_config(hf_blip.model_section(hf_config, "config.json"))
  ours = chest_xrays(shared_data, size=config.data.image_size)
  # Training sees the processor's view too: no augmentation.
  assert transforms.from_config(config) == transforms.Preprocessing(image_size=384, **hf_blip.PREPROCESSING)
  from PIL import Image

  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  processor = transformers.BlipImageProcessor()
  expected = processor([Image.open(p) for p in paths], return_tensors="np")["pixel_values"].transpose(0, 2, 3, 1)
  assert ours.shape == expected.shape == (4, 384, 384, 3)
  np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-5)


def test_config_defaults_are_transformers_defaults():
  text, vision = transformers.BlipTextConfig(), transformers.BlipVisionConfig()
  assert {name: getattr(text, name) for name in hf_blip.TEXT_DEFAULTS} == hf_blip.TEXT_DEFAULTS
  assert {name: getattr(vision, name) for name in hf_blip.VISION_DEFAULTS} == hf_blip.VISION_DEFAULTS
  section = hf_blip.model_section({"model_type": "blip", "text_config": {"num_attention_heads": 12}}, "c.json")
  assert section["num_heads"] == 12 and section["hidden_size"] == 768 and section["encoder"]["num_heads"] == 12


def test_tied_copies_are_accepted_when_equal_and_rejected_otherwise(hf_dir, vocab, tmp_path):
  model, directory = hf_dir
  tensors = dict(safetensors.numpy.load_file(directory / "model.safetensors"))
  tensors["text_decoder.cls.predictions.decoder.weight"] = tensors[
    "text_decoder.bert.embeddings.word_embeddings.weight"
  ]
  tensors["text_decoder.cls.predictions.decoder.bias"] = tensors["text_decoder.cls.predictions.bias"]
  old = tmp_path / "old"
  old.mkdir()
  (old / "config.json").write_text((directory / "config.json").read_text())
  safetensors.numpy.save_file(tensors, old / "model.safetensors")
  _, _, variables = hf.import_hf(old, tokenizer=vocab)
  np.testing.assert_array_equal(
    variables["params"]["embeddings"]["word_embeddings"]["embedding"],
    tensors["text_decoder.bert.embeddings.word_embeddings.weight"],
  )
  tensors["text_decoder.cls.predictions.decoder.weight"] = tensors["text_decoder.cls.predictions.decoder.weight"] + 1
  safetensors.numpy.save_file(tensors, old / "model.safetensors")
  with pytest.raises(WeightsError, match=r"cls\.predictions\.decoder\.weight differs from text_decoder\.bert"):
    hf.import_hf(old, tokenizer=vocab)
  del tensors["vision_model.encoder.layers.1.self_attn.qkv.weight"]
  del tensors["text_decoder.cls.predictions.decoder.weight"]
  safetensors.numpy.save_file(tensors, old / "model.safetensors")
  with pytest.raises(WeightsError, match=r"missing tensors \['vision_model.encoder.layers.1.self_attn.qkv.weight'"):
    hf.import_hf(old, tokenizer=vocab)
