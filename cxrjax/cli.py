"""The `cxrjax` command: one entry point, one sub-command per job.

  cxrjax port-weights --format {keras-h5,torch} INPUT OUTPUT   import a CheXNet checkpoint
  cxrjax classify --weights DIR IMAGE...                        CheXNet probabilities, one JSON line per image
  cxrjax prepare iu_xray --manual-dir DIR --data-dir DIR        build the TFDS dataset and vocabulary
  cxrjax train --config=configs/demo.py --workdir=DIR [--config.x=y ...]
  cxrjax evaluate --workdir DIR --split val|test                generate reports and score them
  cxrjax predict --workdir DIR FRONTAL [LATERAL] [--attention-maps OUT_DIR]   one study's report
  cxrjax predict-agcnn --workdir DIR --out-dir OUT IMAGE...    AG-CNN findings + attention picture
  cxrjax auroc --predictions CSV --labels Data_Entry_2017.csv   score ChestX-ray14 predictions
"""

import argparse
import json
import sys
from collections.abc import Sequence


def _port_weights(args: argparse.Namespace) -> int:
  import hashlib
  from cxrjax.weights import chexnet
  variables, config = chexnet.import_chexnet(args.format, args.input)
  digest = hashlib.sha256(open(args.input, "rb").read()).hexdigest()
  chexnet.save_chexnet(args.output, variables, config,
                       source={"format": args.format, "file": str(args.input), "sha256": digest})
  print(json.dumps({"output": str(args.output), "format": args.format, "block_sizes": config.block_sizes,
                    "num_classes": config.num_classes, "bn_epsilon": config.bn_epsilon}))
  return 0


def _classify(args: argparse.Namespace) -> int:
  from cxrjax import classify
  return classify.classify_files(args.weights, args.images, batch_size=args.batch_size,
                                 image_size=args.image_size, dtype=args.dtype)


def _evaluate(args: argparse.Namespace) -> int:
  from cxrjax import evaluate, models
  import ml_collections, pathlib
  config_path = pathlib.Path(args.workdir) / "config.json"
  if not config_path.is_file():
    print(f"cxrjax evaluate: error: {config_path}: not found; is {args.workdir} a training workdir?",
          file=sys.stderr)
    return 2
  model_config = ml_collections.ConfigDict(json.loads(config_path.read_text())["model"])
  if models.task_of(model_config) == "classification":
    output = evaluate.evaluate_classifier(args.workdir, args.split, checkpoint=args.checkpoint,
                                          max_examples=args.max_examples)
    print(json.dumps({"split": args.split, "step": output["step"], "stage": output["stage"],
                      "mean_AUROC": output["scores"]["mean_AUROC"],
                      "written": f"{args.workdir}/eval/{args.split}/"}))
    return 0
  output = evaluate.run_evaluation(args.workdir, args.split, checkpoint=args.checkpoint,
                                   beam_size=args.beam_size, max_examples=args.max_examples,
                                   meteor=not args.no_meteor)
  scores, blind = output["scores"], output["blind_baseline"]["scores"]
  names = ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr"]
  print(json.dumps({"split": args.split, "step": output["step"], "num_studies": scores["num_studies"],
                    "model": {n: scores.get(n) for n in names}, "blind_baseline": {n: blind.get(n) for n in names},
                    "written": f"{args.workdir}/eval/{args.split}/"}))
  return 0


def _predict(args: argparse.Namespace) -> int:
  from cxrjax import predict
  from cxrjax.data.images import ImageError
  try:
    result = predict.predict(args.workdir, args.images, attention_dir=args.attention_maps)
  except (ImageError, ValueError, FileNotFoundError) as error:
    print(f"cxrjax predict: error: {error}", file=sys.stderr)
    return 2
  print(json.dumps(result))
  return 0


def _predict_agcnn(args: argparse.Namespace) -> int:
  from cxrjax import predict
  from cxrjax.data.images import ImageError
  try:
    results = predict.predict_agcnn(args.workdir, args.images, args.out_dir)
  except (ImageError, ValueError, FileNotFoundError) as error:
    print(f"cxrjax predict-agcnn: error: {error}", file=sys.stderr)
    return 2
  for result in results:
    print(json.dumps(result))
  return 0


