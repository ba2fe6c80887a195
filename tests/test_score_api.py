"""Score-based assimilation (SLAMS) at the xarray level: fit_score, the model store,
xlatda.assimilate / xlatda.cycle with method="score", the pixel-space baseline.

The exact reference: a PCA decoder is affine, so with the exact Gaussian ε
(GaussianEps) of a Gaussian latent prior the observations through H o D are
a linear-Gaussian problem whose posterior is the Kalman one. The tolerance of
the posterior mean (0.1 prior standard deviations) is set from the measured
bias of the guidance (tests/test_score.py: 0.01-0.03 with gamma=0.1 and 128
steps for a typical innovation) plus the sampling error (about 0.02 here).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.errors import ConfigError, NotFittedError, ObservationError
from xlatda.methods.diffusion import GaussianEps, ScorePrior

F64 = torch.float64


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------
def latlon_data(nt=240, nlat=8, nlon=16, seed=0, modes=5, rho=0.9):
    """Smooth fields on a global lat/lon grid from AR(1) mode amplitudes, hourly."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-78.75, 78.75, nlat)
    lon = np.arange(nlon) * 360.0 / nlon
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    basis = np.stack([np.cos(la) * np.cos(k * lo + rng.uniform(0, 6)) for k in range(modes)]
                     + [np.sin(la) * np.cos(k * lo) for k in range(1, 3)])
    amp = np.zeros((nt, basis.shape[0]))
    for t in range(1, nt):
        amp[t] = rho * amp[t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal(basis.shape[0])
    field = 10.0 + 3.0 * np.einsum("tm,mij->tij", amp, basis)
    time = pd.date_range("2000-01-01", periods=nt, freq="1h")
    return xr.Dataset(
        {"height": (("time", "lat", "lon"), field, {"units": "m"})},
        coords={"time": time,
                "lat": ("lat", lat, {"units": "degrees_north", "standard_name": "latitude"}),
                "lon": ("lon", lon, {"units": "degrees_east", "standard_name": "longitude"})},
    )


def pca_with_unit_gaussian_score(ds, latent_dim=4):
    """A PCA of ``ds`` and the same model whose score prior is exactly N(0, I) (one window)."""
    pca = xlatda.fit(ds, encoder="pca", latent_dim=latent_dim, progress=False)
    d = pca.latent_dim
    return pca, dataclasses.replace(pca, score=ScorePrior(
        GaussianEps(torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)),
        mean=torch.zeros(d, dtype=F64), std=torch.ones(d, dtype=F64)))


@pytest.fixture(scope="module")
def l96():
    return xlatda.datasets.lorenz96(n=8, steps=300, seed=0)


@pytest.fixture(scope="module")
def l96_model(l96):
    pca = xlatda.fit(l96, encoder="pca", latent_dim=6, progress=False)
    return pca, xlatda.fit_score(l96, pca, window=3, epochs=4, hidden=32, depth=2,
                                 progress=False)


