"""The fixed-lag ensemble RTS smoother (xlatda.methods.smoother, ``cycle(lag=L)``).

- one backward step equals the RTS update of the ensemble's own moments,
  also when the model error was added by a square-root update that
  recombines the members (the cross-covariance comes from the forecast
  before it) and with a multiplicative inflation;
- a cycled ETKF with ``lag=L`` on a linear-Gaussian twin gives the exact
  fixed-lag Kalman (RTS) smoother's means and covariances;
- ``lag=0`` is the filter bit for bit, the filter's backgrounds and
  diagnostics are unchanged by smoothing, the same seed gives the same bits;
- with a store: the stored cycle equals the one in memory, and resumes (after
  a completed shorter run, after a torn write) equal the uninterrupted run;
- refusals before any work.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import xlatda
from xlatda.errors import ConfigError
from xlatda.methods.model_noise import add_model_error
from xlatda.methods.smoother import FixedLagSmoother, check_lag, rts_step

from .test_cycle_lean import N_SITES, LinearModel, _twin

F64 = torch.float64


def _exact_ensemble(mean: np.ndarray, cov: np.ndarray, n: int, seed: int) -> torch.Tensor:
    """``n`` members whose sample mean and covariance are exactly ``mean``, ``cov``."""
    d = mean.size
    g = np.random.default_rng(seed)
    z = g.normal(size=(n, d))
    z -= z.mean(0)
    q, _ = np.linalg.qr(z)  # orthonormal, zero-mean columns
    x = q * np.sqrt(n - 1) @ np.linalg.cholesky(cov).T
    return torch.as_tensor(mean + x, dtype=F64)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 5), extra=st.integers(1, 6), seed=st.integers(0, 10_000),
       infl=st.sampled_from([1.0, 1.3]))
def test_one_step_is_the_rts_update_of_the_ensemble_moments(d, extra, seed, infl):
    rng = np.random.default_rng(seed)
    n = d + extra + 1
    L = rng.normal(size=(d, d))
    Pa = L @ L.T + 0.1 * np.eye(d)
    M = rng.normal(size=(d, d)) / np.sqrt(d)
    Lq = rng.normal(size=(d, d))
    Q = 0.3 * (Lq @ Lq.T) + 0.05 * np.eye(d)
    ens_a = _exact_ensemble(rng.normal(size=d), Pa, n, seed)
    fc = ens_a @ torch.as_tensor(M).T + torch.as_tensor(rng.normal(size=d))
    # the square-root model-error update: same mean, covariance M Pa M^T + Q, members
    # recombined (spans the space: n > d)
    ens_b = add_model_error(fc, torch.as_tensor(Q), generator=torch.Generator().manual_seed(1))
    smoothed_next = ens_b + torch.as_tensor(rng.normal(size=(n, d)))
    got = rts_step(ens_a, fc, ens_b, smoothed_next, inflation=infl).numpy()
    # The members' own background covariance (the square-root update realises
    # M Pa M^T + Q to ~1e-8 relative, its eigenvalue cut-off), inflated as the filter does.
    xb = (ens_b - ens_b.mean(0)).numpy()
    pb_members = xb.T @ xb / (n - 1)
    np.testing.assert_allclose(pb_members, M @ Pa @ M.T + Q, rtol=1e-6, atol=1e-7)
    Pb = infl**2 * pb_members
    J = Pa @ M.T @ np.linalg.inv(Pb)
    want = ens_a.numpy() + (smoothed_next - ens_b).numpy() @ J.T
    np.testing.assert_allclose(got, want, rtol=1e-8, atol=1e-8)


def _rts(x0, P0, M, H, R, ys, lag):
    """Exact KF from the background (x0, P0) at the first time, then fixed-lag RTS:
    each time smoothed with the data up to ``lag`` times later."""
    xa, Pa, xf, Pf = [], [], [], []
    x, P = x0, P0
    for i, y in enumerate(ys):
        if i:
            x, P = M @ xa[-1], M @ Pa[-1] @ M.T
        xf.append(x)
        Pf.append(P)
        K = P @ H.T @ np.linalg.inv(H @ P @ H.T + R)
        xa.append(x + K @ (y - H @ x))
        Pa.append(P - K @ H @ P)
    out_x, out_P = [], []
    for j in range(len(ys)):
        e = min(j + lag, len(ys) - 1)
        xs, Ps = xa[e], Pa[e]
        for k in range(e - 1, j - 1, -1):
            C = Pa[k] @ M.T @ np.linalg.inv(Pf[k + 1])
            xs, Ps = xa[k] + C @ (xs - xf[k + 1]), Pa[k] + C @ (Ps - Pf[k + 1]) @ C.T
        out_x.append(xs)
        out_P.append(Ps)
    return np.array(out_x), np.array(out_P)


@pytest.mark.filterwarnings("ignore::xlatda.errors.FilterDivergenceWarning")  # linear vs L96 truth
@pytest.mark.parametrize("lag", [1, 3])
def test_cycled_etkf_with_lag_is_the_exact_fixed_lag_kalman_smoother(lag):
    truth, obs = _twin(steps=8)
    model = LinearModel()
    kw = dict(method="etkf", members=12, init_std=1.0, seed=3, progress=False,
              inflation=1.0, gross_error=None)
    res = xlatda.cycle(truth.isel(time=0), obs, model, lag=lag, **kw)
    sites = np.arange(0, N_SITES, 2)
    H = np.eye(N_SITES)[sites]
    times = res.analysis.time.values
    ys, R = [], None
    for t in times:
        sel = obs.time.values == t
        ys.append(obs.x.values[sel])
        R = np.diag(obs.x_error_std.values[sel] ** 2)
    Xb0 = res.background.x.isel(time=0).values
    steps = round((times[1] - times[0]) / model.dt)
    M = np.linalg.matrix_power(model.M.numpy(), steps)
    xs, Ps = _rts(Xb0.mean(0), np.cov(Xb0.T), M, H, R, ys, lag)
    for i in range(len(times)):
        Xs = res.analysis.x.isel(time=i).values
        np.testing.assert_allclose(Xs.mean(0), xs[i], rtol=1e-8, atol=1e-9)
        np.testing.assert_allclose(np.cov(Xs.T), Ps[i], rtol=1e-7, atol=1e-9)


def test_lag_zero_is_the_filter_and_smoothing_leaves_backgrounds_and_diagnostics():
    truth, obs = _twin(steps=10)
    model = xlatda.dynamics.Lorenz96(n=N_SITES)
    kw = dict(method="etkf", members=10, init_std=1.0, seed=4, progress=False)
    plain = xlatda.cycle(truth.isel(time=0), obs, model, **kw)
    zero = xlatda.cycle(truth.isel(time=0), obs, model, lag=0, **kw)
    two = xlatda.cycle(truth.isel(time=0), obs, model, lag=2, **kw)
    again = xlatda.cycle(truth.isel(time=0), obs, model, lag=2, **kw)
    np.testing.assert_array_equal(plain.analysis.x.values, zero.analysis.x.values)
    np.testing.assert_array_equal(plain.background.x.values, two.background.x.values)
    for name in plain.diagnostics.data_vars:
        np.testing.assert_array_equal(plain.diagnostics[name].values,
                                      two.diagnostics[name].values)
    np.testing.assert_array_equal(two.analysis.x.values, again.analysis.x.values)
    # the last analysis has no later data: the filter's; the earlier ones are revised
    np.testing.assert_array_equal(two.analysis.x.values[-1], plain.analysis.x.values[-1])
    assert not np.array_equal(two.analysis.x.values[0], plain.analysis.x.values[0])
    # smoothing with later data makes the analyses closer to the truth on average
    tr = truth.x.sel(time=plain.analysis.time).values
    err = {k: np.sqrt(((r.analysis.x.mean("member").values - tr) ** 2).mean())
           for k, r in (("filter", plain), ("lag 2", two))}
    assert err["lag 2"] < err["filter"]


def test_the_smoother_revises_estimated_parameters_too():
    truth, obs = _twin(steps=8)
    kw = dict(method="etkf", members=12, init_std=1.0, seed=0, progress=False,
              params={"F": (7.0, 1.0)})
    model = xlatda.dynamics.Lorenz96(n=N_SITES)
    f = xlatda.cycle(truth.isel(time=0), obs, model, **kw)
    s = xlatda.cycle(truth.isel(time=0), obs, model, lag=2, **kw)
    assert s.parameters.theta.shape == f.parameters.theta.shape
    np.testing.assert_array_equal(s.parameters.theta.values[-1], f.parameters.theta.values[-1])
    assert not np.array_equal(s.parameters.theta.values[0], f.parameters.theta.values[0])


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_bad_lags_are_refused(bad):
    with pytest.raises(ConfigError, match="lag must be a non-negative integer"):
        check_lag(bad)
    truth, obs = _twin(steps=3)
    with pytest.raises(ConfigError, match="lag"):
        xlatda.cycle(truth.isel(time=0), obs, LinearModel(), members=5, init_std=1.0,
                     progress=False, lag=bad)


@pytest.mark.parametrize("case", ["window", "3dvar"])
def test_lag_is_refused_where_it_cannot_apply(case, tmp_path):
    truth, obs = _twin(steps=4)
    kw = dict(members=5, init_std=1.0, progress=False, lag=1, store=tmp_path / "c.zarr")
    if case == "window":
        kw.update(method="4denvar", window=2)
        why = "links one analysis time"
    else:  # 3dvar forecasts one state: nothing to regress the smoother on
        kw.update(method="3dvar", b_std=1.0)
        why = "carries one state"
    with pytest.raises(ConfigError, match=f"lag=1 \\(smoothing\\) is not available.*{why}"):
        xlatda.cycle(truth.isel(time=0), obs, LinearModel(), **kw)
    assert not (tmp_path / "c.zarr").exists()


def _assert_same(a, b):
    for part in ("analysis", "background", "diagnostics"):
        x, y = getattr(a, part), getattr(b, part)
        np.testing.assert_array_equal(x.time.values, y.time.values)
        for name in x.data_vars:
            np.testing.assert_array_equal(x[name].values, y[name].values, err_msg=name)


def test_a_smoothed_store_holds_the_cycle_and_resumes_bit_identically(tmp_path):
    truth, obs = _twin(steps=14)
    model = xlatda.dynamics.Lorenz96(n=N_SITES)
    kw = dict(method="etkf", members=10, init_std=1.0, seed=2, progress=False, lag=2)
    full = xlatda.cycle(truth.isel(time=0), obs, model, **kw)
    stored = xlatda.cycle(truth.isel(time=0), obs, model, store=tmp_path / "a.zarr", **kw)
    _assert_same(full, stored)
    # a completed run over the first half, then the whole period in the same store:
    # its last two analyses are recomputed with the later observations
    store = tmp_path / "b.zarr"
    half = obs.where(obs.time <= truth.time.values[7], drop=True)
    first = xlatda.cycle(truth.isel(time=0), half, model, store=store, **kw)
    assert first.analysis.sizes["time"] == 7
    _assert_same(full, xlatda.cycle(truth.isel(time=0), obs, model, store=store, **kw))
    # a store torn by a kill between group writes resumes to the same numbers
    import zarr

    root = zarr.open_group(str(store), mode="a")
    for _, arr in root["diagnostics"].arrays():
        arr.resize((arr.shape[0] - 1, *arr.shape[1:]))
    _assert_same(full, xlatda.cycle(truth.isel(time=0), obs, model, store=store, **kw))
    # the filter's store is another experiment
    with pytest.raises(ConfigError, match="another experiment"):
        xlatda.cycle(truth.isel(time=0), obs, model, store=store, **{**kw, "lag": 0})


def test_fixed_lag_smoother_returns_each_key_once_in_order():
    sm = FixedLagSmoother(lag=2)
    g = torch.Generator().manual_seed(0)
    out = []
    for k in range(5):
        e = torch.randn(6, 3, generator=g, dtype=F64)
        out += [key for key, _ in sm.push(k, e, e, e + 0.1)]
    out += [key for key, _ in sm.flush()]
    assert out == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigError, match="lag >= 1"):
        FixedLagSmoother(0)


def test_latent_smoothing_keeps_the_filter_bit_for_bit_with_regime_and_model_error():
    # the latent forecast is evolved once for both the noise-free forecast the
    # smoother needs and the background (square-root Q, regime shift): the
    # filter's numbers are unchanged
    import warnings

    from .test_regime import _obs
    from .test_regime import _twin as clocked_twin

    truth, model = clocked_twin(True)
    obs = _obs(truth, truth.time.values[80:100:2])
    bg = truth.isel(time=[79])
    kw = dict(method="etkf", seed=3, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        filt = xlatda.cycle(bg, obs, model, **kw)
        smooth = xlatda.cycle(bg, obs, model, lag=2, **kw)
    assert "regime_shift" in filt.diagnostics
    np.testing.assert_array_equal(filt.background.x.values, smooth.background.x.values)
    for name in filt.diagnostics.data_vars:
        np.testing.assert_array_equal(filt.diagnostics[name].values,
                                      smooth.diagnostics[name].values)
    np.testing.assert_array_equal(filt.analysis.x.values[-1], smooth.analysis.x.values[-1])
    assert not np.array_equal(filt.analysis.x.values[0], smooth.analysis.x.values[0])


def test_forecast_pair_is_the_noise_free_and_the_noisy_forecast():
    from xlatda.spaces import LatentSpace

    from .test_regime import _twin as clocked_twin

    _, model = clocked_twin(True)
    sp = LatentSpace(model)
    sp.enable_regime(0.5 * model.prior.covariance().dense(), 3600.0 * 48)
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2 * model.latent_dim + 1, 2 * model.latent_dim, generator=g, dtype=F64)
    for noise in (True, "stochastic"):
        free, noisy = sp.forecast_pair(s, 0.0, 7200.0, generator=torch.Generator().manual_seed(1),
                                       noise=noise)
        want = sp.forecast(s, 0.0, 7200.0, generator=torch.Generator().manual_seed(1),
                           noise=noise)
        np.testing.assert_array_equal(noisy.numpy(), want.numpy())
        np.testing.assert_array_equal(
            free.numpy(), sp.forecast(s, 0.0, 7200.0, generator=torch.Generator(),
                                      noise=False).numpy())
        assert not torch.equal(free, noisy)


@pytest.mark.parametrize("case", ["hybrid", "4denvar beta"])
def test_lag_is_refused_for_gains_that_blend_the_latent_prior(case, tmp_path):
    import warnings

    from .test_regime import _obs
    from .test_regime import _twin as clocked_twin

    truth, model = clocked_twin(True)
    obs = _obs(truth, truth.time.values[80:90:2])
    kw = ({"method": "hybrid", "members": 5} if case == "hybrid"
          else {"method": "4denvar", "beta": 0.3})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ConfigError, match="blending the latent prior"):
            xlatda.cycle(truth.isel(time=[79]), obs, model, progress=False, lag=1,
                         store=tmp_path / "s.zarr", **kw)
    assert not (tmp_path / "s.zarr").exists()
