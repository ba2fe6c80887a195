"""Run an experiment described by a configuration file (``xlatda run``).

:func:`run_experiment` takes a configuration checked by
:func:`xlatda.config.load_config` and

1. opens the states (a netCDF/zarr file or a built-in system) and selects
   the variables, the train period and the assimilation period;
2. fits a latent model on the train period (or opens ``model.path``, or uses
   the system's physical model);
3. reads observations from a CSV or netCDF file, or draws them from the
   assimilation period (:func:`xlatda.obs.sample_points`);
4. cycles (:func:`xlatda.cycle`) from the first background (climatology,
   persistence or the truth);
5. scores the analysis, the background, and baselines (climatology of the
   train period; inverse-distance interpolation of the observations on
   lat/lon grids) against the verifying data of the assimilation period;
6. writes one result file (netCDF4 with groups, or zarr) with CF attributes
   and provenance, and a figure.

The result file holds the groups ``analysis`` (ensemble, or mean and
spread), ``background`` (mean and spread), ``truth`` (the verifying data),
``observations``, ``diagnostics`` (per analysis time) and ``scores`` (RMSE
and spread along a ``run`` dimension); open it with
``xarray.open_datatree(path)``.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from xlatda._version import __version__
from xlatda.errors import ConfigError, ObservationError

__all__ = [
    "TRAINING_REPORT",
    "idw_interpolate",
    "read_observations",
    "run_experiment",
    "training_summary",
]

TRAINING_REPORT = (
    "  How to read the training bars: train = training loss, val = validation loss (the "
    "train.validation fraction of the training states, never trained on). In the dynamics "
    "bar, p = re-anchoring probability: 1 = one-step training (the roll-out is reset to the "
    "true state before every step), falling to 0 = free roll-out over the whole window. "
    "Validation always scores the free roll-out, so val far above train is expected while "
    "p > 0; once p = 0, val many times train means the model overfits the training period "
    "(use fewer epochs, a smaller latent_dim or a longer train period)."
)

_LAT_NAMES = ("lat", "latitude")
_LON_NAMES = ("lon", "longitude")


# -- observations ----------------------------------------------------------------------
def _csv_observations(path: Path, state: xr.Dataset, variables: list[str],
                      error_std: Any) -> xr.Dataset:
    """Observation Dataset from a CSV table (time, lat, lon, values, error).

    Note for the integrator: ``xlatda.obs.from_dataframe`` (realdata) does the
    same for DataFrames; this reader can call it once it exists.
    """
    import pandas as pd

    from xlatda.layout import layout as get_layout

    try:
        table = pd.read_csv(path)
    except (OSError, ValueError) as err:
        raise ObservationError(f"cannot read the observation table {path}: {err}") from None
    cols = {c.lower().strip(): c for c in table.columns}
    problems = []
    lat = next((cols[c] for c in _LAT_NAMES if c in cols), None)
    lon = next((cols[c] for c in _LON_NAMES if c in cols), None)
    if "time" not in cols:
        problems.append("a 'time' column")
    if lat is None:
        problems.append("a 'lat' (or 'latitude') column")
    if lon is None:
        problems.append("a 'lon' (or 'longitude') column")
    observed = [v for v in variables if v in table.columns]
    if "value" in cols and not observed and len(variables) == 1:
        table = table.rename(columns={cols["value"]: variables[0]})
        observed = variables[:1]
    if not observed:
        problems.append(f"a value column named like a state variable ({', '.join(variables)})"
                        + (" or 'value'" if len(variables) == 1 else ""))
    if problems:
        raise ObservationError(f"the observation table {path} needs " + "; ".join(problems)
                               + f" (its columns are {list(table.columns)})")
    times = pd.to_datetime(table[cols["time"]], errors="coerce")
    bad = np.flatnonzero(times.isna().to_numpy())
    if bad.size:
        raise ObservationError(
            f"{path}: column 'time' has {bad.size} value(s) that are not dates, first at row "
            f"{bad[0] + 2} ({table[cols['time']].iloc[bad[0]]!r}); write ISO dates such as "
            "2019-03-22T06:00")
    if getattr(times.dt, "tz", None) is not None:
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    L = get_layout(state[variables])
    data: dict[str, Any] = {}
    for v in observed:
        values = pd.to_numeric(table[v], errors="coerce")
        bad = np.flatnonzero(values.isna().to_numpy() & table[v].notna().to_numpy())
        if bad.size:
            raise ObservationError(
                f"{path}: column {v!r} has {bad.size} value(s) that are not numbers, first at "
                f"row {bad[0] + 2} ({table[v].iloc[bad[0]]!r})")
        attrs = {k: state[v].attrs[k] for k in ("units", "long_name", "standard_name")
                 if k in state[v].attrs}
        data[v] = ("obs", values.to_numpy(float), attrs)
        err_col = next((cols[c] for c in (f"{v}_error_std".lower(), f"{v}_error".lower())
                        if c in cols), None)
        if err_col is None and "error" in cols and len(observed) == 1:
            err_col = cols["error"]
        if err_col is not None:
            err = pd.to_numeric(table[err_col], errors="coerce").to_numpy(float)
        else:
            std = error_std.get(v) if isinstance(error_std, dict) else error_std
            if std is None:
                raise ObservationError(f"{path} has no error column for {v!r} ('error' or "
                                       f"'{v}_error_std') and observations.error_std gives none")
            err = np.full(len(table), float(std))
        data[f"{v}_error_std"] = ("obs", err, {"units": attrs.get("units", ""),
                                              "long_name": f"error std of {v}"})
    lat_name, lon_name = L.axes.lat or "lat", L.axes.lon or "lon"
    coords = {
        "time": ("obs", times.to_numpy("datetime64[ns]")),
        lat_name: ("obs", pd.to_numeric(table[lat], errors="coerce").to_numpy(float),
                   {"standard_name": "latitude", "units": "degrees_north"}),
        lon_name: ("obs", pd.to_numeric(table[lon], errors="coerce").to_numpy(float),
                   {"standard_name": "longitude", "units": "degrees_east"}),
    }
    for extra in ("station", "name", "id"):
        if extra in cols:
            coords["station"] = ("obs", table[cols[extra]].astype(str).to_numpy())
            break
    return xr.Dataset(data, coords=coords, attrs={"source": f"{path.name} (CSV)"})


def _stations_to_obs(ds: xr.Dataset) -> xr.Dataset:
    """A station Dataset (station × time, lat/lon along station) as an observation set."""
    if "obs" in ds.dims:
        return ds
    time = "time" if "time" in ds.dims else None
    others = [d for d in ds.dims if d != time]
    if time is None or len(others) != 1:
        raise ObservationError(
            f"an observation file needs a dimension 'obs' (see xlatda.obs.contract), or "
            f"dims (station, time) of a station table; this one has {dict(ds.sizes)}")
    stacked = ds.stack(obs=(others[0], time)).reset_index("obs")
    return stacked.drop_vars([c for c in stacked.coords if c == "obs"], errors="ignore")


def read_observations(path: str | Path, state: xr.Dataset, *, variables: list[str] | None = None,
                      error_std: Any = None) -> xr.Dataset:
    """Observations from a CSV table or a netCDF file, as an observation Dataset.

    Parameters
    ----------
    path : path
        ``.csv``: one row per observation with columns ``time`` (ISO dates),
        ``lat``/``latitude``, ``lon``/``longitude``, one column per observed
        variable named like it (or ``value`` for a single variable), and the
        error std in ``error`` (one variable) or ``<variable>_error_std``.
        Other extensions: a netCDF/zarr observation set (dimension ``obs``)
        or a station Dataset with dims ``(station, time)``.
    state : Dataset
        A state of the system (for the variable and coordinate names, units).
    variables : list of str, optional
        The state variables that may be observed (default: all).
    error_std : float or dict, optional
        Error std where the file gives none.

    Returns
    -------
    Dataset
        Observations along ``obs`` (see :mod:`xlatda.obs.contract`).

    Raises
    ------
    ObservationError
        Missing columns, times that are not dates, values that are not
        numbers; the message names the row.

    Examples
    --------
    >>> import tempfile, pathlib, numpy as np, xarray as xr
    >>> state = xr.Dataset({"t2m": (("lat", "lon"), np.zeros((2, 2)), {"units": "K"})},
    ...     coords={"lat": ("lat", [50.0, 51.0], {"standard_name": "latitude"}),
    ...             "lon": ("lon", [0.0, 1.0], {"standard_name": "longitude"})})
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "obs.csv"
    >>> _ = path.write_text("time,lat,lon,t2m,error\\n2019-03-22T06:00,50.5,0.5,280.1,0.5\\n")
    >>> obs = read_observations(path, state)
    >>> obs.t2m.values.tolist(), obs.t2m_error_std.values.tolist(), str(obs.time.values[0])[:16]
    ([280.1], [0.5], '2019-03-22T06:00')
    """
    path = Path(path)
    variables = variables or [str(v) for v in state.data_vars]
    if path.suffix.lower() in (".csv", ".txt"):
        obs = _csv_observations(path, state, variables, error_std)
    else:
        opened = xr.open_zarr(path) if path.suffix == ".zarr" else xr.open_dataset(path)
        obs = _stations_to_obs(opened.load())
        keep = [v for v in obs.data_vars if v in variables or any(
            str(v) == f"{w}_error_std" for w in variables)]
        if not any(v in variables for v in keep):
            raise ObservationError(f"{path} observes none of the state variables {variables} "
                                   f"(its variables: {list(obs.data_vars)})")
        obs = obs[keep]
        for v in variables:
            if v in obs and f"{v}_error_std" not in obs and "error_std" not in obs[v].attrs:
                std = error_std.get(v) if isinstance(error_std, dict) else error_std
                if std is None:
                    raise ObservationError(f"{path}: {v!r} has no error std; give "
                                           "observations.error_std")
                obs[v].attrs["error_std"] = float(std)
    finite = np.zeros(obs.sizes["obs"], bool)
    for v in variables:
        if v in obs:
            finite |= np.isfinite(np.asarray(obs[v].values, float))
    return obs.isel(obs=np.flatnonzero(finite))


# -- baselines -------------------------------------------------------------------------
def idw_interpolate(obs: xr.Dataset, grid: xr.Dataset, variable: str, times: Any, *,
                    lat: str, lon: str, power: float = 2.0) -> xr.DataArray:
    """Inverse-distance-weighted interpolation of observations onto a lat/lon grid.

    At each of ``times``, the observations of ``variable`` at that time are
    spread onto the grid with weights ``1 / d**power`` (great-circle distance
    ``d``); a grid point on an observation takes its value. Times without
    observations are NaN. This is the "interpolate the stations" baseline an
    analysis should beat.

    Examples
    --------
    >>> import numpy as np, xarray as xr
    >>> grid = xr.Dataset(coords={"lat": [0.0, 1.0], "lon": [0.0, 1.0]})
    >>> obs = xr.Dataset({"x": ("obs", [1.0, 3.0])}, coords={"lat": ("obs", [0.0, 1.0]),
    ...     "lon": ("obs", [0.0, 1.0]), "time": ("obs", [0.0, 0.0])})
    >>> idw_interpolate(obs, grid, "x", [0.0], lat="lat", lon="lon").values.round(2).tolist()
    [[[1.0, 2.0], [2.0, 3.0]]]
    """
    glat = np.deg2rad(np.asarray(grid[lat].values, float))
    glon = np.deg2rad(np.asarray(grid[lon].values, float))
    glat2, glon2 = np.meshgrid(glat, glon, indexing="ij")
    times = np.asarray(times)
    out = np.full((times.size, *glat2.shape), np.nan)
    olat_all = np.deg2rad(np.asarray(obs[lat].values, float))
    olon_all = np.deg2rad(np.asarray(obs[lon].values, float))
    vals_all = np.asarray(obs[variable].values, float)
    otime = np.asarray(obs["time"].values) if "time" in obs.coords else None
    for i, t in enumerate(times):
        sel = np.isfinite(vals_all)
        if otime is not None:
            sel &= otime == t
        if not sel.any():
            continue
        olat, olon, vals = olat_all[sel], olon_all[sel], vals_all[sel]
        # haversine distance (radians) between every grid point and observation
        dlat = glat2[..., None] - olat
        dlon = glon2[..., None] - olon
        a = (np.sin(dlat / 2) ** 2
             + np.cos(glat2[..., None]) * np.cos(olat) * np.sin(dlon / 2) ** 2)
        d = 2 * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
        w = 1.0 / np.maximum(d, 1e-12) ** power
        out[i] = (w * vals).sum(-1) / w.sum(-1)
    return xr.DataArray(out, dims=("time", grid[lat].dims[0], grid[lon].dims[0]),
                        coords={"time": times, lat: grid[lat], lon: grid[lon]})


# -- the experiment ----------------------------------------------------------------------
def _open_system(cfg: dict[str, Any]) -> xr.Dataset:
    from xlatda import datasets

    sysc = cfg["system"]
    if sysc["name"] == "file":
        path = sysc["path"]
        ds = xr.open_zarr(path) if str(path).endswith(".zarr") else xr.open_dataset(path)
    else:
        try:
            ds = getattr(datasets, sysc["name"])(**sysc["options"])
        except TypeError as err:
            raise ConfigError(f"system.options: {err} (see help(xlatda.datasets."
                              f"{sysc['name']}))") from None
    return ds


def _period(ds: xr.Dataset, tname: str, period: dict[str, Any] | None, what: str) -> xr.Dataset:
    if period is None or (period["start"] is None and period["end"] is None):
        return ds
    times = ds[tname].values
    start, end = period["start"], period["end"]
    if isinstance(start, np.datetime64) or isinstance(end, np.datetime64):
        if times.dtype.kind != "M":
            raise ConfigError(f"{what}: dates were given but the data's {tname!r} is not a "
                              f"date ({times.dtype}); give numbers of model time")
    elif times.dtype.kind == "M":
        raise ConfigError(f"{what}: numbers were given but the data's times are dates "
                          f"({str(times[0])[:16]} .. {str(times[-1])[:16]}); give dates")
    out = ds.sel({tname: slice(start, end)})
    if out.sizes[tname] == 0:
        raise ConfigError(f"{what}: no data between {start} and {end}; the data cover "
                          f"{str(times[0])[:19]} .. {str(times[-1])[:19]}")
    return out


def _background(cfg, ds, train, truth, tname):
    """First background and its valid time (one step before the assimilation period)."""
    initial = cfg["assimilate"]["initial"] or ("climatology" if train is not None else "truth")
    t0 = truth[tname].values[0]
    before = ds[tname].values[ds[tname].values < t0]
    t_bg = before[-1] if before.size else t0
    if initial == "climatology":
        if train is None:
            raise ConfigError("assimilate.initial: 'climatology' needs a train period")
        state = train.mean(tname)
    elif initial == "persistence":
        if not before.size:
            raise ConfigError("assimilate.initial: 'persistence' needs data before the "
                              "assimilation start")
        state = ds.sel({tname: t_bg})
    else:
        state = ds.sel({tname: t_bg})
    coord = xr.Variable((), t_bg, dict(ds[tname].attrs))
    return state.assign_coords({tname: coord}), initial


def _check_places_before_fit(obs: xr.Dataset, train: xr.Dataset, mc: dict[str, Any]) -> None:
    """:func:`xlatda.validation.check_places_on_mask` against the fixed NaN of the
    training fields (the mask the fitted model will have), before any fitting."""
    import xlatda
    from xlatda.validation import check_places_on_mask

    L = xlatda.layout(train)
    if L.kind == "latlon" and L.spatial_dims[0] != L.axes.lat:
        return  # refitted lat first; xlatda.cycle checks against the model's mask
    x = L.to_tensor(train).numpy()
    if L.member_dim in train.dims:
        x = x.reshape(-1, *x.shape[2:])
    mask = np.isnan(x).all(0)
    neighbours = int((mc.get("encoder_options") or {}).get("neighbours", 1))
    check_places_on_mask(obs, mask, L.grid_spec(), L, neighbours=neighbours)


def _fit_or_open(cfg, train, progress, say):
    import xlatda

    mc = cfg["model"]
    if mc["path"]:
        model = xlatda.open_model(mc["path"])
        say(f"model: {mc['path']} ({model})")
        return model
    say(f"fitting {mc['encoder']} (latent_dim={mc['latent_dim']}) + {mc['dynamics']} "
        f"dynamics on {train.sizes[xlatda.layout(train).axes.time]} training states")
    if progress:
        say(TRAINING_REPORT)
    model = xlatda.fit(train, encoder=mc["encoder"], latent_dim=mc["latent_dim"],
                       dynamics=mc["dynamics"], uncertainty=mc["uncertainty"],
                       epochs=mc["epochs"], seed=mc["seed"], progress=progress,
                       validation=cfg["train"]["validation"] or None,
                       encoder_options=mc["encoder_options"] or None,
                       dynamics_options=mc["options"] or None)
    if mc["save"]:
        model.save(mc["save"])
        say(f"model saved to {mc['save']}")
    return model


def training_summary(model: Any, *, ratio: float = 10.0) -> str:
    """One paragraph on a fitted model's losses, with a warning when it overfits.

    Reads ``model.history``: the encoder's final training and validation
    losses, and the dynamics' losses at the free-roll-out epochs (p = 0;
    see :data:`TRAINING_REPORT`). A validation loss above ``ratio`` times
    the training loss there is flagged.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> m = SimpleNamespace(history={"dynamics": {"train_loss": [0.5, 0.01],
    ...                     "val_loss": [0.9, 0.4], "reanchor_p": [1.0, 0.0]}})
    >>> print(training_summary(m))
    dynamics (free roll-out, p = 0): train 0.01, validation 0.4 (40x): WARNING: ...
    >>> lin = SimpleNamespace(history={"dynamics": {"kind": "linear", "train_mse": 0.4,
    ...                       "val_mse": {"0.001": 0.5}, "ridge": 0.001, "spectral_radius": 0.98}})
    >>> print(training_summary(lin))
    dynamics (linear, one step): train 0.4, validation 0.5 (1.2x); spectral radius 0.980
    >>> lin.history["dynamics"]["val_mse_per_lead"] = [0.6, 1.5, 2.9]
    >>> print(training_summary(lin))
    dynamics (linear, one step): train 0.4, validation 0.6 (1.5x); spectral radius 0.980
    """
    lines = []
    hist = getattr(model, "history", {}) or {}
    enc = hist.get("encoder") or {}
    if isinstance(enc, dict) and enc.get("train_loss") and enc.get("val_loss"):
        lines.append(f"encoder: train {enc['train_loss'][-1]:.3g}, validation "
                     f"{enc['val_loss'][-1]:.3g}")
    dyn = hist.get("dynamics") or {}
    if isinstance(dyn, dict) and dyn.get("train_loss") and dyn.get("val_loss"):
        ps = dyn.get("reanchor_p") or [0.0] * len(dyn["train_loss"])
        free = [i for i, q in enumerate(ps) if q == 0.0] or [len(ps) - 1]
        i = min(free, key=lambda k: dyn["val_loss"][k]
                if np.isfinite(dyn["val_loss"][k]) else np.inf)
        tr, va = float(dyn["train_loss"][i]), float(dyn["val_loss"][i])
        text = (f"dynamics (free roll-out, p = {ps[i]:g}): train {tr:.3g}, validation "
                f"{va:.3g} ({va / tr:.0f}x)" if tr > 0 else "")
        if tr > 0 and va > ratio * tr:
            text += (": WARNING: the validation loss is far above the training loss, the "
                     "dynamics overfit the train period (fewer epochs, a smaller latent_dim "
                     "or a longer train period)")
        lines.append(text)
    elif isinstance(dyn, dict) and dyn.get("kind") == "linear":
        tr = float(dyn.get("train_mse", np.nan))
        # the held-out one-step error of the chosen ridge (older histories: the score)
        va = (dyn.get("val_mse_per_lead") or [None])[0]
        if va is None:
            va = (dyn.get("val_mse") or {}).get(repr(dyn.get("ridge")))
        text = f"dynamics (linear, one step): train {tr:.3g}"
        if va is not None and tr > 0:
            text += f", validation {va:.3g} ({va / tr:.1f}x)"
            if va > ratio * tr:
                text += (": WARNING: the validation error is far above the training error "
                         "(a smaller latent_dim or a longer train period)")
        text += f"; spectral radius {float(dyn.get('spectral_radius', np.nan)):.3f}"
        lines.append(text)
    return "\n".join(line for line in lines if line) or "no training losses recorded"


def _physical_model(cfg, ds):
    from xlatda.dynamics import physical_models

    name = cfg["assimilate"]["physical_model"] or cfg["system"]["name"]
    opts = {k: v for k, v in cfg["system"]["options"].items() if k in ("n", "forcing", "dt")}
    if name == "shallow_water":
        opts = {"nlat": ds.sizes.get("lat", 32), "nlon": ds.sizes.get("lon", 64)}
    return physical_models.get(name)(**opts)


def _metric_attrs(kind: str, v: str, units: str) -> dict[str, str]:
    text = {"rmse": f"root-mean-square error of {v} against the verifying data (cos-latitude "
                    "weighted over the grid on lat/lon grids)",
            "spread": f"ensemble spread of {v} (standard deviation over members, root-mean-"
                      "square over the grid)"}[kind]
    return {"long_name": text, "units": units}


def _scores(runs: dict[str, xr.Dataset], spreads: dict[str, xr.Dataset], truth: xr.Dataset,
            variables: list[str], space_dims: list[str]) -> xr.Dataset:
    from xlatda import metrics

    names = list(runs)
    out = xr.Dataset(coords={"run": ("run", names, {"long_name": "estimate scored"})})
    for v in variables:
        units = str(truth[v].attrs.get("units", ""))
        series = [metrics.rmse(runs[m][v], truth[v], dim=space_dims) for m in names]
        rm = xr.concat(series, dim="run").assign_coords(run=names)
        out[f"{v}_rmse"] = rm.assign_attrs(_metric_attrs("rmse", v, units))
        out[f"{v}_rmse_mean"] = np.sqrt((rm**2).mean("time")).assign_attrs(
            _metric_attrs("rmse", v, units) | {"cell_methods": "time: root_mean_square"})
        sp = []
        for m in names:
            if m in spreads:
                sp.append(np.sqrt((spreads[m][v] ** 2).mean(space_dims)))
            else:
                sp.append(xr.full_like(rm.isel(run=0, drop=True), np.nan))
        out[f"{v}_spread"] = xr.concat(sp, dim="run").assign_coords(run=names).assign_attrs(
            _metric_attrs("spread", v, units))
    return out


def _provenance(cfg: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    now = _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()
    return {
        "Conventions": "CF-1.10",
        "title": f"xlatda run: {cfg['assimilate']['method']} on " + (
            Path(cfg["system"]["path"]).name if cfg["system"]["name"] == "file"
            else cfg["system"]["name"]),
        "source": f"xlatda {__version__} (xlatda run)",
        "history": f"{now} xlatda run {Path(cfg['_path']).name} (xlatda {__version__})",
        "date_created": now,
        "xlatda_version": __version__,
        "config_file": str(cfg["_path"]),
        "config": cfg["_text"],
    } | extra


def _write(tree: xr.DataTree, out: Path) -> None:
    if out.exists():
        import shutil

        shutil.rmtree(out) if out.is_dir() else out.unlink()
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".zarr":
        tree.to_zarr(out)
    else:
        tree.to_netcdf(out, engine="netcdf4")


def check_data(cfg: dict[str, Any]) -> list[str]:
    """Problems of the data a (valid) configuration points to, without running it.

    Opens the data lazily and checks the variables and that both periods hold
    data; reads the observation file and checks its columns. Returns
    ``"path: message"`` lines (empty when all is well).
    """
    import xlatda

    problems = []
    try:
        ds = _open_system(cfg)
        L = xlatda.layout(ds)
    except Exception as err:  # reported with the other problems, not raised
        return [f"system: cannot open the data: {err}"]
    names = cfg["system"]["variables"]
    if names:
        missing = [v for v in names if v not in ds.data_vars]
        if missing:
            problems.append(f"system.variables: {missing} not in the data (variables: "
                            f"{list(ds.data_vars)})")
    tname = L.axes.time
    for section in ("train", "assimilate"):
        if cfg.get(section) is not None:
            try:
                _period(ds, tname, cfg[section], section)
            except ConfigError as err:
                problems.append(str(err))
    oc = cfg["observations"]
    if oc["source"] == "file" and not problems:
        state = ds[names] if names else ds
        try:
            read_observations(oc["path"], state.isel({tname: 0}), variables=names,
                              error_std=oc["error_std"])
        except ObservationError as err:
            problems.append(f"observations.path: {err}")
    return problems


def run_experiment(cfg: dict[str, Any], *, progress: bool | None = None,
                   out: str | Path | None = None,
                   echo: Any = print) -> Path:
    """Run a configuration (from :func:`xlatda.config.load_config`); returns the result path.

    See the module docstring for the steps and the result file. ``out``
    overrides ``output.path``; ``echo`` receives the progress lines (``None``:
    silence); ``progress`` (bars) defaults to the ``progress`` option
    (``"auto"``: in a terminal or a Jupyter kernel).
    """
    import xlatda

    if progress is None:
        progress = xlatda.get_options()["progress"]

    say = echo or (lambda *a, **k: None)
    out = Path(out if out is not None else cfg["output"]["path"])
    if out.exists() and not cfg["output"]["overwrite"]:
        raise ConfigError(f"output {str(out)!r} exists; set output.overwrite: true or choose "
                          "another output.path")
    ds = _open_system(cfg)
    L = xlatda.layout(ds)
    tname = L.axes.time
    extra = [d for d in L.sample_dims if d != tname]
    if extra:
        say(f"using the first of {', '.join(f'{d} ({ds.sizes[d]})' for d in extra)}")
        ds = ds.isel({d: 0 for d in extra}, drop=True)
    variables = cfg["system"]["variables"] or list(L.variables)
    ds = ds[variables]
    if cfg["model"] is not None and cfg["train"] is None and not cfg["model"]["path"]:
        half = ds[tname].values[ds.sizes[tname] // 2]
        cfg = cfg | {"train": {"start": None, "end": ds[tname].values[ds.sizes[tname] // 2 - 1],
                               "validation": 0.1}}
        if cfg["assimilate"]["start"] is None:
            cfg["assimilate"] = cfg["assimilate"] | {"start": half}
    train = _period(ds, tname, cfg["train"], "train") if cfg["train"] is not None else None
    truth = _period(ds, tname, cfg["assimilate"], "assimilate").load()
    if train is not None:
        train = train.load()
        say(f"train: {str(train[tname].values[0])[:16]} .. {str(train[tname].values[-1])[:16]} "
            f"({train.sizes[tname]} states)")
    say(f"assimilate: {str(truth[tname].values[0])[:16]} .. "
        f"{str(truth[tname].values[-1])[:16]} ({truth.sizes[tname]} states)")

    background, initial = _background(cfg, ds, train, truth, tname)
    t_bg = background[tname].values

    oc = cfg["observations"]
    if oc["source"] == "file":
        obs = read_observations(oc["path"], truth, variables=variables,
                                error_std=oc["error_std"])
        ot = np.asarray(obs["time"].values)
        t_end = truth[tname].values[-1]
        keep = (ot > t_bg) & (ot <= t_end)
        if not keep.any():
            raise ObservationError(
                f"{oc['path']} has no observations in the assimilation period "
                f"({str(t_bg)[:16]}, {str(t_end)[:16]}]; its times span "
                f"{str(ot.min())[:16]} .. {str(ot.max())[:16]}")
        obs = obs.isel(obs=np.flatnonzero(keep))
        say(f"observations: {obs.sizes['obs']} rows from {Path(oc['path']).name}")
    else:
        sampled = truth.isel({tname: slice(None, None, oc["every"])})
        sampled = sampled.sel({tname: sampled[tname] > t_bg})
        obs = xlatda.obs.sample_points(sampled, n=oc["n"], error_std=oc["error_std"],
                                       seed=oc["seed"])
        say(f"observations: {oc['n']} random locations every {oc['every']} step(s), "
            f"{obs.sizes['obs']} in all")

    if cfg["model"] is not None and train is not None and not cfg["model"]["path"]:
        # stations on cells the model will have no data in: refused before fitting
        _check_places_before_fit(obs, train, cfg["model"])
    report = ""
    if cfg["model"] is not None:
        model = _fit_or_open(cfg, train, progress, say)
        report = training_summary(model)
        say(report)
    else:
        model = _physical_model(cfg, ds)

    ac = cfg["assimilate"]
    size = ac["members"] or "the default number of"
    say(f"cycling {ac['method']} with {size} members from the {initial} background "
        f"at {str(t_bg)[:16]}")
    res = xlatda.cycle(background, obs, model, method=ac["method"], space=ac["space"],
                       members=ac["members"], init_std=ac["init_std"], window=ac["window"],
                       seed=ac["seed"], progress=progress, **ac["settings"])
    ana, bgd = res.analysis, res.background
    times = np.intersect1d(ana[tname].values, truth[tname].values)
    if times.size == 0:
        raise ObservationError("no analysis time is a time of the verifying data; observation "
                               "times must fall on the data's time steps to be scored")
    ref = truth.sel({tname: times})
    space_dims = [d for d in L.spatial_dims]
    mean = {"analysis": ana.mean("member").sel({tname: times}),
            "background": bgd.mean("member").sel({tname: times})}
    spreads = {k: e.std("member", ddof=1).sel({tname: times})
               for k, e in (("analysis", ana), ("background", bgd)) if e.sizes["member"] > 1}
    runs = dict(mean)
    if train is not None:
        clim = train.mean(tname)
        runs["climatology"] = clim.expand_dims({tname: times})
    if L.kind == "latlon":
        interp = xr.Dataset({v: idw_interpolate(obs, ref, v, times, lat=L.axes.lat,
                                                lon=L.axes.lon)
                             for v in variables if v in obs.data_vars})
        if interp.data_vars and all(v in interp for v in variables):
            runs["interpolation"] = interp.rename(time=tname) if tname != "time" else interp
    scores = _scores(runs, spreads, ref, variables, space_dims)
    for v in variables:
        line = ", ".join(f"{m} {float(scores[f'{v}_rmse_mean'].sel(run=m)):.3g}"
                         for m in scores.run.values)
        say(f"RMSE of {v} [{truth[v].attrs.get('units', '')}]: {line}")

    # -- result file --------------------------------------------------------------
    def with_attrs(ds_, what):
        for v in ds_.data_vars:
            base = truth[v].attrs if v in truth else {}
            ds_[v].attrs = {k: base[k] for k in ("units", "standard_name") if k in base} | {
                "long_name": f"{what} of {base.get('long_name', v)}"}
        return ds_

    def spread(ens: xr.Dataset, what: str) -> xr.Dataset:
        sp = ens.std("member", ddof=1).rename({v: f"{v}_spread" for v in ens.data_vars})
        for v in ens.data_vars:
            sp[f"{v}_spread"].attrs = {"units": truth[v].attrs.get("units", ""),
                                       "long_name": f"{what} ensemble spread of {v}",
                                       "cell_methods": "member: standard_deviation"}
        return sp

    if cfg["output"]["ensemble"]:
        analysis = with_attrs(ana.copy(), "analysis ensemble")
    else:
        analysis = with_attrs(ana.mean("member"), "analysis ensemble mean")
        analysis = analysis.merge(spread(ana, "analysis"))
    background_out = with_attrs(bgd.mean("member"), "background (forecast) ensemble mean")
    background_out = background_out.merge(spread(bgd, "background"))
    figure = out.with_suffix(".png") if cfg["output"]["figure"] else None
    attrs = _provenance(cfg, {
        "method": ac["method"], "members": int(res.analysis.sizes.get("member", 1)),
        "initial_background": initial,
        "observations": (Path(oc["path"]).name if oc["source"] == "file"
                         else f"synthetic: {oc['n']} random locations every {oc['every']} "
                              "step(s)"),
        "figure": figure.name if figure is not None else "",
        "training_report": report,
    })
    diag = res.diagnostics.copy()
    for v in diag.data_vars:
        diag[v].attrs.setdefault("long_name", str(v).replace("_", " "))
    obs_out = obs.copy()
    obs_out.attrs = {"long_name": "observations assimilated"}
    tree = xr.DataTree.from_dict({
        "/": xr.Dataset(attrs=attrs),
        "analysis": analysis.drop_attrs(deep=False).assign_attrs(
            description="analysis at every observation time"),
        "background": background_out.drop_attrs(deep=False).assign_attrs(
            description="forecast from the previous analysis, before the observations"),
        "truth": truth.assign_attrs(description="verifying data of the assimilation period "
                                    "(not used to fit the model)"),
        "observations": obs_out,
        "diagnostics": diag.assign_attrs(description="per analysis time: number of "
                                         "observations, RMS innovation and residual"),
        "scores": scores.assign_attrs(description="RMSE and spread against the verifying "
                                      "data, per time, for the analysis, the background and "
                                      "baselines (climatology: train-period mean; "
                                      "interpolation: inverse-distance weighting of the "
                                      "observations)"),
    })
    _write(tree, out)
    say(f"wrote {out}")
    if figure is not None:
        from xlatda.plot import experiment_figure

        fig = experiment_figure(ref, mean["background"], mean["analysis"], obs, scores,
                                title=attrs["title"])
        fig.savefig(figure, dpi=110)
        import matplotlib.pyplot as plt

        plt.close(fig)
        say(f"wrote {figure}")
    return out
