"""Representation error in score analyses: the decoder's off-manifold error model.

``xlatda.fit_representation_error`` estimates it on held-out states, ``method="score"``
with ``representation_error=True`` adds ``A Σ_rep Aᵀ`` to the likelihood's observation
error (block means average the correlated error), and ``xlatda.predictive_samples``
returns ``D(z) + ε``. Checked against the exact posterior predictive of a
linear-Gaussian model whose decoder has rank 3 on a 128-value state.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import ConfigError
from xlatda.methods.diffusion import GaussianEps, ScorePrior
from xlatda.methods.score import RepresentationError
from xlatda.obs.operator import build_operator

from .test_score_api import latlon_data

F64 = torch.float64


def _exact_model(seed=4, k=2, latent=3):
    """PCA decoder of rank ``latent``, an exact Gaussian score prior over its codes, and a
    known representation-error model ``U^T U + diag(d)`` (smooth modes + noise)."""
    ds = latlon_data()
    pca = xlatda.fit(ds, encoder="pca", latent_dim=latent, progress=False)
    d = pca.latent_dim
    g = torch.Generator().manual_seed(seed)
    z_mean = torch.randn(d, generator=g, dtype=F64)
    z_std = torch.rand(d, generator=g, dtype=F64) + 0.5
    n = int(np.prod(pca.layout.spatial_shape))
    lat = torch.linspace(-1.0, 1.0, pca.layout.spatial_shape[0], dtype=F64)
    lon = torch.linspace(0.0, 2 * np.pi, pca.layout.spatial_shape[1] + 1, dtype=F64)[:-1]
    modes = torch.stack([torch.outer(torch.cos(2 * lat), torch.sin(3 * lon)).reshape(-1),
                         torch.outer(lat, torch.cos(5 * lon)).reshape(-1)])[:k] * 0.8
    var = 0.15 + 0.1 * torch.rand(n, generator=g, dtype=F64)
    rec = {"rmse": [float(((modes**2).sum(0) + var).mean().sqrt())], "channels": ["height"],
           "kind": "covariance", "modes": modes.tolist(), "residual_var": var.tolist(),
           "time_correlation": 0.0, "time_step": None, "n_samples": 0}
    model = dataclasses.replace(
        pca, history={**pca.history, "representation_error": rec},
        score=ScorePrior(GaussianEps(torch.zeros(1, d, dtype=F64), torch.eye(d, dtype=F64)),
                         mean=z_mean, std=z_std))
    return ds, pca, model, z_mean, z_std, RepresentationError(modes, var, 0.0)


def _prior_state(pca, z_mean, z_std):
    """``(c0 (n,), B (n, d))``: the decoded prior mean code and the decoded prior std
    columns minus it, so the state's prior is ``c0 + B N(0, I)`` (the decoder is affine)."""
    d = pca.latent_dim
    with torch.no_grad():
        c0 = pca.decode_tensor(z_mean[None].to(pca.dtype)).to(F64).reshape(-1)
        B = (pca.decode_tensor((z_mean + torch.diag(z_std)).to(pca.dtype)).to(F64)
             .reshape(d, -1) - c0).T
    return c0, B