def _train(argv: Sequence[str]) -> int:
  """`cxrjax train` parses absl flags so that ml_collections' --config.x=y overrides work."""
  from absl import flags
  from ml_collections import config_flags
  from cxrjax import train
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "an ml_collections config file (configs/*.py[:arg])",
                                  flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "directory for checkpoints, metrics and the vocabulary",
                      flag_values=flag_values)
  if "--help" in argv or "-h" in argv:
    print("usage: cxrjax train --config=configs/X.py[:arg] --workdir=DIR [--config.field=value ...]\n")
    print(flag_values.get_help())
    return 0
  try:
    flag_values(["cxrjax train", *argv])
    if flag_values.config is None or not flag_values.workdir:
      raise flags.Error("--config and --workdir are required")
  except (flags.Error, KeyError, AttributeError, ValueError) as error:
    print(f"cxrjax train: error: {error}", file=sys.stderr)
    return 2
  try:
    train.train_and_evaluate(flag_values.config, flag_values.workdir)
  except train.ConfigError as error:
    print(f"cxrjax train: error: {error}", file=sys.stderr)
    return 2
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="cxrjax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  commands = parser.add_subparsers(dest="command", required=True)

  port = commands.add_parser("port-weights", help="convert a CheXNet checkpoint to cxrjax weights")
  port.add_argument("--format", required=True, choices=("keras-h5", "torch"))
  port.add_argument("input", help="the checkpoint file (.h5, or .pth/.pth.tar)")
  port.add_argument("output", help="directory to write (variables.safetensors + model.json)")
  port.set_defaults(run=_port_weights)

  classify = commands.add_parser("classify", help="CheXNet probabilities for chest X-ray images")
  classify.add_argument("--weights", required=True, help="directory written by port-weights")
  classify.add_argument("--batch-size", type=int, default=16)
  classify.add_argument("--image-size", type=int, default=224)
  classify.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  classify.add_argument("images", nargs="+", help="PNG or JPEG files")
  classify.set_defaults(run=_classify)

  from cxrjax.data import prepare
  prepare.add_parser(commands)

  # Listed for --help; `main` hands `train` to absl before argparse sees it (ml_collections flags).
  train = commands.add_parser("train", help="train a model: --config=configs/X.py[:arg] --workdir=DIR "
                              "[--config.field=value ...]", add_help=False)
  train.set_defaults(run=lambda args: _train([]))

  evaluate = commands.add_parser("evaluate", help="generate reports for a split and score them")
  evaluate.add_argument("--workdir", required=True)
  evaluate.add_argument("--split", required=True, choices=("val", "test"))
  evaluate.add_argument("--checkpoint", choices=("best", "latest"), default="best")
  evaluate.add_argument("--beam-size", type=int, default=None, help="default: the config's")
  evaluate.add_argument("--max-examples", type=int, default=None)
  evaluate.add_argument("--no-meteor", action="store_true", help="skip METEOR (it starts Java)")
  evaluate.set_defaults(run=_evaluate)

  predict = commands.add_parser("predict", help="generate the report of one study")
  predict.add_argument("--workdir", required=True)
  predict.add_argument("--attention-maps", default=None, metavar="OUT_DIR",
                       help="write one PNG per generated word and summary.png")
  predict.add_argument("images", nargs="+", help="the frontal view, then optionally the lateral view")
  predict.set_defaults(run=_predict)

  predict_agcnn = commands.add_parser("predict-agcnn", help="AG-CNN findings and where it looked")
  predict_agcnn.add_argument("--workdir", required=True, help="an AG-CNN training workdir")
  predict_agcnn.add_argument("--out-dir", required=True, help="where to write one PNG per image")
  predict_agcnn.add_argument("images", nargs="+")
  predict_agcnn.set_defaults(run=_predict_agcnn)

  from cxrjax import auroc
  auroc.add_parser(commands)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and argv[0] == "train":
    return _train(argv[1:])
  args = build_parser().parse_args(argv)
  from cxrjax.weights.store import WeightsError
  try:
    return args.run(args)
  except WeightsError as error:
    print(f"cxrjax {args.command}: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
