"""Latent dynamics: Q from held-out residuals, out-of-distribution forecasts reported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import OutOfDistributionWarning
from xlatda.uncertainty import rollout_residuals


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
    K = 4  # window 5 -> roll-outs of 1..4 steps
    assert info["horizon"] == K
    assert info["n_residuals"] == sum(n_val - k for k in range(1, K + 1))
    z = torch.as_tensor(xlatda.encode(ds, m).z.values)[None].to(m.dtype)
    rows, per_lead = rollout_residuals(m.dynamics, z[:, -n_val:], K)
    # the diagonal Q is the variance of the held-out scaled residuals, not of training ones
    var = rows.pow(2).mean(0)
    np.testing.assert_allclose(torch.diagonal(m.model_error.covariance()).detach(), var,
                               rtol=0.05)
    train_rows, _ = rollout_residuals(m.dynamics, z[:, : -n_val], K)
    assert not np.allclose(var, train_rows.pow(2).mean(0), rtol=0.05)
    np.testing.assert_allclose(info["mse_per_lead"], per_lead, rtol=1e-4)


def test_rollout_residuals_of_a_random_walk_have_the_step_variance():
    class Persistence:
        def evolve(self, z0, times, theta=None):
            return z0[..., None, :].expand(*z0.shape[:-1], len(times), z0.shape[-1])

    g = torch.Generator().manual_seed(0)
    walk = torch.cumsum(0.5 * torch.randn(4, 400, 3, generator=g, dtype=torch.float64), 1)
    rows, per_lead = rollout_residuals(Persistence(), walk, horizon=6)
    # persistence of a random walk: k-step error variance k * 0.25, scaled rows 0.25
    np.testing.assert_allclose(rows.pow(2).mean(), 0.25, rtol=0.06)
    np.testing.assert_allclose(per_lead / torch.arange(1, 7), 0.25, rtol=0.1)


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
