"""The regime shift of the latent mean carried in latent cycles (xlatda.methods.regime)."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.methods.regime import check_regime, initial_regime, regime_decay, resolve_regime
from xlatda.spaces import LatentSpace

F64 = torch.float64


@functools.lru_cache(maxsize=2)
def _twin(clocked: bool):
    """PCA-6 + linear dynamics of Lorenz-96 (n = 8); hourly datetimes when ``clocked``."""
    truth = xlatda.datasets.lorenz96(n=8, steps=120, seed=0)
    if clocked:
        truth = truth.assign_coords(time=pd.date_range("2019-03-01", periods=truth.sizes["time"],
                                                       freq="h"))
    model = xlatda.fit(truth.isel(time=slice(0, 80)), encoder="pca", latent_dim=6,
                       dynamics="linear", uncertainty="diagonal", progress=False)
    return truth, model


def _obs(truth, times, sigma=0.3, seed=0, sites=(0, 2, 4, 6)):
    rng = np.random.default_rng(seed)
    sites = list(sites)
    vals = truth.x.sel(time=times).values[:, sites] + rng.normal(0, sigma, (len(times),
                                                                           len(sites)))
    return xr.Dataset({"x": ("obs", vals.reshape(-1), {"error_std": sigma})},
                      coords={"k": ("obs", np.tile(np.asarray(sites, float), len(times))),
                              "time": ("obs", np.repeat(times, len(sites)))})


def test_check_regime_values():
    assert check_regime("auto") == "auto"
    assert check_regime(None) is None and check_regime(False) is None
    assert check_regime({"timescale": 3.0}) == {"variance": 0.5, "timescale": 3.0}
    for bad in ("yes", {"variance": -1.0}, {"timescale": 0.0}, {"other": 1.0}, 2.0):
        with pytest.raises(xlatda.XlatdaError, match="regime must be"):
            check_regime(bad)
    assert regime_decay(0.0, 0.0, 5.0) == 1.0
    assert regime_decay(3.0, 0.0, 3.0) == pytest.approx(np.exp(-1.0))


def test_initial_regime_is_centred_with_the_right_covariance():
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=F64)
    m = initial_regime(cov, 20000, torch.Generator().manual_seed(0))
    torch.testing.assert_close(m.mean(0), torch.zeros(2, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(torch.cov(m.T), cov, atol=0.05, rtol=0)


def test_auto_needs_a_clock_and_explicit_needs_a_timescale():
    _, model = _twin(False)
    sp = LatentSpace(model)
    assert resolve_regime("auto", sp) is None  # model time: off unless asked
    with pytest.raises(xlatda.XlatdaError, match="timescale"):
        resolve_regime({"variance": 0.5}, sp)
    cov, tau = resolve_regime({"variance": 0.25, "timescale": 7.0}, sp)
    torch.testing.assert_close(cov, 0.25 * model.prior.covariance().dense().to(F64))
    assert tau == 7.0
    _, clocked = _twin(True)
    cov, tau = resolve_regime("auto", LatentSpace(clocked))
    assert tau == 2 * 86400.0 and cov.shape == (6, 6)


def test_forecast_evolves_the_anomaly_about_the_shifted_mean():
    """No noise: z' = F(z - m) + m and m' = ρ m; with noise and a spanning ensemble the
    covariance is exactly M P Mᵀ + blockdiag(Q(τ), (1 - ρ²) C_m)."""
    _, model = _twin(False)
    sp = LatentSpace(model)
    cov, _ = resolve_regime({"variance": 0.5, "timescale": 4.0}, sp)
    sp.enable_regime(cov, 4.0)
    assert sp.n_params == 6 and sp.n_regime == 6
    assert sp.default_members() == max(20, 2 * 6 + 1)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(30, 12, generator=g, dtype=F64)
    t1 = 3 * model.time_step["value"]
    out = sp.forecast(s, 0.0, t1, generator=g, noise=False)
    plain = LatentSpace(model).forecast(s[:, :6] - s[:, 6:], 0.0, t1, generator=g, noise=False)
    rho = np.exp(-t1 / 4.0)
    torch.testing.assert_close(out[:, :6], plain + s[:, 6:])
    torch.testing.assert_close(out[:, 6:], rho * s[:, 6:])
    noisy = sp.forecast(s, 0.0, t1, generator=g, noise=True)
    torch.testing.assert_close(noisy.mean(0), out.mean(0))
    joint = torch.zeros(12, 12, dtype=F64)
    joint[:6, :6] = sp._forecast_error(3.0)
    joint[6:, 6:] = (1 - rho**2) * cov
    torch.testing.assert_close(torch.cov(noisy.T), torch.cov(out.T) + joint)


def test_default_is_off_without_a_clock_and_unchanged():
    truth, model = _twin(False)
    obs = _obs(truth, truth.time.values[80:100])
    kw = dict(method="etkf", seed=1, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = xlatda.cycle(truth.isel(time=[79]), obs, model, **kw)
        b = xlatda.cycle(truth.isel(time=[79]), obs, model, regime=None, **kw)
    np.testing.assert_array_equal(a.analysis.x.values, b.analysis.x.values)
    assert a.analysis.sizes["member"] == 20  # max(20, d + 1): no regime block


def _ar1(steps: int, shift: float, seed: int) -> xr.Dataset:
    """A smooth AR(1) field on 8 sites (coefficient 0.9, unit variance) about ``shift``."""
    rng = np.random.default_rng(seed)
    k = np.arange(8.0)
    dist = np.minimum(np.abs(k[:, None] - k), 8 - np.abs(k[:, None] - k))
    root = np.exp(-(dist / 1.5) ** 2)  # smoothing: noise covariance root rootᵀ
    root /= np.sqrt((root**2).sum(1, keepdims=True))
    x = np.zeros((steps, 8))
    for t in range(1, steps):
        x[t] = 0.9 * x[t - 1] + np.sqrt(1 - 0.81) * root @ rng.normal(size=8)
    return xr.Dataset({"x": (("time", "k"), x + shift)},
                      coords={"time": np.arange(steps, dtype=float), "k": k})


def test_regime_follows_a_shifted_climate():
    """A linear-Gaussian field whose mean moves by 1.5 standard deviations after
    training: a regime the training period never saw. Carrying the regime shift, the
    filter follows it on every site; without it the fitted dynamics pull every
    forecast back to the training mean, and the sites not observed stay there."""
    train = _ar1(400, 0.0, 0)
    model = xlatda.fit(train, encoder="pca", latent_dim=6, dynamics="linear",
                       uncertainty="diagonal", progress=False)
    truth = _ar1(60, 1.5, 1).assign_coords(time=np.arange(400.0, 460.0))
    times = truth.time.values[1:]
    obs = _obs(truth, times, sites=(0, 4))
    kw = dict(method="etkf", seed=0, progress=False)
    errs = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, extra in (("off", {}), ("on", {"regime": {"variance": 1.0,
                                                               "timescale": 50.0}})):
            res = xlatda.cycle(train.isel(time=[-1]).assign_coords(time=[400.0]), obs, model,
                               **extra, **kw)
            err = res.analysis.x.mean("member") - truth.x.sel(time=times)
            errs[name] = float(np.sqrt((err**2).isel(time=slice(20, None)).mean()))
    assert errs["on"] < 0.8 * errs["off"], errs


def test_clocked_default_is_on_bit_identical_and_resumes(tmp_path):
    from xlatda.methods.inflation import cycle_defaults

    assert cycle_defaults("etkf", space="latent")["regime"] == "auto"
    assert "regime" not in cycle_defaults("etkf", {"inflation": 1.05}, space="latent")
    truth, model = _twin(True)
    obs = _obs(truth, truth.time.values[80:100:2])
    bg = truth.isel(time=[79])
    kw = dict(method="etkf", seed=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = xlatda.cycle(bg, obs, model, **kw)
        off = xlatda.cycle(bg, obs, model, regime=None, **kw)
        assert not np.array_equal(off.analysis.x.values, full.analysis.x.values)
        again = xlatda.cycle(bg, obs, model, **kw)
        np.testing.assert_array_equal(again.analysis.x.values, full.analysis.x.values)
        shift = full.diagnostics.regime_shift.values
        assert np.all(np.isfinite(shift)) and np.all(shift >= 0) and shift.max() > 0
        assert "regime_shift" not in off.diagnostics
        store = tmp_path / "run.zarr"
        first = obs.where(obs.time <= truth.time.values[89], drop=True)
        xlatda.cycle(bg, first, model, store=store, **kw)
        resumed = xlatda.cycle(bg, obs, model, store=store, **kw)
    np.testing.assert_array_equal(resumed.analysis.x.values, full.analysis.x.values)


def test_4denvar_and_parameters_carry_the_regime_before_theta():
    truth, model = _twin(True)
    obs = _obs(truth, truth.time.values[80:92:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = xlatda.cycle(truth.isel(time=[79]), obs, model, method="4denvar", window=2,
                           seed=0, progress=False)
        assert np.isfinite(res.analysis.x.values).all()
        par = xlatda.cycle(truth.isel(time=[79]), obs, model, method="etkf", seed=0,
                           progress=False, params={"c": (2.0, 0.5)})
    theta = par.parameters.theta
    assert theta.sizes["param"] == 1
    # the parameter is the last entry: carried unchanged by the forecast, its
    # background mean equals the previous analysis mean
    np.testing.assert_allclose(par.parameters.theta_background.mean("member").values[1:, 0],
                               theta.mean("member").values[:-1, 0], atol=1e-12)


def test_bad_regime_refused_before_work():
    truth, model = _twin(False)
    obs = _obs(truth, truth.time.values[80:84])
    with pytest.raises(xlatda.XlatdaError, match="regime must be"):
        xlatda.cycle(truth.isel(time=[79]), obs, model, method="etkf", regime="on",
                     progress=False)
    with pytest.raises(xlatda.XlatdaError, match="timescale"):
        xlatda.cycle(truth.isel(time=[79]), obs, model, method="etkf",
                     regime={"variance": 0.5}, progress=False)
    with pytest.raises(xlatda.XlatdaError, match="regime"):
        xlatda.cycle(truth.isel(time=[79]), obs, model, method="3dvar", regime="auto",
                     progress=False)
    from xlatda.dynamics import Lorenz96

    with pytest.raises(xlatda.XlatdaError, match="physical space"):
        xlatda.cycle(truth.isel(time=79), obs, Lorenz96(n=8), method="etkf", members=10,
                     init_std=1.0, progress=False, regime={"variance": 0.5, "timescale": 1.0})
