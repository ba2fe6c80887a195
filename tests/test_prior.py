"""The latent prior: fitting, store round trip, Bayesian encode_obs, masked grids."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.errors import LayoutError, NotFittedError
from xlatda.prior import LatentPrior


def _grid(n=80, seed=0, nan_mask=None):
    rng = np.random.default_rng(seed)
    lat = np.linspace(40.0, 60.0, 9)
    lon = np.linspace(-10.0, 10.0, 12)
    la, lo = np.meshgrid(lat, lon, indexing="ij")
    modes = np.stack([np.cos(np.deg2rad(la * 3)), np.sin(np.deg2rad(lo * 9)),
                      np.cos(np.deg2rad(lo * 5 + la * 4))])
    amp = rng.normal(size=(n, 3)) * np.array([4.0, 2.0, 1.0])
    t = 280 + np.einsum("nk,kij->nij", amp, modes) + rng.normal(scale=0.3, size=(n, 9, 12))
    if nan_mask is not None:
        t = np.where(nan_mask[None], np.nan, t)
    return xr.Dataset(
        {"t": (("time", "lat", "lon"), t, {"units": "K"})},
        coords={"time": np.datetime64("2000-01-01") + np.arange(n) * np.timedelta64(1, "h"),
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})},
    )


@pytest.fixture(scope="module")
def ds():
    return _grid()


@pytest.fixture(scope="module")
def pca(ds):
    return xlatda.fit(ds, encoder="pca", latent_dim=6, progress=False)


def test_prior_matches_code_statistics(ds, pca):
    codes = torch.as_tensor(xlatda.encode(ds, pca).z.values, dtype=torch.float64)
    prior = pca.prior
    np.testing.assert_allclose(prior.mean.double(), codes.mean(0), atol=1e-4)
    cov = prior.covariance().dense().double()
    # PCA codes are uncorrelated: shrinkage leaves the diagonal (explained variances).
    np.testing.assert_allclose(torch.diagonal(cov), codes.var(0), rtol=1e-3)
    assert prior.n_samples == ds.sizes["time"]


def test_shrinkage_grows_when_samples_are_few():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(30, 30, generator=g, dtype=torch.float64) / 6
    few = LatentPrior.fit(torch.randn(12, 30, generator=g, dtype=torch.float64) @ mix)
    many = LatentPrior.fit(torch.randn(3000, 30, generator=g, dtype=torch.float64) @ mix)
    assert few.shrinkage > many.shrinkage
    # With few samples the shrunk covariance is positive definite although S is singular.
    assert torch.linalg.eigvalsh(few.covariance().dense()).min() > 0


def test_sample_and_log_prob():
    g = torch.Generator().manual_seed(1)
    codes = torch.randn(4000, 3, generator=g, dtype=torch.float64) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 2.0]], dtype=torch.float64)
    prior = LatentPrior.fit(codes, shrinkage=0.0)
    draws = prior.sample(20000, generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(torch.cov(draws.T), prior.covariance().dense(), atol=0.08)
    ref = torch.distributions.MultivariateNormal(prior.mean, prior.covariance().dense())
    np.testing.assert_allclose(prior.log_prob(draws[:5]), ref.log_prob(draws[:5]), rtol=1e-8)
    np.testing.assert_allclose(prior.mahalanobis(prior.mean), 0.0, atol=1e-12)


def test_store_round_trip_bit_exact(tmp_path, pca):
    path = tmp_path / "m.zarr"
    pca.save(path)
    again = xlatda.open_model(path)
    for name, t in pca.prior.state_dict().items():
        assert torch.equal(t, again.prior.state_dict()[name])
    assert again.prior.config == pca.prior.config


def test_store_without_prior_opens_with_none(tmp_path, pca):
    import dataclasses

    old = dataclasses.replace(pca, prior=None)
    old.save(tmp_path / "old.zarr")
    again = xlatda.open_model(tmp_path / "old.zarr")
    assert again.prior is None
    with pytest.raises(NotFittedError, match="prior=False"):
        xlatda.encode_obs(_obs(_grid(1, seed=5), 5), again, prior=True)


def _obs(state, n, seed=3, sigma=1.0, noise=True):
    return xlatda.obs.sample_points(state, n=n, error_std=sigma, seed=seed, noise=noise)


def test_pca_posterior_mean_is_the_blue(pca):
    state = _grid(1, seed=7)
    obs = _obs(state, 12)
    got = xlatda.encode_obs(obs, pca)
    table = xlatda.obs.to_tensors(obs, pca.layout)
    pts = pca.points_tensor(table.lat, table.lon)
    H, c = pca.encoder.linear_map(pts.to(pca.dtype), table.channel)
    mean, std = pca.normalizer.select(table.channel)
    H = (H * std[:, None].to(H)).double()
    c = (c * std.to(c) + mean.to(c)).double()
    B = pca.prior.covariance().dense().double()
    mu = pca.prior.mean.double()
    R = torch.diag(table.error_std.double() ** 2)
    y = table.values.double()
    gain = B @ H.T @ torch.linalg.inv(H @ B @ H.T + R)
    blue = mu + gain @ (y - H @ mu - c)
    np.testing.assert_allclose(got.z.values[0], blue.numpy(), rtol=1e-4, atol=1e-4)
    post = B - gain @ H @ B
    np.testing.assert_allclose(got.z_std.values[0], torch.diagonal(post).sqrt().numpy(),
                               rtol=1e-3)


def test_few_observations_no_longer_overfit(ds, pca):
    truth = _grid(30, seed=11)
    obs = _obs(truth, 3, sigma=1.0)
    bayes = xlatda.encode_obs(obs, pca)
    lsq = xlatda.encode_obs(obs, pca, prior=False)

    def rmse(z):
        return float(np.sqrt(((xlatda.decode(z, pca).t - truth.t) ** 2).mean()))

    clim = float(np.sqrt(((truth.t - ds.t.mean("time")) ** 2).mean()))
    assert rmse(bayes) < clim  # never worse than the climatological mean here
    assert rmse(bayes) < 0.5 * rmse(lsq)  # least squares chases 3 noisy values


def test_posterior_samples_spread_like_z_std(pca):
    obs = _obs(_grid(1, seed=9), 20)
    out = xlatda.encode_obs(obs, pca, samples=4000, seed=0)
    assert out.z_samples.dims == ("time", "member", "latent")
    np.testing.assert_allclose(out.z_samples.std("member").values, out.z_std.values, rtol=0.06)
    np.testing.assert_allclose(out.z_samples.mean("member").values, out.z.values,
                               atol=0.1 * float(out.z_std.max()))


def test_autoencoder_gauss_newton_stays_near_prior_without_data():
    ds = _grid(60, seed=2)
    model = xlatda.fit(ds, encoder="autoencoder", latent_dim=4, epochs=3, progress=False)
    obs = _obs(_grid(1, seed=4), 2, sigma=50.0)  # nearly uninformative
    z = xlatda.encode_obs(obs, model)
    d = model.prior.mahalanobis(torch.as_tensor(z.z.values[0]))
    assert float(d) < 0.5
    assert np.all(z.z_std.values > 0)


def test_fixed_nan_mask_is_handled(tmp_path):
    mask = np.zeros((9, 12), bool)
    mask[:3, :4] = True  # "sea"
    ds = _grid(60, seed=1, nan_mask=mask)
    model = xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False)
    assert model.missing is not None and model.missing.sum() == mask.sum()
    back = xlatda.decode(xlatda.encode(ds.isel(time=[0, 1]), model), model)
    assert bool(back.t.isnull().isel(time=0).values[mask].all())
    assert not bool(back.t.isnull().isel(time=0).values[~mask].any())
    err = float(np.sqrt(((back.t - ds.t.isel(time=[0, 1])) ** 2).mean()))
    assert err < 1.0
    model.save(tmp_path / "m.zarr")
    np.testing.assert_array_equal(xlatda.open_model(tmp_path / "m.zarr").missing, model.missing)


def test_moving_nan_is_refused():
    ds = _grid(20, seed=1)
    ds["t"][3, 2, 2] = np.nan
    with pytest.raises(LayoutError, match="fixed mask"):
        xlatda.fit(ds, encoder="pca", latent_dim=3, progress=False)
