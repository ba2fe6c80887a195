"""Linear latent dynamics with periodic forcing (xlatda.dynamics.linear) and their use
through fit / forecast / cycle, against closed-form references."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.dynamics.linear import (
    RIDGE_GRID,
    SELECT_HORIZON,
    LinearDynamics,
    default_periods,
    fit_linear_dynamics,
)
from xlatda.errors import ConfigError, XlatdaError
from xlatda.uncertainty import rollout_residuals

DAY = 86400.0


def _simulate(A, b, H, T, n_traj=2, noise=0.0, seed=0, dt=3600.0):
    """Codes of z_{k+1} = A z_k + b + H [cos, sin](2 pi t_k / day) + noise."""
    g = torch.Generator().manual_seed(seed)
    d = A.shape[0]
    clock = torch.arange(T, dtype=torch.float64)[None].expand(n_traj, T) * dt + 1.5e9
    z = torch.zeros(n_traj, T, d, dtype=torch.float64)
    z[:, 0] = torch.randn(n_traj, d, generator=g, dtype=torch.float64)
    for k in range(T - 1):
        w = 2 * math.pi * clock[:, k] / DAY
        f = torch.stack([torch.cos(w), torch.sin(w)], -1) @ H.T
        z[:, k + 1] = z[:, k] @ A.T + b + f + noise * torch.randn(n_traj, d, generator=g,
                                                                  dtype=torch.float64)
    return z, clock


def _system(d=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.linspace(0.5, 0.9, d, dtype=torch.float64)) @ Q.T
    b = torch.randn(d, generator=g, dtype=torch.float64) * 0.3
    H = torch.randn(d, 2, generator=g, dtype=torch.float64)
    return A, b, H


def test_fit_recovers_a_noise_free_system():
    A, b, H = _system()
    z, clock = _simulate(A, b, H, T=200)
    dyn, hist = fit_linear_dynamics(z, clock, periods=(DAY,), dt_unit=3600.0, time_units="s",
                                    ridge=0.0, val_fraction=0.0, dtype=torch.float64)
    assert torch.allclose(dyn.A, A, atol=1e-8)
    assert torch.allclose(dyn.bias, b, atol=1e-8)
    assert torch.allclose(dyn.harmonics, H, atol=1e-8)
    assert hist["train_mse"] < 1e-16 and dyn.fitted and dyn.uses_clock


def test_evolve_matches_the_recursion_and_interpolates_off_grid():
    A, b, H = _system()
    z, clock = _simulate(A, b, H, T=30, n_traj=1)
    dyn = LinearDynamics(3, periods=(DAY,), dt_unit=3600.0, time_units="s", dtype=torch.float64)
    with torch.no_grad():
        dyn.A.copy_(A), dyn.bias.copy_(b), dyn.harmonics.copy_(H)
    out = dyn.evolve(z[0, 4], torch.tensor([0.0, 1.0, 2.5, 6.0]), start=clock[0, 4])
    assert torch.allclose(out[1], z[0, 5], atol=1e-12)
    assert torch.allclose(out[2], 0.5 * (z[0, 6] + z[0, 7]), atol=1e-12)
    assert torch.allclose(out[3], z[0, 10], atol=1e-12)
    # a start that is not the clock of the state gives another forecast
    other = dyn.evolve(z[0, 4], torch.tensor([0.0, 6.0]), start=clock[0, 4] + DAY / 2)
    assert not torch.allclose(other[-1], z[0, 10], atol=1e-3)
    with pytest.raises(ConfigError, match="start="):
        dyn.evolve(z[0, 4], torch.tensor([0.0, 1.0]))
    with pytest.raises(ConfigError, match="forward only"):
        dyn.evolve(z[0, 4], torch.tensor([0.0, -1.0]), start=0.0)


def test_evolve_is_differentiable_in_the_state():
    A, b, H = _system()
    dyn = LinearDynamics(3, periods=(DAY,), dt_unit=3600.0, time_units="s", dtype=torch.float64)
    with torch.no_grad():
        dyn.A.copy_(A), dyn.bias.copy_(b), dyn.harmonics.copy_(H)
    z0 = torch.randn(3, dtype=torch.float64, requires_grad=True)
    out = dyn.evolve(z0, torch.tensor([0.0, 3.0]), start=0.0)[-1]
    (jac,) = torch.autograd.grad(out.sum(), z0)
    assert torch.allclose(jac, torch.linalg.matrix_power(A, 3).sum(0), atol=1e-12)


def test_ridge_is_chosen_on_the_held_out_segment_and_radius_is_capped():
    A, b, H = _system()
    z, clock = _simulate(A, b, H, T=120, noise=0.2)
    dyn, hist = fit_linear_dynamics(z, clock, periods=(DAY,), dt_unit=3600.0, time_units="s")
    assert set(hist["val_mse"]) == {repr(v) for v in RIDGE_GRID}
    assert repr(hist["ridge"]) == min(hist["val_mse"], key=hist["val_mse"].get)
    assert hist["select_horizon"] == SELECT_HORIZON and hist["refit"]
    # an explosive system is scaled back to a bounded one
    zz = torch.cumprod(torch.full((1, 40, 1), 1.05, dtype=torch.float64), 1)
    dyn, hist = fit_linear_dynamics(zz, ridge=0.0, val_fraction=0.0)
    assert hist["spectral_radius"] > 1.0 and hist["radius_scaled_to"] == 0.999
    assert float(dyn.A.abs().max()) <= 0.999 + 1e-6


def test_ridge_score_is_the_mean_error_of_held_out_rollouts():
    A, b, H = _system()
    z, clock = _simulate(A, b, H, T=120, noise=0.2)
    kw = dict(periods=(DAY,), dt_unit=3600.0, time_units="s", dtype=torch.float64)
    lams, horizon = (1e-3, 1e-1), 4
    _, hist = fit_linear_dynamics(z, clock, ridge=lams, select_horizon=horizon, refit=False,
                                  **kw)
    cut = 120 - 12  # the held-out final 10 %
    for lam in lams:
        # the same ridge fitted without the held-out segment, rolled out by evolve
        dyn, _ = fit_linear_dynamics(z[:, :cut], clock[:, :cut], ridge=lam, val_fraction=0.0,
                                     **kw)
        per_lead = []
        for h in range(1, horizon + 1):
            errs = [dyn.evolve(z[:, s], torch.tensor([0.0, float(h)]), start=clock[:, s])[:, -1]
                    - z[:, s + h] for s in range(cut - 1, 120 - h)]
            per_lead.append(torch.stack(errs).pow(2).mean())
        want = float(torch.stack(per_lead).mean())
        assert hist["val_mse"][repr(lam)] == pytest.approx(want, rel=1e-10)
        if repr(lam) == repr(hist["ridge"]):
            assert hist["val_mse_per_lead"] == pytest.approx([float(v) for v in per_lead],
                                                             rel=1e-10)
    # one step reduces to the one-step error of the held-out pairs
    _, h1 = fit_linear_dynamics(z, clock, ridge=lams, select_horizon=1, **kw)
    dyn, _ = fit_linear_dynamics(z[:, :cut], clock[:, :cut], ridge=lams[0], val_fraction=0.0,
                                 **kw)
    one = torch.stack([dyn.evolve(z[:, s], torch.tensor([0.0, 1.0]), start=clock[:, s])[:, -1]
                       - z[:, s + 1] for s in range(cut - 1, 119)])
    assert h1["val_mse"][repr(lams[0])] == pytest.approx(float(one.pow(2).mean()), rel=1e-10)
    with pytest.raises(ConfigError, match="select_horizon"):
        fit_linear_dynamics(z, clock, select_horizon=0, **kw)


def test_refit_uses_every_pair_with_the_chosen_ridge():
    A, b, H = _system()
    z, clock = _simulate(A, b, H, T=120, noise=0.2)
    kw = dict(periods=(DAY,), dt_unit=3600.0, time_units="s", dtype=torch.float64)
    dyn, hist = fit_linear_dynamics(z, clock, **kw)
    full, _ = fit_linear_dynamics(z, clock, ridge=hist["ridge"], val_fraction=0.0, **kw)
    torch.testing.assert_close(dyn.A, full.A, rtol=0, atol=0)
    torch.testing.assert_close(dyn.harmonics, full.harmonics, rtol=0, atol=0)
    kept, hk = fit_linear_dynamics(z, clock, refit=False, **kw)
    head, _ = fit_linear_dynamics(z[:, :108], clock[:, :108], ridge=hk["ridge"],
                                  val_fraction=0.0, **kw)
    torch.testing.assert_close(kept.A, head.A, rtol=0, atol=0)
    assert not hk["refit"] and hk["n_pairs"] == 2 * 107


def test_fit_dynamics_keeps_the_held_out_segment_unseen_for_a_rollout_q():
    ds = _hourly_field(days=4)
    model = xlatda.fit(ds, encoder="pca", latent_dim=4, dynamics="linear",
                       uncertainty="diagonal", progress=False)
    assert model.history["dynamics"]["refit"]
    m2 = xlatda.fit_dynamics(model, ds, kind="linear", q_horizon=3, progress=False)
    assert not m2.history["dynamics"]["refit"]
    with pytest.raises(ConfigError, match="refit=True"):
        xlatda.fit_dynamics(model, ds, kind="linear", q_horizon=3, refit=True, progress=False)


def test_default_periods():
    assert default_periods(3600.0, "s", 10 * DAY) == (DAY, DAY / 2)
    assert default_periods(3600.0, "s", 1.5 * DAY) == (DAY / 2,)  # a day needs 2 days
    assert default_periods(1.0, "model", 1e6) == ()


def test_rollout_residuals_use_the_clock():
    A, b, H = _system()
    z, clock = _simulate(A, b, H, T=40)
    dyn, _ = fit_linear_dynamics(z, clock, periods=(DAY,), dt_unit=3600.0, time_units="s",
                                 ridge=0.0, val_fraction=0.0, dtype=torch.float64)
    _, per_lead = rollout_residuals(dyn, z, 3, clock=clock)
    assert float(per_lead.max()) < 1e-12
    with pytest.raises(XlatdaError, match="clock"):
        rollout_residuals(dyn, z, 3)


# -- through the xarray API -------------------------------------------------
def _hourly_field(days=8, seed=0):
    """A small gridded field with a diurnal cycle and AR(1) weather, hourly."""
    rng = np.random.default_rng(seed)
    T = 24 * days
    time = pd.date_range("2019-03-01", periods=T, freq="h")
    lat, lon = np.linspace(50, 55, 5), np.linspace(-5, 1, 6)
    pattern = np.cos(np.deg2rad(lat))[:, None] * np.ones(6)[None]
    hours = time.hour.to_numpy()
    anom = np.zeros((T, 5, 6))
    for k in range(1, T):
        anom[k] = 0.9 * anom[k - 1] + 0.3 * rng.standard_normal((5, 6))
    vals = 280 + 4 * np.sin(2 * np.pi * (hours - 9) / 24)[:, None, None] * pattern + anom
    return xr.Dataset({"t2m": (("time", "latitude", "longitude"), vals, {"units": "K"})},
                      coords={"time": time,
                              "latitude": ("latitude", lat, {"units": "degrees_north"}),
                              "longitude": ("longitude", lon, {"units": "degrees_east"})})


@pytest.fixture(scope="module")
def hourly_model():
    ds = _hourly_field()
    return ds, xlatda.fit(ds, encoder="pca", latent_dim=6, dynamics="linear",
                          uncertainty="diagonal", progress=False)


def test_fit_linear_records_periods_and_q(hourly_model, tmp_path):
    _, model = hourly_model
    assert model.dynamics.kind == "linear"
    assert model.dynamics.periods == (DAY, DAY / 2)
    assert model.history["dynamics"]["kind"] == "linear"
    assert model.history["model_error"]["fitted_on"].startswith("out-of-fold")
    assert model.history["model_error"]["n_residuals"] == 8 * 24 - 1
    model.save(tmp_path / "m.zarr")
    back = xlatda.open_model(tmp_path / "m.zarr")
    assert back.dynamics.kind == "linear" and back.dynamics.periods == model.dynamics.periods
    assert torch.equal(back.dynamics.A, model.dynamics.A)


def test_forecast_follows_the_clock_eager_and_chunked(hourly_model):
    ds, model = hourly_model
    z = xlatda.encode(ds.isel(time=[30, 41]), model)
    eager = xlatda.evolve(z, model, steps=6)
    lazy = xlatda.evolve(z.chunk({"time": 1}), model, steps=6)
    assert lazy.z.chunks is not None
    np.testing.assert_array_equal(eager.z.values, lazy.z.compute().values)
    # the same codes at another clock give another forecast (the forcing matters)
    shifted = xlatda.evolve(z.assign_coords(time=z.time + np.timedelta64(12, "h")), model,
                            steps=6)
    assert not np.allclose(shifted.z.values, eager.z.values)
    noisy = xlatda.evolve(z, model, steps=4, members=3, noise=True, seed=1)
    assert noisy.z.sizes["member"] == 3 and np.isfinite(noisy.z.values).all()
    with pytest.raises(ConfigError, match="time"):
        xlatda.evolve(z.drop_vars("time"), model, steps=2)


def test_linear_dynamics_beat_persistence_on_the_diurnal_cycle(hourly_model):
    ds, model = hourly_model
    z = xlatda.encode(ds, model).z
    fc = xlatda.evolve(z.isel(time=slice(100, 160)), model, steps=3).z.isel(lead=-1)
    target = z.isel(time=slice(103, 163)).values
    err_model = float(np.sqrt(((fc.values - target) ** 2).mean()))
    err_persist = float(np.sqrt(((z.isel(time=slice(100, 160)).values - target) ** 2).mean()))
    assert err_model < 0.8 * err_persist


def test_default_members_span_the_latent_space():
    ds = _hourly_field(days=4)
    model = xlatda.fit(ds, encoder="pca", latent_dim=24, dynamics="linear",
                       uncertainty="diagonal", progress=False)
    obs = xlatda.obs.sample_points(ds.isel(time=slice(50, 60, 3)), n=6, error_std=0.5, seed=0)
    later = obs.where(obs.time > ds.time[49], drop=True)
    # The clocked model carries the regime mean m beside z by default: the control
    # vector [z; m] has 48 entries, so the default ensemble spans it with 49 members.
    res = xlatda.cycle(ds.isel(time=[49]), later, model, progress=False)
    assert res.analysis.sizes["member"] == 2 * 24 + 1
    # Without the regime mean the ensemble spans z alone.
    res = xlatda.cycle(ds.isel(time=[49]), later, model, regime=False, progress=False)
    assert res.analysis.sizes["member"] == 24 + 1


def test_cross_validated_residuals_are_out_of_sample():
    from xlatda.dynamics.linear import cross_validated_residuals

    A, b, H = _system()
    z, clock = _simulate(A, b, H, T=100, noise=0.3)
    dyn, hist = fit_linear_dynamics(z, clock, periods=(DAY,), dt_unit=3600.0, time_units="s",
                                    ridge=0.0, val_fraction=0.0, dtype=torch.float64)
    cv = cross_validated_residuals(dyn, z, clock, ridge=0.0, folds=5)
    assert cv.shape == (2 * 99, 3)
    # out of sample: larger than the in-sample residuals, close to the true noise (0.09)
    assert float(cv.pow(2).mean()) > hist["train_mse"]
    assert abs(float(cv.pow(2).mean()) - 0.09) < 0.03
    with pytest.raises(ConfigError, match="folds"):
        cross_validated_residuals(dyn, z, clock, ridge=0.0, folds=1)


def test_shrinking_toward_persistence():
    z = torch.cumsum(torch.randn(1, 60, 2, generator=torch.Generator().manual_seed(0),
                                 dtype=torch.float64), 1)
    big = fit_linear_dynamics(z, ridge=1e3, val_fraction=0.0, shrink_toward="persistence",
                              dtype=torch.float64)[0]
    zero = fit_linear_dynamics(z, ridge=1e3, val_fraction=0.0, dtype=torch.float64)[0]
    assert torch.allclose(big.A, torch.eye(2, dtype=torch.float64), atol=1e-2)
    assert float(zero.A.abs().max()) < 1e-2


def test_parameters_enter_linearly_and_are_recovered():
    g = torch.Generator().manual_seed(3)
    A = torch.tensor([[0.8, 0.1], [0.0, 0.7]], dtype=torch.float64)
    W = torch.tensor([[0.5], [-0.2]], dtype=torch.float64)
    theta = torch.linspace(1.0, 3.0, 5, dtype=torch.float64)[:, None]  # 5 trajectories
    z = torch.zeros(5, 40, 2, dtype=torch.float64)
    z[:, 0] = torch.randn(5, 2, generator=g, dtype=torch.float64)
    for k in range(39):
        z[:, k + 1] = z[:, k] @ A.T + theta @ W.T
    dyn, _ = fit_linear_dynamics(z, theta=theta, ridge=0.0, val_fraction=0.0,
                                 dtype=torch.float64)
    assert torch.allclose(dyn.A, A, atol=1e-8)
    pred = dyn.evolve(z[:, 0], torch.tensor([0.0, 5.0]), theta=theta)[:, -1]
    assert torch.allclose(pred, z[:, 5], atol=1e-8)
    with pytest.raises(ConfigError, match="theta"):
        dyn.evolve(z[:, 0], torch.tensor([0.0, 1.0]))
