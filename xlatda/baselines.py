"""Reference estimates an analysis should beat: climatology, interpolation, OI.

A latent analysis is worth its model only if it beats what needs no model:

``climatology(train, times)``
    the training-period mean (or the mean per hour of day) at the requested
    times;
``interpolate_stations(obs, like)``
    the observations of each time spread onto the grid of ``like``: linear
    (Delaunay triangles in longitude/latitude, nearest station outside their
    hull), nearest station, or inverse-distance weights;
``optimal_interpolation(obs, train)``
    the best linear unbiased estimate (BLUE) with the training-period mean as
    background and the training sample covariance as background-error
    covariance ``B`` (all variables jointly; bilinear ``H``, ``R`` from the
    observation errors).

All three return Datasets on the grid of the state (dims ``time`` first,
then the state's spatial dims in its order), one field per observation time,
so they are scored with :mod:`xlatda.metrics` or
:func:`xlatda.obs.observe` exactly like an analysis. ``interpolate_stations``
and ``optimal_interpolation`` compute in memory (they read the observation
set and, for OI, the training states); ``climatology`` stays lazy on dask
input.

Examples
--------
>>> import numpy as np, pandas as pd, xarray as xr, xlatda
>>> times = np.arange("2019-03-01", "2019-03-03", dtype="datetime64[h]").astype("M8[ns]")
>>> rng = np.random.default_rng(0)
>>> train = xr.Dataset(
...     {"t2m": (("time", "lat", "lon"), 280 + rng.normal(0, 1, (48, 9, 11)), {"units": "K"})},
...     coords={"time": times, "lat": np.linspace(50.0, 58.0, 9),
...             "lon": np.linspace(-8.0, 2.0, 11)})
>>> df = pd.DataFrame({"time": ["2019-03-03T00:00"] * 3, "lat": [52.1, 55.3, 51.0],
...                    "lon": [-3.2, 0.4, 1.0], "t2m": [281.0, 282.5, 280.2]})
>>> obs = xlatda.obs.from_dataframe(df, error_std=0.5)
>>> oi = xlatda.baselines.optimal_interpolation(obs, train)
>>> li = xlatda.baselines.interpolate_stations(obs, train)
>>> cl = xlatda.baselines.climatology(train, oi.time)
>>> oi.t2m.dims, li.t2m.shape, cl.t2m.shape
(('time', 'lat', 'lon'), (1, 9, 11), (1, 9, 11))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ConfigError, ObservationError

__all__ = ["climatology", "interpolate_stations", "optimal_interpolation"]

_METHODS = ("linear", "nearest", "idw")


def _select(ds: xr.Dataset | xr.DataArray, variables: Sequence[str] | None) -> xr.Dataset:
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name if ds.name is not None else "data")
    if variables is not None:
        missing = [v for v in variables if v not in ds.data_vars]
        if missing:
            raise ConfigError(f"variables {missing} are not in the Dataset (its variables: "
                              f"{list(ds.data_vars)})")
        ds = ds[list(variables)]
    return ds


def _layout(ds: xr.Dataset | xr.DataArray, variables: Sequence[str] | None):
    from xlatda.layout import layout

    ds = _select(ds, variables)
    return ds, layout(ds)


def _obs_table(obs: xr.Dataset, L: Any, what: str):
    from xlatda.obs.contract import to_tensors

    if not isinstance(obs, xr.Dataset) or "obs" not in obs.dims:
        raise ObservationError(f"{what} takes an observation set (a Dataset with dimension "
                               f"'obs', e.g. from xlatda.obs.from_dataframe), got "
                               f"{type(obs).__name__}")
    table = to_tensors(obs, L)
    if len(table) == 0:
        raise ObservationError(f"{what}: the observation set has no finite values")
    return table


def _time_groups(table: Any) -> tuple[np.ndarray | None, list[np.ndarray]]:
    """Unique observation times and, for each, the table entries at that time."""
    if table.time is None:
        return None, [np.arange(len(table))]
    times, inverse = np.unique(table.time, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(times.size + 1))
    return times, [order[bounds[i]:bounds[i + 1]] for i in range(times.size)]


def _to_dataset(L: Any, values: np.ndarray, times: np.ndarray | None, attrs: dict[str, dict],
                what: str) -> xr.Dataset:
    """``(T, C, *spatial)`` values as a Dataset on ``L``'s grid, one field per time."""
    tname = L.axes.time or "time"
    if times is None:
        out = L.to_dataset(torch.from_numpy(values), sample_coords={})
    else:
        out = L.to_dataset(torch.from_numpy(values), sample_coords={tname: times})
        out[tname].attrs = {"standard_name": "time"} if times.dtype.kind == "M" else {}
    for v in out.data_vars:
        out[v].attrs = {k: a for k, a in attrs.get(str(v), {}).items()
                        if k in ("units", "standard_name")} | {
            "long_name": f"{what} of {attrs.get(str(v), {}).get('long_name', v)}"}
    return out