# ---------------------------------------------------------------------------
# fit_score
# ---------------------------------------------------------------------------
def test_fit_score_loss_falls_and_model_is_copied(l96):
    pca = xlatda.fit(l96, encoder="pca", latent_dim=6, progress=False)
    model = xlatda.fit_score(l96, pca, window=3, epochs=25, batch_size=64, lr=3e-3, hidden=64,
                             depth=2, seed=0, progress=False)
    loss = model.history["score"]["train_loss"]
    # the skip (default) starts near the Gaussian optimum; the loss still falls
    assert np.mean(loss[-5:]) < 0.92 * np.mean(loss[:3])
    plain = xlatda.fit_score(l96, pca, window=3, epochs=25, batch_size=64, lr=3e-3, hidden=64,
                             depth=2, seed=0, progress=False, skip=False)
    loss_plain = plain.history["score"]["train_loss"]
    assert np.mean(loss_plain[-5:]) < 0.5 * loss_plain[0]
    assert loss[0] < 0.5 * loss_plain[0]
    assert pca.score is None and "score" not in pca.history  # input not mutated
    assert model.model_id == pca.model_id and model.encoder is pca.encoder
    prior = model.score
    assert prior.window == 3 and prior.space == "latent"
    assert prior.time_step == {"value": 0.05, "units": "model"}
    z = np.asarray(l96.lda.encode(pca).z.values, dtype=np.float64)
    np.testing.assert_allclose(prior.mean.numpy(), z.mean(0), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(prior.std.numpy(), z.std(0), rtol=1e-10)
    assert model.history["score"]["windows"] == l96.sizes["time"] - 3 + 1


def test_fit_score_from_latents_equals_from_states_and_keeps_trajectories_apart(l96):
    pca = xlatda.fit(l96, encoder="pca", latent_dim=4, progress=False)
    kw = dict(window=4, epochs=2, hidden=16, depth=1, progress=False)
    a = xlatda.fit_score(l96, pca, **kw)
    b = xlatda.fit_score(l96.lda.encode(pca), pca, **kw)
    for k, v in a.score.state_dict().items():
        assert torch.equal(v, b.score.state_dict()[k])
    z = l96.lda.encode(pca)
    two = xr.concat([z.isel(time=slice(0, 150)),
                     z.isel(time=slice(150, 300)).assign_coords(time=z.time[:150])],
                    dim="trajectory")
    c = xlatda.fit_score(two, pca, **kw)
    assert c.history["score"]["windows"] == 2 * (150 - 4 + 1)


def test_fit_score_refuses_bad_input(l96):
    pca = xlatda.fit(l96, encoder="pca", latent_dim=4, progress=False)
    with pytest.raises(ConfigError, match="LatentModel"):
        xlatda.fit_score(l96, None)
    with pytest.raises(ConfigError, match="equally spaced"):
        xlatda.fit_score(l96.isel(time=[0, 1, 3, 4, 5]), pca, window=2, epochs=1)
    with pytest.raises(ConfigError, match="fewer than window"):
        xlatda.fit_score(l96.isel(time=slice(0, 3)), pca, window=5, epochs=1)
    with pytest.raises(ConfigError, match="window"):
        xlatda.fit_score(l96, pca, window=0)
    other = xlatda.fit(l96, encoder="pca", latent_dim=4, progress=False)
    with pytest.raises(ConfigError, match="decode with the model"):
        xlatda.fit_score(l96.lda.encode(other), pca, window=2, epochs=1)


# ---------------------------------------------------------------------------
# model store
# ---------------------------------------------------------------------------
def test_save_open_is_bit_exact_with_a_score(l96_model, tmp_path):
    pca, model = l96_model
    model.save(tmp_path / "m.zarr")
    back = xlatda.open_model(tmp_path / "m.zarr")
    assert back.score is not None and back.score.config == model.score.config
    want, got = model.score.state_dict(), back.score.state_dict()
    assert want.keys() == got.keys()
    for k in want:
        assert want[k].dtype == got[k].dtype and torch.equal(want[k], got[k])
    assert back.history["score"] == model.history["score"]
    x, t = torch.randn(5, 3, 6), torch.rand(5)
    assert torch.equal(back.score(x, t), model.score(x, t))
    # stores without a score still open; pickling (dask) keeps the score
    pca.save(tmp_path / "old.zarr")
    assert xlatda.open_model(tmp_path / "old.zarr").score is None
    import pickle

    again = pickle.loads(pickle.dumps(model))
    assert torch.equal(again.score(x, t), model.score(x, t))


def test_gaussian_eps_prior_round_trips(tmp_path, l96):
    pca = xlatda.fit(l96, encoder="pca", latent_dim=3, progress=False)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 3, generator=g, dtype=F64)
    prior = ScorePrior(GaussianEps(torch.randn(1, 3, dtype=F64, generator=g), a @ a.T),
                       mean=torch.ones(3, dtype=F64), std=torch.full((3,), 2.0, dtype=F64))
    model = dataclasses.replace(pca, score=prior)
    model.save(tmp_path / "g.zarr")
    back = xlatda.open_model(tmp_path / "g.zarr").score
    for k, v in prior.state_dict().items():
        assert torch.equal(v, back.state_dict()[k])


