"""CF-aware discovery of time, latitude, longitude and vertical axes.

Names do not matter: axes are found through cf-xarray (``standard_name``,
``units``, ``axis``, ``positive`` attributes), then by dtype (datetime-like
dimensions are time) and finally by common names, in that order. Explicit
names always win.

Examples
--------
>>> import numpy as np, xarray as xr
>>> ds = xr.Dataset(
...     {"t": (("y", "x"), np.zeros((2, 3)))},
...     coords={"y": ("y", [10.0, 20.0], {"standard_name": "latitude"}),
...             "x": ("x", [0.0, 1.0, 2.0], {"units": "degrees_east"})})
>>> find_axes(ds)
Axes(time=None, lat='y', lon='x', vertical=None)
"""

from __future__ import annotations

from dataclasses import dataclass

import cf_xarray  # noqa: F401  (registers the .cf accessor)
import numpy as np
import xarray as xr

from xlatda.errors import LayoutError

__all__ = ["Axes", "find_axes", "is_datetime"]

_LAT_NAMES = ("lat", "latitude", "nav_lat", "y_lat")
_LON_NAMES = ("lon", "longitude", "nav_lon", "x_lon")
_TIME_NAMES = ("time", "t", "valid_time")
_VERTICAL_NAMES = ("level", "lev", "plev", "pressure", "isobaricinhpa", "pressure_level", "depth")
_LAT_UNITS = {"degrees_north", "degree_north", "degree_n", "degrees_n", "degreen", "degreesn"}
_LON_UNITS = {"degrees_east", "degree_east", "degree_e", "degrees_e", "degreee", "degreese"}


@dataclass(frozen=True)
class Axes:
    """Names of the coordinates that play each role (``None`` if absent)."""

    time: str | None
    lat: str | None
    lon: str | None
    vertical: str | None


def is_datetime(values: object) -> bool:
    """Whether an array holds datetimes (numpy datetime64 or cftime objects)."""
    arr = np.asarray(values) if not hasattr(values, "dtype") else values
    dtype = arr.dtype
    if np.issubdtype(dtype, np.datetime64):
        return True
    if dtype.kind == "O" and arr.size:
        first = np.ravel(arr)[0]
        return hasattr(first, "calendar") and hasattr(first, "timetuple")
    return False


def _cf_single(obj: xr.Dataset, key: str, mapping: str) -> str | None:
    names = getattr(obj.cf, mapping).get(key, [])
    # Prefer coordinates that are dimension coordinates or 1-D.
    names = [n for n in names if n in obj.coords or n in obj.dims]
    if not names:
        return None
    dims_first = [n for n in names if n in obj.dims]
    return (dims_first or names)[0]


def _by_units(obj: xr.Dataset, units: set[str]) -> str | None:
    for name, coord in obj.coords.items():
        u = str(coord.attrs.get("units", "")).lower().replace(" ", "")
        if u in units:
            return str(name)
    return None


def _by_name(obj: xr.Dataset, names: tuple[str, ...]) -> str | None:
    lower = {str(n).lower(): str(n) for n in obj.coords}
    for cand in names:
        if cand in lower:
            return lower[cand]
    return None


def find_axes(
    obj: xr.Dataset | xr.DataArray,
    *,
    time: str | None = None,
    lat: str | None = None,
    lon: str | None = None,
    vertical: str | None = None,
) -> Axes:
    """Find the names of the time, latitude, longitude and vertical coordinates.

    Parameters
    ----------
    obj : Dataset or DataArray
        The object to inspect.
    time, lat, lon, vertical : str, optional
        Explicit names; each must exist in ``obj`` and wins over discovery.

    Returns
    -------
    Axes

    Raises
    ------
    LayoutError
        If an explicit name is not a coordinate or dimension of ``obj``, or a
        longitude is found without a latitude (or the reverse).
    """
    ds = obj if isinstance(obj, xr.Dataset) else obj.to_dataset(name=obj.name or "_")
    for role, name in (("time", time), ("lat", lat), ("lon", lon), ("vertical", vertical)):
        if name is not None and name not in ds.coords and name not in ds.dims:
            raise LayoutError(
                f"{role}={name!r} is neither a coordinate nor a dimension; "
                f"available: {sorted(map(str, set(ds.coords) | set(ds.dims)))}"
            )

    if time is None:
        time = _cf_single(ds, "T", "axes") or _cf_single(ds, "time", "coordinates")
        if time is None:
            for name in ds.dims:
                if name in ds.coords and is_datetime(ds[name].values):
                    time = str(name)
                    break
        if time is None:
            cand = _by_name(ds, _TIME_NAMES)
            time = cand if cand is not None and cand in ds.dims else None
    if lat is None:
        lat = (
            _cf_single(ds, "latitude", "coordinates")
            or _by_units(ds, _LAT_UNITS)
            or _by_name(ds, _LAT_NAMES)
        )
    if lon is None:
        lon = (
            _cf_single(ds, "longitude", "coordinates")
            or _by_units(ds, _LON_UNITS)
            or _by_name(ds, _LON_NAMES)
        )
    if vertical is None:
        vertical = _cf_single(ds, "Z", "axes") or _cf_single(ds, "vertical", "coordinates")
        if vertical is None or vertical not in ds.dims:
            cand = _by_name(ds, _VERTICAL_NAMES)
            vertical = cand if cand is not None and cand in ds.dims else vertical
        # A scalar vertical coordinate (a single level) is not a dimension.
        if vertical is not None and vertical not in ds.dims:
            vertical = None
    if (lat is None) != (lon is None):
        found, missing = ("longitude", "latitude") if lat is None else ("latitude", "longitude")
        raise LayoutError(
            f"found a {found} coordinate ({lon if lat is None else lat!r}) but no {missing}; "
            f"give the {missing} coordinate the attribute standard_name='{missing}' or pass "
            f"{'lat' if lat is None else 'lon'}='name' explicitly"
        )
    return Axes(time=time, lat=lat, lon=lon, vertical=vertical)
