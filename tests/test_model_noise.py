"""Square-root model error (xlatda.methods.model_noise) and the latent cycle that uses it,
against the exact Kalman filter of a linear-Gaussian latent model."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xlatda
from xlatda.methods.model_noise import add_model_error

F64 = torch.float64


def _spd(d, seed):
    g = torch.Generator().manual_seed(seed)
    M = torch.randn(d, d, generator=g, dtype=F64)
    return M @ M.T / d + 0.1 * torch.eye(d, dtype=F64)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 6), extra=st.integers(1, 10), seed=st.integers(0, 10_000))
def test_exact_covariance_and_mean_when_the_ensemble_spans_the_space(d, extra, seed):
    g = torch.Generator().manual_seed(seed)
    ens = torch.randn(d + extra, d, generator=g, dtype=F64) * 2 + 3
    Q = _spd(d, seed + 1)
    out = add_model_error(ens, Q, generator=g)
    assert torch.allclose(out.mean(0), ens.mean(0), atol=1e-10)
    gain = torch.cov(out.T).reshape(d, d) - torch.cov(ens.T).reshape(d, d)
    assert torch.allclose(gain, Q, atol=1e-8)


def test_rank_deficient_ensemble_gets_the_rest_by_a_draw():
    d, n = 6, 3  # perturbations span 2 of 6 directions
    Q = _spd(d, 0)
    g = torch.Generator().manual_seed(1)
    ens = torch.randn(n, d, generator=g, dtype=F64)
    X = (ens - ens.mean(0)).T / (n - 1) ** 0.5
    U = torch.linalg.svd(X, full_matrices=False)[0][:, :2]
    Pi = U @ U.T
    # in the span: exact, whatever the draw
    out = add_model_error(ens, Q, generator=torch.Generator().manual_seed(2))
    Xo = (out - out.mean(0)).T / (n - 1) ** 0.5
    proj = Pi @ Xo
    assert torch.allclose(proj @ proj.T, X @ X.T + Pi @ Q @ Pi, atol=1e-6)
    # on average over draws the rest of Q, (I - Pi) Q (I - Pi), is added too
    R = torch.eye(d, dtype=F64) - Pi
    acc = torch.zeros(d, d, dtype=F64)
    reps = 4000
    for r in range(reps):
        o = add_model_error(ens, Q, generator=torch.Generator().manual_seed(r))
        dev = (o - ens) @ R  # what was added outside the span, per member
        acc += dev.T @ dev / n
    assert torch.allclose(acc / reps, R @ Q @ R, atol=0.05)


def test_deterministic_for_a_generator_seed():
    ens = torch.randn(4, 6, dtype=F64)
    Q = _spd(6, 3)
    a = add_model_error(ens, Q, generator=torch.Generator().manual_seed(5))
    b = add_model_error(ens, Q, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_shape_errors():
    with pytest.raises(xlatda.XlatdaError):
        add_model_error(torch.zeros(4, 3), torch.eye(2), generator=torch.Generator())


# -- the latent cycle equals the exact Kalman filter --------------------------------
def _linear_gaussian_case(d=3, T=13, seed=0):
    """A gridded field x = mean + E z with z an AR(1)+diurnal process: PCA(d) is exact."""
    rng = np.random.default_rng(seed)
    n_cells = 12
    time = pd.date_range("2020-01-01", periods=T * 20, freq="h")
    E = np.linalg.qr(rng.standard_normal((n_cells, d)))[0] * 3.0
    z = np.zeros((len(time), d))
    for k in range(1, len(time)):
        z[k] = 0.8 * z[k - 1] + 0.5 * rng.standard_normal(d)
    vals = 10 + z @ E.T
    ds = xr.Dataset({"x": (("time", "site"), vals)},
                    coords={"time": time, "site": np.arange(n_cells)})
    return ds


def _site_obs(ds, t_idx, sites, err, rng):
    times = ds.time.values[t_idx]
    vals = ds.x.values[np.ix_(t_idx, sites)].ravel()
    return xr.Dataset(
        {"x": ("obs", vals + err * rng.standard_normal(vals.size), {"error_std": err})},
        coords={"time": ("obs", np.repeat(times, len(sites))),
                "site": ("obs", np.tile(np.asarray(sites, float), len(times)))})


def test_latent_etkf_with_linear_dynamics_matches_the_kalman_filter():
    """PCA (exact at rank d), linear dynamics, N - 1 > d, no inflation: the ensemble
    filter is the Kalman filter, Q included (the square-root model error)."""
    ds = _linear_gaussian_case()
    model = xlatda.fit(ds, encoder="pca", latent_dim=3, dynamics="linear",
                       uncertainty="cholesky", progress=False,
                       dynamics_options={"periods": (), "ridge": 0.0})
    d = model.latent_dim
    A = model.dynamics.A.double()
    b = model.dynamics.bias.double()
    Q = model.model_error.covariance().double()
    rng = np.random.default_rng(3)
    t_idx, sites, err = [3, 6, 9], [1, 4, 7, 10], 0.7
    obs = _site_obs(ds, t_idx, sites, err, rng)
    # initial ensemble: N = 40 members with sample mean 0 and sample covariance I
    g = torch.Generator().manual_seed(0)
    raw = torch.randn(40, d, generator=g, dtype=F64)
    raw = raw - raw.mean(0)
    z0 = raw @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(raw.T))).T
    zda = xr.DataArray(z0.numpy()[None], dims=("time", "member", "latent"),
                       coords={"time": ds.time.values[:1]})
    bg = xlatda.decode(zda, model)
    res = xlatda.cycle(bg, obs, model, method="etkf", inflation=1.0, progress=False)
    # the decoder is affine, x = D z + c: read D and c off the decoded basis
    basis = xr.DataArray(np.vstack([np.zeros(d), np.eye(d)])[:, None, :],
                         dims=("sample", "time", "latent"),
                         coords={"time": ds.time.values[:1]})
    dec = xlatda.decode(basis, model).x.isel(time=0).values.astype(float)  # (d + 1, sites)
    D, c = torch.as_tensor(dec[1:] - dec[0]).T, torch.as_tensor(dec[0])
    x, P = torch.zeros(d, dtype=F64), torch.eye(d, dtype=F64)
    k_prev = 0
    for k in t_idx:
        for _ in range(k - k_prev):
            x, P = A @ x + b, A @ P @ A.T + Q
        k_prev = k
        H, cH = D[sites], c[sites]
        y = torch.as_tensor(obs.x.values[obs.time.values == ds.time.values[k]])
        S = H @ P @ H.T + err**2 * torch.eye(len(sites), dtype=F64)
        K = P @ H.T @ torch.linalg.inv(S)
        x, P = x + K @ (y - H @ x - cH), P - K @ H @ P
    za = xlatda.encode(res.analysis.isel(time=-1), model).z.values.astype(float)
    np.testing.assert_allclose(za.mean(0), x.numpy(), atol=2e-3)
    np.testing.assert_allclose(np.cov(za.T), P.numpy(), atol=2e-3)


def test_weak_constraint_window_matches_the_kalman_smoother():
    """4DEnVar over a window of 3 observation times with model error: the members are
    noisy trajectories and one transform updates every time; with a linear-Gaussian
    latent model this is the Kalman (RTS) smoother of the window (Monte Carlo, N = 3000)."""
    ds = _linear_gaussian_case()
    model = xlatda.fit(ds, encoder="pca", latent_dim=3, dynamics="linear",
                       uncertainty="cholesky", progress=False,
                       dynamics_options={"periods": (), "ridge": 0.0})
    d = model.latent_dim
    A, b = model.dynamics.A.double(), model.dynamics.bias.double()
    Q = model.model_error.covariance().double()
    rng = np.random.default_rng(4)
    t_idx, sites, err = [3, 6, 9], [1, 4, 7, 10], 0.7
    obs = _site_obs(ds, t_idx, sites, err, rng)
    n = 3000
    # (not a seed the cycle's window generators use: seed 0 -> 1, 2, ...)
    g = torch.Generator().manual_seed(987_654)
    z0 = torch.randn(n, d, generator=g, dtype=F64)
    zda = xr.DataArray(z0.numpy()[None], dims=("time", "member", "latent"),
                       coords={"time": ds.time.values[:1]})
    res = xlatda.cycle(xlatda.decode(zda, model), obs, model, method="4denvar", window=3,
                       inflation=1.0, progress=False)
    # reference: the joint Gaussian of (x3, x6, x9) given the three observation sets
    m0 = z0.mean(0)
    P0 = torch.cov(z0.T)

    def step(m, P, k):
        for _ in range(k):
            m, P = A @ m + b, A @ P @ A.T + Q
        return m, P

    m3, P3 = step(m0, P0, 3)
    G = torch.linalg.matrix_power(A, 3)
    Qa = sum(torch.linalg.matrix_power(A, j) @ Q @ torch.linalg.matrix_power(A, j).T
             for j in range(3))
    c = sum(torch.linalg.matrix_power(A, j) @ b for j in range(3))
    mean = torch.cat([m3, G @ m3 + c, G @ (G @ m3 + c) + c])
    Z = torch.zeros(d, d, dtype=F64)
    Lp, Lq = torch.linalg.cholesky(P3), torch.linalg.cholesky(Qa)
    L = torch.cat([torch.cat([Lp, Z, Z], 1), torch.cat([G @ Lp, Lq, Z], 1),
                   torch.cat([G @ G @ Lp, G @ Lq, Lq], 1)])
    C = L @ L.T
    basis = xr.DataArray(np.vstack([np.zeros(d), np.eye(d)])[:, None, :],
                         dims=("sample", "time", "latent"), coords={"time": ds.time.values[:1]})
    dec = xlatda.decode(basis, model).x.isel(time=0).values.astype(float)
    D, cdec = torch.as_tensor(dec[1:] - dec[0]).T, torch.as_tensor(dec[0])
    H = torch.block_diag(*[D[sites]] * 3)
    y = torch.as_tensor(obs.x.values) - cdec[sites].repeat(3)
    S = H @ C @ H.T + err**2 * torch.eye(H.shape[0], dtype=F64)
    K = C @ H.T @ torch.linalg.inv(S)
    post_mean = mean + K @ (y - H @ mean)
    post_cov = C - K @ H @ C
    for j, k in enumerate(t_idx):
        za = xlatda.encode(res.analysis.sel(time=ds.time.values[k]), model).z.values
        sl = slice(j * d, (j + 1) * d)
        np.testing.assert_allclose(za.mean(0), post_mean[sl].numpy(), atol=0.05)
        np.testing.assert_allclose(np.cov(za.T), post_cov[sl, sl].numpy(), atol=0.05,
                                   rtol=0.1)
