"""``sample_points`` on masked fields: every observation has a finite value."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xlatda
from xlatda.errors import ConfigError, ObservationError

from .conftest import shared_file
from .test_obs import global_state


def masked(ds: xr.Dataset, frac_lat: float = 0.5) -> xr.Dataset:
    """NaN over the northern part and one moving cell (missing at one time only)."""
    out = ds.copy(deep=True)
    north = out.lat > (90 - 180 * frac_lat)
    for v in out.data_vars:
        out[v] = out[v].where(~north)
    out["h"][1, 3, 4] = np.nan
    return out


def test_masked_field_gives_finite_observations_over_the_valid_part():
    truth = masked(global_state(ntime=3))
    obs = xlatda.obs.sample_points(truth, n=200, error_std=0.5, seed=0)
    assert obs.sizes["obs"] == 600
    assert np.isfinite(obs.h).all() and np.isfinite(obs.q).all()
    xlatda.obs.validate(obs, xlatda.layout(truth))
    # uniform over the valid (southern) half: nothing north of its last row's stencil
    south_last = float(truth.lat.where(truth.lat <= 0, drop=True).max())
    assert float(obs.lat.max()) <= south_last
    assert abs(float(np.sin(np.deg2rad(obs.lat)).mean()) + 0.5) < 0.06
    # the cell missing at one time is avoided at every time (a fixed mask)
    cell_lat, cell_lon = float(truth.lat[3]), float(truth.lon[4])
    near = (np.abs(obs.lat - cell_lat) < 10.0) & (np.abs(obs.lon - cell_lon) < 10.0)
    assert not near.any()
    again = xlatda.obs.sample_points(truth, n=200, error_std=0.5, seed=0)
    xr.testing.assert_identical(obs, again)


def test_unmasked_field_draws_as_before():
    """Without NaN the locations are the plain draws of the seed (no redraws)."""
    truth = global_state(ntime=2)
    obs = xlatda.obs.sample_points(truth, n=25, error_std=1.0, seed=4, noise=False)
    rng = np.random.default_rng(4)
    s = rng.uniform(-1.0, 1.0, 25)
    np.testing.assert_allclose(obs.lat.values[:25], np.rad2deg(np.arcsin(s)))


def test_random_times_and_no_time_on_masked_fields():
    truth = masked(global_state(ntime=4))
    obs = xlatda.obs.sample_points(truth, n=80, error_std=1.0, seed=2, times="random")
    assert obs.sizes["obs"] == 80 and np.isfinite(obs.h).all()
    one = xlatda.obs.sample_points(truth.isel(time=0), n=40, error_std=1.0, seed=2)
    assert np.isfinite(one.h).all() and np.isfinite(one.q).all()


def test_points_state_chooses_among_finite_points():
    rng = np.random.default_rng(0)
    vals = rng.normal(size=(2, 30))
    vals[:, ::3] = np.nan
    truth = xr.Dataset(
        {"t": (("time", "site"), vals, {"units": "K"})},
        coords={"time": np.arange(2.0),
                "lat": ("site", np.linspace(-60, 60, 30),
                        {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("site", np.linspace(0, 300, 30),
                        {"standard_name": "longitude", "units": "degrees_east"})})
    obs = xlatda.obs.sample_points(truth, n=20, error_std=0.1, seed=0)
    assert np.isfinite(obs.t).all()
    with pytest.raises(ConfigError, match="20 points with finite values"):
        xlatda.obs.sample_points(truth, n=21, error_std=0.1, seed=0)


def test_all_missing_and_tiny_valid_parts_are_refused():
    truth = global_state(ntime=2)
    empty = truth.where(truth.lat > 100)
    with pytest.raises(ObservationError, match="no cell"):
        xlatda.obs.sample_points(empty, n=5, error_std=1.0)
    # one valid 2 x 2 block of a 18 x 36 grid: its stencil area is ~1/650 of the sphere
    tiny = truth.where((truth.lat.isin(truth.lat[8:10])) & (truth.lon.isin(truth.lon[5:7])))
    with pytest.raises(ObservationError, match="too small"):
        xlatda.obs.sample_points(tiny, n=5, error_std=1.0)


def test_real_masked_files():
    """The WFDE5 land-only file (sea NaN) and the SST file (land NaN)."""
    for name, var, sig in (("wfde5_air_temperature_2017-01_uk.nc", "Tair", 1.0),
                           ("sst_ndjfm_anom.nc", "sst", 0.2)):
        ds = xr.open_dataset(shared_file(name))[[var]].isel(time=slice(0, 3)).load()
        obs = xlatda.obs.sample_points(ds, n=40, error_std=sig, seed=1)
        assert obs.sizes["obs"] == 120 and np.isfinite(obs[var]).all()
