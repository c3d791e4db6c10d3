"""BLIP's captioner against transformers' BlipForConditionalGeneration on a small random config (every
weight drawn at random; vision and text widths differ; text head count not BlipTextConfig's default) and
real chest X-rays: teacher-forced logits, and greedy / beam search against `generate`, with and without
a prompt, [SEP] raised so that some captions end and others run to the limit. The weights go through
cxrjax/weights/hf_blip.py's name map (tests/weights/test_hf_blip.py runs the same through `cxrjax
port-weights` and `cxrjax predict`)."""

import copy
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers

from cxrjax.core import decoding
from cxrjax.data import transforms
from cxrjax.models import blip
from cxrjax.weights import hf_blip
from tests.weights import generation_checks

DEC, SEP, PAD = 30522, 102, 0
PROMPT_IDS = (DEC, 1037, 3861, 1997)  # [DEC] a picture of (bert-base-uncased ids, checked in test_hf_blip.py)
IMAGE_SIZE = 32
VISION = dict(
  hidden_size=16,
  intermediate_size=24,
  num_hidden_layers=2,
  num_attention_heads=2,
  image_size=IMAGE_SIZE,
  patch_size=8,
  layer_norm_eps=1e-6,
)
TEXT = dict(
  vocab_size=30524,
  hidden_size=24,
  intermediate_size=40,
  num_hidden_layers=2,
  num_attention_heads=3,
  max_position_embeddings=64,
  layer_norm_eps=1e-7,
)


def tiny_hf_blip(seed: int = 0) -> transformers.BlipForConditionalGeneration:
  """A random BlipForConditionalGeneration: every parameter redrawn (LayerNorm gains around 1), so that a
  dropped or mis-mapped tensor changes the outputs."""
  config = transformers.BlipConfig(vision_config=VISION, text_config=TEXT)
  torch.manual_seed(seed)
  model = transformers.BlipForConditionalGeneration(config).eval()
  with torch.no_grad():
    for name, tensor in model.named_parameters():
      is_gain = name.endswith(("LayerNorm.weight", "layer_norm1.weight", "layer_norm2.weight", "post_layernorm.weight"))
      scale = 1.0 if "embedding" in name else 0.3  # Word embeddings are the tied head: logits far from ties.
      tensor.copy_(torch.randn_like(tensor) * scale + (1.0 if is_gain else 0.0))
  model.tie_weights()
  return model


def ending_some_captions(hf_model, pixels, max_new: int, **prompt) -> transformers.BlipForConditionalGeneration:
  """A copy of `hf_model` whose [SEP] is raised (tests/weights/generation_checks.py) so that some of its greedy
  captions of `max_new` tokens from pixels [images, 3, S, S] (and `prompt`: generate's input_ids) end early
  and the others run to the limit: the end-of-caption, pool and early-stop paths of the searches."""
  model = copy.deepcopy(hf_model)
  with torch.no_grad():
    scores = model.generate(
      pixel_values=pixels, max_new_tokens=max_new, output_scores=True, return_dict_in_generate=True, **prompt
    ).scores
    # The output layer's bias, which its tied decoder Linear shares.
    model.text_decoder.cls.predictions.bias[SEP] += generation_checks.end_bias(
      generation_checks.margins_to_end(scores, SEP)
    )
  return model


def chest_xrays(shared_data, size: int = IMAGE_SIZE) -> np.ndarray:
  """The real PNGs, as BLIP's processor prepares them (bicubic square resize, CLIP statistics)."""
  preprocessing = transforms.Preprocessing(image_size=size, **hf_blip.PREPROCESSING)
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  return np.stack([transforms.load_for_model(path, preprocessing) for path in paths])  # [4, S, S, 3]