def test_predictive_samples_match_the_exact_posterior_predictive_of_the_state():
    """Linear-Gaussian: x = D z + e, e ~ N(0, Σ_rep), y = A x + noise (block means of 4 x 4
    cells and stations). The exact posterior predictive of x is Gaussian and known. The
    score sampler with representation_error=True (Tweedie guidance, exact Gaussian score)
    plus predictive_samples reproduces its mean (within 0.1 prior std) and variance
    (within 20 % at every grid value); the decoded members alone miss the off-manifold
    variance (ratio < 0.5 somewhere), and without the error model in the likelihood the
    predictive variance falls short by more than 20 % (measured: 0.96-1.12 with, 0.72 min
    without)."""
    ds, pca, model, z_mean, z_std, rep = _exact_model()
    L = pca.layout
    t0 = ds.isel(time=[50])
    d = pca.latent_dim
    c0, B = _prior_state(pca, z_mean, z_std)
    cov_x = B @ B.T + rep.modes.T @ rep.modes + torch.diag(rep.var)
    g = torch.Generator().manual_seed(7)
    x_true = (c0 + B @ torch.randn(d, generator=g, dtype=F64)
              + rep.draw(1, [0.0], generator=g)[0, 0])
    truth = t0.copy(data={"height": x_true.reshape(1, *L.spatial_shape).numpy()})
    err = 0.3
    obs = xlatda.obs.concat([xlatda.obs.coarsen(truth, 4, err, seed=1),
                             xlatda.obs.sparsify(truth, 4, err, seed=2)])
    table = xlatda.obs.to_tensors(obs, L)
    A = build_operator(L, table, dtype=F64).matrix.to_dense()
    y = table.values.to(F64)
    S = A @ cov_x @ A.T + err**2 * torch.eye(len(y), dtype=F64)
    K = cov_x @ A.T @ torch.linalg.inv(S)
    mean_x = c0 + K @ (y - A @ c0)
    var_x = (cov_x - K @ A @ cov_x).diagonal()
    prior_sd = cov_x.diagonal().sqrt()

    kw = dict(members=3000, seed=2, steps=64, cg_iters=16, grid="logsnr")
    post = xlatda.assimilate(t0, obs, model, method="score", representation_error=True, **kw)
    pred = xlatda.predictive_samples(post, obs, model, seed=3)
    again = xlatda.predictive_samples(post, obs, model, seed=3)
    assert pred.identical(again)  # bit-identical for a seed

    def moments(res):
        v = torch.as_tensor(res.height.transpose("member", ...).values, dtype=F64)
        v = v.reshape(v.shape[0], -1)
        return v.mean(0), v.var(0)

    m, v = moments(pred)
    assert float(((m - mean_x) / prior_sd).abs().max()) < 0.1
    ratio = v / var_x
    assert float((ratio - 1).abs().max()) < 0.2, (float(ratio.min()), float(ratio.max()))
    _, v_dec = moments(post)  # decoded members: on the rank-3 manifold
    assert float((v_dec / var_x).min()) < 0.5
    plain = xlatda.assimilate(t0, obs, model, method="score", representation_error=False, **kw)
    _, v_plain = moments(xlatda.predictive_samples(plain, obs, model, seed=3))
    # without the error in the likelihood the latent posterior is too sure (ratio 0.72)
    assert float((v_plain / var_x).min()) < 0.8


def test_unconditional_predictive_adds_the_error_models_variance():
    """conditional=False adds ε from the error model alone: the variance grows by diag Σ_rep
    (within sampling error), the members' mean is kept up to the noise's."""
    ds, _, model, *_, rep = _exact_model()
    t0 = ds.isel(time=[50])
    obs = xlatda.obs.sparsify(t0, 4, 0.3, seed=2)
    post = xlatda.assimilate(t0, obs, model, method="score", members=4000, seed=1, steps=16,
                             representation_error=True)
    pred = xlatda.predictive_samples(post, obs, model, conditional=False, seed=0)
    a = torch.as_tensor(post.height.transpose("member", ...).values, dtype=F64).flatten(1)
    b = torch.as_tensor(pred.height.transpose("member", ...).values, dtype=F64).flatten(1)
    added = b.var(0) - a.var(0)
    want = (rep.modes**2).sum(0) + rep.var
    assert float(((added - want) / want).abs().mean()) < 0.1
    assert not pred.identical(xlatda.predictive_samples(post, obs, model, conditional=False,
                                                        seed=1))


