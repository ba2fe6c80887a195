"""Tests of the Lorenz-63 and Lorenz-96 datasets."""

from __future__ import annotations

import cf_xarray  # noqa: F401
import numpy as np
import pytest
import torch
import xarray as xr

from xlatda.datasets.lorenz import lorenz63, lorenz96
from xlatda.dynamics.physical import Lorenz63, Lorenz96
from xlatda.errors import ConfigError


def test_lorenz96_layout_and_attrs():
    ds = lorenz96(n=12, steps=20, every=2, dt=0.05, spinup=10)
    assert ds.x.dims == ("time", "k")
    assert ds.x.shape == (11, 12)
    assert ds.x.dtype == np.float64
    np.testing.assert_array_equal(ds.k.values, np.arange(12))
    np.testing.assert_allclose(ds.time.values, np.arange(11) * 0.1)
    assert ds.attrs["Conventions"] == "CF-1.8"
    assert ds.attrs["forcing"] == 8.0 and ds.attrs["dt"] == 0.05
    assert ds.attrs["spinup_steps"] == 10 and ds.attrs["every"] == 2
    assert {"title", "source", "references"} <= set(ds.attrs)
    assert ds.k.attrs["long_name"] == "site index" and "axis" not in ds.k.attrs
    assert ds.x.attrs["long_name"]
    # CF discovery of the time axis
    assert ds.cf.axes["T"] == ["time"]
    assert ds.cf["time"].name == "time"
    assert ds.cf.coordinates.get("time") == ["time"]
    # default spin-up is 20 time units
    assert lorenz96(n=8, steps=0, dt=0.05).attrs["spinup_steps"] == 400
    assert lorenz96(n=8, steps=0, dt=0.1).attrs["spinup_steps"] == 200


def test_lorenz96_members_and_trajectories_dims():
    ds = lorenz96(n=8, steps=5, members=3, trajectories=2, spinup=20)
    assert ds.x.dims == ("member", "trajectory", "time", "k")
    assert ds.x.shape == (3, 2, 6, 8)
    np.testing.assert_array_equal(ds.member.values, np.arange(3))
    np.testing.assert_array_equal(ds.trajectory.values, np.arange(2))
    assert ds.attrs["perturbation"] == 1e-3
    assert lorenz96(n=8, steps=5, trajectories=2, spinup=20).x.dims == ("trajectory", "time", "k")


def test_lorenz96_reproducible_and_seeded():
    a = lorenz96(n=10, steps=30, seed=3, members=4)
    b = lorenz96(n=10, steps=30, seed=3, members=4)
    xr.testing.assert_identical(a, b)
    c = lorenz96(n=10, steps=30, seed=4, members=4)
    assert not np.allclose(a.x.values, c.x.values)


def test_lorenz96_members_start_close_and_differ():
    ds = lorenz96(steps=200, members=5, seed=0, perturbation=1e-3)
    centre = lorenz96(steps=200, seed=0)
    x0 = ds.x.isel(time=0)
    # all members differ from each other ...
    diffs = (x0 - x0.rename(member="other")).max("k")
    assert float(diffs.where(diffs.member != diffs.other).min()) > 0
    # ... are small perturbations of the unperturbed (members=None) state ...
    dev = x0 - centre.x.isel(time=0)
    assert 1e-4 < float(dev.std()) < 1e-2
    # ... and diverge through chaos (10 model time units)
    assert float(ds.x.isel(time=-1).std("member").mean()) > 1.0


def test_lorenz96_equals_direct_integration_with_the_stepper():
    ds = lorenz96(n=40, forcing=7.5, dt=0.02, steps=50, every=5, members=2, spinup=30)
    model = Lorenz96(n=40, forcing=7.5, dt=0.02)
    x0 = torch.from_numpy(ds.x.isel(time=0).values)
    traj = model.integrate(x0, steps=50, dt=0.02, every=5)
    np.testing.assert_allclose(ds.x.values, traj.numpy(), rtol=0, atol=1e-12)