# ---------------------------------------------------------------------------
# exact Gaussian posterior through H o D (multimodal: coarse field + stations)
# ---------------------------------------------------------------------------
def test_score_posterior_matches_kalman_through_the_decoder():
    ds = latlon_data()
    pca = xlatda.fit(ds, encoder="pca", latent_dim=4, progress=False)
    d = pca.latent_dim
    g = torch.Generator().manual_seed(3)
    q = torch.randn(d, d, generator=g, dtype=F64)
    s_u = q @ q.T / d + 0.3 * torch.eye(d, dtype=F64)  # prior of standardised latents
    m_u = 0.3 * torch.randn(d, generator=g, dtype=F64)
    z_mean = 2.0 * torch.randn(d, generator=g, dtype=F64)
    z_std = torch.rand(d, generator=g, dtype=F64) + 0.5
    model = dataclasses.replace(
        pca, score=ScorePrior(GaussianEps(m_u.reshape(1, d), s_u), mean=z_mean, std=z_std))

    # one satellite-like coarse field plus stations, at one time
    t0 = ds.isel(time=[100])
    obs = xlatda.obs.concat([xlatda.obs.coarsen(t0, 4, 1.0),
                             xlatda.obs.sample_points(t0, n=3, error_std=0.5, seed=2)],
                            kinds=["satellite", "station"])
    table = xlatda.obs.to_tensors(obs, pca.layout)
    fp = xlatda.obs.footprint_points(table)  # the coarse field: block means
    pts = pca.points_tensor(fp["lat"], fp["lon"])
    pool = torch.zeros(len(table), len(fp["entry"]), dtype=F64)
    pool[fp["entry"], torch.arange(len(fp["entry"]))] = torch.as_tensor(fp["weight"])

    def h(u):  # standardised latent -> observations, affine for PCA
        return pca.decode_points((z_mean + z_std * u).to(pca.dtype), pts,
                                 table.channel[fp["entry"]]).to(F64) @ pool.T

    c = h(torch.zeros(1, d, dtype=F64))[0]
    G = (h(torch.eye(d, dtype=F64)) - c).T  # (P, d)
    r = table.error_std.to(F64)
    truth_u = m_u + torch.linalg.cholesky(s_u) @ torch.randn(d, generator=g, dtype=F64)
    y = G @ truth_u + c + r * torch.randn(len(r), generator=g, dtype=F64)
    obs = obs.copy()
    for i, (row, var) in enumerate(zip(table.obs_index, table.variable)):
        obs[var].values[row] = float(y[i])
    gain = s_u @ G.T @ torch.linalg.inv(G @ s_u @ G.T + torch.diag(r**2))
    post_u = m_u + gain @ (y - G @ m_u - c)
    post_cov = s_u - gain @ G @ s_u

    n = 3000
    post = xlatda.assimilate(t0, obs, model, method="score", members=n, seed=1, steps=128,
                             gamma=0.1)
    assert dict(post.height.sizes) == {"member": n, "lat": 8, "lon": 16}
    assert post.time.values == t0.time.values[0]
    u_hat = (torch.as_tensor(post.lda.encode(pca).z.values, dtype=F64) - z_mean) / z_std
    prior_sd = float(s_u.diagonal().sqrt().min())
    err = (u_hat.mean(0) - post_u).abs().max() / prior_sd
    assert float(err) < 0.1
    assert float((m_u - post_u).abs().max()) / prior_sd > 0.3  # the data moved the posterior
    sd_ratio = torch.cov(u_hat.T).diagonal().sqrt() / post_cov.diagonal().sqrt()
    assert float((sd_ratio - 1).abs().max()) < 0.12


