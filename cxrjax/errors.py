"""The one base class of the errors a user can fix: the command line prints them as one line.

Every module raises its own subclass (a bad config, a dataset that is not prepared, an unreadable image,
weights that do not fit); `cxrjax.cli` catches `UserError` and prints `cxrjax <command>: error: <message>`
instead of a traceback. Programming errors are not UserErrors and keep their traceback.
"""


class UserError(ValueError):
  """A mistake in the user's input (config, files, arguments); the message names the file and the problem."""


class ConfigError(UserError):
  """A run that cannot start as configured; raised before any compute."""
