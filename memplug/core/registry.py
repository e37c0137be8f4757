"""Registries: name -> class, with the provider of each entry remembered for error messages."""

from __future__ import annotations

from dataclasses import dataclass


class PluginError(RuntimeError):
    """A plugin could not be registered (a name clash, a wrong base class)."""


class UnknownComponentError(KeyError):
    """No component of that kind has that name; the message lists what exists."""

    def __str__(self) -> str:  # KeyError repr-quotes its message; show it plainly
        return str(self.args[0])


@dataclass(frozen=True)
class Entry:
    cls: type
    provider: str


class Registry:
    """The classes of one kind (``encoder``, ``retriever``, ...), by unique ``name``."""

    def __init__(self, kind: str, base: type | None = None) -> None:
        self.kind = kind
        self.base = base
        self.provider = "code"  # set by the manager while a plugin's hook runs
        self._entries: dict[str, Entry] = {}

    def add(self, cls: type, name: str | None = None) -> type:
        """Register ``cls`` under ``name`` (default ``cls.name``). Returns ``cls``."""
        name = name or getattr(cls, "name", "")
        if not isinstance(name, str) or not name:
            raise PluginError(f"{cls!r} has no `name`; every {self.kind} needs a unique string name")
        if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise PluginError(f"{self.kind} {name!r} from {self.provider} must subclass {self.base.__name__}")
        old = self._entries.get(name)
        if old is not None and old.cls is not cls:
            raise PluginError(
                f"duplicate {self.kind} name {name!r}: provided by {old.provider} "
                f"({old.cls.__module__}.{old.cls.__qualname__}) and by {self.provider} "
                f"({cls.__module__}.{cls.__qualname__})"
            )
        self._entries[name] = Entry(cls, self.provider)
        return cls

    def get(self, name: str) -> type:
        try:
            return self._entries[name].cls
        except KeyError:
            listing = ", ".join(f"{n} ({e.provider})" for n, e in sorted(self._entries.items())) or "none"
            raise UnknownComponentError(f"unknown {self.kind} {name!r}; available: {listing}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> dict[str, Entry]:
        return dict(sorted(self._entries.items()))

    def __contains__(self, name: object) -> bool:
        return name in self._entries