def test_spinup_continues_the_same_trajectory():
    long = lorenz96(n=10, steps=60, spinup=0, seed=7)
    short = lorenz96(n=10, steps=20, spinup=40, seed=7)
    np.testing.assert_allclose(
        short.x.values, long.x.isel(time=slice(40, None)).values, rtol=0, atol=1e-12
    )
    # the initial state is forcing + N(0, 1): near F before spin-up
    assert abs(float(long.x.isel(time=0).mean()) - 8.0) < 1.0


def test_every_subsamples():
    full = lorenz96(n=8, steps=12, spinup=5)
    sub = lorenz96(n=8, steps=12, spinup=5, every=3)
    xr.testing.assert_allclose(sub.x, full.x.isel(time=slice(None, None, 3)))


def test_lorenz96_climatology_and_bounded_energy():
    ds = lorenz96(n=40, forcing=8.0, steps=1500, trajectories=3, every=2, seed=1)
    x = ds.x
    assert float(x.mean()) == pytest.approx(2.3, abs=0.15)
    assert float(x.std()) == pytest.approx(3.6, abs=0.15)
    energy = 0.5 * (x**2).mean("k")
    assert np.isfinite(energy).all()
    assert float(energy.max()) < 60.0
    assert float(energy.min()) > 1.0
    # independent trajectories are different
    assert not np.allclose(x.isel(trajectory=0), x.isel(trajectory=1))


def test_lorenz63_layout_values_and_attrs():
    ds = lorenz63(steps=300, dt=0.01, seed=2, members=2, spinup=200)
    assert sorted(ds.data_vars) == ["x", "y", "z"]
    assert all(ds[v].dims == ("member", "time") for v in ds.data_vars)
    assert ds.cf.axes["T"] == ["time"]
    assert ds.attrs["rho"] == 28.0 and ds.attrs["Conventions"] == "CF-1.8"
    assert ds.z.attrs["long_name"] == "vertical temperature difference"
    state = np.stack([ds[v].values for v in ("x", "y", "z")], axis=-1)
    model = Lorenz63(dt=0.01)
    traj = model.integrate(torch.from_numpy(state[:, 0]), steps=300)
    np.testing.assert_allclose(state, traj.numpy(), rtol=0, atol=1e-12)
    xr.testing.assert_identical(ds, lorenz63(steps=300, dt=0.01, seed=2, members=2, spinup=200))
    assert lorenz63(steps=0, dt=0.05).attrs["spinup_steps"] == 200


def test_lorenz63_on_the_attractor():
    ds = lorenz63(steps=1500, every=5, trajectories=2, spinup=500)
    assert ds.x.dims == ("trajectory", "time")
    # the Lorenz attractor: |x|, |y| < 30, 0 < z < 55, mean z near 23.5
    assert float(abs(ds.x).max()) < 30 and float(abs(ds.y).max()) < 35
    assert 0 < float(ds.z.min()) and float(ds.z.max()) < 55
    assert float(ds.z.mean()) == pytest.approx(23.5, abs=3.0)
    # the two lobes are both visited
    assert float(ds.x.min()) < -5 < 5 < float(ds.x.max())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dt": 0.0},
        {"dt": -1.0},
        {"steps": -1},
        {"steps": 1.5},
        {"every": 0},
        {"members": 0},
        {"trajectories": 0},
        {"spinup": -1},
        {"seed": -3},
        {"seed": True},
        {"perturbation": -1.0},
    ],
)
def test_bad_arguments_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        lorenz96(n=8, **kwargs)
    with pytest.raises(ConfigError):
        lorenz63(**kwargs)


def test_bad_model_parameters():
    with pytest.raises(ConfigError, match="n must be an int >= 4"):
        lorenz96(n=3)
    with pytest.raises(ConfigError, match="forcing"):
        lorenz96(forcing=float("nan"))
    with pytest.raises(ConfigError, match="rho"):
        lorenz63(rho=float("inf"))
