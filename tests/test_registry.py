"""The one plug-in rule (cxrjax/core/registry.py): an unknown name is one line naming the field and listing the
known names, a name is registered once, and each package's registry holds exactly the plug-ins its modules
define once the package alone is imported."""

import importlib
import inspect
import json
import pathlib
import pkgutil
import subprocess
import sys

import ml_collections
import pytest

from cxrjax import evaluators, models
from cxrjax.core import registry
from cxrjax.evaluators import base as evaluators_base
from cxrjax.data import datasets
from cxrjax.data import registry as data_registry
from cxrjax.core.errors import ConfigError, UserError
from cxrjax.models import base


class PluginError(UserError):
  pass


def test_an_unknown_name_is_one_line_naming_the_field_and_the_known_names():
  plugins = registry.Registry("widget", "config.widget.name", PluginError)

  @plugins.register("round")
  def round_widget():
    return "round"

  plugins.add("square", "a square")
  assert plugins.get("round") is round_widget and round_widget() == "round"  # The decorator returns its argument.
  assert plugins.names() == ("round", "square") and list(plugins) == ["round", "square"] and len(plugins) == 2
  assert "square" in plugins and "oval" not in plugins
  assert dict(plugins.items()) == {"round": round_widget, "square": "a square"}
  assert list(plugins.values()) == [round_widget, "a square"]
  with pytest.raises(PluginError, match=r"^config\.widget\.name='oval': unknown widget; known: round, square$"):
    plugins.get("oval")
  with pytest.raises(PluginError, match=r"^--widget='oval': unknown widget; known: round, square$"):
    plugins.get("oval", field="--widget")
  assert issubclass(registry.Registry("widget", "--widget").error, registry.UnknownName)


def test_a_name_is_registered_once():
  plugins = registry.Registry("widget", "config.widget.name")
  plugins.add("round", 1)
  with pytest.raises(ValueError, match="widget 'round' is registered twice"):
    plugins.add("round", 1)
  with pytest.raises(ValueError, match="widget 'round' is registered twice"):
    plugins.register("round")(lambda: None)
  assert plugins.get("round") == 1


def test_the_packages_unknown_names_raise_their_error_class():
  with pytest.raises(ConfigError, match=r"^config\.model\.name='vit': unknown model family; known: agcnn, "):
    models.get("vit")
  with pytest.raises(datasets.DataConfigError, match=r"^config\.data\.name='mimic': unknown dataset; known: "):
    datasets.dataset("mimic")
  with pytest.raises(ConfigError, match=r"^config\.evaluators\.ce\.type='rouge': unknown evaluator; known: "):
    evaluators.from_config({"ce": {"type": "rouge"}})


def _registered_by_the_packages_alone() -> dict[str, list[str]]:
  """The names each registry holds in a fresh interpreter that imports just the packages (here, other tests
  may already have imported every module, which registers its plug-ins whether or not the package does)."""
  script = (
    "import json; from cxrjax import evaluators, models; from cxrjax.data import datasets; "
    "print(json.dumps(dict(models=list(models.FAMILIES), datasets=list(datasets.names()), "
    "evaluators=list(evaluators.REGISTRY))))"
  )
  root = pathlib.Path(__file__).parents[1]  # This checkout's cxrjax, whatever the installed one.
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=root)
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def registered():
  return _registered_by_the_packages_alone()


def _import_all(package) -> list:
  """Every module of `package` and its subpackages, imported."""
  found = [package]
  for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
    found.append(importlib.import_module(info.name))
  return found


def test_every_model_family_is_registered_and_imported_by_models(registered):
  defined = {
    cls
    for module in _import_all(models)
    for _, cls in inspect.getmembers(module, inspect.isclass)
    if cls.__module__ == module.__name__ and issubclass(cls, base.Family)
  } - {base.Family, base.Captioner, base.Classifier}
  assert defined == set(models.FAMILIES.values())  # Each family class carries its decorator ...
  assert sorted(registered["models"]) == sorted(models.FAMILIES)  # ... and models/__init__ imports its module.
  assert {"attention_captioner", "agcnn", "git"} <= set(models.FAMILIES)


def test_every_dataset_package_is_registered_and_imported_by_datasets(registered):
  data_package = importlib.import_module("cxrjax.data")
  for info in pkgutil.iter_modules(data_package.__path__, "cxrjax.data."):
    if info.ispkg:  # A dataset is a package whose source module registers it.
      importlib.import_module(info.name)
  assert sorted(registered["datasets"]) == sorted(data_registry.DATASETS) == list(datasets.names())
  assert {"phantom", "iu_xray", "chestxray14"} <= set(datasets.names())
  for name, dataset in data_registry.DATASETS.items():
    assert dataset.name == name


def test_every_evaluator_class_is_registered_under_its_name(registered):
  """Each evaluator module's Evaluator subclasses are registered, and evaluators/__init__ imports every module."""
  package = importlib.import_module("cxrjax.evaluators")
  defined = set()
  for info in pkgutil.iter_modules(package.__path__, "cxrjax.evaluators."):
    module = importlib.import_module(info.name)
    defined |= {
      cls
      for _, cls in inspect.getmembers(module, inspect.isclass)
      if cls.__module__ == module.__name__
      and issubclass(cls, evaluators_base.Evaluator)
      and cls is not evaluators_base.Evaluator
    }
  assert defined == set(evaluators.REGISTRY.values())
  assert all(evaluators.REGISTRY.get(name).name == name for name in evaluators.REGISTRY)
  assert sorted(registered["evaluators"]) == sorted(evaluators.REGISTRY)
  assert {"text", "chexbert", "bertscore", "baselines", "findings_oracle", "auroc"} <= set(evaluators.REGISTRY)


def test_optional_family_members_have_defaults_so_callers_need_not_probe():
  config = ml_collections.ConfigDict
  for name, family in models.FAMILIES.items():
    assert family.decode_limit_field is None or hasattr(family, family.decode_limit_field), name
    if family.check_initialization is base.Family.check_initialization:  # The default accepts any earlier run.
      family.check_initialization(config(), config(), "/runs/earlier")
  assert models.get("lstm_captioner").decode_limit_field is None and models.get("git").decode_limit_field
  agcnn = models.get("agcnn")
  agcnn.check_initialization(config(dict(stage=1)), config(dict(stage=2)), "/runs/stage1")
  with pytest.raises(ConfigError, match="starts from an earlier stage"):
    agcnn.check_initialization(config(dict(stage=2)), config(dict(stage=2)), "/runs/stage2")
