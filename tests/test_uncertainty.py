"""Tests of xlatda.uncertainty: model-error covariance fits and residuals."""

from __future__ import annotations

import json

import pytest
import torch
from torch.distributions import MultivariateNormal

from xlatda.dynamics.latent_ode import LatentODE
from xlatda.dynamics.physical import CallableModel, Lorenz96
from xlatda.errors import ConfigError, ShapeError
from xlatda.uncertainty import ModelError, fit_model_error, residuals

F64 = torch.float64
M = 20000


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def full_cov(d: int = 4) -> torch.Tensor:
    B = torch.randn(d, d, dtype=F64, generator=gen(3))
    return B @ B.mT / d + 0.2 * torch.eye(d, dtype=F64)


def draw(cov: torch.Tensor, n: int = M, seed: int = 0) -> torch.Tensor:
    L = torch.linalg.cholesky(cov)
    return torch.randn(n, cov.shape[0], dtype=F64, generator=gen(seed)) @ L.mT


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


# --------------------------------------------------------------------------
# recovery of known covariances
# --------------------------------------------------------------------------


def test_scalar_recovery():
    r = draw(0.09 * torch.eye(5, dtype=F64))
    q = fit_model_error(r, kind="scalar")
    assert q.covariance()[0, 0].item() == pytest.approx(0.09, rel=0.02)
    torch.testing.assert_close(q.covariance(), q.covariance()[0, 0] * torch.eye(5, dtype=F64))


def test_diagonal_recovery():
    std = torch.tensor([0.05, 0.2, 1.0, 3.0], dtype=F64)
    q = fit_model_error(draw(torch.diag(std**2)), kind="diagonal")
    torch.testing.assert_close(q.scale_tril().diagonal(), std, rtol=0.02, atol=0)
    assert torch.count_nonzero(q.covariance() - torch.diag(q.covariance().diagonal())) == 0


def test_cholesky_recovery():
    cov = full_cov()
    q = fit_model_error(draw(cov), kind="cholesky")
    assert rel(q.covariance(), cov) < 0.03
    L = q.scale_tril()
    assert torch.equal(L, L.tril()) and bool((L.diagonal() > 0).all())


@pytest.mark.parametrize(
    ("kind", "solver", "iterations", "lr"),
    [
        ("scalar", "adam", 400, 0.05),
        ("diagonal", "adam", 400, 0.05),
        ("diagonal", "lbfgs", 100, 1.0),
        ("cholesky", "adam", 1500, 0.01),
        ("cholesky", "lbfgs", 200, 1.0),
    ],
)
def test_optimiser_agrees_with_closed_form(kind, solver, iterations, lr):
    cov = (
        full_cov(3) if kind == "cholesky" else torch.diag(torch.tensor([0.3, 1.0, 2.0], dtype=F64))
    )
    r = draw(cov, n=5000)
    closed = fit_model_error(r, kind=kind)
    opt = fit_model_error(r, kind=kind, solver=solver, iterations=iterations, lr=lr)
    assert rel(opt.covariance(), closed.covariance()) < 2e-3
    # the closed form is the minimum of the objective
    assert float(closed.nll(r)) <= float(opt.nll(r)) + 1e-6


def test_l1_shrinks_off_diagonals():
    cov = torch.eye(4, dtype=F64)
    cov[0, 1] = cov[1, 0] = 0.6  # one true correlation, the rest zero
    r = draw(cov, n=2000, seed=5)
    free = fit_model_error(r, kind="cholesky").scale_tril()
    sparse = fit_model_error(r, kind="cholesky", l1=0.05, iterations=1500, lr=0.01).scale_tril()
    mask = torch.ones(4, 4, dtype=torch.bool).tril(-1)
    mask[1, 0] = False  # entries that are zero in the truth
    assert sparse[mask].abs().sum() < 0.5 * free[mask].abs().sum()
    assert sparse[1, 0].item() > 0.4  # the real correlation survives


def test_minibatch_adam_close():
    r = draw(torch.diag(torch.tensor([0.5, 2.0], dtype=F64)), n=5000)
    q = fit_model_error(r, kind="diagonal", solver="adam", iterations=800, lr=0.02, batch_size=512)
    torch.testing.assert_close(q.covariance().diagonal(), r.pow(2).mean(0), rtol=0.05, atol=0)


