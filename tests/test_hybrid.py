"""The hybrid (ensemble + climatological prior) EnKF: closed forms and the cycle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xlatda
from xlatda.errors import ConfigError, NotFittedError
from xlatda.methods.hybrid import hybrid_gain_update

F64 = torch.float64


def _problem(seed, n_members=6, n=4, p=5, k=None):
    g = torch.Generator().manual_seed(seed)
    ens = torch.randn(n_members, n, generator=g, dtype=F64)
    H = torch.randn(p, n, generator=g, dtype=F64)
    S = torch.randn(n, k or n, generator=g, dtype=F64) * 0.7
    y = torch.randn(p, generator=g, dtype=F64)
    r = 0.3 + torch.rand(p, generator=g, dtype=F64)
    return ens, H, S, y, r, g


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), beta=st.floats(0.0, 1.0), rho=st.floats(1.0, 1.5),
       n_members=st.integers(2, 9), k=st.integers(1, 6))
def test_mean_is_the_kalman_mean_of_the_blended_covariance(seed, beta, rho, n_members, k):
    ens, H, S, y, r, g = _problem(seed, n_members=n_members, k=k)
    ana, diag = hybrid_gain_update(ens, ens @ H.T, y, r, S, H @ S, beta=beta, inflation=rho,
                                   generator=g)
    xb = ens.mean(0)
    X = (ens - xb) * rho
    P = (1 - beta) * X.T @ X / (n_members - 1) + beta * S @ S.T
    R = torch.diag(r**2)
    kalman = xb + P @ H.T @ torch.linalg.solve(H @ P @ H.T + R, y - H @ xb)
    torch.testing.assert_close(ana.mean(0), kalman, rtol=1e-9, atol=1e-9)
    d = y - H @ xb
    chi2 = d @ torch.linalg.solve(H @ P @ H.T + R, d) / len(y)
    torch.testing.assert_close(diag["chi2"], chi2, rtol=1e-9, atol=1e-12)


def test_members_get_the_blended_gain_with_centred_perturbations():
    ens, H, S, y, r, _ = _problem(3, n_members=7)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    beta = 0.4
    ana, _ = hybrid_gain_update(ens, ens @ H.T, y, r, S, H @ S, beta=beta, generator=g1)
    eps = torch.randn((7, 5), generator=g2, dtype=F64)
    eps = eps - eps.mean(0)
    X = ens - ens.mean(0)
    P = (1 - beta) * X.T @ X / 6 + beta * S @ S.T
    K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + torch.diag(r**2))
    expect = ens + (y + eps * r - ens @ H.T) @ K.T
    torch.testing.assert_close(ana, expect, rtol=1e-9, atol=1e-10)


def _linear_case(latent=8, n=32, steps=600):
    """A linear-Gaussian latent truth: x = U z, z' = A z + noise (PCA + linear dynamics fit it)."""
    import xarray as xr

    rng = np.random.default_rng(0)
    U = np.linalg.qr(rng.standard_normal((n, latent)))[0] * np.sqrt(n)
    A = np.linalg.qr(rng.standard_normal((latent, latent)))[0] * 0.95
    z = np.zeros((steps, latent))
    for t in range(1, steps):
        z[t] = A @ z[t - 1] + 0.3 * rng.standard_normal(latent)
    ds = xr.Dataset({"x": (("time", "k"), z @ U.T, {"units": "1"})},
                    coords={"time": ("time", np.arange(steps) * 0.1,
                                     {"standard_name": "time", "units": "1"}),
                            "k": ("k", np.arange(n))})
    model = xlatda.fit(ds.isel(time=slice(0, 500)), encoder="pca", latent_dim=latent,
                       dynamics="linear", progress=False)
    truth = ds.isel(time=slice(500, 541))
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=12, error_std=0.5, seed=1)
    return model, truth, obs


def test_cycle_is_reproducible_and_beats_the_rank_deficient_enkf():
    model, truth, obs = _linear_case()
    kw = dict(members=4, init_std=1.0, seed=3, progress=False)
    a = xlatda.cycle(truth.isel(time=0), obs, model, method="hybrid", **kw)
    b = xlatda.cycle(truth.isel(time=0), obs, model, method="hybrid", **kw)
    np.testing.assert_array_equal(a.analysis.x.values, b.analysis.x.values)
    e = xlatda.cycle(truth.isel(time=0), obs, model, method="enkf", inflation=1.05, **kw)

    def rmse(res):
        m = res.analysis.x.mean("member")
        return float(np.sqrt(((m - truth.x.sel(time=m.time)) ** 2).mean()))

    # 4 members in a latent space of 8: the EnKF corrects 3 directions, the hybrid all
    assert rmse(a) < 0.9 * rmse(e)
    assert {"chi2", "spread_ratio", "n_obs"} <= set(a.diagnostics.data_vars)


def test_hybrid_refuses_what_it_cannot_run():
    model, truth, obs = _linear_case()
    bg = truth.isel(time=0)
    with pytest.raises(ConfigError, match="beta"):
        xlatda.cycle(bg, obs, model, method="hybrid", beta=1.5, members=4, progress=False)
    with pytest.raises(ConfigError, match="fixed inflation"):
        xlatda.cycle(bg, obs, model, method="hybrid", inflation="adaptive", members=4,
                     progress=False)
    import dataclasses

    with pytest.raises(NotFittedError, match="latent prior"):
        xlatda.cycle(bg, obs, dataclasses.replace(model, prior=None), method="hybrid",
                     members=4, progress=False)
    from xlatda.dynamics import Lorenz96

    with pytest.raises(ConfigError):
        xlatda.cycle(bg, obs, Lorenz96(n=32), method="hybrid", members=4, progress=False)


def test_small_latent_ensembles_are_reported_and_the_hybrid_is_not():
    import warnings

    from xlatda.errors import SmallEnsembleWarning

    model, truth, obs = _linear_case()
    bg = truth.isel(time=0)
    kw = dict(init_std=1.0, seed=0, progress=False)
    with pytest.warns(SmallEnsembleWarning, match=r"4 members spans at most 3 of the 8"):
        xlatda.cycle(bg, obs, model, method="etkf", members=4, inflation=1.05, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallEnsembleWarning)
        xlatda.cycle(bg, obs, model, method="hybrid", members=4, **kw)
        xlatda.cycle(bg, obs, model, method="etkf", members=9, inflation=1.05, **kw)
