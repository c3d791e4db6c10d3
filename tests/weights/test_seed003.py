"""Seed 003 importers: the seed's PyTorch captioner and Hugging Face ResNet directories, against the real
PyTorch models on real chest X-rays, and strict key checks.

The reference is the seed's own code (GraphPropagationLayer, ResNetGraphCaptioner, generate_caption),
copied below with one change: the ResNet is `transformers.ResNetModel(ResNetConfig(...))` with random
weights instead of `AutoModel.from_pretrained("microsoft/resnet-50")` (offline). Its batch-norm statistics
are set from the test images and then randomised, so that activations stay in a range where a wrong
layer shows. Nothing is committed: every checkpoint is written here.
"""

import copy
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from cxrjax.core import decoding, recipes
from cxrjax.models import graph_captioner
from cxrjax.models.encoders import resnet
from cxrjax.weights import pretrained, seed003, store

from tests.weights import generation_checks
from tests.weights.torch_seed003 import (  # noqa: F401  (the seed's reference code)
  TINY_RESNET,
  TINY_DECODER,
  CLS,
  SEP,
  GraphPropagationLayer,
  ResNetGraphCaptioner,
  encoder_runs_once,
  generate_caption,
  seed_transform,
  calibrate_batch_norm,
  reference_model,
  flax_model,
  token_rows,
)


@pytest.fixture(scope="module")
def chest_xrays(shared_data):
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  assert len(paths) == 4
  return np.stack([seed_transform(path) for path in paths])  # [4, 224, 224, 3]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, chest_xrays):
  model = reference_model(chest_xrays, TINY_RESNET, **TINY_DECODER, head_scale=6.0)
  path = tmp_path_factory.mktemp("seed003") / "roco_best_model.bin"
  torch.save(model.state_dict(), path)
  return model, path


def _assert_logits_match(torch_model, path, images, num_heads, vocab_size):
  tokens = token_rows(vocab_size, images.shape[0], 12)
  with torch.no_grad():
    expected = torch_model(torch.from_numpy(images.transpose(0, 3, 1, 2)), torch.from_numpy(tokens)).numpy()
  model, variables = flax_model(path, num_heads)
  logits = jax.jit(lambda v, x, t: model.apply(v, x, t)["logits"])(variables, images[:, None], tokens)
  assert np.abs(expected).max() > 1.0  # Logits with a scale, not all near zero.
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=1e-4)


def test_teacher_forced_logits_match_the_seed_model_on_real_images(tiny_checkpoint, chest_xrays):
  torch_model, path = tiny_checkpoint
  _assert_logits_match(torch_model, path, chest_xrays, TINY_DECODER["num_heads"], TINY_DECODER["vocab_size"])


@pytest.mark.slow
def test_teacher_forced_logits_match_the_seed_model_at_full_size(tmp_path, chest_xrays):
  # The seed's sizes: ResNet-50, d_model 512, 4 layers of 8 heads, bert-base-uncased's 30522 tokens.
  torch_model = reference_model(chest_xrays, {}, vocab_size=30522, embed_dim=512, num_layers=4, num_heads=8)
  path = tmp_path / "roco_best_model.bin"
  torch.save(torch_model.state_dict(), path)
  _assert_logits_match(torch_model, path, chest_xrays, 8, 30522)


