"""The public path on real files, as a new user calls it (issue: audit of the public path).

Each test is a variation a user makes on a real reanalysis file (dims in another order,
descending latitude, dask chunks, ...) that broke or misbehaved; the synthetic twin of
each runs without the shared data.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xlatda
from tests.conftest import shared_file


def _era5(n_time: int = 120) -> xr.Dataset:
    ds = xr.open_dataset(shared_file("era5_t2m_2019-03_uk.nc"))[["t2m"]]
    return ds.isel(time=slice(0, n_time)).load()


def _grid(nlat: int = 7, nlon: int = 11, n_time: int = 40, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    lat = np.linspace(60.0, 48.0, nlat)
    lon = np.linspace(-10.0, 2.0, nlon)
    t = np.arange(n_time)
    field = (280 + 3 * np.sin(2 * np.pi * t / 24)[:, None, None]
             + np.cos(np.deg2rad(lat))[None, :, None] * np.sin(np.deg2rad(3 * lon))[None, None, :]
             + 0.3 * rng.standard_normal((n_time, nlat, nlon)))
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), field.astype("float32"), {"units": "K"})},
        coords={"time": np.datetime64("2019-03-01") + t.astype("timedelta64[h]"),
                "latitude": ("latitude", lat, {"units": "degrees_north"}),
                "longitude": ("longitude", lon, {"units": "degrees_east"})},
    )
    return ds


def _fit(ds: xr.Dataset, **kw):
    kw = {"encoder": "pca", "latent_dim": 6, "seed": 0, "progress": False, **kw}
    return xlatda.fit(ds, **kw)


@pytest.mark.parametrize("source", ["synthetic", "era5"])
def test_fit_on_lon_lat_time_order_equals_fit_on_time_lat_lon(source):
    """A (lon, lat, time) Dataset fits (it crashed in Normalizer.fit on non-square grids)."""
    ds = _grid() if source == "synthetic" else _era5()
    ref = _fit(ds)
    other = _fit(ds.transpose("longitude", "latitude", "time"))
    flipped = ds.transpose("longitude", "latitude", "time")
    # the same training tensor: the same model, bit for bit, whichever order is passed
    np.testing.assert_array_equal(flipped.lda.encode(other).z.values, ds.lda.encode(ref).z.values)
    back = ds.lda.encode(other).lda.decode(other)
    np.testing.assert_array_equal(back.t2m.values, ds.lda.encode(ref).lda.decode(ref).t2m.values)
    # physical layouts keep the file's order; their cos-lat weights follow it
    np.testing.assert_array_equal(xlatda.layout(flipped).area_weights().T,
                                  xlatda.layout(ds).area_weights())
