"""METEOR: the METEOR 1.5 jar of the pycocoevalcap wheel (java), or NLTK's `meteor_score`.

`meteor_best_available` uses the jar when `java` is on PATH (the number of the published tables,
as pycocoevalcap's `Meteor`), else NLTK's sentence METEOR when WordNet is found, else reports the
score unavailable with the reasons (never a made-up number).

WordNet for NLTK: its own nltk_data copy, else a WordNet 3.0 database directory read in place
($CXRJAX_WORDNET_DIR, then Debian's `wordnet-base` package in /usr/share/wordnet), with the
`lexnames` file NLTK needs supplied when the directory lacks it (Debian's package does).
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib.util
import io
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from cxrjax.metrics import corpus

METEOR_JAR_IMPLEMENTATION = (
  "METEOR 1.5 jar from the pycocoevalcap wheel (java, '-l en -norm'), corpus score as pycocoevalcap's Meteor"
)

# WordNet 3.0's lexicographer files (wninput(5WN) "lexnames"), in file-number order. Debian's
# wordnet-base package omits this file but NLTK's WordNet reader requires it.
_WORDNET_LEXNAMES = (
  "adj.all",
  "adj.pert",
  "adv.all",
  "noun.Tops",
  "noun.act",
  "noun.animal",
  "noun.artifact",
  "noun.attribute",
  "noun.body",
  "noun.cognition",
  "noun.communication",
  "noun.event",
  "noun.feeling",
  "noun.food",
  "noun.group",
  "noun.location",
  "noun.motive",
  "noun.object",
  "noun.person",
  "noun.phenomenon",
  "noun.plant",
  "noun.possession",
  "noun.process",
  "noun.quantity",
  "noun.relation",
  "noun.shape",
  "noun.state",
  "noun.substance",
  "noun.time",
  "verb.body",
  "verb.change",
  "verb.cognition",
  "verb.communication",
  "verb.competition",
  "verb.consumption",
  "verb.contact",
  "verb.creation",
  "verb.emotion",
  "verb.motion",
  "verb.perception",
  "verb.possession",
  "verb.social",
  "verb.stative",
  "verb.weather",
  "adj.ppl",
)
_WORDNET_POS_NUMBER = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
# Where a WordNet 3.0 database directory (data.noun, index.noun, ...) is looked for when NLTK's own
# nltk_data copy is missing: $CXRJAX_WORDNET_DIR, then Debian's `wordnet-base` package.
_WORDNET_DIRS = ("/usr/share/wordnet",)


@dataclasses.dataclass(frozen=True)
class MeteorResult:
  """A METEOR score, or why there is none.

  Attributes:
    score: corpus METEOR in [0, 1], or None when no implementation could run.
    implementation: what produced `score`, or "unavailable: <reasons>".
  """

  score: float | None
  implementation: str


def pycocoevalcap_meteor_jar() -> pathlib.Path | None:
  """The METEOR 1.5 jar of an installed pycocoevalcap wheel (with its paraphrase table), or None."""
  spec = importlib.util.find_spec("pycocoevalcap")
  if spec is None or spec.submodule_search_locations is None:
    return None
  for location in spec.submodule_search_locations:
    jar = pathlib.Path(location) / "meteor" / "meteor-1.5.jar"
    if jar.is_file() and (jar.parent / "data" / "paraphrase-en.gz").is_file():
      return jar
  return None


def _meteor_segment(text: str) -> str:
  # "|||" separates fields and a newline ends the request in the jar's stdio protocol; the double
  # space collapse is pycocoevalcap's own hypothesis clean-up, kept for identical numbers.
  return text.replace("\n", " ").replace("|||", "").replace("  ", " ")


class _RunningJar:
  """One `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm` process, kept for the next call as
  pycocoevalcap's `Meteor` keeps its one: the JVM and the paraphrase table load once per Python process
  (most of a call's time), not once per scoring (an evaluation scores the model, two baselines and the oracle)."""

  def __init__(self, jar: pathlib.Path, java: str):
    self.jar = jar
    self.stderr = tempfile.TemporaryFile()
    command = [java, "-jar", "-Xmx2G", jar.name, "-", "-", "-stdio", "-l", "en", "-norm"]
    self.process = subprocess.Popen(
      command,
      cwd=jar.parent,
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=self.stderr,
      text=True,
      encoding="utf-8",
    )

  def answer(self, line: str | None) -> str:
    """Sends `line` (if any) and reads one reply line; "" once the process has ended."""
    try:
      if line is not None:
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
      return self.process.stdout.readline().strip()
    except (BrokenPipeError, ValueError):
      return ""

  def close(self) -> str:
    """Ends the process; its last 2000 characters of stderr ("" if it was closed before)."""
    if self.stderr.closed:
      return ""
    if self.process.poll() is None:
      self.process.kill()
    self.process.wait()
    self.stderr.seek(0)
    stderr = self.stderr.read().decode(errors="replace")[-2000:]
    self.stderr.close()
    return stderr


_RUNNING_JARS: dict[pathlib.Path, _RunningJar] = {}
_RUNNING_JARS_LOCK = threading.Lock()


def close_running_jars() -> None:
  """Ends the kept METEOR processes (at exit; a test that needs a cold start calls it)."""
  with _RUNNING_JARS_LOCK:
    for running in _RUNNING_JARS.values():
      running.close()
    _RUNNING_JARS.clear()


atexit.register(close_running_jars)


def meteor_pycocoevalcap_jar(
  references: Sequence[str | Sequence[str]], hypotheses: Sequence[str], timeout_s: float = 900.0
) -> float:
  """Corpus METEOR 1.5 from the jar in the pycocoevalcap wheel, as pycocoevalcap's `Meteor`.

  Talks to `java -jar -Xmx2G meteor-1.5.jar - - -stdio -l en -norm` (started at the first call and kept for
  the next, as pycocoevalcap does): one SCORE request per pair, then one EVAL over all of them, whose final
  line is the corpus score (not a mean of segments). Loading the paraphrase table takes most of the first
  call's time (15-30 s on a busy 2-core machine).

  Args:
    references: per hypothesis, a reference string or a list of them.
    hypotheses: hypothesis strings.
    timeout_s: the jar is killed after this many seconds of this call.

  Raises:
    FileNotFoundError: no pycocoevalcap jar or no `java` on PATH.
    RuntimeError: the jar failed, timed out or answered something that is not a score.
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  jar = pycocoevalcap_meteor_jar()
  if jar is None:
    raise FileNotFoundError("METEOR jar not found: pycocoevalcap is not installed (pip install pycocoevalcap==1.2)")
  java = shutil.which("java")
  if java is None:
    raise FileNotFoundError("METEOR jar needs `java`, which is not on PATH")
  with _RUNNING_JARS_LOCK:
    running = _RUNNING_JARS.get(jar)
    if running is None or running.process.poll() is not None:
      running = _RUNNING_JARS[jar] = _RunningJar(jar, java)
    # A killed jar ends the blocking reads below with an empty answer.
    watchdog = threading.Timer(timeout_s, running.process.kill)
    watchdog.start()

    def answer(line: str | None) -> str:
      reply = running.answer(line)
      if not reply:
        stderr = running.close()
        raise RuntimeError(
          f"METEOR jar {jar} stopped (exit code {running.process.returncode}, timeout {timeout_s} s): {stderr}"
        )
      return reply

    try:
      statistics = []
      for refs, hypothesis in zip(reference_lists, hypotheses):
        fields = ["SCORE", *(_meteor_segment(ref) for ref in refs), _meteor_segment(hypothesis)]
        statistics.append(answer(" ||| ".join(fields)))
      answer(" ||| ".join(["EVAL", *statistics]))  # The first segment's score.
      for _ in range(len(statistics) - 1):  # The other segment scores.
        answer(None)
      final_line = answer(None)
    except BaseException:
      # A call cut short leaves replies unread: the process is not kept for the next call.
      del _RUNNING_JARS[jar]
      running.close()
      raise
    finally:
      watchdog.cancel()
  try:
    return float(final_line)
  except ValueError:
    raise RuntimeError(f"METEOR jar {jar} answered {final_line!r} instead of a score") from None


@functools.cache
def _nltk_wordnet() -> tuple[Any, str]:
  """NLTK's WordNet reader and where it came from.

  NLTK's own nltk_data copy first; else a WordNet 3.0 database directory ($CXRJAX_WORDNET_DIR or
  Debian's /usr/share/wordnet), read in place with the `lexnames` file supplied when it is missing.

  Raises:
    ImportError: nltk is not installed.
    LookupError: no WordNet found.
  """
  # nltk takes about a second to import and serves only the fallback without java.
  import nltk  # pylint: disable=g-import-not-at-top
  from nltk.corpus.reader import wordnet as wordnet_module  # pylint: disable=g-import-not-at-top

  try:
    nltk.data.find("corpora/wordnet")
    from nltk.corpus import wordnet  # pylint: disable=g-import-not-at-top

    wordnet.ensure_loaded()
    return wordnet, "nltk_data corpora/wordnet"
  except LookupError:
    pass
  candidates = [os.environ["CXRJAX_WORDNET_DIR"]] if os.environ.get("CXRJAX_WORDNET_DIR") else []
  candidates += list(_WORDNET_DIRS)
  required = (
    "data.noun",
    "index.noun",
    "data.verb",
    "index.verb",
    "data.adj",
    "index.adj",
    "data.adv",
    "index.adv",
    "noun.exc",
    "verb.exc",
    "adj.exc",
    "adv.exc",
  )
  for directory in map(pathlib.Path, candidates):
    if not all((directory / name).is_file() for name in required):
      continue
    lexnames = "".join(
      f"{index:02d}\t{name}\t{_WORDNET_POS_NUMBER[name.split('.')[0]]}\n"
      for index, name in enumerate(_WORDNET_LEXNAMES)
    )

    class DirectoryWordNetReader(wordnet_module.WordNetCorpusReader):
      """Reads a WordNet database directory in place, supplying `lexnames` if it lacks one."""

      def open(self, file):
        if file == "lexnames" and not (directory / "lexnames").is_file():
          return io.StringIO(lexnames)
        return super().open(file)

      def map_wn(self, version="wordnet"):
        # The WordNet 3.0 -> nltk_data mapping serves only multilingual (OMW) lookups, which METEOR
        # does not make, and building it needs nltk_data's own WordNet.
        return None

    # NLTK only opens corpus files under the directories of nltk.data.path.
    if str(directory) not in nltk.data.path:
      nltk.data.path.append(str(directory))
    with warnings.catch_warnings():
      # The multilingual (OMW) data is not needed for METEOR's synonym matching.
      warnings.simplefilter("ignore", UserWarning)
      return DirectoryWordNetReader(str(directory), None), str(directory)
  raise LookupError(
    "WordNet not found: no nltk_data corpora/wordnet and no WordNet 3.0 database in"
    f" {candidates} (Debian/Ubuntu: apt-get install wordnet-base; or set CXRJAX_WORDNET_DIR)"
  )


def meteor_nltk(references: Sequence[str | Sequence[str]], hypotheses: Sequence[str]) -> tuple[float, str]:
  """Mean over pairs of NLTK's sentence-level `meteor_score` on whitespace tokens.

  Returns:
    (score in [0, 1], where WordNet was read from).

  Raises:
    ImportError: nltk is not installed. LookupError: no WordNet found.
  """
  reference_lists = corpus.reference_lists(references, hypotheses)
  # nltk: imported only here (about a second; see _nltk_wordnet).
  from nltk.translate import meteor_score as nltk_meteor  # pylint: disable=g-import-not-at-top

  wordnet, source = _nltk_wordnet()
  scores = [
    nltk_meteor.meteor_score([ref.split() for ref in refs], hyp.split(), wordnet=wordnet)
    for refs, hyp in zip(reference_lists, hypotheses)
  ]
  return float(np.mean(scores)), source


def meteor_best_available(
  references: Sequence[str | Sequence[str]], hypotheses: Sequence[str], backend: str = "auto"
) -> MeteorResult:
  """METEOR from the best implementation that runs here, named in the result.

  Args:
    references: per hypothesis, a reference string or a list of them.
    hypotheses: hypothesis strings.
    backend: "auto" (the jar, else NLTK), "jar" or "nltk" (only that one).

  Returns:
    A `MeteorResult`; its score is None (never a made-up number) when no implementation could run,
    and its implementation then says why each one could not.
  """
  if backend not in ("auto", "jar", "nltk"):
    raise ValueError(f"unknown METEOR backend {backend!r}: use 'auto', 'jar' or 'nltk'")
  corpus.reference_lists(references, hypotheses)
  reasons = []
  if backend in ("auto", "jar"):
    try:
      return MeteorResult(meteor_pycocoevalcap_jar(references, hypotheses), METEOR_JAR_IMPLEMENTATION)
    except (FileNotFoundError, RuntimeError, OSError, subprocess.SubprocessError) as error:
      reasons.append(f"jar: {error}")
  if backend in ("auto", "nltk"):
    try:
      score, wordnet_source = meteor_nltk(references, hypotheses)
      # For its version only; meteor_nltk imported it already.
      import nltk  # pylint: disable=g-import-not-at-top

      return MeteorResult(
        score,
        f"NLTK {nltk.__version__} meteor_score, mean over pairs of sentence scores"
        f" (whitespace tokens, WordNet from {wordnet_source})",
      )
    except (ImportError, LookupError, OSError) as error:
      reasons.append(f"nltk: {error}")
  return MeteorResult(None, "unavailable: " + "; ".join(reasons))
