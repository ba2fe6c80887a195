"""Build observation sets: scattered points, gridded fields with gaps, coarse
and sparse versions of a field, and multimodal combinations.

Every function returns a Dataset that follows the observation contract
(:mod:`xlatda.obs.contract`). Randomness comes from ``seed`` only.

Examples
--------
>>> import numpy as np, xarray as xr, xlatda
>>> lat = np.linspace(-87.5, 87.5, 8); lon = np.arange(16) * 22.5
>>> truth = xr.Dataset(
...     {"h": (("time", "lat", "lon"), np.ones((3, 8, 16)), {"units": "m"})},
...     coords={"time": np.array(["2000-01-01T00", "2000-01-01T01", "2000-01-01T02"],
...                              dtype="datetime64[ns]"),
...             "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
...             "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})})
>>> obs = xlatda.obs.sample_points(truth, n=5, error_std=0.1, seed=0)
>>> dict(obs.sizes), float(obs.h_error_std[0])
({'obs': 15}, 0.1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from xlatda.errors import ConfigError, ObservationError
from xlatda.layout import StateLayout, layout
from xlatda.obs.contract import ERROR_SUFFIX, FOOTPRINT_DIM, FOOTPRINT_WEIGHT, OBS_DIM, validate

__all__ = ["coarsen", "concat", "from_grid", "sample_points", "sparsify"]


def _std_for(error_std: float | dict[str, float], name: str) -> float:
    if isinstance(error_std, dict):
        if name not in error_std:
            raise ConfigError(
                f"error_std has no entry for {name!r}; give one per variable: {{'{name}': ...}}"
            )
        value = float(error_std[name])
    else:
        value = float(error_std)
    if not np.isfinite(value) or value <= 0:
        raise ConfigError(f"error_std for {name!r} must be positive and finite, got {value!r}")
    return value


def _loc_attrs(L: StateLayout, which: str) -> dict[str, Any]:
    name = L.axes.lat if which == "lat" else L.axes.lon
    attrs = dict(L.template[name].attrs) if name in L.template.coords else {}
    keep = {k: v for k, v in attrs.items() if k in ("standard_name", "units", "long_name")}
    keep.setdefault("standard_name", "latitude" if which == "lat" else "longitude")
    keep.setdefault("units", "degrees_north" if which == "lat" else "degrees_east")
    return keep


#: Candidate draws per wanted location before :func:`sample_points` gives up on a
#: masked grid (a domain whose valid part is under 1/100 of its area).
_MAX_DRAWS = 100


def _valid_test(truth: xr.Dataset, L: StateLayout, names: list[str], tname: str | None):
    """``None`` for a field without NaN, else a test of candidate locations.

    The test says which locations read finite values of every observed
    variable at every time of ``truth`` (a fixed land/sea mask, or the cells
    missing at any time), with the same operator the values come from, so a
    location whose bilinear stencil touches a missing cell is refused.
    """
    bad = None
    for v in names:
        miss = truth[v].isnull()
        if tname is not None:
            miss = miss.any(tname)
        bad = miss if bad is None else (bad | miss)
    bad_np = np.asarray(bad.values, dtype=bool)
    if not bad_np.any():
        return None
    if bad_np.all():
        raise ObservationError(
            f"the truth has no cell where {names} are finite at every time; sample fewer "
            "times or variables, or fill the gaps first")
    from xlatda.obs.observe import observe

    mask = xr.Dataset({"valid": (bad.dims, np.where(bad_np, np.nan, 1.0),
                                 {"units": "1"})}, coords=bad.coords)

    flat_bad = bad_np.reshape(-1)

    def test(locs: dict[str, np.ndarray]) -> np.ndarray:
        if L.kind == "points":  # called with every point: the choice is among the finite
            return ~flat_bad
        if "position" in locs:  # generic positions: both bracketing cells must be finite
            lo = np.clip(np.floor(locs["position"]).astype(int), 0, flat_bad.size - 1)
            hi = np.clip(lo + 1, 0, flat_bad.size - 1)
            return ~(flat_bad[lo] | flat_bad[hi])
        sk = xr.Dataset({"valid": (OBS_DIM, np.zeros(len(locs["lat"])), {"error_std": 1.0})},
                        coords={L.axes.lat: (OBS_DIM, locs["lat"], _loc_attrs(L, "lat")),
                                L.axes.lon: (OBS_DIM, locs["lon"], _loc_attrs(L, "lon"))})
        got = observe(mask, sk, interpolation="bilinear")["valid"].values
        return np.isfinite(np.asarray(got, dtype=float))

    return test


def _domain_points(L: StateLayout, n: int, rng: np.random.Generator,
                   valid: Any = None) -> dict[str, np.ndarray]:
    """``n`` uniformly distributed locations over the valid part of the domain.

    Without ``valid`` (a field without missing values) this is one draw over
    the whole domain; with it, points whose test fails are drawn again, so
    the locations are uniform over the valid part (for point states the
    choice is among the valid points).
    """
    if valid is None or L.kind == "points":
        return _draw_points(L, n, rng, valid)
    kept: dict[str, list[np.ndarray]] = {}
    have, drawn = 0, 0
    while have < n:
        if drawn >= _MAX_DRAWS * n:
            raise ObservationError(
                f"found only {have} of {n} locations with finite values in {drawn} draws; "
                "the valid part of the domain is too small: subset the grid to it first")
        cand = _draw_points(L, n - have, rng)
        ok = valid(cand)
        drawn += n - have
        for k, v in cand.items():
            kept.setdefault(k, []).append(v[ok])
        have += int(ok.sum())
    return {k: np.concatenate(v)[:n] for k, v in kept.items()}


def _draw_points(L: StateLayout, n: int, rng: np.random.Generator,
                 valid: Any = None) -> dict[str, np.ndarray]:
    """Uniformly distributed locations over the state's domain."""
    if L.kind == "latlon":
        lat, lon = L.lat, L.lon
        dlon = np.mean(np.diff(lon)) if lon.size > 1 else 360.0
        global_lon = abs(lon.size * dlon - 360.0) < 1e-6 * 360 or (lon[-1] - lon[0]) >= 360 - 1e-9
        if global_lon:
            lo_lon, hi_lon = lon[0], lon[0] + 360.0
        else:
            lo_lon, hi_lon = lon.min(), lon.max()
        lat_lo, lat_hi = lat.min(), lat.max()
        if global_lon and abs(lat_lo + 90) < 2 * abs(np.diff(lat)).max() and abs(
            lat_hi - 90
        ) < 2 * abs(np.diff(lat)).max():
            lat_lo, lat_hi = -90.0, 90.0  # a global grid: uniform on the whole sphere
        s = rng.uniform(np.sin(np.deg2rad(lat_lo)), np.sin(np.deg2rad(lat_hi)), n)
        plat = np.rad2deg(np.arcsin(np.clip(s, -1, 1)))
        plon = rng.uniform(lo_lon, hi_lon, n)
        if global_lon:
            plon = np.where(plon >= lon[0] + 360.0, plon - 360.0, plon)
        return {"lat": plat, "lon": plon}
    if L.kind == "points":
        npts = L.spatial_shape[0]
        if n > npts:
            raise ConfigError(
                f"asked for {n} observations of a {npts}-point state; n must be at most {npts}"
            )
        pool = np.arange(npts)
        if valid is not None:
            pool = pool[valid({"lat": L.lat, "lon": L.lon})]
            if n > pool.size:
                raise ConfigError(f"asked for {n} observations of a state with {pool.size} "
                                  "points with finite values; n must be at most that")
        idx = pool[np.sort(rng.choice(pool.size, size=n, replace=False))]
        return {"lat": L.lat[idx], "lon": L.lon[idx]}
    size = int(np.prod(L.spatial_shape))
    return {"position": rng.uniform(0, size, n)}