def flax_blip(hf_model, prompt_ids=()):
  """The cxrjax model of `hf_model` and its variables through hf_blip's map (every tensor used once)."""
  section = hf_blip.model_section(hf_model.config.to_dict(), "config.json")
  section = hf_blip.with_prompt(section, prompt_ids) if prompt_ids else section
  model = blip.BlipCaptioner.from_config(
    ml_collections.ConfigDict(section), hf_blip.vocab_size(hf_model.config.to_dict()), lambda path: False
  )
  tensors = {name: tensor.detach().numpy() for name, tensor in hf_model.state_dict().items()}
  abstract = jax.eval_shape(
    model.init, jax.random.key(0), np.zeros((1, 1, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32), np.zeros((1, 3), np.int32)
  )
  used, flat = set(), {}
  for path, leaf in flax.traverse_util.flatten_dict(abstract, sep="/").items():
    name, convert = hf_blip.source_of(path)
    flat[path] = jnp.asarray(convert(tensors[name]))
    assert flat[path].shape == leaf.shape, path
    used.add(name)
  assert set(tensors) - used == {n for n in tensors if hf_blip.ignored(n)}  # Nothing left out but the tied.
  return model, flax.traverse_util.unflatten_dict(flat, sep="/")


@pytest.fixture(scope="module")
def hf_model():
  return tiny_hf_blip(seed=6)  # A seed whose captions, greedy and beam, end at mixed steps once [SEP] is raised.


@pytest.fixture(scope="module")
def images(shared_data):
  return chest_xrays(shared_data)


def _generated(rows, skip: int) -> list[list[int]]:
  """Token rows -> the generated ids after `skip` inputs, up to and without the first [SEP]."""
  out = []
  for row in np.asarray(rows).tolist():
    row = row[skip:]
    out.append(row[: row.index(SEP)] if SEP in row else row)
  return out


@pytest.mark.parametrize("prompt_ids", [(), PROMPT_IDS], ids=["no_prompt", "prompt"])
def test_teacher_forced_logits_and_searches_match_transformers(hf_model, images, prompt_ids):
  max_new = 8
  pixels = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  hf_prompt = dict(input_ids=torch.tensor([list(prompt_ids) + [SEP]] * images.shape[0])) if prompt_ids else {}
  hf_model = ending_some_captions(hf_model, pixels, max_new, **hf_prompt)
  model, variables = flax_blip(hf_model, prompt_ids)
  captions = np.random.default_rng(0).integers(1000, 30000, size=(images.shape[0], 6)).astype(np.int32)
  tokens = np.concatenate([np.full((images.shape[0], 1), DEC, np.int32), captions], axis=1)  # [4, 7]
  hf_inputs = (
    np.concatenate([np.tile(prompt_ids, (images.shape[0], 1)).astype(np.int32), captions], axis=1)
    if prompt_ids
    else tokens
  )
  with torch.no_grad():
    expected = hf_model(pixel_values=pixels, input_ids=torch.from_numpy(hf_inputs).long()).logits.numpy()
  expected = expected[:, max(len(prompt_ids) - 1, 0) :]  # The positions that predict caption tokens.
  logits = jax.jit(lambda v, x, t: model.apply(v, x, t)["logits"])(variables, images[:, None], tokens)
  assert logits.shape == expected.shape and np.abs(expected).max() > 5.0
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)

  @jax.jit
  def search(variables, images):
    cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
    step_fn = model.decoder_step_fn(variables)
    options = dict(start_id=DEC, end_id=SEP, pad_id=PAD, max_length=max_new)
    greedy, _ = decoding.greedy_search(step_fn, cache, **options)
    beams, _ = decoding.beam_search(
      step_fn, cache, beam_size=3, length_penalty=1.0, length_normalization="hf", **options
    )
    return greedy, beams[:, 0]

  greedy, beam = search(variables, images[:, None])
  # BlipForConditionalGeneration.generate drops the prompt's last token ([SEP] after the processor's text).
  skip = len(prompt_ids) if prompt_ids else 1
  with torch.no_grad():
    hf_greedy = hf_model.generate(pixel_values=pixels, num_beams=1, max_new_tokens=max_new, **hf_prompt)
    hf_beam = hf_model.generate(pixel_values=pixels, num_beams=3, max_new_tokens=max_new, **hf_prompt)
  for ours, reference in ((greedy, hf_greedy), (beam, hf_beam)):
    expected = _generated(reference, skip)
    lengths = [len(ids) for ids in expected]
    assert min(lengths) < max_new and max(lengths) == max_new, lengths  # Some end, some run to the limit.
    assert _generated(ours, 0) == expected


def test_prompt_ids_outside_the_vocabulary_are_refused_in_one_line():
  # Else the embedding lookup reads NaN (JAX's out-of-bounds fill) and the run trains on NaN losses.
  from cxrjax.core import errors
  from cxrjax import models  # pylint: disable=g-import-not-at-top
  from configs import roco_blip  # pylint: disable=g-import-not-at-top

  section = roco_blip.get_config("smoke").model
  with pytest.raises(
    errors.ConfigError,
    match=r"config.model.prompt_ids=\[30522, 1037, 3861, 1997\]: ids outside "
    r"the vocabulary of 1000 tokens",
  ):
    models.build(section, 1000)
  assert models.build(section, 30524).prompt_ids == roco_blip.PROMPT_IDS
