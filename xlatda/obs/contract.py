"""The observation contract: validation and conversion to tensors.

An observation set is an :class:`xarray.Dataset` with one dimension ``obs``:

- coordinates: ``time`` (optional), the location coordinates of the state
  (latitude and longitude whatever their names, or the generic dimension's
  coordinate such as Lorenz-96's site index), optional ``kind``
  ("station", "satellite", ...) for multimodal sets;
- data variables named like the state variables they observe, NaN where an
  observation does not measure that variable;
- for each, an error standard deviation as a companion variable
  ``<name>_error_std`` or an ``error_std`` attribute (same units);
- optionally, a footprint (area observations such as the block means of
  :func:`xlatda.obs.coarsen`): coordinates along ``("obs", "footprint")``
  ``footprint_weight`` (non-negative, normalised per observation when used)
  and the points it weights, ``footprint_lat``/``footprint_lon`` in degrees
  (or ``footprint_position`` on a generic layout). An observation is then the
  weighted mean of the state at those points (the operator averages them);
  a row of weights that is all NaN or zero marks a point observation (as
  after :func:`xlatda.obs.concat` with point sets). ``footprint`` is the only
  second dimension allowed, and only on these coordinates.

:func:`validate` checks all of this against a :class:`~xlatda.StateLayout`
before any work is done; :func:`to_tensors` flattens a valid set into one
entry per measured value (the "long" form kernels use).

Garbage is refused, never dropped or assimilated silently: NaN marks "not
measured", but ``inf`` values, values equal to the variable's undecoded
``_FillValue``/``missing_value`` or of magnitude ``>= fill_threshold``
(default 1e30: netCDF's default fill is 9.97e36), and values outside a
CF ``valid_min``/``valid_max``/``valid_range`` (of the observations or the
state) or outside ``bounds=`` are refused with the variable and the first
obs index. Latitudes/longitudes with ``units`` in radians are refused (there
is no silent conversion: convert with ``numpy.rad2deg`` and set
``units="degrees_north"``/``"degrees_east"``); string times are refused (decode
them first). Comparing observation times with the background and the
model's time step is :func:`xlatda.validation.check_time_span`, and the
background check of gross errors is :func:`xlatda.validation.gross_error_mask`.

Examples
--------
>>> import numpy as np, xarray as xr, xlatda
>>> state = xr.Dataset(
...     {"h": (("lat", "lon"), np.zeros((3, 4)), {"units": "m"})},
...     coords={"lat": ("lat", [0.0, 10.0, 20.0], {"standard_name": "latitude"}),
...             "lon": ("lon", [0.0, 10.0, 20.0, 30.0], {"standard_name": "longitude"})})
>>> obs = xr.Dataset({"h": ("obs", [1.0, 2.0], {"units": "m", "error_std": 0.5})},
...                  coords={"lat": ("obs", [5.0, 15.0]), "lon": ("obs", [5.0, 25.0])})
>>> table = to_tensors(obs, xlatda.layout(state))
>>> table.values.tolist(), table.error_std.tolist(), table.channel.tolist()
([1.0, 2.0], [0.5, 0.5], [0, 0])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import xarray as xr

from xlatda.cf import is_datetime
from xlatda.errors import ObservationError, UnitsError, VariableNotFoundError
from xlatda.layout import StateLayout
from xlatda.obs.observation_table import ObservationTable
from xlatda.obs.operator import build_operator

__all__ = ["FOOTPRINT_DIM", "FOOTPRINT_WEIGHT", "OBS_DIM", "ObservationTable", "error_std_of",
           "to_tensors", "validate"]

OBS_DIM = "obs"
ERROR_SUFFIX = "_error_std"
FOOTPRINT_DIM = "footprint"
FOOTPRINT_WEIGHT = "footprint_weight"


def _state_var_names(obs: xr.Dataset) -> list[str]:
    return [str(v) for v in obs.data_vars if not str(v).endswith(ERROR_SUFFIX)]


def error_std_of(obs: xr.Dataset, name: str) -> np.ndarray:
    """Error standard deviations of variable ``name`` (companion or attribute).

    Raises
    ------
    ObservationError
        If neither ``<name>_error_std`` nor an ``error_std`` attribute exists.
    """
    comp = f"{name}{ERROR_SUFFIX}"
    if comp in obs.data_vars:
        return np.asarray(obs[comp].values, dtype=float)
    if "error_std" in obs[name].attrs:
        return np.full(obs.sizes[OBS_DIM], float(obs[name].attrs["error_std"]))
    if "error_std" in obs.attrs:
        return np.full(obs.sizes[OBS_DIM], float(obs.attrs["error_std"]))
    raise ObservationError(
        f"observations of {name!r} have no error standard deviation; add a variable "
        f"{comp!r} or the attribute error_std=... to obs[{name!r}]"
    )


def _coord(obs: xr.Dataset, name: str | None) -> np.ndarray | None:
    if name is None:
        return None
    if name in obs.coords or name in obs.data_vars:
        return np.asarray(obs[name].values)
    return None


def _location_names(obs: xr.Dataset, layout: StateLayout) -> dict[str, str | None]:
    """Names of the latitude/longitude (or generic position) coords in ``obs``."""
    from xlatda.cf import find_axes

    if layout.kind in ("latlon", "points"):
        try:
            # the footprint coordinates (degrees too) are not the observation's location
            axes = find_axes(obs.drop_dims(FOOTPRINT_DIM, errors="ignore"))
            lat, lon = axes.lat, axes.lon
        except Exception:
            lat = lon = None
        lat = lat or (layout.axes.lat if layout.axes.lat in obs.coords else None)
        lon = lon or (layout.axes.lon if layout.axes.lon in obs.coords else None)
        if lat is None or lon is None:
            raise ObservationError(
                "observations have no latitude/longitude coordinates along 'obs'; add "
                f"coordinates named like the state's ({layout.axes.lat!r}, {layout.axes.lon!r}) "
                "or with standard_name 'latitude'/'longitude'"
            )
        return {"lat": lat, "lon": lon, "position": None}
    dim = layout.spatial_dims[0]
    if len(layout.spatial_dims) != 1:
        raise ObservationError(
            f"observations of generic layouts with {len(layout.spatial_dims)} spatial dims "
            "are not supported; stack the spatial dims into one first"
        )
    if dim not in obs.coords:
        raise ObservationError(
            f"observations need a coordinate {dim!r} along 'obs' giving the position on the "
            f"state's {dim!r} dimension"
        )
    return {"lat": None, "lon": None, "position": dim}


FILL_THRESHOLD = 1e30
_RADIANS = ("radian", "radians", "rad")


def _first_obs(mask: np.ndarray) -> str:
    idx = np.flatnonzero(mask)
    return f"{int(mask.sum())} observations (first at obs index {idx[:5].tolist()})"


def _valid_range(attrs: dict[str, Any]) -> tuple[float, float]:
    lo, hi = -np.inf, np.inf
    if "valid_range" in attrs:
        rng = np.asarray(attrs["valid_range"], dtype=float).ravel()
        if rng.size == 2:
            lo, hi = float(rng[0]), float(rng[1])
    lo = float(attrs.get("valid_min", lo))
    hi = float(attrs.get("valid_max", hi))
    return lo, hi


def _check_values(obs: xr.Dataset, name: str, values: np.ndarray, spec_attrs: dict[str, Any],
                  fill_threshold: float | None, bounds: dict[str, Any] | None) -> None:
    """Refuse inf, fill values and values outside the valid range of one variable."""
    inf = np.isinf(values)
    if inf.any():
        raise ObservationError(
            f"observations of {name!r} hold inf at {_first_obs(inf)}; inf is not a missing "
            "value marker: set those entries to NaN (obs.where(np.isfinite(obs))) or drop them"
        )
    finite = np.isfinite(values)
    attrs = {**obs[name].encoding, **obs[name].attrs}
    for key in ("_FillValue", "missing_value"):
        if key in attrs and attrs[key] is not None:
            markers = np.atleast_1d(np.asarray(attrs[key], dtype=float))
            hit = finite & np.isin(values, markers)
            if hit.any():
                raise ObservationError(
                    f"observations of {name!r} equal their {key} {markers.tolist()} at "
                    f"{_first_obs(hit)}: the file was not decoded; open it with "
                    "xr.open_dataset(..., mask_and_scale=True) or xr.decode_cf(obs)"
                )
    if fill_threshold is not None:
        huge = finite & (np.abs(values) >= float(fill_threshold))
        if huge.any():
            raise ObservationError(
                f"observations of {name!r} reach {values[huge][0]:g} at {_first_obs(huge)}: "
                "that looks like an undecoded fill value; decode the file (xr.decode_cf) or "
                f"set those to NaN (or pass fill_threshold=None if |values| >= "
                f"{float(fill_threshold):g} are real)"
            )
    lo, hi = _valid_range({**spec_attrs, **obs[name].attrs})
    if bounds and name in bounds:
        lo, hi = (float(b) for b in bounds[name])
    out = finite & ((values < lo) | (values > hi))
    if out.any():
        raise ObservationError(
            f"observations of {name!r} lie outside their valid range [{lo:g}, {hi:g}] at "
            f"{_first_obs(out)} (e.g. {values[out][0]:g}); drop these gross errors or fix the "
            "units (the range comes from bounds= or the CF valid_min/valid_max/valid_range "
            "attributes)"
        )


def _check_angle_units(obs: xr.Dataset, locs: dict[str, str | None]) -> None:
    for key in ("lat", "lon"):
        name = locs.get(key)
        if name is None:
            continue
        units = str(obs[name].attrs.get("units", "")).strip().lower()
        if units in _RADIANS:
            suffix = "north" if key == "lat" else "east"
            raise UnitsError(
                f"observation {key} coordinate {name!r} is in {units!r}; xlatda takes degrees: "
                f"obs = obs.assign_coords({name}=(\"obs\", np.rad2deg(obs[{name!r}].values), "
                f"{{\"units\": \"degrees_{suffix}\"}}))"
            )


def validate(
    obs: xr.Dataset,
    layout: StateLayout,
    *,
    check_domain: bool = True,
    fill_threshold: float | None = FILL_THRESHOLD,
    bounds: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Check an observation set against a state layout; raise before any work.

    Parameters
    ----------
    obs : Dataset
        Observations (see the module docstring for the contract).
    layout : StateLayout
        The state they observe.
    check_domain : bool
        Also refuse locations outside a regional grid (built through the
        operator, which is where the domain is known exactly).
    fill_threshold : float or None
        Values with ``|v| >= fill_threshold`` are taken for undecoded fill
        values and refused (None: no such check).
    bounds : dict, optional
        ``{variable: (low, high)}``: plausible range of each variable
        (overrides CF ``valid_min``/``valid_max``/``valid_range``); values
        outside are refused as gross errors.

    Raises
    ------
    ObservationError
        Wrong dims, empty set, NaN-only rows, inf values, fill values,
        values outside the valid range, missing or non-positive error std,
        NaN or duplicate locations, string or unsortable times, outside
        points.
    VariableNotFoundError
        A data variable names no state variable.
    UnitsError
        A variable's ``units`` attribute differs from the state's, or the
        latitude/longitude are in radians.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xlatda
    >>> state = xlatda.datasets.lorenz96(n=8, steps=2, seed=0)
    >>> obs = xr.Dataset({"x": ("obs", [1.0, 9.969e36], {"error_std": 1.0})},
    ...                  coords={"k": ("obs", [0, 3]), "time": ("obs", [0.0, 0.0])})
    >>> try:
    ...     validate(obs, xlatda.layout(state))
    ... except ValueError as err:
    ...     print(str(err)[:61])
    observations of 'x' reach 9.969e+36 at 1 observations (first
    """
    if not isinstance(obs, xr.Dataset):
        how = ""
        if type(obs).__name__ == "DataFrame":
            how = ("; build one from a table with xlatda.obs.from_dataframe(df, error_std=...) "
                   "(one row per observation: time, lat, lon, value)")
        elif isinstance(obs, xr.DataArray):
            how = "; wrap it with obs.to_dataset(name=<the state variable it observes>)"
        raise ObservationError(
            f"observations must be an xarray Dataset with dimension 'obs', got "
            f"{type(obs).__name__}{how}"
        )
    if OBS_DIM not in obs.dims or set(obs.dims) - {OBS_DIM, FOOTPRINT_DIM}:
        raise ObservationError(
            f"observations must have exactly one dimension 'obs' (and 'footprint' on the "
            f"footprint coordinates), got {dict(obs.sizes)}; turn gridded fields into points "
            "with xlatda.obs.from_grid(ds), or block means with xlatda.obs.coarsen(ds, r, ...)"
        )
    if obs.sizes[OBS_DIM] == 0:
        raise ObservationError("the observation set is empty (obs has size 0); pass observations")
    for name in [str(v) for v in obs.data_vars]:
        if obs[name].dims != (OBS_DIM,):
            raise ObservationError(
                f"observation variable {name!r} has dims {obs[name].dims}; data variables "
                "lie along 'obs' only (a footprint is described by the footprint_* "
                "coordinates)"
            )
    names = _state_var_names(obs)
    if not names:
        raise ObservationError("the observation set has no data variables to assimilate")
    unknown = [n for n in names if n not in layout.variables]
    if unknown:
        raise VariableNotFoundError(
            f"observed variables {unknown} are not state variables; the state has "
            f"{list(layout.variables)} (rename them, or drop them with obs.drop_vars({unknown}))"
        )
    for name in names:
        spec = next(s for s in layout.specs if s.name == name)
        u_obs, u_state = obs[name].attrs.get("units"), spec.attrs.get("units")
        if u_obs is not None and u_state is not None and str(u_obs) != str(u_state):
            raise UnitsError(
                f"observations of {name!r} are in {u_obs!r} but the state is in {u_state!r}; "
                "convert them first (e.g. with pint-xarray) and set the units attribute"
            )
    values = np.stack([np.asarray(obs[n].values, dtype=float) for n in names])
    for i, name in enumerate(names):
        spec = next(s for s in layout.specs if s.name == name)
        _check_values(obs, name, values[i], dict(spec.attrs), fill_threshold, bounds)
    measured = np.isfinite(values)
    empty = np.flatnonzero(~measured.any(0))
    if empty.size:
        raise ObservationError(
            f"{empty.size} observations have no finite value in any variable (first at obs "
            f"index {empty[:5].tolist()}); drop them with obs.dropna('obs', how='all')"
        )
    for i, name in enumerate(names):
        std = error_std_of(obs, name)
        bad = measured[i] & ~(np.isfinite(std) & (std > 0))
        if bad.any():
            raise ObservationError(
                f"error_std of {name!r} must be positive and finite where {name!r} is observed; "
                f"got {std[bad][:3].tolist()} at {int(bad.sum())} observations"
            )
    locs = _location_names(obs, layout)
    _check_angle_units(obs, locs)
    loc_arrays = [np.asarray(obs[v].values, dtype=float) for v in locs.values() if v]
    for arr, key in zip(loc_arrays, [k for k, v in locs.items() if v]):
        if not np.all(np.isfinite(arr)):
            raise ObservationError(f"observation {key} coordinates contain NaN or inf values")
    if locs["lat"] is not None:
        lat = loc_arrays[0]
        if np.any(np.abs(lat) > 90):
            raise ObservationError(
                f"observation latitudes must lie in [-90, 90]; got {lat.min()} to {lat.max()}"
            )
    _footprint(obs, layout)
    time = layout.axes.time
    tvals = _coord(obs, time) if time else _coord(obs, "time")
    if tvals is not None:
        kind = np.asarray(tvals).dtype.kind
        if kind in "USa" or (kind == "O" and tvals.size and isinstance(tvals.ravel()[0], str)):
            raise ObservationError(
                f"observation times are strings (e.g. {tvals.ravel()[0]!r}); decode them to "
                "datetimes first: obs = obs.assign_coords(time=pandas.to_datetime(obs.time.values))"
                " or xr.decode_cf(obs)"
            )
        try:
            np.argsort(tvals)
        except TypeError as err:
            raise ObservationError(
                f"observation times cannot be sorted ({err}); decode them to one datetime type"
            ) from None
    # Duplicates: the same variable measured twice at the same place and time.
    key_cols = [np.round(a, 10) for a in loc_arrays]
    if tvals is not None:
        if np.asarray(tvals).dtype.kind == "O" and is_datetime(tvals):
            from xlatda.windows import float_times

            key_cols.append(float_times(tvals))  # cftime: seconds in its own calendar
        else:
            key_cols.append(np.asarray(tvals).astype("datetime64[ns]").astype(np.int64)
                            if is_datetime(tvals) else np.asarray(tvals, dtype=float))
    if "kind" in obs.coords:
        key_cols.append(np.asarray(obs["kind"].values).astype(str))
    for i, name in enumerate(names):
        sel = measured[i]
        if sel.sum() < 2:
            continue
        cols = [c[sel] for c in key_cols]
        if not cols:
            continue
        # Sort by all key columns at once (lexsort: no structured-array sort), then
        # compare neighbours: equal neighbours are duplicates.
        order = np.lexsort(cols[::-1])
        same = np.ones(order.size - 1, dtype=bool)
        for c in cols:
            cs = c[order]
            same &= cs[1:] == cs[:-1]
        if same.any():
            starts = same & ~np.concatenate([[False], same[:-1]])
            raise ObservationError(
                f"{int(starts.sum())} locations observe {name!r} more than once at the "
                "same time; average duplicates (obs.groupby(...).mean()) or give them "
                "different kinds"
            )
    if check_domain:
        build_operator(layout, to_tensors(obs, layout, _validated=True))


