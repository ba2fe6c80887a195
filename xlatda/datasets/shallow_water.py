"""Shallow-water trajectories on the sphere as a CF-complete xarray Dataset.

Every trajectory starts from a Galewsky et al. (2004) barotropically unstable
jet whose parameters (jet speed, bump height, bump position) are drawn from
a seeded torch generator, and is integrated by the spectral model
:class:`xlatda.dynamics.shallow_water.ShallowWater`. All trajectories run
together as one batched tensor.

Examples
--------
>>> from xlatda.datasets import shallow_water
>>> ds = shallow_water(nlat=16, nlon=32, hours=2, trajectories=2, model_grid=(32, 64),
...                       progress=False)
>>> dict(ds.sizes)
{'trajectory': 2, 'time': 3, 'lat': 16, 'lon': 32}
>>> sorted(ds.data_vars)
['height', 'vorticity']
>>> ds.height.attrs["units"], ds.cf["latitude"].name
('m', 'lat')
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr
from tqdm.auto import tqdm

from xlatda._version import __version__
from xlatda.dynamics.shallow_water import (
    EARTH_GRAVITY,
    EARTH_OMEGA,
    EARTH_RADIUS,
    ShallowWater,
    default_truncation,
    galewsky,
    galewsky_parameters,
    stable_time_step,
)
from xlatda.errors import ConfigError
from xlatda.options import get_options, resolve_device, resolve_dtype
from xlatda.sphere.transform import SphericalHarmonicTransform

__all__ = ["VARIABLES", "shallow_water"]

#: Variables :func:`shallow_water` can return, with their CF attributes.
VARIABLES: dict[str, dict[str, str]] = {
    "height": {
        # no CF standard name fits the depth of a shallow-water layer
        # (geopotential_height is a height above the geoid, not a fluid depth)
        "long_name": "fluid depth (height of the free surface)",
        "units": "m",
    },
    "vorticity": {
        "standard_name": "atmosphere_relative_vorticity",
        "long_name": "relative vorticity",
        "units": "s-1",
    },
    "divergence": {
        "standard_name": "divergence_of_wind",
        "long_name": "horizontal divergence",
        "units": "s-1",
    },
    "u": {"standard_name": "eastward_wind", "long_name": "eastward wind", "units": "m s-1"},
    "v": {"standard_name": "northward_wind", "long_name": "northward wind", "units": "m s-1"},
}

_PARAMETER_ATTRS = {
    "jet_speed": {"long_name": "maximum speed of the initial zonal jet", "units": "m s-1"},
    "bump_height": {"long_name": "amplitude of the initial height bump", "units": "m"},
    # units "degree" (not degrees_north/east) so that CF tools do not take
    # these for the grid's latitude/longitude coordinates
    "bump_lat": {"long_name": "latitude of the centre of the initial height bump (north)",
                 "units": "degree"},
    "bump_lon": {"long_name": "longitude of the centre of the initial height bump (east)",
                 "units": "degree"},
}


def _seconds(value: Any, name: str) -> float:
    """A duration as seconds: str ("1h", "30min"), timedelta, timedelta64, or hours."""
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a duration such as '1h', got {value!r}")
    if isinstance(value, (int, float, np.integer, np.floating)):
        seconds = float(value) * 3600.0
    else:
        try:
            seconds = pd.to_timedelta(value).total_seconds()
        except (ValueError, TypeError):
            raise ConfigError(
                f"{name} must be a duration such as '1h', '30min' or a number of hours, "
                f"got {value!r}"
            ) from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ConfigError(f"{name} must be a positive duration, got {value!r}")
    return seconds


def _whole(ratio: float, what: str) -> int:
    n = round(ratio)
    if abs(ratio - n) > 1e-9 * max(1.0, abs(ratio)):
        raise ConfigError(what)
    return int(n)


def shallow_water(
    nlat: int = 32,
    nlon: int = 64,
    hours: float = 48,
    output_every: str | float | _dt.timedelta | np.timedelta64 = "1h",
    trajectories: int = 1,
    seed: int = 0,
    spinup_hours: float = 0,
    dt: float | None = None,
    variables: Sequence[str] = ("height", "vorticity"),
    jet_speed: float | Sequence[float] | None = None,
    grid: str = "gauss",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    days: float | None = None,
    bump_height: float | Sequence[float] | None = None,
    bump_lat: float | Sequence[float] | None = None,
    bump_lon: float | Sequence[float] | None = None,
    model_grid: tuple[int, int] | None = None,
    diffusion_order: int = 8,
    diffusion_time: float = 3 * 3600.0,
    start: str = "2000-01-01",
    progress: bool | None = None,
) -> xr.Dataset:
    """Galewsky-jet shallow-water trajectories on a global grid.

    Parameters
    ----------
    nlat, nlon : int
        Output grid size. The model itself runs on ``model_grid`` (at least
        64 x 128, T42) and its spectral fields are truncated to what the output
        grid represents and evaluated on it (see Notes).
    hours : float
        Length of each recorded trajectory in hours (after the spin-up).
    output_every : str, timedelta or float
        Output interval: a pandas-style string ("1h", "30min", "6h"), a
        timedelta, or a number of hours. ``hours`` must be a multiple of it.
    trajectories : int
        Number of trajectories, integrated together as one batch.
    seed : int
        Seeds the torch generator that draws the parameters of every
        trajectory: the same seed gives identical data (bit for bit on the
        same hardware, device and number of torch threads; otherwise equal to
        rounding), another seed different trajectories.
    spinup_hours : float
        Integration before the first recorded time (a multiple of ``dt``).
    dt : float, optional
        Model time step in seconds; it must divide the output interval. By
        default the model's default step (the largest divisor of one hour
        below :func:`xlatda.dynamics.shallow_water.stable_time_step` for the
        model grid: 450 s on 64 x 128, 240 s on 128 x 256) if it divides the
        output interval, else the largest step below the stable one that does.
    variables : sequence of str
        Any of "height", "vorticity", "divergence", "u", "v".
    jet_speed : float or sequence, optional
        Maximum jet speed in m/s for all trajectories (scalar) or for each.
        ``None`` draws it uniformly from 70..90 m/s.
    grid : {"gauss", "equiangular"}
        Latitude grid (north to south).
    device : str or torch.device, optional
        Where the model runs (default from :func:`xlatda.set_options`).
    dtype : str or torch.dtype, optional
        Precision of the model run and of the returned arrays (default from
        :func:`xlatda.set_options`, float32).
    days : float, optional
        Length in days; overrides ``hours`` when given.
    bump_height, bump_lat, bump_lon : float or sequence, optional
        Initial bump amplitude (m) and centre (degrees north / east); ``None``
        draws them from 90..150 m, 40..50 N and 0..360 E.
    model_grid : (int, int), optional
        ``(nlat, nlon)`` of the model run; default
        ``(max(nlat, 64), max(nlon, 2 max(nlat, 64)))``.
    diffusion_order, diffusion_time : int, float
        Hyperdiffusion order and e-folding time (s) at the truncation scale
        (default del^8 with 3 hours).
    start : str
        Date of the first recorded time.
    progress : bool, optional
        Show a progress bar (default from :func:`xlatda.set_options`).

    Returns
    -------
    xarray.Dataset
        Data variables (chosen by ``variables``) over
        ``(trajectory, time, lat, lon)`` with CF attributes; coordinates
        ``lat`` (degrees_north, descending), ``lon`` (degrees_east,
        ``0 .. 360``), ``time`` (datetime64 from ``start``, initial state
        included: ``hours / output_every + 1`` times), ``trajectory``
        (0, 1, ...), and the drawn parameters ``jet_speed``, ``bump_height``,
        ``bump_lat``, ``bump_lon`` as coordinates over ``trajectory``.

    Raises
    ------
    ConfigError
        For unknown variables, non-positive sizes or durations, or durations
        that are not whole multiples of the output interval and time step.

    Notes
    -----
    Resolution: the jet of Galewsky et al. is only resolved from about T42
    on; at T21 (a 32 x 64 model grid) it is smeared into a stable jet and no
    instability develops. So the model runs on ``model_grid`` (default at
    least 64 x 128, T42, alias-free truncation ``(nlon - 1) // 3``), and each
    output is its spherical-harmonic expansion truncated to the output grid
    (degree ``<= nlat - 1`` on the Gauss grid, ``(nlat - 1) // 2`` on the
    equiangular grid, order ``< nlon / 2``) and evaluated there: the fields
    are band-limited, exactly representable on the output grid, and are the
    coarse-grained state of a resolved run. Pass ``model_grid=(nlat, nlon)``
    to run on the output grid itself.

    Compute: ``trajectories`` states advance together; each step costs four
    spectral tendency evaluations (a few milliseconds for one 64 x 128
    state on a CPU core). Memory: the returned arrays,
    ``trajectories * times * len(variables) * nlat * nlon`` values; model
    states are turned into output fields as they are produced. The initial
    state is the model's band-limited projection of the analytic Galewsky
    state, so every time is a state of the same discrete model.
    ``history`` holds the call without a timestamp, so that equal arguments
    give identical Datasets.

    References
    ----------
    Galewsky, J., Scott, R. K. and Polvani, L. M. (2004). An initial-value
    problem for testing numerical models of the global shallow-water
    equations. Tellus A 56, 429-440.
    """
    if days is not None:
        hours = float(days) * 24.0
    if isinstance(variables, str):
        variables = (variables,)
    variables = tuple(variables)
    unknown = [v for v in variables if v not in VARIABLES]
    if unknown or not variables:
        raise ConfigError(
            f"unknown variables {unknown or variables!r}; choose among {list(VARIABLES)}"
        )
    if int(trajectories) != trajectories or trajectories < 1:
        raise ConfigError(f"trajectories must be a positive integer, got {trajectories!r}")
    if not spinup_hours >= 0:
        raise ConfigError(f"spinup_hours must be >= 0, got {spinup_hours!r}")
    trajectories = int(trajectories)
    out_s = _seconds(output_every, "output_every")
    total_s = _seconds(hours, "hours")
    n_out = _whole(
        total_s / out_s,
        f"hours={hours} is not a whole number of output intervals of {out_s:g} s",
    )
    if model_grid is None:
        m_lat = max(int(nlat), 64)
        model_grid = (m_lat, max(int(nlon), 2 * m_lat))
    m_nlat, m_nlon = (int(v) for v in model_grid)
    lmax = default_truncation(m_nlat, m_nlon, grid)
    if dt is None:
        dt_max = stable_time_step(lmax)
        dt = 3600.0 / math.ceil(3600.0 / dt_max)  # the model's own default
        if abs(out_s / dt - round(out_s / dt)) > 1e-9:
            dt = out_s / math.ceil(out_s / dt_max - 1e-9)
    dt = float(dt)
    if not dt > 0:
        raise ConfigError(f"dt must be positive, got {dt!r}")
    per_out = _whole(out_s / dt, f"dt={dt:g} s does not divide the output interval {out_s:g} s")
    spin_steps = _whole(
        spinup_hours * 3600.0 / dt, f"spinup_hours={spinup_hours} is not a multiple of dt={dt:g} s"
    )
    torch_dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    show = get_options()["progress"] if progress is None else bool(progress)

    params = galewsky_parameters(
        trajectories,
        torch.Generator().manual_seed(int(seed)),
        jet_speed=jet_speed,
        bump_height=bump_height,
        bump_lat=bump_lat,
        bump_lon=bump_lon,
    )
    model = ShallowWater(
        m_nlat,
        m_nlon,
        dt,
        grid=grid,
        lmax=lmax,
        diffusion_order=diffusion_order,
        diffusion_time=diffusion_time,
    )
    out_sht = SphericalHarmonicTransform(nlat, nlon, grid=grid, radius=EARTH_RADIUS)
    l_out = min(out_sht.lmax, model.sht.lmax)
    m_out = min(out_sht.mmax, model.sht.mmax, l_out)
    out_sht = SphericalHarmonicTransform(
        nlat, nlon, lmax=l_out, mmax=m_out, grid=grid, radius=EARTH_RADIUS
    )
    wind = "u" in variables or "v" in variables

    def output(state: torch.Tensor) -> dict[str, torch.Tensor]:
        """Model grid states (T, 3, J, K) -> output fields (T, nlat, nlon), on the CPU."""
        c = model.to_spectral(state)[..., : l_out + 1, : m_out + 1]  # vrt, div, h
        grid_fields = out_sht.inverse(c)
        fields = {
            "height": grid_fields[:, 2],
            "vorticity": grid_fields[:, 0],
            "divergence": grid_fields[:, 1],
        }
        if wind:
            fields["u"], fields["v"] = out_sht.uv_from_vrtdiv(c[:, 0], c[:, 1])
        return {k: fields[k].cpu() for k in variables}

    with torch.inference_mode():
        x = galewsky(m_nlat, m_nlon, **params, grid=grid, dtype=torch_dtype, device=dev)
        x = model.to_grid(model.to_spectral(x))  # band-limited initial state
        if spin_steps:
            x = model.integrate(x, spin_steps, every=spin_steps)[:, -1]
        outputs = [output(x)]
        for _ in tqdm(range(n_out), desc="shallow water", unit="output", disable=not show):
            x = model.integrate(x, per_out, every=per_out)[:, -1]
            outputs.append(output(x))
        fields = {k: torch.stack([o[k] for o in outputs], dim=1) for k in variables}

    np_dtype = np.float32 if torch_dtype == torch.float32 else np.float64
    dims = ("trajectory", "time", "lat", "lon")
    data_vars = {
        name: xr.Variable(dims, fields[name].cpu().numpy().astype(np_dtype), VARIABLES[name])
        for name in variables
    }
    step = pd.Timedelta(seconds=out_s)
    times = pd.date_range(start=pd.Timestamp(start), periods=n_out + 1, freq=step)
    coords = {
        "trajectory": (
            "trajectory",
            np.arange(trajectories),
            {"long_name": "trajectory index (one initial condition each)"},
        ),
        "time": (
            "time",
            times.values.astype("datetime64[ns]"),
            {"standard_name": "time", "long_name": "time", "axis": "T"},
        ),
        "lat": (
            "lat",
            out_sht.lat.numpy().copy(),
            {"standard_name": "latitude", "long_name": "latitude", "units": "degrees_north",
             "axis": "Y"},
        ),
        "lon": (
            "lon",
            out_sht.lon.numpy().copy(),
            {"standard_name": "longitude", "long_name": "longitude", "units": "degrees_east",
             "axis": "X"},
        ),
    }
    for key, attrs in _PARAMETER_ATTRS.items():
        coords[key] = ("trajectory", params[key].numpy().copy(), attrs)
    call = (
        f"xlatda.datasets.shallow_water(nlat={nlat}, nlon={nlon}, hours={hours:g}, "
        f"output_every={out_s / 3600.0:g}h, trajectories={trajectories}, seed={seed}, "
        f"spinup_hours={spinup_hours:g}, dt={dt:g}, grid={model.grid!r}, "
        f"model_grid=({m_nlat}, {m_nlon}))"
    )
    attrs = {
        "Conventions": "CF-1.8",
        "title": "Galewsky barotropically unstable jet: shallow-water model on the sphere",
        "institution": "xlatda",
        "source": (
            f"xlatda {__version__} spectral shallow-water model, T{model.sht.lmax} "
            f"({model.grid} grid {m_nlat} x {m_nlon}), RK4 with dt = {dt:g} s, "
            f"del^{diffusion_order} hyperdiffusion with e-folding time {diffusion_time:g} s "
            f"at the truncation scale; output truncated to T{l_out} on a {nlat} x {nlon} grid"
        ),
        "history": f"created by {call} [xlatda {__version__}]",
        "references": (
            "Galewsky, Scott and Polvani (2004), Tellus A 56, 429-440; "
            "Williamson et al. (1992), J. Comput. Phys. 102, 211-224"
        ),
        "comment": (
            "height is the fluid depth h; the model uses radius "
            f"{EARTH_RADIUS:g} m, rotation rate {EARTH_OMEGA:g} s-1, gravity {EARTH_GRAVITY:g} "
            "m s-2; per-trajectory initial parameters are coordinates over trajectory"
        ),
        "seed": int(seed),
        "model_time_step_seconds": dt,
        "model_truncation": int(model.sht.lmax),
        "output_truncation": int(l_out),
        "grid": model.grid,
        "spinup_hours": float(spinup_hours),
    }
    return xr.Dataset(data_vars, coords=coords, attrs=attrs)
