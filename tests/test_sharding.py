"""`--distributed` specs (sharding.parse_distributed); joining the runtime itself is run by
tests/test_multiprocess.py, whose worker processes call sharding.initialize_distributed."""

import pytest

from cxrjax import cli, sharding
from cxrjax.errors import ConfigError


def test_distributed_specs():
  assert sharding.parse_distributed("") is None
  assert sharding.parse_distributed("auto") == {}
  assert sharding.parse_distributed("10.0.0.2:1234,4,3") == dict(
      coordinator_address="10.0.0.2:1234", num_processes=4, process_id=3)


@pytest.mark.parametrize("spec", ["localhost", "localhost:1,2", "localhost:1,2,2", "localhost:1,x,0", "host,2,0"])
def test_bad_distributed_specs(spec):
  with pytest.raises(ConfigError, match="--distributed"):
    sharding.parse_distributed(spec)


def test_bad_distributed_spec_is_one_line_before_any_work(capsys):
  assert cli.main(["train", "--config=configs/demo.py:smoke", "--workdir=/nonexistent/x",
                   "--distributed=localhost:1,2,5"]) == 2
  error = capsys.readouterr().err
  assert error.strip() == ("cxrjax train: error: --distributed='localhost:1,2,5': process id 5 is not in 0..1")
