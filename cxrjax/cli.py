"""The `cxrjax` command: one entry point, one thin sub-command per job.

  cxrjax port-weights --format {keras-h5,torch} INPUT OUTPUT   import a CheXNet checkpoint
  cxrjax port-weights --format seed003-torch --tokenizer VOCAB roco_best_model.bin OUT   seed 003's captioner
  cxrjax port-weights --format hf HF_DIR OUT [--tokenizer VOCAB] [--prompt TEXT]        GIT / BLIP from the hub
  cxrjax port-weights --format chexbert chexbert.pth OUT [--tokenizer vocab.txt]   the CheXbert report labeler
  cxrjax label --workdir OUT REPORTS.txt [--batch-size N]      CheXbert labels, one JSON line per report line
  cxrjax classify --weights DIR IMAGE...                        CheXNet probabilities, one JSON line per image
  cxrjax prepare iu_xray --manual-dir DIR --data-dir DIR        build the TFDS dataset and vocabulary
  cxrjax train --config=configs/demo.py --workdir=DIR [--config.x=y ...]
  cxrjax sweep --config=configs/demo.py --workdir=DIR --seeds=5 [--set=FIELD=V1,V2 ...]   runs x seeds, a table
  cxrjax compile --config=configs/roco_git.py:tpu --topology=v5e:2x4   HBM, FLOPs, step time on a TPU slice (libtpu)
  cxrjax evaluate --workdir DIR --split val|test [--leaderboard-json PATH] [--labeler DIR] [--bertscore-model DIR]
      generate reports and score them (with the run's config.evaluators and those the flags add)
  cxrjax score PREDICTIONS [--format auto|jsonl|csv|rexrank] --evaluators text,chexbert,bertscore [--labeler DIR]
      [--bertscore-model DIR] [--protocol r2gen|coco|imageclef] [--out metrics.json]   score any predictions file
  cxrjax predict --workdir DIR FRONTAL [LATERAL] [--attention-maps OUT_DIR]   one study's report
  cxrjax predict --workdir DIR [--greedy | --beam-size K] [--max-new-tokens N] IMAGE...   one caption per image
  cxrjax predict-agcnn --workdir DIR --out-dir OUT IMAGE...    AG-CNN findings + attention picture
  cxrjax auroc --predictions CSV --labels Data_Entry_2017.csv   score ChestX-ray14 predictions
  cxrjax serve --workdir DIR [--workdir DIR2 ...] [--host 127.0.0.1] [--port 8000]   web demo and JSON API

A mistake in the input (config, files, arguments) ends with one line, `cxrjax <command>: error: ...`, and
exit status 2; programming errors keep their traceback.
"""

import argparse
import dataclasses
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from cxrjax.core import config as config_lib
from cxrjax.jobs import aot, evaluate, inference, score, sweep, train
from cxrjax.core import errors, registry, sharding
from cxrjax import evaluators
from cxrjax.run import workdir
from cxrjax.data import prepare
from cxrjax.core.errors import ConfigError
from cxrjax.metrics import classification as classification_metrics
from cxrjax.jobs.serve import server as serve
from cxrjax.weights import chexbert_labeler, formats, hf, seed003

SEED003_FORMAT = seed003.FORMAT  # The ResNet-50 + graph + transformer captioner's PyTorch state dict.
HF_FORMAT = hf.FORMAT  # A Hugging Face model directory (GIT, BLIP): config.json + model.safetensors.
CHEXBERT_FORMAT = chexbert_labeler.FORMAT  # CheXbert's chexbert.pth -> a labeler directory.

# The summary line of `evaluate` (metrics.json has every score): the IU X-ray tables' metrics, then seed 002's.
CAPTION_SCORES = (
  "BLEU-1",
  "BLEU-2",
  "BLEU-3",
  "BLEU-4",
  "METEOR",
  "ROUGE-L",
  "CIDEr",
  "ROUGE-1",
  "ROUGE-2",
  "ROUGE-Lsum",
  "sacreBLEU",
)


