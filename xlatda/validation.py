"""Input checks run before any work starts: keywords, integers and ranges,
finite values, observation time spans, gross observation errors.

Every check raises a typed :class:`~xlatda.errors.XlatdaError` whose
message says what was wrong, the value seen and how to fix it; every check
returns quickly and changes nothing.

The public entry points call them with one line each: :func:`check_run`
(``xlatda.cycle`` / ``xlatda.assimilate``: method settings, members,
background variables and values, observation time span, store target),
:func:`refuse_unknown_keywords` (a decorator of ``fit``, ``encode``,
``decode``, ``encode_obs``, ``fit_score``, ``encode_to_zarr``),
:func:`check_keywords` (``encoder_options``, ``fit_dynamics`` options),
:func:`finite_inputs` (``encode``), :func:`check_store_target`
(``encode_to_zarr``). The single-state variational analyses screen gross
errors with :func:`observed_variance` and :func:`gross_error_mask`
(``gross_error=`` setting, default 5 standard deviations, ``None`` to
disable; the count is the ``n_rejected`` diagnostic), as the ensemble
filters do.

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
import functools
import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import (
    ConfigError,
    KeywordError,
    NonFiniteError,
    StoreError,
    TimeSpanError,
    VariableNotFoundError,
)

__all__ = [
    "check_finite",
    "check_int",
    "check_keywords",
    "check_members",
    "check_nonnegative",
    "check_positive",
    "check_run",
    "check_store_target",
    "check_time_span",
    "finite_inputs",
    "gross_error_mask",
    "keywords_of",
    "method_settings",
    "model_time_step",
    "observed_variance",
    "refuse_unknown_keywords",
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
                    what: str = "observation times",
                    how: str = "pass max_steps= to allow a longer run") -> int:
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
    what, how : str
        What the times are and how to lift the limit, for the message.

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
    ratio = (last - r) / step
    steps = math.ceil(ratio - 1e-9 * max(1.0, ratio)) if last > r else 0
    if steps > max_steps:
        shown = np.max(np.atleast_1d(np.asarray(obs_times)))
        unit = " s" if dates else ""
        raise TimeSpanError(
            f"{what} reach {shown}, {steps} model steps of {step:g}{unit} after the background "
            f"at {np.asarray(t0)}; at most {max_steps} are allowed. Check the times (units, "
            f"calendar, year) or {how}"
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


# -- public entry points ------------------------------------------------------------
def refuse_unknown_keywords(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator: an unknown keyword argument raises :class:`KeywordError` with a hint.

    Python's own ``TypeError`` ("got an unexpected keyword argument") names
    no valid alternative; this one suggests the closest name. A function
    taking ``**kwargs`` is returned unchanged (check those where they are used).

    Examples
    --------
    >>> @refuse_unknown_keywords
    ... def train(*, epochs=1, lr=0.1):
    ...     return epochs
    >>> try:
    ...     train(epoch=2)
    ... except TypeError as err:
    ...     print(err)
    unknown argument 'epoch' for train(); did you mean 'epochs'? valid: epochs, lr
    """
    sig = inspect.signature(func)
    params = sig.parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return func
    names = frozenset(p.name for p in params
                      if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
    where = f"{func.__name__}()"

    @functools.wraps(func)
    def checked(*args: Any, **kwargs: Any) -> Any:
        if not names.issuperset(kwargs):
            check_keywords(kwargs, names, where=where, kind="argument")
        return func(*args, **kwargs)

    return checked


def method_settings(kernel: type, adapter: Any) -> set[str] | None:
    """The settings a registered method takes (``None``: any), from its cycling adapter.

    Asks the adapter's ``setting_names(kernel)``
    (:meth:`xlatda.methods.protocol.CycleMethod.setting_names`).
    """
    names = getattr(adapter, "setting_names", None)
    return names(kernel) if callable(names) else None


def model_time_step(model: Any) -> float | None:
    """One forecast step of ``model`` in its time units (seconds for dates), or None.

    A latent model's ``time_step["value"]``, else a physical model's ``dt``.
    """
    ts = getattr(model, "time_step", None)
    if isinstance(ts, Mapping) and "value" in ts:
        return float(ts["value"])
    dt = getattr(model, "dt", None)
    if isinstance(dt, (int, float, np.floating)) and not isinstance(dt, bool):
        return float(dt)
    return None


def _obs_times(obs: Any) -> np.ndarray | None:
    if isinstance(obs, xr.Dataset) and "time" in obs.coords:
        return np.asarray(obs["time"].values)
    return None


def check_masked_places(obs: Any, model: Any) -> None:
    """Refuse observation places whose cells all lie in the model's fixed mask.

    A latent model fitted on a land-only (or sea-only) product has no data in
    its masked cells; a station whose interpolation weights fall only there
    cannot be read from the decoded state. Checked for every place and variable
    before a run starts (rather than at the first analysis that sees it);
    block-mean observations (with a footprint) are not checked here. The
    check itself is :func:`check_places_on_mask`.

    Raises
    ------
    ObservationError
        Naming the stations (or places), their variables and first times, and
        how to drop them.
    """
    mask = getattr(model, "missing", None)
    grid = getattr(getattr(model, "encoder", None), "grid", None)
    layout = getattr(model, "layout", None)
    if mask is None or grid is None or layout is None:
        return
    check_places_on_mask(obs, mask, grid, layout,
                         neighbours=getattr(model.encoder, "neighbours", 1))


def check_places_on_mask(obs: Any, mask: Any, grid: dict[str, Any], layout: Any, *,
                         neighbours: int = 1) -> None:
    """Refuse observation places whose interpolation cells all lie on ``mask``.

    Parameters
    ----------
    obs : Dataset
        Observations (:mod:`xlatda.obs`).
    mask : array of bool, shape ``(C, *spatial)``
        True where a channel has no data (a model's ``missing``, or the
        fixed NaN of the fields it will be fitted on).
    grid : dict
        The grid description (an encoder's ``grid``, or
        ``layout.grid_spec()`` of the fields).
    layout : StateLayout or Layout
        The fields' layout (variables, channels).
    neighbours : int
        Cells read per place on scattered-point grids (the encoder's).

    Raises
    ------
    ObservationError
        As :func:`check_masked_places`.
    """
    from xlatda.errors import ObservationError

    if not isinstance(obs, xr.Dataset) or not np.asarray(mask).any():
        return
    from xlatda.encoders.training import interpolation_weights, without_data
    from xlatda.obs.contract import to_tensors, validate

    validate(obs, layout)
    table = to_tensors(obs, layout, _validated=True)
    if len(table) == 0 or table.footprint_weight is not None:
        return
    if grid["kind"] == "generic":
        if table.position is None:
            return
        pts = np.asarray(table.position, dtype=np.float64).reshape(-1, 1)
    elif table.lat is None or table.lon is None:
        return
    else:
        pts = np.stack([np.asarray(table.lat, np.float64), np.asarray(table.lon, np.float64)], 1)
    channel = np.asarray(table.channel, dtype=np.int64)
    places, first = np.unique(np.column_stack([pts, channel]), axis=0, return_index=True)
    valid = ~torch.as_tensor(np.asarray(mask, dtype=bool))
    mat = interpolation_weights(grid, torch.as_tensor(places[:, :-1]), int(neighbours))
    empty = without_data(mat, torch.as_tensor(places[:, -1], dtype=torch.long),
                         valid.reshape(valid.shape[0], -1)).numpy()
    if not empty.any():
        return
    rows = np.asarray(table.obs_index)[first[empty]]
    names = obs["station"].values if "station" in obs.coords else None
    times = obs["time"].values if "time" in obs.coords else None
    where = []
    for row, place, ch in zip(rows[:5], places[empty][:5, :-1], places[empty][:5, -1]):
        label = f"station {names[row]!r} at " if names is not None else ""
        at = (f"position {place[0]:g}" if grid["kind"] == "generic"
              else f"lat {place[0]:g}, lon {place[1]:g}")
        t = None if times is None else times[row]
        if isinstance(t, np.datetime64):
            t = np.datetime_as_string(t, unit="s")
        when = "" if t is None else f", first at {t}"
        where.append(f"{label}{at} ({layout.channels[int(ch)]}{when})")
    more = f" and {int(empty.sum()) - 5} more" if empty.sum() > 5 else ""
    how = ("obs.where(~obs.station.isin([...]), drop=True)" if names is not None
           else "obs.where(~(...), drop=True) on their places")
    raise ObservationError(
        f"{int(empty.sum())} observation place(s) lie only on cells where the model has no "
        f"data (its fixed mask, e.g. the sea of a land-only product): {'; '.join(where)}"
        f"{more}. Nothing there can be read from the analysis; drop them before cycling "
        f"(from the station table, or {how})")


def check_run(method: str, kernel: type, adapter: Any, settings: Mapping[str, Any], *,
              members: Any, background: xr.Dataset | None = None, layout: Any = None,
              model: Any = None, obs: Any = None, store: Any = None) -> None:
    """The checks of an :func:`xlatda.cycle` / :func:`xlatda.assimilate` call, before any work.

    - every setting is one the method takes (:func:`method_settings`), else a
      :class:`KeywordError` suggesting the closest;
    - ``members`` is an integer (``>= 2`` when an ensemble is drawn from a
      single background, else ``>= 1``);
    - the background holds every variable the model was fitted on
      (:class:`~xlatda.errors.VariableNotFoundError`, a background problem)
      and only finite values (:class:`NonFiniteError` naming the variable
      and the first bad index);
    - the observation times need at most the ``max_forecast_steps`` option
      of model steps from the background (:func:`check_time_span`);
    - the ``store`` can be written (:func:`check_store_target`);
    - most observations of a variable do not lie far outside the background's
      range (else an :class:`~xlatda.errors.ObservationScaleWarning`: other
      units, all of them rejected by the gross-error check).

    Parameters
    ----------
    method : str
        The method's registered name (for messages).
    kernel, adapter : type
        The registered class and its cycling adapter
        (:func:`xlatda.methods.protocol.adapter_for`).
    settings : mapping
        The user's method settings (before defaults are added).
    members : int or None
        Ensemble size asked for.
    background : Dataset, optional
        The background at one time (may carry ``member``).
    layout : StateLayout, optional
        Its layout (state variables, member dim, time axis).
    model : optional
        The forecast model (its fitted variables and time step).
    obs : Dataset, optional
        The observations (their ``time`` coordinate).
    store : path, optional
        Where the run is written.
    """
    check_keywords(settings, method_settings(kernel, adapter), where=f"method {method!r}")
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        raise ConfigError(
            f"model is a path ({model!r}), not a model; open it first: "
            "model = xlatda.open_model(path)"
        )
    check_store_target(store)
    has_members = (background is not None and layout is not None
                   and getattr(layout, "member_dim", None) in background.dims)
    if members is not None:
        draws = getattr(adapter, "ensemble", True) and getattr(adapter, "forecasts", True)
        check_members(members, minimum=2 if draws and not has_members else 1)
    check_masked_places(obs, model)
    if background is None:
        return
    fitted = getattr(getattr(model, "layout", None), "variables", None)
    if fitted is not None:
        missing = [str(v) for v in fitted if v not in background.data_vars]
        if missing:
            raise VariableNotFoundError(
                f"the background lacks the variable(s) {missing} the model was fitted on; it "
                f"has {[str(v) for v in background.data_vars]}: give the background every "
                "model variable (rename or add them)"
            )
    names = list(getattr(layout, "variables", None) or background.data_vars)
    state = background[[v for v in names if v in background.data_vars]]
    mask = getattr(model, "missing", None)
    if mask is not None and layout is not None:
        # The model's fixed land/sea mask: NaN there is expected (the encoder
        # never reads those cells); anywhere else it is refused.
        import torch

        fields = layout.to_tensor(state, dtype=torch.float64)
        bad = ~torch.isfinite(fields) & ~torch.as_tensor(mask, dtype=torch.bool)
        if bool(bad.any()):
            raise NonFiniteError(
                f"the background holds {int(bad.sum())} NaN/inf values outside the model's "
                "land/sea mask (cells NaN at every training time); fill or mask them before "
                "cycling")
        _check_scale(state, obs)
        return _check_span(background, obs, model, layout, adapter)
    check_finite(state, what="background")
    _check_scale(state, obs)
    return _check_span(background, obs, model, layout, adapter)


def _check_scale(state: xr.Dataset, obs: Any) -> None:
    """Warn when most observations of a variable are far outside the background's range.

    Far: beyond the range ``[lo, hi]`` of the background's values by more than
    the range itself and five observation errors. Observations in other units
    (degC against K) are all rejected by the gross-error check otherwise, and
    the run silently assimilates nothing.
    """
    import warnings

    from xlatda.errors import ObservationScaleWarning

    if not isinstance(obs, xr.Dataset) or "obs" not in obs.dims:
        return
    for name in state.data_vars:
        if name not in obs.data_vars:
            continue
        seen = np.asarray(obs[name].values, dtype=float)
        seen = seen[np.isfinite(seen)]
        values = np.asarray(state[name].values, dtype=float)
        values = values[np.isfinite(values)]
        if seen.size == 0 or values.size == 0:
            continue
        lo, hi = float(values.min()), float(values.max())
        err = obs.get(f"{name}_error_std", obs[name].attrs.get("error_std", 0.0))
        err = np.asarray(getattr(err, "values", err), dtype=float)
        err = float(np.nanmedian(err)) if err.size and np.isfinite(err).any() else 0.0
        margin = max(hi - lo, 5.0 * err, 1e-6 * max(abs(lo), abs(hi)))
        far = (seen < lo - margin) | (seen > hi + margin)
        if far.mean() > 0.5:
            units = obs[name].attrs.get("units")
            warnings.warn(
                f"{int(far.sum())} of {seen.size} observations of {name!r} (median "
                f"{float(np.median(seen)):.4g}) lie far outside the background's range "
                f"[{lo:.4g}, {hi:.4g}]: the gross-error check will reject them and the "
                f"analysis will not use them. Other units? The state is in "
                f"{state[name].attrs.get('units')!r}, the observations "
                f"{'have no units attribute' if units is None else f'in {units!r}'}; "
                "convert them and set obs[name].attrs['units']",
                ObservationScaleWarning, stacklevel=4)


def _check_span(background: Any, obs: Any, model: Any, layout: Any, adapter: Any) -> None:
    """The observation span against the background time and the model's time step."""
    tname = getattr(getattr(layout, "axes", None), "time", None)
    times, step = _obs_times(obs), model_time_step(model)
    if (tname is None or tname not in background.coords or times is None or step is None
            or not getattr(adapter, "forecasts", True)):
        return
    from xlatda.options import get_options

    t0 = np.asarray(background[tname].values)
    dates = _kind(np.atleast_1d(t0)) != "number"
    kinds = {_kind(np.atleast_1d(times)), _kind(np.atleast_1d(t0))}
    if kinds == {"cftime", "datetime64"}:
        time_values(times, t0)  # refuses other calendars with the reason
        raise TimeSpanError(
            "the observation times are cftime dates and the background time a numpy "
            "datetime64 (or the reverse); give both one type, e.g. obs.assign_coords(time=("
            "'obs', xr.CFTimeIndex(obs.time.values).to_datetimeindex()))"
        )
    dt = np.timedelta64(round(step * 1e9), "ns") if dates else step
    check_time_span(times, t0, dt, get_options()["max_forecast_steps"],
                    how="raise the limit with xlatda.set_options(max_forecast_steps=...)")


def check_store_target(store: Any) -> None:
    """Refuse a store path that cannot be written, before any work.

    An existing store must be a writable folder; for a new one, the nearest
    existing parent folder must accept a file (probed with a temporary file,
    so it also holds for root and for read-only file systems).

    Raises
    ------
    StoreError
        (an ``OSError``) naming the path and the reason.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> check_store_target(pathlib.Path(tempfile.mkdtemp()) / "run.zarr")
    """
    import os
    import tempfile
    from pathlib import Path

    if store is None:
        return
    path = Path(os.fspath(store))
    if path.exists() and not path.is_dir():
        raise StoreError(f"the store {str(path)!r} is a file, not a zarr folder; remove it or "
                         "pass another store path")
    folder = path if path.exists() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".xlatda-probe-"):
            pass
    except OSError as err:
        raise StoreError(
            f"cannot write the store {str(path)!r}: {folder} does not accept files "
            f"({err.strerror or err}); pass a store path in a writable folder"
        ) from None


