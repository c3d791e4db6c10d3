"""CheXNet importers: numerical parity with Keras and PyTorch on real chest X-rays, and strict key checks.

The checkpoint files are written here from randomly initialised reference models (Keras 3
`DenseNet121(weights=None)`, and a torchvision-layout PyTorch DenseNet), in the public layouts of the
CheXNet weights: Keras-2 `save_weights` HDF5 and `model.pth.tar`. Nothing is committed.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from cxrjax import cli
from cxrjax.data import transforms
from cxrjax.models.encoders import densenet
from cxrjax.weights import chexnet, store
from tests.weights import torch_densenet

TINY_TORCH = dict(block_sizes=(1, 2), growth_rate=4, stem_features=8, num_classes=14)


@pytest.fixture(scope="module")
def chest_xrays(shared_data):
  paths = sorted((shared_data / "nih_chestxray14" / "images").glob("*.png"))
  assert len(paths) == 15
  preprocessing = transforms.Preprocessing(image_size=224)  # CheXNet's: ImageNet statistics, bilinear
  return paths, np.stack([transforms.load_for_model(path, preprocessing) for path in paths])


def _write_keras2_h5(model, path):
  """The Keras-2 `save_weights` layout of CheXNet-Keras: `layer_names` / `weight_names` attributes,
  Keras 2 layer names ("conv1/conv", "conv1/bn") and ":0" weight suffixes."""
  keras2_name = {"conv1_conv": "conv1/conv", "conv1_bn": "conv1/bn", "conv1_relu": "conv1/relu"}
  with h5py.File(path, "w") as handle:
    names = [keras2_name.get(layer.name, layer.name) for layer in model.layers]
    handle.attrs["layer_names"] = [name.encode() for name in names]
    handle.attrs["keras_version"] = b"2.1.5"
    handle.attrs["backend"] = b"tensorflow"
    for layer, name in zip(model.layers, names):
      group = handle.create_group(name)
      weight_names = [f"{name}/{weight.name}:0" for weight in layer.weights]
      group.attrs["weight_names"] = [w.encode() for w in weight_names]
      for weight_name, weight in zip(weight_names, layer.weights):
        group.create_dataset(weight_name, data=np.asarray(weight.numpy()))


@pytest.mark.slow
def test_keras_h5_import_matches_keras_densenet121_on_real_images(tmp_path, chest_xrays):
  import keras

  keras.utils.set_random_seed(0)
  base = keras.applications.DenseNet121(weights=None, include_top=False, pooling="avg", input_shape=(224, 224, 3))
  logits = keras.layers.Dense(14, name="predictions")(base.output)
  reference = keras.Model(base.input, [base.output, logits])
  rng = np.random.default_rng(0)
  for layer in reference.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      n = layer.gamma.shape[0]
      layer.set_weights(
        [0.5 + rng.random(n), 0.2 * rng.standard_normal(n), 0.2 * rng.standard_normal(n), 0.5 + rng.random(n)]
      )
  h5_path = tmp_path / "brucechou1983_CheXNet_Keras_0.3.0_weights.h5"
  _write_keras2_h5(reference, h5_path)

  assert cli.main(["port-weights", "--format", "keras-h5", str(h5_path), str(tmp_path / "ported")]) == 0
  config, variables, classes = chexnet.load_chexnet(tmp_path / "ported")
  assert config == densenet.DenseNetConfig(bn_epsilon=densenet.KERAS_BN_EPSILON)
  assert classes == list(densenet.CHEXNET_CLASSES)

  _, images = chest_xrays
  want_pooled, want_logits = (np.asarray(a) for a in reference.predict(images, verbose=0))
  got = jax.jit(densenet.DenseNet(config).apply)(variables, images)
  assert want_pooled.std() > 1e-2 and want_logits.std() > 1e-2  # Non-degenerate activations.
  np.testing.assert_allclose(got["pooled"], want_pooled, rtol=0, atol=1e-4)
  np.testing.assert_allclose(got["logits"], want_logits, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_torch_import_matches_pytorch_and_classify_cli(tmp_path, chest_xrays, capsys):
  torch.manual_seed(0)
  reference = torch_densenet.TorchDenseNet().eval()
  torch_densenet.randomize_(reference, seed=0)
  checkpoint = tmp_path / "model.pth.tar"
  torch.save(torch_densenet.chexnet_checkpoint(reference), checkpoint)
  assert cli.main(["port-weights", "--format", "torch", str(checkpoint), str(tmp_path / "ported")]) == 0
  config, _, _ = chexnet.load_chexnet(tmp_path / "ported")
  assert config == densenet.DenseNetConfig(bn_epsilon=densenet.TORCH_BN_EPSILON)

  paths, images = chest_xrays
  with torch.no_grad():
    _, want_logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  want = torch.sigmoid(want_logits).numpy()
  capsys.readouterr()
  assert cli.main(["classify", "--weights", str(tmp_path / "ported"), *map(str, paths)]) == 0
  lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [line["image"] for line in lines] == list(map(str, paths))
  got = np.array([[line["probabilities"][name] for name in densenet.CHEXNET_CLASSES] for line in lines])
  assert want.std() > 1e-3
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def _tiny_torch_files(tmp_path):
  torch.manual_seed(1)
  reference = torch_densenet.TorchDenseNet(**TINY_TORCH).eval()
  torch_densenet.randomize_(reference, seed=1)
  return reference


@pytest.mark.parametrize("layout", ["chexnet", "torchvision"])
def test_torch_importer_reads_both_key_styles_exactly(tmp_path, layout):
  reference = _tiny_torch_files(tmp_path)
  state = torch_densenet.chexnet_checkpoint(reference) if layout == "chexnet" else reference.state_dict()
  torch.save(state, tmp_path / "weights.pth")
  variables, config = chexnet.import_chexnet("torch", tmp_path / "weights.pth")
  assert config.block_sizes == (1, 2) and config.growth_rate == 4 and config.stem_features == 8
  images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
  with torch.no_grad():
    want_pooled, want_logits = reference(torch.from_numpy(images).permute(0, 3, 1, 2))
  got = densenet.DenseNet(config).apply(variables, images)
  np.testing.assert_allclose(got["pooled"], want_pooled.numpy(), atol=1e-5)
  np.testing.assert_allclose(got["logits"], want_logits.numpy(), atol=1e-5)


def test_partial_or_unknown_torch_checkpoint_names_the_keys(tmp_path):
  state = _tiny_torch_files(tmp_path).state_dict()
  missing = dict(state)
  del missing["features.denseblock2.denselayer1.conv2.weight"]
  torch.save(missing, tmp_path / "partial.pth")
  with pytest.raises(store.WeightsError, match=r"missing tensors.*denseblock2\.denselayer1\.conv2\.weight"):
    chexnet.import_chexnet("torch", tmp_path / "partial.pth")

  extra = dict(state, **{"features.extra_head.weight": torch.zeros(3)})
  torch.save(extra, tmp_path / "extra.pth")
  with pytest.raises(store.WeightsError, match=r"unexpected tensors.*features\.extra_head\.weight"):
    chexnet.import_chexnet("torch", tmp_path / "extra.pth")

  torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
  with pytest.raises(store.WeightsError, match="other.pth.*not a DenseNet"):
    chexnet.import_chexnet("torch", tmp_path / "other.pth")


class ArbitraryObject:
  """Stands for any pickled code object: weights_only loading must refuse to unpickle it."""


def test_torch_importer_refuses_pickled_code(tmp_path):
  torch.save({"state_dict": ArbitraryObject()}, tmp_path / "evil.pth")
  with pytest.raises(store.WeightsError, match=r"evil.pth.*weights_only=True"):
    chexnet.import_chexnet("torch", tmp_path / "evil.pth")


def test_keras_importer_errors_name_the_file(tmp_path):
  (tmp_path / "garbage.h5").write_bytes(b"not hdf5")
  with pytest.raises(store.WeightsError, match="garbage.h5.*HDF5"):
    chexnet.import_chexnet("keras-h5", tmp_path / "garbage.h5")
  with h5py.File(tmp_path / "empty.h5", "w") as handle:
    handle.create_group("something")
  with pytest.raises(store.WeightsError, match="empty.h5.*layer_names"):
    chexnet.import_chexnet("keras-h5", tmp_path / "empty.h5")
  with pytest.raises(store.WeightsError, match="nothing_here.h5.*not found"):
    chexnet.import_chexnet("keras-h5", tmp_path / "nothing_here.h5")


def test_port_weights_cli_reports_errors_without_traceback(tmp_path, capsys):
  assert cli.main(["port-weights", "--format", "torch", str(tmp_path / "x.pth"), str(tmp_path / "o")]) == 2
  assert "x.pth: not found" in capsys.readouterr().err


def test_loading_weights_checks_them_against_the_architecture(tmp_path):
  config = densenet.DenseNetConfig(**TINY_TORCH)
  variables = densenet.DenseNet(config).init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
  chexnet.save_chexnet(tmp_path / "ok", variables, config, source={"format": "test"})
  loaded_config, loaded, _ = chexnet.load_chexnet(tmp_path / "ok")
  assert loaded_config == config
  jax.tree.map(np.testing.assert_array_equal, loaded, jax.tree.map(np.asarray, variables))

  wrong = dict(config.to_dict(), growth_rate=8)
  model_json = json.loads((tmp_path / "ok" / "model.json").read_text())
  (tmp_path / "ok" / "model.json").write_text(json.dumps(dict(model_json, config=wrong)))
  with pytest.raises(store.WeightsError, match="do not match the architecture"):
    chexnet.load_chexnet(tmp_path / "ok")
  with pytest.raises(store.WeightsError, match="model.json: not found"):
    chexnet.load_chexnet(tmp_path / "missing")
