"""Ensemble Kalman filters: Kalman exactness, inflation/relaxation algebra, L96 skill."""

from __future__ import annotations

import math

import pytest
import torch

from xlatda.dynamics.physical import Lorenz96
from xlatda.errors import AnalysisError, ConfigError, ShapeError, UnknownNameError, XlatdaError
from xlatda.methods.ensemble import (
    ETKF,
    DEnKF,
    EnKF,
    EnSRF,
    denkf_update,
    enkf_update,
    ensrf_update,
    etkf_update,
    inflate,
    random_rotation,
    relax_to_prior_perturbations,
    relax_to_prior_spread,
)
from xlatda.methods.registry import get_method, method_names

F64 = torch.float64


@pytest.fixture
def one_thread():
    """Tiny matrices in a Python loop: extra threads only add overhead (and
    stall badly on an oversubscribed CI machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _problem(batch=(), n=4, p=3, n_members=10, seed=0, dtype=F64):
    """Gaussian prior ensemble, linear H, observations and their errors."""
    g = torch.Generator().manual_seed(seed)
    root = torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n) + torch.eye(n, dtype=F64)
    ens = 1.0 + torch.randn(*batch, n_members, n, generator=g, dtype=F64) @ root.T
    H = torch.randn(p, n, generator=g, dtype=F64)
    y = torch.randn(*batch, p, generator=g, dtype=F64)
    r_std = 0.5 + torch.rand(p, generator=g, dtype=F64)
    return ens.to(dtype), H.to(dtype), y.to(dtype), r_std.to(dtype)


def _mean_cov(ens):
    mean = ens.mean(-2)
    a = ens - mean.unsqueeze(-2)
    return mean, a.mT @ a / (ens.shape[-2] - 1)


def _kalman(ens, H, y, r_std, inflation=1.0):
    """Exact Kalman analysis mean and covariance from the ensemble's own statistics."""
    m, P = _mean_cov(ens)
    P = inflation**2 * P
    R = torch.diag(r_std**2)
    K = P @ H.T @ torch.linalg.inv(H @ P @ H.T + R)
    ma = m + (K @ (y - m @ H.T).unsqueeze(-1)).squeeze(-1)
    Pa = P - K @ H @ P
    return ma, Pa, K, P


UPDATES = {"etkf": etkf_update, "ensrf": ensrf_update}


@pytest.mark.parametrize("name", ["etkf", "ensrf"])
@pytest.mark.parametrize("batch", [(), (3,), (2, 2)])
@pytest.mark.parametrize("inflation", [1.0, 1.1])
@pytest.mark.parametrize(("p", "n_members"), [(3, 10), (7, 6)])
def test_square_root_filters_are_exact_kalman(name, batch, inflation, p, n_members):
    ens, H, y, r = _problem(batch, p=p, n_members=n_members)
    ana = UPDATES[name](ens, ens @ H.T, y, r, inflation=inflation)
    ma, Pa, _, _ = _kalman(ens, H, y, r, inflation)
    mean, cov = _mean_cov(ana)
    torch.testing.assert_close(mean, ma, rtol=0, atol=1e-10)
    torch.testing.assert_close(cov, Pa, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("p", "n_members"), [(3, 10), (12, 5), (5, 5)])
