"""Name registry of the assimilation methods.

Every method module registers its class here under a lower-case name
(``@methods.register("etkf")``); callers look methods up by name, and an
unknown name gives an :class:`~xlatda.errors.UnknownNameError` that lists
the known ones.

Looking a name up imports the built-in method modules first, so
``get_method("etkf")`` works without importing :mod:`xlatda.methods.ensemble`
by hand.

Examples
--------
>>> from xlatda.methods.registry import get_method, method_names
>>> "etkf" in method_names()
True
>>> get_method("ETKF").__name__
'ETKF'
>>> get_method("kalman")
Traceback (most recent call last):
...
xlatda.errors.UnknownNameError: unknown assimilation method 'kalman'; known: ...
"""

from __future__ import annotations

import importlib
from typing import Any

from xlatda._registry import Registry

__all__ = ["get_method", "method_names", "methods"]

methods = Registry("assimilation method")



def _load_builtins() -> None:
    # Importing the package imports every built-in method module, which
    # registers its classes here.
    importlib.import_module("xlatda.methods")


def get_method(name: str) -> Any:
    """Return the class of the assimilation method registered as ``name``.

    Parameters
    ----------
    name : str
        Method name, case-insensitive (``"etkf"``, ``"enkf"``, ``"letkf"``...).

    Returns
    -------
    type
        The method class; instantiate it with its keyword-only settings.

    Raises
    ------
    UnknownNameError
        If no method has that name; the message lists the known names.
    """
    _load_builtins()
    return methods.get(name)


def method_names() -> list[str]:
    """Sorted names of all registered assimilation methods."""
    _load_builtins()
    return methods.names()
