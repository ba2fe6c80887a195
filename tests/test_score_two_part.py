"""Two-part representation error: s1² (low-rank modes) + s2² (smooth isotropic part).

``xlatda.methods.score.representation_scales`` estimates both factors jointly by
(restricted) maximum likelihood from the residuals of an analysis to its own
observations; ``representation_scale="two_part"`` of ``method="score"`` analyses
with the fitted model, estimates the pair off the range of the Jacobian of H∘D and
analyses again. Checked on linear-Gaussian cases where the true pair is known.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import xlatda
from xlatda.errors import ConfigError, ShapeError
from xlatda.methods.score import (
    TwoPartError,
    fit_smooth_error,
    representation_scale,
    representation_scales,
)

F64 = torch.float64
S1, S2 = 4.0, 9.0  # the true factors: the truth is farther off the manifold than fitted


def _case(seed=0, P=300, K=6, m=10, length=4.0):
    """Whitened-unit observation errors 0.5, a rank-K modes' part B, a smooth part M2
    (Gaussian correlation of ``length`` on a line), a Jacobian J (P, m)."""
    g = torch.Generator().manual_seed(seed)
    b = 0.3 * torch.randn(P, K, generator=g, dtype=F64)
    x = torch.arange(P, dtype=F64)
    m2 = 0.05 * torch.exp(-0.5 * (x[:, None] - x[None, :]) ** 2 / length**2)
    jac = torch.randn(P, m, generator=g, dtype=F64)
    return b, m2, jac, 0.5 * torch.ones(P, dtype=F64)


def _residuals(b, m2, jac, r, g, members=4):
    """Residuals of ``members`` members of one window: they share the truth's error and the
    observation noise, and differ by a latent change J z_i (what the analysis can fit)."""
    P = r.shape[0]
    cov = S1 * b @ b.T + S2 * m2 + torch.diag(r**2)
    e = torch.linalg.cholesky(cov + 1e-12 * torch.eye(P, dtype=F64)) @ torch.randn(
        P, generator=g, dtype=F64)
    z = torch.randn(members, jac.shape[1], generator=g, dtype=F64)
    return e[None, :] - z @ jac.T


def _fisher(b, m2, jac, r):
    """REML Fisher information of (s1², s2²) for one window at the truth:
    ½ tr(V⁻¹ M_k V⁻¹ M_l) in the complement of the range of R^{-1/2} J."""
    w = 1.0 / r
    u, sv, _ = torch.linalg.svd(w[:, None] * jac, full_matrices=True)
    q = u[:, int((sv > sv.max() * 1e-8).sum()):]
    m1 = q.T @ (w[:, None] * (b @ b.T) * w[None, :]) @ q
    mm2 = q.T @ (w[:, None] * m2 * w[None, :]) @ q
    v = torch.eye(q.shape[1], dtype=F64) + S1 * m1 + S2 * mm2
    vi = torch.linalg.inv(v)
    ms = (m1, mm2)
    return torch.tensor([[0.5 * float(torch.trace(vi @ a @ vi @ c)) for c in ms] for a in ms],
                        dtype=F64)


def test_joint_estimates_converge_to_the_true_pair_within_their_fisher_error():
    """40 windows, each estimated on its own (off the range of J: the members' latent
    differences drop out exactly). The mean of each factor is within 4 standard errors of
    the truth, the standard error taken from the REML Fisher information (sqrt of the
    diagonal of F⁻¹ / 40; ML variance-component estimates are unbiased to O(1/p), p = 290
    degrees of freedom here), and the spread of the 40 estimates is that of F⁻¹ within 50 %
    (40 draws: the sample std has ~11 % relative error, plus the estimator's
    non-normality near the s1² boundary)."""
    b, m2, jac, r = _case()
    g = torch.Generator().manual_seed(1)
    parts = [(slice(0, r.shape[0]), b, m2)]
    est = torch.tensor([representation_scales(_residuals(b, m2, jac, r, g), r, parts,
                                              jacobian=jac) for _ in range(40)], dtype=F64)
    se = torch.linalg.inv(_fisher(b, m2, jac, r)).diagonal().sqrt()
    mean, std = est.mean(0), est.std(0)
    for k, true in enumerate((S1, S2)):
        assert abs(float(mean[k]) - true) < 4 * float(se[k]) / math.sqrt(40), (mean, se)
        assert 0.5 < float(std[k] / se[k]) < 1.5, (std, se)


def test_estimates_do_not_depend_on_the_members_latent_part_and_match_one_factor():
    """Off the range of J the residuals y - A D(z_i) of any members give the same pair
    (linear decoder, to rounding); with no smooth part the pair reduces to the one-factor
    estimate of ``representation_scale`` on the same covariance."""
    b, m2, jac, r = _case(seed=2)
    g = torch.Generator().manual_seed(3)
    d = _residuals(b, m2, jac, r, g)
    parts = [(slice(0, r.shape[0]), b, m2)]
    z = torch.randn(4, jac.shape[1], generator=g, dtype=F64)
    s_a = representation_scales(d, r, parts, jacobian=jac)
    s_b = representation_scales(d + 5.0 * z @ jac.T, r, parts, jacobian=jac)
    assert s_a == pytest.approx(s_b, rel=1e-6)
    zero = torch.zeros_like(m2)
    s1, s2 = representation_scales(d, r, [(slice(0, r.shape[0]), b, zero)], jacobian=jac)
    one = representation_scale(d, r, [(slice(0, r.shape[0]), b @ b.T)], jacobian=jac)
    assert s2 == 1.0  # nothing to estimate it from
    assert s1 == pytest.approx(one, rel=1e-6)


def test_floor_on_the_modes_factor_and_edge_cases():
    """Residuals without any modes' error: the unbounded s1² is ~0, the floor holds it at
    1 exactly; the one-factor estimate with floor 0 is bit-identical to the default (the
    existing adaptive option is unchanged); no degrees of freedom left: nan."""
    b, m2, jac, r = _case(seed=4)
    g = torch.Generator().manual_seed(5)
    P = r.shape[0]
    cov = S2 * m2 + torch.diag(r**2)
    d = (torch.linalg.cholesky(cov) @ torch.randn(P, 2, generator=g, dtype=F64)).T
    parts = [(slice(0, P), b, m2)]
    s1, _ = representation_scales(d, r, parts, jacobian=jac)
    f1, f2 = representation_scales(d, r, parts, jacobian=jac, floor=1.0)
    assert s1 < 1.0 and f1 == 1.0 and f2 > 1.0
    blocks = [(slice(0, P), b @ b.T)]
    assert representation_scale(d, r, blocks, floor=0.0) == representation_scale(d, r, blocks)
    assert representation_scale(d, r, blocks, floor=1e3) >= 1e3
    full = torch.randn(P, P, generator=g, dtype=F64)
    assert all(math.isnan(v) for v in representation_scales(d, r, parts, jacobian=full))
    with pytest.raises(ShapeError):
        representation_scales(d, r, [(slice(0, P - 1), b[:-1], m2[:-1, :-1])])
    with pytest.raises(ShapeError):
        representation_scales(d[:, :-1], r, parts)


def test_two_part_covariance_parts_draws_and_cross_agree_with_the_dense_model():
    """``obs_parts``/``obs_covariance`` against A Σ(l_i, l_j) Aᵀ built densely from the
    state covariance with the two lag correlations; ``draw`` has that covariance (Monte
    Carlo, 20000 draws: within 4 standard errors); ``cross`` is Σ Aᵀ w."""
    g = torch.Generator().manual_seed(6)
    n, k = 12, 2
    pts = torch.stack([torch.arange(n, dtype=F64) % 6, torch.arange(n, dtype=F64) // 6], 1)
    chan = (torch.arange(n) >= 6).long()
    sd = 0.5 + 0.5 * chan.to(F64)
    modes = torch.randn(k, n, generator=g, dtype=F64)
    rep = TwoPartError(modes, 0.5, sd, pts, chan, 1.5, 0.8, (2.0, 3.0))
    C = rep.smooth_covariance()
    d2 = (pts[:, None] - pts[None]).square().sum(-1)
    want_c = sd[:, None] * sd[None] * torch.exp(-d2 / (2 * 1.5**2)) * (chan[:, None] == chan)
    torch.testing.assert_close(C, want_c)
    ops = [torch.randn(3, n, generator=g, dtype=F64), torch.randn(4, n, generator=g, dtype=F64)]
    lags = [0.0, 2.0]

    def sigma(s, t):
        return 2.0 * 0.5 ** abs(s - t) * modes.T @ modes + 3.0 * 0.8 ** abs(s - t) * C

    dense = torch.cat([torch.cat([a @ sigma(s, t) @ c.T for c, t in zip(ops, lags)], 1)
                       for a, s in zip(ops, lags)], 0)
    torch.testing.assert_close(rep.obs_covariance(ops, lags), dense)
    bb, mm = rep.obs_parts(ops, lags)
    torch.testing.assert_close(2.0 * bb @ bb.T + 3.0 * mm, dense)
    e = rep.draw(20000, lags, generator=g)  # (N, 2, n)
    flat = e.reshape(20000, -1)
    emp = flat.T @ flat / 20000
    want = torch.cat([torch.cat([sigma(s, t) for t in lags], 1) for s in lags], 0)
    se = (want.diagonal()[:, None] * want.diagonal()[None] / 20000).sqrt()
    assert float(((emp - want).abs() / se).max()) < 4.5
    w = [torch.randn(5, 3, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)]
    got = rep.cross(w, ops, lags, [0.0, 1.0, 2.0])
    for j, ls in enumerate((0.0, 1.0, 2.0)):
        ref = sum(wi @ (sigma(ls, lo) @ a.T).T for wi, a, lo in zip(w, ops, lags))
        torch.testing.assert_close(got[:, j], ref)


def test_fit_smooth_error_recovers_the_length_and_the_variance_outside_the_modes():
    """Held-out residuals = modes' part + a Gaussian-correlated field of length 3 (grid
    units, 20 x 20 grid, two channels, 300 samples): the fit removes the modes' span and
    finds the length within 10 % and each channel's variance within 15 % (the part of the
    field inside the 3 modes' span is removed too: 3 of 400 directions)."""
    g = torch.Generator().manual_seed(7)
    side = 20
    ij = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"),
                     -1).reshape(-1, 2).to(F64)
    d2 = (ij[:, None] - ij[None]).square().sum(-1)
    root = torch.linalg.cholesky(torch.exp(-d2 / (2 * 3.0**2)) + 1e-8 * torch.eye(side**2,
                                                                                    dtype=F64))
    n = 2 * side**2
    modes = torch.randn(3, n, generator=g, dtype=F64)
    field = torch.cat([torch.randn(300, side**2, generator=g, dtype=F64) @ root.T * s
                       for s in (1.0, 2.0)], 1)
    e = field + torch.randn(300, 3, generator=g, dtype=F64) @ modes
    fit = fit_smooth_error(e, modes, ij.repeat(2, 1), torch.arange(2).repeat_interleave(
        side**2))
    assert fit["length"] == pytest.approx(3.0, rel=0.10)
    assert fit["var"][0] == pytest.approx(1.0, rel=0.15)
    assert fit["var"][1] == pytest.approx(4.0, rel=0.15)


