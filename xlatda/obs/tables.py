"""Observation sets from station tables and station Datasets.

``from_dataframe(df, ...)``
    a pandas table with one row per observation: time, latitude, longitude,
    one column per observed variable and optionally error columns (what a
    CSV of station reports usually is);
``from_stations(ds, ...)``
    a point Dataset with a ``station`` or ``location`` dimension (and time),
    e.g. station series or reanalysis extracted at cities.

Both return an observation set in the contract of :mod:`xlatda.obs.contract`
(one dimension ``obs``; ``time``, ``lat``, ``lon`` coordinates with CF
attributes; error standard deviations as ``<name>_error_std`` companions or
an ``error_std`` attribute), ready for :func:`xlatda.cycle` or
:func:`xlatda.encode_obs`. Times given as strings are parsed (ISO 8601 and
the formats pandas reads unambiguously) or refused with the first value that
could not be read; time-zone aware times are converted to UTC.

Examples
--------
>>> import io, pandas as pd, xlatda
>>> csv = io.StringIO('''time,lat,lon,t2m
... 2019-03-20T00:00,51.5,-0.1,281.2
... 2019-03-20T00:00,53.4,-2.2,279.8
... 2019-03-20T03:00,51.5,-0.1,280.4''')
>>> obs = xlatda.obs.from_dataframe(pd.read_csv(csv), error_std=1.0)
>>> obs.t2m.dims, obs.t2m.attrs["error_std"], str(obs.time.dtype)
(('obs',), 1.0, 'datetime64[ns]')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from xlatda.errors import ConfigError, ObservationError

__all__ = ["from_dataframe", "from_stations", "parse_times"]

_TIME_NAMES = ("time", "valid_time", "datetime", "date", "timestamp")
_LAT_NAMES = ("lat", "latitude", "lat_deg", "y")
_LON_NAMES = ("lon", "longitude", "long", "lon_deg", "x")
_SUFFIX = "_error_std"
_STATION_NAMES = ("station", "station_id", "station_name", "site", "wmo_id")
_ERROR_NAMES = ("error", "error_std", "obs_error", "sigma")


def parse_times(values: Any, *, name: str = "time") -> np.ndarray:
    """Times as ``datetime64[ns]`` (strings parsed), numbers kept as they are.

    Parameters
    ----------
    values : array-like
        datetime64, pandas Timestamps (naive or time-zone aware), strings,
        cftime dates (kept) or numbers (model time, kept).
    name : str
        Column name for the error message.

    Returns
    -------
    ndarray
        ``datetime64[ns]`` (UTC for aware input) or the numeric values.

    Raises
    ------
    ObservationError
        If strings cannot be read as dates; the message shows the first one.

    Examples
    --------
    >>> parse_times(["2019-03-01 06:00", "2019-03-01T09:00Z"]).tolist()
    [1551420000000000000, 1551430800000000000]
    """
    import pandas as pd

    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]")
    if arr.dtype.kind in "fiu":
        return arr
    if arr.dtype.kind == "O" and arr.size and all(hasattr(v, "calendar") for v in arr.flat):
        return arr  # cftime dates (a model calendar): kept, like the state's time axis
    series = pd.Series(np.asarray(values, dtype=object))
    if isinstance(values, pd.Series) and isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[ns]")
    try:
        parsed = pd.to_datetime(series, utc=True, format="mixed")
    except (ValueError, TypeError) as err:
        bad = None
        for v in series:
            try:
                pd.to_datetime(v, utc=True)
            except (ValueError, TypeError):
                bad = v
                break
        raise ObservationError(
            f"could not read the {name!r} values as dates/times (first unreadable value: "
            f"{bad!r}; {err}); give ISO 8601 strings such as '2019-03-20T06:00', or parse them "
            f"first with pd.to_datetime(df[{name!r}], format=...)"
        ) from None
    if parsed.isna().any():
        first = series[parsed.isna()].iloc[0]
        raise ObservationError(
            f"{int(parsed.isna().sum())} {name!r} values are missing or unreadable (first: "
            f"{first!r}); drop those rows or fill them"
        )
    return parsed.dt.tz_localize(None).to_numpy("datetime64[ns]")


def _pick(columns: Sequence[str], given: str | None, candidates: Sequence[str],
          what: str, required: bool = True) -> str | None:
    if given is not None:
        if given not in columns:
            raise ObservationError(f"no column {given!r} for {what}; the table has {list(columns)}")
        return given
    lower = {str(c).lower(): c for c in columns}
    for c in candidates:
        if c in lower:
            return lower[c]
    if required:
        raise ObservationError(
            f"found no {what} column (looked for {list(candidates)}) among {list(columns)}; "
            f"name it with {what}='column'"
        )
    return None


def _coord_attrs() -> dict[str, dict[str, str]]:
    return {"lat": {"standard_name": "latitude", "units": "degrees_north"},
            "lon": {"standard_name": "longitude", "units": "degrees_east"},
            "time": {"standard_name": "time"}}


def _error_spec(error_std: Any, names: list[str]) -> dict[str, Any]:
    if isinstance(error_std, Mapping):
        missing = [n for n in names if n not in error_std]
        if missing:
            raise ConfigError(f"error_std has no entry for {missing}; give one per variable")
        return dict(error_std)
    return {n: error_std for n in names}


def from_dataframe(
    df: Any,
    *,
    time: str | None = None,
    lat: str | None = None,
    lon: str | None = None,
    values: str | Sequence[str] | Mapping[str, str] | None = None,
    error_std: float | str | Mapping[str, float | str] | None = None,
    units: str | Mapping[str, str] | None = None,
    kind: str | None = None,
    station: str | None = None,
) -> xr.Dataset:
    """An observation set from a table with one row per observation.

    Parameters
    ----------
    df : pandas.DataFrame
        One row per report: a time column (optional for timeless sets),
        latitude, longitude, one column per observed variable (NaN where a
        report lacks it).
    time, lat, lon : str, optional
        Column names; default: found by name (``time``/``date``/``valid_time``,
        ``lat``/``latitude``, ``lon``/``longitude``, any case).
    values : str, list of str or dict, optional
        Value columns; a dict maps column names to state variable names
        (``{"temp_K": "t2m"}``). Default: every numeric column that is not a
        coordinate, error or station column (columns named ``error``,
        ``error_std``, ``obs_error``, ``sigma`` or ``<name>_error_std`` are
        never taken as values).
    error_std : float, str or dict, optional
        Observation error standard deviation, in the variable's units: one
        number for all, the name of a column, or a dict per variable (numbers
        or column names). Default: columns named ``<variable>_error_std``, or,
        for a single value column, a column named ``error`` (or
        ``error_std``, ``obs_error``, ``sigma``).
    units : str or dict, optional
        Units attribute of each variable (checked against the state's).
    kind : str, optional
        Column with the observation kind ("station", "ship", ...).
    station : str, optional
        Column with station identifiers, kept as a coordinate. Default: a
        column named ``station``, ``station_id``, ``station_name``, ``site``
        or ``wmo_id`` (any case), if there is one.

    Returns
    -------
    Dataset
        An observation set (dimension ``obs``), rows sorted by time.

    Raises
    ------
    ObservationError
        Missing columns, unreadable times, no error standard deviation.
    """
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise ConfigError(f"from_dataframe takes a pandas DataFrame, got {type(df).__name__}")
    if len(df) == 0:
        raise ObservationError("the table is empty; there is nothing to assimilate")
    cols = [str(c) for c in df.columns]
    df = df.set_axis(cols, axis=1)
    tcol = _pick(cols, time, _TIME_NAMES, "time", required=time is not None)
    latc = _pick(cols, lat, _LAT_NAMES, "lat")
    lonc = _pick(cols, lon, _LON_NAMES, "lon")
    station = _pick(cols, station, _STATION_NAMES, "station", required=False)
    error_cols = [c for c in cols if c.lower() in _ERROR_NAMES]
    used = {c for c in (tcol, latc, lonc, kind, station) if c is not None} | set(error_cols)
    if isinstance(values, str):
        mapping = {values: values}
    elif isinstance(values, Mapping):
        mapping = dict(values)
    elif values is not None:
        mapping = {v: v for v in values}
    else:
        err_cols = set()
        if isinstance(error_std, str):
            err_cols.add(error_std)
        elif isinstance(error_std, Mapping):
            err_cols |= {v for v in error_std.values() if isinstance(v, str)}
        mapping = {c: c for c in cols if c not in used and not c.endswith(_SUFFIX)
                   and c not in err_cols and pd.api.types.is_numeric_dtype(df[c])}
    missing = [c for c in mapping if c not in cols]
    if missing:
        raise ObservationError(f"no value column(s) {missing}; the table has {cols}")
    if not mapping:
        raise ObservationError(f"found no numeric value columns in {cols}; pass values=[...]")
    names = list(mapping.values())
    if error_std is None:
        errs = {}
        for c, n in mapping.items():
            comp = f"{c}{_SUFFIX}" if f"{c}{_SUFFIX}" in cols else f"{n}{_SUFFIX}"
            if comp not in cols and len(mapping) == 1 and len(error_cols) == 1:
                comp = error_cols[0]
            if comp not in cols:
                raise ObservationError(
                    f"no error standard deviation for {n!r}: pass error_std=1.0 (in the "
                    f"variable's units), error_std='column', or add a column {comp!r}"
                    + (" (or 'error', for a table of one variable)" if len(mapping) == 1
                       else "")
                )
            errs[n] = comp
    else:
        errs = _error_spec(error_std, names)
    order = np.arange(len(df))
    tvals = None
    if tcol is not None:
        tvals = parse_times(df[tcol], name=tcol)
        order = np.argsort(tvals, kind="stable")
        tvals = tvals[order]
    attrs = _coord_attrs()
    coords: dict[str, Any] = {
        "lat": ("obs", pd.to_numeric(df[latc]).to_numpy(float)[order], attrs["lat"]),
        "lon": ("obs", pd.to_numeric(df[lonc]).to_numpy(float)[order], attrs["lon"]),
    }
    if tvals is not None:
        coords["time"] = ("obs", tvals, attrs["time"] if tvals.dtype.kind == "M" else {})
    if kind is not None:
        coords["kind"] = ("obs", df[kind].astype(str).to_numpy()[order])
    if station is not None:
        coords["station"] = ("obs", df[station].astype(str).to_numpy()[order])
    out = xr.Dataset(coords=coords)
    unit_map = units if isinstance(units, Mapping) else {n: units for n in names}
    for c, n in mapping.items():
        vals = pd.to_numeric(df[c], errors="coerce").to_numpy(float)[order]
        out[n] = ("obs", vals, {} if unit_map.get(n) is None else {"units": unit_map[n]})
        e = errs[n]
        if isinstance(e, str):
            if e not in cols:
                raise ObservationError(f"error_std column {e!r} is not in the table {cols}")
            out[f"{n}{_SUFFIX}"] = ("obs", pd.to_numeric(df[e]).to_numpy(float)[order])
        else:
            out[n].attrs["error_std"] = float(e)
    measured = np.zeros(out.sizes["obs"], bool)
    for n in names:
        measured |= np.isfinite(out[n].values)
    return out.isel(obs=np.flatnonzero(measured))


def _full(a: xr.DataArray, dims: list[str], template: xr.DataArray) -> xr.DataArray:
    """``a`` broadcast over every station (and time), in ``dims`` order."""
    a = a.drop_vars([c for c in a.coords if c not in a.dims or c in dims])
    return (a + template).transpose(*dims)


def from_stations(
    ds: xr.Dataset | xr.DataArray,
    *,
    variables: Sequence[str] | Mapping[str, str] | None = None,
    error_std: float | Mapping[str, float] | None = None,
    station_dim: str | None = None,
    time: str | None = None,
) -> xr.Dataset:
    """An observation set from a point Dataset with a station dimension.

    Parameters
    ----------
    ds : Dataset or DataArray
        Variables over ``(station, time)`` (any order) with latitude and
        longitude coordinates along the station dimension, e.g.
        ``era5_daily_surface_cancities_1990-1993.nc`` (``location`` x ``time``).
    variables : list of str or dict, optional
        Variables to take (default all over the station dimension); a dict
        renames them to state variable names (``{"tas": "t2m"}``).
    error_std : float or dict, optional
        Error standard deviation per variable (default: each variable's
        ``error_std`` attribute, else companion ``<name>_error_std``
        variables; refused when neither exists).
    station_dim : str, optional
        Default: ``station``, ``location``, ``site`` or ``stations``.
    time : str, optional
        Time dimension (default ``time`` when present).

    Returns
    -------
    Dataset
        An observation set (dimension ``obs``, one entry per station and time
        with a finite value), sorted by time, with a ``station`` coordinate.
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name if ds.name is not None else "data")
    sdim = station_dim
    if sdim is None:
        sdim = next((d for d in ("station", "location", "site", "stations") if d in ds.dims),
                    None)
        if sdim is None:
            raise ObservationError(
                f"found no station dimension (station/location/site) in {dict(ds.sizes)}; pass "
                "station_dim='name'"
            )
    elif sdim not in ds.dims:
        raise ObservationError(f"no dimension {sdim!r} in {dict(ds.sizes)}")
    tdim = time if time is not None else ("time" if "time" in ds.dims else None)
    if tdim is not None and tdim not in ds.dims:
        raise ObservationError(f"no time dimension {tdim!r} in {dict(ds.sizes)}")
    if isinstance(variables, Mapping):
        mapping = dict(variables)
    else:
        names = list(variables) if variables is not None else [
            str(v) for v, a in ds.data_vars.items()
            if sdim in a.dims and not str(v).endswith(_SUFFIX)
            and set(a.dims) <= {sdim, tdim} and a.dtype.kind in "fiu"]
        mapping = {n: n for n in names}
    missing = [v for v in mapping if v not in ds.data_vars]
    if missing:
        raise ObservationError(f"variables {missing} are not in the Dataset {list(ds.data_vars)}")
    latn = _pick([str(c) for c in ds.coords] + [str(v) for v in ds.data_vars], None,
                 _LAT_NAMES[:2], "lat")
    lonn = _pick([str(c) for c in ds.coords] + [str(v) for v in ds.data_vars], None,
                 _LON_NAMES[:3], "lon")
    if sdim not in ds[latn].dims or ds[latn].ndim != 1:
        raise ObservationError(f"latitude {latn!r} must be 1-D along {sdim!r}, got "
                               f"{ds[latn].dims}")
    dims = [sdim] + ([tdim] if tdim else [])
    n_st = ds.sizes[sdim]
    n_t = ds.sizes[tdim] if tdim else 1
    lat = np.repeat(np.asarray(ds[latn].values, float), n_t)
    lon = np.repeat(np.asarray(ds[lonn].values, float), n_t)
    ids = ds[sdim].values if sdim in ds.coords else np.arange(n_st)
    attrs = _coord_attrs()
    coords: dict[str, Any] = {"lat": ("obs", lat, attrs["lat"]), "lon": ("obs", lon, attrs["lon"]),
                              "station": ("obs", np.repeat(np.asarray(ids).astype(str), n_t))}
    if tdim:
        t = parse_times(ds[tdim].values, name=tdim)
        coords["time"] = ("obs", np.tile(t, n_st), attrs["time"] if t.dtype.kind == "M" else {})
    out = xr.Dataset(coords=coords)
    template = xr.DataArray(np.zeros((n_st, n_t) if tdim else (n_st,)), dims=dims)
    for src, name in mapping.items():
        a = ds[src]
        if not set(a.dims) <= set(dims):
            raise ObservationError(f"variable {src!r} has dims {a.dims}, expected within {dims}")
        vals = np.asarray(_full(a, dims, template).values, float).reshape(-1)
        keep = {k: v for k, v in a.attrs.items() if k in ("units", "long_name", "standard_name")}
        out[name] = ("obs", vals, keep)
        if isinstance(error_std, Mapping) and name in error_std:
            out[name].attrs["error_std"] = float(error_std[name])
        elif error_std is not None and not isinstance(error_std, Mapping):
            out[name].attrs["error_std"] = float(error_std)
        elif "error_std" in a.attrs:
            out[name].attrs["error_std"] = float(a.attrs["error_std"])
        elif f"{src}{_SUFFIX}" in ds.data_vars:
            comp = _full(ds[f"{src}{_SUFFIX}"], dims, template)
            out[f"{name}{_SUFFIX}"] = ("obs", np.asarray(comp.values, float).reshape(-1))
        else:
            raise ObservationError(
                f"no error standard deviation for {name!r}: pass error_std=1.0 (in "
                f"{a.attrs.get('units', 'its units')}) or a dict per variable"
            )
    measured = np.zeros(out.sizes["obs"], bool)
    for name in mapping.values():
        measured |= np.isfinite(out[name].values)
    out = out.isel(obs=np.flatnonzero(measured))
    if tdim:
        out = out.isel(obs=np.argsort(out["time"].values, kind="stable"))
    return out
