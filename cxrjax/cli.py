"""The `cxrjax` command: one entry point, one thin sub-command per job.

  cxrjax port-weights --format {keras-h5,torch} INPUT OUTPUT   import a CheXNet checkpoint
  cxrjax classify --weights DIR IMAGE...                        CheXNet probabilities, one JSON line per image
  cxrjax prepare iu_xray --manual-dir DIR --data-dir DIR        build the TFDS dataset and vocabulary
  cxrjax train --config=configs/demo.py --workdir=DIR [--config.x=y ...]
  cxrjax evaluate --workdir DIR --split val|test                generate reports and score them
  cxrjax predict --workdir DIR FRONTAL [LATERAL] [--attention-maps OUT_DIR]   one study's report
  cxrjax predict-agcnn --workdir DIR --out-dir OUT IMAGE...    AG-CNN findings + attention picture
  cxrjax auroc --predictions CSV --labels Data_Entry_2017.csv   score ChestX-ray14 predictions

A mistake in the input (config, files, arguments) ends with one line, `cxrjax <command>: error: ...`, and
exit status 2; programming errors keep their traceback.
"""

import argparse
import hashlib
import json
import pathlib
import sys
from collections.abc import Sequence

from absl import flags
import ml_collections
from ml_collections import config_flags

from cxrjax import config as config_lib
from cxrjax import evaluate, inference, train, workdir
from cxrjax.data import datasets, prepare
from cxrjax.errors import ConfigError, UserError
from cxrjax.metrics import classification as classification_metrics
from cxrjax.weights import chexnet, seed003

SEED003_FORMAT = "seed003-torch"  # The ResNet-50 + graph + transformer captioner's PyTorch state dict.

CAPTION_SCORES = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")


def _port_weights(args: argparse.Namespace) -> int:
  if not pathlib.Path(args.input).is_file():
    raise chexnet.WeightsError(f"{args.input}: not found")
  with open(args.input, "rb") as handle:
    digest = hashlib.sha256(handle.read()).hexdigest()
  if args.format == SEED003_FORMAT:
    return _port_seed003(args, digest)
  variables, config = chexnet.import_chexnet(args.format, args.input)
  chexnet.save_chexnet(args.output, variables, config,
                       source={"format": args.format, "file": str(args.input), "sha256": digest})
  print(json.dumps({"output": str(args.output), "format": args.format, "block_sizes": config.block_sizes,
                    "num_classes": config.num_classes, "bn_epsilon": config.bn_epsilon}))
  return 0


def _port_seed003(args: argparse.Namespace, digest: str) -> int:
  """The seed-003 captioner's state dict -> a workdir (config.json, tokenizer.json, checkpoints/best) that
  `evaluate`, `predict` and `config.init.from_workdir` read."""
  if not args.tokenizer:
    raise ConfigError(f"--format {SEED003_FORMAT} needs --tokenizer: bert-base-uncased's vocab.txt (or a "
                      "tokenizer.json); the checkpoint does not contain the vocabulary")
  tokenizer = datasets.load_or_build_tokenizer(ml_collections.ConfigDict(dict(
      name="rocov2", tokenizer=str(args.tokenizer), cleaning="none")), None)
  variables, model_config, vocab_size = seed003.import_seed003(args.input, num_heads=args.num_heads)
  if vocab_size != len(tokenizer):
    raise chexnet.WeightsError(f"{args.input}: its vocabulary has {vocab_size} rows, the tokenizer "
                               f"{args.tokenizer} {len(tokenizer)} tokens")
  model_config.encoder.preprocessing = dict(config_lib.IMAGENET_PREPROCESSING)
  config = config_lib.rocov2_experiment(model_config.to_dict(), tokenizer=str(args.tokenizer))
  workdir.create_from_variables(args.output, config, tokenizer, variables,
                                {"imported_from": str(args.input), "sha256": digest})
  print(json.dumps({"output": str(args.output), "format": args.format, "vocab_size": vocab_size,
                    "d_model": model_config.d_model, "num_layers": model_config.num_layers}))
  return 0


