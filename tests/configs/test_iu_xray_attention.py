"""configs/iu_xray_attention.py's docstring commands, run as written (smoke variant) on the real fixtures
(conftest.py), and `predict` on the run they leave."""

import json

from cxrjax import cli
from tests.configs.commands import ROOT
from tests.configs.conftest import check_commands_ran


def test_docstring_commands_run_as_written(sandbox, docstring_runs):
  check_commands_ran("iu_xray_attention", sandbox, docstring_runs)


def test_iu_xray_real_reports_end_to_end_to_predict(sandbox, docstring_runs, monkeypatch, capsys):
  """After the IU X-ray docstring's commands: every test study was scored once against its real cleaned
  report, and `predict` on two real Open-i PNGs writes a report and its attention maps."""
  check_commands_ran("iu_xray_attention", sandbox, docstring_runs)
  monkeypatch.chdir(sandbox)
  workdir = sandbox / "workdirs/iu_attention"
  predictions = [json.loads(line) for line in (workdir / "eval/test/predictions.jsonl").read_text().splitlines()]
  assert len(predictions) == len({p["id"] for p in predictions}) > 30
  assert all(p["reference"].strip(" .") for p in predictions)
  metrics = json.loads((workdir / "eval/test/metrics.json").read_text())
  assert metrics["scores"]["num_studies"] == len(predictions)
  assert set(metrics["baselines"]) == {"most_common_report", "best_constant_report"}
  images = sorted(str(p) for p in (ROOT.parent / "shared/data/iu_xray/images").glob("CXR54_*.png"))
  assert cli.main(["predict", "--workdir", str(workdir), "--attention-maps", "maps", *images]) == 0
  result = json.loads(capsys.readouterr().out)
  assert result["images"] == images and isinstance(result["report"], str)
  if result["token_ids"]:
    assert len(result["attention_maps"]) == len(result["token_ids"]) + 1
