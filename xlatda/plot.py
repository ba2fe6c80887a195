"""Figures of states, analyses and scores (matplotlib, optional cartopy).

matplotlib is an optional dependency (``pip install xlatda[plot]``): it is
imported inside the functions, never when :mod:`xlatda` is imported. Every
function returns the :class:`matplotlib.figure.Figure` it drew on and never
calls ``plt.show()``; single-panel functions draw on ``ax`` when given.

- :func:`maps`: truth, background, analysis and increment of one variable at
  one time, with the observations overlaid. Latitude/longitude grids (found
  through cf-xarray, whatever the coordinate names) become maps; scattered
  point states become coloured scatter maps; generic 1-D states such as
  Lorenz-96 become line plots over the site index.
- :func:`rmse_spread`: RMSE of the ensemble means against the truth and
  ensemble spread over time (from :mod:`xlatda.metrics`).
- :func:`rank_histogram`: Talagrand diagram with the flat expectation.
- :func:`spread_skill`: binned spread against the error of the ensemble mean.
- :func:`latent_trajectory`: the first latent components over time.

Examples
--------
>>> import matplotlib; matplotlib.use("Agg")  # draw without opening windows
>>> import xlatda, xlatda.plot
>>> truth = xlatda.datasets.lorenz96(n=8, steps=4)
>>> fig = xlatda.plot.maps(truth=truth)
>>> len(fig.axes)
1
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np
import xarray as xr

from xlatda import metrics
from xlatda.cf import find_axes, is_datetime
from xlatda.errors import ConfigError, LayoutError, VariableNotFoundError

__all__ = [
    "analysis_maps",
    "experiment_figure",
    "latent_trajectory",
    "maps",
    "rank_histogram",
    "rmse_spread",
    "score_series",
    "spread_skill",
]

XArray = xr.DataArray | xr.Dataset
_ERROR_SUFFIX = "_error_std"
_ROLE_STYLE = {  # colour and line style of each role in line plots
    "truth": {"color": "k", "linestyle": "-", "linewidth": 2.0},
    "background": {"color": "C0", "linestyle": "--", "linewidth": 1.5},
    "analysis": {"color": "C3", "linestyle": "-", "linewidth": 1.5},
}


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _pyplot():
    """``matplotlib.pyplot``, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(
            "xlatda.plot needs matplotlib, which is not installed; install it with "
            "`pip install xlatda[plot]` (or `pip install matplotlib`)"
        ) from err
    return plt


def _cartopy_crs(projection: Any):
    """The cartopy projection to draw maps with, or None for plain axes."""
    if projection is False:
        return None
    try:
        import cartopy.crs as ccrs
    except ImportError:
        if projection is None:
            return None
        raise ImportError(
            f"projection={projection!r} needs cartopy, which is not installed; install it "
            "with `pip install cartopy`, or pass projection=None for plain lon/lat axes"
        ) from None
    if projection is None or projection is True:
        return ccrs.PlateCarree()
    if not isinstance(projection, ccrs.Projection):
        raise ConfigError(
            f"projection must be None, False, True or a cartopy.crs.Projection, got "
            f"{projection!r}; e.g. projection=cartopy.crs.Robinson()"
        )
    return projection


_DEGREE_UNITS = {  # CF spellings of degrees, as printed on axes
    "degrees_north": "°N", "degree_north": "°N", "degrees_n": "°N", "degree_n": "°N",
    "degreesn": "°N", "degrees_east": "°E", "degree_east": "°E", "degrees_e": "°E",
    "degree_e": "°E", "degreese": "°E", "degrees": "°", "degree": "°",
}


def _pretty_units(units: Any) -> str:
    """Units as printed: CF degrees as ``°N``/``°E``, the rest as they are."""
    return _DEGREE_UNITS.get(str(units).strip().lower(), str(units))


def _label(da: xr.DataArray, name: Hashable | None = None) -> str:
    """``long name [units]`` from CF attributes (units left out when absent).

    Degrees print as ``°N``/``°E`` (``latitude [°N]``, not ``degrees_north``).
    """
    units = da.attrs.get("units")
    axis = {"°N": "latitude", "°E": "longitude"}.get(_pretty_units(units)) if units else None
    text = da.attrs.get("long_name") or da.attrs.get("standard_name") or axis or name or da.name
    text = str(text) if text is not None else "value"
    return f"{text} [{_pretty_units(units)}]" if units not in (None, "") else text


def _units_suffix(da: xr.DataArray) -> str:
    units = da.attrs.get("units")
    return f" [{_pretty_units(units)}]" if units not in (None, "") else ""


def _time_axis(ax: Any, values: Any) -> None:
    """Date ticks that do not overlap and show the year (``ConciseDateFormatter``)."""
    if np.asarray(values).dtype.kind != "M":
        return
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, show_offset=True))


