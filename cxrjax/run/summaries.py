"""The training log: metrics.jsonl (one JSON object per record) and the same numbers as TensorBoard
scalars, written by the `tensorboard` package's own event-file writer (no TensorFlow, no torch: the
tensorboardX writer imports torch wherever it is installed).

  tensorboard --logdir WORKDIR/tensorboard

On a URL (gs://) the event file is written locally and uploaded whole (files.upload) at most every
`upload_every_s` seconds, on `flush` and on close: TensorBoard's own writer appends to it, and an object
store cannot append (gcsfs's append mode silently overwrites: the file would keep its last record only).
metrics.jsonl is rewritten on the same occasions (files.AppendLog). The trainer flushes before each
checkpoint, so that a run killed after one and resumed from it loses no record up to its step.
"""

import json
import numbers
import os
import re
import shutil
import tempfile
import time
from typing import Any

from etils import epath
from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from cxrjax.core import files


def tag(split: str, name: str) -> str:
  """The TensorBoard tag of a record's field: `<split>/<name>`, characters other than letters, digits,
  `_ - . /` as `_` (TensorBoard's tag alphabet: 'ROUGE-L (rouge-score)' -> 'ROUGE-L__rouge-score_')."""
  return re.sub(r"[^\w./-]", "_", f"{split}/{name}")


class MetricsLog:
  """Appends each record ({"split": ..., "step": ..., name: value, ...}) to `jsonl_path` and writes its
  numbers as scalars `tag(split, name)` at `step` in an event file under `tensorboard_dir`.

  `first_step` is the step the run starts after (its resume point): TensorBoard then hides what older
  event files hold from the next step on (what a killed run logged after its last checkpoint), as
  workdir.trim_metrics drops those lines of metrics.jsonl.
  """

  def __init__(
    self,
    jsonl_path: str | os.PathLike,
    tensorboard_dir: str | os.PathLike,
    first_step: int = 0,
    upload_every_s: float = 10.0,
  ):
    self._jsonl = files.AppendLog(jsonl_path, upload_every_s)
    self._remote_dir = epath.Path(tensorboard_dir) if files.is_url(tensorboard_dir) else None
    self._local_dir = tempfile.mkdtemp(prefix="cxrjax-events-") if self._remote_dir else str(tensorboard_dir)
    self._upload_every_s, self._uploaded_at, self._events_pending = upload_every_s, time.monotonic(), False
    self._events = EventFileWriter(self._local_dir)
    # A SessionLog START at step s tells TensorBoard to drop the events of older files from step s on.
    self._events.add_event(
      event_pb2.Event(step=first_step + 1, session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START))
    )

  def write(self, record: dict[str, Any]) -> None:
    self._jsonl.write(json.dumps(record))
    values = [
      summary_pb2.Summary.Value(tag=tag(record["split"], name), simple_value=float(value))
      for name, value in record.items()
      if name != "step" and isinstance(value, numbers.Real) and not isinstance(value, bool)
    ]
    self._events.add_event(event_pb2.Event(step=record["step"], summary=summary_pb2.Summary(value=values)))
    self._events.flush()
    self._events_pending = True
    if self._remote_dir is not None and time.monotonic() - self._uploaded_at >= self._upload_every_s:
      self._upload_events()

  def flush(self) -> None:
    """Makes every record written so far durable where the log lives (on a URL: uploads what is pending)."""
    self._jsonl.flush()
    if self._remote_dir is not None and self._events_pending:
      self._upload_events()

  def _upload_events(self) -> None:
    self._remote_dir.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(self._local_dir):  # The local folder of this log, never the URL.
      files.upload(os.path.join(self._local_dir, name), self._remote_dir / name)
    self._uploaded_at, self._events_pending = time.monotonic(), False

  def close(self) -> None:
    self._jsonl.close()
    self._events.close()
    if self._remote_dir is not None:
      self._upload_events()
      shutil.rmtree(self._local_dir, ignore_errors=True)
