"""CheXbert's released checkpoint (`chexbert.pth`) -> a labeler directory, and the labeler that reads one.

    cxrjax port-weights --format chexbert chexbert.pth OUT [--tokenizer vocab.txt] [--num-heads 12]
    cxrjax label --workdir OUT REPORTS.txt [--batch-size N]

The checkpoint is a torch file {"model_state_dict": {name: tensor}} of the DataParallel-wrapped
`bert_labeler` (every name starts with "module."), read weights-only (store.read_torch_checkpoint). Name map
(cxrjax/models/chexbert.py's CheXbert <- the state dict, "module." removed):
    bert/...                 bert.* (TextEncoder <- BertModel, cxrjax/weights/hf_text.py)
    heads_j/{kernel,bias}    linear_heads.j.{weight (transposed), bias}
Every variable needs its tensor and every tensor is used, except BertModel's pooler (`bert.pooler.dense.*`,
which the heads do not read) and the `bert.embeddings.position_ids` buffer that transformers 3-4 saved
(accepted when it holds 0, 1, 2, ...). Sizes come from the tensors' shapes; the head count is not among
them (`num_heads`, bert-base-uncased's 12 by default).

A labeler directory: variables.safetensors + model.json (store.save_weights: the architecture, the
observations, where the weights came from and the checkpoint's SHA-256) + tokenizer.json (the WordPiece
vocabulary: bert-base-uncased's vocab.txt, given or found beside the checkpoint).

`Labeler.load(directory).label(reports)` labels reports as the reference's label.py does (cleaning,
tokenisation and classes: cxrjax/models/chexbert.py), jitted over fixed-size batches: reports sorted by
length, each batch padded to `batch_size` rows and to its longest report rounded up to a multiple of
BUCKET (16, 32, ..., 512: at most 32 compiled shapes per batch size). Finer lengths than powers of two: a
batch whose longest report has 170 ids runs at 176 rather than 256, a third less work (PyTorch's label.py
pads to the longest exactly, compiling nothing). `Labeler.load(directory, mesh=sharding.create_mesh())`
shards every batch over the mesh's 'data' axis (`batch_size` rounded up to a multiple of its size; the
variables replicated), so that every device labels its share of the rows; the labels equal one device's.
`jit_logits` is the compiled step (benchmarks/labelers.py compiles it for a described TPU slice).
"""

import hashlib
import pathlib
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from cxrjax.core import sharding
from cxrjax.models import chexbert
from cxrjax.text import tokenizers
from cxrjax.weights import formats, hf_text, store
from cxrjax.weights.store import WeightsError

FORMAT = "chexbert"
MODEL_NAME = "chexbert"
STATE_DICT_KEY = "model_state_dict"
DATA_PARALLEL_PREFIX = "module."
TOKENIZER_FILE = "tokenizer.json"
VOCAB_TXT = "vocab.txt"
BUCKET = 16  # Padded lengths are multiples of it (module doc).
DEFAULT_NUM_HEADS = chexbert.BERT_BASE["num_heads"]  # The release is bert-base-uncased.


def read_checkpoint(path: str | pathlib.Path) -> dict[str, np.ndarray]:
  """chexbert.pth -> {state dict name without "module.": float32 array}; a file of another layout is a
  WeightsError naming it."""
  checkpoint = store.read_torch_checkpoint(path)
  state_dict = checkpoint.get(STATE_DICT_KEY) if isinstance(checkpoint, dict) else None
  if not isinstance(state_dict, dict) or not all(hasattr(value, "numpy") for value in state_dict.values()):
    keys = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
    raise WeightsError(f'{path}: expected CheXbert\'s {{"{STATE_DICT_KEY}": state dict of tensors}}, got {keys}')
  unwrapped = [name for name in state_dict if not name.startswith(DATA_PARALLEL_PREFIX)]
  if unwrapped and len(unwrapped) != len(state_dict):
    raise WeightsError(
      f'{path}: some tensor names start with "{DATA_PARALLEL_PREFIX}" and some do not, e.g. {unwrapped[:3]}'
    )
  return {
    name.removeprefix(DATA_PARALLEL_PREFIX): value.detach().cpu().float().numpy() for name, value in state_dict.items()
  }


