"""configs/chestxray14_chexnet.py's docstring commands, run as written (smoke variant) on the real fixtures (conftest.py)."""

from tests.configs.conftest import check_commands_ran


def test_docstring_commands_run_as_written(sandbox, docstring_runs):
  check_commands_ran("chestxray14_chexnet", sandbox, docstring_runs)
