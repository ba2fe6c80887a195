"""4DEnVar / LEVDA: exactness in the linear-Gaussian case, gradients, nonlinear skill."""

from __future__ import annotations

import math

import pytest
import torch

from xlatda.dynamics.physical import Lorenz63, Lorenz96
from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.envar4d import EnVar4D, envar4d_cost
from xlatda.methods.registry import get_method

F64 = torch.float64


def window_operator(g: torch.Generator, n: int, steps: int, rotation: float, noise: float):
    """``(G (P, n), r_std (P,))``: the stacked operator of 2 observed components at each
    of ``steps`` steps of ``M = rotation Q + noise N(0, 1)`` (Q orthogonal)."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    model = rotation * q + noise * torch.randn(n, n, generator=g, dtype=F64)
    h = torch.randn(2, n, generator=g, dtype=F64)
    blocks, m_k = [], torch.eye(n, dtype=F64)
    for _ in range(steps):
        m_k = model @ m_k
        blocks.append(h @ m_k)
    big_g = torch.cat(blocks)  # P = 2 * steps
    return big_g, 0.3 + torch.rand(big_g.shape[0], generator=g, dtype=F64)


def _linear_window(seed: int = 0, n: int = 4, n_members: int = 12, steps: int = 3):
    """Linear model M, observations of 2 components at every step of the window.

    Returns the stacked window operator G (P, n) with y = G s0 + noise, the
    prior ensemble (2, N, n), observations (2, P) and r_std (P,).
    """
    g = torch.Generator().manual_seed(seed)
    big_g, r = window_operator(g, n, steps, 0.95, 0.05)
    p = big_g.shape[0]
    a = torch.randn(n, n, generator=g, dtype=F64)
    ens = torch.randn(2, n_members, n, generator=g, dtype=F64) @ a.T + 1.0
    y = torch.randn(2, p, generator=g, dtype=F64) * 2.0
    return big_g, ens, y, r


def _kalman_smoother(big_g, ens, y, r, inflation=1.0):
    """BLUE on the stacked window with the ensemble's own mean and covariance."""
    mean = ens.mean(-2)
    anom = (ens - mean.unsqueeze(-2)) * inflation
    prior = anom.transpose(-1, -2) @ anom / (ens.shape[-2] - 1)
    s = big_g @ prior @ big_g.T + torch.diag(r**2)
    gain = prior @ big_g.T @ torch.linalg.inv(s)
    post_mean = mean + ((y - mean @ big_g.T).unsqueeze(-2) @ gain.transpose(-1, -2)).squeeze(-2)
    post_cov = prior - gain @ big_g @ prior
    return post_mean, post_cov


def _ens_cov(ens):
    anom = ens - ens.mean(-2, keepdim=True)
    return anom.transpose(-1, -2) @ anom / (ens.shape[-2] - 1)


@pytest.mark.parametrize(
    "settings",
    [
        {"mode": "gauss-newton"},
        {"mode": "gauss-newton", "variant": "bundle"},
        {"mode": "gauss-newton", "inflation": 1.2},
        {"mode": "gauss-newton", "rotate": True},
        {"mode": "autodiff", "iterations": 200, "tol": 1e-10},
    ],
    ids=["gauss-newton", "bundle", "inflation", "rotate", "autodiff"],
)
def test_linear_gaussian_equals_kalman_smoother(settings):
    big_g, ens, y, r = _linear_window()
    method = EnVar4D(**settings)
    out = method.analyse(
        ens, y, r, lambda s: s @ big_g.T, generator=torch.Generator().manual_seed(0)
    )
    mean_ref, cov_ref = _kalman_smoother(big_g, ens, y, r, method.inflation)
    tol = 1e-6 if method.mode == "autodiff" else 1e-9
    torch.testing.assert_close(out.mean, mean_ref, atol=tol, rtol=tol)
    torch.testing.assert_close(out.ensemble.mean(-2), out.mean)
    torch.testing.assert_close(_ens_cov(out.ensemble), cov_ref, atol=tol, rtol=tol)
    assert out.converged
    assert out.w.shape == (2, 12) and out.ensemble.shape == ens.shape
    assert bool((out.cost[-1] < out.cost[0]).all())
    if method.mode == "gauss-newton":
        assert out.iterations == 2  # the exact step, then a zero step


def test_envar4d_cost_gradcheck():
    model = Lorenz63()
    g = torch.Generator().manual_seed(1)

    def forecast_obs(s):
        traj = model.integrate(s, steps=6, dt=0.01, every=3)  # (..., M, 3, 3)
        return traj[..., 1:, :].flatten(-2)

    mean = torch.randn(2, 3, generator=g, dtype=F64) * 5
    anom = torch.randn(2, 5, 3, generator=g, dtype=F64)
    y = torch.randn(2, 6, generator=g, dtype=F64)
    w = torch.randn(2, 5, generator=g, dtype=F64, requires_grad=True)
    mean.requires_grad_(True)
    r = torch.full((6,), 0.7, dtype=F64)
    assert torch.autograd.gradcheck(
        lambda w_, m_: envar4d_cost(w_, m_, anom, y, r, forecast_obs), (w, mean)
    )


