"""Adaptive representation error: the factor on Σ_rep from the observations themselves.

``xlatda.methods.score.representation_scale`` returns the factor s² at which the
members' residuals to their own observations have a mean chi2 of one per observation
under ``R + s² A Σ_rep Aᵀ``; ``representation_scale="adaptive"`` of ``method="score"``
analyses once with the fitted model, estimates s² from that analysis and analyses
again with it. Checked on linear-Gaussian cases where the true off-manifold variance
is known (4 Σ_rep: the truth is twice as far off the manifold as the fitted model says).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.diffusion import GaussianEps, ScorePrior
from xlatda.methods.score import representation_scale
from xlatda.obs.operator import build_operator

from .test_score_representation import _exact_model, _prior_state

F64 = torch.float64
TRUE_SCALE = 4.0


def _linear_case(seed=0, n=400, k=4, rank=6):
    """Decoder G (n, k), prior z ~ N(0, I), representation error Σ = UᵀU + diag(d), every
    value observed with error 0.3."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(n, k, generator=g, dtype=F64)
    U = 0.3 * torch.randn(rank, n, generator=g, dtype=F64)
    sigma = U.T @ U + torch.diag(0.2 + 0.1 * torch.rand(n, generator=g, dtype=F64))
    return G, sigma, 0.3 * torch.ones(n, dtype=F64)


def _posterior(G, sigma, r, scale):
    """Kalman gain and posterior covariance of z under the assumed error R + scale Σ."""
    S = G @ G.T + torch.diag(r**2) + scale * sigma
    K = G.T @ torch.linalg.inv(S)  # (k, P)
    return K, torch.eye(G.shape[1], dtype=F64) - K @ G


def test_fixed_point_in_expectation_is_the_true_scale_and_contracts_by_k_over_p():
    """Exact expected residual covariance of exact posterior members under an assumed
    factor s: E[d dᵀ] = (I - G K) C (I - G K)ᵀ + G P_a Gᵀ with C = G Gᵀ + R + 4 Σ. On all
    residuals (no Jacobian) the estimate is exactly 4 at s = 4 (the fixed point) and one
    step from s = 1 closes all but ~k/P of the gap (4 latents, 400 observations:
    measured 1.0 %, and the next step again 1.0 % of what is left). Off the decoder's
    range (``jacobian=G``) it is 4 from any assumed s in one step (to rounding)."""
    G, sigma, r = _linear_case()
    n, k = G.shape
    C = G @ G.T + torch.diag(r**2) + TRUE_SCALE * sigma
    blocks = [(slice(0, n), sigma)]

    def step(scale, jacobian=None):
        K, Pa = _posterior(G, sigma, r, scale)
        ImGK = torch.eye(n, dtype=F64) - G @ K
        E = ImGK @ C @ ImGK.T + G @ Pa @ G.T
        root = torch.linalg.cholesky(E)  # residuals whose mean outer product is E exactly
        return representation_scale(math.sqrt(n) * root.T, r, blocks, jacobian=jacobian)

    assert step(TRUE_SCALE) == pytest.approx(TRUE_SCALE, rel=1e-9)
    s1 = step(1.0)
    gap = abs(s1 - TRUE_SCALE) / (TRUE_SCALE - 1.0)
    assert gap < 3 * k / n, (s1, gap)
    s2 = step(s1)
    assert abs(s2 - TRUE_SCALE) < gap * abs(s1 - TRUE_SCALE) * 3 + 1e-9
    for s in (0.25, 1.0, 16.0):
        assert step(s, jacobian=G) == pytest.approx(TRUE_SCALE, rel=1e-8)


def test_sampled_estimate_from_exact_posterior_members_converges_to_the_true_scale():
    """Windows with truths x = G z + e, e ~ N(0, 4 Σ) (the model's Σ is 4 times too small),
    exact posterior members (64) under the fitted factor 1. Off the decoder's range
    (``jacobian=G``) one estimate; on all residuals two steps of s ← estimate(s). Tolerance
    from the estimator's own sampling error: one window's chi2 over P = 400 observations
    has variance 2P, and d chi2/ds² at s = 4 gives a delta-method std of 7.7 % of s² per
    window (measured over 40 windows, maximum likelihood with and without the Jacobian:
    std 7.4 %, mean -1.9 %). So every window within 3 std (25 %) and the mean of 8 within
    3 std / sqrt(8) (8 %)."""
    G, sigma, r = _linear_case()
    n, k = G.shape
    L = torch.linalg.cholesky(TRUE_SCALE * sigma)
    blocks = [(slice(0, n), sigma)]
    g = torch.Generator().manual_seed(3)
    errs, errs_j = [], []
    for _ in range(8):
        z = torch.randn(k, generator=g, dtype=F64)
        y = G @ z + L @ torch.randn(n, generator=g, dtype=F64) + r * torch.randn(
            n, generator=g, dtype=F64)
        scale = 1.0
        for it in range(2):
            K, Pa = _posterior(G, sigma, r, scale)
            za = K @ y
            members = za + torch.randn(64, k, generator=g, dtype=F64) @ torch.linalg.cholesky(
                Pa).T
            res = y - members @ G.T
            if it == 0:
                errs_j.append(representation_scale(res, r, blocks, jacobian=G) / TRUE_SCALE
                              - 1.0)
            scale = representation_scale(res, r, blocks)
        errs.append(scale / TRUE_SCALE - 1.0)
    for e in (errs, errs_j):
        assert max(abs(v) for v in e) < 0.25, e
        assert abs(float(np.mean(e))) < 0.08, e