@dataclasses.dataclass(frozen=True)
class Command:
  """A sub-command of `cxrjax`: `add_parser(commands)` adds its sub-parser to `commands` (cxrjax's
  `add_subparsers()`), whose default `run(args)` runs it. A command that parses its own arguments (absl
  flags, so that ml_collections' --config.x=y overrides work) has `main(argv)` as well: `main` hands it the
  arguments after its name before argparse sees them (its sub-parser only lists it in `cxrjax --help`)."""

  add_parser: Callable[[Any], argparse.ArgumentParser]
  main: Callable[[list[str]], int | None] | None = None


# The sub-commands, in the order `cxrjax --help` lists them; `build_parser` builds the parser from them.
COMMANDS: registry.Registry[Command] = registry.Registry("command", "cxrjax COMMAND", ConfigError)


def command(
  name: str, help: str, arguments: Callable[[argparse.ArgumentParser], None] | None = None, absl: bool = False
) -> Callable[[Callable], Callable]:
  """A decorator registering its argument, the function that runs the sub-command `name`, in COMMANDS:
  `run(args)` with the argparse arguments `arguments(parser)` adds; or, with `absl`, `run(argv)` on the
  arguments after the name (the command parses them itself; its sub-parser, without -h, lists it)."""

  def register(run: Callable) -> Callable:
    def add_parser(commands: Any) -> argparse.ArgumentParser:
      parser = commands.add_parser(name, help=help, add_help=not absl)
      if arguments is not None:
        arguments(parser)
      parser.set_defaults(run=(lambda args: run([])) if absl else run)
      return parser

    COMMANDS.add(name, Command(add_parser, main=run if absl else None))
    return run

  return register


def _port_weights_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--format",
    required=True,
    choices=formats.FORMATS.names(),
    help="; ".join(f"{name}: {entry.help}" for name, entry in formats.FORMATS.items()),
  )
  parser.add_argument(
    "--tokenizer",
    default=None,
    help=f"{SEED003_FORMAT}: the vocabulary the checkpoint was trained with (bert-base-uncased's "
    f"vocab.txt, or a tokenizer.json); {HF_FORMAT}: used instead of the directory's files; "
    f"{CHEXBERT_FORMAT}: bert-base-uncased's vocab.txt (default: vocab.txt beside the checkpoint)",
  )
  parser.add_argument(
    "--prompt",
    default="",
    help=f'{HF_FORMAT}, BLIP: text every caption starts with (BLIP\'s captioning recipe: "a picture of"); default none',
  )
  parser.add_argument(
    "--num-heads",
    type=int,
    default=None,
    help=f"{SEED003_FORMAT}, {CHEXBERT_FORMAT}: attention "
    "heads (not in the tensors' shapes; default: the seed's 8, CheXbert's 12)",
  )
  parser.add_argument(
    "input",
    help="the checkpoint file (.h5, .pth/.pth.tar, the seed's roco_best_model.bin, "
    f"CheXbert's chexbert.pth), or a Hugging Face model directory ({HF_FORMAT}: config.json + model.safetensors; GIT, BLIP)",
  )
  parser.add_argument(
    "output",
    help="directory to write: variables.safetensors + model.json (CheXNet), or a "
    f"workdir that evaluate / predict / config.init.from_workdir read ({SEED003_FORMAT}), or a "
    f"labeler directory that `label` reads ({CHEXBERT_FORMAT})",
  )


@command("port-weights", "convert a CheXNet checkpoint to cxrjax weights", _port_weights_arguments)
def _port_weights(args: argparse.Namespace) -> int:
  """The format's porting function (its registry entry, cxrjax/weights/formats.py) with the optional flags it
  reads; a run it returns becomes a workdir at OUTPUT (the importers are a layer below workdir.py)."""
  entry = formats.FORMATS.get(args.format)
  ported = entry.port(args.input, args.output, **{option: getattr(args, option) for option in entry.options})
  if ported.config is not None:
    if ported.tokenizer_in_workdir:
      ported.config.data.tokenizer = str(workdir.absolute_path(args.output) / workdir.TOKENIZER_FILE)
    workdir.create_from_variables(args.output, ported.config, ported.tokenizer, ported.variables, ported.meta)
  print(json.dumps({"output": str(args.output), "format": args.format, **ported.summary}))
  return 0