# --------------------------------------------------------------------------
# the distribution object
# --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "cholesky"])
def test_samples_have_the_covariance(kind):
    cov = {
        "scalar": 0.4 * torch.eye(3, dtype=F64),
        "diagonal": torch.diag(torch.tensor([0.1, 1.0, 4.0], dtype=F64)),
        "cholesky": full_cov(3),
    }[kind]
    q = ModelError.from_covariance(cov, kind=kind)
    torch.testing.assert_close(q.covariance(), cov)
    eps = q.sample((50000, 2), generator=gen(1))
    assert eps.shape == (50000, 2, 3)
    flat = eps.reshape(-1, 3)
    emp = flat.mT @ flat / flat.shape[0]
    assert rel(emp, cov) < 0.02
    torch.testing.assert_close(flat.mean(0), torch.zeros(3, dtype=F64), atol=0.02, rtol=0)
    # the generator makes draws reproducible
    assert torch.equal(q.sample(4, generator=gen(2)), q.sample(4, generator=gen(2)))


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "cholesky"])
def test_log_prob_matches_torch_distribution(kind):
    q = fit_model_error(draw(full_cov(4), n=500), kind=kind)
    r = torch.randn(7, 3, 4, dtype=F64, generator=gen(9))
    ref = MultivariateNormal(torch.zeros(4, dtype=F64), scale_tril=q.scale_tril()).log_prob(r)
    torch.testing.assert_close(q.log_prob(r), ref, atol=1e-12, rtol=1e-12)
    assert q.log_prob(r).shape == (7, 3)
    # nll is the mean negative log-likelihood up to the constant d/2 log(2 pi)
    flat = r.reshape(-1, 4)
    const = 2.0 * torch.log(torch.tensor(2.0 * torch.pi, dtype=F64))
    torch.testing.assert_close(q.nll(flat), -q.log_prob(flat).mean() - const)


@pytest.mark.parametrize("kind", ["scalar", "diagonal", "cholesky"])
def test_config_round_trip_bit_exact(kind):
    q = fit_model_error(draw(full_cov(3), n=300), kind=kind)
    config = json.loads(json.dumps(q.config))
    rebuilt = type(q)(**config)
    rebuilt.load_state_dict(q.state_dict())
    assert torch.equal(rebuilt.scale_tril(), q.scale_tril())
    assert torch.equal(rebuilt.covariance(), q.covariance())
    r = torch.randn(5, 3, dtype=F64)
    assert torch.equal(rebuilt.log_prob(r), q.log_prob(r))


def test_fitted_model_error_is_frozen_and_float32_default():
    q = fit_model_error(torch.randn(100, 3), kind="diagonal")
    assert q.covariance().dtype == torch.float32 and not q.covariance().requires_grad
    assert not any(p.requires_grad for p in q.parameters())


def test_errors():
    r = torch.randn(10, 3)
    with pytest.raises(ConfigError, match="unknown model-error kind"):
        fit_model_error(r, kind="full")
    with pytest.raises(ConfigError, match="kind='cholesky'"):
        fit_model_error(r, kind="diagonal", l1=0.1)
    with pytest.raises(ConfigError, match="no closed form"):
        fit_model_error(r, kind="cholesky", l1=0.1, solver="closed_form")
    with pytest.raises(ShapeError, match=r"\(M, d\)"):
        fit_model_error(torch.randn(10))
    with pytest.raises(ShapeError, match="NaN"):
        fit_model_error(torch.full((4, 2), float("nan")))
    with pytest.raises(ShapeError, match=r"\(\*batch, 3\)"):
        ModelError(3).log_prob(torch.zeros(2, 4))


# --------------------------------------------------------------------------
# residuals
# --------------------------------------------------------------------------


def test_residuals_of_the_true_model_vanish_and_pairs_stay_in_trajectories():
    l96 = Lorenz96(n=8, dt=0.05)
    x0 = 8.0 + torch.randn(3, 8, dtype=F64, generator=gen(0))
    traj = l96.integrate(x0, steps=10)
    r = residuals(l96, traj)
    assert r.shape == (3 * 10, 8)
    torch.testing.assert_close(r, torch.zeros_like(r), atol=1e-12, rtol=0)
    # ragged list: the pair (last of traj 0, first of traj 1) is never formed
    r = residuals(l96, [traj[0, :4], traj[1], traj[2, :1]])
    assert r.shape == (3 + 10, 8)
    torch.testing.assert_close(r, torch.zeros_like(r), atol=1e-12, rtol=0)


def test_residuals_batched_equal_looped_with_theta_and_times():
    model = LatentODE(3, n_params=1, width=8, depth=1, dtype=F64, seed=0)
    z = torch.randn(4, 6, 3, dtype=F64, generator=gen(0))
    theta = torch.randn(4, 1, dtype=F64, generator=gen(1))
    times = torch.tensor([0.0, 1.0, 2.0, 2.5, 3.0, 4.5], dtype=F64)
    r = residuals(model, z, times=times, theta=theta, batch_size=5)
    looped = []
    for i in range(4):
        for k in range(5):
            dt = float(times[k + 1] - times[k])
            looped.append(model.step(z[i, k], dt, theta[i]) - z[i, k + 1])
    torch.testing.assert_close(r, torch.stack(looped).detach(), atol=1e-13, rtol=0)
    assert not r.requires_grad


def test_residuals_default_step_and_errors():
    decay = CallableModel(lambda x, dt, theta: x * (1 - dt), state_shape=(2,), dt=0.5)
    z = torch.tensor([[[4.0, 2.0], [2.0, 1.0], [1.0, 1.0]]])
    torch.testing.assert_close(residuals(decay, z), torch.tensor([[0.0, 0.0], [0.0, -0.5]]))
    with pytest.raises(ShapeError, match="theta"):
        residuals(decay, z, theta=torch.zeros(2, 1))
    with pytest.raises(ShapeError, match="two snapshots"):
        residuals(decay, [z[0, :1]])
