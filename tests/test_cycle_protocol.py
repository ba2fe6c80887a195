"""The cycling core: method protocol, state spaces, exact resume, stores, diagnostics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.cycle_records import AnalysisError
from xlatda.dynamics.physical import Lorenz96
from xlatda.errors import ConfigError, XlatdaError
from xlatda.methods import ETKF, DenseCovariance, methods
from xlatda.methods.envar4d import envar4d_cost
from xlatda.methods.protocol import CycleMethod, WindowAnalysis
from xlatda.spaces import LatentSpace, PhysicalSpace
from xlatda.windows import plan_windows

F64 = torch.float64


def l96_obs(truth, every=2, std=1.0, seed=0):
    """Every ``every``-th site observed at every time after the first (time-major)."""
    n, nt = truth.sizes["k"], truth.sizes["time"]
    k = np.tile(np.arange(0.0, n, every), nt - 1)
    t = np.repeat(truth.time.values[1:], len(np.arange(0, n, every)))
    rng = np.random.default_rng(seed)
    vals = truth.x.isel(time=slice(1, None), k=slice(None, None, every)).values.ravel()
    return xr.Dataset({"x": ("obs", vals + std * rng.normal(size=k.size), {"error_std": std})},
                      coords={"k": ("obs", k), "time": ("obs", t)})


# -- a method defined here, registered here, cycled by the library --------------------
@methods.register("test-nudge")
class Nudge(CycleMethod):
    """Moves every member by ``weight`` times the mean innovation; counts its analyses."""

    def __init__(self, *, weight=0.5):
        self.weight = weight

    def analyse(self, space, ensemble, window, *, generator, state):
        table = window.tables[0]
        hx = space.observe(ensemble, table)
        d = (table.values.to(hx) - hx.mean(0)).mean()
        jitter = 1e-3 * torch.randn(ensemble.shape, generator=generator, dtype=ensemble.dtype)
        count = state.get("count", torch.zeros((), dtype=F64)) + 1
        return WindowAnalysis([(ensemble, ensemble + self.weight * d + jitter)],
                              {"mean_innovation": d, "count": count}, {"count": count}, [hx])


def test_a_method_registered_by_the_user_cycles_and_resumes(tmp_path):
    truth = xlatda.datasets.lorenz96(n=8, steps=10, seed=0)
    obs = l96_obs(truth)
    kw = dict(method="test-nudge", members=5, init_std=0.5, seed=3, progress=False, weight=0.3)
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), **kw)
    assert res.analysis.sizes["time"] == 10
    np.testing.assert_array_equal(res.diagnostics["count"].values, np.arange(1.0, 11.0))
    assert "mean_innovation" in res.diagnostics
    # the method state (the count) is stored and resumed with the ensemble
    store = tmp_path / "nudge.zarr"
    first = obs.where(obs.time <= truth.time.values[4], drop=True)
    xlatda.cycle(truth.isel(time=0), first, Lorenz96(n=8), store=store, **kw)
    resumed = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), store=store, **kw)
    np.testing.assert_array_equal(resumed.diagnostics["count"].values, np.arange(1.0, 11.0))
    np.testing.assert_array_equal(resumed.analysis.x.values, res.analysis.x.values)
    with pytest.raises(ConfigError, match=r"weight|unexpected"):
        xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), method="test-nudge", members=5,
                     init_std=0.5, progress=False, wieght=0.3)


class ChiSquareETKF(ETKF):
    """An ETKF kernel that also returns diagnostics and a state (as the filters may)."""

    def analyse(self, ensemble, hx, y, r_std, *, generator=None, locations=None, state=None):
        ana = super().analyse(ensemble, hx, y, r_std, generator=generator)
        d = (y - hx.mean(0)) / r_std
        calls = (state or {}).get("calls", torch.zeros((), dtype=F64)) + 1
        return ana, {"chi2": (d**2).mean(), "calls": calls}, {"calls": calls}


methods.register("test-chi2-etkf")(ChiSquareETKF)


def test_ensemble_kernel_diagnostics_and_state_reach_the_result():
    truth = xlatda.datasets.lorenz96(n=8, steps=6, seed=0)
    res = xlatda.cycle(truth.isel(time=0), l96_obs(truth), Lorenz96(n=8),
                       method="test-chi2-etkf", members=6, init_std=0.5, progress=False)
    assert res.diagnostics["chi2"].dims == ("time",)
    np.testing.assert_array_equal(res.diagnostics["calls"].values, np.arange(1.0, 7.0))


# -- state spaces -------------------------------------------------------------------
@pytest.fixture(scope="module")
def latent_l96():
    truth = xlatda.datasets.lorenz96(n=8, steps=200, seed=1)
    model = xlatda.fit(truth.isel(time=slice(0, 150)), encoder="pca", latent_dim=6,
                       dynamics="ode", uncertainty="diagonal", epochs=2, progress=False,
                       dtype="float64", dynamics_options={"width": 16, "depth": 1})
    return truth, model


def test_latent_window_gradient_matches_finite_differences_at_every_time(latent_l96):
    """Autograd through the latent dynamics, for the state and a parameter, at each time."""

    from xlatda.dynamics.latent_ode import LatentODE

    truth, model = latent_l96
    dyn = LatentODE(latent_dim=6, n_params=1, width=16, depth=1, seed=0).double()
    model = dataclasses.replace(model, dynamics=dyn)
    space = LatentSpace(model, n_params=1)
    obs = l96_obs(truth.isel(time=slice(150, 154)), every=3, std=0.5)
    table = xlatda.obs.contract.to_tensors(obs, model.layout)
    (win,) = plan_windows(table, 3, seed=0)
    gen = torch.Generator().manual_seed(0)
    h = space.forecast_observe(win.times, win.tables, gen)
    z0 = space.from_fields(model.layout.to_tensor(truth.isel(time=[151]), dtype=F64))
    s0 = torch.cat([z0[0], torch.tensor([0.3], dtype=F64)])
    sizes = [len(t) for t in win.tables]
    y = win.stacked()[0]

    def cost_at(s, i):
        pred = h(s[None])[0]
        lo = sum(sizes[:i])
        return 0.5 * ((pred[lo:lo + sizes[i]] - y[lo:lo + sizes[i]]) ** 2).sum()

    for i in range(3):
        s = s0.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(cost_at(s, i), s)
        fd = torch.zeros_like(s0)
        for j in range(s0.numel()):
            e = torch.zeros_like(s0)
            e[j] = 1e-6
            with torch.no_grad():
                fd[j] = (cost_at(s0 + e, i) - cost_at(s0 - e, i)) / 2e-6
        assert float(g.norm()) > 0, i
        np.testing.assert_allclose(g.numpy(), fd.numpy(), rtol=1e-5, atol=1e-7)
        if i:  # the parameter acts only through the dynamics, after the first time
            assert abs(float(g[-1])) > 1e-8
    # the 4DEnVar cost is differentiable the same way
    ens = s0 + 0.1 * torch.randn(8, 7, generator=gen, dtype=F64)
    mean, anom = ens.mean(0), (ens - ens.mean(0)) / np.sqrt(7)
    w = torch.zeros(8, dtype=F64, requires_grad=True)
    (gw,) = torch.autograd.grad(envar4d_cost(w, mean, anom, y, 0.5, h), w)
    assert float(gw.norm()) > 0


def test_physical_space_operator_is_built_once_per_place_set():
    truth = xlatda.datasets.lorenz96(n=8, steps=4, seed=0)
    space = PhysicalSpace(xlatda.layout(truth.isel(time=0)), Lorenz96(n=8))
    table = xlatda.obs.contract.to_tensors(l96_obs(truth), space.layout)
    wins = plan_windows(table, 1, seed=0)
    ops = [space.operator(w.tables[0]) for w in wins]
    assert all(op is ops[0] for op in ops)  # same places at every time: one operator


# -- reproducibility and resume ----------------------------------------------------------
def _cut_after(obs, t):
    return obs.where(obs.time <= t, drop=True)


@pytest.mark.parametrize("case", ["physical-etkf", "physical-4denvar", "latent-etkf",
                                  "latent-4denvar"])
def test_resumed_run_is_bit_identical(case, latent_l96, tmp_path):
    space, method = case.split("-")
    if space == "physical":
        truth = xlatda.datasets.lorenz96(n=8, steps=12, seed=2)
        model, bg = Lorenz96(n=8), truth.isel(time=0)
        obs, kw = l96_obs(truth), {"init_std": 1.0}
    else:
        truth, model = latent_l96
        sub = truth.isel(time=slice(150, 163))
        bg, obs, kw = sub.isel(time=0), l96_obs(sub, std=0.5), {"init_std": 0.3}
    kw.update(method=method, members=6, seed=4, progress=False)
    if method == "etkf":
        kw.update(rotate=True, inflation=1.02)
    else:
        kw.update(window=3, rotate=True)
    full = xlatda.cycle(bg, obs, model, **kw)
    store = tmp_path / "run.zarr"
    t_cut = np.unique(obs.time.values)[5]
    xlatda.cycle(bg, _cut_after(obs, t_cut), model, store=store, **kw)
    resumed = xlatda.cycle(bg, obs, model, store=store, **kw)
    assert resumed.analysis.sizes["time"] == full.analysis.sizes["time"] == 12
    np.testing.assert_array_equal(resumed.analysis.x.values, full.analysis.x.values)
    np.testing.assert_array_equal(resumed.background.x.values, full.background.x.values)


def test_store_refuses_another_seed_or_method(tmp_path):
    truth = xlatda.datasets.lorenz96(n=8, steps=4, seed=0)
    obs = l96_obs(truth)
    store = tmp_path / "run.zarr"
    kw = dict(members=5, init_std=1.0, progress=False, store=store)
    xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), method="etkf", seed=0, **kw)
    with pytest.raises(ConfigError, match="another experiment"):
        xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), method="etkf", seed=9, **kw)
    with pytest.raises(ConfigError, match="another experiment"):
        xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), method="enkf", seed=0, **kw)
    other = obs.copy()
    other["x"] = other.x + 1.0
    with pytest.raises(ConfigError, match="other observations"):
        xlatda.cycle(truth.isel(time=0), other, Lorenz96(n=8), method="etkf", seed=0, **kw)


class Persistence:
    """x(t + 1 h) = x(t): a 'physical model' on an hourly step (datetimes are in seconds)."""

    dt = 3600.0
    state_shape = (8,)

    def step(self, x, dt, theta=None):
        return x


def test_store_keeps_hourly_datetime_labels(tmp_path):
    truth = xlatda.datasets.lorenz96(n=8, steps=6, seed=0)
    hours = np.datetime64("2000-01-01T00") + np.arange(7) * np.timedelta64(1, "h")
    truth = truth.assign_coords(time=("time", hours.astype("datetime64[ns]"),
                                      {"standard_name": "time", "axis": "T"}))
    obs = l96_obs(truth)
    res = xlatda.cycle(truth.isel(time=0), obs, Persistence(), method="etkf", members=5,
                       init_std=1.0, progress=False, store=tmp_path / "h.zarr")
    np.testing.assert_array_equal(res.analysis.time.values, truth.time.values[1:])
    np.testing.assert_array_equal(res.diagnostics.time.values, truth.time.values[1:])


# -- errors -------------------------------------------------------------------------------
class Explodes:
    """A 'physical model' whose forecast becomes NaN at its third step."""

    dt = 0.05
    state_shape = (8,)

    def __init__(self):
        self.calls = 0

    def step(self, x, dt, theta=None):
        self.calls += 1
        return x * float("nan") if self.calls >= 3 else x


@pytest.mark.parametrize("method, settings", [("etkf", {}), ("enkf", {}),
                                              ("letkf", {"radius": 2}), ("3dvar", {"b_std": 1})])
def test_non_finite_forecast_names_the_analysis(method, settings):
    # the ensemble filters prove their forecast finite themselves (the driver checks
    # it only when they raise); 3DVar's forecast is checked by the driver
    truth = xlatda.datasets.lorenz96(n=8, steps=6, seed=0)
    with pytest.raises(AnalysisError, match=r"forecast of analysis 2 \(time") as info:
        xlatda.cycle(truth.isel(time=0), l96_obs(truth), Explodes(), method=method, members=5,
                     init_std=1.0, progress=False, **settings)
    assert isinstance(info.value, XlatdaError) and isinstance(info.value, ArithmeticError)


# -- latent prior: climatological initial ensemble and 3DVar B --------------------------
class GaussianPrior:
    """What LatentModel.prior provides: mean, sample(n, generator=), covariance()."""

    def __init__(self, mean, cov):
        self.mean, self.cov = mean, cov
        self.chol = torch.linalg.cholesky(cov)

    def sample(self, n, generator=None):
        eps = torch.randn(n, self.mean.numel(), generator=generator, dtype=F64)
        return self.mean + eps @ self.chol.T

    def covariance(self):
        return DenseCovariance(self.cov)


def test_climatology_is_the_default_initial_ensemble_with_a_prior(latent_l96):

    from xlatda.initial import initial_ensemble

    truth, model = latent_l96
    a = torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=F64)
    cov = a @ a.T / 6 + 0.1 * torch.eye(6, dtype=F64)
    model = dataclasses.replace(model)
    model.prior = GaussianPrior(torch.ones(6, dtype=F64), cov)
    space = LatentSpace(model)
    bg = truth.isel(time=160)
    ens = initial_ensemble(bg, model.layout, space, 20000, None,
                           torch.Generator().manual_seed(0))
    z_b = space.from_fields(model.layout.to_tensor(bg, dtype=F64))[0]
    np.testing.assert_allclose(ens.mean(0).numpy(), z_b.numpy(), atol=0.05)
    np.testing.assert_allclose(np.cov(ens.numpy().T), cov.numpy(), atol=0.05)
    # 3DVar in latent space takes the prior's covariance as B
    obs = l96_obs(truth.isel(time=[159, 160]), std=0.5)
    with_prior = xlatda.assimilate(bg, obs, model, method="3dvar")
    explicit = xlatda.assimilate(bg, obs, model, method="3dvar", b=DenseCovariance(cov))
    np.testing.assert_array_equal(with_prior.x.values, explicit.x.values)
    with pytest.raises(ConfigError, match=r"b_std=.*latent units"):
        xlatda.assimilate(bg, obs, dataclasses.replace(latent_l96[1], prior=None),
                          method="3dvar")
