"""A small name registry shared by encoders, dynamics and assimilation methods.

Examples
--------
>>> from xlatda._registry import Registry
>>> methods = Registry("assimilation method")
>>> @methods.register("etkf")
... class ETKF:
...     pass
>>> methods.get("ETKF") is ETKF
True
>>> methods.get("kalman")
Traceback (most recent call last):
...
xlatda.errors.UnknownNameError: unknown assimilation method 'kalman'; known: 'etkf'
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from xlatda.errors import UnknownNameError

__all__ = ["Registry"]


class Registry:
    """Map lower-case names to classes or functions.

    Parameters
    ----------
    what : str
        What the registry holds, used in error messages ("encoder").
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, Any] = {}

    def register(self, name: str) -> Callable[[Any], Any]:
        """Decorator registering an object under ``name`` (case-insensitive)."""
        key = name.lower()

        def deco(obj: Any) -> Any:
            if key in self._items and self._items[key] is not obj:
                raise ValueError(f"{self.what} {key!r} is registered twice")
            self._items[key] = obj
            return obj

        return deco

    def get(self, name: str) -> Any:
        """Return the object registered as ``name``.

        Raises
        ------
        UnknownNameError
            If nothing is registered under that name; the message lists the
            known names.
        """
        key = str(name).lower()
        try:
            return self._items[key]
        except KeyError:
            known = ", ".join(repr(k) for k in sorted(self._items)) or "(none)"
            raise UnknownNameError(f"unknown {self.what} {name!r}; known: {known}") from None

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
