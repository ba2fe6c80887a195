"""Input checks run before any work starts: keywords, integers and ranges,
finite values, observation time spans, gross observation errors.

Every check raises a typed :class:`~xlatda.errors.XlatdaError` whose
message says what was wrong, the value seen and how to fix it; every check
returns quickly and changes nothing.

Examples
--------
>>> from xlatda.validation import check_keywords, check_members
>>> check_keywords({"inflation": 1.05}, ["inflation", "rtps"], where="method 'etkf'")
>>> try:
...     check_keywords({"inflaton": 1.05}, ["inflation", "rtps"], where="method 'etkf'")
... except TypeError as err:
...     print(err)
unknown setting 'inflaton' for method 'etkf'; did you mean 'inflation'? valid: inflation, rtps
>>> check_members(20)
20
"""

from __future__ import annotations

import datetime as _dt
import difflib
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ConfigError, KeywordError, NonFiniteError, TimeSpanError

__all__ = [
    "check_finite",
    "check_int",
    "check_keywords",
    "check_members",
    "check_nonnegative",
    "check_positive",
    "check_time_span",
    "gross_error_mask",
    "keywords_of",
    "time_values",
]


# -- keywords --------------------------------------------------------------------
def keywords_of(func: Callable[..., Any], *, exclude: Iterable[str] = ()) -> set[str] | None:
    """The keyword names ``func`` (a function or a class) accepts.

    Returns ``None`` when it takes ``**kwargs`` (then any name may be valid).

    Examples
    --------
    >>> def f(a, *, b=1, c=2): ...
    >>> sorted(keywords_of(f, exclude=["a"]))
    ['b', 'c']
    """
    target = func.__init__ if inspect.isclass(func) else func
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins without signatures
        return None
    names = set()
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            names.add(p.name)
    names.discard("self")
    return names - set(exclude)