def architecture(tensors: dict[str, np.ndarray], num_heads: int, source: str) -> dict[str, Any]:
  """The CheXbert fields the tensors describe (cxrjax/models/chexbert.py), with `num_heads`."""
  sizes = hf_text.architecture(tensors, "bert", "bert.", source)
  if sizes["hidden_size"] % num_heads:
    raise WeightsError(f"{source}: hidden size {sizes['hidden_size']} is not divisible by --num-heads {num_heads}")
  heads = sorted(name for name in tensors if name.startswith("linear_heads.") and name.endswith(".weight"))
  if len(heads) != len(chexbert.CONDITIONS):
    raise WeightsError(
      f"{source}: {len(heads)} linear heads; CheXbert has {len(chexbert.CONDITIONS)} (one per observation)"
    )
  return dict(sizes, num_heads=num_heads)


def _source_of(path: tuple[str, ...]) -> tuple[str, Any]:
  if path[0] != "params":
    raise KeyError(path)
  if path[1] == "bert":
    return hf_text.encoder_source("bert", "/".join(path[2:]), "bert.")
  if path[1].startswith("heads_") and len(path) == 3:
    name = {"kernel": "weight", "bias": "bias"}[path[2]]
    return f"linear_heads.{path[1].removeprefix('heads_')}.{name}", np.transpose if name == "weight" else (lambda a: a)
  raise KeyError(path)


def build(fields: dict[str, Any]) -> chexbert.CheXbert:
  return chexbert.CheXbert(**fields)


def abstract_variables(model: chexbert.CheXbert) -> Any:
  tokens = jnp.zeros((1, 2), jnp.int32)
  return jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, jnp.ones_like(tokens)))


def import_checkpoint(
  path: str | pathlib.Path, num_heads: int = DEFAULT_NUM_HEADS
) -> tuple[dict[str, Any], dict[str, Any]]:
  """chexbert.pth -> (Flax variables of CheXbert, its fields); strict (module doc)."""
  source = str(path)
  tensors = read_checkpoint(path)
  store.check_finite(tensors, source)
  fields = architecture(tensors, num_heads, source)
  unused = set(hf_text.check_buffers(tensors, "bert.", source)) | {f"bert.{name}" for name in hf_text.POOLER}
  variables = store.strict_map(
    tensors,
    abstract_variables(build(fields)),
    _source_of,
    source,
    "CheXbert's bert_labeler",
    ignored=lambda name: name in unused,
  )
  return variables, fields


def load_tokenizer(
  checkpoint: str | pathlib.Path, tokenizer: str | pathlib.Path | None
) -> tokenizers.WordPieceTokenizer:
  """`tokenizer` (a vocab.txt, uncased, or a tokenizer.json), else the vocab.txt beside the checkpoint."""
  if tokenizer:
    path = pathlib.Path(tokenizer)
    if not path.is_file():
      raise WeightsError(f"--tokenizer {path}: not found")
  else:
    path = pathlib.Path(checkpoint).parent / VOCAB_TXT
    if not path.is_file():
      raise WeightsError(
        f"{checkpoint}: the checkpoint holds no vocabulary and {path} does not exist; pass "
        "--tokenizer VOCAB (bert-base-uncased's vocab.txt)"
      )
  if path.suffix == ".json":
    return tokenizers.WordPieceTokenizer.from_tokenizer_json(path)
  return tokenizers.WordPieceTokenizer.from_vocab(path, lowercase=True)


def sha256(path: str | pathlib.Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 24), b""):
      digest.update(block)
  return digest.hexdigest()


