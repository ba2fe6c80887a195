"""The cycle's fused loop (``xlatda.cycle._drive_fused``, issue 16) against the general one.

The fused loop must give the general loop's numbers bit for bit (analyses,
backgrounds and every diagnostic), where the observations keep their places
and count (the stacked statistics) and where they do not (the recorder's
grouping), for every built-in ensemble filter; it must be the path the
common case takes, keep the error that names the analysis time, and keep no
Python object per analysis (no garbage-collector work growing with the run).
"""

from __future__ import annotations

import gc
import importlib

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.cycle_records import AnalysisError
from xlatda.dynamics.physical import Lorenz96, PhysicalModel

cyc = importlib.import_module("xlatda.cycle")  # the module (xlatda.cycle is the function)
N_SITES = 10


def _obs(truth, varying: bool, seed: int = 1) -> xr.Dataset:
    """Observations of every other site (``varying``: places and counts change)."""
    rng = np.random.default_rng(seed)
    ks, ts = [], []
    for i, t in enumerate(truth.time.values[1:]):
        sites = np.arange(0.0, N_SITES, 2) if not varying or i % 3 == 0 else \
            np.sort(rng.choice(N_SITES, size=3 + i % 4, replace=False)).astype(float)
        ks.append(sites)
        ts.append(np.full(sites.size, t))
    k, t = np.concatenate(ks), np.concatenate(ts)
    x = truth.x.sel(time=xr.DataArray(t, dims="obs"), k=xr.DataArray(k, dims="obs")).values
    return xr.Dataset({"x": ("obs", x + rng.normal(size=k.size), {"error_std": 1.0})},
                      coords={"k": ("obs", k), "time": ("obs", t)})


def _run(method, obs, truth, fused: bool, monkeypatch, **kw):
    if not fused:
        monkeypatch.setattr(cyc, "_fusable", lambda *a: False)
    calls = []
    real = cyc._drive_fused

    def spy(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cyc, "_drive_fused", spy)
    settings = {"radius": 2.0} if method == "letkf" else {}
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=N_SITES), method=method, members=6,
                       init_std=1.0, seed=4, progress=False, **settings, **kw)
    monkeypatch.undo()
    return res, bool(calls)


def _same(a, b) -> None:
    for name in ("analysis", "background"):
        np.testing.assert_array_equal(getattr(a, name).x.values, getattr(b, name).x.values)
    assert sorted(a.diagnostics.data_vars) == sorted(b.diagnostics.data_vars)
    for v in a.diagnostics.data_vars:
        np.testing.assert_array_equal(a.diagnostics[v].values, b.diagnostics[v].values,
                                      err_msg=v)
    np.testing.assert_array_equal(a.analysis.time.values, b.analysis.time.values)


@pytest.mark.filterwarnings("ignore::xlatda.errors.FilterDivergenceWarning")
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("method", ["denkf", "enkf", "etkf", "ensrf", "letkf"])
def test_fused_loop_gives_the_general_loops_numbers_bit_for_bit(method, varying, monkeypatch):
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=14, seed=2)
    obs = _obs(truth, varying)
    fused, took = _run(method, obs, truth, True, monkeypatch)
    general, took_general = _run(method, obs, truth, False, monkeypatch)
    assert took and not took_general
    _same(fused, general)


@pytest.mark.filterwarnings("ignore::xlatda.errors.FilterDivergenceWarning")
def test_fused_loop_with_adaptive_inflation_and_rotation_matches(monkeypatch):
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=10, seed=3)
    obs = _obs(truth, False)
    kw = {"inflation": "adaptive", "rotate": True}
    fused, took = _run("etkf", obs, truth, True, monkeypatch, **kw)
    general, _ = _run("etkf", obs, truth, False, monkeypatch, **kw)
    assert took
    _same(fused, general)
    assert np.ptp(fused.diagnostics.inflation.values) > 0  # the estimate is carried


def test_uncommon_cases_take_the_general_loop(monkeypatch, tmp_path):
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=6, seed=0)
    obs = _obs(truth, False)
    _, took = _run("denkf", obs, truth, True, monkeypatch, lag=1)
    assert not took  # the smoother revises recorded analyses
    _, took = _run("denkf", obs, truth, True, monkeypatch, store=str(tmp_path / "s.zarr"))
    assert not took  # a store writes every window


class _BlowUp(PhysicalModel):
    """Lorenz-96 that returns NaN from its fourth step on."""

    def __init__(self) -> None:
        super().__init__(0.05)
        self.state_shape = (N_SITES,)
        self.inner, self.calls = Lorenz96(n=N_SITES), 0

    def step(self, x, dt=None, theta=None):
        self.calls += 1
        out = self.inner.step(x, dt)
        return out * float("nan") if self.calls >= 4 else out


def test_fused_loop_names_the_analysis_time_of_a_non_finite_forecast():
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=8, seed=0)
    obs = _obs(truth, False)
    t = truth.time.values[4]
    with pytest.raises(AnalysisError, match=rf"forecast of analysis 3 \(time {t}\)"):
        xlatda.cycle(truth.isel(time=0), obs, _BlowUp(), method="denkf", members=6,
                     init_std=1.0, progress=False)


def test_fused_loop_keeps_no_python_object_per_analysis(monkeypatch):
    """The objects the garbage collector tracks, net, over the loop (from the
    driver's start to the result's assembly, the collector paused) do not grow
    with the number of analyses: the records are preallocated tensors and
    columns of numbers (a loop keeping a few objects per analysis triggered a
    full collection, ~0.3 s in a process with xarray loaded, every few
    1000-cycle calls)."""
    net = {}
    drive, assemble = cyc._drive, cyc.CycleRecorder.columns_to_datasets
    marks = []

    def at_drive(*a, **k):
        marks.append(gc.get_count()[0])
        return drive(*a, **k)

    def at_assemble(self, *a, **k):
        marks.append(gc.get_count()[0])
        return assemble(self, *a, **k)

    monkeypatch.setattr(cyc, "_drive", at_drive)
    monkeypatch.setattr(cyc.CycleRecorder, "columns_to_datasets", at_assemble)
    for steps in (50, 400):
        truth = xlatda.datasets.lorenz96(n=N_SITES, steps=steps, seed=0)
        obs = _obs(truth, False)
        marks.clear()
        gc.collect()
        gc.disable()
        try:
            xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=N_SITES), method="denkf",
                         members=6, init_std=1.0, progress=False)
        finally:
            gc.enable()
        net[steps] = marks[1] - marks[0]
    assert net[400] - net[50] < 0.5 * (400 - 50), net


def test_fused_loop_result_is_float64_and_on_the_state_layout(monkeypatch):
    truth = xlatda.datasets.lorenz96(n=N_SITES, steps=5, seed=0)
    res, took = _run("denkf", _obs(truth, False), truth, True, monkeypatch)
    assert took
    assert res.analysis.x.dims == ("time", "member", "k")
    assert res.analysis.x.dtype == np.float64
    assert list(res.analysis.member.values) == list(range(6))
    assert torch.get_num_threads() >= 1
