"""Adaptive inflation (Miyoshi 2011): closed form, unbiasedness, state, Lorenz-96 skill."""

from __future__ import annotations

import math

import pytest
import torch

from xlatda.dynamics.physical import Lorenz96
from xlatda.errors import ConfigError
from xlatda.methods.ensemble import ETKF, EnKF
from xlatda.methods.inflation import (
    DEFAULT_CYCLE_INFLATION,
    adaptive_inflation,
    check_inflation,
    cycle_defaults,
)
from xlatda.methods.letkf import LETKF
from xlatda.methods.localization import IndexDistance

F64 = torch.float64


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_closed_form_one_observation():
    # one observation: G = s^2, d^T d = d^2, p = 1
    S0 = torch.tensor([[0.6], [-0.6]], dtype=F64)  # tr G = 0.72, ||G||_F^2 = 0.72^2
    d = torch.tensor([1.5], dtype=F64)
    rho_b, var_b = 1.2, 0.05
    tr = 0.72
    rho_o = (1.5**2 - 1.0) / tr
    var_o = 2.0 * (1.0 + 2.0 * rho_b * tr + rho_b**2 * tr**2) / tr**2
    expected = (var_o * rho_b + var_b * rho_o) / (var_b + var_o)
    mean, var = adaptive_inflation(S0, d, 1.0, torch.tensor(rho_b, dtype=F64), var_b)
    assert math.isclose(float(mean), expected, rel_tol=1e-12)
    assert math.isclose(float(var), var_b * var_o / (var_b + var_o), rel_tol=1e-12)


def test_bounds_and_uninformative_analyses():
    S0 = torch.zeros(2, 5, 3, dtype=F64)
    d = torch.zeros(2, 3, dtype=F64)
    mean, var = adaptive_inflation(S0, d, 3.0, torch.tensor(1.3, dtype=F64), 0.1)
    assert mean.tolist() == [1.3, 1.3] and var.tolist() == [0.1, 0.1]  # nothing observed
    S0 = torch.full((4, 2), 0.5, dtype=F64) * torch.tensor([[1.0], [-1.0], [1.0], [-1.0]])
    mean, _ = adaptive_inflation(S0, torch.zeros(2, dtype=F64), 2.0, torch.tensor(1.0), 10.0)
    assert float(mean) == 1.0  # no deflation below 1
    big = torch.full((2,), 1e3, dtype=F64)
    mean, _ = adaptive_inflation(S0, big, 2.0, torch.tensor(1.0), 10.0, max_inflation=2.0)
    assert float(mean) == 4.0  # capped at max_inflation**2


def test_estimate_recovers_a_known_variance_deficit():
    """Truth drawn with rho_true times the ensemble covariance; broad prior: mean ~ rho_true."""
    g = torch.Generator().manual_seed(0)
    batch, n_members, n, p, rho_true = 4000, 20, 30, 30, 3.0
    ens = torch.randn(batch, n_members, n, generator=g, dtype=F64)
    mean = ens.mean(-2)
    A = (ens - mean.unsqueeze(-2)) / math.sqrt(n_members - 1)
    xi = torch.randn(batch, n_members, generator=g, dtype=F64)
    truth = mean + math.sqrt(rho_true) * (xi.unsqueeze(-2) @ A).squeeze(-2)
    r = 0.5
    y = truth + r * torch.randn(batch, p, generator=g, dtype=F64)
    _, diag, state = ETKF(inflation="adaptive", inflation_var=1e6, gross_error=None).step(
        ens, ens, y, r
    )
    est = state["inflation_mean"]
    assert est.shape == (batch,)
    assert abs(float(est.mean()) - rho_true) < 0.1, float(est.mean())
    torch.testing.assert_close(diag["inflation"], est.sqrt())


