"""The one plug-in rule: a package keeps a `Registry` of its plug-ins, each added by a decorator beside its
definition, and the package's __init__ imports the modules that define them (one line each).

    FAMILIES = registry.Registry("model family", "config.model.name", ConfigError)

    @FAMILIES.register("git")
    class GitCaptioner(nn.Module): ...

    FAMILIES.get(config.model.name)   # an unknown name: one line listing the known ones

Model families, datasets, tasks, evaluators, weight formats and sub-commands are registered this way.
"""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from cxrjax.core.errors import UserError

T = TypeVar("T")


class UnknownName(UserError):
  """A name that no plug-in of a registry was registered under."""


class Registry(Generic[T]):
  """Names -> plug-ins of one kind (classes, functions or descriptions), in registration order."""

  def __init__(self, kind: str, field: str, error: type[UserError] = UnknownName):
    self.kind = kind  # what a plug-in is, e.g. "model family"
    self.field = field  # where a user names one, e.g. "config.model.name" or "--format"
    self.error = error  # the error class an unknown name raises
    self._entries: dict[str, T] = {}

  def register(self, name: str) -> Callable[[T], T]:
    """A decorator adding its argument under `name`; a second plug-in under one name is a programming error."""

    def add(entry: T) -> T:
      self.add(name, entry)
      return entry

    return add

  def add(self, name: str, entry: T) -> None:
    if name in self._entries:
      raise ValueError(f"{self.kind} {name!r} is registered twice")
    self._entries[name] = entry

  def get(self, name: str, field: str | None = None) -> T:
    """The plug-in named `name`; otherwise `error`: one line naming the field (`field` where the caller knows
    exactly which one the user wrote, e.g. "config.evaluators.ce.type") and listing the known names."""
    if name not in self._entries:
      known = ", ".join(sorted(self._entries))
      raise self.error(f"{field or self.field}={name!r}: unknown {self.kind}; known: {known}")
    return self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)

  def items(self) -> Iterator[tuple[str, T]]:
    return iter(self._entries.items())

  def values(self) -> Iterator[T]:
    return iter(self._entries.values())

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self._entries)

  def __len__(self) -> int:
    return len(self._entries)