def climatology(train: xr.Dataset | xr.DataArray, times: Any, *, by: str | None = None,
                variables: Sequence[str] | None = None) -> xr.Dataset:
    """The training-period mean, as a field at each of ``times``.

    Parameters
    ----------
    train : Dataset or DataArray
        States of the training period, with a time dimension.
    times : array-like
        Times the climatology is wanted at (e.g. the analysis times).
    by : {None, "hour"}
        ``None``: one mean over the whole period; ``"hour"``: the mean of the
        training states at the same hour of day (a diurnal climatology, a
        much harder baseline for near-surface temperature).
    variables : list of str, optional
        Default: every data variable.

    Returns
    -------
    Dataset
        ``(time, *spatial)`` with the state's spatial dims and attributes.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> t = np.arange("2019-03-01", "2019-03-03", dtype="datetime64[h]").astype("M8[ns]")
    >>> ds = xr.Dataset({"x": ("time", np.arange(48.0) % 24)}, coords={"time": t})
    >>> later = t[:2] + np.timedelta64(3, "D")
    >>> climatology(ds, later).x.values.tolist()
    [11.5, 11.5]
    >>> climatology(ds, later, by="hour").x.values.tolist()
    [0.0, 1.0]
    """
    from xlatda.cf import find_axes

    ds = _select(train, variables)
    tname = find_axes(ds).time
    if tname is None or tname not in ds.dims:
        raise ConfigError(f"climatology needs training states with a time dimension; found "
                          f"dims {dict(ds.sizes)}")
    times = np.atleast_1d(np.asarray(times))
    if by is None:
        mean = ds.mean(tname)
        out = mean.expand_dims({tname: times}).transpose(tname, ...)
    elif by == "hour":
        own, wanted = _hours(np.asarray(ds[tname].values)), _hours(times)
        if own is None or wanted is None:
            raise ConfigError("climatology(by='hour') needs datetime times in the training "
                              f"states and in `times`; got {ds[tname].dtype} and {times.dtype}")
        hourly = ds.assign_coords(hour=(tname, own)).groupby("hour").mean(tname)
        hours = xr.DataArray(wanted, dims=tname)
        missing = sorted(set(hours.values.tolist()) - set(hourly.hour.values.tolist()))
        if missing:
            raise ConfigError(f"climatology(by='hour'): the training states have no data at "
                              f"hour(s) {missing} of the requested times")
        out = hourly.sel(hour=hours).drop_vars("hour").assign_coords({tname: times})
        out = out.transpose(tname, ...)
    else:
        raise ConfigError(f"climatology: by must be None or 'hour', got {by!r}")
    for v in out.data_vars:
        out[v].attrs = dict(ds[v].attrs) | {
            "long_name": f"climatology of {ds[v].attrs.get('long_name', v)}"}
    out[tname].attrs = dict(ds[tname].attrs)
    return out


def _hours(values: np.ndarray) -> np.ndarray | None:
    """Hour of day of numpy datetimes or cftime dates (any calendar); None for others."""
    if values.dtype.kind == "M":
        return values.astype("datetime64[h]").astype(np.int64) % 24
    if values.dtype.kind == "O" and values.size and all(hasattr(v, "hour") for v in values.flat):
        return np.array([v.hour for v in values.flat], dtype=np.int64).reshape(values.shape)
    return None


def _interpolate(points: np.ndarray, values: np.ndarray, targets: np.ndarray,
                 method: str, power: float) -> np.ndarray:
    """``values (P, K)`` at ``points (P, 2)`` (lon, lat degrees) -> ``(Q, K)`` at targets."""
    from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator

    if method == "nearest" or (method == "linear" and len(points) < 3):
        return NearestNDInterpolator(points, values)(targets)
    if method == "linear":
        try:
            lin = LinearNDInterpolator(points, values)(targets)
        except Exception:  # qhull: collinear or duplicate stations, no triangles
            return NearestNDInterpolator(points, values)(targets)
        near = NearestNDInterpolator(points, values)(targets)
        return np.where(np.isfinite(lin), lin, near)
    # inverse distance on the sphere (haversine)
    p = np.deg2rad(points)[None]
    q = np.deg2rad(targets)[:, None]
    a = (np.sin((q[..., 1] - p[..., 1]) / 2) ** 2
         + np.cos(q[..., 1]) * np.cos(p[..., 1]) * np.sin((q[..., 0] - p[..., 0]) / 2) ** 2)
    d = 2 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
    w = 1.0 / np.maximum(d, 1e-12) ** power
    return (w @ values) / w.sum(1, keepdims=True)