def port(
  checkpoint: str | pathlib.Path,
  output: str | pathlib.Path,
  tokenizer: str | pathlib.Path | None = None,
  num_heads: int = DEFAULT_NUM_HEADS,
) -> dict[str, Any]:
  """chexbert.pth (+ its vocabulary) -> a labeler directory at `output` (module doc); returns model.json's
  content."""
  checkpoint = pathlib.Path(checkpoint)
  if not checkpoint.is_file():
    raise WeightsError(
      f"{checkpoint}: " + ("is a directory; expected CheXbert's chexbert.pth" if checkpoint.is_dir() else "not found")
    )
  word_piece = load_tokenizer(checkpoint, tokenizer)
  variables, fields = import_checkpoint(checkpoint, num_heads)
  if len(word_piece) != fields["vocab_size"]:
    raise WeightsError(
      f"{checkpoint}: its word embeddings have {fields['vocab_size']} rows, the tokenizer "
      f"{tokenizer or checkpoint.parent / VOCAB_TXT} {len(word_piece)} tokens"
    )
  model = {
    "name": MODEL_NAME,
    "fields": fields,
    "conditions": list(chexbert.CONDITIONS),
    "classes": list(chexbert.CLASSES),
    "tokenizer": TOKENIZER_FILE,
    "source": {"format": FORMAT, "file": str(checkpoint), "sha256": sha256(checkpoint)},
  }
  store.save_weights(output, variables, model)
  word_piece.save(epath.Path(output) / TOKENIZER_FILE)
  return model


@formats.register(
  FORMAT, options=("tokenizer", "num_heads"), help="CheXbert's chexbert.pth -> a labeler directory that `label` reads"
)
def port_format(
  checkpoint: str | pathlib.Path,
  output: str | pathlib.Path,
  tokenizer: str | pathlib.Path | None = None,
  num_heads: int | None = None,
) -> formats.Ported:
  """`cxrjax port-weights --format chexbert`: `port`, with CheXbert's head count unless `num_heads`."""
  model = port(checkpoint, output, tokenizer=tokenizer, num_heads=DEFAULT_NUM_HEADS if num_heads is None else num_heads)
  return formats.Ported({"sha256": model["source"]["sha256"], **model["fields"]})