def _classify_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--weights", required=True, help="directory written by port-weights")
  parser.add_argument("--batch-size", type=int, default=16)
  parser.add_argument("--image-size", type=int, default=224)
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("images", nargs="+", help="PNG or JPEG files")


@command("classify", "CheXNet probabilities for chest X-ray images", _classify_arguments)
def _classify(args: argparse.Namespace) -> int:
  predictor = inference.Predictor.from_chexnet_weights(args.weights, image_size=args.image_size, dtype=args.dtype)
  failures = []

  def on_error(error):
    failures.append(error)
    print(f"cxrjax classify: error: {error}", file=sys.stderr)

  for result in predictor.classify_files(args.images, batch_size=args.batch_size, on_error=on_error):
    print(json.dumps(result), flush=True)
  if failures:
    print(f"cxrjax classify: {len(failures)} of {len(args.images)} images could not be read", file=sys.stderr)
  return 1 if failures else 0


def _label_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help=f"a labeler directory (port-weights --format {CHEXBERT_FORMAT})")
  parser.add_argument("--batch-size", type=int, default=16, help="reports per jitted batch (the last is padded)")
  parser.add_argument("reports", help="a UTF-8 text file, one report per line (an empty line is an empty report)")


@command("label", "CheXbert labels of reports, one JSON line per line of REPORTS.txt", _label_arguments)
def _label(args: argparse.Namespace) -> int:
  """One report per line of REPORTS.txt -> one JSON line each: both label conventions by observation."""
  if args.batch_size < 1:
    raise ConfigError(f"--batch-size {args.batch_size}: must be at least 1")
  try:
    reports = pathlib.Path(args.reports).read_text(encoding="utf-8").splitlines()
  except UnicodeDecodeError as error:
    raise ConfigError(f"{args.reports}: not UTF-8 text ({error.reason} at byte {error.start})") from None
  labeler = chexbert_labeler.Labeler.load(args.workdir)
  for line, labels in enumerate(labeler.label(reports, batch_size=args.batch_size), start=1):
    print(json.dumps({"line": line, **labels}))
  return 0


COMMANDS.add("prepare", Command(prepare.add_parser))  # Its parser: cxrjax/data/prepare.py.


TRAIN_USAGE = "usage: cxrjax train --config=configs/X.py[:arg] --workdir=DIR [--config.field=value ...]"


@command("train", "train a model: --config=configs/X.py[:arg] --workdir=DIR [--config.field=value ...]", absl=True)
def _train(argv: Sequence[str]) -> int:
  """`cxrjax train`: absl flags, so that ml_collections' --config.x=y overrides work."""
  if "--help" in argv or "-h" in argv:
    print(
      TRAIN_USAGE + "\n\n  --config: an ml_collections config file (configs/*.py[:arg])\n"
      "  --workdir: directory for checkpoints, metrics and the tokenizer\n"
      "  --config.<field>=<value>: overrides a field of the config"
    )
    return 0
  _run_train(list(argv))
  return 0