def sample_points(
    truth: xr.Dataset | xr.DataArray,
    n: int,
    error_std: float | dict[str, float],
    *,
    seed: int = 0,
    variables: Sequence[str] | None = None,
    times: str = "each",
    noise: bool = True,
    kind: str | None = None,
    interpolation: str = "bilinear",
) -> xr.Dataset:
    """Scattered observations of a state: random places (and times), noisy values.

    Parameters
    ----------
    truth : Dataset or DataArray
        The true state, with or without a time dimension.
    n : int
        Number of locations per observation time (``times="each"``) or in
        total (``times="random"``).
    error_std : float or dict
        Observation error standard deviation (in the variable's units), one
        for all variables or one per variable.
    seed : int
        Seed of the random locations, times and noise.
    variables : sequence of str, optional
        Variables to observe (default: all state variables). Each location
        observes all of them.
    times : {"each", "random"}
        ``"each"``: ``n`` new random locations at every time of ``truth``;
        ``"random"``: ``n`` observations at times drawn uniformly over the
        time span (values linear in time between model times).
    noise : bool
        Add Gaussian noise with ``error_std`` (False gives perfect values,
        still labelled with ``error_std``).
    kind : str, optional
        Value of a ``kind`` coordinate (for multimodal sets).
    interpolation : {"bilinear", "spectral"}
        How the truth is read between grid nodes (:func:`xlatda.obs.observe`):
        bilinear (default), or the value of its spherical-harmonic expansion
        (global Gauss / equiangular grids), the exact point value of a
        band-limited truth. Synthetic point observations of a spectral model's
        output should use ``"spectral"``: bilinear values carry an
        interpolation error that a grid decoder's bilinear operator shares
        and a mesh-free decoder does not (:mod:`xlatda.obs.spectral`).

    Returns
    -------
    Dataset
        Observation set with dim ``obs``: the observed variables and
        ``<name>_error_std``, coordinates latitude/longitude (named like the
        state's) or the generic position, and ``time``.

    Notes
    -----
    Locations are uniform on the sphere for global grids (uniform in
    ``sin(lat)`` and longitude), area-uniform in a regional box, a random
    subset of the points of unstructured states, and uniform positions along
    a generic dimension. Values come from the observation operator of the
    layout (bilinear in lat/lon) or, with ``interpolation="spectral"``, from
    the truth's spherical-harmonic expansion. Computes the truth at the
    sampled times.

    Masked fields (NaN cells, e.g. the sea of a land-only product or the land
    of an SST analysis): locations are drawn uniformly over the part of the
    domain where every observed variable is finite at every time of
    ``truth``, and a location whose bilinear stencil touches a missing cell
    is drawn again, so every observation has a finite value. Fields without
    NaN draw exactly as before (the same locations for a seed).
    """
    from xlatda.obs.observe import observe

    if isinstance(truth, xr.DataArray):
        truth = truth.to_dataset(name=truth.name if truth.name is not None else "data")
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ConfigError(f"n must be a positive integer, got {n!r}")
    L = layout(truth, variables=list(variables) if variables is not None else None)
    names = list(L.variables)
    stds = {v: _std_for(error_std, v) for v in names}
    if times not in ("each", "random"):
        raise ConfigError(f"times must be 'each' or 'random', got {times!r}")
    if interpolation != "bilinear":
        from xlatda.obs.spectral import check_interpolation, global_grid

        check_interpolation(interpolation)
        global_grid(L)  # a grid that has no expansion is refused before any work
    rng = np.random.default_rng(seed)
    tname = L.axes.time if L.axes.time in L.sample_dims else None
    extra = [d for d in L.sample_dims if d != tname]
    if extra:
        raise ConfigError(
            f"sample_points needs a state with at most a time dimension; select one "
            f"{extra[0]!r} first (truth.isel({extra[0]}=0))"
        )
    valid = _valid_test(truth, L, names, tname)

    def draw(k: int) -> dict[str, np.ndarray]:
        return _domain_points(L, k, rng, valid)

    if tname is None:
        locs = draw(n)
        tvals = None
    elif times == "each":
        tcoord = truth[tname].values
        per = [draw(n) for _ in range(tcoord.size)]
        locs = {k: np.concatenate([p[k] for p in per]) for k in per[0]}
        tvals = np.repeat(tcoord, n)
    else:
        tcoord = truth[tname].values
        locs = draw(n)
        if np.issubdtype(tcoord.dtype, np.datetime64):
            t0 = tcoord[0].astype("datetime64[ns]").astype(np.int64)
            t1 = tcoord[-1].astype("datetime64[ns]").astype(np.int64)
            tvals = np.sort(rng.integers(t0, t1 + 1, size=n)).astype("datetime64[ns]")
        else:
            tvals = np.sort(rng.uniform(float(tcoord[0]), float(tcoord[-1]), n))
    coords: dict[str, Any] = {}
    if "lat" in locs:
        coords[L.axes.lat] = (OBS_DIM, locs["lat"], _loc_attrs(L, "lat"))
        coords[L.axes.lon] = (OBS_DIM, locs["lon"], _loc_attrs(L, "lon"))
    else:
        coords[L.spatial_dims[0]] = (OBS_DIM, locs["position"])
    if tvals is not None:
        attrs = dict(truth[tname].attrs)
        coords[tname] = (OBS_DIM, tvals, attrs)
    if kind is not None:
        coords["kind"] = (OBS_DIM, np.full(len(next(iter(locs.values()))), kind))
    size = len(next(iter(locs.values())))
    skeleton = xr.Dataset(
        {v: (OBS_DIM, np.zeros(size), {"error_std": stds[v]}) for v in names}, coords=coords
    )
    values = observe(truth[names], skeleton, interpolation=interpolation)
    out = xr.Dataset(coords=skeleton.coords)
    for v in names:
        val = np.asarray(values[v].values, dtype=float)
        if noise:
            val = val + stds[v] * rng.standard_normal(val.shape)
        attrs = {k: a for k, a in truth[v].attrs.items()
                 if k in ("units", "standard_name", "long_name")}
        out[v] = (OBS_DIM, val, attrs)
        out[f"{v}{ERROR_SUFFIX}"] = (OBS_DIM, np.full(size, stds[v]),
                                      {"units": attrs.get("units", ""),
                                       "long_name": f"error standard deviation of {v}"})
    out.attrs = {"title": "xlatda observations", "source": "xlatda.obs.sample_points",
                 "seed": int(seed)}
    return out


