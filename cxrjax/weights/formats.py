"""The weight formats of `cxrjax port-weights --format NAME INPUT OUTPUT`: a registry (cxrjax/core/registry.py),
each format added beside its porting function in its weights module (chexnet.py, seed003.py, hf.py,
chexbert_labeler.py; weights/__init__.py imports them, in the order `--format` lists them):

    @formats.register("seed003-torch", options=("tokenizer", "num_heads"), help="...")
    def port_seed003(input, output, tokenizer=None, num_heads=None) -> formats.Ported: ...

`cxrjax port-weights` looks the format up (`FORMATS.get`), calls its `port(INPUT, OUTPUT, **options)` with
the optional flags it names, writes the run it returns as a workdir where it returns one (a workdir is a
layer above the importers: cxrjax/run/workdir.py), and prints one JSON line: output, format, then `summary`.
"""

import dataclasses
import hashlib
import pathlib
from collections.abc import Callable
from typing import Any

import ml_collections
from etils import epath

from cxrjax.core import registry
from cxrjax.core.errors import ConfigError
from cxrjax.weights.store import WeightsError


@dataclasses.dataclass
class Ported:
  """What a format's `port` did: `summary`, the fields port-weights prints after "output" and "format"; and,
  for a format whose OUTPUT is a workdir, the run to write there (config, tokenizer, variables and the
  checkpoint's metadata), with config.data.tokenizer set to the workdir's tokenizer.json first where
  `tokenizer_in_workdir` (fine-tuning then reads the checkpoint's vocabulary)."""

  summary: dict[str, Any]
  config: ml_collections.ConfigDict | None = None
  tokenizer: Any = None
  variables: dict[str, Any] | None = None
  meta: dict[str, Any] | None = None
  tokenizer_in_workdir: bool = False


@dataclasses.dataclass(frozen=True)
class Format:
  """A weight format: `port(input, output, **{option: value})` converts INPUT into OUTPUT; `options` are the
  optional port-weights flags it reads (argparse names: tokenizer, prompt, num_heads), passed by keyword;
  `help`, what INPUT is and what OUTPUT becomes (port-weights --help lists it under --format)."""

  port: Callable[..., Ported]
  options: tuple[str, ...] = ()
  help: str = ""


FORMATS: registry.Registry[Format] = registry.Registry("weight format", "--format", ConfigError)


def register(name: str, options: tuple[str, ...] = (), help: str = "") -> Callable[[Callable], Callable]:
  """A decorator adding its argument, a porting function, as the format `name`."""

  def add(port: Callable[..., Ported]) -> Callable[..., Ported]:
    FORMATS.add(name, Format(port, tuple(options), help))
    return port

  return add


def checkpoint_digest(checkpoint: str | pathlib.Path, output: str | pathlib.Path) -> str:
  """The SHA-256 of a checkpoint file, after checking that it is a file and that `output` is not a file
  (the output is a folder); WeightsErrors naming the path otherwise."""
  if not pathlib.Path(checkpoint).is_file():
    raise WeightsError(
      f"{checkpoint}: "
      + ("is a directory; expected a checkpoint file" if pathlib.Path(checkpoint).is_dir() else "not found")
    )
  if epath.Path(output).exists() and not epath.Path(output).is_dir():
    raise WeightsError(f"{output}: exists and is not a directory; the output is a folder")
  with open(checkpoint, "rb") as handle:
    return hashlib.sha256(handle.read()).hexdigest()