def test_fit_representation_error_holds_the_held_out_second_moment_and_block_means():
    """With as many modes as held-out states the model is the residuals' exact second
    moment: every value's mean square, and the mean square of a block-mean's residual
    (A Σ Aᵀ of the footprint operator), match the held-out residuals to rounding; the
    lag-one correlation of these AR(1) fields is large; the per-channel rmse is the
    held-out RMSE."""
    ds = latlon_data(nt=240)
    train, held = ds.isel(time=slice(0, 160)), ds.isel(time=slice(160, 200))
    pca = xlatda.fit(train, encoder="pca", latent_dim=3, progress=False)
    m = xlatda.fit_representation_error(pca, held, modes=40)
    rec = m.history["representation_error"]
    back = xlatda.decode(xlatda.encode(held, pca), pca)
    e = torch.as_tensor((held.height - back.height).transpose("time", ...).values,
                        dtype=F64).flatten(1)
    assert rec["rmse"][0] == pytest.approx(float(e.square().mean().sqrt()), rel=1e-9)
    rep = xlatda.generative.representation_model(m)
    diag = (rep.modes**2).sum(0) + rep.var
    assert torch.allclose(diag, e.square().mean(0), rtol=1e-8, atol=1e-12)
    obs = xlatda.obs.coarsen(held.isel(time=[0]), 4, 0.1, seed=0)
    A = build_operator(pca.layout, xlatda.obs.to_tensors(obs, pca.layout),
                       dtype=F64).matrix.to_dense()
    cov = rep.obs_covariance([A], [0.0])
    emp = (e @ A.T).square().mean(0)
    assert torch.allclose(cov.diagonal(), emp, rtol=1e-8)
    assert float(cov.diagonal().mean()) < 0.9 * float(diag.mean())  # block means: smaller
    assert rec["time_correlation"] > 0.5
    few = xlatda.fit_representation_error(pca, held, modes=2).history["representation_error"]
    assert len(few["modes"]) == 2
    assert few["residual_var"] != rec["residual_var"]
    with pytest.raises(ConfigError, match="modes"):
        xlatda.fit_representation_error(pca, held, modes=-1)


def test_representation_covariance_needs_its_model_and_refuses_latent_conditioning():
    ds, pca, model, *_ = _exact_model()
    t0 = ds.isel(time=[50])
    obs = xlatda.obs.sparsify(t0, 4, 0.3, seed=2)
    post = xlatda.assimilate(t0, obs, model, method="score", members=3, steps=4)
    with pytest.raises(ConfigError, match="fit_representation_error"):
        xlatda.predictive_samples(post, obs, pca)
    with pytest.raises(ConfigError, match="member"):
        xlatda.predictive_samples(post.isel(member=0), obs, model)


def test_the_error_model_is_saved_with_the_model(tmp_path):
    """history['representation_error'] travels through save / open_model: the reopened
    model's error model is the same, and its predictive samples are bit-identical."""
    ds = latlon_data(nt=200)
    pca = xlatda.fit(ds.isel(time=slice(0, 150)), encoder="pca", latent_dim=3, progress=False)
    pca = xlatda.fit_representation_error(pca, ds.isel(time=slice(150, 200)), modes=4)
    model = xlatda.fit_score(ds.isel(time=slice(0, 150)), pca, window=3, epochs=2, hidden=16,
                             depth=1, progress=False)
    model.save(tmp_path / "m.zarr")
    back = xlatda.open_model(tmp_path / "m.zarr")
    a = xlatda.generative.representation_model(model)
    b = xlatda.generative.representation_model(back)
    assert torch.equal(a.modes, b.modes) and torch.equal(a.var, b.var) and a.phi == b.phi
    t0 = ds.isel(time=[170])
    obs = xlatda.obs.sparsify(t0, 4, 0.3, seed=2)
    post = xlatda.assimilate(t0, obs, model, method="score", members=4, steps=4,
                             representation_error=True)
    assert xlatda.predictive_samples(post, obs, model, seed=5).identical(
        xlatda.predictive_samples(post, obs, back, seed=5))