def from_grid(
    ds: xr.Dataset | xr.DataArray,
    error_std: float | dict[str, float] | None = None,
    *,
    kind: str | None = None,
) -> xr.Dataset:
    """Turn a gridded field with NaN gaps into an observation set of its points.

    Parameters
    ----------
    ds : Dataset or DataArray
        Gridded observations (e.g. a satellite swath), NaN where missing,
        with or without a time dimension.
    error_std : float or dict, optional
        Error std; default: each variable's ``error_std`` attribute.
    kind : str, optional
        Value of a ``kind`` coordinate.

    Returns
    -------
    Dataset
        One observation per grid point (and time) where any variable is
        finite; coordinates are the grid-cell centres.
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name if ds.name is not None else "data")
    L = layout(ds)
    names = list(L.variables)
    if L.vertical_dim is not None:
        raise ConfigError("from_grid handles 2-D fields; select one level first (ds.sel(...))")
    stds = {}
    for v in names:
        if error_std is None:
            if "error_std" not in ds[v].attrs:
                raise ConfigError(
                    f"no error_std given and {v!r} has no error_std attribute; pass error_std="
                )
            stds[v] = _std_for(float(ds[v].attrs["error_std"]), v)
        else:
            stds[v] = _std_for(error_std, v)
    stack_dims = [*L.sample_dims, *L.spatial_dims]
    flat = ds[names].stack({OBS_DIM: stack_dims})
    keep = np.zeros(flat.sizes[OBS_DIM], dtype=bool)
    for v in names:
        keep |= np.isfinite(np.asarray(flat[v].values, dtype=float))
    flat = flat.isel({OBS_DIM: np.flatnonzero(keep)})
    flat = flat.reset_index(OBS_DIM)
    out = xr.Dataset(coords={c: (OBS_DIM, np.asarray(flat[c].values), dict(ds[c].attrs))
                             for c in stack_dims if c in ds.coords})
    for v in names:
        out[v] = (OBS_DIM, np.asarray(flat[v].values, dtype=float),
                  {k: a for k, a in ds[v].attrs.items() if k in ("units", "standard_name")})
        out[f"{v}{ERROR_SUFFIX}"] = (
            OBS_DIM, np.where(np.isfinite(out[v].values), stds[v], np.nan)
        )
    if kind is not None:
        out = out.assign_coords(kind=(OBS_DIM, np.full(out.sizes[OBS_DIM], kind)))
    if out.sizes[OBS_DIM] == 0:
        raise ObservationError("the gridded field has no finite value; nothing to observe")
    return out


def coarsen(
    ds: xr.Dataset | xr.DataArray,
    r: int,
    error_std: float | dict[str, float],
    *,
    kind: str | None = "coarse",
    seed: int | None = None,
) -> xr.Dataset:
    """Block means over ``r x r`` cells as footprint (area) observations.

    The SLAMS "coarsen" measurement operator. Each observation is the mean of
    an ``r x r`` block of grid cells, and it carries that block as its
    footprint, so that its observation operator averages the state over the
    same cells (it does not read a point value at the block centre).

    Parameters
    ----------
    ds : Dataset or DataArray
        Gridded state on a latitude/longitude grid, with or without a time
        dimension; NaN where missing.
    r : int
        Block size in cells along each horizontal dimension.
    error_std : float or dict
        Error std of the block means, one for all variables or one each.
    kind : str, optional
        Value of the ``kind`` coordinate (default ``"coarse"``).
    seed : int, optional
        Seed of Gaussian noise with ``error_std`` added to the means (none
        when None).

    Returns
    -------
    Dataset
        One observation per block (and time) with a finite mean, located at
        the block centre (the mean of its cell coordinates), with the
        footprint coordinates of the contract (:mod:`xlatda.obs.contract`)
        along ``("obs", "footprint")``, ``footprint = r * r``:
        ``footprint_lat``/``footprint_lon`` (the block's cell centres) and
        ``footprint_weight`` (1 on the cells that entered the mean, 0 on
        NaN cells). :func:`xlatda.obs.observe` and every observation operator
        built from such a set give exactly the block mean of a state;
        mesh-free (latent) decoders are read at the block's cells and
        averaged.

    Notes
    -----
    Blocks that do not fit at the grid's edges are dropped
    (``boundary="trim"``); NaNs are skipped in the means (and get weight 0).
    Variables whose NaN cells differ get separate observations, each with its
    own weights. To get the former point form (block means read at the
    centres), drop the footprint: ``obs.drop_dims("footprint")``.

    Examples
    --------
    >>> import numpy as np, xarray as xr, xlatda
    >>> lat = np.linspace(-67.5, 67.5, 4); lon = np.arange(8) * 45.0
    >>> state = xr.Dataset({"h": (("lat", "lon"), np.arange(32.0).reshape(4, 8))},
    ...                    coords={"lat": lat, "lon": lon})
    >>> obs = xlatda.obs.coarsen(state, 2, 0.1)
    >>> dict(obs.sizes), obs.h.values[:2].tolist()
    ({'obs': 8, 'footprint': 4}, [4.5, 6.5])
    >>> np.allclose(xlatda.obs.observe(state, obs).h.values, obs.h.values)
    True
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name if ds.name is not None else "data")
    if not isinstance(r, (int, np.integer)) or r < 1:
        raise ConfigError(f"r must be a positive integer, got {r!r}")
    L = layout(ds)
    if L.kind != "latlon":
        raise ConfigError("coarsen needs a latitude/longitude grid")
    r = int(r)
    names = list(L.variables)
    block = {d: r for d in L.spatial_dims}
    coarse = ds[names].coarsen(block, boundary="trim").mean()
    for v in names:
        coarse[v].attrs = dict(ds[v].attrs)
    if any(coarse.sizes[d] == 0 for d in L.spatial_dims):
        raise ConfigError(
            f"r={r} is larger than the grid ({dict((d, ds.sizes[d]) for d in L.spatial_dims)}); "
            "pass a smaller block size"
        )
    # cells of each variable that enter the block means (NaN-aware)
    finite = {v: np.isfinite(np.asarray(ds[v].values, dtype=float)) for v in names}
    groups: list[list[str]] = []
    for v in names:
        for g in groups:
            if np.array_equal(finite[g[0]], finite[v]):
                g.append(v)
                break
        else:
            groups.append([v])
    sets = [_with_footprint(from_grid(coarse[g], error_std=error_std, kind=kind), ds, L, r,
                            finite[g[0]], [str(d) for d in ds[g[0]].dims])
            for g in groups]
    # each group's variables are NaN in the others' rows (their kind is kept)
    obs = sets[0] if len(sets) == 1 else concat(sets)
    return _maybe_noise(obs, error_std, seed)


