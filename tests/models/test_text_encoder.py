"""TextEncoder (cxrjax/models/encoders/text.py) against transformers' BertModel, RobertaModel and DistilBertModel,
and DebertaEncoder (cxrjax/models/encoders/deberta.py) against DebertaModel: every hidden state (embeddings and
each layer, `output_hidden_states`) of tiny random models on padded batches, with the weights mapped by
cxrjax/weights/hf_text.py's strict name map."""

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers

from cxrjax.models.encoders import deberta, text
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


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
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


# DeBERTa v1 settings: microsoft/deberta-*'s (relative only, the table as long as the positions), then
# absolute positions and token types besides a short relative table, then one position term.
DEBERTA_SETTINGS = {
  "released": dict(max_position_embeddings=64, position_biased_input=False, pos_att_type=["c2p", "p2c"]),
  "absolute_too": dict(
    max_position_embeddings=96,
    max_relative_positions=6,
    position_biased_input=True,
    type_vocab_size=2,
    pos_att_type="c2p|p2c",  # The older configs' spelling.
  ),
  "c2p_only": dict(max_position_embeddings=64, position_biased_input=False, pos_att_type=["c2p"]),
}


def deberta_reference(settings: dict, head: str | None = None) -> torch.nn.Module:
  torch.manual_seed(0)
  config = transformers.DebertaConfig(
    vocab_size=VOCAB,
    hidden_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    intermediate_size=INTERMEDIATE,
    relative_attention=True,
    **settings,
  )
  model = getattr(transformers, head or "DebertaModel")(config).eval()
  with torch.no_grad():  # Random biases and norms too (transformers starts them at 0 and 1).
    for parameter in model.parameters():
      parameter.add_(0.1 * torch.randn_like(parameter))
  return model


@pytest.mark.parametrize("name", DEBERTA_SETTINGS)
def test_deberta_hidden_states_match_transformers(tmp_path, name):
  model = deberta_reference(DEBERTA_SETTINGS[name])
  model.save_pretrained(tmp_path)
  encoder, variables, family = hf_text.import_directory(tmp_path)
  assert family == "deberta" and isinstance(encoder, deberta.DebertaEncoder)
  assert encoder.span_max == (6 if name == "absolute_too" else 64)
  rng = np.random.default_rng(1)
  length = 80  # Past both tables: distances of 64 (6) and more are clipped.
  tokens = rng.integers(1, VOCAB, (3, length)).astype(np.int32)
  mask = (np.arange(length)[None] < np.asarray([length, 37, 2])[:, None]).astype(np.int32)
  tokens = np.where(mask == 1, tokens, 0)
  token_types = rng.integers(0, 2, tokens.shape).astype(np.int32) if name == "absolute_too" else None
  last, states = jax.jit(lambda v, t, m, y: encoder.apply(v, t, m, y, output_hidden_states=True))(
    variables, tokens, mask, token_types
  )
  with torch.no_grad():
    expected = model(
      torch.from_numpy(tokens).long(),
      attention_mask=torch.from_numpy(mask),
      token_type_ids=None if token_types is None else torch.from_numpy(token_types).long(),
      output_hidden_states=True,
    ).hidden_states
  assert states.shape == (LAYERS + 1, 3, length, HIDDEN)
  np.testing.assert_array_equal(states[-1], last)
  for index, state in enumerate(expected):  # Padding positions included (module doc of deberta.py).
    np.testing.assert_allclose(states[index], state.numpy(), rtol=0, atol=1e-5, err_msg=f"{name} state {index}")


def test_deberta_relative_index_clips_far_distances():
  np.testing.assert_array_equal(
    deberta.relative_index(5, 2),
    [[2, 1, 0, 0, 0], [3, 2, 1, 0, 0], [3, 3, 2, 1, 0], [3, 3, 3, 2, 1], [3, 3, 3, 3, 2]],
  )


def test_a_deberta_classifier_directory_imports_its_encoder(tmp_path):
  """The hub's microsoft/deberta-*-mnli layout: "deberta." tensors, a pooler and a classifier left unused."""
  model = deberta_reference(DEBERTA_SETTINGS["released"], "DebertaForSequenceClassification")
  model.save_pretrained(tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  assert "deberta.encoder.rel_embeddings.weight" in tensors and "classifier.weight" in tensors
  # An absolute table that position_biased_input false leaves unread, as transformers does on loading.
  tensors["deberta.embeddings.position_embeddings.weight"] = np.zeros((64, HIDDEN), np.float32)
  safetensors.numpy.save_file(tensors, path)
  encoder, variables, _ = hf_text.import_directory(tmp_path)
  tokens = np.asarray([[1, 8, 13, 21, 34, 2], [1, 9, 2, 0, 0, 0]], np.int32)
  mask = (tokens != 0).astype(np.int32)
  _, states = encoder.apply(variables, tokens, mask, output_hidden_states=True)
  with torch.no_grad():
    expected = model.deberta(
      torch.from_numpy(tokens).long(), attention_mask=torch.from_numpy(mask), output_hidden_states=True
    ).hidden_states
  np.testing.assert_allclose(states, np.stack([state.numpy() for state in expected]), rtol=0, atol=1e-5)


def test_a_deberta_directory_with_a_bad_tensor_or_setting_is_refused(tmp_path):
  deberta_reference(DEBERTA_SETTINGS["released"]).save_pretrained(tmp_path)
  path = tmp_path / "model.safetensors"
  tensors = safetensors.numpy.load_file(path)
  good = dict(tensors)
  tensors.pop("encoder.layer.1.attention.self.pos_q_proj.bias")
  tensors["encoder.rel_embeddings.weight"] = np.zeros((100, HIDDEN), np.float32)
  safetensors.numpy.save_file(tensors, path)
  with pytest.raises(WeightsError) as error:
    hf_text.import_directory(tmp_path)
  message = str(error.value)
  assert "\n" not in message and message.startswith(f"{tmp_path}: does not fit the deberta encoder of its config.json")
  assert "['encoder.layer.1.attention.self.pos_q_proj.bias']" in message
  assert "encoder.rel_embeddings.weight (100, 32) (model params/rel_embeddings/embedding needs (128, 32))" in message
  good["encoder.layer.0.attention.self.q_bias"][3] = np.nan
  safetensors.numpy.save_file(good, path)
  with pytest.raises(WeightsError, match=r"tensor 'encoder.layer.0.attention.self.q_bias' has 1 NaN or infinite"):
    hf_text.import_directory(tmp_path)
  config = tmp_path / "config.json"
  settings = json.loads(config.read_text())
  config.write_text(json.dumps({**settings, "pos_att_type": ["c2p", "p2p"]}))
  with pytest.raises(WeightsError, match=r"config.json: pos_att_type \['c2p', 'p2p'\] is not a list of"):
    hf_text.import_directory(tmp_path)