def test_representation_scale_edge_cases_and_refusals():
    one = [(slice(0, 1), torch.ones(1, 1, dtype=F64))]
    small = torch.tensor([[0.5], [-0.5]], dtype=F64)  # chi2 below 1 with R alone: 0
    assert representation_scale(small, torch.ones(1, dtype=F64), one) == 0.0
    huge = torch.tensor([[1e4]], dtype=F64)
    assert representation_scale(huge, torch.ones(1, dtype=F64), one, max_scale=10.0) == 10.0
    with pytest.raises(ShapeError, match="cover"):
        representation_scale(torch.ones(2, 3, dtype=F64), torch.ones(3, dtype=F64), one)
    with pytest.raises(ShapeError, match="residuals"):
        representation_scale(torch.ones(3, dtype=F64), torch.ones(3, dtype=F64), one)
    with pytest.raises(ShapeError, match="jacobian"):
        representation_scale(small, torch.ones(1, dtype=F64), one, jacobian=torch.ones(2, 1))
    # as many latent directions as observations: no degree of freedom left
    assert math.isnan(representation_scale(small, torch.ones(1, dtype=F64), one,
                                           jacobian=torch.ones(1, 1, dtype=F64)))


def _far_truths(pca, model, z_mean, z_std, rep, times, seed):
    """Independent truths at ``times`` drawn from the decoder's prior plus 2 ε (variance
    4 Σ_rep): farther from the manifold than the fitted model holds."""
    c0, B = _prior_state(pca, z_mean, z_std)
    d = pca.latent_dim
    g = torch.Generator().manual_seed(seed)
    fields = [c0 + B @ torch.randn(d, generator=g, dtype=F64)
              + math.sqrt(TRUE_SCALE) * rep.draw(1, [0.0], generator=g)[0, 0]
              for _ in range(len(times.time))]
    shape = pca.layout.spatial_shape
    return times.copy(data={"height": torch.stack(fields).reshape(-1, *shape).numpy()})


def test_adaptive_score_analysis_estimates_the_true_scale_without_the_truth():
    """The score sampler (exact Gaussian score, Tweedie guidance) on 12 independent
    windows observed at all 128 values: the per-window factor (``CycleResult.
    diagnostics.representation_scale``, from the residuals off the decoder's range)
    averages within 15 % of the true 4 (one window's 125 degrees of freedom give a
    relative std of about sqrt(2/125) = 13 %, the mean of 12 ~4 %); same seed
    bit-identical; the predictive samples' own adaptive factor of that analysis (all
    residuals, no Jacobian) is within 20 % of it; with it the predictive variance of the
    state is the exact one under 4 Σ_rep on average over the values (within 10 %), with
    the fitted model short (< 0.85)."""
    ds, pca, model, z_mean, z_std, rep = _exact_model()
    times = ds.isel(time=slice(40, 52))
    truth = _far_truths(pca, model, z_mean, z_std, rep, times, seed=11)
    obs = xlatda.obs.sparsify(truth, 1, 0.3, seed=5)
    kw = dict(members=200, window=1, joint=False, seed=2, steps=32, cg_iters=16,
              grid="logsnr", representation_error=True, progress=False)
    res = xlatda.cycle(None, obs, model, method="score", representation_scale="adaptive", **kw)
    scales = res.diagnostics.representation_scale.values
    assert scales.shape == (12,)
    assert abs(float(scales.mean()) / TRUE_SCALE - 1.0) < 0.15, scales
    again = xlatda.cycle(None, obs, model, method="score", representation_scale="adaptive",
                         **kw)
    assert res.analysis.identical(again.analysis)
    np.testing.assert_array_equal(again.diagnostics.representation_scale.values, scales)
    one = res.analysis.isel(time=[3])
    o3 = obs.where(obs.time == one.time[0], drop=True)
    pred = xlatda.predictive_samples(one, o3, model, scale="adaptive", seed=1)
    assert pred.attrs["representation_scale"][0] == pytest.approx(float(scales[3]), rel=0.2)
    # the exact posterior predictive variance of the state under the true 4 Σ_rep
    _, B = _prior_state(pca, z_mean, z_std)
    cov = B @ B.T + TRUE_SCALE * (rep.modes.T @ rep.modes + torch.diag(rep.var))
    A = build_operator(pca.layout, xlatda.obs.to_tensors(o3, pca.layout),
                       dtype=F64).matrix.to_dense()
    S = A @ cov @ A.T + 0.09 * torch.eye(A.shape[0], dtype=F64)
    v_true = (cov - cov @ A.T @ torch.linalg.solve(S, A @ cov)).diagonal()
    fixed = xlatda.cycle(None, obs, model, method="score", **kw).analysis.isel(time=[3])
    pred_fix = xlatda.predictive_samples(fixed, o3, model, seed=1)

    def ratio(p):
        v = torch.as_tensor(p.height.transpose("member", ...).values, dtype=F64).flatten(1)
        return float((v.var(0) / v_true).mean())

    # measured: 1.02 adaptive, 0.78 with the fitted (4 times too small) model
    assert abs(ratio(pred) - 1.0) < 0.1
    assert ratio(pred_fix) < 0.85


