"""`cxrjax sweep`: a grid times seeds on the smoke config, each run trained and evaluated once, results
tabulated from the runs' own metrics files, and a rerun that trains nothing."""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image

from cxrjax import cli
from cxrjax.jobs import sweep, train
from cxrjax.core import config as config_lib
from cxrjax.core.errors import ConfigError

SMOKE = [
  "--config=configs/demo.py:smoke",
  "--config.data.num_train=16",
  "--config.data.num_val=8",
  "--config.data.num_test=8",
]


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
  out = tmp_path_factory.mktemp("sweep")
  assert cli.main(["sweep", *SMOKE, f"--workdir={out}", "--seeds=2", "--set=decode.beam_size=1,2"]) == 0
  return out


def test_every_setting_and_seed_is_a_run_with_its_own_seed(finished_sweep):
  for setting in ("decode.beam_size=1", "decode.beam_size=2"):
    for seed in (0, 1):
      run = finished_sweep / setting / f"seed_{seed}"
      config = json.loads((run / "config.json").read_text())
      assert config["train"]["seed"] == seed and config["decode"]["beam_size"] == int(setting[-1])
      assert (run / "eval" / "test" / "metrics.json").is_file()
  first = (finished_sweep / "decode.beam_size=1" / "seed_0" / "metrics.jsonl").read_text()
  second = (finished_sweep / "decode.beam_size=1" / "seed_1" / "metrics.jsonl").read_text()
  assert first != second  # Different seeds, different training.


def test_results_table_is_mean_and_std_of_the_runs_scores(finished_sweep):
  rows = {row["setting"]: row for row in csv.DictReader((finished_sweep / "results.csv").open())}
  assert set(rows) == {"decode.beam_size=1", "decode.beam_size=2"}
  for setting, row in rows.items():
    scores = [
      json.loads((finished_sweep / setting / f"seed_{s}" / "eval/test/metrics.json").read_text())["scores"]
      for s in (0, 1)
    ]
    assert row["runs"] == "2"
    for metric in ("BLEU-4", "ROUGE-L", "CIDEr"):
      values = [s[metric] for s in scores]
      assert math.isclose(float(row[f"{metric}_mean"]), np.mean(values), abs_tol=1e-12)
      assert math.isclose(float(row[f"{metric}_std"]), np.std(values, ddof=1), abs_tol=1e-12)
  table = (finished_sweep / "results.md").read_text().splitlines()
  assert table[0].startswith("| setting | runs |") and len(table) == 4 and " ± " in table[2]


def test_curves_png_is_written(finished_sweep):
  with Image.open(finished_sweep / "curves.png") as image:
    assert image.format == "PNG" and image.size == (600, 400)


def test_a_rerun_trains_nothing_and_gives_the_same_table(finished_sweep, monkeypatch):
  before = (finished_sweep / "results.csv").read_text()
  monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail("a finished run was retrained"))
  assert cli.main(["sweep", *SMOKE, f"--workdir={finished_sweep}", "--seeds=2", "--set=decode.beam_size=1,2"]) == 0
  assert (finished_sweep / "results.csv").read_text() == before


@pytest.mark.parametrize(
  "assignment, message",
  [
    ("decode.no_such_field=1", "unknown config field"),
    ("nosection.x=1", "no section 'nosection'"),
    ("decode.beam_size=two", "'two' is not a int"),
    ("decode.beam_size", "expected FIELD=VALUE"),
  ],
)
def test_bad_set_is_one_line_naming_it(tmp_path, assignment, message, capsys):
  assert cli.main(["sweep", *SMOKE, f"--workdir={tmp_path}", "--seeds=1", f"--set={assignment}"]) == 2
  error = capsys.readouterr().err
  assert error.startswith("cxrjax sweep: error: --set") and message in error and "Traceback" not in error


def test_bad_grid_values_raise_config_errors():
  config = config_lib.load_config_file("configs/demo.py:smoke")
  with pytest.raises(ConfigError, match="unknown config field"):
    sweep.grid(config, ["train.nope=1"])
  settings = sweep.grid(config, ["train.num_steps=2,3", "decode.beam_size=1,2"])
  assert [s.name for s in settings] == [
    "train.num_steps=2,decode.beam_size=1",
    "train.num_steps=2,decode.beam_size=2",
    "train.num_steps=3,decode.beam_size=1",
    "train.num_steps=3,decode.beam_size=2",
  ]
