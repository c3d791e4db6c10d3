"""Checks every captioner must pass, shared by their test files."""

import pathlib

import jax
import numpy as np
from PIL import Image

from cxrjax.core import decoding
from cxrjax.data import phantom
from cxrjax.text import tokenizers


def word_vocabulary(words: tuple[str, ...]) -> tokenizers.WordVocabulary:
  """A word vocabulary of the special tokens and `words` (the models' tests use its ids, never fixed ones)."""
  return tokenizers.WordVocabulary(tokens=tokenizers.SPECIAL_TOKENS + tuple(words))


def framed(tokenizer, rows: list[list[int]], length: int) -> np.ndarray:
  """Token rows framed as the pipeline frames reports: [start] row [end] [pad]... -> int32 [len(rows), length]
  (a row of `length - 1` tokens or more runs on without end, as a truncated report)."""
  out = np.full((len(rows), length), tokenizer.pad_id, np.int32)
  for index, row in enumerate(rows):
    sequence = [tokenizer.start_id, *row, tokenizer.end_id][:length]
    out[index, : len(sequence)] = sequence
  return out


def assert_greedy_equals_beam_of_one(model, variables, images, tokenizer) -> None:
  """Greedy search and a beam of one give the same tokens and scores, through decoding.py."""
  step_fn = model.decoder_step_fn(variables)

  @jax.jit
  def search(images):
    cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
    options = dict(start_id=tokenizer.start_id, end_id=tokenizer.end_id, max_length=10, pad_id=tokenizer.pad_id)
    greedy, greedy_log_probs = decoding.greedy_search(step_fn, cache, **options)
    beams, beam_scores = decoding.beam_search(step_fn, cache, beam_size=1, length_penalty=0.0, **options)
    return greedy, greedy_log_probs, beams[:, 0], beam_scores[:, 0]

  greedy, greedy_log_probs, beam, beam_scores = search(images)
  assert len(set(np.asarray(greedy).ravel().tolist())) > 2  # Varied words, not one token.
  np.testing.assert_array_equal(greedy, beam)
  np.testing.assert_allclose(greedy_log_probs, beam_scores, rtol=1e-5)


def write_phantom_study(folder: pathlib.Path, index: int = 3, size: int = 48) -> list[str]:
  """A phantom study's frontal and lateral views as PNG files; returns their paths."""
  folder.mkdir(parents=True, exist_ok=True)
  record = phantom.generate_study(index, phantom.PhantomConfig(image_size=size))
  paths = []
  for view, image in zip(record["views"], record["images"]):
    Image.fromarray(image).save(folder / f"{view}.png")
    paths.append(str(folder / f"{view}.png"))
  return paths
