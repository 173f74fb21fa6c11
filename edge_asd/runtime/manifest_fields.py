"""Reading one JSON object of a bundle manifest, each key checked and named by its path when wrong.

The typed manifest (:mod:`edge_asd.runtime.manifest`) reads every level through
:class:`Fields`, so that a bad bundle is refused with one line naming the key
(``members[0].sections.01.threshold: expected a number, got 'x'``) rather than a
``KeyError`` deep in scoring.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from edge_asd.errors import ManifestError

T = TypeVar("T")
_KINDS = {str: "a string", int: "a whole number", float: "a number", bool: "true or false", dict: "an object",
          list: "a list"}


def _is(value: Any, kind: type) -> bool:
    if kind is float:  # JSON has one number type: 2 is as good a float as 2.0, true is not
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


class Fields:
    """One JSON object at ``path`` (``""`` for the manifest itself)."""

    def __init__(self, value: Any, path: str = ""):
        if not isinstance(value, dict):
            raise ManifestError(f"manifest {path or 'root'}: expected an object, got {_shown(value)}")
        self.d = value
        self.path = path

    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str, why: str) -> ManifestError:
        return ManifestError(f"manifest key {self.at(key)}: {why}")

    def has(self, key: str) -> bool:
        return key in self.d

    def req(self, key: str, kind: type[T]) -> T:
        if key not in self.d:
            raise self.error(key, "missing")
        return self._checked(key, self.d[key], kind)

    def opt(self, key: str, kind: type[T]) -> T | None:
        """``None`` where the key is absent (an older bundle) or null."""
        value = self.d.get(key)
        return None if value is None else self._checked(key, value, kind)

    def obj(self, key: str) -> "Fields":
        return Fields(self.req(key, dict), self.at(key))

    def parsed(self, key: str, parse: Callable[[Any], T], required: bool = True) -> T | None:
        """``parse(value)``, its ValueError/TypeError/KeyError named by this key."""
        if key not in self.d or self.d[key] is None:
            if required:
                raise self.error(key, "missing")
            return None
        try:
            return parse(self.d[key])
        except ManifestError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise self.error(key, str(exc.args[0]) if isinstance(exc, KeyError) else str(exc)) from None

    def _checked(self, key: str, value: Any, kind: type[T]) -> T:
        if not _is(value, kind):
            raise self.error(key, f"expected {_KINDS.get(kind, kind.__name__)}, got {_shown(value)}")
        return value


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def numbers(f: Fields, key: str, required: bool = True) -> dict[str, float] | None:
    """An object of numbers, e.g. thresholds per section."""
    if not f.has(key) and not required:
        return None
    sub = f.obj(key)
    return {k: float(sub.req(k, float)) for k in sub.d}


def strings(f: Fields, key: str) -> tuple[str, ...]:
    items = f.req(key, list)
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise f.error(f"{key}[{i}]", f"expected a string, got {_shown(item)}")
    return tuple(items)


def objects(f: Fields, key: str) -> list[Fields]:
    return [Fields(item, f"{f.at(key)}[{i}]") for i, item in enumerate(f.req(key, list))]


def drop_none(d: dict) -> dict:
    """A level's dict without the optional keys it does not have (they are absent in the JSON, not null)."""
    return {k: v for k, v in d.items() if v is not None}