def interpolate_stations(obs: xr.Dataset, like: xr.Dataset | xr.DataArray, *,
                         method: str = "linear", variables: Sequence[str] | None = None,
                         power: float = 2.0) -> xr.Dataset:
    """The observations of each time interpolated onto the grid of ``like``.

    Parameters
    ----------
    obs : Dataset
        An observation set (:mod:`xlatda.obs.contract`) with latitude and
        longitude.
    like : Dataset or DataArray
        A state on the target grid (latitude/longitude grid or point set);
        only its coordinates are used.
    method : {"linear", "nearest", "idw"}
        ``"linear"``: barycentric in the Delaunay triangles of the stations
        (in longitude/latitude degrees), nearest station outside their hull
        (and at times with fewer than 3 stations); ``"nearest"``: nearest
        station; ``"idw"``: weights ``1 / d**power`` by great-circle
        distance ``d``.
    variables : list of str, optional
        State variables (default: those of ``like`` that are observed).
    power : float
        Exponent of the inverse-distance weights.

    Returns
    -------
    Dataset
        ``(time, *spatial)``, one field per observation time (variables
        without observations at a time are NaN there).

    Raises
    ------
    ObservationError
        Not an observation set, or one without latitude/longitude.
    ConfigError
        Unknown ``method``.

    Examples
    --------
    >>> import numpy as np, pandas as pd, xarray as xr, xlatda
    >>> like = xr.Dataset({"x": (("lat", "lon"), np.zeros((3, 3)))},
    ...                   coords={"lat": [0.0, 1.0, 2.0], "lon": [0.0, 1.0, 2.0]})
    >>> df = pd.DataFrame({"lat": [0.0, 0.0, 2.0], "lon": [0.0, 2.0, 0.0], "x": [0.0, 2.0, 4.0]})
    >>> obs = xlatda.obs.from_dataframe(df, error_std=1.0)
    >>> interpolate_stations(obs, like).x.values[0].tolist()  # the plane x = 2 lon/2 + 4 lat/2
    [0.0, 1.0, 2.0]
    """
    if method not in _METHODS:
        raise ConfigError(f"interpolate_stations: method must be one of {_METHODS}, got "
                          f"{method!r}")
    names = variables
    if names is None and isinstance(like, xr.Dataset):
        names = [str(v) for v in like.data_vars if v in obs.data_vars] or None
    ds, L = _layout(like, names)
    if L.kind not in ("latlon", "points"):
        raise ConfigError(f"interpolate_stations needs a latitude/longitude grid or point "
                          f"set; the state's layout is {L.kind!r}")
    table = _obs_table(obs, L, "interpolate_stations")
    if table.lat is None or table.lon is None:
        raise ObservationError("interpolate_stations needs observation latitudes and "
                               "longitudes")
    if L.kind == "latlon":
        glat, glon = np.meshgrid(L.lat, L.lon, indexing="ij")
        if L.spatial_dims[0] != L.axes.lat:
            glat, glon = glat.T, glon.T
        targets = np.stack([glon.ravel(), glat.ravel()], -1)
    else:
        targets = np.stack([np.asarray(L.lon, float), np.asarray(L.lat, float)], -1)
    times, groups = _time_groups(table)
    n_ch, shape = L.n_channels, L.spatial_shape
    out = np.full((len(groups), n_ch, int(np.prod(shape))), np.nan)
    values = table.values.numpy()
    channel = table.channel.numpy()
    for c in range(n_ch):
        # one interpolator per set of station places; its values carry every time at once
        places: dict[bytes, tuple[np.ndarray, list[int], list[np.ndarray]]] = {}
        for t, idx in enumerate(groups):
            sel = idx[channel[idx] == c]
            if sel.size == 0:
                continue
            sel = sel[np.lexsort((table.lat[sel], table.lon[sel]))]
            pts = np.stack([table.lon[sel], table.lat[sel]], -1)
            key = pts.tobytes()
            entry = places.setdefault(key, (pts, [], []))
            entry[1].append(t)
            entry[2].append(values[sel])
        for pts, ts, vals in places.values():
            out[ts, c] = _interpolate(pts, np.stack(vals, -1), targets, method, power).T
    attrs = {v: dict(ds[v].attrs) for v in ds.data_vars}
    label = {"linear": "linear interpolation", "nearest": "nearest-station value",
             "idw": "inverse-distance interpolation"}[method]
    return _to_dataset(L, out.reshape(len(groups), n_ch, *shape), times, attrs,
                       f"{label} of the observations")


