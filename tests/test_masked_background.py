"""A background on a land-only grid (sea NaN at every time, like WFDE5) cycles; NaN
anywhere else is refused before work starts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xlatda
from xlatda.errors import NonFiniteError


def _land_only(days=3, seed=0):
    rng = np.random.default_rng(seed)
    time = pd.date_range("2017-01-01", periods=24 * days, freq="h")
    lat, lon = np.linspace(50, 55, 5), np.linspace(-5, 1, 6)
    vals = 275 + rng.standard_normal((len(time), 5, 6)).cumsum(0) * 0.2
    vals[:, 0, :2] = np.nan  # "sea"
    return xr.Dataset({"Tair": (("time", "lat", "lon"), vals, {"units": "K"})},
                      coords={"time": time, "lat": ("lat", lat, {"units": "degrees_north"}),
                              "lon": ("lon", lon, {"units": "degrees_east"})})


def test_masked_background_cycles_and_other_nan_is_refused():
    ds = _land_only()
    model = xlatda.fit(ds, encoder="pca", latent_dim=5, dynamics="linear",
                       uncertainty="diagonal", progress=False)
    clim = ds.mean("time").expand_dims(time=ds.time.values[40:41])
    assert int(clim.Tair.isnull().sum()) == 2
    obs = xlatda.obs.sample_points(ds.isel(time=slice(41, 50, 3)).fillna(0.0), n=5,
                                   error_std=0.5, seed=0)
    obs = obs.where((obs.lat > 51.5) | (obs.lon > -3), drop=True)  # over land only
    res = xlatda.cycle(clim, obs, model, progress=False)
    assert np.isfinite(res.analysis.Tair.values[:, :, 1:, :]).all()
    holed = clim.copy(deep=True)
    holed["Tair"][0, 3, 3] = np.nan
    with pytest.raises(NonFiniteError, match="outside the model's land/sea mask"):
        xlatda.cycle(holed, obs, model, progress=False)
