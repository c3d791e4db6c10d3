"""Files written whole or not at all: a temporary file beside the target, then one rename.

A process killed while writing (SIGKILL, a full disk, a pre-empted VM) leaves the previous file or none,
never half of one: readers of config.json, tokenizer.json, metrics.json or model.json see a complete file.
`os.replace` is atomic on POSIX within one file system, hence the temporary file in the same folder.
Object stores (gs://) commit an object whole on close, so those paths are written directly.
"""

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from typing import Any

from etils import epath


def _is_remote(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


@contextlib.contextmanager
def replaced_on_success(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path beside `path`; when the block ends without an exception it becomes `path`
  (one rename), otherwise it is removed. For writers that take a path (tokenizers, safetensors)."""
  if _is_remote(path):
    yield os.fspath(path)
    return
  path = os.fspath(path)
  folder, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")  # Hidden: no reader globs it.
  try:
    yield temporary
    if os.path.exists(temporary):
      with open(temporary, "rb+") as handle:
        os.fsync(handle.fileno())  # On disk before the rename makes it visible.
    os.replace(temporary, path)
  finally:
    if os.path.lexists(temporary):
      os.remove(temporary)


@contextlib.contextmanager
def open_atomic(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[Any]:
  """`open(path, mode)` ("w" or "wb") whose content replaces `path` only once the block has ended."""
  if mode not in ("w", "wb"):
    raise ValueError(f"open_atomic writes whole files: mode 'w' or 'wb', not {mode!r}")
  if _is_remote(path):
    with epath.Path(path).open(mode, **kwargs) as handle:
      yield handle
    return
  with replaced_on_success(path) as temporary:
    with open(temporary, mode, **kwargs) as handle:
      yield handle


def write_text(path: str | os.PathLike, text: str) -> None:
  """Writes `text` (UTF-8) to `path` atomically."""
  with open_atomic(path, "w", encoding="utf-8") as handle:
    handle.write(text)


def write_json(path: str | os.PathLike, data: Any, **dumps_kwargs) -> None:
  """Writes `data` as JSON and a final newline to `path` atomically (json.dumps's keyword arguments)."""
  write_text(path, json.dumps(data, **dumps_kwargs) + "\n")


def write_lines(path: str | os.PathLike, lines: Any) -> None:
  """Writes each of `lines` (str, without its newline) as one line of `path`, atomically (JSONL files)."""
  with open_atomic(path, "w", encoding="utf-8") as handle:
    for line in lines:
      handle.write(line + "\n")