def optimal_interpolation(obs: xr.Dataset, train: xr.Dataset | xr.DataArray, *,
                          variables: Sequence[str] | None = None) -> xr.Dataset:
    r"""Optimal interpolation (BLUE) with the training statistics as background.

    At every observation time, with ``x_b`` the training-period mean and
    ``B`` the training sample covariance (all grid points and variables
    jointly, so the observations of one variable update the others),

    .. math:: x_a = x_b + B H^T (H B H^T + R)^{-1} (y - H x_b),

    ``H`` bilinear interpolation to the observation places and ``R``
    diagonal from the observations' error standard deviations. ``B`` is
    never formed: with ``A`` the ``(n, S)`` anomalies over ``sqrt(n - 1)``,
    ``B H^T = A^T (H A^T)^T``, so the cost is linear in the grid size. This
    is the "statistical interpolation" baseline: it knows the training
    period's spatial patterns but not the weather of the day.

    Parameters
    ----------
    obs : Dataset
        An observation set (:mod:`xlatda.obs.contract`).
    train : Dataset or DataArray
        Training states with a time dimension (at least 2).
    variables : list of str, optional
        State variables (default: all of ``train``).

    Returns
    -------
    Dataset
        ``(time, *spatial)`` analyses, one per observation time, on the grid
        of ``train``; NaN where the training data are NaN (land/sea masks).
        Observations whose interpolation stencil touches such cells are not
        used.

    Raises
    ------
    ObservationError
        Not an observation set, no usable observation, or none inside the
        grid.
    ConfigError
        Fewer than two training states.

    Examples
    --------
    One observation of a two-point state whose points vary together: the
    analysis moves both, the unobserved one by the regression coefficient.

    >>> import numpy as np, xarray as xr, xlatda
    >>> train = xr.Dataset({"x": (("time", "k"), [[1.0, 2.0], [-1.0, -2.0]])},
    ...                    coords={"time": [0.0, 1.0], "k": [0.0, 1.0]})
    >>> obs = xr.Dataset({"x": ("obs", [1.0], {"error_std": 1.0})},
    ...                  coords={"k": ("obs", [0.0]), "time": ("obs", [2.0])})
    >>> optimal_interpolation(obs, train).x.values.round(3).tolist()  # B = [[2, 4], [4, 8]]
    [[0.667, 1.333]]
    """
    from xlatda.obs.operator import build_operator

    ds, L = _layout(train, variables)
    tname = L.axes.time
    if tname is None or tname not in ds.dims or ds.sizes[tname] < 2:
        raise ConfigError(f"optimal_interpolation needs at least 2 training states along a "
                          f"time dimension; found dims {dict(ds.sizes)}")
    table = _obs_table(obs, L, "optimal_interpolation")
    x = L.to_tensor(ds, dtype=torch.float64)  # (n, C, *S)
    if x.ndim != 2 + len(L.spatial_dims):
        raise ConfigError(f"optimal_interpolation: train must have one sample dim ({tname}); "
                          f"found {dict(ds.sizes)}; select one trajectory/member first")
    n = x.shape[0]
    invalid = torch.isnan(x).any(0)  # (C, *S)
    mean = torch.where(invalid, 0.0, x.nan_to_num().mean(0))
    anom = torch.where(invalid, 0.0, x.nan_to_num() - mean) / np.sqrt(n - 1)
    op = build_operator(L, table)
    touched = op(invalid.to(torch.float64)[None])[0] > 0
    keep = np.flatnonzero(~touched.numpy())
    if keep.size == 0:
        raise ObservationError("optimal_interpolation: every observation's interpolation "
                               "stencil touches grid cells that are NaN in the training data")
    table = table.select(keep)
    op = build_operator(L, table)
    ha = op(anom)  # (n, P): H A^T as rows of the anomalies
    d = table.values - op(mean[None])[0]  # innovations (P,)
    r2 = table.error_std ** 2
    times, groups = _time_groups(table)
    pmax = max(g.size for g in groups)
    # padded batch over observation times: unused slots get identity rows, zero innovations
    idx = torch.zeros(len(groups), pmax, dtype=torch.long)
    used = torch.zeros(len(groups), pmax, dtype=torch.bool)
    for t, g in enumerate(groups):
        idx[t, :g.size] = torch.as_tensor(g)
        used[t, :g.size] = True
    hat = ha.T[idx] * used[..., None]  # (T, Pmax, n)
    s = hat @ hat.transpose(1, 2) + torch.diag_embed(torch.where(used, r2[idx], 1.0))
    w = torch.linalg.solve(s, torch.where(used, d[idx], 0.0)[..., None])[..., 0]
    coef = (hat.transpose(1, 2) @ w[..., None])[..., 0]  # (T, n)
    fields = mean + torch.einsum("tn,n...->t...", coef, anom)
    fields = torch.where(invalid, float("nan"), fields)
    attrs = {v: dict(ds[v].attrs) for v in ds.data_vars}
    return _to_dataset(L, fields.numpy(), times, attrs, "optimal interpolation")