def define_distributed_flag(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string(
    "distributed",
    "",
    "join JAX's distributed runtime first: auto (TPU VMs) or "
    "HOST:PORT,NUM_PROCESSES,PROCESS_ID; every process runs the same command",
    flag_values=flag_values,
  )


def _run_train(argv: list[str]) -> None:
  def define_flags(values):
    flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and the tokenizer", flag_values=values)
    define_distributed_flag(values)

  flag_values = config_lib.parse_run_flags(argv, "cxrjax train", TRAIN_USAGE, define_flags)
  if not flag_values.workdir:
    raise ConfigError(f"--workdir is required ({TRAIN_USAGE})")
  sharding.initialize_distributed(flag_values.distributed)
  train.train_and_evaluate(flag_values.config, flag_values.workdir)


@command(
  "sweep",
  "a grid of settings x seeds, each trained and evaluated: "
  "--config=... --workdir=DIR --seeds=N [--set=FIELD=V1,V2 ...]",
  absl=True,
)
def _sweep(argv: Sequence[str]) -> int:
  """`cxrjax sweep`: absl flags too (--config.x=y), like train (cxrjax/jobs/sweep.py)."""
  return sweep.main(list(argv))


@command(
  "compile",
  "compile a config's train / evaluate / serve programs for a TPU slice, here (libtpu): HBM per chip, FLOPs, "
  "a step-time estimate: --config=... --topology=v5e:2x4",
  absl=True,
)
def _compile(argv: Sequence[str]) -> int:
  """`cxrjax compile`: absl flags too (cxrjax/jobs/aot.py)."""
  return aot.main(list(argv))


def _distributed_argument(parser: argparse.ArgumentParser) -> None:
  """argparse's --distributed, as define_distributed_flag's (sharding.initialize_distributed reads it)."""
  parser.add_argument(
    "--distributed",
    default="",
    help="join JAX's distributed runtime first: auto (TPU VMs) or HOST:PORT,NUM_PROCESSES,PROCESS_ID; "
    "every process runs the same command",
  )


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--split", required=True, choices=("val", "test"))
  parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  parser.add_argument("--beam-size", type=int, default=None, help="default: the config's")
  parser.add_argument("--max-examples", type=int, default=None)
  parser.add_argument(
    "--leaderboard-json",
    default=None,
    metavar="PATH",
    help="also write the predictions as ReXrank's IU X-ray prediction file (R2Gen's "
    "test split with config.data.report_sections=findings_impression only)",
  )
  parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts Java)")
  parser.add_argument(
    "--data-dir",
    default=None,
    help="the prepared dataset, if not the run's config.data.data_dir (e.g. for a workdir made by port-weights)",
  )
  _distributed_argument(parser)
  parser.add_argument(
    "--labeler",
    default=None,
    metavar="DIR",
    help="also score clinical efficacy with "
    f"this CheXbert labeler directory (port-weights --format {CHEXBERT_FORMAT}); "
    "replaces the run's config.evaluators.chexbert",
  )
  parser.add_argument(
    "--bertscore-model",
    default=None,
    metavar="DIR",
    help="also score BERTScore with "
    "this Hugging Face BERT / RoBERTa / DistilBERT / DeBERTa directory; replaces the run's "
    "config.evaluators.bertscore",
  )
  parser.add_argument(
    "--bertscore-layer",
    type=int,
    default=None,
    metavar="N",
    help="bertscore: the hidden state after N layers (default: bert-score's for the model type)",
  )
  parser.add_argument("--bertscore-idf", action="store_true", help="bertscore: idf weights from the references")
  parser.add_argument(
    "--bertscore-baseline",
    default=None,
    metavar="FILE",
    help="bertscore: rescale with this baseline file (bert-score's rescale_baseline/<lang>/<model>.tsv)",
  )


def _evaluate_evaluators(args: argparse.Namespace) -> dict[str, dict]:
  """The evaluator sections `evaluate`'s flags add to the run's config.evaluators (as `score`'s flags name them)."""
  sections = {}
  if args.labeler:
    sections["chexbert"] = dict(labeler=args.labeler)
  if args.bertscore_model:
    sections["bertscore"] = dict(
      model=args.bertscore_model, layer=args.bertscore_layer, idf=args.bertscore_idf, baseline=args.bertscore_baseline
    )
  else:
    given = [
      flag
      for flag, value in (
        ("--bertscore-layer", args.bertscore_layer),
        ("--bertscore-idf", args.bertscore_idf),
        ("--bertscore-baseline", args.bertscore_baseline),
      )
      if value
    ]
    if given:
      raise ConfigError(f"{given[0]}: needs --bertscore-model DIR")
  return sections