@pytest.mark.parametrize("end_bias", [0.0, 6.0])  # 0: every caption runs to max_len; 6: they end at [SEP].
def test_greedy_decoding_matches_the_seeds_generate_caption(tmp_path, tiny_checkpoint, chest_xrays, end_bias):
  torch_model = copy.deepcopy(tiny_checkpoint[0])
  with torch.no_grad():
    torch_model.fc_out.bias[SEP] += end_bias
  path = tmp_path / "roco_best_model.bin"
  torch.save(torch_model.state_dict(), path)
  max_len = 20
  model, variables = flax_model(path, TINY_DECODER["num_heads"])

  @jax.jit
  def greedy(images):
    cache = model.apply(variables, model.apply(variables, images, method="encode"), method="init_cache")
    return decoding.greedy_search(
      model.decoder_step_fn(variables), cache, start_id=CLS, end_id=SEP, pad_id=0, max_length=max_len
    )

  tokens, total_log_probs = greedy(chest_xrays[:, None])
  tokens = np.asarray(tokens)
  generated = []
  for index, image in enumerate(chest_xrays):
    image_tensor = torch.from_numpy(image.transpose(2, 0, 1)[None])
    expected_ids, expected_log_probs = generate_caption(image_tensor, torch_model, max_len=max_len)
    row = tokens[index].tolist()
    ids = row[: row.index(SEP)] if SEP in row else row
    assert ids == expected_ids, f"image {index}"
    # Each generated token's log-probability under the imported model (teacher forced on the chosen tokens).
    scored = [CLS] + ids + ([SEP] if SEP in row else [])
    logits = model.apply(variables, chest_xrays[index][None, None], np.asarray([scored[:-1]]))["logits"][0]
    log_probs = jax.nn.log_softmax(logits, axis=-1)[np.arange(len(scored) - 1), np.asarray(scored[1:])]
    np.testing.assert_allclose(log_probs, expected_log_probs, atol=1e-3)
    np.testing.assert_allclose(total_log_probs[index], sum(expected_log_probs), atol=1e-3)
    # The head's scale keeps every choice clear of a tie (logits agree to 1e-4).
    with torch.no_grad():
      top_two = torch_model(image_tensor, torch.tensor([scored[:-1]]))[0].topk(2, dim=-1).values
    assert (top_two[:, 0] - top_two[:, 1]).min().item() > 0.01
    generated.append(ids)
  assert len({token for ids in generated for token in ids}) > 3  # Varied words, not one repeated token.
  assert all(len(ids) == max_len for ids in generated) == (end_bias == 0.0)


# Strict key checks.


def _edited_checkpoint(tmp_path, tiny_checkpoint, edit):
  state = dict(tiny_checkpoint[0].state_dict())
  edit(state)
  path = tmp_path / "edited.bin"
  torch.save(state, path)
  return path


def test_a_missing_tensor_is_named(tmp_path, tiny_checkpoint):
  path = _edited_checkpoint(tmp_path, tiny_checkpoint, lambda s: s.pop("decoder.layers.1.norm2.bias"))
  with pytest.raises(store.WeightsError, match=r"1 missing tensors \['decoder.layers.1.norm2.bias'\]"):
    seed003.import_seed003(path, num_heads=4)
  path = _edited_checkpoint(
    tmp_path, tiny_checkpoint, lambda s: s.pop("encoder.encoder.stages.2.layers.0.shortcut.normalization.running_var")
  )
  with pytest.raises(store.WeightsError, match=r"stages.2.layers.0.shortcut.normalization.running_var"):
    seed003.import_seed003(path, num_heads=4)


def test_an_unexpected_tensor_is_named(tmp_path, tiny_checkpoint):
  path = _edited_checkpoint(tmp_path, tiny_checkpoint, lambda s: s.update({"decoder.norm.weight": torch.ones(32)}))
  with pytest.raises(store.WeightsError, match=r"1 unexpected tensors \['decoder.norm.weight'\]"):
    seed003.import_seed003(path, num_heads=4)


def test_a_mis_shaped_tensor_is_named(tmp_path, tiny_checkpoint):
  path = _edited_checkpoint(tmp_path, tiny_checkpoint, lambda s: s.update({"fc_out.bias": torch.zeros(121)}))
  with pytest.raises(store.WeightsError, match=r"1 tensors of the wrong shape \['fc_out.bias \(121,\)"):
    seed003.import_seed003(path, num_heads=4)


def test_heads_that_do_not_divide_the_width_and_other_files_are_refused(tmp_path, tiny_checkpoint):
  with pytest.raises(store.WeightsError, match="not divisible by num_heads 5"):
    seed003.import_seed003(tiny_checkpoint[1], num_heads=5)
  with pytest.raises(store.WeightsError, match="not found"):
    seed003.import_seed003(tmp_path / "absent.bin")
  path = _edited_checkpoint(tmp_path, tiny_checkpoint, lambda s: s.pop("vis_proj.weight"))
  with pytest.raises(store.WeightsError, match=r"not a seed 003.*missing \['vis_proj.weight'\]"):
    seed003.import_seed003(path, num_heads=4)


