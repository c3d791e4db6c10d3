"""What the configs claim: every config documents its commands, and each has its file in tests/configs/
that runs them as written (the config in its smoke variant) on the real data fixtures; the claims about
the data."""

from cxrjax.data import chestxray14
from tests.configs.commands import CONFIGS, ROOT, docstring_commands


def test_every_config_documents_its_commands():
  for name in CONFIGS:
    commands = docstring_commands(name)
    assert any(c[:2] == ["cxrjax", "train"] for c in commands), name
    assert any(c[:2] == ["cxrjax", "evaluate"] for c in commands), name


def test_every_config_has_a_test_file_that_runs_its_commands():
  for name in CONFIGS:
    test_file = ROOT / "tests/configs" / f"test_{name}.py"
    assert test_file.is_file(), f"{test_file} missing: configs/{name}.py's docstring commands run nowhere"
    assert f'check_commands_ran("{name}"' in test_file.read_text(), test_file


def test_agcnn_images_per_epoch_is_the_real_patient_split_train_set(shared_data):
  from configs import chestxray14_agcnn  # pylint: disable=g-import-not-at-top

  entries = chestxray14.read_label_file(shared_data / "nih_chestxray14/Data_Entry_2017_v2020.csv.gz")
  split = chestxray14.patient_split(entries)  # What `prepare chestxray14 --split=random` builds.
  assert len(split["train"]) == chestxray14_agcnn.IMAGES_PER_EPOCH
