"""Observation images: scattered observations binned onto the state grid.

SLAMS feeds in-situ stations and satellite swaths to its encoder as extra
input channels on the model grid (METHODS.md §3). :func:`rasterize` makes
such images from any observation set: each value goes to the nearest grid
cell (great-circle nearest on a lat/lon grid, nearest index on a generic
dimension), values landing in the same cell are averaged, and cells without
observations are NaN. The result is a Dataset on the state layout that
:func:`xlatda.fit` and :func:`xlatda.encode` accept as ``aux=``.

Examples
--------
>>> import xlatda
>>> truth = xlatda.datasets.lorenz96(n=8, steps=3, seed=0)
>>> obs = xlatda.obs.sample_points(truth, n=3, error_std=0.5, seed=1)
>>> img = xlatda.obs.rasterize(obs, truth)
>>> img.x.dims, int(img.x.notnull().sum())
(('time', 'k'), 12)
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from xlatda.errors import ObservationError
from xlatda.layout import StateLayout, layout
from xlatda.obs.contract import to_tensors, validate

__all__ = ["rasterize"]


def _cells_latlon(L: StateLayout, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    glat = np.asarray(L.lat, float)
    glon = np.asarray(L.lon, float)
    ilat = np.abs(lat[:, None] - glat[None, :]).argmin(1)
    dlon = np.abs(((lon[:, None] - glon[None, :]) + 180.0) % 360.0 - 180.0)
    ilon = dlon.argmin(1)
    if L.spatial_dims[0] == L.axes.lat:
        return ilat * glon.size + ilon
    return ilon * glat.size + ilat


def _cells_points(L: StateLayout, lat: np.ndarray, lon: np.ndarray) -> np.ndarray:
    glat = np.radians(np.asarray(L.lat, float))[None, :]
    glon = np.radians(np.asarray(L.lon, float))[None, :]
    olat = np.radians(lat)[:, None]
    olon = np.radians(lon)[:, None]
    cos_d = np.sin(olat) * np.sin(glat) + np.cos(olat) * np.cos(glat) * np.cos(olon - glon)
    return cos_d.argmax(1)


def grid_cells(L: StateLayout, table) -> np.ndarray:
    """Flat grid cell (index into ``L.spatial_shape``) of each value of an observation table."""
    n_cells = int(np.prod(L.spatial_shape))
    if L.kind == "latlon":
        return _cells_latlon(L, np.asarray(table.lat, float), np.asarray(table.lon, float))
    if L.kind == "generic":
        return np.rint(np.asarray(table.position, float)).astype(int) % n_cells
    return _cells_points(L, np.asarray(table.lat, float), np.asarray(table.lon, float))


def table_image(L: StateLayout, table) -> np.ndarray:
    """One observation image ``(C, *spatial)`` of a table (all its values, whatever their
    times): values binned to the nearest cell and averaged, NaN where nothing was observed;
    the binning of :func:`rasterize`."""
    n_cells = int(np.prod(L.spatial_shape))
    flat = np.asarray(table.channel, dtype=np.int64) * n_cells + grid_cells(L, table)
    size = L.n_channels * n_cells
    total = np.bincount(flat, weights=np.asarray(table.values, dtype=np.float64),
                        minlength=size)
    count = np.bincount(flat, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return mean.reshape(L.n_channels, *L.spatial_shape)


def rasterize(obs: xr.Dataset, like: xr.Dataset | xr.DataArray) -> xr.Dataset:
    """Bin observations onto the grid of ``like``; NaN where nothing was observed.

    Parameters
    ----------
    obs : Dataset
        An observation set (see :mod:`xlatda.obs.contract`) on variables of
        ``like``.
    like : Dataset or DataArray
        Defines the grid, the variables and, if it has a time axis and the
        observations have times, the output times (times of ``like`` without
        observations are all-NaN images; observation times that ``like`` does
        not have are refused).

    Returns
    -------
    Dataset
        The observed variables on the state grid, with the state's metadata,
        one image per time (or a single image for timeless observations).

    Raises
    ------
    ObservationError
        If observation times are not times of ``like``.
    """
    if isinstance(like, xr.DataArray):
        like = like.to_dataset(name=like.name if like.name is not None else "data")
    L = layout(like)
    validate(obs, L)
    table = to_tensors(obs, L)
    n_cells = int(np.prod(L.spatial_shape))
    cell = grid_cells(L, table)
    tname = L.axes.time
    if table.time is None:
        slot = np.zeros(len(table), dtype=int)
        times = None
    else:
        if tname is not None and tname in like.dims:
            times = like[tname].values
        else:
            times = np.unique(table.time)
        index = {t: i for i, t in enumerate(times.tolist())}
        missing = sorted({t for t in table.time.tolist() if t not in index})
        if missing:
            raise ObservationError(
                f"{len(missing)} observation time(s) are not times of the grid Dataset "
                f"(first: {missing[0]}); select matching times or pass a 'like' with them"
            )
        slot = np.array([index[t] for t in table.time.tolist()], dtype=int)
    n_t = 1 if times is None else len(times)
    flat = (slot * L.n_channels + table.channel.numpy()) * n_cells + cell
    size = n_t * L.n_channels * n_cells
    total = np.bincount(flat, weights=table.values.double().numpy(), minlength=size)
    count = np.bincount(flat, minlength=size)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    arr = torch.from_numpy(mean.reshape(n_t, L.n_channels, *L.spatial_shape))
    if times is None:
        out = L.to_dataset(arr, sample_coords={"sample": [0]}).isel(sample=0, drop=True)
    else:
        out = L.to_dataset(arr, sample_coords={tname or "time": times})
    observed = sorted(set(table.variable.tolist()), key=list(L.variables).index)
    out = out[observed]
    out.attrs = {"history": f"{len(table)} observations rasterized by xlatda.obs.rasterize"}
    return out