def test_etkf_uses_the_symmetric_square_root(p, n_members):
    """Both eigendecomposition paths (N x N and P x P) give T = (I + S S^T)^(-1/2)."""
    ens, H, y, r = _problem((2,), n=6, p=p, n_members=n_members)
    ana = etkf_update(ens, ens @ H.T, y, r)
    scale = math.sqrt(n_members - 1)
    X = (ens - ens.mean(-2, keepdim=True)) / scale
    S = (ens @ H.T - (ens @ H.T).mean(-2, keepdim=True)) / scale / r
    lam, V = torch.linalg.eigh(torch.eye(n_members, dtype=F64) + S @ S.mT)
    T = V @ torch.diag_embed(lam.rsqrt()) @ V.mT
    expected = ana.mean(-2, keepdim=True) + scale * T @ X
    torch.testing.assert_close(ana, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("batch", [(), (3,)])
def test_denkf_mean_exact_and_covariance_as_published(batch):
    ens, H, y, r = _problem(batch, n_members=12)
    ana = denkf_update(ens, ens @ H.T, y, r, inflation=1.05)
    ma, Pa, K, P = _kalman(ens, H, y, r, 1.05)
    mean, cov = _mean_cov(ana)
    torch.testing.assert_close(mean, ma, rtol=0, atol=1e-10)
    # Sakov & Oke (2008a): P_a^DEnKF = P_a + 1/4 K H P H^T K^T
    expected = Pa + 0.25 * K @ H @ P @ H.T @ K.mT
    torch.testing.assert_close(cov, expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("p", "n_members"), [(3, 10), (8, 5)])  # P x P and N x N gains
def test_enkf_centred_perturbations_give_exact_mean(p, n_members):
    ens, H, y, r = _problem((2,), p=p, n_members=n_members)
    g = torch.Generator().manual_seed(3)
    ana = enkf_update(ens, ens @ H.T, y, r, centre_perturbations=True, generator=g)
    ma, _, _, _ = _kalman(ens, H, y, r)
    torch.testing.assert_close(ana.mean(-2), ma, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("p", "n_members"), [(3, 10), (8, 5)])
def test_enkf_centres_by_default_and_centring_moves_only_the_mean(p, n_members):
    # Default = centred (DAPPER's PertObs): the analysis mean is the Kalman mean.
    ens, H, y, r = _problem((2,), p=p, n_members=n_members, seed=7)
    ana = EnKF().analyse(ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(4))
    ma, _, K, _ = _kalman(ens, H, y, r)
    torch.testing.assert_close(ana.mean(-2), ma, rtol=0, atol=1e-10)
    # With the same draws, the uncentred update has the same anomalies; its mean is
    # off by the gain applied to the perturbations' member mean, K r eps_bar.
    unc = EnKF(centre_perturbations=False).analyse(
        ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(unc - unc.mean(-2, keepdim=True),
                               ana - ana.mean(-2, keepdim=True), rtol=0, atol=1e-10)
    eps = torch.randn((*ens.shape[:-1], p), generator=torch.Generator().manual_seed(4),
                      dtype=ens.dtype)
    shift = (K @ (r * eps.mean(-2)).unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(unc.mean(-2) - ana.mean(-2), shift, rtol=0, atol=1e-10)
    assert shift.abs().max() > 1e-3  # the shift is not vacuous


def test_enkf_large_ensemble_matches_kalman_statistically():
    ens, H, y, r = _problem(n_members=20000, seed=5)
    g = torch.Generator().manual_seed(11)
    ana = EnKF().analyse(ens, ens @ H.T, y, r, generator=g)
    ma, Pa, _, _ = _kalman(ens, H, y, r)
    mean, cov = _mean_cov(ana)
    scale = Pa.diagonal().max().sqrt()
    assert (mean - ma).abs().max() < 0.05 * scale
    assert (cov - Pa).abs().max() < 0.05 * Pa.diagonal().max()


def test_enkf_is_reproducible_with_generator():
    ens, H, y, r = _problem()
    a1 = enkf_update(ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(1))
    a2 = enkf_update(ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(1))
    a3 = enkf_update(ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a1, a2)
    assert not torch.equal(a1, a3)


def _serial_ensrf(ens, hx, y, r):
    """Whitaker & Hamill (2002) serial EnSRF, one observation at a time (reference)."""
    n = ens.shape[-2]
    x, h = ens.clone(), hx.clone()
    for k in range(hx.shape[-1]):
        xm, hm = x.mean(0), h.mean(0)
        A, Y = (x - xm) / math.sqrt(n - 1), (h - hm) / math.sqrt(n - 1)
        s = Y[:, k]
        f = s @ s + r[k] ** 2
        alpha = 1.0 / (1.0 + torch.sqrt(r[k] ** 2 / f))
        gain_x, gain_h = A.T @ s / f, Y.T @ s / f
        innov = y[k] - hm[k]
        x = xm + innov * gain_x + math.sqrt(n - 1) * (A - alpha * torch.outer(s, gain_x))
        h = hm + innov * gain_h + math.sqrt(n - 1) * (Y - alpha * torch.outer(s, gain_h))
    return x


def test_ensrf_equals_serial_whitaker_hamill():
    ens, H, y, r = _problem(n_members=7, p=5)
    ana = EnSRF().analyse(ens, ens @ H.T, y, r)
    torch.testing.assert_close(ana, _serial_ensrf(ens, ens @ H.T, y, r), rtol=0, atol=1e-10)


def test_inflation_algebra():
    ens, H, y, r = _problem((2,))
    torch.testing.assert_close(inflate(ens, 1.0), ens)
    big = inflate(ens, 1.3)
    torch.testing.assert_close(big.mean(-2), ens.mean(-2))
    torch.testing.assert_close(_mean_cov(big)[1], 1.69 * _mean_cov(ens)[1])
    # inflation inside the update == inflating the forecast (linear H) before it
    for update in (etkf_update, denkf_update, ensrf_update):
        a = update(ens, ens @ H.T, y, r, inflation=1.3)
        b = update(big, big @ H.T, y, r)
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("update", [etkf_update, denkf_update, ensrf_update, enkf_update])
def test_rtps_and_rtpp_algebra(update):
    ens, H, y, r = _problem((3,), n=5, n_members=8)
    hx = ens @ H.T
    kw = {"generator": torch.Generator().manual_seed(0)} if update is enkf_update else {}

    def run(**settings):
        if kw:
            kw["generator"] = torch.Generator().manual_seed(0)
        return update(ens, hx, y, r, inflation=1.2, **settings, **kw)

    plain = run()
    prior = inflate(ens, 1.2)
    # RTPS relaxes toward the un-inflated forecast spread (Whitaker & Hamill 2012)
    spread_f, spread_a = ens.std(-2), plain.std(-2)

    full_rtps = run(rtps=1.0)
    torch.testing.assert_close(full_rtps.mean(-2), plain.mean(-2))
    torch.testing.assert_close(full_rtps.std(-2), spread_f)  # prior spread restored exactly
    half_rtps = run(rtps=0.5)
    torch.testing.assert_close(half_rtps.std(-2), 0.5 * (spread_f + spread_a))
    torch.testing.assert_close(half_rtps, relax_to_prior_spread(ens, plain, 0.5))

    full_rtpp = run(rtpp=1.0)
    torch.testing.assert_close(full_rtpp.mean(-2), plain.mean(-2))
    torch.testing.assert_close(
        full_rtpp - full_rtpp.mean(-2, keepdim=True), prior - prior.mean(-2, keepdim=True)
    )
    torch.testing.assert_close(run(rtpp=0.3), relax_to_prior_perturbations(prior, plain, 0.3))
    torch.testing.assert_close(run(rtps=0.0, rtpp=0.0), plain)


def test_random_rotation_is_mean_preserving_orthogonal():
    Q = random_rotation(6, (4,), generator=torch.Generator().manual_seed(0))
    eye = torch.eye(6, dtype=F64).expand(4, 6, 6)
    torch.testing.assert_close(Q @ Q.mT, eye)
    torch.testing.assert_close(Q.sum(-1), torch.ones(4, 6, dtype=F64))
    torch.testing.assert_close(Q.sum(-2), torch.ones(4, 6, dtype=F64))
    assert not torch.allclose(Q[0], Q[1])


def test_random_rotation_has_haar_moments():
    """On 1-perp, Q acts as a Haar O(N-1) matrix O: E tr O = 0, E (tr O)^2 = 1."""
    Q = random_rotation(6, (20000,), generator=torch.Generator().manual_seed(1))
    trace_o = Q.diagonal(dim1=-2, dim2=-1).sum(-1) - 1.0  # tr Q = 1 + tr O
    assert abs(trace_o.mean().item()) < 0.05
    assert abs(trace_o.square().mean().item() - 1.0) < 0.1


def test_etkf_rotation_keeps_mean_and_covariance():
    ens, H, y, r = _problem((2,), n_members=9)
    plain = ETKF().analyse(ens, ens @ H.T, y, r)
    rotated = ETKF(rotate=True).analyse(
        ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(4)
    )
    m1, c1 = _mean_cov(plain)
    m2, c2 = _mean_cov(rotated)
    torch.testing.assert_close(m1, m2)
    torch.testing.assert_close(c1, c2)
    assert (plain - rotated).abs().max() > 1e-3


@pytest.mark.parametrize("cls", [ETKF, DEnKF, EnSRF, EnKF])
def test_infinite_error_switches_an_observation_off(cls):
    ens, H, y, r = _problem((2,), p=4)
    hx = ens @ H.T
    r_off = r.clone()
    r_off[1] = math.inf
    y_off = y.clone()
    y_off[..., 1] = 1e6  # any finite value
    keep = [0, 2, 3]

    def run(*args):
        return cls().analyse(*args, generator=torch.Generator().manual_seed(0))

    if cls is EnKF:  # perturbation draws differ in shape; compare the statistics only
        a, b = run(ens, hx, y_off, r_off), run(ens, hx[..., keep], y[..., keep], r[keep])
        assert torch.isfinite(a).all() and a.shape == b.shape
        return
    torch.testing.assert_close(
        run(ens, hx, y_off, r_off), run(ens, hx[..., keep], y[..., keep], r[keep])
    )


@pytest.mark.parametrize("cls", [ETKF, DEnKF, EnSRF])
def test_float32_close_to_float64(cls):
    ens, H, y, r = _problem((2,))
    a64 = cls().analyse(ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(0))
    e32, H32, y32, r32 = (t.float() for t in (ens, H, y, r))
    a32 = cls().analyse(e32, e32 @ H32.T, y32, r32, generator=torch.Generator().manual_seed(0))
    assert a32.dtype == torch.float32
    torch.testing.assert_close(a32.double(), a64, rtol=1e-4, atol=1e-4)


def test_scalar_and_batched_observation_errors():
    ens, H, y, _ = _problem((2,))
    a = etkf_update(ens, ens @ H.T, y, 0.7)
    b = etkf_update(ens, ens @ H.T, y, torch.full((2, 3), 0.7, dtype=F64))
    torch.testing.assert_close(a, b)


def test_bad_inputs_are_refused():
    ens, H, y, r = _problem()
    hx = ens @ H.T
    with pytest.raises(ShapeError, match="hx must have shape"):
        etkf_update(ens, hx[:-1], y, r)
    with pytest.raises(ShapeError, match="y must have shape"):
        etkf_update(ens, hx, y[:-1], r)
    with pytest.raises(ShapeError, match="r_std must have shape"):
        etkf_update(ens, hx, y, r[:2])
    with pytest.raises(ShapeError, match="N >= 2"):
        etkf_update(ens[:1], hx[:1], y, r)
    with pytest.raises(ConfigError, match="r_std must be positive"):
        etkf_update(ens, hx, y, -r)
    with pytest.raises(ConfigError, match="floating-point"):
        etkf_update(ens.long(), hx, y, r)
    with pytest.raises(ConfigError, match="inflation"):
        ETKF(inflation=0.0)
    with pytest.raises(ConfigError, match="rtps"):
        DEnKF(rtps=1.5)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        EnKF(rtpp=-0.1)


def test_registry():
    names = method_names()
    for name, cls in [("etkf", ETKF), ("enkf", EnKF), ("denkf", DEnKF), ("ensrf", EnSRF)]:
        assert name in names
        assert get_method(name) is cls
        assert get_method(name.upper()) is cls
        assert cls.name == name
    assert "letkf" in names
    with pytest.raises(UnknownNameError, match=r"known: .*'etkf'"):
        get_method("nope")
    with pytest.raises(KeyError):
        get_method("nope")


def test_settings_are_frozen_and_keyword_only():
    method = ETKF(inflation=1.02)
    with pytest.raises(AttributeError):
        method.inflation = 1.5
    with pytest.raises(TypeError):
        ETKF(1.02)


def _twin(method, n_members, cycles, seed, burn=60):
    """Lorenz-96 twin experiment, all variables observed every step, R = I."""
    model = Lorenz96(n=40, forcing=8.0)
    g = torch.Generator().manual_seed(seed)
    truth = 8.0 + torch.randn(40, generator=g, dtype=F64)
    for _ in range(200):  # spin up onto the attractor
        truth = model.step(truth)
    ens = truth + torch.randn(n_members, 40, generator=g, dtype=F64)
    r = torch.ones(40, dtype=F64)
    errors = []
    for _ in range(cycles):
        truth = model.step(truth)
        ens = model.step(ens)
        y = truth + torch.randn(40, generator=g, dtype=F64)
        ens = method.analyse(ens, ens, y, r, generator=g)
        errors.append((ens.mean(0) - truth).square().mean().sqrt())
    return torch.stack(errors[burn:]).mean().item()


def test_lorenz96_etkf_twin_experiment(one_thread):
    rmse = _twin(ETKF(inflation=1.04, rotate=True), n_members=20, cycles=200, seed=1)
    # climatology ~3.6, observation error 1; published tuned ETKF ~0.18
    assert rmse < 0.3, rmse


def test_lorenz96_enkf_twin_experiment(one_thread):
    rmse = _twin(EnKF(inflation=1.06), n_members=30, cycles=200, seed=2)
    assert rmse < 0.4, rmse


# -- robust square roots --------------------------------------------------------

SQRT_FILTERS = [ETKF, EnSRF]


def _check_kalman(ana, ens, H, y, r, *, rtol=1e-8):
    ma, Pa, _, P = _kalman(ens, H, y, r)
    mean, cov = _mean_cov(ana)
    scale_m = float(P.diagonal(dim1=-2, dim2=-1).max().sqrt()) + 1.0
    assert float((mean - ma).abs().max()) <= rtol * scale_m
    assert float((cov - Pa).abs().max()) <= rtol * float(P.diagonal(dim1=-2, dim2=-1).max())


@pytest.mark.parametrize("cls", SQRT_FILTERS)
@pytest.mark.parametrize(("p", "n_members"), [(3, 10), (12, 5)])
def test_repeated_eigenvalues_give_the_kalman_analysis(cls, p, n_members):
    """Identical observations (S S^T of rank 1: N - 1 repeated eigenvalues of C)."""
    ens, H, y, r = _problem((2,), n=4, p=p, n_members=n_members)
    H = H[:1].expand(p, -1).contiguous()  # every observation sees the same combination
    r = torch.ones(p, dtype=F64)
    _check_kalman(cls().analyse(ens, ens @ H.T, y, r), ens, H, y, r)
    # an exactly unobserved ensemble: C = I, every eigenvalue repeated
    flat = torch.zeros_like(ens @ H.T)
    torch.testing.assert_close(cls().analyse(ens, flat, y, r), ens)


@pytest.mark.parametrize("cls", [ETKF, EnSRF, DEnKF])
def test_rank_deficient_ensemble(cls):
    """Anomalies in a 2-D subspace of a 6-D state with 10 members (singular P)."""
    g = torch.Generator().manual_seed(4)
    basis = torch.randn(2, 6, generator=g, dtype=F64)
    ens = 1.0 + torch.randn(10, 2, generator=g, dtype=F64) @ basis
    H = torch.randn(8, 6, generator=g, dtype=F64)
    y = torch.randn(8, generator=g, dtype=F64)
    r = torch.full((8,), 0.3, dtype=F64)
    # y is far outside the ensemble's subspace: switch the gross-error check off
    ana = cls(gross_error=None).analyse(ens, ens @ H.T, y, r)
    ma, Pa, K, P = _kalman(ens, H, y, r)
    mean, cov = _mean_cov(ana)
    torch.testing.assert_close(mean, ma, rtol=0, atol=1e-9)
    if cls is DEnKF:
        Pa = Pa + 0.25 * K @ H @ P @ H.T @ K.mT
    torch.testing.assert_close(cov, Pa, rtol=0, atol=1e-9)


def _kalman_ensemble_space(ens, H, y, r):
    """Kalman mean and covariance in 40-digit arithmetic (mpmath; torch depends on it).

    With ``P = A^T A`` (A the anomalies over sqrt(N-1)) and ``S = A H^T R^-1/2``:
    ``x_a = xbar + A^T (I + S S^T)^-1 S d``, ``P_a = A^T (I + S S^T)^-1 A``; exact
    enough when ``H P H^T + R`` is too badly conditioned for float64 (tiny R).
    """
    mpmath = pytest.importorskip("mpmath")
    mp = mpmath.mp.clone() if hasattr(mpmath.mp, "clone") else mpmath.mp
    mp.dps = 40
    n_members = ens.shape[-2]
    to_mp = lambda t: mp.matrix(t.tolist())  # noqa: E731
    E, Hm = to_mp(ens), to_mp(H)
    mean = mp.matrix([[sum(E[j, i] for j in range(n_members)) / n_members
                       for i in range(E.cols)]])
    A = mp.matrix(n_members, E.cols)
    for j in range(n_members):
        for i in range(E.cols):
            A[j, i] = (E[j, i] - mean[0, i]) / mp.sqrt(n_members - 1)
    Rinv = mp.diag([1 / mp.mpf(v) for v in r.tolist()])
    S = A * Hm.T * Rinv
    d = (to_mp(y).T - mean * Hm.T) * Rinv  # (1, P)
    Cinv = mp.inverse(mp.eye(n_members) + S * S.T)  # cond 1e12: ~28 digits left
    ma = mean + (A.T * Cinv * S * d.T).T
    Pa = A.T * Cinv * A
    as_t = lambda m: torch.tensor(m.tolist(), dtype=F64)  # noqa: E731
    return as_t(ma).reshape(-1), as_t(Pa)


@pytest.mark.parametrize("cls", SQRT_FILTERS)
@pytest.mark.parametrize("r_value", [1e-6, 1e6])
@pytest.mark.parametrize(("p", "n_members"), [(3, 10), (12, 5)])
def test_tiny_and_huge_observation_errors(cls, r_value, p, n_members):
    ens, H, y, _ = _problem(n=4, p=p, n_members=n_members, seed=3)
    r = torch.full((p,), r_value, dtype=F64)
    y = (ens.mean(0) @ H.T) + 3.0 * r  # consistent innovations (no gross-error rejection)
    ana = cls().analyse(ens, ens @ H.T, y, r)
    assert torch.isfinite(ana).all()
    ma, Pa = _kalman_ensemble_space(ens, H, y, r)
    mean, cov = _mean_cov(ana)
    prior_var = float(_mean_cov(ens)[1].diagonal().max())
    assert float((mean - ma).abs().max()) < 1e-8 * (1.0 + prior_var)
    assert float((cov - Pa).abs().max()) < 1e-8 * prior_var
    if r_value > 1.0:  # almost nothing learnt: the prior comes back
        torch.testing.assert_close(ana, ens, rtol=0, atol=1e-4)


def test_float32_tiny_errors_do_not_crash():
    ens, H, y, _ = _problem((2,), p=12, n_members=5, dtype=torch.float32)
    r = torch.full((12,), 1e-4)
    y = ens.mean(-2) @ H.T
    for cls in (ETKF, EnSRF, DEnKF, EnKF):
        ana = cls().analyse(ens, ens @ H.T, y, r, generator=torch.Generator().manual_seed(0))
        assert ana.dtype == torch.float32 and torch.isfinite(ana).all(), cls


def test_eigh_failure_falls_back_to_svd(monkeypatch):
    ens, H, y, r = _problem((3,), p=5, n_members=8)
    expected = etkf_update(ens, ens @ H.T, y, r)

    def failing_eigh(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge")

    monkeypatch.setattr(torch.linalg, "eigh", failing_eigh)
    torch.testing.assert_close(etkf_update(ens, ens @ H.T, y, r), expected)
    # the P < N path too
    small = etkf_update(ens, ens @ H[:2].T, y[..., :2], r[:2])
    monkeypatch.undo()
    torch.testing.assert_close(small, etkf_update(ens, ens @ H[:2].T, y[..., :2], r[:2]))


@pytest.mark.parametrize("cls", [ETKF, DEnKF, EnSRF, EnKF])
def test_non_finite_forecast_raises_analysis_error(cls):
    ens, H, y, r = _problem(p=4)
    bad = ens.clone()
    bad[3, 1] = math.nan
    with pytest.raises(AnalysisError, match="non-finite") as info:
        cls().analyse(bad, bad @ H.T, y, r, generator=torch.Generator().manual_seed(0))
    assert isinstance(info.value, XlatdaError) and isinstance(info.value, ArithmeticError)
    inf_hx = ens @ H.T
    inf_hx[0, 0] = math.inf
    with pytest.raises(AnalysisError, match="hx"):
        cls().analyse(ens, inf_hx, y, r, generator=torch.Generator().manual_seed(0))
    nan_y = y.clone()
    nan_y[0] = math.nan
    with pytest.raises(ConfigError, match="finite"):
        cls().analyse(ens, ens @ H.T, nan_y, r, generator=torch.Generator().manual_seed(0))


# -- parameters appended to the state ---------------------------------------------


def _with_params(n_params=2, seed=6):
    """Ensemble of [state (4); theta], observations of the state only."""
    ens, H, y, r = _problem((2,), n=4 + n_params, p=3, n_members=9, seed=seed)
    H[:, 4:] = 0.0
    return ens, H, y, r


@pytest.mark.parametrize("cls", [ETKF, DEnKF, EnSRF])
def test_param_inflation_inflates_only_the_parameters(cls):
    ens, H, y, r = _with_params()
    ana = cls(inflation=1.1, param_inflation=1.5).analyse(ens, ens @ H.T, y, r, n_params=2)
    # the same as inflating the parameter anomalies by 1.5 / 1.1 by hand first
    mean = ens.mean(-2, keepdim=True)
    manual = ens.clone()
    manual[..., 4:] = mean[..., 4:] + (ens[..., 4:] - mean[..., 4:]) * (1.5 / 1.1)
    torch.testing.assert_close(ana, cls(inflation=1.1).analyse(manual, manual @ H.T, y, r))
    # default: the parameters get the state's inflation
    torch.testing.assert_close(
        cls(inflation=1.1).analyse(ens, ens @ H.T, y, r, n_params=2),
        cls(inflation=1.1).analyse(ens, ens @ H.T, y, r),
    )


@pytest.mark.parametrize("cls", [ETKF, DEnKF, EnSRF])
def test_param_rtps_restores_the_parameter_spread(cls):
    ens, H, y, r = _with_params()
    hx = ens @ H.T
    plain = cls(inflation=1.2).analyse(ens, hx, y, r)
    ana = cls(inflation=1.2, param_rtps=1.0).analyse(ens, hx, y, r, n_params=2)
    torch.testing.assert_close(ana.mean(-2), plain.mean(-2))
    torch.testing.assert_close(ana[..., :4], plain[..., :4])  # state untouched (rtps 0)
    torch.testing.assert_close(ana[..., 4:].std(-2), ens[..., 4:].std(-2))  # un-inflated prior
    half = cls(rtps=0.3, param_rtps=0.5).analyse(ens, hx, y, r, n_params=2)
    torch.testing.assert_close(half[..., :4], cls(rtps=0.3).analyse(ens, hx, y, r)[..., :4])
    torch.testing.assert_close(
        half[..., 4:], relax_to_prior_spread(ens, cls().analyse(ens, hx, y, r), 0.5)[..., 4:]
    )
    with pytest.raises(ConfigError, match="n_params"):
        cls().analyse(ens, hx, y, r, n_params=6)
    with pytest.raises(ConfigError, match="param_rtps"):
        cls(param_rtps=2.0)
    with pytest.raises(ConfigError, match="param_inflation"):
        cls(param_inflation="adaptive")


def test_letkf_updates_parameters_with_all_observations():
    from xlatda.methods.letkf import LETKF
    from xlatda.methods.localization import IndexDistance

    g = torch.Generator().manual_seed(2)
    ens = torch.randn(8, 12 + 1, generator=g, dtype=F64)  # 12 grid points + 1 parameter
    ens[:, 12] += 0.8 * ens[:, 3]  # a parameter correlated with the state
    hx = ens[:, [1, 3, 8]] + 0.1 * ens[:, [12]]
    y = torch.tensor([0.5, -0.2, 1.0], dtype=F64)
    r = torch.full((3,), 0.5, dtype=F64)
    loc = IndexDistance(12, obs_positions=[1.0, 3.0, 8.0])
    ana = LETKF(radius=2.0, param_rtps=0.0).analyse(ens, hx, y, r, locations=loc, n_params=1)
    glob = ETKF().analyse(ens, hx, y, r)
    torch.testing.assert_close(ana[:, 12], glob[:, 12])  # the global transform
    local = LETKF(radius=2.0).analyse(ens[:, :12], hx, y, r, locations=loc)
    torch.testing.assert_close(ana[:, :12], local)
    with pytest.raises(ShapeError, match="parameters"):
        LETKF(radius=2.0).analyse(ens, hx, y, r, locations=loc, n_params=2)
