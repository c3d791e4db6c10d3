"""`cxrjax score`: any predictions file, cxrjax's or another system's, scored by any set of evaluators.

  cxrjax score PREDICTIONS [--format auto|jsonl|csv|rexrank] [--evaluators text,chexbert,bertscore]
               [--protocol r2gen|coco|imageclef] [--no-meteor] [--labeler DIR] [--bertscore-model DIR
               --bertscore-layer N --bertscore-idf --bertscore-baseline FILE] [--batch-size N] [--out metrics.json]
               [--distributed auto|HOST:PORT,NUM_PROCESSES,PROCESS_ID]

Formats (`auto`: by the suffix, .jsonl / .csv / .json):
  jsonl    one JSON object per line with "reference" and "generated" (strings) and an optional "id": cxrjax's
           own eval/<split>/predictions.jsonl, or another system's; other keys are ignored, blank lines skipped.
  csv      a header row naming the columns reference and generated (optional id), one prediction per row
           (UTF-8, an Excel BOM allowed; quoted fields may span lines).
  rexrank  the ReXrank leaderboard's IU X-ray prediction file (data/iu_xray/rexrank.py): one JSON object
           {study id: {"model_prediction", "section_findings", "section_impression"}}; the reference is what
           ReXrank's evaluation script scores against, "Findings: <findings> Impression: <impression>".
Without ids, a prediction's id is its line number. Every id must be unique.

Evaluators (cxrjax/evaluators.py, built from the flags): text (caption metrics under --protocol), chexbert
(clinical efficacy with the labeler directory --labeler), bertscore (BERTScore of the encoder directory
--bertscore-model at --bertscore-layer, with --bertscore-idf and --bertscore-baseline FILE); the last two in
jitted batches of --batch-size sharded over every device of the mesh. A tqdm bar on stderr counts the texts
scored; stdout gets one JSON line: the file, its format, the number of studies, the evaluators' headline scores
and where metrics.json went. metrics.json (with --out) holds every score, each evaluator's provenance (the
labeler checkpoint's SHA-256) and the predictions file's SHA-256.

With --distributed every process runs the same command on the same file (BUILD.md "Training on a TPU pod"):
each reads every prediction, the mesh spans every process's devices, every process computes the same scores,
and process 0 alone shows the bar, prints the line and writes --out.

A file that cannot be read as its format is one line, `cxrjax score: error: FILE: line N: problem`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import pathlib
import re
import sys
from collections.abc import Sequence
from typing import Any

import ml_collections
import tqdm

from cxrjax import evaluators as evaluators_lib
from cxrjax.core import files, sharding
from cxrjax.data.iu_xray import rexrank
from cxrjax.core.errors import ConfigError, UserError
from cxrjax.metrics import protocols

FORMATS = ("jsonl", "csv", "rexrank")
SUFFIXES = {".jsonl": "jsonl", ".csv": "csv", ".json": "rexrank"}
COLUMNS = ("reference", "generated")
REXRANK_FIELDS = ("model_prediction", "section_findings", "section_impression")


class PredictionsError(UserError):
  """A predictions file that is not of its format; the message names the file, the line and the problem."""


@dataclasses.dataclass(frozen=True)
class Predictions:
  """A predictions file read: N ids, references and generated reports, in the file's order."""

  path: str
  format: str
  ids: list[str]
  references: list[str]
  generated: list[str]


# The evaluators that score a file's texts alone (the baselines and the oracle read a run's dataset; AUROC a
# classifier's probabilities).
FILE_EVALUATORS = ("bertscore", "chexbert", "text")


def rexrank_reference(findings: str, impression: str) -> str:
  """The text ReXrank's evaluation script scores a prediction against (rexrank.py's module doc)."""
  return f"Findings: {findings} Impression: {impression}"


def _text(path: str, data: bytes) -> str:
  try:
    return data.decode("utf-8-sig")  # A CSV saved by Excel starts with a byte-order mark.
  except UnicodeDecodeError as error:
    raise PredictionsError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None


def _add(
  path: str,
  rows: list[tuple[int, str, str, str]],
  line: int,
  identifier: Any,
  reference: Any,
  generated: Any,
  seen: dict[str, int],
) -> None:
  """Appends one prediction (line, id, reference, generated) after checking its types and id."""
  for name, value in (("reference", reference), ("generated", generated)):
    if not isinstance(value, str):
      raise PredictionsError(f"{path}: line {line}: {name!r} is {type(value).__name__} {value!r:.40}, not a string")
  if identifier is None:
    identifier = str(line)
  elif isinstance(identifier, (str, int)) and not isinstance(identifier, bool):
    identifier = str(identifier)
  else:
    raise PredictionsError(f"{path}: line {line}: 'id' is {type(identifier).__name__}, not a string or integer")
  if identifier in seen:
    raise PredictionsError(
      f"{path}: line {line}: id {identifier!r} again (first on line {seen[identifier]}); one prediction per study"
    )
  seen[identifier] = line
  rows.append((line, identifier, reference, generated))


