"""Adaptive additive inflation shaped like the codes' tendencies (xlatda.methods.additive)."""

from __future__ import annotations

import copy
import functools
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.errors import FilterDivergenceWarning
from xlatda.methods.additive import additive_scale, tendency_root, with_tendency_error
from xlatda.uncertainty import ModelError, tendency_covariances

F64 = torch.float64


def test_tendency_covariances_of_an_ar1_process():
    """AR(1) with coefficient a and unit stationary variance: cov(z_{k+τ} - z_k) = 2 (1 - a^τ)."""
    from scipy.signal import lfilter

    a, n = 0.8, 100_000
    eps = np.random.default_rng(0).normal(0.0, (1 - a * a) ** 0.5, n)
    z = torch.as_tensor(lfilter([1.0], [1.0, -a], eps))[:, None]
    lags, cov = tendency_covariances(z[None], (1, 3, 6))
    assert lags == (1.0, 3.0, 6.0)
    expect = [2 * (1 - a**t) for t in lags]
    np.testing.assert_allclose(cov[:, 0, 0].numpy(), expect, rtol=0.03)


def test_tendency_covariances_drop_lags_longer_than_half_the_record():
    z = torch.zeros(2, 10, 3, dtype=F64)
    lags, cov = tendency_covariances(z, (1, 5, 6, 24))
    assert lags == (1.0, 5.0) and cov.shape == (2, 3, 3)
    with pytest.raises(xlatda.XlatdaError, match="trajectories must be"):
        tendency_covariances(torch.zeros(10, 3))


def test_model_error_interpolates_and_round_trips(tmp_path):
    q = ModelError(2, dtype="float64")
    assert q.tendency_covariance(3.0) is None
    covs = torch.stack([torch.eye(2, dtype=F64), 4 * torch.eye(2, dtype=F64)])
    q.set_tendency((2, 6), covs)
    assert float(q.tendency_covariance(1.0)[0, 0]) == 0.5
    assert float(q.tendency_covariance(4.0)[0, 0]) == 2.5
    assert float(q.tendency_covariance(60.0)[0, 0]) == 4.0
    again = ModelError(**q.config)
    again.load_state_dict(q.state_dict())
    assert torch.equal(again.tendency, q.tendency) and again.tendency_lags == (2.0, 6.0)
    with pytest.raises(xlatda.XlatdaError, match="increasing"):
        q.set_tendency((6, 2), covs)


def test_additive_scale_closed_form_and_bounds():
    hx = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=F64)  # observed variance 2 + 2
    r = torch.ones(2, dtype=F64)
    g = torch.eye(2, dtype=F64)
    prior = torch.tensor(1.0, dtype=F64)
    # d'd = 18: lambda_o = (18 - 4 - 2) / 2 = 6; 0.9 * 1 + 0.1 * 6 = 1.5
    d = torch.tensor([3.0, 3.0], dtype=F64)
    assert float(additive_scale(d, hx, r, g, prior)) == pytest.approx(1.5)
    # innovations smaller than spread + R: the estimate falls, never below 0
    small = additive_scale(torch.zeros(2, dtype=F64), hx, r, g, torch.tensor(0.0, dtype=F64))
    assert float(small) == 0.0
    huge = additive_scale(100 * d, hx, r, g, prior)
    assert float(huge) == 4.0
    # nothing observed of T: the prior is kept
    assert float(additive_scale(d, hx, r, 0 * g, prior)) == 1.0


class _LinearSpace:
    """Observe the first two of three state entries (a stand-in for a latent space)."""

    def __init__(self):
        self.H = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=F64)

    def observe(self, s, table):
        return s @ self.H.T


def test_with_tendency_error_adds_lambda_t_exactly():
    """With N - 1 >= n the square-root addition is exact: same mean, covariance + λ T."""
    g = torch.Generator().manual_seed(1)
    ens = torch.randn(12, 3, generator=g, dtype=F64)
    T = torch.tensor([[2.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 0.5]], dtype=F64)
    space = _LinearSpace()
    hx = space.observe(ens, None)
    r = torch.full((2,), 0.5, dtype=F64)
    y = hx.mean(0) + torch.tensor([4.0, -3.0], dtype=F64)  # large innovation
    prior = torch.tensor(0.5, dtype=F64)
    out, hx2, lam = with_tendency_error(space, ens, hx, y, r, None, T, prior, generator=g)
    d = y - hx.mean(0)
    hth = torch.trace(space.H @ T @ space.H.T)
    expect = 0.9 * 0.5 + 0.1 * (d @ d - hx.var(0).sum() - (r**2).sum()) / hth
    assert float(lam) == pytest.approx(float(expect.clamp(0, 4)))
    torch.testing.assert_close(out.mean(0), ens.mean(0))
    torch.testing.assert_close(torch.cov(out.T), torch.cov(ens.T) + lam * T)
    torch.testing.assert_close(hx2, space.observe(out, None))


def test_tendency_root():
    c = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=F64)  # rank one
    root = tendency_root(c)
    assert root.shape == (1, 2)
    torch.testing.assert_close(root.T @ root, c)


