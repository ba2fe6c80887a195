"""``xlatda.assimilate`` in latent space needs no ensemble settings (as ``cycle``)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xlatda
from tests.conftest import shared_file
from xlatda.errors import ConfigError


@pytest.fixture(scope="module")
def era5():
    ds = xr.open_dataset(shared_file("era5_t2m_2019-03_uk.nc"))[["t2m"]]
    ds = ds.isel(time=slice(0, 200)).load()
    model = xlatda.fit(ds.isel(time=slice(0, 150)), encoder="pca", latent_dim=8,
                       progress=False, seed=0)
    return ds, model


def test_latent_assimilate_defaults_to_a_prior_ensemble(era5):
    ds, model = era5
    obs = xlatda.obs.sample_points(ds.isel(time=[170]), n=20, error_std=1.0, seed=0)
    bg = ds.isel(time=150).assign_coords(time=ds.time[170])  # a 20-hour-old state
    ana = xlatda.assimilate(bg, obs, model)
    assert ana.sizes["member"] == max(20, model.latent_dim + 1)
    truth = ds.t2m.isel(time=170)
    err = lambda x: float(np.sqrt(((x - truth) ** 2).mean()))  # noqa: E731
    assert err(ana.t2m.mean("member")) < 0.6 * err(bg.t2m)
    again = bg.lda.assimilate(obs, model)
    np.testing.assert_array_equal(ana.t2m.values, again.t2m.values)
    # an explicit size and spread still win
    small = xlatda.assimilate(bg, obs, model, members=5, init_std=0.5)
    assert small.sizes["member"] == 5


def test_physical_assimilate_still_asks_for_the_spread(era5):
    ds, _ = era5
    obs = xlatda.obs.sample_points(ds.isel(time=[170]), n=20, error_std=1.0, seed=0)
    with pytest.raises(ConfigError, match="needs an ensemble"):
        xlatda.assimilate(ds.isel(time=170), obs)
