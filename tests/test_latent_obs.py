"""Latent conditioning of method="score" on observation images (xlatda.latent_obs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import ConfigError, LayoutError, XlatdaError
from xlatda.latent_obs import LatentObservation, _regress, _shrunk
from xlatda.methods.diffusion import GaussianEps
from xlatda.methods.score import ScoreDA

F64 = torch.float64


def _design(states, seed=1):
    return xlatda.obs.sample_points(states, n=4, error_std=0.5, seed=seed)


@pytest.fixture(scope="module")
def setup():
    ds = xlatda.datasets.lorenz96(n=8, steps=300, seed=0)
    train, held = ds.isel(time=slice(0, 200)), ds.isel(time=slice(200, None))
    model = xlatda.fit(train, encoder="autoencoder", latent_dim=4, epochs=10,
                       aux=xlatda.obs.rasterize(_design(train), train),
                       encoder_options={"hidden": [32], "state_dropout": 0.5}, progress=False)
    lo = xlatda.fit_latent_obs(model, held, _design(held, 2))
    model = xlatda.fit_score(train, model, window=3, epochs=5, hidden=32, depth=2,
                             progress=False)
    return ds, train, held, model, lo


def test_whitened_linear_likelihood_gives_the_kalman_posterior():
    """Gaussian prior N(mu, P) of z, latent observation c = M z + b + e, e ~ N(0, S): the
    sampler on the whitened observations L^-1 (c - b) of L^-1 M z reproduces the Kalman
    posterior (mean and covariance)."""
    g = torch.Generator().manual_seed(3)
    k = 3
    a = torch.randn(k, k, generator=g, dtype=F64)
    prior_cov = a @ a.T / k + 0.5 * torch.eye(k, dtype=F64)
    mu = torch.tensor([0.3, -0.2, 0.1], dtype=F64)
    m = torch.tensor([[0.8, 0.1, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, 0.3]], dtype=F64)
    b = torch.tensor([0.05, -0.1, 0.0], dtype=F64)
    s = torch.tensor([[0.30, 0.10, 0.0], [0.10, 0.25, 0.05], [0.0, 0.05, 0.2]], dtype=F64)
    lo = LatentObservation(matrix=m, offset=b, chol=torch.linalg.cholesky(s), model_id="x",
                           channels=("x",), n_pairs=0, shrinkage=0.0, explained=0.0)
    c = torch.tensor([[0.9, -0.4, 0.5]], dtype=F64)
    gain_mat = prior_cov @ m.T @ torch.linalg.inv(m @ prior_cov @ m.T + s)
    post_mean = mu + gain_mat @ (c[0] - b - m @ mu)
    post_cov = prior_cov - gain_mat @ m @ prior_cov

    w = lo.operator()
    da = ScoreDA(net=GaussianEps(mu[None], prior_cov), steps=256, corrections=1, tau=1.0,
                 gamma=1e-2, guide_clip=None)
    y = lo.whitened(c).reshape(-1)
    gain = w.square().sum(1).sqrt()
    x = da.analyse(4000, lambda z: z[..., 0, :] @ w.T, y, torch.ones(k, dtype=F64),
                   obs_gain=gain, generator=torch.Generator().manual_seed(0))
    x = x[:, 0]
    std = post_cov.diagonal().sqrt()
    assert torch.allclose(x.mean(0), post_mean, atol=0.1 * float(prior_cov.diagonal().min()
                                                                  .sqrt()))
    emp = torch.cov(x.T)
    assert torch.allclose(emp.diagonal().sqrt(), std, rtol=0.15)


def test_regression_recovers_the_linear_gaussian_model():
    g = torch.Generator().manual_seed(1)
    n, k = 6000, 4
    z = torch.randn(n, k, generator=g, dtype=F64)
    m = torch.randn(k, k, generator=g, dtype=F64) * 0.5
    b = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=F64)
    a = torch.randn(k, k, generator=g, dtype=F64)
    s = a @ a.T / k + 0.1 * torch.eye(k, dtype=F64)
    e = torch.randn(n, k, generator=g, dtype=F64) @ torch.linalg.cholesky(s).T
    mat, off, cov = _regress(z, z @ m.T + b + e)
    assert torch.allclose(mat, m, atol=0.05)
    assert torch.allclose(off, b, atol=0.05)
    assert torch.allclose(cov, s, rtol=0.1, atol=0.05)  # sampling error ~ 2.5 % of the scale
    assert torch.allclose(_shrunk(cov, 1.0), torch.diag(cov.diagonal()))


def test_public_path_latent_conditioning(setup):
    _, _, held, model, lo = setup
    assert lo.n_pairs == 101 and 0.0 <= lo.shrinkage <= 1.0 and lo.explained > 0.1
    truth = held.isel(time=slice(0, 6))
    obs = _design(truth, 3)
    kw = dict(method="score", members=6, window=3, steps=8, progress=False)
    a = xlatda.cycle(None, obs, model, conditioning="latent", latent_obs=lo, **kw)
    b = xlatda.cycle(None, obs, model, conditioning="latent", latent_obs=lo, **kw)
    e = xlatda.cycle(None, obs, model, **kw)
    za, zb, ze = (np.asarray(r.analysis.x.values) for r in (a, b, e))
    assert np.isfinite(za).all() and za.shape == ze.shape
    np.testing.assert_array_equal(za, zb)  # bit-identical for a seed
    assert not np.array_equal(za, ze)  # the latent likelihood, not H o D, conditions it
    one = xlatda.assimilate(None, obs.where(obs.time == obs.time[0], drop=True), model,
                            method="score", members=4, steps=8, conditioning="latent",
                            latent_obs=lo)
    assert np.isfinite(one.x.values).all() and one.sizes["member"] == 4


def test_fit_latent_obs_chunked_equals_eager(setup):
    _, _, held, model, lo = setup
    lazy = xlatda.fit_latent_obs(model, held.chunk({"time": 50}), _design(held, 2))
    # encoded chunk by chunk: the same codes up to float32 rounding of other batch sizes
    torch.testing.assert_close(lazy.matrix, lo.matrix, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lazy.chol, lo.chol, rtol=1e-5, atol=1e-5)
    assert lazy.shrinkage == lo.shrinkage


def test_refuses_a_model_without_observation_images(setup):
    _, train, held, _, lo = setup
    plain = xlatda.fit(train, encoder="autoencoder", latent_dim=4, epochs=1,
                       encoder_options={"hidden": [8]}, progress=False)
    with pytest.raises(ConfigError, match="auxiliary channels"):
        xlatda.fit_latent_obs(plain, held, _design(held))
    plain = xlatda.fit_score(train, plain, window=3, epochs=1, hidden=8, depth=1,
                             progress=False)
    obs = _design(held.isel(time=slice(0, 3)))
    with pytest.raises(ConfigError, match="auxiliary channels") as err:
        xlatda.cycle(None, obs, plain, method="score", members=2, window=3, steps=2,
                     conditioning="latent", latent_obs=lo, progress=False)
    assert isinstance(err.value, XlatdaError)


def test_refuses_images_on_another_grid(setup):
    _, _, held, model, _ = setup
    other = xlatda.datasets.lorenz96(n=16, steps=100, seed=4)
    images = xlatda.obs.rasterize(_design(other), other)
    with pytest.raises(LayoutError, match="state grid"):
        xlatda.fit_latent_obs(model, held.isel(time=slice(0, 101)), images)


def test_refuses_bad_settings(setup):
    _, _, held, model, lo = setup
    obs = _design(held.isel(time=slice(0, 3)))
    kw = dict(method="score", members=2, window=3, steps=2, progress=False)
    with pytest.raises(ConfigError, match=r"latent_obs=xlatda\.fit_latent_obs"):
        xlatda.cycle(None, obs, model, conditioning="latent", **kw)
    with pytest.raises(ConfigError, match="conditioning must be one of"):
        xlatda.cycle(None, obs, model, conditioning="images", **kw)
    with pytest.raises(ConfigError, match="conditioning='latent' only"):
        xlatda.cycle(None, obs, model, latent_obs=lo, **kw)
    alien = LatentObservation(**{**lo.__dict__, "model_id": "someone-else"})
    with pytest.raises(ConfigError, match="fitted for model"):
        xlatda.cycle(None, obs, model, conditioning="latent", latent_obs=alien, **kw)
    with pytest.raises(ConfigError, match="too few"):
        xlatda.fit_latent_obs(model, held.isel(time=slice(0, 6)), _design(held.isel(
            time=slice(0, 6))))
    with pytest.raises(ConfigError, match="state_dropout needs aux_channels"):
        xlatda.fit(held, encoder="autoencoder", latent_dim=2, epochs=1,
                   encoder_options={"state_dropout": 0.5}, progress=False)
