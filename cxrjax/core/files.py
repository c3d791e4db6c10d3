"""Files written whole or not at all, on local disks and object stores (gs://) alike.

A process killed while writing (SIGKILL, a full disk, a pre-empted VM) leaves the previous file or none,
never half of one: readers of config.json, tokenizer.json, metrics.json or model.json see a complete file.

  local paths   a temporary file beside the target, then one `os.replace` (atomic on POSIX within one
                file system, hence the same folder).
  URLs (gs://)  the content is kept (in memory, or in a local temporary file for writers that take a path)
                and uploaded in one write through etils.epath: an object store commits an object whole,
                and has no atomic rename (gcsfs renames by copy and delete), so nothing is renamed there.

Every path that holds "://" is a URL and goes through epath only, never through `open` or `os`: a local
function given "gs://b/x" would quietly read or create the local folder "gs:/b/x".
"""

import contextlib
import io
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from etils import epath


def is_url(path: str | os.PathLike) -> bool:
  """Whether `path` is a URL (gs://bucket/...), which only epath may read or write."""
  return "://" in os.fspath(path)


def _local_temporary(path: str) -> str:
  folder, name = os.path.split(os.path.abspath(path))
  return os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")  # Hidden: no reader globs it.


@contextlib.contextmanager
def replaced_on_success(path: str | os.PathLike) -> Iterator[str]:
  """Yields a local temporary path; when the block ends without an exception its file becomes `path`
  (one rename, or one upload for a URL), otherwise it is removed. For writers that take a local path
  (tokenizers, safetensors)."""
  if is_url(path):
    with tempfile.TemporaryDirectory(prefix="cxrjax-upload-") as folder:
      temporary = os.path.join(folder, os.path.basename(os.fspath(path).rstrip("/")))
      yield temporary
      upload(temporary, path)
    return
  path = os.fspath(path)
  temporary = _local_temporary(path)
  try:
    yield temporary
    if os.path.exists(temporary):
      with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())  # On disk before the rename makes it visible.
    os.replace(temporary, path)
  finally:
    if os.path.lexists(temporary):
      os.remove(temporary)


def upload(local_path: str | os.PathLike, path: str | os.PathLike) -> None:
  """Copies the local file `local_path` to `path` (a URL or a local path) in one write."""
  with open(local_path, "rb") as source, epath.Path(path).open("wb") as target:
    shutil.copyfileobj(source, target, 1 << 20)


class _RemoteWriter(io.BytesIO):
  """Bytes kept in memory; `commit` writes them to the URL in one object write."""

  def __init__(self, path: str | os.PathLike):
    super().__init__()
    self.path = epath.Path(path)

  def commit(self) -> None:
    self.path.write_bytes(self.getvalue())


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
  """`open(path, mode)` ("w" or "wb") whose content replaces `path` only once the block has ended;
  text mode takes open's encoding (default UTF-8) and newline."""
  if mode not in ("w", "wb"):
    raise ValueError(f"open_atomic writes whole files: mode 'w' or 'wb', not {mode!r}")
  if is_url(path):
    writer = _RemoteWriter(path)
    if mode == "wb":
      if kwargs:
        raise ValueError(f"binary mode takes no {sorted(kwargs)}")
      yield writer
    else:
      kwargs.setdefault("encoding", "utf-8")
      with io.TextIOWrapper(writer, write_through=True, **kwargs) as handle:
        yield handle
        handle.flush()
        writer.commit()  # Before the wrapper closes the buffer.
      return
    writer.commit()
    return
  with replaced_on_success(path) as temporary:
    with open(temporary, mode, **kwargs) as handle:
      yield handle


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  with open_atomic(path, "w", encoding="utf-8") as handle:
    handle.write(text)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with open_atomic(path, "wb") as handle:
    handle.write(data)


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs) -> None:
  """Writes `data` as JSON and a final newline to `path` atomically (json.dumps's keyword arguments)."""
  write_text(path, json.dumps(data, **dumps_kwargs) + "\n")


def write_lines(path: str | os.PathLike, lines: Any) -> None:
  """Writes each of `lines` (str, without its newline) as one line of `path`, atomically (JSONL files)."""
  with open_atomic(path, "w", encoding="utf-8") as handle:
    for line in lines:
      handle.write(line + "\n")


class AppendLog:
  """A text file that grows by lines (metrics.jsonl), readable while it grows.

  Local: appended to and flushed line by line. A URL: object stores cannot append (gcsfs's "a" mode
  silently overwrites), so the whole text (what the file held at open, then every line) is written again
  at most every `upload_every_s` seconds (GCS allows about one write a second to one object), on
  `flush` and on `close`; a killed process loses at most that many seconds of lines.
  """

  def __init__(self, path: str | os.PathLike, upload_every_s: float = 10.0):
    self.path, self.upload_every_s = epath.Path(path), upload_every_s
    self._remote = is_url(path)
    if self._remote:
      self._text = io.StringIO()
      self._text.write(self.path.read_text() if self.path.exists() else "")
      self._uploaded_at, self._pending = time.monotonic(), False
    else:
      self._handle = open(path, "a", encoding="utf-8")

  def write(self, line: str) -> None:
    """Appends `line` (without its newline)."""
    if not self._remote:
      self._handle.write(line + "\n")
      self._handle.flush()
      return
    self._text.write(line + "\n")
    self._pending = True
    if time.monotonic() - self._uploaded_at >= self.upload_every_s:
      self.flush()

  def flush(self) -> None:
    if not self._remote:
      self._handle.flush()
    elif self._pending:
      write_text(self.path, self._text.getvalue())
      self._uploaded_at, self._pending = time.monotonic(), False

  def close(self) -> None:
    if self._remote:
      self.flush()
    else:
      self._handle.close()
