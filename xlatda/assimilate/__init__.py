"""Deprecated alias of :mod:`xlatda.methods` (removed in the next release).

The method kernels moved to :mod:`xlatda.methods` because this subpackage
shared its name with the function :func:`xlatda.assimilate`, which made
``import xlatda.assimilate.ensemble`` fail and ``help(xlatda.assimilate)``
show the wrong object. Old import paths keep working for one release and
warn with a :class:`DeprecationWarning`; importing this alias leaves
``xlatda.assimilate`` callable as the function.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
import warnings

import xlatda.methods as _methods
from xlatda.methods import *  # noqa: F403

__all__ = list(_methods.__all__)

warnings.warn(
    "the subpackage xlatda.assimilate is now xlatda.methods; change "
    "'from xlatda.assimilate.X import Y' to 'from xlatda.methods.X import Y' "
    "(the alias goes in the next release)",
    DeprecationWarning,
    stacklevel=2,
)

# Every module of xlatda.methods (modules added later included) answers under the old name.
for _name in (m.name for m in pkgutil.iter_modules(_methods.__path__)):
    sys.modules[f"{__name__}.{_name}"] = importlib.import_module(f"xlatda.methods.{_name}")


class _CallableAlias(types.ModuleType):
    """Importing a submodule binds this alias as ``xlatda.assimilate``; calls reach the function."""

    def __call__(self, *args, **kwargs):
        from xlatda.cycle import assimilate

        return assimilate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableAlias
