"""The GIT captioner: its size against transformers' GitForCausalLM, GIT's attention mask as behaviour
(text sees the image and earlier text, never later text), freezing and bfloat16. The
whole model against transformers through the importer is tests/weights/test_hf_git.py; cached decoding
against teacher forcing and greedy against a beam of one are tests/models/test_contract.py's."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cxrjax.models import git

Family = git.GitCaptioner
VOCAB = 30


def _smoke_model(is_frozen=lambda module_path: False, **overrides):
  config = Family.smoke_config()
  config.update(overrides)
  return Family.from_config(config, VOCAB, is_frozen)


def _inputs(batch=2, length=7, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(batch, 1, 32, 32, 3)).astype(np.float32)
  return images, rng.integers(4, VOCAB, size=(batch, length)).astype(np.int32)


@pytest.fixture(scope="module")
def smoke():
  model = _smoke_model()
  images, tokens = _inputs()
  return model, jax.jit(model.init)(jax.random.key(0), images, tokens)


def test_git_base_has_transformers_size_and_197_image_tokens():
  model = Family(vocab_size=30522)
  images, tokens = jnp.zeros((1, 1, 224, 224, 3)), jnp.zeros((1, 5), jnp.int32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), images, tokens))
  with torch.device("meta"):  # Shapes only: transformers' GitConfig defaults are microsoft/git-base's sizes.
    reference = transformers.GitForCausalLM(transformers.GitConfig())
  assert sum(a.size for a in jax.tree.leaves(variables)) == sum(p.numel() for p in reference.parameters())
  memory = jax.eval_shape(lambda v: model.apply(v, images, method="encode"), variables)
  assert memory["image_tokens"].shape == (1, 197, 768)
  assert jax.eval_shape(model.apply, variables, images, tokens)["logits"].shape == (1, 5, 30522)


def test_text_sees_the_image_and_earlier_text_only(smoke):
  model, variables = smoke
  apply = jax.jit(lambda x, t: model.apply(variables, x, t)["logits"])
  images, tokens = _inputs()
  logits = apply(images, tokens)
  changed = tokens.copy()
  changed[:, 4] = (changed[:, 4] + 1 - 4) % (VOCAB - 4) + 4  # Another word at position 4.
  changed_logits = apply(images, changed)
  np.testing.assert_array_equal(logits[:, :4], changed_logits[:, :4])  # Earlier positions: not a bit moved.
  assert np.abs(logits[:, 4:] - changed_logits[:, 4:]).min(axis=-1).max() > 0  # Later ones do see it.
  other_image = apply(images[::-1], tokens)
  assert np.abs(other_image[:, 0] - logits[::-1, 0]).max() > 1e-4  # The first word depends on the image.


def test_a_frozen_encoder_gets_no_gradient_and_bfloat16_keeps_float32_parameters(smoke):
  _, variables = smoke
  images, tokens = _inputs()
  frozen, model16 = _smoke_model(is_frozen=lambda path: path == "image_encoder"), _smoke_model(dtype="bfloat16")

  @jax.jit
  def run(params):
    loss = lambda p: frozen.apply({"params": p}, images, tokens)["logits"].sum()
    return (
      jax.grad(loss)(params),
      frozen.apply({"params": params}, images, tokens)["logits"],
      model16.apply({"params": params}, images, tokens)["logits"],
    )

  grads, logits32, logits16 = run(variables["params"])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads["image_encoder"]))
  assert float(jnp.abs(grads["visual_projection"]["kernel"]).max()) > 0.0
  assert logits16.dtype == jnp.float32
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  np.testing.assert_allclose(logits16, logits32, atol=0.15)


def test_steps_need_a_position_and_the_cache_fits_the_positions(smoke):
  model, variables = smoke
  with pytest.raises(ValueError, match="needs the token's position"):
    model.apply(variables, jnp.zeros((2,), jnp.int32), {}, method="decode_step")
  with pytest.raises(ValueError, match="exceeds max_positions"):
    _smoke_model(cache_length=64).init(jax.random.key(0), *_inputs())