def _with_footprint(obs: xr.Dataset, ds: xr.Dataset, L: StateLayout, r: int,
                    finite: np.ndarray, dims: list[str]) -> xr.Dataset:
    """Add the ``r x r`` block of cells (and its NaN-aware weights) to block-mean obs."""
    lat_name, lon_name = L.axes.lat, L.axes.lon
    cell = {}
    for name in (lat_name, lon_name):
        n = ds.sizes[name] // r
        cell[name] = np.asarray(ds[name].values, dtype=float)[: n * r].reshape(n, r)
    # block index of each observation, from its centre coordinate (exactly the
    # coarse coordinate it was flattened from)
    index: dict[str, np.ndarray] = {}
    for d in dims:
        if d in (lat_name, lon_name):
            centres = cell[d].mean(1)
            got = np.asarray(obs[d].values, dtype=float)
            pos = np.abs(got[:, None] - centres[None, :]).argmin(1)
            index[d] = pos
            continue
        if d not in obs.coords:
            raise ConfigError(
                f"coarsen needs a coordinate on the sample dimension {d!r} to tell the "
                f"observations apart; assign one (ds.assign_coords({d}=range(...)))"
            )
        values = np.asarray(ds[d].values)
        lookup = {v: i for i, v in enumerate(values.tolist())}
        index[d] = np.asarray([lookup[v] for v in np.asarray(obs[d].values).tolist()])
    a, b = np.meshgrid(np.arange(r), np.arange(r), indexing="ij")
    a, b = a.ravel(), b.ravel()  # footprint column k = (row a, column b) of the block
    bi, bj = index[lat_name], index[lon_name]
    fp_lat = cell[lat_name][bi][:, a]
    fp_lon = cell[lon_name][bj][:, b]
    # the finite mask at each footprint cell: index the (..., lat, lon) mask
    gather = []
    for d in dims:
        if d == lat_name:
            gather.append(bi[:, None] * r + a[None, :])
        elif d == lon_name:
            gather.append(bj[:, None] * r + b[None, :])
        else:
            gather.append(np.broadcast_to(index[d][:, None], fp_lat.shape))
    weight = finite[tuple(gather)].astype(float)
    # no standard_name: the observation's own location is its centre coordinate
    lat_attrs = {"units": _loc_attrs(L, "lat")["units"], "long_name": "footprint latitude"}
    lon_attrs = {"units": _loc_attrs(L, "lon")["units"], "long_name": "footprint longitude"}
    return obs.assign_coords({
        "footprint_lat": ((OBS_DIM, FOOTPRINT_DIM), fp_lat, lat_attrs),
        "footprint_lon": ((OBS_DIM, FOOTPRINT_DIM), fp_lon, lon_attrs),
        FOOTPRINT_WEIGHT: ((OBS_DIM, FOOTPRINT_DIM), weight,
                           {"long_name": "weight of each footprint cell in the block mean"}),
    })


