"""The one interface every cycling method implements.

:func:`xlatda.cycle` and :func:`xlatda.assimilate` are a small driver: they
look the method up in the registry (:mod:`xlatda.methods.registry`), build
it with :meth:`CycleMethod.build`, forecast the carried ensemble to each
window's first observation time and call :meth:`CycleMethod.analyse`. The
driver knows no method by name.

A method is a class registered under a name
(``@xlatda.methods.methods.register("mine")``) that either derives from
:class:`CycleMethod`, or is a kernel class for which an adapter (a
:class:`CycleMethod` subclass) is registered with :func:`adapts`; the
built-in kernels have theirs in :mod:`xlatda.methods.adapters`.

``analyse(space, ensemble, window, *, generator, state)`` receives

- ``space``: the state space (:mod:`xlatda.spaces`), through which it
  observes (``space.observe(s, table)``), forecasts within a window
  (``space.forecast_observe``, ``space.roll``), and finds places
  (``space.locations``);
- ``ensemble``: control vectors ``(N, n)`` (float64, CPU) at the window's
  first observation time (``None`` for methods with ``forecasts = False``);
- ``window``: an :class:`~xlatda.windows.ObservationWindow` (its tables,
  times and seed);
- ``generator``: the window's generator (seeded from the cycle's seed and
  the window index; every draw must come from it);
- ``state``: the dict of tensors the method returned at the previous
  analysis (``{}`` at the first); the driver stores it with each analysis
  so that a resumed cycle continues exactly.

and returns a :class:`WindowAnalysis`.

Examples
--------
A method that replaces each member by the observed value mean (a toy):

>>> import torch
>>> from xlatda.methods.protocol import CycleMethod, WindowAnalysis
>>> class Nudge(CycleMethod):
...     def __init__(self, *, weight=0.5):
...         self.weight = weight
...     def analyse(self, space, ensemble, window, *, generator, state):
...         table = window.tables[0]
...         hx = space.observe(ensemble, table)
...         shift = self.weight * (table.values.to(hx) - hx.mean(0)).mean()
...         return WindowAnalysis([(ensemble, ensemble + shift)], {}, state, [hx])
>>> Nudge.ensemble, Nudge.windowed
(True, False)
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch

from xlatda.errors import ConfigError
from xlatda.methods.registry import get_method

__all__ = ["DEFAULT_METHOD", "CycleMethod", "WindowAnalysis", "adapter_for", "adapts",
           "cycling_method"]

DEFAULT_METHOD = "etkf"  # what xlatda.cycle / xlatda.assimilate use when no method is named


class WindowAnalysis(NamedTuple):
    """What :meth:`CycleMethod.analyse` returns.

    Attributes
    ----------
    steps : list of (Tensor, Tensor)
        ``(background, analysis)`` control vectors ``(N, n)`` at each
        observation time of the window; the last analysis is carried to the
        next window.
    diagnostics : dict of str to Tensor or number
        Method diagnostics: scalars (one per window: 0-d tensors or Python
        numbers) or ``(K,)`` tensors (one per observation time); they become
        variables of ``CycleResult.diagnostics``.
    state : dict of str to Tensor
        What the method carries to its next analysis (e.g. an adaptive
        inflation estimate); stored with every analysis.
    observed : list of Tensor or None
        The background ensemble in observation space ``(N, P)`` at each time,
        when the method computed it (the driver then does not observe again).
    """

    steps: list[tuple[torch.Tensor, torch.Tensor]]
    diagnostics: dict[str, torch.Tensor]
    state: dict[str, torch.Tensor]
    observed: list[torch.Tensor | None] | None = None


class CycleMethod:
    """Base class of cycling methods (see the module docstring).

    Class attributes tell the driver what the method needs; it checks them
    before any work.

    Attributes
    ----------
    ensemble : bool
        The method analyses an ensemble (``members >= 2``); else one state.
    windowed : bool
        It takes ``window > 1`` observation times per analysis.
    one_time : bool
        :func:`xlatda.assimilate` may call it (one analysis, no forecast).
    forecasts : bool
        The driver forecasts the carried ensemble to each window's start;
        ``False`` for methods that draw each window afresh (score).
    needs_background : bool
        The cycle starts from a background (else it may be ``None``).
    estimates_parameters : bool
        It may estimate parameters carried at the end of the control vector.
    spaces : tuple of str
        State spaces it works in.
    inference : bool
        (An instance attribute.) The method differentiates nothing and keeps
        no autograd graph, so the driver runs each window (forecast, analysis,
        records) under ``torch.inference_mode()``, which spares every tensor
        operation autograd's bookkeeping. Default False: the window runs with
        autograd on, the forecast under ``torch.no_grad()``.
    """

    inference: bool = False
    ensemble: ClassVar[bool] = True
    windowed: ClassVar[bool] = False
    one_time: ClassVar[bool] = True
    forecasts: ClassVar[bool] = True
    needs_background: ClassVar[bool] = True
    estimates_parameters: ClassVar[bool] = True
    spaces: ClassVar[tuple[str, ...]] = ("physical", "latent")

    @classmethod
    def choose_space(cls, model: Any, space: str | None) -> str | None:
        """The space to use for ``model`` (None: the default for the model's kind).

        May refuse a model the method cannot use (raise ``ConfigError``).
        """
        return space

    @classmethod
    def setting_names(cls, kernel: type) -> set[str] | None:
        """The settings :meth:`build` accepts (``None``: any), checked for typos before work.

        Default: the keywords of ``cls`` itself when :meth:`build` is not
        overridden, else those of ``kernel``. Adapters that take settings of
        their own (``b_std``) or filter them add or override them here.
        """
        from xlatda.validation import keywords_of

        own_build = cls.build.__func__ is not CycleMethod.build.__func__
        return keywords_of(kernel if own_build else cls)

    @classmethod
    def build(cls, kernel: type, settings: dict[str, Any], *, space: Any,
              members: int | None) -> CycleMethod:
        """An instance from the user's settings (``kernel`` is the registered class)."""
        try:
            return cls(**settings)
        except TypeError as err:
            raise ConfigError(f"{cls.__name__}: {err}") from None

    @classmethod
    def check_fits(cls, method: str, space: Any, window: int, n_params: int) -> None:
        """Refuse a space, a window length or parameters the method cannot take.

        ``method`` is the name the user gave (for the message), ``space`` the
        state space (its ``kind``), ``n_params`` the number of parameters.
        """
        if space.kind not in cls.spaces:
            raise ConfigError(f"{method!r} analyses the {' or '.join(cls.spaces)} state; use "
                              f"space={cls.spaces[0]!r}")
        if window > 1 and not cls.windowed:
            raise ConfigError(f"window > 1 needs a method that analyses windows of observation "
                              f"times; {method!r} analyses every time on its own")
        if n_params and not cls.estimates_parameters:
            raise ConfigError(f"{method!r} does not estimate parameters; drop params= or use a "
                              "method that does")

    def prepare(self, windows: list[Any]) -> None:
        """Check the windows before any work (raise ``ObservationError``/``ConfigError``)."""

    def analyse(self, space: Any, ensemble: torch.Tensor | None, window: Any, *,
                generator: torch.Generator, state: dict[str, torch.Tensor]) -> WindowAnalysis:
        """Analyse one window (see the module docstring)."""
        raise NotImplementedError  # pragma: no cover


_ADAPTERS: dict[type, type[CycleMethod]] = {}


def adapts(*kernels: type):
    """Class decorator: register a :class:`CycleMethod` as the adapter of ``kernels``.

    The adapter of a class is found along its method resolution order, so
    an adapter of a base class serves its subclasses.
    """

    def deco(adapter: type[CycleMethod]) -> type[CycleMethod]:
        for k in kernels:
            _ADAPTERS[k] = adapter
        return adapter

    return deco


def adapter_for(cls: type) -> type[CycleMethod] | None:
    """The cycling adapter of a registered class: itself if it is a CycleMethod."""
    if isinstance(cls, type) and issubclass(cls, CycleMethod):
        return cls
    for base in getattr(cls, "__mro__", ()):
        if base in _ADAPTERS:
            return _ADAPTERS[base]
    return None


def cycling_method(name: str) -> tuple[type, type[CycleMethod]]:
    """The registered class of method ``name`` and its :class:`CycleMethod` (adapter).

    Unknown names are refused by the registry (the message lists the known
    ones); a registered class without an adapter is refused here, before
    any work.

    Examples
    --------
    >>> import xlatda.methods.adapters  # registers the built-in adapters
    >>> kernel, proto = cycling_method("etkf")
    >>> kernel.__name__, proto.ensemble
    ('ETKF', True)
    """
    kernel = get_method(name)
    proto = adapter_for(kernel)
    if proto is None:
        raise ConfigError(
            f"method {name!r} ({kernel.__name__}) cannot cycle: derive it from "
            "xlatda.methods.protocol.CycleMethod, or register an adapter with "
            "xlatda.methods.protocol.adapts"
        )
    return kernel, proto