def _classify(args: argparse.Namespace) -> int:
  predictor = inference.Predictor.from_chexnet_weights(args.weights, image_size=args.image_size,
                                                       dtype=args.dtype)
  failures = []
  def on_error(error):
    failures.append(error)
    print(f"cxrjax classify: error: {error}", file=sys.stderr)
  for result in predictor.classify_files(args.images, batch_size=args.batch_size, on_error=on_error):
    print(json.dumps(result), flush=True)
  if failures:
    print(f"cxrjax classify: {len(failures)} of {len(args.images)} images could not be read", file=sys.stderr)
  return 1 if failures else 0


def _evaluate(args: argparse.Namespace) -> int:
  output = evaluate.evaluate(args.workdir, args.split, checkpoint=args.checkpoint, beam_size=args.beam_size,
                             max_examples=args.max_examples, meteor=not args.no_meteor, data_dir=args.data_dir)
  summary = {"split": args.split, "step": output["step"], "written": f"{args.workdir}/eval/{args.split}/"}
  scores = output["scores"]
  if "baselines" in output:
    summary["num_studies"] = scores["num_studies"]
    summary["model"] = {n: scores.get(n) for n in CAPTION_SCORES}
    for name, baseline in output["baselines"].items():
      summary[name] = {n: baseline["scores"].get(n) for n in CAPTION_SCORES}
  else:
    summary.update(stage=output.get("stage"), mean_AUROC=scores["mean_AUROC"])
  print(json.dumps(summary))
  return 0


def _predict(args: argparse.Namespace) -> int:
  """A study of 1..views images -> one JSON line; a model that reads one view -> one line per image."""
  predictor = inference.Predictor.from_workdir(args.workdir)
  studies = [[path] for path in args.images] if predictor.preprocessing.num_views == 1 else [args.images]
  for study in studies:
    result = predictor.predict_report(study, attention_dir=args.attention_maps, greedy=args.greedy)
    print(json.dumps(result), flush=True)
  return 0


def _predict_agcnn(args: argparse.Namespace) -> int:
  predictor = inference.Predictor.from_workdir(args.workdir)
  if predictor.name != "agcnn":
    raise inference.PredictionError(f"{args.workdir}: holds a {predictor.name} model; predict-agcnn needs "
                                    "an AG-CNN run")
  for result in predictor.classify_files(args.images, figures_dir=args.out_dir):
    print(json.dumps(result))
  return 0


