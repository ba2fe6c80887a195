"""Hybrid 4DEnVar (``beta > 0``): the static covariance in the control variable."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import ConfigError, ShapeError, SmallEnsembleWarning
from xlatda.methods.envar4d import EnVar4D

from .test_envar4d import window_operator

F64 = torch.float64


def _window(seed: int = 0, n: int = 5, n_members: int = 3, steps: int = 3):
    """A linear window (stacked operator G), a rank-deficient prior ensemble and a B."""
    g = torch.Generator().manual_seed(seed)
    big_g, r = window_operator(g, n, steps, 0.9, 0.1)
    p = big_g.shape[0]
    ens = torch.randn(2, n_members, n, generator=g, dtype=F64) + 1.0
    y = torch.randn(2, p, generator=g, dtype=F64) * 2.0
    static = torch.randn(n, n, generator=g, dtype=F64) * 0.7  # rows of L, B = L^T L
    return big_g, ens, y, r, static


def _blue(big_g, prior_mean, prior_cov, y, r):
    s = big_g @ prior_cov @ big_g.T + torch.diag(r**2)
    gain = prior_cov @ big_g.T @ torch.linalg.inv(s)
    mean = prior_mean + ((y - prior_mean @ big_g.T).unsqueeze(-2) @ gain.mT).squeeze(-2)
    return mean, prior_cov - gain @ big_g @ prior_cov


def _ens_cov(ens):
    anom = ens - ens.mean(-2, keepdim=True)
    return anom.mT @ anom / (ens.shape[-2] - 1)


@pytest.mark.parametrize("beta", [0.3, 1.0])
@pytest.mark.parametrize(
    "settings",
    [{}, {"variant": "bundle"}, {"inflation": 1.3},
     {"mode": "autodiff", "iterations": 300, "tol": 1e-11}],
    ids=["gauss-newton", "bundle", "inflation", "autodiff"],
)
def test_linear_gaussian_mean_is_the_blue_of_the_blended_covariance(settings, beta):
    big_g, ens, y, r, static = _window()
    method = EnVar4D(beta=beta, **settings)
    out = method.analyse(ens, y, r, lambda s: s @ big_g.T, static=static)
    p_e = _ens_cov(ens) * method.inflation**2
    p_h = (1.0 - beta) * p_e + beta * static.T @ static
    mean_ref, _ = _blue(big_g, ens.mean(-2), p_h, y, r)
    tol = 1e-6 if method.mode == "autodiff" else 1e-9
    torch.testing.assert_close(out.mean, mean_ref, atol=tol, rtol=tol)
    # the members: the ensemble's own Kalman posterior, re-centred on the hybrid mean
    _, cov_e = _blue(big_g, ens.mean(-2), p_e, y, r)
    torch.testing.assert_close(out.ensemble.mean(-2), out.mean)
    torch.testing.assert_close(_ens_cov(out.ensemble), cov_e, atol=tol, rtol=tol)
    assert out.w.shape == (2, ens.shape[-2] + static.shape[0])
    assert out.converged and bool((out.cost[-1] < out.cost[0]).all())
    if method.mode == "gauss-newton":
        assert out.iterations == 2  # the exact step, then a zero step


def test_static_part_corrects_what_a_small_ensemble_cannot():
    # N = 3 members in 5 dimensions: the pure ensemble analysis is confined to 2
    # directions; the hybrid one reaches the BLUE of the blended covariance, closer
    # to the BLUE of the full-rank B than the ensemble-only one.
    big_g, ens, y, r, static = _window(seed=1)
    fo = lambda s: s @ big_g.T  # noqa: E731
    pure = EnVar4D().analyse(ens, y, r, fo)
    hyb = EnVar4D(beta=0.5).analyse(ens, y, r, fo, static=static)
    incr_pure = pure.mean - ens.mean(-2)
    anom = ens - ens.mean(-2, keepdim=True)
    resid = incr_pure - (torch.linalg.lstsq(anom.mT, incr_pure.unsqueeze(-1)).solution
                         .mT @ anom).squeeze(-2)
    assert float(resid.abs().max()) < 1e-10  # pure increments lie in the ensemble span
    fit_pure = ((y - fo(pure.mean)) / r).square().sum(-1)
    fit_hyb = ((y - fo(hyb.mean)) / r).square().sum(-1)
    assert bool((fit_hyb < fit_pure).all())


def test_beta_zero_is_the_pure_method_bit_for_bit():
    big_g, ens, y, r, static = _window(seed=2, n_members=8)
    fo = lambda s: torch.tanh(s) @ big_g.T  # noqa: E731 (nonlinear: several iterations)
    a = EnVar4D(iterations=5).analyse(ens, y, r, fo)
    b = EnVar4D(iterations=5, beta=0.0).analyse(ens, y, r, fo, static=static)
    assert torch.equal(a.mean, b.mean) and torch.equal(a.ensemble, b.ensemble)
    assert a.iterations == b.iterations


def test_nonlinear_window_gauss_newton_converges_and_is_deterministic():
    big_g, ens, y, r, static = _window(seed=3, n_members=4)
    fo = lambda s: torch.tanh(0.5 * s) @ big_g.T  # noqa: E731
    method = EnVar4D(beta=0.3, iterations=30, tol=1e-8)
    out = method.analyse(ens, y, r, fo, static=static)
    again = method.analyse(ens, y, r, fo, static=static)
    assert torch.equal(out.mean, again.mean) and torch.equal(out.ensemble, again.ensemble)
    assert out.converged and out.iterations > 2
    # the bundle variant minimises J itself: its stationary point has a zero gradient
    bundle = EnVar4D(beta=0.3, iterations=30, tol=1e-9, variant="bundle", epsilon=1e-6)
    res = bundle.analyse(ens, y, r, fo, static=static)
    v = res.w.clone().requires_grad_(True)
    ctrl = torch.cat([(ens - ens.mean(-2, keepdim=True)) * math.sqrt(0.7 / 3),
                      math.sqrt(0.3) * static.expand(2, *static.shape)], -2)
    s = ens.mean(-2) + (v.unsqueeze(-2) @ ctrl).squeeze(-2)
    cost = 0.5 * (v**2).sum() + 0.5 * (((y - fo(s)) / r) ** 2).sum()
    (grad,) = torch.autograd.grad(cost, v)
    assert float(grad.abs().max()) < 1e-5


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan"), "0.3", True, None])
def test_bad_beta_is_refused(beta):
    with pytest.raises(ConfigError, match="beta must be a number in"):
        EnVar4D(beta=beta)


def test_static_is_required_and_checked():
    big_g, ens, y, r, static = _window()
    fo = lambda s: s @ big_g.T  # noqa: E731
    with pytest.raises(ConfigError, match="static="):
        EnVar4D(beta=0.3).analyse(ens, y, r, fo)
    with pytest.raises(ShapeError, match="static must"):
        EnVar4D(beta=0.3).analyse(ens, y, r, fo, static=static[:, :3])
    with pytest.raises(ConfigError, match="non-finite"):
        EnVar4D(beta=0.3).analyse(ens, y, r, fo, static=static * float("nan"))


def _latent_case():
    ds = xlatda.datasets.lorenz96(n=16, steps=300, seed=0)
    model = xlatda.fit(ds, encoder="pca", latent_dim=8, dynamics="linear", progress=False)
    obs = xlatda.obs.sample_points(ds.isel(time=slice(201, 213)), n=6, error_std=1.0, seed=1)
    return ds, model, obs


def test_cycle_hybrid_is_reproducible_and_does_not_warn():
    ds, model, obs = _latent_case()
    kw = dict(method="4denvar", members=4, window=3, seed=5, progress=False, beta=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallEnsembleWarning)
        a = xlatda.cycle(ds.isel(time=200), obs, model, **kw)
    b = xlatda.cycle(ds.isel(time=200), obs, model, **kw)
    np.testing.assert_array_equal(a.analysis.x.values, b.analysis.x.values)
    with pytest.warns(SmallEnsembleWarning, match="beta=0.1"):
        xlatda.cycle(ds.isel(time=200), obs, model, **dict(kw, beta=0.0))
    # the static part pulls the analysis toward the observations the 4 members miss
    truth = ds.x.sel(time=a.analysis.time)
    err_h = float(np.sqrt(((a.analysis.x.mean("member") - truth) ** 2).mean()))
    pure = xlatda.cycle(ds.isel(time=200), obs, model, **dict(kw, beta=0.0))
    err_p = float(np.sqrt(((pure.analysis.x.mean("member") - truth) ** 2).mean()))
    assert err_h < err_p


def test_cycle_hybrid_needs_a_latent_prior():
    ds, model, obs = _latent_case()
    with pytest.raises(ConfigError, match="latent prior"):
        xlatda.cycle(ds.isel(time=200), obs, _without_prior(model), method="4denvar",
                     members=4, init_std=1.0, window=3, progress=False, beta=0.3)
    phys = xlatda.datasets.lorenz96(n=8, steps=40, seed=0)
    pobs = xlatda.obs.sample_points(phys.isel(time=slice(21, 25)), n=4, error_std=0.5, seed=1)
    with pytest.raises(ConfigError, match="latent space"):
        xlatda.cycle(phys.isel(time=20), pobs, xlatda.dynamics.Lorenz96(8), method="4denvar",
                     members=6, init_std=1.0, window=2, progress=False, beta=0.3)


def _without_prior(model):
    import dataclasses

    return dataclasses.replace(model, prior=None)