def test_state_is_carried_and_analyse_starts_from_the_prior():
    g = torch.Generator().manual_seed(1)
    ens = torch.randn(10, 8, generator=g, dtype=F64)
    y = 2.0 + torch.randn(8, generator=g, dtype=F64)
    r = torch.ones(8, dtype=F64)
    m = ETKF(inflation="adaptive")
    a1, _, s1 = m.step(ens, ens, y, r)
    torch.testing.assert_close(a1, m.analyse(ens, ens, y, r))
    a2, _, s2 = m.step(ens, ens, y, r, state=s1)
    assert float(s2["inflation_mean"]) > float(s1["inflation_mean"]) > 1.0
    assert not torch.equal(a1, a2)
    # a resumed state gives the same analysis
    again, _, s3 = m.step(ens, ens, y, r, state={k: v.clone() for k, v in s1.items()})
    assert torch.equal(again, a2) and torch.equal(s3["inflation_mean"], s2["inflation_mean"])


def test_settings():
    check_inflation(DEFAULT_CYCLE_INFLATION)
    for bad in (0.0, -1.0, math.inf, "auto", True):
        with pytest.raises(ConfigError, match="inflation"):
            ETKF(inflation=bad)
    with pytest.raises(ConfigError, match="inflation_var"):
        ETKF(inflation="adaptive", inflation_var=0.0)
    with pytest.raises(ConfigError, match="max_inflation"):
        ETKF(max_inflation=0.5)
    assert cycle_defaults("ETKF") == {"inflation": "adaptive"}
    assert cycle_defaults("letkf", {"radius": 4.0})["rtps"] == 0.3
    assert cycle_defaults("letkf", {"inflation": 1.04}) == {"inflation": 1.04}
    assert cycle_defaults("3dvar", {"b_std": 1.0}) == {"b_std": 1.0}


def _twin(method, n_members, cycles, *, forcing_model=8.0, seed=0, burn=100, n_obs=None):
    """Lorenz-96 twin (truth F = 8): analysis RMSE and spread/RMSE over the scored cycles."""
    truth_model = Lorenz96(n=40, forcing=8.0)
    model = Lorenz96(n=40, forcing=forcing_model)
    g = torch.Generator().manual_seed(seed)
    truth = 8.0 + torch.randn(40, generator=g, dtype=F64)
    for _ in range(200):
        truth = truth_model.step(truth)
    ens = truth + torch.randn(n_members, 40, generator=g, dtype=F64)
    r = torch.ones(40, dtype=F64)
    loc = IndexDistance(40)
    state, err, spread = None, [], []
    for k in range(cycles):
        truth = truth_model.step(truth)
        ens = model.step(ens)
        y = truth + torch.randn(40, generator=g, dtype=F64)
        ens, _, state = method.step(ens, ens, y, r, generator=g, locations=loc, state=state)
        if k >= burn:
            err.append(float((ens.mean(0) - truth).square().mean().sqrt()))
            spread.append(float(ens.var(0).mean().sqrt()))
    rmse = sum(err) / len(err)
    return rmse, sum(spread) / len(spread) / rmse


@pytest.mark.parametrize(
    ("method", "n_members", "bound"),
    [(ETKF(inflation="adaptive"), 30, 0.25), (EnKF(inflation="adaptive"), 30, 0.4),
     (LETKF(inflation="adaptive", rtps=0.3, radius=4.0), 8, 0.3)],
)
def test_lorenz96_adaptive_is_skilful_and_calibrated(one_thread, method, n_members, bound):
    rmse, ratio = _twin(method, n_members, 300)
    assert rmse < bound, rmse  # tuned fixed inflation: about 0.18-0.22
    assert 0.6 < ratio < 1.6, ratio


def test_lorenz96_adaptive_survives_an_imperfect_model(one_thread):
    """Forecast with F = 8.5, truth F = 8: tuned fixed inflation diverges, adaptive does not."""
    fixed, _ = _twin(ETKF(inflation=1.02), 30, 300, forcing_model=8.5, seed=1)
    adaptive, ratio = _twin(ETKF(inflation="adaptive"), 30, 300, forcing_model=8.5, seed=1)
    assert adaptive < 0.45 and adaptive < fixed, (adaptive, fixed)
    assert 0.6 < ratio < 1.6, ratio