class _Payload:
  """Any class: pickling it stores code to run at load time, which weights_only refuses."""


def test_a_checkpoint_with_pickled_code_is_refused(tmp_path):
  path = tmp_path / "pickled.bin"
  torch.save({"vis_proj.weight": torch.zeros(2, 2), "payload": _Payload()}, path)
  with pytest.raises(
    store.WeightsError,
    match=r"pickled.bin: holds pickled objects .*torch.load\(weights_only=True\) "
    r"refused: Unsupported global",
  ) as error:
    seed003.import_seed003(path)
  assert "weights_only=False" not in str(error.value) and "add_safe_globals" not in str(error.value)


def test_save_and_load_round_trip(tmp_path, tiny_checkpoint):
  variables, model_config, vocab_size = seed003.import_seed003(tiny_checkpoint[1], num_heads=4)
  seed003.save(tmp_path / "out", variables, model_config, vocab_size, {"format": "seed003-torch"})
  loaded_config, loaded, loaded_vocab = seed003.load(tmp_path / "out")
  assert loaded_vocab == vocab_size == TINY_DECODER["vocab_size"]
  assert loaded_config.num_heads == 4 and loaded_config.num_layers == 2 and loaded_config.d_model == 32
  assert tuple(loaded_config.encoder.hidden_sizes) == tuple(TINY_RESNET["hidden_sizes"])
  for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(loaded), strict=True):
    np.testing.assert_array_equal(a, b)
  store.save_weights(tmp_path / "other", variables, {"model": "densenet"})
  with pytest.raises(store.WeightsError, match="holds a 'densenet' model"):
    seed003.load(tmp_path / "other")


# Hugging Face ResNet directories (the encoder's pretrained weights).


def _torch_resnet(kind, chest_xrays, seed=1):
  torch.manual_seed(seed)
  model = kind(transformers.ResNetConfig(**TINY_RESNET, num_labels=3))
  encoder = model if kind is transformers.ResNetModel else model.resnet
  calibrate_batch_norm(encoder, torch.from_numpy(chest_xrays.transpose(0, 3, 1, 2)), seed)
  return model.eval(), encoder


@pytest.mark.parametrize("kind", [transformers.ResNetModel, transformers.ResNetForImageClassification])
def test_a_hugging_face_resnet_directory_imports_as_the_encoder(tmp_path, chest_xrays, kind):
  model, encoder = _torch_resnet(kind, chest_xrays)
  model.save_pretrained(tmp_path)
  variables, config = seed003.import_hf_resnet(tmp_path)
  assert config == resnet.ResNetConfig(embedding_size=16, hidden_sizes=(32, 64, 128, 256), depths=(1, 1, 1, 1))
  with torch.no_grad():
    expected = encoder(pixel_values=torch.from_numpy(chest_xrays.transpose(0, 3, 1, 2))).last_hidden_state
  features = jax.jit(lambda v, x: resnet.ResNet(config).apply(v, x))(variables, chest_xrays)
  assert features.shape == (4, 7, 7, 256)
  np.testing.assert_allclose(features, expected.permute(0, 2, 3, 1).numpy(), rtol=0, atol=1e-4)