def test_a_fixed_scale_is_the_scaled_model_bit_for_bit_and_the_default_is_unchanged():
    """``representation_scale=4.0`` gives the analysis of a model whose fitted Σ_rep is 4
    times larger (bit for bit); 1.0 is the default; non-adaptive runs report no scale."""
    ds, _, model, *_, rep = _exact_model()
    t0 = ds.isel(time=[50])
    obs = xlatda.obs.sparsify(t0, 2, 0.3, seed=2)
    kw = dict(members=6, steps=8, seed=1, representation_error=True)
    rec = dict(model.history["representation_error"])
    rec["modes"] = (2.0 * rep.modes).tolist()
    rec["residual_var"] = (4.0 * rep.var).tolist()
    big = dataclasses.replace(model, history={**model.history, "representation_error": rec})
    a = xlatda.assimilate(t0, obs, model, method="score", representation_scale=4.0, **kw)
    b = xlatda.assimilate(t0, obs, big, method="score", **kw)
    assert a.identical(b)
    c = xlatda.assimilate(t0, obs, model, method="score", representation_scale=1.0, **kw)
    d = xlatda.assimilate(t0, obs, model, method="score", **kw)
    assert c.identical(d)
    res = xlatda.cycle(None, obs, model, method="score", members=4, steps=4, window=1,
                       representation_error=True, progress=False)
    assert "representation_scale" not in res.diagnostics


def test_representation_scale_refusals():
    ds, _, model, *_ = _exact_model()
    t0 = ds.isel(time=[50])
    obs = xlatda.obs.sparsify(t0, 4, 0.3, seed=2)
    with pytest.raises(ConfigError, match="representation_error=True"):
        xlatda.assimilate(t0, obs, model, method="score", members=3, steps=4,
                          representation_scale="adaptive")
    for bad in ("auto", -1.0, True):
        with pytest.raises(ConfigError, match="representation_scale"):
            xlatda.assimilate(t0, obs, model, method="score", members=3, steps=4,
                              representation_error=True, representation_scale=bad)


def test_adaptive_scale_per_observation_time_above_the_joint_size(monkeypatch):
    """Above REP_MAX_JOINT observations the error is whitened (and the factor estimated)
    per observation time, each time's residual off the range of its own rows of the
    Jacobian. With no time correlation the model is the same and the Jacobian is
    block-diagonal over times, so the factor of a two-time window is the joint one to
    rounding (measured 4.0974 both), and it finds the truth's 4 within 30 % (one window
    of 2 x 128 observations: a relative std of about sqrt(2/250) = 9 %)."""
    ds, pca, model, z_mean, z_std, rep = _exact_model()
    d = model.latent_dim
    model = dataclasses.replace(model, score=ScorePrior(
        GaussianEps(torch.zeros(2, d, dtype=F64), torch.eye(2 * d, dtype=F64)),
        mean=model.score.mean, std=model.score.std,
        time_step={"value": 3600.0, "units": "s"}))
    truth = _far_truths(pca, model, z_mean, z_std, rep, ds.isel(time=[50, 51]), seed=4)
    obs = xlatda.obs.sparsify(truth, 1, 0.3, seed=2)
    kw = dict(members=100, steps=16, window=2, seed=3, cg_iters=8, grid="logsnr",
              representation_error=True, representation_scale="adaptive", progress=False)

    def factor():
        res = xlatda.cycle(None, obs, model, method="score", **kw)
        return float(res.diagnostics.representation_scale.values[0])

    joint = factor()
    monkeypatch.setattr(xlatda.generative, "REP_MAX_JOINT", 10)
    apart = factor()
    assert apart == pytest.approx(joint, rel=1e-8)
    assert abs(joint / TRUE_SCALE - 1.0) < 0.3, joint
