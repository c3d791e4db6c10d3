"""The one base class of the errors a user can fix, and the one place that prints them.

Every module raises its own subclass (a bad config, a dataset that is not prepared, an unreadable image,
weights that do not fit); `guarded` runs a command and turns a `UserError`, or an OS error about a path the
user gave (not found, already exists, not a directory, permission denied), into one line
`cxrjax <command>: error: <message>` and exit status 2. Programming errors are not UserErrors and keep
their traceback.
"""

import os
import sys
from collections.abc import Callable

# OS errors about a path the user named: a mistake in the input, not a bug.
PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


class UserError(ValueError):
  """A mistake in the user's input (config, files, arguments); the message names the file and the problem.

  `details`, when set, is printed before the one-line message (e.g. what a partial download held)."""

  details: str = ""


class ConfigError(UserError):
  """A run that cannot start as configured; raised before any compute."""


def describe(error: BaseException) -> str:
  """The one-line message of a user's mistake: the path and the problem for OS errors."""
  if isinstance(error, OSError) and not isinstance(error, UserError) and error.filename is not None and error.strerror:
    problem = error.strerror
    if isinstance(error, FileExistsError) and os.path.lexists(error.filename) and not os.path.isdir(error.filename):
      problem = "exists and is not a directory"
    return f"{error.filename}: {problem}"
  return str(error)


def guarded(command: str, job: Callable[[], int | None]) -> int:
  """Runs `job()`; a user's mistake becomes one line on stderr and exit status 2. Returns job's status
  (0 for None)."""
  try:
    status = job()
  except (UserError, *PATH_ERRORS) as error:
    if getattr(error, "details", ""):
      print(error.details)
    print(f"cxrjax {command}: error: {describe(error)}", file=sys.stderr, flush=True)
    return 2
  return 0 if status is None else status
