"""Experiment sweeps: a grid of config settings times several seeds, each run trained, its best checkpoint
evaluated, and the results tabulated.

  cxrjax sweep --config=configs/X.py[:arg] --workdir=DIR --seeds=5 [--set=FIELD=V1,V2 ...] \
      [--split=test] [--no_meteor] [--config.field=value ...]

Runs go one after another in DIR/<setting>/seed_<k> (train.seed = k; <setting> names the --set values, or
"base"). The sweep is resumable: a run whose evaluation is written is skipped, and an interrupted run
resumes from its latest checkpoint (cxrjax/jobs/train.py). On a TPU VM slice every worker runs the same sweep
command, so each run uses the whole slice. At the end DIR holds:
  results.csv   one row per setting: runs, then mean and std (over seeds, ddof=1) of every score (with
                config.evaluators, theirs too: evaluate writes them into metrics.json's "scores")
  results.md    the same table, "mean ± std"
  curves.png    the validation curve of the best-checkpoint metric (config.eval.best_metric, an evaluator's
                headline score too: validation logs them) of every run, one colour per setting
"""

import ast
import copy
import csv
import dataclasses
import itertools
import json
import math
import re
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")  # Files only: no display on TPU VMs or CI.
from matplotlib import pyplot  # noqa: E402  (after choosing the backend)

from absl import flags  # noqa: E402
from etils import epath  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

from cxrjax.core import config as config_lib  # noqa: E402
from cxrjax.jobs import evaluate, train
from cxrjax.core import files, sharding
from cxrjax.run import workdir as workdir_lib  # noqa: E402
from cxrjax.core.errors import ConfigError  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Setting:
  """One point of the grid: (config field, value) pairs, in --set order."""

  values: tuple[tuple[str, Any], ...]

  @property
  def name(self) -> str:
    """A folder name: "base", or "train.num_steps=4,model.num_layers=2" with unsafe characters replaced."""
    if not self.values:
      return "base"
    return re.sub(r"[^A-Za-z0-9_.=,+-]", "_", ",".join(f"{field}={value}" for field, value in self.values))


def _field(config: ml_collections.ConfigDict, path: str) -> tuple[ml_collections.ConfigDict, str]:
  """The ConfigDict holding dotted `path` and the last key; a ConfigError names an unknown field."""
  *parents, key = path.removeprefix("config.").split(".")
  node = config
  for index, part in enumerate(parents):
    if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
      raise ConfigError(f"--set {path}: the config has no section {'.'.join(parents[: index + 1])!r}")
    node = node[part]
  if key not in node:
    raise ConfigError(
      f"--set {path}: unknown config field; {'.'.join(parents) or 'the config'} has {sorted(node.keys())}"
    )
  return node, key


def _parse_value(text: str, current: Any, path: str) -> Any:
  """`text` as the type of the field's current value (ml_collections refuses a change of type)."""
  try:
    if isinstance(current, bool):
      if text.lower() not in ("true", "false"):
        raise ValueError(text)
      return text.lower() == "true"
    if isinstance(current, (int, float)):
      return type(current)(ast.literal_eval(text))
    if isinstance(current, str):
      return text
    return ast.literal_eval(text)
  except (ValueError, SyntaxError) as error:
    raise ConfigError(f"--set {path}: {text!r} is not a {type(current).__name__}") from error


def grid(config: ml_collections.ConfigDict, assignments: Sequence[str]) -> list[Setting]:
  """--set "field=v1,v2" assignments -> every combination, each value typed as the field is."""
  axes = []
  for assignment in assignments:
    path, sep, values = assignment.partition("=")
    if not sep or not values:
      raise ConfigError(f"--set {assignment!r}: expected FIELD=VALUE[,VALUE...]")
    node, key = _field(config, path)
    path = path.removeprefix("config.")
    axes.append([(path, _parse_value(v, node[key], path)) for v in values.split(",")])
  return [Setting(tuple(combination)) for combination in itertools.product(*axes)]


def run_config(config: ml_collections.ConfigDict, setting: Setting, seed: int) -> ml_collections.ConfigDict:
  config = copy.deepcopy(config)
  with config.unlocked():
    for path, value in setting.values:
      node, key = _field(config, path)
      node[key] = value
    config.train.seed = seed
  return config


def _validation_curve(run_dir: epath.Path, metric: str) -> list[tuple[int, float]]:
  path = workdir_lib.metrics_path(run_dir)
  if not path.exists():
    return []
  records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [(r["step"], float(r[metric])) for r in records if r.get("split") == "val" and metric in r]


