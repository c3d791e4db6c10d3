"""TextEncoder (cxrjax/models/encoders/text.py) against transformers' BertModel, RobertaModel and DistilBertModel:
every hidden state (embeddings and each layer, `output_hidden_states`) of tiny random models on padded
batches, with the weights mapped by cxrjax/weights/hf_text.py's strict name map."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from cxrjax.models.encoders import text
from cxrjax.weights import hf_text, store
from cxrjax.weights.store import WeightsError

VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE = 97, 32, 3, 4, 48


def reference(family: str) -> torch.nn.Module:
  torch.manual_seed(0)
  if family == "bert":
    config = transformers.BertConfig(
      vocab_size=VOCAB,
      hidden_size=HIDDEN,
      num_hidden_layers=LAYERS,
      num_attention_heads=HEADS,
      intermediate_size=INTERMEDIATE,
      max_position_embeddings=40,
      type_vocab_size=2,
    )
    return transformers.BertModel(config).eval()
  if family == "roberta":
    config = transformers.RobertaConfig(
      vocab_size=VOCAB,
      hidden_size=HIDDEN,
      num_hidden_layers=LAYERS,
      num_attention_heads=HEADS,
      intermediate_size=INTERMEDIATE,
      max_position_embeddings=42,
      type_vocab_size=1,
      pad_token_id=1,
      layer_norm_eps=1e-5,
    )
    return transformers.RobertaModel(config).eval()
  config = transformers.DistilBertConfig(
    vocab_size=VOCAB,
    dim=HIDDEN,
    n_layers=LAYERS,
    n_heads=HEADS,
    hidden_dim=INTERMEDIATE,
    max_position_embeddings=40,
    pad_token_id=0,
  )
  return transformers.DistilBertModel(config).eval()


def flax_encoder(family: str, sizes: dict) -> text.TextEncoder:
  settings = dict(bert={}, roberta=dict(positions="padding_offset", pad_id=1, epsilon=1e-5), distilbert={})
  return text.TextEncoder(num_heads=HEADS, **sizes, **settings[family])


@pytest.mark.parametrize("family", hf_text.FAMILIES)
def test_every_hidden_state_matches_transformers(family):
  model = reference(family)
  tensors = {name: value.detach().numpy() for name, value in model.state_dict().items()}
  sizes = hf_text.architecture(tensors, family, "", "state dict")
  assert sizes == dict(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_layers=LAYERS,
    intermediate_size=INTERMEDIATE,
    max_positions=42 if family == "roberta" else 40,
    type_vocab_size={"bert": 2, "roberta": 1, "distilbert": 0}[family],
  )
  encoder = flax_encoder(family, sizes)
  pad = 1 if family == "roberta" else 0
  rng = np.random.default_rng(0)
  tokens = rng.integers(2, VOCAB, (3, 17)).astype(np.int32)
  lengths = [17, 9, 2]  # Padded rows: a different length per row.
  mask = (np.arange(17)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
  tokens = np.where(mask == 1, tokens, pad)
  abstract = jax.eval_shape(lambda: encoder.init(jax.random.key(0), jnp.asarray(tokens), jnp.asarray(mask)))
  unused = set(hf_text.POOLER)
  variables = store.strict_map(
    tensors,
    abstract,
    lambda path: hf_text.encoder_source(family, "/".join(path[1:])),
    "state dict",
    f"a tiny {family}",
    ignored=lambda name: name in unused,
  )
  last, states = jax.jit(lambda v, t, m: encoder.apply(v, t, m, output_hidden_states=True))(variables, tokens, mask)
  with torch.no_grad():
    expected = model(
      torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask), output_hidden_states=True
    ).hidden_states
  assert states.shape == (LAYERS + 1, 3, 17, HIDDEN)
  np.testing.assert_array_equal(states[-1], last)
  for index, state in enumerate(expected):
    np.testing.assert_allclose(
      states[index], state.numpy(), rtol=0, atol=1e-5, err_msg=f"{family} hidden state {index}"
    )


@pytest.mark.parametrize(
  "family, head",
  [
    ("bert", None),
    ("roberta", None),
    ("distilbert", None),
    ("bert", "BertForMaskedLM"),
    ("roberta", "RobertaForMaskedLM"),
  ],
)
def test_a_hugging_face_directory_imports_with_its_hidden_states(tmp_path, family, head):
  base = reference(family)
  model = getattr(transformers, head)(base.config).eval() if head else base  # Hub layout: "bert." + heads.
  model.save_pretrained(tmp_path)
  encoder, variables, found = hf_text.import_directory(tmp_path)
  assert found == family
  tokens = np.asarray([[5, 8, 13, 21, 34, 55], [5, 9, 2, 0, 0, 0]], np.int32)
  if family == "roberta":
    tokens = np.where(tokens == 0, 1, tokens)
  mask = np.asarray([[1] * 6, [1] * 3 + [0] * 3], np.int32)
  _, states = encoder.apply(variables, tokens, mask, output_hidden_states=True)
  body = getattr(model, family) if head else model
  with torch.no_grad():
    expected = body(
      torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask), output_hidden_states=True
    ).hidden_states
  np.testing.assert_allclose(states, np.stack([state.numpy() for state in expected]), rtol=0, atol=1e-5)


def test_a_directory_with_a_missing_or_extra_tensor_is_refused(tmp_path):
  reference("bert").save_pretrained(tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  tensors.pop("encoder.layer.2.output.dense.bias")
  tensors["classifier.weight"] = np.zeros((2, HIDDEN), np.float32)
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(
    WeightsError,
    match=rf"^{tmp_path}: does not fit the bert encoder of its config.json: 1 missing "
    r"tensors \['encoder.layer.2.output.dense.bias'\]; 1 unexpected tensors \['classifier.weight'\]",
  ):
    hf_text.import_directory(tmp_path)


def test_roberta_positions_count_real_tokens_from_the_padding_index():
  tokens = jnp.asarray([[0, 5, 6, 2, 1, 1], [1, 0, 7, 1, 8, 2]])
  np.testing.assert_array_equal(
    text.padding_offset_positions(tokens, pad_id=1), [[2, 3, 4, 5, 1, 1], [1, 2, 3, 1, 4, 5]]
  )


def test_an_unknown_family_or_path_is_refused():
  with pytest.raises(ValueError, match="unknown text encoder family 'gpt2'"):
    hf_text.encoder_source("gpt2", "embeddings/norm/scale")
  with pytest.raises(KeyError):
    hf_text.encoder_source("distilbert", "embeddings/token_type_embeddings/embedding")
  assert (
    hf_text.encoder_source("distilbert", "layers_2/attention/norm/scale", "distilbert.")[0]
    == "distilbert.transformer.layer.2.sa_layer_norm.weight"
  )