def test_config_init_writes_a_hugging_face_resnet_into_the_captioner(tmp_path, chest_xrays):
  model, _ = _torch_resnet(transformers.ResNetModel, chest_xrays)
  model.save_pretrained(tmp_path / "resnet")
  family = graph_captioner.GraphCaptioner
  captioner = family(
    vocab_size=20,
    encoder=resnet.ResNetConfig.from_dict(TINY_RESNET),
    d_model=16,
    num_heads=2,
    num_layers=1,
    ff_dim=32,
    max_positions=16,
    cache_length=8,
  )
  variables = jax.jit(captioner.init)(jax.random.key(0), jnp.zeros((1, 1, 64, 64, 3)), jnp.zeros((1, 3), jnp.int32))
  loaded = pretrained.initialize({"encoder": str(tmp_path / "resnet")}, family, variables)
  imported, _ = seed003.import_hf_resnet(tmp_path / "resnet")
  for collection in ("params", "batch_stats"):
    for a, b in zip(
      jax.tree.leaves(imported[collection]), jax.tree.leaves(loaded[collection]["image_encoder"]), strict=True
    ):
      np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(loaded["params"]["fc_out"]["kernel"], variables["params"]["fc_out"]["kernel"])

  wider = family(
    vocab_size=20,
    encoder=resnet.ResNetConfig.from_dict(dict(TINY_RESNET, embedding_size=8)),
    d_model=16,
    num_heads=2,
    num_layers=1,
    ff_dim=32,
    max_positions=16,
    cache_length=8,
  )
  variables = jax.jit(wider.init)(jax.random.key(0), jnp.zeros((1, 1, 64, 64, 3)), jnp.zeros((1, 3), jnp.int32))
  with pytest.raises(store.WeightsError, match="tensor shapes differ from the encoder at image_encoder"):
    pretrained.initialize({"encoder": str(tmp_path / "resnet")}, family, variables)


def test_a_directory_that_is_not_a_resnet_is_refused(tmp_path, chest_xrays):
  with pytest.raises(store.WeightsError, match="config.json: not found"):
    seed003.import_hf_resnet(tmp_path)
  model, _ = _torch_resnet(transformers.ResNetModel, chest_xrays)
  model.save_pretrained(tmp_path)
  (tmp_path / "config.json").write_text('{"model_type": "vit"}')
  with pytest.raises(store.WeightsError, match="model_type='vit'"):
    seed003.import_hf_resnet(tmp_path)


def test_an_imported_run_decodes_as_the_seed_and_the_recipe_as_configured():
  """The seed's generate_caption: greedy, nothing blocked, 80 tokens ([SEP] included), or as many as a shorter
  position table lets its loop run; configs/rocov2_graph.py names its own search (beam 3, trigram blocking)."""
  from configs import rocov2_graph  # pylint: disable=g-import-not-at-top

  for cache_length, max_length in ((80, 80), (40, 40)):
    model = dict(name="graph_captioner", cache_length=cache_length)
    decode = seed003.fit_lengths(recipes.rocov2_experiment(model), model).decode
    assert (decode.beam_size, decode.max_length, decode.block_ngram_repeat) == (1, max_length, 0)
  recipe = rocov2_graph.get_config()
  assert (recipe.decode.beam_size, recipe.decode.max_length, recipe.decode.block_ngram_repeat) == (3, 80, 3)
  assert recipe.model.cache_length == 80


@pytest.fixture(scope="module")
def repeating_port(tmp_path_factory, shared_data, chest_xrays):
  """The seed's captioner at bert-base-uncased's vocabulary size (so the real vocab.txt fits), shaped as
  tests/weights/generation_checks.py says: two favoured words, so that trigrams repeat and blocking would
  show, and [SEP] raised so that two images end early and two run to the seed's 80 tokens; ported by
  `cxrjax port-weights --format seed003-torch`. -> (the torch model, the workdir)."""
  from cxrjax import cli  # pylint: disable=g-import-not-at-top

  folder = tmp_path_factory.mktemp("seed003_port")
  reference = reference_model(
    chest_xrays, TINY_RESNET, vocab_size=30522, embed_dim=32, num_layers=2, num_heads=4, head_scale=8.0
  )
  images = torch.from_numpy(chest_xrays.transpose(0, 3, 1, 2))
  with torch.no_grad(), encoder_runs_once(reference):
    reference.fc_out.bias[list(generation_checks.FAVOURED)] += generation_checks.FAVOUR
    # The greedy captions of all four images at once (generate_caption's argmax steps, [SEP] not yet chosen),
    # and along them the chosen token's logit less [SEP]'s: margins [images, 80].
    tokens, margins = torch.full((len(images), 1), CLS), []
    for _ in range(80):
      logits = reference(images, tokens)[:, -1]  # [images, vocab]
      margins.append((logits.max(-1).values - logits[:, SEP]).numpy())
      tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True)], dim=1)
    reference.fc_out.bias[SEP] += generation_checks.end_bias(np.stack(margins, axis=1))
  checkpoint = folder / "roco_best_model.bin"
  torch.save(reference.state_dict(), checkpoint)
  assert (
    cli.main(
      [
        "port-weights",
        "--format",
        "seed003-torch",
        "--tokenizer",
        str(shared_data / "text/bert-base-uncased-vocab.txt"),
        "--num-heads",
        "4",
        str(checkpoint),
        str(folder / "out"),
      ]
    )
    == 0
  )
  return reference, folder / "out"