def _footprint_names(layout: StateLayout) -> dict[str, str]:
    if layout.kind in ("latlon", "points"):
        return {"lat": "footprint_lat", "lon": "footprint_lon"}
    return {"position": "footprint_position"}


def _footprint(obs: xr.Dataset, layout: StateLayout) -> dict[str, np.ndarray] | None:
    """Validate the footprint coordinates; ``{"weight", "lat", "lon" | "position"}``."""
    fp_vars = [str(c) for c in obs.coords if FOOTPRINT_DIM in obs[c].dims]
    if FOOTPRINT_WEIGHT not in obs.coords:
        if FOOTPRINT_DIM in obs.dims or fp_vars:
            raise ObservationError(
                f"observations have a {FOOTPRINT_DIM!r} dimension ({fp_vars}) but no "
                f"{FOOTPRINT_WEIGHT!r} coordinate; add the weights along ('obs', "
                f"'{FOOTPRINT_DIM}') or drop the footprint (obs.drop_dims('{FOOTPRINT_DIM}'))"
            )
        return None
    want = _footprint_names(layout)
    dims = (OBS_DIM, FOOTPRINT_DIM)
    for name in [FOOTPRINT_WEIGHT, *want.values()]:
        if name not in obs.coords:
            raise ObservationError(
                f"footprint observations need a coordinate {name!r} along {dims} (the "
                f"points the weights {FOOTPRINT_WEIGHT!r} apply to); this state's layout "
                f"({layout.kind}) takes {sorted(want.values())}"
            )
        if obs[name].dims != dims:
            raise ObservationError(
                f"footprint coordinate {name!r} has dims {obs[name].dims}; it must have "
                f"dims {dims} (transpose it: obs[{name!r}].transpose('obs', 'footprint'))"
            )
    unknown = sorted(set(fp_vars) - {FOOTPRINT_WEIGHT, *want.values()})
    if unknown:
        raise ObservationError(
            f"unknown footprint coordinates {unknown} for a {layout.kind} state; it takes "
            f"{[FOOTPRINT_WEIGHT, *want.values()]}"
        )
    w = np.asarray(obs[FOOTPRINT_WEIGHT].values, dtype=float)
    bad = np.isinf(w) | (w < 0)
    if bad.any():
        raise ObservationError(
            f"{FOOTPRINT_WEIGHT!r} must be finite and non-negative (NaN: no point); got "
            f"{w[bad][:3].tolist()} at obs index {np.flatnonzero(bad.any(1))[:5].tolist()}"
        )
    used = np.nan_to_num(w, nan=0.0) > 0
    out = {"weight": w}
    for key, name in want.items():
        loc = np.asarray(obs[name].values, dtype=float)
        if not np.all(np.isfinite(loc[used])):
            rows = np.flatnonzero((used & ~np.isfinite(loc)).any(1))
            raise ObservationError(
                f"footprint coordinate {name!r} is NaN or inf where {FOOTPRINT_WEIGHT!r} is "
                f"positive (obs index {rows[:5].tolist()}); give every weighted point a location"
            )
        if key == "lat" and np.any(np.abs(loc[used]) > 90):
            raise ObservationError(
                f"footprint latitudes must lie in [-90, 90]; got {loc[used].min()} to "
                f"{loc[used].max()}"
            )
        out[key] = loc
    return out