def _model():
    ds = xlatda.datasets.lorenz96(n=16, steps=400, seed=0)
    pca = xlatda.fit(ds.isel(time=slice(0, 250)), encoder="pca", latent_dim=4, progress=False)
    pca = xlatda.fit_representation_error(pca, ds.isel(time=slice(250, 330)), modes=4)
    model = xlatda.fit_score(ds.isel(time=slice(0, 250)), pca, window=3, epochs=2,
                             hidden=32, depth=2, progress=False)
    obs = xlatda.obs.sample_points(ds.isel(time=slice(360, 366)), n=12, error_std=0.3,
                                   seed=1)
    return model, obs


def test_two_part_cycle_and_predictive_are_seeded_and_report_both_factors():
    """Through ``xlatda.cycle``: both factors are diagnostics per time, a rerun with the
    same seed is bit-identical (analysis, factors, predictive samples with the estimated
    and the given pair), the floor holds the modes' factor at >= 1, and a fixed pair is
    used as given (no diagnostics)."""
    model, obs = _model()
    kw = dict(method="score", members=4, steps=6, window=3, progress=False, seed=2,
              representation_error=True)
    a = xlatda.cycle(None, obs, model, representation_scale="two_part", **kw)
    b = xlatda.cycle(None, obs, model, representation_scale="two_part", **kw)
    np.testing.assert_array_equal(a.analysis.x.values, b.analysis.x.values)
    for v in ("representation_scale", "representation_scale_smooth"):
        assert a.diagnostics[v].sizes["time"] == 6
        np.testing.assert_array_equal(a.diagnostics[v].values, b.diagnostics[v].values)
        assert bool((a.diagnostics[v] >= 0).all())
    pair = (float(a.diagnostics.representation_scale.mean()),
            float(a.diagnostics.representation_scale_smooth.mean()))
    for sc in ("two_part", pair):
        p = xlatda.predictive_samples(a.analysis, obs, model, scale=sc, seed=0)
        q = xlatda.predictive_samples(b.analysis, obs, model, scale=sc, seed=0)
        np.testing.assert_array_equal(p.x.values, q.x.values)
        assert bool((p.x.std("member") > 0).all())
    assert len(p.attrs.get("representation_scale", [])) == 0 or isinstance(
        p.attrs["representation_scale"][0], list)
    f = xlatda.cycle(None, obs, model, representation_scale="two_part",
                     representation_floor=1.0, **kw)
    assert bool((f.diagnostics.representation_scale >= 1.0).all())
    fixed = xlatda.cycle(None, obs, model, representation_scale=(2.0, 3.0), **kw)
    assert "representation_scale" not in fixed.diagnostics


def test_two_part_refusals():
    """A model without the smooth part, a floor without an estimated factor, a bad pair."""
    model, obs = _model()
    kw = dict(method="score", members=3, steps=4, window=3, progress=False,
              representation_error=True)
    rec = dict(model.history["representation_error"])
    for key in ("smooth_var", "smooth_length", "smooth_phi", "smooth_fit_rms"):
        rec.pop(key)
    import dataclasses

    bare = dataclasses.replace(model, history={**model.history, "representation_error": rec})
    with pytest.raises(ConfigError, match="smooth part"):
        xlatda.cycle(None, obs, bare, representation_scale="two_part", **kw)
    with pytest.raises(ConfigError, match="smooth part"):
        xlatda.predictive_samples(xlatda.cycle(None, obs, bare, **kw).analysis, obs, bare,
                                  scale="two_part")
    with pytest.raises(ConfigError, match="representation_floor"):
        xlatda.cycle(None, obs, model, representation_floor=1.0, **kw)
    with pytest.raises(ConfigError, match="pair"):
        xlatda.cycle(None, obs, model, representation_scale=(1.0, -1.0), **kw)
    with pytest.raises(ConfigError, match="two_part"):
        xlatda.cycle(None, obs, model, representation_scale="twopart", **kw)