def sparsify(
    ds: xr.Dataset | xr.DataArray,
    g: int,
    error_std: float | dict[str, float],
    *,
    kind: str | None = "sparse",
    seed: int | None = None,
) -> xr.Dataset:
    """Every ``g``-th grid point in each spatial dimension, as observations.

    The SLAMS "sparsify" measurement operator. Noise with ``error_std`` is
    added when ``seed`` is given.
    """
    if isinstance(ds, xr.DataArray):
        ds = ds.to_dataset(name=ds.name if ds.name is not None else "data")
    if not isinstance(g, (int, np.integer)) or g < 1:
        raise ConfigError(f"g must be a positive integer, got {g!r}")
    L = layout(ds)
    sub = ds[list(L.variables)].isel({d: slice(None, None, g) for d in L.spatial_dims})
    obs = from_grid(sub, error_std=error_std, kind=kind)
    return _maybe_noise(obs, error_std, seed)


def _maybe_noise(obs: xr.Dataset, error_std: Any, seed: int | None) -> xr.Dataset:
    if seed is None:
        return obs
    rng = np.random.default_rng(seed)
    out = obs.copy()
    for v in [v for v in obs.data_vars if not str(v).endswith(ERROR_SUFFIX)]:
        std = np.asarray(obs[f"{v}{ERROR_SUFFIX}"].values)
        out[v] = obs[v] + np.where(np.isfinite(std), std, 0.0) * rng.standard_normal(std.shape)
        out[v].attrs = dict(obs[v].attrs)
    return out