def test_a_ported_workdirs_predict_equals_the_seeds_generate_caption(
  shared_data, chest_xrays, tiny_checkpoint, repeating_port, tmp_path, capsys
):
  """`cxrjax predict` on the ported workdir, with no decoding option, on the real images: per image, the seed's
  generate_caption (max_len=80, nothing blocked) token ids exactly and their log-probabilities within 1e-3,
  captions that end early and captions of all 80 tokens, trigrams repeated."""
  from cxrjax import cli
  from cxrjax.jobs import inference  # pylint: disable=g-import-not-at-top

  reference, out = repeating_port
  paths = sorted((shared_data / "iu_xray" / "images").glob("*.png"))
  vocab = shared_data / "text/bert-base-uncased-vocab.txt"
  decode = inference.Predictor.from_workdir(str(out)).config.decode
  assert (decode.beam_size, decode.max_length, decode.block_ngram_repeat) == (1, 80, 0)
  capsys.readouterr()
  assert cli.main(["predict", "--workdir", str(out), *map(str, paths)]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [line["images"] for line in lines] == [[str(p)] for p in paths]
  bert = transformers.BertTokenizer(vocab=str(vocab))
  expected = []
  with encoder_runs_once(reference):
    for line, image in zip(lines, chest_xrays):
      image = torch.from_numpy(image.transpose(2, 0, 1)[None])
      ids, log_probs = generate_caption(image, reference)  # The seed's default max_len, 80.
      expected.append(ids)
      assert line["token_ids"] == ids
      # The text is transformers' BERT decoding of the same ids, but for spacing: cxrjax keeps punctuation a
      # separate word ("lung ."), BERT's basic text form, which the scoring protocols put the raw references in
      # too (cxrjax/metrics/protocols.py); BERT glues it on ("lung.").
      assert line["caption"].replace(" ", "") == bert.decode(ids, skip_special_tokens=True).replace(" ", "")
      np.testing.assert_allclose(line["token_logprobs"], log_probs[: len(ids)], atol=1e-3)
      with torch.no_grad():  # Every choice clear of a tie (the logits agree to 1e-4).
        top_two = reference(image, torch.tensor([[CLS] + ids]))[0].topk(2, dim=-1).values
      assert (top_two[:, 0] - top_two[:, 1]).min().item() > 1e-3
  generation_checks.assert_shaped(expected, 80)
  # The same workdir with the recipe's trigram blocking decodes otherwise: the comparison above would see it.
  predictor = inference.Predictor.from_workdir(str(out))
  predictor.config.decode.block_ngram_repeat = 3
  assert [predictor.predict_report([str(p)])["token_ids"] for p in paths] != expected
  # A checkpoint whose vocabulary is not the tokenizer's (120 rows, not 30522) is refused, naming both.
  assert (
    cli.main(
      [
        "port-weights",
        "--format",
        "seed003-torch",
        "--tokenizer",
        str(vocab),
        str(tiny_checkpoint[1]),
        str(tmp_path / "x"),
      ]
    )
    == 2
  )
  error = capsys.readouterr().err
  assert "120 rows" in error and "30522 tokens" in error and not (tmp_path / "x").exists()