def test_explicit_guidance_reads_block_means_through_the_decoder():
    """H o D of a coarsened set: the decoded field averaged over each block."""
    from xlatda.generative import _WindowSampler

    ds = latlon_data(nt=60)
    pca, model = pca_with_unit_gaussian_score(ds)
    d = pca.latent_dim
    t0 = ds.isel(time=[5])
    obs = xlatda.obs.concat([xlatda.obs.coarsen(t0, 4, 1.0),
                             xlatda.obs.sample_points(t0, n=3, error_std=0.5, seed=2)])
    table = xlatda.obs.to_tensors(obs, pca.layout)
    sampler = _WindowSampler(model, {})
    observe = sampler._observe([table], [0])
    u = torch.randn(3, 1, d, generator=torch.Generator().manual_seed(0), dtype=F64)
    got = observe(u).to(F64)  # (3, P)
    x = pca.decode_tensor(u[:, 0].to(pca.dtype)).to(F64)  # (3, 1, lat, lon), physical
    fields = xr.Dataset({"height": (("member", "lat", "lon"), x[:, 0].numpy(), {"units": "m"})},
                        coords={"lat": t0.lat, "lon": t0.lon})
    want = xlatda.obs.observe(fields, obs)
    for i in range(3):
        ref = np.concatenate([want[v].isel(member=i).values[table.obs_index[table.variable == v]]
                              for v in dict.fromkeys(table.variable)])
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=1e-6)  # float32 decoder
    coarse = np.nansum(table.footprint_weight, 1) > 0
    assert coarse.sum() == (8 // 4) * (16 // 4)  # the block means, then 3 stations
    centres = xlatda.obs.observe(fields, obs.drop_dims("footprint")).height.values[:, coarse]
    assert np.abs(centres - got[:, coarse].numpy()).max() > 1e-3  # not the point form


# ---------------------------------------------------------------------------
# cycle
# ---------------------------------------------------------------------------
def test_cycle_score_runs_and_resumes_from_a_store(l96, l96_model, tmp_path):
    _, model = l96_model
    obs = xlatda.obs.sample_points(l96.isel(time=slice(200, 206)), n=4, error_std=0.5, seed=1)
    kw = dict(method="score", window=2, members=5, steps=6, seed=4, progress=False,
              joint=False)  # independent windows: a resumed run with more obs is identical
    full = xlatda.cycle(l96.isel(time=199), obs, model, **kw)
    assert dict(full.analysis.x.sizes) == {"time": 6, "member": 5, "k": 8}
    assert dict(full.background.x.sizes) == {"time": 6, "member": 5, "k": 8}
    assert np.isfinite(full.analysis.x.values).all()
    assert (full.diagnostics.n_obs.values == 4).all()
    store = tmp_path / "run.zarr"
    first = obs.where(obs.time <= l96.time.values[203], drop=True)
    part = xlatda.cycle(None, first, model, store=store, **kw)
    assert part.analysis.sizes["time"] == 4
    resumed = xlatda.cycle(None, obs, model, store=store, **kw)
    assert resumed.analysis.sizes["time"] == 6
    np.testing.assert_array_equal(resumed.analysis.x.values, full.analysis.x.values)
    np.testing.assert_array_equal(resumed.analysis.time.values, full.analysis.time.values)


def test_cycle_score_windows_on_the_time_step(l96, l96_model):
    _, model = l96_model
    # observations every 2nd step: a window of 2 observation times spans 2 steps
    obs = xlatda.obs.sample_points(l96.isel(time=[200, 202, 204, 206]), n=3, error_std=0.5,
                                   seed=1)
    res = xlatda.cycle(None, obs, model, method="score", window=2, members=3, steps=4,
                       progress=False)
    assert res.analysis.sizes["time"] == 4
    # every 3rd step: 2 times span 3 steps > window - 1 = 2
    obs3 = xlatda.obs.sample_points(l96.isel(time=[200, 203]), n=3, error_std=0.5, seed=1)
    with pytest.raises(ObservationError, match="time step"):
        xlatda.cycle(None, obs3, model, method="score", window=2, members=3, steps=4,
                     joint=False)
    # off the time step
    off = obs.assign_coords(time=obs.time + 0.025 * (np.arange(obs.sizes["obs"]) % 2))
    with pytest.raises(ObservationError, match="time step"):
        xlatda.cycle(None, off, model, method="score", window=2, members=3, steps=4)
    with pytest.raises(ConfigError, match="exceed"):
        xlatda.cycle(None, obs, model, method="score", window=4, members=3, steps=4,
                     joint=False)


def test_score_errors_before_work(l96, l96_model):
    pca, model = l96_model
    obs = xlatda.obs.sample_points(l96.isel(time=[200]), n=3, error_std=0.5, seed=1)
    with pytest.raises(NotFittedError, match="fit_score"):
        xlatda.assimilate(None, obs, pca, method="score", members=3)
    with pytest.raises(NotFittedError, match="fit_score"):
        xlatda.cycle(None, obs, pca, method="score", members=3)
    with pytest.raises(ConfigError, match="sampler settings"):
        xlatda.assimilate(None, obs, model, method="score", members=3, inflation=1.1)
    with pytest.raises(ConfigError, match="members"):
        xlatda.assimilate(None, obs, model, method="score")
    with pytest.raises(ConfigError, match="PixelScoreModel"):
        xlatda.assimilate(None, obs, model, method="score", members=3, space="physical")
    with pytest.raises(ConfigError, match="LatentModel with a score"):
        xlatda.assimilate(None, obs, xlatda.dynamics.physical.Lorenz96(), method="score",
                          members=3)
    two = xlatda.obs.sample_points(l96.isel(time=[200, 201]), n=3, error_std=0.5, seed=1)
    with pytest.raises(ObservationError, match="cycle"):
        xlatda.assimilate(None, two, model, method="score", members=3)


# ---------------------------------------------------------------------------
# pixel-space baseline
# ---------------------------------------------------------------------------
def test_pixel_space_baseline_fits_saves_and_assimilates(tmp_path):
    ds = latlon_data(nt=60)
    pix = xlatda.fit_score(ds, space="physical", window=2, widths=(8, 16), time_embedding=8,
                           epochs=2, batch_size=16, progress=False)
    assert isinstance(pix, xlatda.PixelScoreModel) and pix.window == 2
    assert pix.time_step == {"value": 3600.0, "units": "s"}
    pix.save(tmp_path / "pix.zarr")
    back = xlatda.open_model(tmp_path / "pix.zarr")
    assert isinstance(back, xlatda.PixelScoreModel)
    for k, v in pix.score.state_dict().items():
        assert torch.equal(v, back.score.state_dict()[k])
    obs = xlatda.obs.concat([xlatda.obs.coarsen(ds.isel(time=[40, 41]), 4, 1.0),
                             xlatda.obs.sample_points(ds.isel(time=[40, 41]), n=3,
                                                      error_std=0.5, seed=2)])
    res = xlatda.cycle(None, obs, back, method="score", window=2, members=3, steps=3,
                       progress=False)
    assert dict(res.analysis.height.sizes) == {"time": 2, "member": 3, "lat": 8, "lon": 16}
    one = obs.where(obs.time == obs.time[0], drop=True)
    post = xlatda.assimilate(None, one, back, method="score", members=2, steps=3)
    assert dict(post.height.sizes) == {"member": 2, "lat": 8, "lon": 16}
    assert np.isfinite(post.height.values).all()


# ---------------------------------------------------------------------------
# the whole span sampled jointly (composed Markov-blanket score, blocks)
# ---------------------------------------------------------------------------
def _ar1_cov(length, phi):
    i = torch.arange(length)
    lag = (i[:, None] - i[None, :]).abs()
    d = len(phi)
    c = torch.zeros(length, d, length, d, dtype=F64)
    for k, p in enumerate(phi):
        c[:, k, :, k] = p**lag
    return c.reshape(length * d, length * d)


def test_cycle_score_span_matches_the_kalman_smoother_through_the_decoder():
    """Latent AR(1) prior (exact local score over windows of 5), a span of 15 hourly
    states observed every 2nd hour through H o D (PCA, affine), sampled in 3 blocks of at
    most 9 states or in one: mean and variance at every time, and the lag-2-hour
    covariances (across the block boundaries), against the exact smoother of the
    standardised latents. Measured (128 steps, 1000 members; sampling error about 0.02 and
    7 %): one block 0.07 prior std and 13 %; blocks of 9: 0.12 and 14 % (the first states a
    block takes over from the one before did not see the observations beyond it)."""
    ds = latlon_data()
    pca = xlatda.fit(ds, encoder="pca", latent_dim=3, progress=False)
    d, w, n_t, phi = 3, 5, 15, (0.9, 0.6, 0.8)
    g = torch.Generator().manual_seed(5)
    z_mean = torch.randn(d, generator=g, dtype=F64)
    z_std = torch.rand(d, generator=g, dtype=F64) + 0.5
    local = GaussianEps(torch.zeros(w, d, dtype=F64), _ar1_cov(w, phi))
    model = dataclasses.replace(pca, score=ScorePrior(
        local, mean=z_mean, std=z_std, time_step={"value": 3600.0, "units": "s"}))
    span = ds.isel(time=slice(100, 100 + n_t))
    obs = xlatda.obs.sample_points(span.isel(time=slice(0, n_t, 2)), n=3, error_std=0.5,
                                   seed=2)
    table = xlatda.obs.to_tensors(obs, pca.layout)
    hours = (table.time - span.time.values[0]) / np.timedelta64(1, "h")
    state = np.round(hours.astype(float)).astype(int)
    pts = pca.points_tensor(table.lat, table.lon)

    def h(u):  # standardised latent -> all observations (each read at its own state's u)
        return pca.decode_points((z_mean + z_std * u).to(pca.dtype), pts,
                                 table.channel).to(F64)

    c = h(torch.zeros(1, d, dtype=F64))[0]
    G = (h(torch.eye(d, dtype=F64)) - c).T  # (P, d)
    a = torch.zeros(len(c), n_t * d, dtype=F64)
    for p, s in enumerate(state.tolist()):
        a[p, s * d:(s + 1) * d] = G[p]
    s_u = _ar1_cov(n_t, phi)
    r = table.error_std.to(F64)
    truth = torch.linalg.cholesky(s_u) @ torch.randn(n_t * d, generator=g, dtype=F64)
    y = a @ truth + c + r * torch.randn(len(r), generator=g, dtype=F64)
    obs = obs.copy()
    for i, (row, var) in enumerate(zip(table.obs_index, table.variable)):
        obs[var].values[row] = float(y[i])
    gain = s_u @ a.T @ torch.linalg.inv(a @ s_u @ a.T + torch.diag(r**2))
    post_u = gain @ (y - c)
    post_cov = s_u - gain @ a @ s_u

    idx = torch.cat([torch.arange(s * d, (s + 1) * d) for s in range(0, n_t, 2)])
    k = torch.arange(len(idx) - d)
    lagged = post_cov[idx[k], idx[k + d]]
    assert float((post_u[idx]).abs().max()) > 0.5  # the data moved the posterior
    assert float(lagged.abs().max()) > 0.3
    for block, mean_tol in ((64, 0.1), (9, 0.16)):
        res = xlatda.cycle(None, obs, model, method="score", members=1000, seed=1, steps=128,
                           block=block, progress=False)
        # analyses at the observation times only: states 0, 2, ..., 14
        assert res.analysis.sizes["time"] == 8
        z = torch.as_tensor(res.analysis.lda.encode(pca).z.values, dtype=F64)  # (8, N, d)
        u = ((z - z_mean) / z_std).transpose(0, 1).reshape(1000, -1)
        assert float((u.mean(0) - post_u[idx]).abs().max()) < mean_tol
        var_ratio = u.var(0) / post_cov.diagonal()[idx]
        assert float((var_ratio - 1).abs().max()) < 0.2
        # continuity: consecutive analyses covary as the smoother says
        c_hat = torch.cov(u.T)
        assert float((c_hat[k, k + d] - lagged).abs().max()) < 0.1
    indep = xlatda.cycle(None, obs, model, method="score", members=1000, seed=1, steps=64,
                         joint=False, progress=False)
    zi = torch.as_tensor(indep.analysis.lda.encode(pca).z.values, dtype=F64)
    ui = ((zi - z_mean) / z_std).transpose(0, 1).reshape(1000, -1)
    assert float(torch.cov(ui.T)[k, k + d].abs().max()) < 0.1  # windows know nothing of
    # each other


def test_cycle_score_span_settings(l96, l96_model):
    _, model = l96_model  # window 3
    obs = xlatda.obs.sample_points(l96.isel(time=[200, 203, 210]), n=3, error_std=0.5, seed=1)
    # a span longer than the window, any window of observation times per record
    res = xlatda.cycle(None, obs, model, method="score", window=2, members=3, steps=4,
                       block=5, progress=False)
    assert res.analysis.sizes["time"] == 3 and np.isfinite(res.analysis.x.values).all()
    again = xlatda.cycle(None, obs, model, method="score", window=1, members=3, steps=4,
                         block=5, progress=False)
    np.testing.assert_array_equal(again.analysis.x.values, res.analysis.x.values)
    with pytest.raises(ConfigError, match="block"):
        xlatda.cycle(None, obs, model, method="score", members=3, block=4)


# ---------------------------------------------------------------------------
# representation error of the decoder in the likelihood
# ---------------------------------------------------------------------------
def test_representation_error_enters_the_likelihood_as_added_error_variance():
    """representation_error=True: the decoder's held-out reconstruction RMSE of each value's
    channel (history['representation_error']) is added in quadrature to its observation
    error. Against the exact Kalman posterior with R + rep^2 (PCA decoder: affine; exact
    Gaussian ε): mean within 0.1 prior std, std within 12 %; without the option the
    posterior is the narrower one of R alone."""
    ds = latlon_data()
    pca = xlatda.fit(ds, encoder="pca", latent_dim=3, progress=False)
    assert "representation_error" in pca.history  # recorded by fit (validation=0.1)
    rep = 0.8
    history = {**pca.history, "representation_error": {
        **pca.history["representation_error"], "rmse": [rep]}}
    d = pca.latent_dim
    g = torch.Generator().manual_seed(4)
    z_mean = torch.randn(d, generator=g, dtype=F64)
    z_std = torch.rand(d, generator=g, dtype=F64) + 0.5
    model = dataclasses.replace(pca, history=history, score=ScorePrior(
        GaussianEps(torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)), mean=z_mean,
        std=z_std))
    t0 = ds.isel(time=[50])
    obs = xlatda.obs.sample_points(t0, n=6, error_std=0.5, seed=3)
    table = xlatda.obs.to_tensors(obs, pca.layout)
    pts = pca.points_tensor(table.lat, table.lon)

    def h(u):
        return pca.decode_points((z_mean + z_std * u).to(pca.dtype), pts,
                                 table.channel).to(F64)

    c = h(torch.zeros(1, d, dtype=F64))[0]
    G = (h(torch.eye(d, dtype=F64)) - c).T
    r_tot = (table.error_std.to(F64) ** 2 + rep**2).sqrt()
    y = G @ torch.randn(d, generator=g, dtype=F64) + c + r_tot * torch.randn(
        len(c), generator=g, dtype=F64)
    obs = obs.copy()
    for i, (row, var) in enumerate(zip(table.obs_index, table.variable)):
        obs[var].values[row] = float(y[i])
    n = 2000
    sds = {}
    for flag in (True, False):
        r2 = table.error_std.to(F64) ** 2 + (rep**2 if flag else 0.0)
        gain = G.T @ torch.linalg.inv(G @ G.T + torch.diag(r2))
        post_u, post_cov = gain @ (y - c), torch.eye(d, dtype=F64) - gain @ G
        post = xlatda.assimilate(t0, obs, model, method="score", members=n, seed=2,
                                 steps=128, gamma=0.1, representation_error=flag)
        u = (torch.as_tensor(post.lda.encode(pca).z.values, dtype=F64) - z_mean) / z_std
        sds[flag] = u.std(0)
        if flag:
            assert float((u.mean(0) - post_u).abs().max()) < 0.1
            ratio = sds[flag] / post_cov.diagonal().sqrt()
            assert float((ratio - 1).abs().max()) < 0.12
    assert bool((sds[True] > 1.1 * sds[False]).all())
    with pytest.raises(ConfigError, match="representation_error"):
        xlatda.assimilate(t0, obs, model, method="score", members=2, representation_error=1)
    bare = dataclasses.replace(model, history={})
    with pytest.raises(ConfigError, match="held-out reconstruction"):
        xlatda.assimilate(t0, obs, bare, method="score", members=2, representation_error=True)