def _bucket(length: int, limit: int) -> int:
  """The padded length of a batch whose longest report has `length` ids: `length` rounded up to a multiple
  of BUCKET, at most `limit`."""
  return min(-(-max(length, 1) // BUCKET) * BUCKET, limit)


def jit_logits(model: chexbert.CheXbert, mesh: jax.sharding.Mesh | None = None) -> Callable[..., jax.Array]:
  """The labelling step, jitted: (variables, tokens int32 [batch, length], mask int32 [batch, length]) ->
  logits float32 [batch, 14, 4]. With `mesh`: the rows sharded over its 'data' axis, the variables and
  the logits replicated (every process reads all rows back without a gather)."""
  apply = lambda variables, tokens, mask: model.apply(variables, tokens, mask)  # noqa: E731
  if mesh is None:
    return jax.jit(apply)
  replicated, rows = sharding.replicated(mesh), sharding.data_sharded(mesh)
  return jax.jit(apply, in_shardings=(replicated, rows, rows), out_shardings=replicated)


class Labeler:
  """A CheXbert model, its variables and tokenizer; labels reports (module doc)."""

  def __init__(
    self,
    model: chexbert.CheXbert,
    variables: dict[str, Any],
    tokenizer: tokenizers.WordPieceTokenizer,
    mesh: jax.sharding.Mesh | None = None,
    source: dict[str, Any] | None = None,
  ):
    """`mesh`: shard each batch over its 'data' axis (None: the default device). `source`: model.json's
    "source" (the checkpoint's file and SHA-256), which evaluators record."""
    self.model, self.tokenizer, self.mesh = model, tokenizer, mesh
    self.source = dict(source or {})
    self.max_tokens = min(chexbert.MAX_TOKENS, model.max_positions)
    self._logits = jit_logits(model, mesh)
    if mesh is None:
      self.variables, self.rows_multiple = variables, 1
    else:
      # From the host copy on every process: works where the mesh spans processes (device_put does not).
      self.variables = sharding.from_host(variables, sharding.replicated(mesh))
      self.rows_multiple = mesh.shape[sharding.DATA_AXIS]

  @classmethod
  def load(cls, directory: str | pathlib.Path, mesh: jax.sharding.Mesh | None = None) -> "Labeler":
    """A directory written by `port` (`cxrjax port-weights --format chexbert`); `mesh` as __init__'s."""
    directory = epath.Path(directory)
    variables, description = store.load_weights(directory)
    if description.get("name") != MODEL_NAME or not isinstance(description.get("fields"), dict):
      raise WeightsError(
        f"{directory / store.MODEL_FILE}: holds {description.get('name')!r}, not a CheXbert "
        f"labeler (written by `cxrjax port-weights --format {FORMAT}`)"
      )
    model = build(description["fields"])
    expected = {
      key: tuple(value.shape)
      for key, value in flax.traverse_util.flatten_dict(abstract_variables(model), sep="/").items()
    }
    found = {key: tuple(np.shape(value)) for key, value in flax.traverse_util.flatten_dict(variables, sep="/").items()}
    if expected != found:
      differing = sorted(set(expected.items()) ^ set(found.items()))[:5]
      raise WeightsError(
        f"{directory / store.VARIABLES_FILE}: does not fit the CheXbert its model.json describes, e.g. {differing}"
      )
    tokenizer_path = directory / description.get("tokenizer", TOKENIZER_FILE)
    if not tokenizer_path.is_file():
      raise WeightsError(f"{tokenizer_path}: not found; the labeler directory is incomplete")
    tokenizer = tokenizers.load(tokenizer_path)
    if len(tokenizer) != model.vocab_size:
      raise WeightsError(f"{tokenizer_path}: {len(tokenizer)} tokens, the model's vocabulary {model.vocab_size}")
    return cls(model, jax.tree.map(jnp.asarray, variables), tokenizer, mesh=mesh, source=description.get("source"))

  def encode(self, report: str) -> list[int]:
    """A report -> [CLS] pieces [SEP] ids, cleaned and cut as CheXbert's label.py (models/chexbert.py)."""
    return self.tokenizer.encode(chexbert.clean_report(report), max_length=self.max_tokens)

  def logits(
    self, reports: list[str], batch_size: int = 16, progress: Callable[[int], None] | None = None
  ) -> np.ndarray:
    """reports -> logits float32 [len(reports), 14, 4] (CheXbert.__call__), in the reports' order. With a
    mesh, `batch_size` is rounded up to a multiple of its 'data' size. `progress(n)` after each batch of n."""
    if batch_size < 1:
      raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    batch_size = -(-batch_size // self.rows_multiple) * self.rows_multiple  # Every device gets equal rows.
    ids = [self.encode(report) for report in reports]
    order = sorted(range(len(ids)), key=lambda index: len(ids[index]))  # Similar lengths share a batch.
    filler = [self.tokenizer.start_id, self.tokenizer.end_id]  # Rows that pad the last batch: discarded.
    result = np.zeros((len(ids), len(chexbert.CONDITIONS), len(chexbert.CLASSES)), np.float32)
    for start in range(0, len(order), batch_size):
      chosen = order[start : start + batch_size]
      rows = [ids[index] for index in chosen] + [filler] * (batch_size - len(chosen))
      length = _bucket(max(len(row) for row in rows), self.max_tokens)
      tokens = np.full((batch_size, length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((batch_size, length), np.int32)
      for row, row_ids in enumerate(rows):
        tokens[row, : len(row_ids)], mask[row, : len(row_ids)] = row_ids, 1
      if self.mesh is not None:
        tokens, mask = sharding.from_host((tokens, mask), sharding.data_sharded(self.mesh))
      result[chosen] = np.asarray(self._logits(self.variables, tokens, mask))[: len(chosen)]
      if progress is not None:
        progress(len(chosen))
    return result

  def classes(
    self, reports: list[str], batch_size: int = 16, progress: Callable[[int], None] | None = None
  ) -> np.ndarray:
    """reports -> class ids int [len(reports), 14] (chexbert.CLASSES order); arguments as `logits`'."""
    return chexbert.classes_of(self.logits(reports, batch_size, progress))

  def label(self, reports: list[str], batch_size: int = 16) -> list[dict[str, dict[str, Any]]]:
    """reports -> one `chexbert.label_record` per report, in order."""
    return [chexbert.label_record(row) for row in self.classes(reports, batch_size)]