def finite_inputs(fn: Callable[[torch.Tensor], torch.Tensor], *, what: str,
                  allowed: Any = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``fn`` refusing a batch ``(B, ...)`` holding NaN or inf with :class:`NonFiniteError`.

    Checked where the tensor is made, so lazy (per-chunk) inputs are read
    only when computed.

    Parameters
    ----------
    fn : callable
        Tensor function to guard.
    what : str
        What the batch holds, for the message (``"fields to encode"``).
    allowed : bool array, optional
        Places (the trailing dims of the batch) where NaN is expected, such
        as a model's fixed land mask, which ``fn`` fills itself.

    Examples
    --------
    >>> import torch
    >>> double = finite_inputs(lambda x: 2 * x, what="fields to encode")
    >>> double(torch.ones(1, 2)).tolist()
    [[2.0, 2.0]]
    >>> try:
    ...     double(torch.tensor([[1.0, float("nan")]]))
    ... except ValueError as err:
    ...     print(err)  # doctest: +ELLIPSIS
    the fields to encode hold 1 NaN/inf values (first at index (0, 1) of a batch ...
    """
    @functools.wraps(fn)
    def checked(x: torch.Tensor) -> torch.Tensor:
        bad = ~torch.isfinite(x)
        if allowed is not None:
            bad &= ~torch.as_tensor(np.asarray(allowed, bool), device=x.device)
        if bool(bad.any()):
            first = tuple(int(i) for i in bad.nonzero()[0])
            raise NonFiniteError(
                f"the {what} hold {int(bad.sum())} NaN/inf values (first at index {first} of "
                f"a batch of shape {tuple(x.shape)}: sample, channel, grid); fill them (e.g. "
                "ds.fillna(...)) or drop those samples"
            )
        return fn(x)

    return checked


def observed_variance(b: Any, h: Any, xb: torch.Tensor, *, max_dense: int = 4096
                      ) -> torch.Tensor | None:
    """``diag(H B Hᵀ)``: the background variance of each observation, for a gross-error check.

    Parameters
    ----------
    b : Covariance
        The background-error covariance (:mod:`xlatda.methods.covariance`).
    h : Tensor, object with ``.matrix``, or callable
        The observation operator: a (sparse or dense) matrix ``(P, n)`` gives
        the exact value (``B`` made dense up to ``max_dense`` variables, else
        its diagonal only); a nonlinear ``h`` is linearised by ±1σ
        perturbations along ``B``'s square-root columns (up to 1024 variables).
    xb : Tensor (1, n)
        The background.

    Returns
    -------
    Tensor (P,) or None
        None when it cannot be computed cheaply (then no check is made).

    Examples
    --------
    >>> import torch
    >>> from xlatda.methods.covariance import DiagonalCovariance
    >>> b = DiagonalCovariance(torch.tensor([1.0, 4.0], dtype=torch.float64))
    >>> H = torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64)
    >>> observed_variance(b, H, torch.zeros(1, 2, dtype=torch.float64)).tolist()
    [1.0, 1.25]
    """
    matrix = h if isinstance(h, torch.Tensor) else getattr(h, "matrix", None)
    n = xb.shape[-1]
    if isinstance(matrix, torch.Tensor):
        m = matrix.to(xb.dtype)
        if m.layout == torch.strided:
            m = m.to_sparse_coo()
        m = m.to_sparse_coo().coalesce()
        rows, cols = m.indices()
        vals = m.values()
        out = torch.zeros(m.shape[0], dtype=xb.dtype, device=vals.device)
        if n <= max_dense:
            hb = torch.sparse.mm(m, b.dense().to(xb.dtype))  # (P, n)
            return out.index_add_(0, rows, vals * hb[rows, cols])
        return out.index_add_(0, rows, vals**2 * b.diagonal().to(xb.dtype)[cols])
    if not callable(h) or n > 1024:
        return None
    eye = torch.eye(n, dtype=getattr(b, "dtype", xb.dtype), device=xb.device)
    cols = b.sqrt_matvec(eye).to(xb.dtype)  # rows: B^½ e_j
    with torch.no_grad():
        diff = (h(xb + cols) - h(xb - cols)) / 2
    return (diff**2).sum(0)
