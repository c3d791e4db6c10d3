"""Where a compiled TPU train step's bytes go: XLA's "bytes accessed" of a config's train step beside the
operand and result bytes of each top-level instruction of the compiled program, grouped by what made it.

  python benchmarks/tpu_bytes_by_source.py [--config configs/roco_git.py:tpu] [--topology v5e:2x2]
      [--batch-size 8]

The step is compiled on this machine for the slice as `cxrjax compile` does (cxrjax/jobs/aot.py; libtpu:
`pip install -e '.[tpu-compile]'`). Each top-level instruction (entry, loop and branch computations; not
the insides of fusions) is counted as XLA's cost analysis counts one, its operands' bytes plus its
result's, and put in one group:
  compiler_transfers   the TPU compiler's own asynchronous slices and copies between memory spaces
                       (HBM and on-chip memories; *-start / *-done pairs of slice and copy)
  collectives          all-gather, reduce-scatter, all-reduce, collective-permute and their async parts
  attention            the attention's score and context products and the softmax around them
  model                the rest of the model's forward and backward pass (named by the model's class)
  other                the rest with a source (optimizer, loss, gradient clipping, ...)
  no_source            instructions the compiler made without a source location (e.g. ConcatBitcast)
One JSON line: the config, slice, batch per chip, XLA's bytes accessed and FLOPs, and per group its bytes
(GB), its share of the counted bytes and its instruction count. The counted total is not XLA's: XLA
weighs the asynchronous pairs otherwise; the shares say what the program is made of.
"""

import argparse
import collections
import json
import pathlib
import re
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from cxrjax import models  # noqa: E402
from cxrjax.core import config as config_lib  # noqa: E402
from cxrjax.jobs import aot  # noqa: E402

ARRAY = re.compile(r"\b(" + "|".join(aot.DTYPE_BYTES) + r")\[([0-9,]*)\]")
INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.+?)\s+([\w\-]+)\((.*)$")
FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "while", "conditional", "call"}
FREE |= {"after-all", "partition-id", "replica-id"}
COLLECTIVE = re.compile("|".join((*aot.COLLECTIVES, "AsyncCollective")))
ATTENTION_PRODUCTS = ("bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd")
SOFTMAX_PARTS = {"sub", "mul", "exp", "reduce_sum", "reduce_max", "max", "div", "convert_element_type", "select_n"}


def array_bytes(shape: str) -> int:
  """The bytes of every array in an HLO shape (a tuple: all its elements)."""
  total = 0
  for dtype, dims in ARRAY.findall(shape):
    count = 1
    for size in filter(None, dims.split(",")):
      count *= int(size)
    total += count * aot.DTYPE_BYTES[dtype]
  return total


def group_of(opcode: str, rest: str, model_class: str) -> str:
  source = aot.OP_NAME.search(rest)
  source = re.sub(r"\[.*?\]", "", source.group(1)) if source else ""
  if COLLECTIVE.search(opcode) or COLLECTIVE.search(rest.split("metadata=")[0]):
    return "collectives"
  if re.search(r"-(start|done)$", opcode):
    return "compiler_transfers"
  if not source:
    return "no_source"
  parts = source.split("/")
  if any(product in source for product in ATTENTION_PRODUCTS) or (
    len(parts) > 1 and parts[-2].endswith(("attention", "self_attn")) and parts[-1] in SOFTMAX_PARTS
  ):
    return "attention"
  return "model" if model_class in source else "other"


def attribute(hlo_text: str, model_class: str) -> dict[str, dict[str, float]]:
  """Compiled HLO text -> {group: {"bytes", "instructions"}} over the top-level instructions."""
  computations, current, inner, shapes = {}, None, set(), {}
  for line in hlo_text.splitlines():
    if line.endswith("{") and ("->" in line or line.startswith("ENTRY")):
      current = (line.split()[1] if line.startswith("ENTRY") else line.split()[0]).lstrip("%")
      computations[current] = []
      continue
    match = INSTRUCTION.match(line)
    if match is None or current is None:
      continue
    name, shape, opcode, rest = match.groups()
    shapes[name] = shape
    computations[current].append((shape, opcode, rest))
    # Fused computations and reducers run inside the instruction that names them (as aot.largest_values).
    if opcode == "fusion":
      inner.update(re.findall(r"calls=%?([\w.\-]+)", rest))
    inner.update(re.findall(r"to_apply=%?([\w.\-]+)", rest))
  groups = collections.defaultdict(lambda: {"bytes": 0, "instructions": 0})
  for computation, instructions in computations.items():
    if computation in inner:
      continue
    for shape, opcode, rest in instructions:
      if opcode in FREE:
        continue
      operands = re.findall(r"%([\w.\-]+)", rest.split("),")[0])
      group = groups[group_of(opcode, rest, model_class)]
      group["bytes"] += array_bytes(shape) + sum(array_bytes(shapes.get(o, "")) for o in operands)
      group["instructions"] += 1
  return dict(groups)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/roco_git.py:tpu")
  parser.add_argument("--topology", default="v5e:2x2")
  parser.add_argument("--batch-size", type=int, default=8, help="examples per chip")
  args = parser.parse_args()
  config = config_lib.load_config_file(args.config)
  (report,) = aot.compile_config(config, args.topology, ("train",), args.batch_size)
  groups = attribute(report.hlo, models.get(config.model.name).__name__)
  counted = sum(group["bytes"] for group in groups.values())
  print(
    json.dumps(
      {
        "benchmark": "tpu_bytes_by_source",
        "config": args.config,
        "topology": args.topology,
        "batch_per_chip": report.batch_per_chip,
        "xla_bytes_accessed_gb": round(report.bytes_accessed / 1e9, 2),
        "xla_flops_t": round(report.flops / 1e12, 3),
        "counted_gb": round(counted / 1e9, 2),
        "groups": {
          name: {
            "gb": round(group["bytes"] / 1e9, 2),
            "share": round(group["bytes"] / counted, 3),
            "instructions": group["instructions"],
          }
          for name, group in sorted(groups.items(), key=lambda item: -item[1]["bytes"])
        },
        "compile_s": round(report.compile_seconds, 1),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  main()