def summarize(rows: dict[str, list[dict[str, float]]]) -> tuple[list[str], list[dict[str, Any]]]:
  """Per setting, the scores of its runs -> (metric names, one row per setting with n, mean and std)."""
  metrics = sorted(
    {
      k
      for runs in rows.values()
      for scores in runs
      for k, v in scores.items()
      if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "num_studies"
    }
  )
  table = []
  for name, runs in rows.items():
    row: dict[str, Any] = {"setting": name, "runs": len(runs)}
    for metric in metrics:
      values = np.array([float(s[metric]) for s in runs if metric in s])
      row[f"{metric}_mean"] = float(values.mean()) if len(values) else math.nan
      row[f"{metric}_std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    table.append(row)
  return metrics, table


def write_results(out_dir: epath.Path, metrics: list[str], table: list[dict[str, Any]]) -> None:
  header = ["setting", "runs"] + [f"{m}_{s}" for m in metrics for s in ("mean", "std")]
  lines = []
  with files.open_atomic(out_dir / "results.csv", "w", newline="") as handle:
    writer = csv.DictWriter(handle, fieldnames=header)
    writer.writeheader()
    writer.writerows(table)
  lines.append("| setting | runs | " + " | ".join(metrics) + " |")
  lines.append("|---|---|" + "---|" * len(metrics))
  for row in table:
    cells = []
    for metric in metrics:
      mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
      cells.append(f"{mean:.4f}" + ("" if math.isnan(std) else f" ± {std:.4f}"))
    lines.append(f"| {row['setting']} | {row['runs']} | " + " | ".join(cells) + " |")
  files.write_text(out_dir / "results.md", "\n".join(lines) + "\n")


def plot_curves(path: epath.Path, curves: dict[str, list[list[tuple[int, float]]]], metric: str) -> None:
  figure, axes = pyplot.subplots(figsize=(6, 4), dpi=100)
  colours = pyplot.rcParams["axes.prop_cycle"].by_key()["color"]
  for index, (name, runs) in enumerate(curves.items()):
    for seed, curve in enumerate(runs):
      if curve:
        steps, values = zip(*curve)
        axes.plot(
          steps,
          values,
          color=colours[index % len(colours)],
          alpha=0.8,
          marker="o",
          markersize=3,
          label=name if seed == 0 else None,
        )
  axes.set_xlabel("step")
  axes.set_ylabel(f"validation {metric}")
  axes.legend(fontsize=8)
  figure.tight_layout()
  with files.open_atomic(path, "wb") as handle:
    figure.savefig(handle, format="png")
  pyplot.close(figure)


def sweep(
  config: ml_collections.ConfigDict,
  workdir: str,
  seeds: int,
  assignments: Sequence[str] = (),
  split: str = "test",
  meteor: bool = False,
) -> list[dict[str, Any]]:
  """Trains and evaluates every (setting, seed) not done yet; writes the results; returns the table."""
  if seeds < 1:
    raise ConfigError(f"--seeds={seeds}: need at least one seed")
  out_dir = epath.Path(workdir)
  settings = grid(config, assignments)
  metric = config.eval.get("best_metric", "")
  rows: dict[str, list[dict[str, float]]] = {}
  curves: dict[str, list[list[tuple[int, float]]]] = {}
  for setting in settings:
    for seed in range(seeds):
      run_dir = out_dir / setting.name / f"seed_{seed}"
      metrics_file = workdir_lib.eval_dir(run_dir, split) / "metrics.json"
      if not metrics_file.exists():
        print(f"sweep: {setting.name} seed {seed} -> {run_dir}", flush=True)
        train.train_and_evaluate(run_config(config, setting, seed), run_dir)
        evaluate.evaluate(str(run_dir), split, meteor=meteor, baselines_too=False)
      scores = json.loads(metrics_file.read_text())["scores"]
      rows.setdefault(setting.name, []).append(scores)
      curves.setdefault(setting.name, []).append(_validation_curve(run_dir, metric) if metric else [])
  metrics, table = summarize(rows)
  if sharding.is_lead_process():
    write_results(out_dir, metrics, table)
    if metric:
      plot_curves(out_dir / "curves.png", curves, metric)
  return table


USAGE = "usage: cxrjax sweep --config=configs/X.py[:arg] --workdir=DIR --seeds=N [--set=FIELD=V1,V2 ...]"


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "the sweep's directory (one sub-folder per run)", flag_values=flag_values)
  flags.DEFINE_integer("seeds", 3, "runs per setting (train.seed = 0 .. seeds - 1)", flag_values=flag_values)
  flags.DEFINE_multi_string("set", [], "FIELD=V1,V2: a grid axis (repeatable)", flag_values=flag_values)
  flags.DEFINE_enum(
    "split", "test", ["val", "test"], "the split each best checkpoint is scored on", flag_values=flag_values
  )
  flags.DEFINE_bool("meteor", False, "also score METEOR (starts Java)", flag_values=flag_values)
  flags.DEFINE_string(
    "distributed",
    "",
    "join JAX's distributed runtime first: auto (TPU VMs) or HOST:PORT,NUM_PROCESSES,PROCESS_ID",
    flag_values=flag_values,
  )


def main(argv: Sequence[str]) -> int:
  """`cxrjax sweep` (absl flags, so that --config.x=y overrides work as in `cxrjax train`); prints one JSON
  line per setting."""
  if "--help" in argv or "-h" in argv:
    help_flags = flags.FlagValues()
    _define_flags(help_flags)
    print(
      USAGE
      + "\n\n  --config: an ml_collections config file\n  --config.<field>=<value>: overrides a field\n"
      + help_flags.get_help()
    )
    return 0
  flag_values = config_lib.parse_run_flags(argv, "cxrjax sweep", USAGE, _define_flags)
  if not flag_values.workdir:
    raise ConfigError(f"--workdir is required ({USAGE})")
  sharding.initialize_distributed(flag_values.distributed)
  table = sweep(
    flag_values.config,
    flag_values.workdir,
    flag_values.seeds,
    flag_values.set,
    split=flag_values.split,
    meteor=flag_values.meteor,
  )
  for row in table:
    print(json.dumps(row))
  return 0
