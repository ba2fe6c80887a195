"""VAE-Var: exact BLUE with a linear decoder (3D and 4D), batched L-BFGS,
nonlinear decoders, background-error statistics, a VAE on Lorenz-96."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.covariance import DenseCovariance
from xlatda.methods.registry import get_method
from xlatda.methods.vaevar import (
    VAE4DVar,
    VAEVar,
    background_errors,
    flat_decoder,
    vaevar_increment_covariance,
)
from xlatda.methods.var3d import Var3D

F64 = torch.float64


def _linear_problem(n, p, k, seed=0, batch=(3,), lam=1.0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, k, generator=g, dtype=F64) / k**0.5
    std = 0.5 + torch.rand(n, generator=g, dtype=F64)
    h = torch.randn(p, n, generator=g, dtype=F64)
    r = 0.3 + torch.rand(p, generator=g, dtype=F64)
    xb = torch.randn(*batch, n, generator=g, dtype=F64)
    y = torch.randn(*batch, p, generator=g, dtype=F64)
    ell = std[:, None] * a
    b = ell @ ell.T / lam
    return a, std, h, r, xb, y, b


def _blue(b, h, r, xb, y):
    """Observation-space BLUE: valid for a singular (rank-k) B as well."""
    s = h @ b @ h.T + torch.diag(r**2)
    gain = b @ h.T @ torch.linalg.inv(s)
    return xb + (y - xb @ h.T) @ gain.T


def _lin(a):
    return lambda w: w @ a.T


@pytest.mark.parametrize(("p", "k"), [(3, 4), (9, 4), (3, 8), (9, 8)])
@pytest.mark.parametrize("lam", [1.0, 2.5])
def test_linear_decoder_is_blue(p, k, lam):
    n = 6
    a, std, h, r, xb, y, b = _linear_problem(n, p, k, lam=lam)
    var = VAEVar(decoder=_lin(a), std=std, lam=lam, latent_dim=k, tol=1e-11, iterations=200)
    out = var.analyse(xb, y, r, h)
    assert out.converged
    torch.testing.assert_close(out.mean, _blue(b, h, r, xb, y), atol=1e-8, rtol=1e-8)
    assert out.w.shape == (3, k)
    assert out.cost.shape == (out.iterations + 1, 3)
    assert bool((out.cost[1:] <= out.cost[:-1] + 1e-12).all())  # monotone descent
    # The same with h as a callable.
    out2 = var.analyse(xb, y, r, lambda x: x @ h.T)
    torch.testing.assert_close(out2.mean, out.mean, atol=1e-8, rtol=1e-8)


def test_linear_decoder_matches_var3d():
    n, p, k = 6, 4, 9  # k >= n: B = L L^T / lam is positive definite
    a, std, h, r, xb, y, b = _linear_problem(n, p, k, seed=3, batch=(2, 3), lam=0.7)
    ref = Var3D(b=DenseCovariance(b)).analyse(xb, y, r, h)
    out = VAEVar(decoder=_lin(a), std=std, lam=0.7, latent_dim=k, tol=1e-11).analyse(xb, y, r, h)
    assert out.mean.shape == (2, 3, n)
    torch.testing.assert_close(out.mean, ref.mean, atol=1e-8, rtol=1e-8)
    # The minimum cost is the same: J(w*) = J_3DVar(x_a).
    torch.testing.assert_close(out.cost[-1], ref.cost[-1], atol=1e-9, rtol=1e-9)


def test_4d_linear_is_stacked_blue():
    n, k = 5, 7
    g = torch.Generator().manual_seed(4)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    m = 0.9 * q + 0.1 * torch.randn(n, n, generator=g, dtype=F64)  # linear model
    hs = [torch.randn(2, n, generator=g, dtype=F64) for _ in range(3)]  # obs at t = 1, 2, 3
    stacked = torch.cat([hs[t] @ torch.linalg.matrix_power(m, t + 1) for t in range(3)])
    a = torch.randn(n, k, generator=g, dtype=F64) / k**0.5
    std = 0.5 + torch.rand(n, generator=g, dtype=F64)
    r = 0.2 + torch.rand(6, generator=g, dtype=F64)
    xb = torch.randn(4, n, generator=g, dtype=F64)
    y = torch.randn(4, 6, generator=g, dtype=F64)

    def forecast_obs(x0):  # (..., n) -> (..., 6), stepping the model
        out, x = [], x0
        for t in range(3):
            x = x @ m.T
            out.append(x @ hs[t].T)
        return torch.cat(out, -1)

    ell = std[:, None] * a
    var = VAE4DVar(decoder=_lin(a), std=std, latent_dim=k, tol=1e-11)
    out = var.analyse(xb, y, r, forecast_obs)
    assert out.converged
    torch.testing.assert_close(out.mean, _blue(ell @ ell.T, stacked, r, xb, y), atol=1e-8, rtol=0)
    # The stacked matrix works as a linear forecast_obs.
    torch.testing.assert_close(var.analyse(xb, y, r, stacked).mean, out.mean, atol=1e-8, rtol=0)


def test_batch_runs_one_lbfgs_per_element():
    n, p, k = 8, 5, 6
    a, std, h, r, xb, y, _ = _linear_problem(n, p, k, seed=5, batch=(4,))
    scales = torch.tensor([1e-3, 1e-1, 1.0, 10.0], dtype=F64)  # very different problems
    r_b = r * scales[:, None]
    var = VAEVar(decoder=_lin(a), std=std, latent_dim=k, tol=1e-10)
    batched = var.analyse(xb, y, r_b, h)
    singles = [var.analyse(xb[i], y[i], r_b[i], h) for i in range(4)]
    assert batched.converged
    assert batched.iterations == max(s.iterations for s in singles)
    for i, s in enumerate(singles):
        torch.testing.assert_close(batched.mean[i], s.mean, atol=1e-8, rtol=1e-8)
        torch.testing.assert_close(batched.cost[s.iterations, i], s.cost[-1])


def _mlp_decoder(k, n, seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(k, 32), nn.Tanh(), nn.Linear(32, n)).to(F64)
    return net


def test_nonlinear_decoder_improves_on_background():
    n, k, batch = 12, 3, 5
    net = _mlp_decoder(k, n, seed=0)
    g = torch.Generator().manual_seed(1)
    std = 0.5 * torch.ones(n, dtype=F64)
    xb = torch.randn(batch, n, generator=g, dtype=F64)
    with torch.no_grad():
        truth = xb + net(torch.randn(batch, k, generator=g, dtype=F64)) * std
    obs = torch.arange(0, n, 3)

    def h(x):
        return x[..., obs] + 0.1 * x[..., obs] ** 2

    y = h(truth) + 0.02 * torch.randn(batch, len(obs), generator=g, dtype=F64)
    out = VAEVar(decoder=net, std=std, latent_dim=k).analyse(xb, y, 0.02, h)
    assert out.converged
    cost = out.cost
    assert bool((cost[1:] <= cost[:-1] + 1e-12).all())
    assert bool((cost[-1] < 0.5 * cost[0]).all())
    err_a = (out.mean - truth).pow(2).mean(-1).sqrt()
    err_b = (xb - truth).pow(2).mean(-1).sqrt()
    assert float(err_a.mean()) < 0.5 * float(err_b.mean())
    # Frozen decoder: nothing accumulated into its weights.
    assert all(prm.grad is None for prm in net.parameters())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dtypes_and_float32_decoder(dtype):
    n, k = 10, 3
    net = _mlp_decoder(k, n, seed=2).float()  # float32 network serves any dtype
    g = torch.Generator().manual_seed(3)
    xb = torch.randn(2, n, generator=g).to(dtype)
    y = torch.randn(2, 4, generator=g).to(dtype)
    h = torch.eye(n, dtype=dtype)[:4]
    out = VAEVar(decoder=net, std=torch.ones(n), latent_dim=k).analyse(xb, y, 0.5, h)
    assert out.mean.dtype == dtype and out.w.dtype == dtype
    assert out.converged
    assert bool((out.cost[-1] < out.cost[0]).all())
    assert all(prm.grad is None for prm in net.parameters())


def test_under_inference_mode_and_w0():
    n, p, k = 5, 3, 5
    a, std, h, r, xb, y, b = _linear_problem(n, p, k, seed=6)
    var = VAEVar(decoder=_lin(a), std=std, latent_dim=k, tol=1e-11)
    ref = _blue(b, h, r, xb, y)
    with torch.inference_mode():
        out = var.analyse(xb.clone(), y.clone(), r.clone(), h.clone())
    torch.testing.assert_close(out.mean, ref, atol=1e-8, rtol=1e-8)
    warm = var.analyse(xb, y, r, h, w0=out.w)
    assert warm.iterations <= 1
    torch.testing.assert_close(warm.mean, ref, atol=1e-8, rtol=1e-8)


def test_offset_shifts_the_search():
    n = 4
    var = VAEVar(decoder=lambda w: w, std=1.0, latent_dim=n, offset=torch.full((n,), 3.0))
    # No observation information (huge R): the analysis is x_b + offset.
    out = var.analyse(
        torch.zeros(n, dtype=F64), torch.zeros(1, dtype=F64), 1e6, lambda x: x[..., :1]
    )
    torch.testing.assert_close(out.mean, torch.full((n,), 3.0, dtype=F64), atol=1e-5, rtol=0)


def test_increment_covariance_matches_linear_analysis():
    n, p, k = 6, 4, 3
    a, std, h, r, _, _, b = _linear_problem(n, p, k, seed=7, lam=2.0)
    torch.testing.assert_close(vaevar_increment_covariance(a, std, 2.0), b)
    post = vaevar_increment_covariance(a, std, 2.0, h=h, r_std=r)
    s = h @ b @ h.T + torch.diag(r**2)
    ref = b - b @ h.T @ torch.linalg.solve(s, h @ b)
    torch.testing.assert_close(post, ref)
    with pytest.raises(ConfigError):
        vaevar_increment_covariance(a, std, h=h)


def test_background_errors_statistics():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(50, 6, generator=g, dtype=F64).cumsum(0)
    e, mean, std = background_errors(truth, lambda x: 0.9 * x + 0.1, lead=2)
    raw = truth[2:] - (0.81 * truth[:-2] + 0.19)
    assert e.shape == (48, 6) and mean.shape == std.shape == (6,)
    torch.testing.assert_close(mean, raw.mean(0))
    torch.testing.assert_close(e * std + mean, raw)
    torch.testing.assert_close(e.mean(0), torch.zeros(6, dtype=F64), atol=1e-12, rtol=0)
    torch.testing.assert_close(e.std(0, correction=0), torch.ones(6, dtype=F64))
    e_raw, _, _ = background_errors(truth, lambda x: 0.9 * x + 0.1, lead=2, normalise=False)
    torch.testing.assert_close(e_raw, raw)
    # Per channel: two channels of three components each share their statistics.
    ch = torch.tensor([0, 0, 0, 1, 1, 1])
    e_c, mean_c, std_c = background_errors(truth, lambda x: 0.9 * x + 0.1, lead=2, channel=ch)
    torch.testing.assert_close(mean_c[:3], raw[:, :3].mean().expand(3))
    torch.testing.assert_close(std_c[3:], raw[:, 3:].std(correction=0).expand(3))
    torch.testing.assert_close(e_c[:, 3:].std(correction=0), torch.tensor(1.0, dtype=F64))
    # A perfect model has no error: the message says what to do.
    with pytest.raises(ConfigError, match="imperfect model"):
        geometric = 0.9 ** torch.arange(10.0, dtype=F64)[:, None] * truth[0]
        background_errors(geometric, lambda x: 0.9 * x)
    with pytest.raises(ConfigError):
        background_errors(truth, lambda x: x, lead=0)
    with pytest.raises(ShapeError):
        background_errors(truth[:2], lambda x: x, lead=2)


def test_vae_decoder_on_lorenz96():
    from xlatda.dynamics.physical import Lorenz96
    from xlatda.encoders.vae import VAE

    n, lead = 40, 4
    g = torch.Generator().manual_seed(0)
    x0 = 8.0 + torch.randn(n, generator=g, dtype=F64)
    traj = Lorenz96(n=n, forcing=8.0).integrate(x0, steps=2300, dt=0.05)[100:]
    model = Lorenz96(n=n, forcing=7.0)  # imperfect forecast model
    e, mean, std = background_errors(traj[:2000], model, lead=lead)
    assert e.shape == (2000 - lead, n)
    vae = VAE(1, (n,), latent_dim=8, hidden=[64], seed=0)
    vae.fit(e[:, None].float(), epochs=10, batch_size=64, lr=3e-3, progress=False, seed=0)

    idx = torch.arange(2040, 2200, 20)
    truth = traj[idx]
    xb = model.integrate(traj[idx - lead], steps=lead)[..., -1, :]
    obs = torch.arange(0, n, 2)
    h = torch.eye(n, dtype=F64)[obs]
    y = truth[:, obs] + 0.05 * torch.randn(len(idx), len(obs), generator=g, dtype=F64)
    var = get_method("vaevar")(decoder=vae, std=std, offset=mean)  # an encoder is wrapped
    grads = [None if prm.grad is None else prm.grad.clone() for prm in vae.parameters()]
    out = var.analyse(xb, y, 0.05, h)

    def rmse(x):
        return float((x - truth).pow(2).mean(-1).sqrt().mean())

    assert out.mean.shape == (len(idx), n) and out.mean.dtype == F64
    assert bool((out.cost[-1] < out.cost[0]).all())
    assert rmse(out.mean) < 0.9 * rmse(xb + mean) < rmse(xb)
    for before, prm in zip(grads, vae.parameters()):  # training's grads left untouched
        assert (before is None and prm.grad is None) or torch.equal(before, prm.grad)


def test_flat_decoder_shapes():
    from xlatda.encoders.vae import VAE

    vae = VAE(2, (5,), latent_dim=3, hidden=[8])
    vae.fit(torch.randn(16, 2, 5), epochs=1, progress=False, val_fraction=0)
    dec = flat_decoder(vae)
    assert dec.latent_dim == 3
    # An encoder or its bound decode is wrapped the same way.
    assert VAEVar(decoder=vae.decode, std=1.0).decoder.encoder is vae
    assert VAEVar(decoder=vae, std=1.0).latent_dim == 3
    assert dec(torch.zeros(3)).shape == (10,)
    w = torch.randn(4, 3)
    torch.testing.assert_close(dec(w[None])[0], vae.decode(w).reshape(4, 10))


def test_registry_and_settings():
    assert get_method("vaevar") is VAEVar
    assert get_method("VAE4DVar") is VAE4DVar
    dec = _lin(torch.eye(3, dtype=F64))
    with pytest.raises(ConfigError, match="latent_dim"):
        VAEVar(decoder=dec, std=1.0)
    for bad in ({"lam": 0.0}, {"tol": 0.0}, {"iterations": 0}, {"history_size": 0}):
        with pytest.raises(ConfigError):
            VAEVar(decoder=dec, std=1.0, latent_dim=3, **bad)
    with pytest.raises(ConfigError):
        VAEVar(decoder=dec, std=-1.0, latent_dim=3)
    with pytest.raises(ConfigError):
        VAEVar(decoder=None, std=1.0, latent_dim=3)
    var = VAEVar(decoder=dec, std=torch.ones(3), latent_dim=3)
    with pytest.raises(ShapeError):  # std of the wrong size
        var.analyse(torch.zeros(4, dtype=F64), torch.zeros(1, dtype=F64), 1.0, torch.ones(1, 4))
    with pytest.raises(ShapeError):  # decoder output does not fit the state
        VAEVar(decoder=dec, std=1.0, latent_dim=3).analyse(
            torch.zeros(4, dtype=F64), torch.zeros(1, dtype=F64), 1.0, lambda x: x[..., :1]
        )
    with pytest.raises(ShapeError):  # h of the wrong size
        var.analyse(torch.zeros(3, dtype=F64), torch.zeros(2, dtype=F64), 1.0, torch.ones(1, 3))
    with pytest.raises(ConfigError):
        var.analyse(torch.zeros(3, dtype=F64), torch.zeros(1, dtype=F64), 0.0, lambda x: x[..., :1])


@pytest.mark.gpu
def test_cuda_float32():
    n, p, k = 6, 3, 6
    a, std, h, r, xb, y, b = _linear_problem(n, p, k, seed=8)
    ref = _blue(b, h, r, xb, y)
    dev = torch.device("cuda")
    var = VAEVar(decoder=_lin(a.float().to(dev)), std=std.float(), latent_dim=k)
    out = var.analyse(xb.float().to(dev), y.float().to(dev), r.float().to(dev), h.float().to(dev))
    assert out.mean.device.type == "cuda"
    torch.testing.assert_close(out.mean.cpu().double(), ref, atol=1e-3, rtol=1e-3)


def test_centre_makes_w_zero_the_background():
    """With centre=True the increment is D(w) - D(0): an affine decoder gives the BLUE
    of its linear part (the constant D(0) no longer shifts the background)."""
    torch.manual_seed(0)
    n, k = 6, 6
    a = torch.randn(n, k, dtype=torch.float64)
    c = torch.randn(n, dtype=torch.float64)
    xb = torch.randn(n, dtype=torch.float64)
    h = torch.eye(n, dtype=torch.float64)[:3]
    y = torch.randn(3, dtype=torch.float64)
    var = VAEVar(decoder=lambda w: w @ a.T + c, std=1.0, latent_dim=k, centre=True, tol=1e-12)
    out = var.analyse(xb[None], y[None], 0.5, h)
    b = a @ a.T
    gain = b @ h.T @ torch.linalg.inv(h @ b @ h.T + 0.25 * torch.eye(3, dtype=torch.float64))
    expected = xb + gain @ (y - h @ xb)
    torch.testing.assert_close(out.mean[0], expected, atol=1e-6, rtol=1e-6)
    shifted = VAEVar(decoder=lambda w: w @ a.T + c, std=1.0, latent_dim=k, tol=1e-12)
    assert not torch.allclose(shifted.analyse(xb[None], y[None], 0.5, h).mean[0], expected,
                              atol=1e-3)