def _read_jsonl(path: str, text: str) -> list[tuple[int, str, str, str]]:
  rows, seen = [], {}
  for line, content in enumerate(text.splitlines(), start=1):
    if not content.strip():
      continue
    try:
      record = json.loads(content)
    except json.JSONDecodeError as error:
      raise PredictionsError(f"{path}: line {line}: not valid JSON ({error.msg} at column {error.colno})") from None
    if not isinstance(record, dict):
      raise PredictionsError(
        f"{path}: line {line}: a JSON {type(record).__name__}, not an object with {' and '.join(map(repr, COLUMNS))}"
      )
    missing = [key for key in COLUMNS if key not in record]
    if missing:
      raise PredictionsError(f"{path}: line {line}: no {missing[0]!r} key (keys: {sorted(record)[:8]})")
    _add(path, rows, line, record.get("id"), record["reference"], record["generated"], seen)
  return rows


def _read_csv(path: str, text: str) -> list[tuple[int, str, str, str]]:
  reader = csv.reader(io.StringIO(text, newline=""))
  try:
    header = next(reader, None)
    if header is None:
      raise PredictionsError(f"{path}: empty file; expected a header row with the columns {', '.join(COLUMNS)}")
    header = [name.strip() for name in header]
    for name in COLUMNS:
      if name not in header:
        raise PredictionsError(f"{path}: line 1: no {name!r} column (header: {header[:8]})")
    repeated = sorted({name for name in header if header.count(name) > 1 and name in COLUMNS + ("id",)})
    if repeated:
      raise PredictionsError(f"{path}: line 1: column {repeated[0]!r} twice")
    columns = {name: header.index(name) for name in COLUMNS + ("id",) if name in header}
    rows, seen = [], {}
    while True:
      line = reader.line_num + 1  # Where the record starts (a quoted field may span lines).
      fields = next(reader, None)
      if fields is None:
        return rows
      if not fields:  # csv gives [] for a blank line.
        continue
      if len(fields) != len(header):
        raise PredictionsError(f"{path}: line {line}: {len(fields)} fields, the header has {len(header)}")
      _add(
        path,
        rows,
        line,
        fields[columns["id"]] if "id" in columns else None,
        fields[columns["reference"]],
        fields[columns["generated"]],
        seen,
      )
  except csv.Error as error:
    raise PredictionsError(f"{path}: line {reader.line_num}: not CSV ({error})") from None


def _line_of_key(text: str, key: str, occurrence: int) -> int | None:
  """The line of the `occurrence`-th (0-based) `"key":` in a JSON text, or None."""
  matches = list(re.finditer(re.escape(json.dumps(key)) + r"\s*:", text))
  return text.count("\n", 0, matches[occurrence].start()) + 1 if occurrence < len(matches) else None


class _DuplicateKey(Exception):
  pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
  """json's object_pairs_hook: a key twice in one object is an error (json.loads would keep the last)."""
  seen = set()
  for key, _ in pairs:
    if key in seen:
      raise _DuplicateKey(key)
    seen.add(key)
  return dict(pairs)


def _read_rexrank(path: str, text: str) -> list[tuple[int, str, str, str]]:
  try:
    studies = json.loads(text, object_pairs_hook=_unique_pairs)
  except json.JSONDecodeError as error:
    raise PredictionsError(
      f"{path}: line {error.lineno}: not valid JSON ({error.msg} at column {error.colno})"
    ) from None
  except _DuplicateKey as error:
    key = error.args[0]
    first, second = _line_of_key(text, key, 0), _line_of_key(text, key, 1)
    raise PredictionsError(f"{path}: line {second}: key {key!r} again in one object (first on line {first})") from None
  if not isinstance(studies, dict):
    raise PredictionsError(
      f"{path}: line 1: a JSON {type(studies).__name__}; {rexrank.LEADERBOARD}'s file is one "
      f"object {{study id: {{{', '.join(REXRANK_FIELDS)}}}}}"
    )
  rows, seen = [], {}
  for study, entry in studies.items():
    line = _line_of_key(text, study, 0) or 1
    if not isinstance(entry, dict):
      raise PredictionsError(f"{path}: line {line}: study {study!r} is a JSON {type(entry).__name__}, not an object")
    missing = [key for key in REXRANK_FIELDS if key not in entry]
    if missing:
      raise PredictionsError(f"{path}: line {line}: study {study!r} has no {missing[0]!r}")
    for key in REXRANK_FIELDS:
      if not isinstance(entry[key], str):
        raise PredictionsError(
          f"{path}: line {line}: study {study!r}: {key!r} is {type(entry[key]).__name__}, not a string"
        )
    _add(
      path,
      rows,
      line,
      study,
      rexrank_reference(entry["section_findings"], entry["section_impression"]),
      entry["model_prediction"],
      seen,
    )
  return rows


