"""fit_dynamics / evolve / forecast on xarray objects."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import ConfigError, NotFittedError


@pytest.fixture(scope="module")
def data():
    return xlatda.datasets.lorenz96(n=8, steps=300, seed=0)


@pytest.fixture(scope="module")
def model(data):
    return xlatda.fit(data, encoder="pca", latent_dim=8, dynamics="ode", uncertainty="diagonal",
                      epochs=3, progress=False,
                      dynamics_options={"width": 32, "depth": 2})


def test_evolve_coords_and_consistency(data, model):
    z = data.isel(time=[0, 10]).lda.encode(model)
    fc = z.lda.evolve(model, steps=4)
    assert fc.z.dims == ("time", "lead", "latent")
    np.testing.assert_allclose(fc.lead.values, np.arange(5) * 0.05)
    np.testing.assert_allclose(fc.valid_time.values,
                               data.time.values[[0, 10]][:, None] + np.arange(5) * 0.05)
    # lead 0 is the initial state; irregular leads agree with the regular run.
    np.testing.assert_allclose(fc.z.isel(lead=0).values, z.z.values, atol=1e-6)
    irregular = z.lda.evolve(model, lead=[0.05, 0.15, 0.2])
    np.testing.assert_allclose(irregular.z.sel(lead=0.2).values, fc.z.isel(lead=4).values,
                               atol=1e-4)


def test_evolve_lazy_and_noise_reproducible(data, model, raise_if_dask_computes):
    z = data.isel(time=slice(0, 6)).lda.encode(model)
    eager = z.lda.evolve(model, steps=3, members=4, noise=True, seed=2)
    with raise_if_dask_computes():
        lazy = z.chunk(time=2).lda.evolve(model, steps=3, members=4, noise=True, seed=2)
    assert lazy.z.chunks is not None
    np.testing.assert_allclose(lazy.z.values, eager.z.values, atol=1e-5)
    spread = eager.z.isel(lead=-1).std("member")
    assert float(spread.min()) > 0  # members differ with noise
    again = z.lda.evolve(model, steps=3, members=4, noise=True, seed=2)
    np.testing.assert_array_equal(again.z.values, eager.z.values)


def test_forecast_fields_and_skill(data, model):
    fc = data.isel(time=[20, 40]).lda.forecast(model, steps=2)
    assert fc.x.dims == ("time", "lead", "k")
    assert fc.x.attrs == data.x.attrs
    # Lead 0 decodes the analysis state: full-rank PCA reproduces it.
    np.testing.assert_allclose(fc.x.isel(lead=0).values, data.x.isel(time=[20, 40]).values,
                               atol=1e-3)


def test_store_round_trip_with_dynamics(tmp_path, data, model):
    model.save(tmp_path / "m.zarr")
    again = xlatda.open_model(tmp_path / "m.zarr")
    z = data.isel(time=[3]).lda.encode(model)
    np.testing.assert_array_equal(z.lda.evolve(model, steps=2).z.values,
                                  z.lda.evolve(again, steps=2).z.values)
    assert torch.equal(model.model_error.covariance(), again.model_error.covariance())


def test_errors(data):
    plain = xlatda.fit(data, encoder="pca", latent_dim=4, progress=False)
    z = data.isel(time=[0]).lda.encode(plain)
    with pytest.raises(NotFittedError, match="dynamics='ode'"):
        z.lda.evolve(plain, steps=2)


def test_lead_arguments(data, model):
    z = data.isel(time=[0]).lda.encode(model)
    with pytest.raises(ConfigError, match="exactly one"):
        z.lda.evolve(model)
    with pytest.raises(ConfigError, match="increasing"):
        z.lda.evolve(model, lead=[0.2, 0.1])


def test_fit_dynamics_trains_on_short_trajectories_with_val_fraction_zero():
    ds = xlatda.datasets.lorenz96(n=8, steps=12, seed=0)
    model = xlatda.fit(ds, encoder="pca", latent_dim=8, progress=False)
    with pytest.raises(xlatda.errors.XlatdaError, match="val_fraction"):
        xlatda.fit_dynamics(model, ds, window=6, epochs=1, uncertainty=None, progress=False)
    fitted = xlatda.fit_dynamics(model, ds, window=6, epochs=2, val_fraction=0,
                                 uncertainty=None, progress=False)
    assert fitted.dynamics is not None