@command("evaluate", "predict a split and score it", _evaluate_arguments)
def _evaluate(args: argparse.Namespace) -> int:
  sharding.initialize_distributed(args.distributed)
  output = evaluate.evaluate(
    args.workdir,
    args.split,
    checkpoint=args.checkpoint,
    beam_size=args.beam_size,
    max_examples=args.max_examples,
    meteor=not args.no_meteor,
    data_dir=args.data_dir,
    leaderboard_json=args.leaderboard_json,
    evaluators=_evaluate_evaluators(args),
  )
  summary = {"split": args.split, "step": output["step"], "written": f"{args.workdir}/eval/{args.split}/"}
  if "leaderboard_json" in output:
    summary["leaderboard_json"] = output["leaderboard_json"]["path"]
  scores = output["scores"]
  if "baselines" in output:
    summary["num_studies"] = scores["num_studies"]
    summary["model"] = {n: scores.get(n) for n in CAPTION_SCORES}
    # The evaluators' headline scores beside the text metrics (their classes know them: evaluators.headline).
    summary["model"].update(
      evaluators.headline(
        {name: evaluators.REGISTRY.get(entry["type"]) for name, entry in output.get("evaluators", {}).items()}, scores
      )
    )
    for name, baseline in output["baselines"].items():
      summary[name] = {n: baseline["scores"].get(n) for n in CAPTION_SCORES}
  else:
    summary.update(stage=output.get("stage"), mean_AUROC=scores["mean_AUROC"])
    # The classes outside the mean (AG-CNN's "No Finding"), beside it.
    summary.update(
      {key: scores[key] for key in (f"AUROC/{name}" for name in evaluators.auroc.OUTSIDE_MEAN) if key in scores}
    )
  print(json.dumps(summary))
  return 0


def _score_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "predictions",
    help="cxrjax's predictions.jsonl, a CSV or JSONL with reference and "
    "generated (optional id), or ReXrank's IU X-ray prediction JSON",
  )
  parser.add_argument(
    "--format",
    default="auto",
    choices=("auto",) + score.FORMATS,
    help="default: by the suffix (.jsonl, .csv, .json = rexrank)",
  )
  parser.add_argument(
    "--evaluators", default="text", help="comma-separated, of: " + ", ".join(sorted(evaluators.REGISTRY))
  )
  parser.add_argument(
    "--protocol",
    default="r2gen",
    help="text: the scoring protocol that normalises both sides (r2gen, coco, imageclef; metrics/protocols.py)",
  )
  parser.add_argument("--no-meteor", action="store_true", help="text: skip METEOR (it starts Java)")
  parser.add_argument(
    "--labeler",
    default=None,
    metavar="DIR",
    help=f"chexbert: a labeler directory (port-weights --format {CHEXBERT_FORMAT})",
  )
  parser.add_argument(
    "--bertscore-model",
    default=None,
    metavar="DIR",
    help="bertscore: a Hugging Face "
    "BERT / RoBERTa / DistilBERT / DeBERTa directory (config.json, model.safetensors, tokenizer files)",
  )
  parser.add_argument(
    "--bertscore-layer",
    type=int,
    default=None,
    metavar="N",
    help="bertscore: the hidden state after N layers (default: bert-score's for the model type)",
  )
  parser.add_argument("--bertscore-idf", action="store_true", help="bertscore: idf weights from the references")
  parser.add_argument(
    "--bertscore-baseline",
    default=None,
    metavar="FILE",
    help="bertscore: rescale with this baseline file (bert-score's rescale_baseline/<lang>/<model>.tsv)",
  )
  parser.add_argument(
    "--batch-size",
    type=int,
    default=64,
    help="chexbert, bertscore: reports per jitted batch, rounded up to a multiple of the device count",
  )
  parser.add_argument(
    "--out",
    default=None,
    metavar="metrics.json",
    help="write every score and the evaluators' provenance (the labeler checkpoint's SHA-256) there",
  )
  _distributed_argument(parser)