READERS = {"jsonl": _read_jsonl, "csv": _read_csv, "rexrank": _read_rexrank}


def detect_format(path: str) -> str:
  suffix = pathlib.PurePath(path).suffix.lower()
  if suffix not in SUFFIXES:
    raise PredictionsError(
      f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; pass --format {'|'.join(FORMATS)}"
    )
  return SUFFIXES[suffix]


def read_predictions(path: str | pathlib.Path, file_format: str = "auto") -> Predictions:
  """A predictions file (module doc) -> Predictions; a PredictionsError naming the file, line and problem."""
  path = str(path)
  if file_format == "auto":
    file_format = detect_format(path)
  if file_format not in READERS:
    raise PredictionsError(f"--format {file_format}: expected auto or one of {', '.join(FORMATS)}")
  with open(path, "rb") as handle:
    text = _text(path, handle.read())
  if not text.strip():
    raise PredictionsError(f"{path}: empty file; no predictions")
  rows = READERS[file_format](path, text)
  if not rows:
    raise PredictionsError(f"{path}: no predictions (a {file_format} file with no records)")
  _, ids, references, generated = (list(column) for column in zip(*rows))
  return Predictions(path, file_format, ids, references, generated)


def evaluator_config(
  names: Sequence[str],
  protocol: str,
  meteor: bool,
  labeler: str | None,
  batch_size: int,
  bertscore_model: str | None = None,
  bertscore_layer: int | None = None,
  bertscore_idf: bool = False,
  bertscore_baseline: str | None = None,
) -> ml_collections.ConfigDict:
  """The CLI's flags -> evaluators.from_config's section; a ConfigError naming the flag."""
  if not names:
    raise ConfigError(f"--evaluators: empty; expected some of {', '.join(FILE_EVALUATORS)}")
  for name in names:
    if name not in FILE_EVALUATORS:
      raise ConfigError(f"--evaluators {name}: unknown evaluator; expected some of {', '.join(FILE_EVALUATORS)}")
  if len(set(names)) != len(names):
    raise ConfigError(f"--evaluators {','.join(names)}: an evaluator named twice")
  if batch_size < 1:
    raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
  if protocol not in protocols.PROTOCOLS:
    raise ConfigError(f"--protocol {protocol}: expected one of {', '.join(sorted(protocols.PROTOCOLS))}")
  sections = {
    "text": dict(protocol=protocol, meteor=meteor),
    "chexbert": dict(labeler=labeler, batch_size=batch_size),
    "bertscore": dict(
      model=bertscore_model,
      layer=bertscore_layer,
      idf=bertscore_idf,
      baseline=bertscore_baseline,
      batch_size=batch_size,
    ),
  }
  if "chexbert" in names and not labeler:
    raise ConfigError(
      "--evaluators chexbert: needs --labeler DIR (a labeler directory written by "
      "`cxrjax port-weights --format chexbert`)"
    )
  if "bertscore" in names and not bertscore_model:
    raise ConfigError(
      "--evaluators bertscore: needs --bertscore-model DIR (a Hugging Face BERT, RoBERTa, DistilBERT or DeBERTa directory)"
    )
  return ml_collections.ConfigDict({name: sections[name] for name in names})


def sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as handle:
    for block in iter(lambda: handle.read(1 << 24), b""):
      digest.update(block)
  return digest.hexdigest()


def score_file(
  path: str, config: ml_collections.ConfigDict, file_format: str = "auto", out: str | None = None, progress: bool = True
) -> dict[str, Any]:
  """Reads the predictions file, scores it with the configured evaluators over every device of every
  process, writes `out` (metrics.json) when given (process 0 alone); returns the one-line summary."""
  predictions = read_predictions(path, file_format)  # Before the labeler loads: a bad file fails fast.
  mesh = sharding.create_mesh()
  built = evaluators_lib.from_config(config, mesh=mesh, where="--evaluators")
  total = 2 * len(predictions.ids) * len(built)  # Each evaluator reads the references and the generated texts.
  lead = sharding.is_lead_process()
  with tqdm.tqdm(total=total, desc="score", unit="text", file=sys.stderr, disable=not (progress and lead)) as bar:
    scored = evaluators_lib.Predictions(predictions.ids, predictions.references, predictions.generated)
    result = evaluators_lib.run(built, scored, progress=bar.update)
  metrics = {
    "predictions": {"path": path, "format": predictions.format, "sha256": sha256(path)},
    "devices": mesh.size,
    **result,
  }
  summary = {
    "predictions": path,
    "format": predictions.format,
    "num_studies": result["num_studies"],
    "devices": mesh.size,
    "scores": evaluators_lib.headline(built, result["scores"]),
  }
  if out is not None:
    if lead:
      files.write_json(out, metrics, indent=2)  # Whole or not at all.
    summary["written"] = str(out)
  return summary