def _log_or_linear(ax: Any, values: Any) -> None:
    """Log y axis with labelled 1-2-5 ticks when the values span > 20x, else linear from 0."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size and v.max() / v.min() > 20:
        from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(LogFormatterSciNotation(labelOnlyBase=False))
        ax.yaxis.set_minor_formatter(NullFormatter())
    else:
        ax.set_ylim(bottom=0, top=1.05 * float(v.max()) if v.size else None)


def _state_names(ds: xr.Dataset) -> list[str]:
    return [str(v) for v in ds.data_vars if not str(v).endswith(_ERROR_SUFFIX)]


def _pick(obj: XArray, variable: str | None, role: str) -> xr.DataArray:
    """The DataArray of ``variable`` in ``obj`` (the first state variable if None)."""
    if isinstance(obj, xr.DataArray):
        return obj
    if not isinstance(obj, xr.Dataset):
        raise ConfigError(
            f"{role} must be an xarray Dataset or DataArray, got {type(obj).__name__}"
        )
    names = _state_names(obj)
    if variable is None:
        if not names:
            raise VariableNotFoundError(f"{role} has no data variables to plot")
        variable = names[0]
    if variable not in obj.data_vars:
        raise VariableNotFoundError(
            f"{role} has no variable {variable!r}; its variables are {names} "
            "(pass variable= with one of them)"
        )
    return obj[variable]


def _variable_name(objs: list[Any], variable: str | None) -> str | None:
    """The variable to plot: ``variable``, else the first state variable of the first Dataset."""
    if variable is not None:
        return variable
    for obj in objs:
        if isinstance(obj, xr.Dataset) and _state_names(obj):
            return _state_names(obj)[0]
    return None


def _time_dim(da: xr.DataArray) -> str | None:
    """Name of the time dimension of ``da`` (found through CF), or None."""
    try:
        name = find_axes(da).time
    except LayoutError:
        name = None
    if name is None and "time" in da.dims:
        name = "time"
    return name if name in da.dims else None


def _as_float(values: Any) -> np.ndarray:
    """Times as floats (seconds for datetimes) to measure distances between them."""
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]").astype(np.int64).astype(float) / 1e9
    if arr.dtype.kind == "O" and arr.size and is_datetime(arr):
        return xr.coding.times.encode_cf_datetime(arr, "seconds since 1970-01-01")[0].astype(
            float
        )
    return arr.astype(float)


def _same_time(a: Any, b: Any) -> bool:
    fa, fb = _as_float([a])[0], _as_float([b])[0]
    scale = max(abs(fa), abs(fb), 1.0)
    return bool(abs(fa - fb) <= 1e-9 * scale)


def _format_time(t: Any) -> str:
    arr = np.asarray(t)
    if arr.dtype.kind == "M":
        return str(np.datetime_as_string(arr, unit="m"))
    if arr.dtype.kind == "f":
        return f"{float(arr):g}"
    return str(t)


def _on_times(da: xr.DataArray, times: xr.DataArray, tname: str, role: str) -> xr.DataArray:
    """``da`` at the times ``times`` (nearest label, then checked), labelled like them."""
    if tname not in da.dims:
        return da
    index = da.indexes[tname]
    if not index.is_monotonic_increasing and not index.is_monotonic_decreasing:
        raise ConfigError(f"{role}'s {tname!r} coordinate must be sorted; use .sortby({tname!r})")
    try:
        pos = index.get_indexer(np.asarray(times.values), method="nearest")
    except TypeError:
        raise ConfigError(
            f"{role}'s {tname!r} values ({da[tname].dtype}) cannot be compared with the times "
            f"plotted ({times.dtype}); give every input the same kind of time coordinate"
        ) from None
    found = da[tname].values[pos]
    bad = [t for t, f in zip(times.values, found) if not _same_time(t, f)]
    if bad:
        raise ConfigError(
            f"{role} has no values at {tname}={_format_time(bad[0])} "
            f"({len(bad)} of {times.size} times missing; it covers "
            f"{_format_time(da[tname].values[0])} to {_format_time(da[tname].values[-1])}); "
            "pass a truth that covers the times plotted"
        )
    out = da.isel({tname: pos})
    return out.assign_coords({tname: times.values})


def _reduce_member(da: xr.DataArray, member: Any, member_dim: str, role: str) -> xr.DataArray:
    if member_dim not in da.dims:
        return da
    if isinstance(member, str) and member == "mean":
        return da.mean(member_dim, keep_attrs=True)
    if isinstance(member, (int, np.integer)) and not isinstance(member, bool):
        if not -da.sizes[member_dim] <= member < da.sizes[member_dim]:
            raise ConfigError(
                f"member={member} is out of range for {role}, which has "
                f"{da.sizes[member_dim]} members"
            )
        return da.isel({member_dim: int(member)})
    raise ConfigError(f"member must be 'mean' or an integer position, got {member!r}")


def _kind(da: xr.DataArray) -> tuple[str, str | None, str | None]:
    """How to draw a field: ("grid" | "points" | "line" | "image", lat, lon)."""
    try:
        axes = find_axes(da)
    except LayoutError:
        axes = None
    if axes is not None and axes.lat is not None and axes.lon is not None:
        lat, lon = da[axes.lat], da[axes.lon]
        if set(lat.dims) | set(lon.dims) == set(da.dims):
            if lat.ndim == 1 and lon.ndim == 1 and lat.dims == lon.dims:
                return "points", axes.lat, axes.lon
            return "grid", axes.lat, axes.lon
    if da.ndim == 1:
        return "line", None, None
    if da.ndim == 2:
        return "image", None, None
    raise ConfigError(
        f"cannot draw a field with dims {da.dims} after selecting time and member: maps "
        "draws lat/lon grids, point sets and 1-D or 2-D generic fields; select the other "
        f"dims first, e.g. ds.isel({da.dims[0]}=0)"
    )


def _obs_subset(
    obs: xr.Dataset, name: str, ref: xr.DataArray | None, tname: str | None, t_index: int | None
) -> xr.Dataset:
    """Observations of ``name`` closest in time to the plotted time."""
    if not isinstance(obs, xr.Dataset) or "obs" not in obs.dims:
        raise ConfigError("obs must be an observation Dataset with dimension 'obs'")
    if name not in obs.data_vars:
        raise VariableNotFoundError(
            f"obs has no variable {name!r}; it observes {_state_names(obs)} "
            "(pass variable= with an observed variable, or obs=None)"
        )
    keep = np.isfinite(np.asarray(obs[name].values, dtype=float))
    otime = tname if tname is not None and tname in obs.coords else "time"
    if ref is not None and tname is not None and t_index is not None and otime in obs.coords:
        # each observation goes to its nearest plotted time
        times = _as_float(ref[tname].values)
        order = np.argsort(times)
        tobs = _as_float(obs[otime].values)
        pos = np.clip(np.searchsorted(times[order], tobs), 1, max(len(times) - 1, 1))
        lo, hi = order[pos - 1], order[np.minimum(pos, len(times) - 1)]
        nearest = np.where(np.abs(tobs - times[lo]) <= np.abs(times[hi] - tobs), lo, hi)
        keep &= nearest == t_index
    return obs.isel(obs=np.flatnonzero(keep))


def _obs_locations(obs: xr.Dataset, lat: str | None, lon: str | None):
    """Latitude and longitude of ``obs`` (through CF, else the state's names)."""
    try:
        axes = find_axes(obs)
        olat, olon = axes.lat, axes.lon
    except LayoutError:
        olat = olon = None
    olat = olat or (lat if lat in obs.coords else None)
    olon = olon or (lon if lon in obs.coords else None)
    if olat is None or olon is None:
        raise ConfigError(
            "obs have no latitude/longitude coordinates; give them standard_name "
            "'latitude'/'longitude' or name them like the state's"
        )
    return np.asarray(obs[olat].values, float), np.asarray(obs[olon].values, float)


def _wrap_lon(lon: np.ndarray, grid_lon: np.ndarray) -> np.ndarray:
    """Longitudes shifted by 360 degrees into the range of the grid's."""
    lo = float(np.nanmin(grid_lon))
    if float(np.nanmax(grid_lon)) - lo > 360.0:
        return lon
    return lo + np.mod(lon - lo, 360.0)


def _norms(fields: dict[str, xr.DataArray], increment: xr.DataArray | None):
    from matplotlib.colors import Normalize

    values = [np.asarray(f.values, float) for f in fields.values()]
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    if finite.size:
        vmin, vmax = float(finite.min()), float(finite.max())
    else:
        vmin, vmax = 0.0, 1.0
    if vmin == vmax:
        vmin, vmax = vmin - 0.5, vmax + 0.5
    state_norm = Normalize(vmin, vmax)
    inc_norm = None
    if increment is not None:
        inc = np.abs(np.asarray(increment.values, float))
        amp = float(np.nanmax(inc)) if np.isfinite(inc).any() else 0.0
        amp = amp if amp > 0 else 1.0
        inc_norm = Normalize(-amp, amp)
    return state_norm, inc_norm


# --------------------------------------------------------------------------
# maps
# --------------------------------------------------------------------------


def maps(
    truth: XArray | None = None,
    background: XArray | None = None,
    analysis: XArray | None = None,
    obs: xr.Dataset | None = None,
    *,
    variable: str | None = None,
    time: Any = None,
    member: str | int = "mean",
    member_dim: str = "member",
    cmap: str = "viridis",
    diff_cmap: str = "RdBu_r",
    projection: Any = None,
    coastlines: bool = True,
    figsize: tuple[float, float] | None = None,
):
    """Truth, background, analysis and increment of one variable at one time.

    One panel per field given, plus the increment (analysis minus background)
    when both are given; observations of the variable near that time are
    overlaid. Latitude/longitude grids (found through cf-xarray and
    :func:`xlatda.cf.find_axes`, whatever the coordinate names) are drawn with
    ``pcolormesh``, point states as coloured scatter maps, generic 2-D fields
    as images over their dimension coordinates: each panel has its own
    colour bar, the state panels share colour limits and the increment's are
    symmetric about zero. Generic 1-D states (Lorenz-96) are drawn as lines
    over the site coordinate: truth, background and analysis in one panel
    (with the ensemble mean plus/minus one standard deviation shaded), the
    observations as markers with error bars, the increment below.

    Parameters
    ----------
    truth, background, analysis : Dataset or DataArray, optional
        Fields to draw, with or without time and ``member_dim``; at least one.
    obs : Dataset, optional
        Observation set (dimension ``obs``, see :mod:`xlatda.obs.contract`).
        Only observations of ``variable`` are drawn; when they have times,
        only those whose nearest plotted time is ``time``. On maps they are
        coloured by value with the state panels' colours (plain circles on
        the increment).
    variable : str, optional
        Variable to draw; default the first data variable of the first
        Dataset given (``*_error_std`` variables are skipped).
    time : label, optional
        Time to draw (nearest label of the time coordinate, found through CF;
        every field with a time dimension must have it). Default: the last
        time of the analysis (else background, else truth).
    member : "mean" or int, default "mean"
        Ensemble mean, or the member at this position.
    member_dim : str, default "member"
        Ensemble dimension.
    cmap, diff_cmap : str or Colormap
        Colour maps of the state panels and of the increment.
    projection : None, bool or cartopy.crs.Projection, optional
        Maps only. ``None``: ``PlateCarree`` with coastlines when cartopy is
        installed, plain longitude/latitude axes otherwise; ``False``: plain
        axes always; ``True``: ``PlateCarree`` (needs cartopy); a projection:
        drawn on it (data in ``PlateCarree``).
    coastlines : bool, default True
        Draw coastlines on cartopy maps (cartopy fetches Natural Earth data
        the first time, which fails offline: pass False there).
    figsize : (float, float), optional
        Figure size in inches (default from the number of panels).

    Returns
    -------
    matplotlib.figure.Figure
        Panels in ``fig.axes`` first (truth, background, analysis, increment,
        in that order, those given), then their colour bars.

    Raises
    ------
    ConfigError
        No field given, a field lacks the time drawn, a bad ``member``, a
        field with more dims than a map or a line can show, or observations
        given for a generic 2-D field.
    VariableNotFoundError
        ``variable`` is not in a Dataset or in ``obs``.
    ImportError
        matplotlib is not installed (``pip install xlatda[plot]``), or a
        cartopy projection is asked for without cartopy.

    Notes
    -----
    Only the drawn time and member reduction are computed (dask inputs are
    loaded for that slice only).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import xlatda, xlatda.plot
    >>> truth = xlatda.datasets.lorenz96(n=8, steps=4)
    >>> ens = xlatda.datasets.lorenz96(n=8, steps=4, members=3, perturbation=0.5)
    >>> fig = xlatda.plot.maps(truth, ens, ens + 0.1)
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['Lorenz-96 state variable [1]', 'increment [1]']
    """
    plt = _pyplot()
    given = {r: o for r, o in (("truth", truth), ("background", background),
                               ("analysis", analysis)) if o is not None}
    if not given:
        raise ConfigError("maps needs at least one of truth, background or analysis")
    name = _variable_name(list(given.values()), variable)
    arrays = {r: _pick(o, name, r) for r, o in given.items()}
    if name is None:
        name = next(iter(arrays.values())).name

    # -- time -----------------------------------------------------------
    ref_role = next((r for r in ("analysis", "background", "truth")
                     if r in arrays and _time_dim(arrays[r]) is not None), None)
    ref = arrays[ref_role] if ref_role else None
    tname = _time_dim(ref) if ref is not None else None
    t_value = t_index = None
    if tname is not None:
        if time is None:
            t_index = ref.sizes[tname] - 1
        else:
            coord = ref[tname]
            try:
                nearest = coord.sel({tname: time}, method="nearest").values
                want = np.asarray(time, dtype=coord.dtype) if coord.dtype.kind in "Mf" else time
                found = _same_time(nearest, want)
            except (TypeError, ValueError, KeyError):
                found = False
            if not found:
                raise ConfigError(
                    f"time={time!r} is not a time of the {ref_role}; its {tname!r} values are "
                    f"{_format_time(ref[tname].values[0])} .. "
                    f"{_format_time(ref[tname].values[-1])}"
                )
            t_index = int(np.flatnonzero(coord.values == nearest)[0])
        t_value = ref[tname].isel({tname: [t_index]})
    elif time is not None:
        raise ConfigError(f"time={time!r} was given, but no field has a time dimension")
    fields = {}
    for role, da in arrays.items():
        if t_value is not None and tname in da.dims:
            da = _on_times(da, t_value, tname, role).isel({tname: 0})
        fields[role] = _reduce_member(da, member, member_dim, role)
    spreads = {}
    if isinstance(member, str) and member == "mean":
        for role in ("background", "analysis"):
            da = arrays.get(role)
            if da is not None and member_dim in da.dims and da.sizes[member_dim] > 1:
                if t_value is not None and tname in da.dims:
                    da = _on_times(da, t_value, tname, role).isel({tname: 0})
                spreads[role] = da.std(member_dim, ddof=1)
    increment = None
    if "background" in fields and "analysis" in fields:
        try:
            a, b = xr.align(fields["analysis"], fields["background"], join="exact")
        except ValueError as err:
            raise ConfigError(
                f"analysis and background are not on the same grid ({err}); the increment "
                "needs both on one grid"
            ) from None
        increment = a - b
    kinds = {_kind(f)[0] for f in fields.values()}
    kind, lat, lon = _kind(next(iter(fields.values())))
    if len(kinds) > 1:
        raise ConfigError(f"the fields have different layouts ({sorted(kinds)}); pass one kind")

    # -- observations --------------------------------------------------------
    sub = None
    if obs is not None:
        if kind == "image":
            raise ConfigError(
                "observations of generic 2-D fields cannot be placed; stack the spatial "
                "dims into one or pass obs=None"
            )
        sub = _obs_subset(obs, str(name), ref, tname, t_index)

    first = next(iter(fields.values()))
    what = "ensemble mean" if member == "mean" else f"member {member}"
    has_members = any(member_dim in a.dims for a in arrays.values())
    heading = ", ".join(
        [f"{_label(first, name)}"]
        + ([f"{tname} = {_format_time(t_value.values[0])}"] if t_value is not None else [])
        + ([what] if has_members else [])
        + ([f"{sub.sizes['obs']} observations"] if sub is not None else [])
    )
    if kind == "line":
        return _maps_line(plt, fields, spreads, increment, sub, name, heading, figsize)
    return _maps_panels(plt, fields, increment, sub, name, kind, lat, lon, heading, cmap,
                        diff_cmap, projection, coastlines, figsize)


def _maps_line(plt, fields, spreads, increment, sub, name, heading, figsize):
    n_rows = 2 if increment is not None else 1
    fig, axs = plt.subplots(
        n_rows, 1, sharex=True, squeeze=False, layout="constrained",
        figsize=figsize or (9.5, 3.0 + 2.2 * n_rows),
        gridspec_kw={"height_ratios": [3, 2][:n_rows]},
    )
    ax = axs[0, 0]
    first = next(iter(fields.values()))
    dim = first.dims[0]
    for role, da in fields.items():
        x = np.asarray(da[dim].values)
        ax.plot(x, da.values, label=role, **_ROLE_STYLE[role])
        if role in spreads:
            s = np.asarray(spreads[role].values)
            ax.fill_between(x, da.values - s, da.values + s, color=_ROLE_STYLE[role]["color"],
                            alpha=0.15, linewidth=0, label=f"{role} ± 1 std")
    if sub is not None:
        if dim not in sub.coords:
            raise ConfigError(
                f"obs have no coordinate {dim!r} giving their position along the state's "
                f"{dim!r} dimension"
            )
        from xlatda.obs.contract import error_std_of

        try:
            err = error_std_of(sub, str(name))
        except ValueError:
            err = None
        ax.errorbar(np.asarray(sub[dim].values, float), np.asarray(sub[name].values, float),
                    yerr=err, fmt="o", color="C2", markeredgecolor="k", markersize=6,
                    capsize=2, linewidth=1, zorder=3, label="observations")
    ax.set_ylabel(_label(first, name))
    ax.set_title(heading)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    ax.grid(alpha=0.3)
    if increment is not None:
        axi = axs[1, 0]
        axi.axhline(0.0, color="0.5", linewidth=0.8)
        axi.plot(np.asarray(increment[dim].values), increment.values, color="C4",
                 marker=".", label="analysis − background")
        if sub is not None:
            for pos in np.asarray(sub[dim].values, float):
                axi.axvline(pos, color="C2", alpha=0.4, linewidth=0.8)
        axi.set_ylabel("increment" + _units_suffix(first))
        axi.set_title("increment (analysis − background)" + _units_suffix(first))
        axi.grid(alpha=0.3)
    axs[-1, 0].set_xlabel(_label(first[dim], dim))
    return fig


def _maps_panels(plt, fields, increment, sub, name, kind, lat, lon, heading, cmap, diff_cmap,
                 projection, coastlines, figsize):
    panels = list(fields.items()) + ([("increment", increment)] if increment is not None else [])
    n = len(panels)
    ncols = 2 if n == 4 else n
    nrows = -(-n // ncols)
    crs = _cartopy_crs(projection) if kind in ("grid", "points") else None
    first = next(iter(fields.values()))
    if figsize is None:
        aspect = 0.6
        if kind in ("grid", "points"):
            lat_span = float(np.ptp(first[lat].values)) or 1.0
            lon_span = float(np.ptp(first[lon].values)) or 1.0
            aspect = float(np.clip(lat_span / lon_span, 0.35, 1.2))
        # about 3.4 in of data per panel, plus room for labels and the colour bar;
        # the height follows the lat/lon extent so that degrees look square
        figsize = (5.0 * ncols, (3.4 * aspect + 1.0) * nrows + 0.4)
    subplot_kw = {"projection": crs} if crs is not None else {}
    fig, axs = plt.subplots(nrows, ncols, squeeze=False, layout="constrained",
                            figsize=figsize, subplot_kw=subplot_kw)
    for extra in axs.flat[n:]:
        extra.remove()
    state_norm, inc_norm = _norms(fields, increment)
    transform = {}
    if crs is not None:
        import cartopy.crs as ccrs

        transform = {"transform": ccrs.PlateCarree()}
    units = _units_suffix(first)
    olat = olon = None
    if sub is not None and kind in ("grid", "points"):
        olat, olon = _obs_locations(sub, lat, lon)
        olon = _wrap_lon(olon, np.asarray(first[lon].values, float))
    for ax, (role, da) in zip(axs.flat, panels):
        is_inc = role == "increment"
        norm = inc_norm if is_inc else state_norm
        colours = diff_cmap if is_inc else cmap
        if kind == "grid":
            latc, lonc = da[lat], da[lon]
            if latc.ndim == 1:
                values = da.transpose(latc.dims[0], lonc.dims[0]).values
            else:
                values = da.transpose(*latc.dims).values
            mappable = ax.pcolormesh(lonc.values, latc.values, values, cmap=colours, norm=norm,
                                     shading="auto", **transform)
        elif kind == "points":
            mappable = ax.scatter(da[lon].values, da[lat].values, c=da.values, cmap=colours,
                                  norm=norm, s=18, **transform)
        else:  # image over two generic dims
            d0, d1 = da.dims
            mappable = ax.pcolormesh(da[d1].values if d1 in da.coords else np.arange(da.sizes[d1]),
                                     da[d0].values if d0 in da.coords else np.arange(da.sizes[d0]),
                                     da.values, cmap=colours, norm=norm, shading="auto")
            ax.set_xlabel(_label(da[d1], d1) if d1 in da.coords else str(d1))
            ax.set_ylabel(_label(da[d0], d0) if d0 in da.coords else str(d0))
        if olat is not None:
            if is_inc:
                ax.scatter(olon, olat, facecolors="none", edgecolors="k", s=22,
                           linewidths=0.8, zorder=3, **transform)
            else:
                ax.scatter(olon, olat, c=np.asarray(sub[name].values, float), cmap=colours,
                           norm=norm, edgecolors="k", s=30, linewidths=0.8, zorder=3,
                           **transform)
        if kind in ("grid", "points"):
            if crs is not None:
                if coastlines:
                    ax.coastlines(linewidth=0.6)
                ax.gridlines(draw_labels=False, linewidth=0.3, alpha=0.5)
            else:
                ax.set_xlabel(_label(da[lon], lon))
                ax.set_ylabel(_label(da[lat], lat))
        title = "increment (analysis − background)" if is_inc else role
        ax.set_title(f"{title}{units}", fontsize="medium")
        fig.colorbar(mappable, ax=ax, shrink=0.9, label=("Δ " if is_inc else "") + _label(
            first, name))
    fig.suptitle(heading)
    return fig


# --------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------


def _new_axes(plt, ax, figsize=(7.0, 4.0)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def _ensemble_and_truth(ens: XArray, truth: XArray, variable: str | None, member_dim: str):
    """The variable's ensemble and truth DataArrays, the truth at the ensemble's times."""
    name = _variable_name([ens, truth], variable)
    e = _pick(ens, name, "ens")
    t = _pick(truth, name if name is not None else e.name, "truth")
    if member_dim not in e.dims:
        raise ConfigError(
            f"ens has no member dimension {member_dim!r} (its dims are {list(e.dims)}); "
            "pass member_dim='<name of the ensemble dim>'"
        )
    tname = _time_dim(e)
    if tname is not None and tname in t.dims:
        t = _on_times(t, e[tname], tname, "truth")
    return e, t, name if name is not None else e.name


def _datasets_of(result: Any) -> dict[str, XArray]:
    if hasattr(result, "analysis") and hasattr(result, "background"):
        return {"analysis": result.analysis, "background": result.background}
    if isinstance(result, (xr.Dataset, xr.DataArray)):
        return {"ensemble": result}
    if isinstance(result, Mapping):
        unknown = [k for k in result if k not in ("analysis", "background")]
        if unknown or not result:
            raise ConfigError(
                f"result_or_datasets as a mapping takes the keys 'analysis' and/or "
                f"'background', got {list(result)}"
            )
        return {k: result[k] for k in ("background", "analysis") if k in result}
    raise ConfigError(
        "result_or_datasets must be a CycleResult, a mapping {'analysis': ds, 'background': "
        f"ds}} or one ensemble Dataset, got {type(result).__name__}"
    )


def rmse_spread(
    result_or_datasets: Any,
    truth: XArray,
    *,
    variable: str | None = None,
    member_dim: str = "member",
    ax: Any = None,
):
    """RMSE of the ensemble means against the truth, and ensemble spread, over time.

    At every time, :func:`xlatda.metrics.rmse` of the ensemble mean and
    :func:`xlatda.metrics.spread` over the spatial dims (all dims but time
    and ``member_dim``; latitude-weighted on lat/lon grids). Solid lines are
    RMSEs, dashed lines spreads; the legend gives their time means. A
    well-tuned filter has the spread close to the RMSE.

    Parameters
    ----------
    result_or_datasets : CycleResult, mapping or Dataset
        A :class:`~xlatda.CycleResult` (its analysis and background), a
        mapping with keys ``"analysis"`` and/or ``"background"``, or one
        ensemble.
    truth : Dataset or DataArray
        The true state; must contain every time of the ensembles.
    variable : str, optional
        Variable to score (default: the first data variable).
    member_dim : str, default "member"
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure by default.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ConfigError
        Unknown input kind, a missing ``member_dim`` or ensemble without a
        time dimension, or a truth that lacks some of the times.
    VariableNotFoundError
        ``variable`` is missing.

    Notes
    -----
    The scores are computed (dask inputs are computed here).

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import xlatda, xlatda.plot
    >>> truth = xlatda.datasets.lorenz96(n=8, steps=4)
    >>> ens = xlatda.datasets.lorenz96(n=8, steps=4, members=3, perturbation=0.5)
    >>> fig = xlatda.plot.rmse_spread({"analysis": ens}, truth)
    >>> [line.get_label().split(" (")[0] for line in fig.axes[0].get_lines()]
    ['analysis RMSE', 'analysis spread']
    """
    plt = _pyplot()
    ensembles = _datasets_of(result_or_datasets)
    series = []
    label = units = tname = None
    for role, ens in ensembles.items():
        e, t, name = _ensemble_and_truth(ens, truth, variable, member_dim)
        tname = _time_dim(e)
        if tname is None:
            raise ConfigError(
                f"the {role} has no time dimension (dims {list(e.dims)}); rmse_spread draws "
                "scores over time: pass ensembles with a time dimension"
            )
        dims = [d for d in e.dims if d not in (tname, member_dim)]
        err = metrics.rmse(e.mean(member_dim), t, dim=dims).compute()
        spr = metrics.spread(e, member_dim=member_dim, dim=dims).compute()
        series.append((role, e[tname], err, spr))
        if label is None:
            label, units = _label(e, name), _units_suffix(e)
    fig, ax = _new_axes(plt, ax)
    colours = {"analysis": "C3", "background": "C0", "ensemble": "C3"}
    for role, times, err, spr in series:
        c = colours[role]
        ax.plot(times.values, err.values, color=c, linestyle="-", marker=".",
                label=f"{role} RMSE (mean {float(err.mean()):.3g})")
        ax.plot(times.values, spr.values, color=c, linestyle="--",
                label=f"{role} spread (mean {float(spr.mean()):.3g})")
    ax.set_ylim(bottom=0)
    ax.set_xlabel(_label(series[0][1], tname))
    _time_axis(ax, series[0][1].values)
    ax.set_ylabel("RMSE, spread" + units)
    ax.set_title(f"RMSE and spread: {label}")
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def rank_histogram(
    ens: XArray,
    truth: XArray,
    *,
    member_dim: str = "member",
    variable: str | None = None,
    ax: Any = None,
):
    """Rank histogram (Talagrand diagram) with the flat expectation line.

    Bars are the counts of :func:`xlatda.metrics.rank_histogram` over every
    point and time; the dashed line is the count expected in each rank from
    a statistically consistent ensemble. A U shape means too little spread,
    a dome too much, a slope a bias.

    Parameters
    ----------
    ens : Dataset or DataArray
        Ensemble with dimension ``member_dim``.
    truth : Dataset or DataArray
        Verifying values; when both have a time dimension the truth is taken
        at the ensemble's times.
    member_dim : str, default "member"
    variable : str, optional
        Variable to score (default: the first data variable).
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ConfigError
        A missing ``member_dim`` or times the truth does not have.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import xlatda, xlatda.plot
    >>> truth = xlatda.datasets.lorenz96(n=8, steps=4)
    >>> ens = xlatda.datasets.lorenz96(n=8, steps=4, members=3, perturbation=0.5)
    >>> fig = xlatda.plot.rank_histogram(ens, truth)
    >>> len(fig.axes[0].patches)   # one bar per rank, members + 1
    4
    """
    plt = _pyplot()
    e, t, name = _ensemble_and_truth(ens, truth, variable, member_dim)
    counts = metrics.rank_histogram(e, t, member_dim=member_dim).compute()
    n_members = e.sizes[member_dim]
    total = int(counts.sum())
    fig, ax = _new_axes(plt, ax, figsize=(6.0, 4.0))
    ax.bar(counts["rank"].values, counts.values, width=0.85, color="C0", edgecolor="k",
           linewidth=0.5)
    ax.axhline(total / (n_members + 1), color="k", linestyle="--", linewidth=1,
               label=f"flat: {total / (n_members + 1):.3g} per rank")
    ax.set_xlabel(f"rank of the truth among {n_members} members")
    ax.set_ylabel("count")
    if n_members < 25:
        ax.set_xticks(counts["rank"].values)
    ax.set_xlim(0.4, n_members + 1.6)
    ax.set_title(f"rank histogram: {_label(e, name)} ({total} points)")
    ax.legend(loc="best", fontsize="small")
    return fig


def spread_skill(
    ens: XArray,
    truth: XArray,
    *,
    member_dim: str = "member",
    bins: int = 10,
    variable: str | None = None,
    finite_ensemble_correction: bool = True,
    ax: Any = None,
):
    """Binned ensemble spread against the RMSE of the ensemble mean, with the 1:1 line.

    The pointwise spread (:func:`xlatda.metrics.spread` with ``dim=[]``) and
    error of the ensemble mean (:func:`xlatda.metrics.rmse` with ``dim=[]``)
    at every point and time are grouped into ``bins`` bins of equal counts by
    spread; each marker is a bin's root-mean-square spread against its RMSE.
    For a statistically consistent ensemble the markers lie on the 1:1 line.

    Parameters
    ----------
    ens : Dataset or DataArray
        Ensemble with dimension ``member_dim`` (at least 2 members).
    truth : Dataset or DataArray
        Verifying values (taken at the ensemble's times).
    member_dim : str, default "member"
    bins : int, default 10
        Number of spread bins (fewer when there are fewer distinct spreads).
    variable : str, optional
        Variable to score (default: the first data variable).
    finite_ensemble_correction : bool, default True
        Multiply the spread by ``sqrt((N + 1) / N)``, the expected ratio of the
        ensemble mean's error to the spread for ``N`` members (as in
        :func:`xlatda.metrics.spread_skill_ratio`).
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ConfigError
        ``bins`` is not a positive integer, fewer than 2 members, a missing
        ``member_dim``.

    Notes
    -----
    Points are not latitude-weighted: every grid point counts once.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import xlatda, xlatda.plot
    >>> truth = xlatda.datasets.lorenz96(n=8, steps=9)
    >>> ens = xlatda.datasets.lorenz96(n=8, steps=9, members=4, perturbation=0.5)
    >>> fig = xlatda.plot.spread_skill(ens, truth, bins=4)
    >>> len(fig.axes[0].collections[0].get_offsets())
    4
    """
    plt = _pyplot()
    if not isinstance(bins, (int, np.integer)) or isinstance(bins, bool) or bins < 1:
        raise ConfigError(f"bins must be a positive integer, got {bins!r}")
    e, t, name = _ensemble_and_truth(ens, truth, variable, member_dim)
    n_members = e.sizes[member_dim]
    if n_members < 2:
        raise ConfigError(f"spread_skill needs at least 2 members, got {n_members}")
    spr = metrics.spread(e, member_dim=member_dim, dim=[])
    err = metrics.rmse(e.mean(member_dim), t, dim=[])
    spr, err = xr.broadcast(spr, err)
    s = np.asarray(spr.values, float).ravel()
    r = np.asarray(err.transpose(*spr.dims).values, float).ravel()
    ok = np.isfinite(s) & np.isfinite(r)
    s, r = s[ok], r[ok]
    if finite_ensemble_correction:
        s = s * np.sqrt((n_members + 1) / n_members)
    if s.size == 0:
        raise ConfigError("no point has both a finite spread and a finite error")
    edges = np.unique(np.quantile(s, np.linspace(0.0, 1.0, int(bins) + 1)))
    which = np.clip(np.searchsorted(edges, s, side="right") - 1, 0, max(len(edges) - 2, 0))
    xs, ys, ns = [], [], []
    for b in range(max(len(edges) - 1, 1)):
        sel = which == b
        if sel.any():
            xs.append(np.sqrt(np.mean(s[sel] ** 2)))
            ys.append(np.sqrt(np.mean(r[sel] ** 2)))
            ns.append(int(sel.sum()))
    fig, ax = _new_axes(plt, ax, figsize=(5.0, 4.6))
    ax.scatter(xs, ys, color="C3", edgecolors="k", zorder=3,
               label=f"{len(xs)} bins of ~{int(np.mean(ns))} points")
    top = 1.05 * max(max(xs), max(ys))
    ax.plot([0, top], [0, top], color="k", linestyle="--", linewidth=1, label="1:1")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal", adjustable="box")
    units = _units_suffix(e)
    ax.set_xlabel("ensemble spread" + (" (× √((N+1)/N))" if finite_ensemble_correction else "")
                  + units)
    ax.set_ylabel("RMSE of the ensemble mean" + units)
    ax.set_title(f"spread-skill: {_label(e, name)}, {n_members} members")
    ax.legend(loc="upper left", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


def latent_trajectory(
    z: XArray,
    *,
    components: int = 3,
    latent_dim: str = "latent",
    member_dim: str = "member",
    ax: Any = None,
):
    """The first latent components over time (ensemble mean and spread band).

    Parameters
    ----------
    z : Dataset or DataArray
        Latent vectors (a Dataset's variable ``z``) with dims ``(time,
        latent)`` and optionally ``member_dim``; one other dimension at most
        besides ``latent_dim`` and ``member_dim`` (the x axis).
    components : int, default 3
        Number of leading components to draw.
    latent_dim, member_dim : str
        Names of the latent and ensemble dimensions.
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ConfigError
        ``components`` is not a positive integer, ``latent_dim`` is missing,
        or more than one dim is left to draw along.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, xarray as xr, xlatda.plot
    >>> z = xr.DataArray(np.zeros((5, 4)), dims=("time", "latent"), name="z")
    >>> fig = xlatda.plot.latent_trajectory(z, components=2)
    >>> len(fig.axes[0].get_lines())
    2
    """
    plt = _pyplot()
    if not isinstance(components, (int, np.integer)) or components < 1:
        raise ConfigError(f"components must be a positive integer, got {components!r}")
    if isinstance(z, xr.Dataset):
        if "z" not in z.data_vars:
            raise VariableNotFoundError(
                f"the latent Dataset has no variable 'z' (variables: {list(z.data_vars)})"
            )
        z = z["z"]
    if latent_dim not in z.dims:
        raise ConfigError(
            f"z has no latent dimension {latent_dim!r} (dims {list(z.dims)}); "
            "pass latent_dim='<name>'"
        )
    along = [d for d in z.dims if d not in (latent_dim, member_dim)]
    if len(along) > 1:
        raise ConfigError(
            f"z has several dims to draw along ({along}); select all but one, "
            f"e.g. z.isel({along[1]}=0)"
        )
    k = min(int(components), z.sizes[latent_dim])
    zk = z.isel({latent_dim: slice(0, k)}).compute()
    fig, ax = _new_axes(plt, ax)
    if along:
        x = zk[along[0]].values if along[0] in zk.coords else np.arange(zk.sizes[along[0]])
        xlabel = _label(zk[along[0]], along[0]) if along[0] in zk.coords else str(along[0])
    else:
        x, xlabel = np.zeros(1), ""
    for i in range(k):
        comp = zk.isel({latent_dim: i})
        if member_dim in comp.dims:
            mean, std = comp.mean(member_dim), comp.std(member_dim)
            lines = ax.plot(x, np.atleast_1d(mean.values), marker="." if x.size < 40 else None,
                            label=f"component {i}")
            ax.fill_between(x, np.atleast_1d(mean - std), np.atleast_1d(mean + std),
                            color=lines[0].get_color(), alpha=0.2, linewidth=0)
        else:
            ax.plot(x, np.atleast_1d(comp.values), marker="." if x.size < 40 else None,
                    label=f"component {i}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(_label(z, "z"))
    title = f"first {k} latent components"
    if member_dim in zk.dims:
        title += f" (mean ± std of {zk.sizes[member_dim]} members)"
    ax.set_title(title)
    ax.legend(loc="best", fontsize="small")
    ax.grid(alpha=0.3)
    return fig


# --------------------------------------------------------------------------
# publication figures: every variable, every role; scores over time
# --------------------------------------------------------------------------


def _at_time(da: xr.DataArray, t: Any, member_dim: str) -> xr.DataArray:
    tname = _time_dim(da)
    if tname is not None:
        da = da.sel({tname: t}, method="nearest")
    if member_dim in da.dims:
        da = da.mean(member_dim, keep_attrs=True)
    return da


def analysis_maps(
    truth: xr.Dataset | None,
    background: xr.Dataset | None,
    analysis: xr.Dataset,
    obs: xr.Dataset | None = None,
    *,
    variables: list[str] | None = None,
    time: Any = None,
    member_dim: str = "member",
    cmap: str = "viridis",
    diff_cmap: str = "RdBu_r",
    projection: Any = None,
    coastlines: bool = True,
    fig: Any = None,
    names: Mapping[str, str] | None = None,
):
    """Maps of truth, background, analysis and error (or increment) for every variable.

    One row per variable, columns truth / background / analysis / analysis −
    truth (the analysis error; without a truth: analysis − background, the
    increment). The three state panels of a row share one colour scale and
    one colour bar beside them; the error panel has its own symmetric one.
    Observation locations at the drawn time are marked on every panel.
    Ensembles are drawn as their mean. Regional maps keep degrees square
    (aspect ``1 / cos(mean latitude)``); with cartopy installed they are
    drawn on ``PlateCarree`` with coastlines, otherwise on plain axes
    labelled ``longitude [°E]`` / ``latitude [°N]``.

    Parameters
    ----------
    truth, background : Dataset or None
        Verifying data and forecast (with or without time and member dims).
    analysis : Dataset
        The analysis (ensemble or mean) on a latitude/longitude grid.
    obs : Dataset, optional
        Observation set; its locations nearest in time to ``time`` are shown.
    variables : list of str, optional
        Default: every data variable of the analysis.
    time : label, optional
        Time drawn (nearest); default the last analysis time.
    member_dim, cmap, diff_cmap, projection, coastlines :
        As in :func:`maps`.
    fig : Figure or SubFigure, optional
        Where to draw (a new constrained-layout figure by default).
    names : mapping, optional
        Titles instead of the role names, e.g. ``{"background": "free forecast"}``.

    Returns
    -------
    matplotlib.figure.Figure or SubFigure
        ``axes`` hold the panels row by row, then the colour bars.

    Raises
    ------
    ConfigError
        The analysis is not on a latitude/longitude grid.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, xarray as xr, xlatda.plot
    >>> lat = xr.DataArray([50.0, 51.0, 52.0], dims="lat", attrs={"units": "degrees_north"})
    >>> lon = xr.DataArray([0.0, 1.0, 2.0, 3.0], dims="lon", attrs={"units": "degrees_east"})
    >>> ds = xr.Dataset({"t": (("lat", "lon"), np.ones((3, 4)), {"units": "K"})},
    ...                 coords={"lat": lat, "lon": lon})
    >>> fig = xlatda.plot.analysis_maps(ds, ds * 0.9, ds * 1.1)
    >>> [ax.get_title() for ax in fig.axes[:4]]
    ['t: truth [K]', 't: background [K]', 't: analysis [K]', 't: analysis − truth [K]']
    >>> fig.axes[0].get_ylabel(), fig.axes[0].get_xlabel()
    ('latitude [°N]', 'longitude [°E]')
    """
    plt = _pyplot()
    from matplotlib.colors import Normalize

    variables = variables or _state_names(analysis)
    first = analysis[variables[0]]
    try:
        axes = find_axes(first)
    except LayoutError:
        axes = None
    if axes is None or axes.lat is None or axes.lon is None:
        raise ConfigError(
            f"analysis_maps draws latitude/longitude grids; {variables[0]!r} has dims "
            f"{list(first.dims)}: use xlatda.plot.maps for other layouts")
    lat, lon = axes.lat, axes.lon
    tname = _time_dim(first)
    if time is None and tname is not None:
        time = first[tname].values[-1]
    roles = [("truth", truth), ("background", background), ("analysis", analysis)]
    roles = [(r, d) for r, d in roles if d is not None]
    err_role = "analysis − truth" if truth is not None else (
        "analysis − background" if background is not None else None)
    ncols = len(roles) + (err_role is not None)
    nrows = len(variables)
    crs = _cartopy_crs(projection)
    lat_v = np.asarray(first[lat].values, float)
    lon_v = np.asarray(first[lon].values, float)
    lat_span = float(np.ptp(lat_v)) or 1.0
    lon_span = float(np.ptp(lon_v)) or 1.0
    aspect = 1.0 / max(np.cos(np.deg2rad(np.mean(lat_v))), 0.2)
    height = float(np.clip(lat_span * aspect / lon_span, 0.3, 1.5))
    if fig is None:
        fig = plt.figure(figsize=(3.6 * ncols + 1.2, (3.1 * height + 0.9) * nrows + 0.5),
                         layout="constrained")
    kw = {"projection": crs} if crs is not None else {}
    transform = {}
    if crs is not None:
        import cartopy.crs as ccrs

        transform = {"transform": ccrs.PlateCarree()}
    panels = np.empty((nrows, ncols), dtype=object)
    for i in range(nrows):
        for j in range(ncols):
            panels[i, j] = fig.add_subplot(nrows, ncols, i * ncols + j + 1, **kw)
    locs = None
    if obs is not None and "obs" in obs.dims:
        sub = obs
        if time is not None and "time" in obs.coords:
            ot = _as_float(obs["time"].values)
            tval = np.asarray(time)
            if tval.dtype.kind in "UO" and obs["time"].dtype.kind == "M":
                tval = np.datetime64(str(time))  # "2019-03-01T03:00", as .sel takes it
            t0 = _as_float([tval])[0]
            nearest = ot[np.argmin(np.abs(ot - t0))] if ot.size else t0
            sub = obs.isel(obs=np.flatnonzero(ot == nearest))
        olat, olon = _obs_locations(sub, lat, lon)
        locs = (olat, _wrap_lon(olon, lon_v))
    for i, v in enumerate(variables):
        fields = {r: _at_time(d[v], time, member_dim) for r, d in roles}
        if err_role is not None:
            other = fields["truth"] if truth is not None else fields["background"]
            err = fields["analysis"] - other
        state_norm, _ = _norms(fields, None)
        row_cmap = cmap
        if state_norm.vmin < 0 < state_norm.vmax:  # signed field: symmetric diverging scale
            top = max(-state_norm.vmin, state_norm.vmax)
            state_norm, row_cmap = Normalize(-top, top), diff_cmap
        amp = float(np.nanmax(np.abs(err.values))) if err_role is not None else 1.0
        err_norm = Normalize(-(amp or 1.0), amp or 1.0)
        units = _units_suffix(analysis[v])
        row = [*fields.items()] + ([(err_role, err)] if err_role is not None else [])
        for j, (role, da) in enumerate(row):
            ax = panels[i, j]
            is_err = role == err_role
            values = da.transpose(first[lat].dims[0], first[lon].dims[0]).values
            mesh = ax.pcolormesh(lon_v, lat_v, values, shading="auto",
                                 cmap=diff_cmap if is_err else row_cmap,
                                 norm=err_norm if is_err else state_norm, **transform)
            if locs is not None:
                ax.scatter(locs[1], locs[0], s=14, facecolors="none", edgecolors="k",
                           linewidths=0.7, zorder=3,
                           label=f"{locs[0].size} observation locations", **transform)
            shown = (names or {}).get(role, role)
            if is_err and names:
                shown = role.replace("analysis", names.get("analysis", "analysis")).replace(
                    "background", names.get("background", "background"))
            ax.set_title(f"{v}: {shown}{units}", fontsize="medium")
            if crs is not None:
                if coastlines:
                    ax.coastlines(linewidth=0.6)
                gl = ax.gridlines(draw_labels=True, linewidth=0.3, alpha=0.5)
                gl.top_labels = gl.right_labels = False
            else:
                ax.set_aspect(aspect)
                ax.set_xlim(lon_v.min(), lon_v.max())
                ax.set_ylim(lat_v.min(), lat_v.max())
                ax.set_xlabel(_label(first[lon], lon))
                ax.set_ylabel(_label(first[lat], lat) if j == 0 else "")
                ax.grid(alpha=0.25, linewidth=0.5)
            if is_err:
                fig.colorbar(mesh, ax=ax, shrink=0.85, label="Δ " + _label(analysis[v], v))
            elif j == len(fields) - 1:
                fig.colorbar(mesh, ax=list(panels[i, :len(fields)]), shrink=0.85,
                             label=_label(analysis[v], v))
    if locs is not None:
        panels[0, 0].legend(loc="lower left", fontsize="x-small", framealpha=0.8)
    if time is not None:
        fig.suptitle(f"{_format_time(np.asarray(time))}" + (
            " UTC" if np.asarray(time).dtype.kind == "M" else ""), fontsize="medium")
    return fig


def score_series(
    scores: xr.Dataset | xr.DataArray,
    variable: str | None = None,
    *,
    ax: Any = None,
    ylabel: str | None = None,
    highlight: str | None = None,
):
    """RMSE over time of every run (solid) and ensemble spread where there is one (dashed).

    Parameters
    ----------
    scores : Dataset or DataArray
        A scores Dataset of ``xlatda run`` (variables ``<variable>_rmse`` and
        ``<variable>_spread`` with dims ``(run, time)``) or one DataArray
        ``(run, time)``.
    variable : str, optional
        The variable of a scores Dataset (default: the first ``*_rmse``).
    ax : matplotlib.axes.Axes, optional
    ylabel : str, optional
        Default from the RMSE's units.
    highlight : str, optional
        A run drawn thicker.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Date axes use ``ConciseDateFormatter`` (no overlapping labels, the year
    in the offset); values spanning more than a factor 20 get a log axis with
    labelled 1-2-5 ticks.

    Examples
    --------
    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, pandas as pd, xarray as xr, xlatda.plot
    >>> t = pd.date_range("2019-03-22", periods=48, freq="h")
    >>> rmse = xr.DataArray(np.ones((2, 48)), dims=("run", "time"),
    ...                     coords={"run": ["analysis", "background"], "time": t})
    >>> fig = xlatda.plot.score_series(rmse, ylabel="RMSE [K]")
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['analysis (1)', 'background (1)']
    """
    plt = _pyplot()
    spread = None
    if isinstance(scores, xr.Dataset):
        if variable is None:
            names = [str(v)[:-5] for v in scores.data_vars if str(v).endswith("_rmse")]
            if not names:
                raise VariableNotFoundError("scores has no <variable>_rmse variable")
            variable = names[0]
        rmse = scores[f"{variable}_rmse"]
        spread = scores.get(f"{variable}_spread")
    else:
        rmse = scores
    if "run" not in rmse.dims:
        rmse = rmse.expand_dims(run=[rmse.name or "run"])
    tname = next((d for d in rmse.dims if d != "run"), None)
    fig, ax = _new_axes(plt, ax, figsize=(8.0, 3.6))
    times = rmse[tname].values
    for i, run in enumerate(rmse.run.values):
        series = rmse.sel(run=run)
        colour = f"C{i}"
        mean = float(np.sqrt(np.nanmean(np.asarray(series.values, float) ** 2)))
        ax.plot(times, series.values, color=colour, lw=2.2 if run == highlight else 1.3,
                label=f"{run} ({mean:.3g})")
        if spread is not None and np.isfinite(spread.sel(run=run).values).any():
            ax.plot(times, spread.sel(run=run).values, color=colour, lw=1.0, ls="--",
                    label=f"{run} spread")
    _log_or_linear(ax, np.concatenate([np.ravel(rmse.values)] + (
        [np.ravel(spread.values)] if spread is not None else [])))
    _time_axis(ax, times)
    ax.set_xlabel(_label(rmse[tname], tname) if tname in rmse.coords else str(tname))
    units = rmse.attrs.get("units")
    ax.set_ylabel(ylabel or ("RMSE" + (f" [{_pretty_units(units)}]" if units else "")))
    title = "RMSE against the verifying data (legend: RMS over time)"
    ax.set_title(f"{variable}: {title}" if variable else title, fontsize="medium")
    ax.legend(ncols=2 if rmse.sizes["run"] > 3 else 1, fontsize="small", loc="best")
    ax.grid(alpha=0.3, which="both")
    return fig


def experiment_figure(truth, background, analysis, obs, scores, *, title: str = "",
                      time: Any = None):
    """One figure of an experiment: :func:`analysis_maps` above, :func:`score_series` below.

    Parameters are those of the two functions; ``scores`` is the scores
    Dataset of ``xlatda run`` (one score panel per variable).

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _pyplot()
    variables = _state_names(analysis)
    grid = True
    try:
        axes = find_axes(analysis[variables[0]])
        grid = axes.lat is not None and axes.lon is not None
    except LayoutError:
        grid = False
    ncols = 4 if truth is not None and background is not None else 3
    width = 3.6 * ncols + 1.2
    n_score = len(variables)
    top_h = (3.6 * len(variables) + 0.5) if grid else 4.5
    fig = plt.figure(figsize=(width, top_h + 3.4 * n_score), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[top_h, 3.4 * n_score])
    if grid:
        analysis_maps(truth, background, analysis, obs, variables=variables, time=time,
                      fig=top)
    else:
        tname = _time_dim(analysis[variables[0]])
        t = analysis[tname].values[-1] if time is None and tname else time
        ax = top.subplots()
        for role, d in (("truth", truth), ("background", background), ("analysis", analysis)):
            if d is None:
                continue
            da = _at_time(d[variables[0]], t, "member")
            ax.plot(np.asarray(da[da.dims[0]].values), da.values, label=role,
                    **_ROLE_STYLE[role])
        ax.set_xlabel(str(analysis[variables[0]].dims[-1]))
        ax.set_ylabel(_label(analysis[variables[0]], variables[0]))
        ax.set_title(f"{variables[0]} at {_format_time(np.asarray(t))}")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    axs = bottom.subplots(n_score, 1, squeeze=False)[:, 0]
    for ax, v in zip(axs, variables):
        score_series(scores, v, ax=ax, highlight="analysis")
    if title:
        fig.suptitle(title)
    return fig