def test_adaptive_scale_recovers_an_underestimated_error_model():
    """Truth drawn with 4 Σ_rep, the model holding Σ_rep: scale='adaptive' estimates the
    factor from the window's own misfit (here 2.5-6.5 over seeds; no truth used), and the
    predictive variance moves towards the exact one of the 4 Σ_rep model; scale=4 is
    that model's predictive (within 20 %)."""
    ds, pca, model, z_mean, z_std, rep = _exact_model()
    L = pca.layout
    t0 = ds.isel(time=[50])
    d = pca.latent_dim
    c0, B = _prior_state(pca, z_mean, z_std)
    cov_x = B @ B.T + 4.0 * (rep.modes.T @ rep.modes + torch.diag(rep.var))
    alphas = []
    for seed in range(3):
        g = torch.Generator().manual_seed(10 + seed)
        x_true = (c0 + B @ torch.randn(d, generator=g, dtype=F64)
                  + 2.0 * rep.draw(1, [0.0], generator=g)[0, 0])
        truth = t0.copy(data={"height": x_true.reshape(1, *L.spatial_shape).numpy()})
        obs = xlatda.obs.sparsify(truth, 2, 0.3, seed=seed)
        post = xlatda.assimilate(t0, obs, model, method="score", members=500, seed=2,
                                 steps=32, cg_iters=16, grid="logsnr",
                                 representation_error=True)
        pred = xlatda.predictive_samples(post, obs, model, scale="adaptive", seed=3)
        alphas.append(pred.attrs["representation_scale"][0])
    assert all(2.0 < a < 8.0 for a in alphas), alphas
    table = xlatda.obs.to_tensors(obs, L)
    A = build_operator(L, table, dtype=F64).matrix.to_dense()
    S = A @ cov_x @ A.T + 0.09 * torch.eye(A.shape[0], dtype=F64)
    var_x = (cov_x - cov_x @ A.T @ torch.linalg.solve(S, A @ cov_x)).diagonal()
    # the likelihood with 4 Σ: assimilate with the scaled model's history
    rec = dict(model.history["representation_error"])
    rec["modes"] = (2.0 * rep.modes).tolist()
    rec["residual_var"] = (4.0 * rep.var).tolist()
    big = dataclasses.replace(model, history={**model.history, "representation_error": rec})
    post4 = xlatda.assimilate(t0, obs, big, method="score", members=3000, seed=2, steps=32,
                              cg_iters=16, grid="logsnr", representation_error=True)
    v4 = torch.as_tensor(xlatda.predictive_samples(post4, obs, model, scale=4.0, seed=1)
                         .height.transpose("member", ...).values, dtype=F64).flatten(1).var(0)
    assert float((v4 / var_x - 1).abs().max()) < 0.2
    with pytest.raises(ConfigError, match="scale"):
        xlatda.predictive_samples(post4, obs, model, scale="auto")


def test_per_time_whitening_above_the_joint_size_agrees_when_times_are_uncorrelated(
        monkeypatch):
    """Above REP_MAX_JOINT observations each time is whitened on its own; with a time
    correlation of 0 that is the same likelihood, so a two-time cycle gives the same
    samples (to rounding) either way; with a correlation the joint form differs."""
    ds, _, model, *_ = _exact_model()
    d = model.latent_dim
    model = dataclasses.replace(model, score=ScorePrior(
        GaussianEps(torch.zeros(2, d, dtype=F64), torch.eye(2 * d, dtype=F64)),
        mean=model.score.mean, std=model.score.std,
        time_step={"value": 3600.0, "units": "s"}))
    window = ds.isel(time=[50, 51])
    obs = xlatda.obs.sparsify(window, 4, 0.3, seed=2)
    kw = dict(members=6, steps=8, window=2, seed=3, representation_error=True)

    def run():
        return xlatda.cycle(None, obs, model, method="score", **kw).analysis.height.values

    joint = run()
    monkeypatch.setattr(xlatda.generative, "REP_MAX_JOINT", 10)
    apart = run()
    np.testing.assert_allclose(apart, joint, rtol=1e-7, atol=1e-9)
    rec = {**model.history["representation_error"], "time_correlation": 0.9,
           "time_step": {"value": 3600.0, "units": "s"}}
    model = dataclasses.replace(model, history={**model.history, "representation_error": rec})
    monkeypatch.undo()
    assert not np.allclose(run(), joint, rtol=1e-3)