def concat(sets: Sequence[xr.Dataset], kinds: Sequence[str] | None = None) -> xr.Dataset:
    """Combine observation sets of several kinds into one (multimodal) set.

    Parameters
    ----------
    sets : sequence of Dataset
        Observation sets; variables missing in one set are NaN there.
    kinds : sequence of str, optional
        A kind per set, stored in a ``kind`` coordinate (default: the sets'
        own ``kind`` coordinate, else ``"set0"``, ``"set1"``, ...).

    Returns
    -------
    Dataset
        All observations along one ``obs`` dimension.
    """
    if not sets:
        raise ObservationError("concat needs at least one observation set")
    if kinds is not None and len(kinds) != len(sets):
        raise ConfigError(f"got {len(sets)} sets but {len(kinds)} kinds")
    labelled = []
    for i, s in enumerate(sets):
        if OBS_DIM not in s.dims:
            raise ObservationError(f"set {i} has no 'obs' dimension (dims {dict(s.sizes)})")
        if kinds is not None:
            s = s.assign_coords(kind=(OBS_DIM, np.full(s.sizes[OBS_DIM], kinds[i])))
        elif "kind" not in s.coords:
            s = s.assign_coords(kind=(OBS_DIM, np.full(s.sizes[OBS_DIM], f"set{i}")))
        labelled.append(s)
    names = sorted({str(v) for s in labelled for v in s.data_vars})
    filled = []
    for s in labelled:
        s = s.copy()
        for v in names:
            if v not in s.data_vars:
                s[v] = (OBS_DIM, np.full(s.sizes[OBS_DIM], np.nan))
        for v in [v for v in s.data_vars if not str(v).endswith(ERROR_SUFFIX)]:
            comp = f"{v}{ERROR_SUFFIX}"
            if comp not in s.data_vars and "error_std" in s[v].attrs:
                s[comp] = (OBS_DIM, np.where(np.isfinite(s[v].values),
                                             float(s[v].attrs["error_std"]), np.nan))
        filled.append(s)
    filled = _pad_footprints(filled)
    out = xr.concat(filled, dim=OBS_DIM, data_vars="all", coords="different",
                    compat="equals", join="outer", combine_attrs="drop_conflicts")
    return out


def _pad_footprints(sets: list[xr.Dataset]) -> list[xr.Dataset]:
    """Give every set the same footprint coordinates: NaN rows for point sets
    (point observations), NaN columns up to the largest footprint."""
    names = sorted({str(c) for s in sets for c in s.coords if FOOTPRINT_DIM in s[c].dims})
    if not names:
        return sets
    k = max(s.sizes.get(FOOTPRINT_DIM, 0) for s in sets)
    out = []
    for s in sets:
        n, have = s.sizes[OBS_DIM], s.sizes.get(FOOTPRINT_DIM, 0)
        new = {}
        for c in names:
            arr = np.full((n, k), np.nan)
            attrs = {}
            if c in s.coords:
                arr[:, :have] = np.asarray(s[c].transpose(OBS_DIM, FOOTPRINT_DIM).values, float)
                attrs = dict(s[c].attrs)
            new[c] = ((OBS_DIM, FOOTPRINT_DIM), arr, attrs)
        out.append(s.drop_vars([c for c in names if c in s.coords]).assign_coords(new))
    return out


def check(obs: xr.Dataset, state: xr.Dataset) -> None:
    """Validate ``obs`` against the layout of ``state`` (see :func:`validate`)."""
    validate(obs, layout(state))