def test_lorenz63_window_gauss_newton_reduces_cost_and_error():
    model = Lorenz63()
    g = torch.Generator().manual_seed(2)
    batch, n_members, steps, every = 8, 10, 40, 10
    x0 = model.integrate(torch.randn(batch, 3, generator=g, dtype=F64), 500)[..., -1, :]
    truth = model.integrate(x0, steps, every=every)[..., 1:, :].flatten(-2)
    y = truth + math.sqrt(2.0) * torch.randn(truth.shape, generator=g, dtype=F64)
    xb = x0 + 2.0 * torch.randn(batch, 3, generator=g, dtype=F64)
    ens = xb.unsqueeze(-2) + 2.0 * torch.randn(batch, n_members, 3, generator=g, dtype=F64)

    def forecast_obs(s):
        return model.integrate(s, steps, every=every)[..., 1:, :].flatten(-2)

    out = EnVar4D(iterations=10).analyse(ens, y, math.sqrt(2.0), forecast_obs)
    assert out.cost.shape[1:] == (batch,)
    assert bool((out.cost.min(0).values < out.cost[0]).all())
    assert float(out.cost[-1].sum()) < 0.5 * float(out.cost[0].sum())
    err_prior = (ens.mean(-2) - x0).norm(dim=-1).median()
    err_post = (out.mean - x0).norm(dim=-1).median()
    assert err_post < 0.7 * err_prior


def test_lorenz96_forcing_recovered_with_uncertainty():
    # joint state + parameter: s = [x0 (40); F], truth F = 8, prior F ~ N(7, 1)
    model = Lorenz96(40)
    g = torch.Generator().manual_seed(3)
    batch, n_members, steps, r_std = 4, 50, 10, 0.5
    x0 = model.integrate(8 + torch.randn(batch, 40, generator=g, dtype=F64), 300)[..., -1, :]
    truth = model.integrate(x0, steps)[..., 1:, :].flatten(-2)
    y = truth + r_std * torch.randn(truth.shape, generator=g, dtype=F64)
    xb = x0 + torch.randn(batch, 40, generator=g, dtype=F64)
    ens = torch.cat(
        (
            xb.unsqueeze(-2) + torch.randn(batch, n_members, 40, generator=g, dtype=F64),
            7.0 + torch.randn(batch, n_members, 1, generator=g, dtype=F64),
        ),
        dim=-1,
    )

    def forecast_obs(s):
        traj = model.integrate(s[..., :40], steps, theta=s[..., 40:])  # theta[..., 0] = F
        return traj[..., 1:, :].flatten(-2)

    out = EnVar4D(iterations=20).analyse(ens, y, r_std, forecast_obs)
    assert out.converged
    forcing = out.mean[..., 40]
    spread = out.ensemble[..., 40].std(-1)
    assert bool(((forcing - 8.0).abs() < 0.8).all()), forcing
    assert bool(((forcing - 8.0).abs() < 3.0 * spread).all()), (forcing, spread)
    assert bool((spread < 0.5).all())  # the data did inform the forcing (prior spread 1)
    assert (out.mean[..., :40] - x0).norm() < 0.6 * (ens.mean(-2)[..., :40] - x0).norm()


def test_registry_and_bad_input():
    assert get_method("4denvar") is EnVar4D
    ens = torch.randn(5, 3, dtype=F64)
    y = torch.zeros(3, dtype=F64)
    with pytest.raises(ShapeError):
        EnVar4D().analyse(ens[:1], y, 1.0, lambda s: s)
    with pytest.raises(ShapeError, match="forecast_obs"):
        EnVar4D().analyse(ens, y, 1.0, lambda s: s[..., :2])
    with pytest.raises(ConfigError):
        EnVar4D().analyse(ens, y, 0.0, lambda s: s)
    with pytest.raises(ConfigError):
        EnVar4D(mode="4dvar")
    with pytest.raises(ConfigError):
        EnVar4D(variant="finite")
    with pytest.raises(ConfigError):
        EnVar4D(inflation=0.0)


def test_inference_mode_and_float32():
    big_g, ens, y, r = _linear_window(seed=5)
    with torch.inference_mode():
        out = EnVar4D(mode="autodiff", iterations=100).analyse(
            ens.float(), y.float(), r.float(), lambda s: s @ big_g.float().T
        )
    mean_ref, _ = _kalman_smoother(big_g, ens, y, r)
    assert out.mean.dtype == torch.float32
    torch.testing.assert_close(out.mean.double(), mean_ref, atol=2e-3, rtol=2e-3)