def _train(argv: Sequence[str]) -> int:
  """`cxrjax train` parses absl flags so that ml_collections' --config.x=y overrides work."""
  flag_values = flags.FlagValues()
  # sys_argv: the overrides (--config.x=y) are found in these arguments, not in the process's own.
  config_flags.DEFINE_config_file("config", None, "an ml_collections config file (configs/*.py[:arg])",
                                  flag_values=flag_values, lock_config=True,
                                  sys_argv=["cxrjax train", *argv])
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and the tokenizer",
                      flag_values=flag_values)
  if "--help" in argv or "-h" in argv:
    print("usage: cxrjax train --config=configs/X.py[:arg] --workdir=DIR [--config.field=value ...]\n")
    print(flag_values.get_help())
    return 0
  try:
    flag_values(["cxrjax train", *argv])
    if flag_values.config is None or not flag_values.workdir:
      raise flags.Error("--config and --workdir are required")
  except (flags.Error, KeyError, AttributeError, ValueError, FileNotFoundError) as error:
    print(f"cxrjax train: error: {error}", file=sys.stderr)
    return 2
  return _guarded("train", lambda: train.train_and_evaluate(flag_values.config, flag_values.workdir) and None)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="cxrjax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)

  port = commands.add_parser("port-weights", help="convert a CheXNet checkpoint to cxrjax weights")
  port.add_argument("--format", required=True, choices=chexnet.FORMATS + (SEED003_FORMAT,))
  port.add_argument("--tokenizer", default=None,
                    help=f"{SEED003_FORMAT}: the vocabulary the checkpoint was trained with (bert-base-uncased's "
                         "vocab.txt, or a tokenizer.json)")
  port.add_argument("--num-heads", type=int, default=8, help=f"{SEED003_FORMAT}: attention heads (not in the "
                    "tensors' shapes; the seed uses 8)")
  port.add_argument("input", help="the checkpoint file (.h5, .pth/.pth.tar, or the seed's roco_best_model.bin)")
  port.add_argument("output", help="directory to write: variables.safetensors + model.json (CheXNet), or a "
                    f"workdir that evaluate / predict / config.init.from_workdir read ({SEED003_FORMAT})")
  port.set_defaults(run=_port_weights)

  classify = commands.add_parser("classify", help="CheXNet probabilities for chest X-ray images")
  classify.add_argument("--weights", required=True, help="directory written by port-weights")
  classify.add_argument("--batch-size", type=int, default=16)
  classify.add_argument("--image-size", type=int, default=224)
  classify.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  classify.add_argument("images", nargs="+", help="PNG or JPEG files")
  classify.set_defaults(run=_classify)

  prepare.add_parser(commands)

  # Listed for --help; `main` hands `train` to absl before argparse sees it (ml_collections flags).
  train_parser = commands.add_parser("train", help="train a model: --config=configs/X.py[:arg] --workdir=DIR "
                                     "[--config.field=value ...]", add_help=False)
  train_parser.set_defaults(run=lambda args: _train([]))

  evaluate_parser = commands.add_parser("evaluate", help="predict a split and score it")
  evaluate_parser.add_argument("--workdir", required=True)
  evaluate_parser.add_argument("--split", required=True, choices=("val", "test"))
  evaluate_parser.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  evaluate_parser.add_argument("--beam-size", type=int, default=None, help="default: the config's")
  evaluate_parser.add_argument("--max-examples", type=int, default=None)
  evaluate_parser.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts Java)")
  evaluate_parser.add_argument("--data-dir", default=None, help="the prepared dataset, if not the run's "
                               "config.data.data_dir (e.g. for a workdir made by port-weights)")
  evaluate_parser.set_defaults(run=_evaluate)

  predict = commands.add_parser("predict", help="generate the report of one study")
  predict.add_argument("--workdir", required=True)
  predict.add_argument("--attention-maps", default=None, metavar="OUT_DIR",
                       help="write one PNG per generated word and summary.png")
  predict.add_argument("--greedy", action="store_true", help="greedy search instead of the config's beam search")
  predict.add_argument("images", nargs="+", help="the views of one study (frontal, then lateral); for a model "
                       "that reads one view, each image is its own study and gets its own line")
  predict.set_defaults(run=_predict)

  predict_agcnn = commands.add_parser("predict-agcnn", help="AG-CNN findings and where it looked")
  predict_agcnn.add_argument("--workdir", required=True, help="an AG-CNN training workdir")
  predict_agcnn.add_argument("--out-dir", required=True, help="where to write one PNG per image")
  predict_agcnn.add_argument("images", nargs="+")
  predict_agcnn.set_defaults(run=_predict_agcnn)

  classification_metrics.add_parser(commands)
  return parser


def _guarded(command: str, job) -> int:
  """Runs `job()`; a user's mistake becomes one line on stderr and exit status 2."""
  try:
    status = job()
  except (UserError, FileNotFoundError) as error:  # FileNotFoundError: a path given that is not there.
    print(f"cxrjax {command}: error: {error}", file=sys.stderr)
    return 2
  return 0 if status is None else status


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "train":
    return _train(argv[1:])
  args = build_parser().parse_args(argv)
  return _guarded(args.command, lambda: args.run(args))


if __name__ == "__main__":
  sys.exit(main())