@functools.lru_cache(maxsize=1)
def _latent_twin():
    truth = xlatda.datasets.lorenz96(n=8, steps=60, seed=0)
    model = xlatda.fit(truth.isel(time=slice(0, 40)), encoder="pca", latent_dim=6,
                       dynamics="linear", uncertainty="diagonal", progress=False)
    rng = np.random.default_rng(0)
    t = truth.time.values[40:60]
    vals = truth.x.sel(time=t).values[:, ::2] + rng.normal(0, 0.3, (len(t), 4))
    obs = xr.Dataset({"x": ("obs", vals.reshape(-1), {"error_std": 0.3})},
                     coords={"k": ("obs", np.tile(np.arange(0.0, 8, 2), len(t))),
                             "time": ("obs", np.repeat(t, 4))})
    return truth, model, obs


def test_latent_cycle_default_estimates_the_scale_and_resumes(tmp_path):
    from xlatda.methods.inflation import cycle_defaults

    assert cycle_defaults("etkf", space="latent")["additive"] == "adaptive"
    assert "additive" not in cycle_defaults("etkf")
    assert "additive" not in cycle_defaults("etkf", {"inflation": 1.05}, space="latent")
    truth, model, obs = _latent_twin()
    assert model.model_error.tendency_lags  # fit stored the tendency statistics
    assert model.history["model_error"]["tendency_lags"] == list(model.model_error.tendency_lags)
    bg = truth.isel(time=[39])
    kw = dict(method="etkf", seed=3, progress=False)
    full = xlatda.cycle(bg, obs, model, **kw)
    lam = full.diagnostics.additive_scale.values
    assert lam[0] == 0.0 and np.all(lam >= 0) and np.all(lam <= 4)
    off = xlatda.cycle(bg, obs, model, additive=None, **kw)
    assert "additive_scale" not in off.diagnostics
    assert np.any(lam > 0)  # this twin's Q misses part of its errors ...
    assert not np.array_equal(off.analysis.x.values, full.analysis.x.values)  # ... and it shows
    again = xlatda.cycle(bg, obs, model, **kw)
    np.testing.assert_array_equal(again.analysis.x.values, full.analysis.x.values)
    store = tmp_path / "run.zarr"
    first = obs.where(obs.time <= truth.time.values[49], drop=True)
    xlatda.cycle(bg, first, model, store=store, **kw)
    resumed = xlatda.cycle(bg, obs, model, store=store, **kw)
    np.testing.assert_array_equal(resumed.analysis.x.values, full.analysis.x.values)
    np.testing.assert_array_equal(resumed.diagnostics.additive_scale.values, lam)


def test_too_small_q_is_made_up_for():
    """With its Q shrunk a hundredfold the model under-predicts its errors: the scale
    rises above zero and the spread grows."""
    truth, model, obs = _latent_twin()
    model = copy.deepcopy(model)
    q = model.model_error
    with torch.no_grad():
        q.log_scale.sub_(np.log(10.0))
    with pytest.warns(FilterDivergenceWarning):  # without it the monitor sees the misfit
        off = xlatda.cycle(truth.isel(time=[39]), obs, model, method="etkf", seed=0,
                           progress=False, additive=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FilterDivergenceWarning)
        res = xlatda.cycle(truth.isel(time=[39]), obs, model, method="etkf", seed=0,
                           progress=False)
    assert float(res.diagnostics.additive_scale[-1]) > 0.05
    assert float(res.analysis.x.std("member").mean()) > float(off.analysis.x.std("member").mean())


def test_bad_setting_refused_before_work():
    truth, model, obs = _latent_twin()
    with pytest.raises(xlatda.XlatdaError, match="additive must be 'adaptive'"):
        xlatda.cycle(truth.isel(time=[39]), obs, model, method="etkf", additive="yes",
                     progress=False)


def test_saved_model_keeps_its_tendency_statistics(tmp_path):
    import pickle

    _, model, _ = _latent_twin()
    model.save(tmp_path / "m.zarr")
    back = xlatda.open_model(tmp_path / "m.zarr")
    for other in (back, pickle.loads(pickle.dumps(model))):
        assert other.model_error.tendency_lags == model.model_error.tendency_lags
        assert torch.equal(other.model_error.tendency, model.model_error.tendency)


def test_explicit_additive_without_tendency_statistics_is_refused():
    """Asked for explicitly, the additive inflation must not be a silent no-op: a model
    without tendency statistics (or physical space) is refused before work."""
    from xlatda.dynamics import Lorenz96

    truth, model, obs = _latent_twin()
    bare = copy.deepcopy(model)
    bare.model_error.tendency_lags = ()
    with pytest.raises(xlatda.XlatdaError, match="tendency statistics"):
        xlatda.cycle(truth.isel(time=[39]), obs, bare, method="etkf", additive="adaptive",
                     progress=False)
    with warnings.catch_warnings():  # the default quietly does without them
        warnings.simplefilter("ignore")
        res = xlatda.cycle(truth.isel(time=[39]), obs, bare, method="etkf", progress=False)
    assert np.isfinite(res.analysis.x.values).all()
    with pytest.raises(xlatda.XlatdaError, match="tendency statistics"):
        xlatda.cycle(truth.isel(time=39), obs, Lorenz96(n=8), method="etkf", members=10,
                     init_std=1.0, additive="adaptive", progress=False)