@command("score", "score a predictions file with evaluators (text, CheXbert CE, BERTScore)", _score_arguments)
def _score(args: argparse.Namespace) -> int:
  """A predictions file (cxrjax's predictions.jsonl, a CSV / JSONL of reference and generated text, ReXrank's
  JSON) scored by the evaluators the flags configure -> one JSON summary line (score.py), from process 0."""
  names = [name.strip() for name in args.evaluators.split(",") if name.strip()]
  config = score.evaluator_config(
    names,
    protocol=args.protocol,
    meteor=not args.no_meteor,
    labeler=args.labeler,
    batch_size=args.batch_size,
    bertscore_model=args.bertscore_model,
    bertscore_layer=args.bertscore_layer,
    bertscore_idf=args.bertscore_idf,
    bertscore_baseline=args.bertscore_baseline,
  )
  sharding.initialize_distributed(args.distributed)  # Before the mesh: it spans every process's devices.
  summary = score.score_file(args.predictions, config, file_format=args.format, out=args.out)
  if sharding.is_lead_process():
    print(json.dumps(summary))
  return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True)
  parser.add_argument(
    "--attention-maps", default=None, metavar="OUT_DIR", help="write one PNG per generated word and summary.png"
  )
  search = parser.add_mutually_exclusive_group()
  search.add_argument("--greedy", action="store_true", help="greedy search instead of the config's beam search")
  search.add_argument(
    "--beam-size",
    type=int,
    default=None,
    metavar="K",
    help="beam search with K beams (the config's length penalty and normalization)",
  )
  parser.add_argument(
    "--max-new-tokens",
    type=int,
    default=None,
    metavar="N",
    help="most tokens generated, the end token included (default: config decode.max_length)",
  )
  parser.add_argument(
    "images",
    nargs="+",
    help="the views of one study (frontal, then lateral); for a model "
    "that reads one view, each image is its own study and gets its own line",
  )


@command("predict", "generate the report of one study", _predict_arguments)
def _predict(args: argparse.Namespace) -> int:
  """A study of 1..views images -> one JSON line; a model that reads one view -> one line per image."""
  predictor = inference.Predictor.from_workdir(args.workdir)
  studies = [[path] for path in args.images] if predictor.preprocessing.num_views == 1 else [args.images]
  for study in studies:
    result = predictor.predict_report(
      study,
      attention_dir=args.attention_maps,
      greedy=args.greedy,
      beam_size=args.beam_size,
      max_new_tokens=args.max_new_tokens,
    )
    print(json.dumps(result), flush=True)
  return 0


def _predict_agcnn_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--workdir", required=True, help="an AG-CNN training workdir")
  parser.add_argument("--out-dir", required=True, help="where to write one PNG per image")
  parser.add_argument("images", nargs="+")


@command("predict-agcnn", "AG-CNN findings and where it looked", _predict_agcnn_arguments)
def _predict_agcnn(args: argparse.Namespace) -> int:
  predictor = inference.Predictor.from_workdir(args.workdir)
  if predictor.family != "agcnn":
    raise inference.PredictionError(
      f"{args.workdir}: holds a {predictor.family} model; predict-agcnn needs an AG-CNN run"
    )
  for result in predictor.classify_files(args.images, figures_dir=args.out_dir):
    print(json.dumps(result))
  return 0


COMMANDS.add("auroc", Command(classification_metrics.add_parser))  # cxrjax/metrics/classification.py
COMMANDS.add("serve", Command(serve.add_parser))  # cxrjax/jobs/serve/server.py


def build_parser() -> argparse.ArgumentParser:
  """`cxrjax`'s parser: one sub-parser per registered command, in registration order."""
  parser = argparse.ArgumentParser(
    prog="cxrjax", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  commands = parser.add_subparsers(dest="command", required=True)
  for entry in COMMANDS.names():
    COMMANDS.get(entry).add_parser(commands)
  return parser


def _guarded(command: str, job) -> int:
  """Runs `job()`; a user's mistake becomes one line on stderr and exit status 2 (errors.guarded: the one
  place that does so, for every sub-command)."""
  return errors.guarded(command, job)


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] in COMMANDS and COMMANDS.get(argv[0]).main is not None:  # absl flags: its own parsing.
    own_main = COMMANDS.get(argv[0]).main
    return _guarded(argv[0], lambda: own_main(argv[1:]))
  args = build_parser().parse_args(argv)
  return _guarded(args.command, lambda: args.run(args))


if __name__ == "__main__":
  sys.exit(main())