def check_keywords(
    given: Mapping[str, Any] | Iterable[str] | None,
    allowed: Iterable[str] | Callable[..., Any] | None,
    *,
    where: str,
    kind: str = "setting",
    exclude: Iterable[str] = (),
) -> None:
    """Refuse keyword names not in ``allowed``, suggesting the closest valid one.

    Parameters
    ----------
    given : mapping or iterable of str or None
        The keywords passed (a ``**settings`` dict, an ``encoder_options``
        dict, the keys of a store config...).
    allowed : iterable of str or callable or None
        The valid names, or a function/class whose signature gives them
        (:func:`keywords_of`). ``None`` (or a callee taking ``**kwargs``)
        accepts everything.
    where : str
        What takes them, for the message (``"method 'etkf'"``).
    kind : str
        What a keyword is called in the message (``"setting"``, ``"key"``).
    exclude : iterable of str
        Names of ``allowed``'s signature that may not be passed here (set by
        the caller itself, e.g. ``n_channels``).

    Raises
    ------
    KeywordError
        (a ``TypeError``) for the first unknown name, with the closest valid
        name (``difflib.get_close_matches``) and the list of valid ones.
    """
    if not given:
        return
    if allowed is None:
        return
    if callable(allowed) and not isinstance(allowed, (set, frozenset, list, tuple, dict)):
        names = keywords_of(allowed, exclude=exclude)
        if names is None:
            return
    else:
        names = set(allowed) - set(exclude)
    for key in given:
        if key in names:
            continue
        if not isinstance(key, str):
            raise KeywordError(f"{kind} names for {where} must be strings, got {key!r}")
        close = difflib.get_close_matches(key, sorted(names), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else ";"
        valid = ", ".join(sorted(names)) if names else "(none)"
        raise KeywordError(f"unknown {kind} {key!r} for {where}{hint} valid: {valid}")


# -- integers and ranges ----------------------------------------------------------
def check_int(value: Any, name: str, *, minimum: int | None = None) -> int:
    """``value`` as an int, refusing bools, non-integral numbers and values below ``minimum``.

    Examples
    --------
    >>> check_int(3, "window", minimum=1)
    3
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value}")
    return value


def check_members(value: Any, *, name: str = "members", minimum: int = 2) -> int:
    """An ensemble size: an integer ``>= minimum`` (2: one member has no spread)."""
    return check_int(value, name, minimum=minimum)


def _as_float_array(value: Any, name: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, (bool, np.bool_)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a number or an array of numbers, got {value!r}") from None
    if arr.size == 0:
        raise ConfigError(f"{name} is empty; give a number or a non-empty array")
    return arr


def _first_bad(arr: np.ndarray, bad: np.ndarray) -> str:
    flat = int(np.flatnonzero(bad.ravel())[0])
    idx = np.unravel_index(flat, arr.shape) if arr.ndim else ()
    where = f" at index {tuple(int(i) for i in idx)}" if arr.ndim else ""
    return f"{arr.ravel()[flat]!r}{where} ({int(bad.sum())} bad of {arr.size})"


def check_nonnegative(value: Any, name: str) -> Any:
    """Refuse a spread (scalar or array) that is negative or not finite; return it."""
    arr = _as_float_array(value, name)
    bad = ~np.isfinite(arr) | (arr < 0)
    if bad.any():
        raise ConfigError(f"{name} must be finite and >= 0, got {_first_bad(arr, bad)}")
    return value


def check_positive(value: Any, name: str) -> Any:
    """Refuse a scale (scalar or array: a std, a variance, B) that is not finite and > 0."""
    arr = _as_float_array(value, name)
    bad = ~np.isfinite(arr) | (arr <= 0)
    if bad.any():
        raise ConfigError(f"{name} must be finite and > 0, got {_first_bad(arr, bad)}")
    return value


# -- finite values ----------------------------------------------------------------
def _bad_label(da: xr.DataArray, index: tuple[int, ...]) -> str:
    parts = []
    for dim, i in zip(da.dims, index):
        label = f"{dim}={i}"
        if dim in da.coords and da[dim].ndim == 1:
            label += f" ({np.asarray(da[dim].values)[i]})"
        parts.append(label)
    return ", ".join(parts)


def check_finite(obj: Any, *, what: str = "state") -> None:
    """Refuse NaN or inf, naming the variable and the first bad index (and time).

    Parameters
    ----------
    obj : Dataset, DataArray, ndarray or Tensor
        Values to check. Dask-backed data are read once (a reduction per
        variable), so call it on backgrounds and states, not on whole archives.
    what : str
        What ``obj`` is, for the message (``"background"``).

    Raises
    ------
    NonFiniteError
        For the first variable with a NaN or inf.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> ds = xr.Dataset({"x": (("time", "k"), [[0.0, 1.0], [np.nan, 2.0]])},
    ...                 coords={"time": [10, 20]})
    >>> try:
    ...     check_finite(ds, what="background")
    ... except ValueError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    background variable 'x' holds 1 NaN/inf values; the first at time=1 (20), k=0; ...
    """
    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name=obj.name if obj.name is not None else "data")
    if isinstance(obj, xr.Dataset):
        for name, da in obj.data_vars.items():
            if da.dtype.kind not in "fc":
                continue
            bad = ~np.isfinite(np.asarray(da.values))
            if bad.any():
                first = np.unravel_index(int(np.flatnonzero(bad.ravel())[0]), bad.shape)
                raise NonFiniteError(
                    f"{what} variable {str(name)!r} holds {int(bad.sum())} NaN/inf values; the "
                    f"first at {_bad_label(da, tuple(int(i) for i in first))}; fill or drop them "
                    "(e.g. .fillna(...) or .dropna(...)) before assimilating"
                )
        return
    if isinstance(obj, torch.Tensor):
        arr = obj.detach().cpu().numpy()
    else:
        arr = np.asarray(obj)
    if arr.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(arr)
    if bad.any():
        raise NonFiniteError(f"{what} holds NaN/inf values: {_first_bad(arr, bad)}")


# -- times ------------------------------------------------------------------------
_CF_STANDARD = ("standard", "gregorian", "proleptic_gregorian")


def _cftime_to_datetime64(values: np.ndarray, what: str) -> np.ndarray:
    cal = getattr(values.ravel()[0], "calendar", "")
    if cal not in _CF_STANDARD:
        raise TimeSpanError(
            f"{what} are cftime dates in the {cal!r} calendar but the background uses numpy "
            "datetimes; put both on one calendar (e.g. ds.convert_calendar(...) or "
            "decode_times with use_cftime=...)"
        )
    return np.array([np.datetime64(v.isoformat()) for v in values.ravel()],
                    dtype="datetime64[ns]").reshape(values.shape)


def _kind(values: np.ndarray) -> str:
    if np.issubdtype(values.dtype, np.datetime64):
        return "datetime64"
    if values.dtype.kind in "fiu":
        return "number"
    if values.dtype.kind in "US":
        return "string"
    if values.dtype.kind == "O" and values.size:
        first = values.ravel()[0]
        if isinstance(first, str):
            return "string"
        if hasattr(first, "calendar") and hasattr(first, "timetuple"):
            return "cftime"
        if isinstance(first, _dt.datetime):
            return "datetime"
    return "other"


def time_values(obs_times: Any, t0: Any, *, what: str = "observation times"
                ) -> tuple[np.ndarray, float]:
    """``obs_times`` and ``t0`` as floats on one axis (seconds for dates, else model units).

    cftime dates in a standard calendar are converted when ``t0`` is a numpy
    datetime (and the reverse); strings, other calendars and dates against
    numbers are refused.

    Raises
    ------
    TimeSpanError
        If the two cannot be put on one time axis.
    """
    t = np.atleast_1d(np.asarray(obs_times))
    r = np.atleast_1d(np.asarray(t0))
    kinds = {_kind(t), _kind(r)}
    if "string" in kinds:
        raise TimeSpanError(
            f"{what} or the background time are strings (e.g. {t.ravel()[0]!r}); decode them to "
            "datetimes first (xr.decode_cf, or pandas.to_datetime)"
        )
    if "datetime" in kinds:
        t = t.astype("datetime64[ns]") if _kind(t) == "datetime" else t
        r = r.astype("datetime64[ns]") if _kind(r) == "datetime" else r
        kinds = {_kind(t), _kind(r)}
    if kinds == {"cftime", "datetime64"}:
        t = _cftime_to_datetime64(t, what) if _kind(t) == "cftime" else t
        r = _cftime_to_datetime64(r, "the background time") if _kind(r) == "cftime" else r
        kinds = {"datetime64"}
    if kinds == {"cftime"}:
        import cftime

        units = "seconds since 1970-01-01"
        cal = r.ravel()[0].calendar
        tf = np.asarray(cftime.date2num(list(t.ravel()), units, calendar=cal), float)
        return tf, float(cftime.date2num(r.ravel()[0], units, calendar=cal))
    if kinds == {"datetime64"}:
        sec = t.astype("datetime64[ns]").astype(np.int64) / 1e9
        return sec.astype(float), float(r.astype("datetime64[ns]").astype(np.int64)[0] / 1e9)
    if kinds == {"number"}:
        return t.astype(float), float(r.astype(float)[0])
    raise TimeSpanError(
        f"{what} ({_kind(t)}, e.g. {t.ravel()[0]!r}) and the background time ({_kind(r)}, "
        f"{r.ravel()[0]!r}) are not on one time axis; give both as datetimes or both as numbers"
    )


def _step_value(dt: Any, dates: bool) -> float:
    if isinstance(dt, Mapping):
        units = dt.get("units")
        value = float(dt["value"])
        if dates and units != "s":
            raise TimeSpanError(f"the model's time step is in {units!r} units but the times are "
                                "dates; refit the model on datetime times")
        if not dates and units == "s":
            raise TimeSpanError("the model's time step is in seconds but the times are numbers; "
                                "give the observations and background datetime times")
        return value
    if isinstance(dt, (np.timedelta64, _dt.timedelta)):
        if not dates:
            raise TimeSpanError(f"dt={dt!r} is a duration but the times are numbers")
        return float(np.timedelta64(dt, "ns").astype(np.int64) / 1e9)
    if dates:
        raise TimeSpanError(f"dt={dt!r} is a number but the times are dates; pass a "
                            "numpy.timedelta64 or the model's time_step dict")
    return float(dt)


def check_time_span(obs_times: Any, t0: Any, dt: Any, max_steps: int = 100_000, *,
                    what: str = "observation times") -> int:
    """Refuse observation times that would need more than ``max_steps`` model steps.

    Parameters
    ----------
    obs_times : array-like
        Observation times (datetime64, cftime or numbers).
    t0 : scalar
        The background's time.
    dt : float, timedelta or dict
        One model step: a number (numeric times), a ``numpy.timedelta64`` /
        ``datetime.timedelta``, or a model's ``time_step`` dict
        (``{"value": 3600.0, "units": "s"}``).
    max_steps : int
        Most steps a run may take.

    Returns
    -------
    int
        Model steps from ``t0`` to the last observation time.

    Raises
    ------
    TimeSpanError
        If the span needs more than ``max_steps`` steps (the number is in the
        message), or the times cannot be compared.
    ConfigError
        If ``dt`` is not finite and positive.

    Examples
    --------
    >>> import numpy as np
    >>> check_time_span(np.array([0.5, 1.0]), 0.0, 0.05)
    20
    >>> try:
    ...     check_time_span(np.array([1e6]), 0.0, 0.05)
    ... except ValueError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    observation times reach 1000000.0, 20000000 model steps of 0.05 after the background ...
    """
    t, r = time_values(obs_times, t0, what=what)
    dates = _kind(np.atleast_1d(np.asarray(t0))) != "number"
    step = _step_value(dt, dates)
    if not (math.isfinite(step) and step > 0):
        raise ConfigError(f"the model time step must be finite and > 0, got {dt!r}")
    max_steps = check_int(max_steps, "max_steps", minimum=1)
    if t.size == 0:
        return 0
    last = float(np.max(t))
    steps = math.ceil((last - r) / step - 1e-9) if last > r else 0
    if steps > max_steps:
        shown = np.max(np.atleast_1d(np.asarray(obs_times)))
        unit = " s" if dates else ""
        raise TimeSpanError(
            f"{what} reach {shown}, {steps} model steps of {step:g}{unit} after the background "
            f"at {np.asarray(t0)}; at most {max_steps} are allowed. Check the times (units, "
            "calendar, year) or pass max_steps= to allow a longer run"
        )
    return steps


# -- gross errors -----------------------------------------------------------------
def gross_error_mask(innovation: Any, background_var: Any, error_var: Any,
                     k: float = 5.0) -> torch.Tensor:
    """Background check: which observations have ``|d| > k·sqrt(HPHᵀ + R)``.

    Parameters
    ----------
    innovation : Tensor (P,)
        ``y - H(x_b)`` (or minus the ensemble mean's equivalent).
    background_var, error_var : Tensor (P,) or float
        Diagonal of ``H P Hᵀ`` (ensemble spread in observation space) and of ``R``.
    k : float
        Threshold in standard deviations (> 0).

    Returns
    -------
    BoolTensor (P,)
        True where the observation fails the check (to drop, and to report
        in diagnostics).

    Examples
    --------
    >>> import torch
    >>> gross_error_mask(torch.tensor([0.5, 30.0]), torch.tensor([1.0, 1.0]), 0.25).tolist()
    [False, True]
    """
    check_positive(k, "k")
    d = torch.as_tensor(innovation)
    var = torch.as_tensor(background_var, dtype=d.dtype) + torch.as_tensor(error_var,
                                                                          dtype=d.dtype)
    return d.abs() > float(k) * var.clamp_min(0).sqrt()
