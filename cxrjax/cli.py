"""The `cxrjax` command: one entry point, one sub-command per job.

  cxrjax port-weights --format {keras-h5,torch} INPUT OUTPUT   import a CheXNet checkpoint
  cxrjax classify --weights DIR IMAGE...                        CheXNet probabilities, one JSON line per image
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
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  from cxrjax.weights.store import WeightsError
  try:
    return args.run(args)
  except WeightsError as error:
    print(f"cxrjax {args.command}: error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
