"""Latent dynamics: Q from held-out residuals, out-of-distribution forecasts reported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import OutOfDistributionWarning
from xlatda.uncertainty import residuals


@pytest.fixture(scope="module")
def model():
    ds = xlatda.datasets.lorenz96(n=8, steps=200, seed=0)
    return ds, xlatda.fit(ds, encoder="pca", latent_dim=8, dynamics="ode", uncertainty="diagonal",
                          epochs=3, progress=False,
                          dynamics_options={"width": 16, "depth": 1, "window": 5})


def test_model_error_is_fitted_on_the_held_out_segment(model):
    ds, m = model
    info = m.history["model_error"]
    assert info["fitted_on"] == "held-out final segment"
    n_val = round(0.1 * ds.sizes["time"])
    assert info["n_residuals"] == n_val - 1
    z = torch.as_tensor(xlatda.encode(ds, m).z.values)[None].to(m.dtype)
    held = residuals(m.dynamics, z[:, -n_val:])
    # the diagonal Q is the variance of the held-out residuals (not of the training ones)
    var = held.reshape(-1, 8).pow(2).mean(0)
    np.testing.assert_allclose(torch.diagonal(m.model_error.covariance()).detach(), var,
                               rtol=0.05)


def test_forecast_far_outside_the_training_codes_warns(model):
    ds, m = model
    z = xlatda.encode(ds.isel(time=[10]), m)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        xlatda.evolve(z, m, steps=2)  # a training-like start: no warning
    far = z.copy()
    far["z"] = z.z + 1e3 * float(m.prior.covariance().diagonal().sqrt().max())
    with pytest.warns(OutOfDistributionWarning, match="Mahalanobis"):
        xlatda.evolve(far, m, steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", OutOfDistributionWarning)
        xlatda.evolve(far, m, steps=2, check=False)


def test_warning_belongs_to_the_error_family():
    assert issubclass(OutOfDistributionWarning, xlatda.XlatdaError)
    assert issubclass(OutOfDistributionWarning, UserWarning)