def to_tensors(
    obs: xr.Dataset,
    layout: StateLayout,
    *,
    dtype: torch.dtype = torch.float64,
    _validated: bool = False,
) -> ObservationTable:
    """Flatten an observation set to one entry per measured value.

    Parameters
    ----------
    obs : Dataset
        A valid observation set (see :func:`validate`).
    layout : StateLayout
        The state observed.
    dtype : torch.dtype
        Dtype of ``values`` and ``error_std``.

    Returns
    -------
    ObservationTable
        Entries ordered by variable, then by obs index.

    Notes
    -----
    Reads the observation values into memory (observation sets are small
    next to states).
    """
    if not _validated:
        validate(obs, layout, check_domain=False)
    names = _state_var_names(obs)
    locs = _location_names(obs, layout)
    time_name = layout.axes.time if layout.axes.time in obs.coords else (
        "time" if "time" in obs.coords else None
    )
    vals, stds, chans, variables, index = [], [], [], [], []
    for name in names:
        v = np.asarray(obs[name].values, dtype=float)
        sel = np.flatnonzero(np.isfinite(v))
        channels = layout.channels_of(name)
        if len(channels) > 1:
            level = _level_index(obs, layout, sel)
            chan = np.asarray(channels)[level]
        else:
            chan = np.full(sel.size, channels[0])
        vals.append(v[sel])
        stds.append(error_std_of(obs, name)[sel])
        chans.append(chan)
        variables.append(np.full(sel.size, name, dtype=object))
        index.append(sel)
    idx = np.concatenate(index)

    def col(name):
        return None if name is None else np.asarray(obs[name].values)[idx]

    fp = _footprint(obs, layout) if FOOTPRINT_WEIGHT in obs.coords else None

    def fcol(key):
        return None if fp is None or key not in fp else fp[key][idx]

    return ObservationTable(
        values=torch.as_tensor(np.concatenate(vals), dtype=dtype),
        error_std=torch.as_tensor(np.concatenate(stds), dtype=dtype),
        channel=torch.as_tensor(np.concatenate(chans), dtype=torch.long),
        variable=np.concatenate(variables).astype(str),
        lat=None if locs["lat"] is None else col(locs["lat"]).astype(float),
        lon=None if locs["lon"] is None else col(locs["lon"]).astype(float),
        position=None if locs["position"] is None else col(locs["position"]).astype(float),
        time=col(time_name),
        obs_index=idx,
        kind=None if "kind" not in obs.coords else col("kind").astype(str),
        footprint_weight=fcol("weight"), footprint_lat=fcol("lat"), footprint_lon=fcol("lon"),
        footprint_position=fcol("position"),
    )


def _level_index(obs: xr.Dataset, layout: StateLayout, sel: np.ndarray) -> np.ndarray:
    vdim = layout.vertical_dim
    if vdim not in obs.coords:
        raise ObservationError(
            f"the state has levels along {vdim!r}; observations of 3-D variables need a "
            f"coordinate {vdim!r} along 'obs' with the level of each observation"
        )
    levels = np.asarray(layout.template[vdim].values, dtype=float)
    want = np.asarray(obs[vdim].values, dtype=float)[sel]
    pos = np.abs(want[:, None] - levels[None, :]).argmin(1)
    if not np.allclose(levels[pos], want):
        raise ObservationError(
            f"observation levels {sorted(set(want[~np.isclose(levels[pos], want)]))[:5]} are "
            f"not state levels {levels.tolist()}; vertical interpolation is not supported"
        )
    return pos


def describe(obs: xr.Dataset) -> dict[str, Any]:
    """Counts per variable and kind (for reports)."""
    out: dict[str, Any] = {"n_obs": int(obs.sizes[OBS_DIM])}
    for name in _state_var_names(obs):
        out[name] = int(np.isfinite(np.asarray(obs[name].values, dtype=float)).sum())
    return out
