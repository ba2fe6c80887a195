"""Tests of the spectral shallow-water model, its test cases and the dataset builder."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from xlatda.datasets.shallow_water import shallow_water
from xlatda.dynamics.physical import ForecastModel, physical_models
from xlatda.dynamics.shallow_water import (
    EARTH_GRAVITY,
    ShallowWater,
    galewsky,
    galewsky_parameters,
    stable_time_step,
    williamson2,
)
from xlatda.errors import ConfigError, ShapeError
from xlatda.sphere import latitude_grid

F64 = torch.float64


DAY = 86400.0


def assert_states_close(a, b, rel=1e-12):
    """States agree to ``rel`` times the largest value of each channel."""
    scale = b.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    err = float(((a - b) / scale).abs().max())
    assert err < rel, f"relative difference {err:.2e} >= {rel:.0e}"


def relative_height_error(model, days, grid="gauss"):
    x0 = williamson2(model.nlat, model.nlon, grid=grid)
    steps = round(days * DAY / model.dt)
    final = model.integrate(x0, steps, every=steps)[-1]
    return float((final[0] - x0[0]).abs().max() / x0[0].abs().max()), final, x0


# ------------------------------------------------------------------ interface
def test_registered_and_follows_the_forecast_model_interface():
    assert physical_models.get("shallow_water") is ShallowWater
    model = ShallowWater(16, 32)
    assert isinstance(model, ForecastModel)
    assert model.state_shape == (3, 16, 32)
    assert model.param_names == ("gravity",)
    x = galewsky(16, 32)
    traj = model.integrate(x, steps=4, every=2)
    assert traj.shape == (3, 3, 16, 32)
    assert torch.equal(traj[0], x)
    assert_states_close(traj[1], model.step(model.step(x)))
    assert model.integrate(x, steps=0).shape == (1, 3, 16, 32)


def test_default_time_step_and_truncation():
    for nlat, dt, lmax in [(32, 900.0, 21), (64, 450.0, 42), (128, 240.0, 85)]:
        model = ShallowWater(nlat, 2 * nlat)
        assert model.dt == dt and model.sht.lmax == lmax
        assert model.dt <= stable_time_step(lmax)
        assert 3600.0 % model.dt == 0


def test_bad_arguments():
    with pytest.raises(ConfigError):
        ShallowWater(16, 32, diffusion_order=3)
    with pytest.raises(ConfigError):
        ShallowWater(16, 32, dt=-1.0)
    model = ShallowWater(16, 32)
    with pytest.raises(ShapeError):
        model.step(torch.zeros(2, 3, 16, 31))
    with pytest.raises(ShapeError):
        model.step(galewsky(16, 32).expand(2, 3, 16, 32), theta=torch.ones(3, 1))
    with pytest.raises(ConfigError):
        model.integrate(galewsky(16, 32), steps=-1)


# -------------------------------------------------------------- Williamson 2
@pytest.mark.parametrize("grid", ["gauss", "equiangular"])
def test_williamson2_steady_fast(grid):
    # 32 x 64 (T21 on the Gauss grid, T10 on the equiangular one), one day,
    # without hyperdiffusion: the steady state is kept to round-off.
    model = ShallowWater(32, 64, grid=grid, diffusion_time=float("inf"))
    err, final, x0 = relative_height_error(model, days=1, grid=grid)
    assert err < 1e-10
    vort_err = float((final[1] - x0[1]).abs().max() / x0[1].abs().max())
    assert vort_err < 1e-10
    assert float(final[2].abs().max()) < 1e-16


def test_williamson2_with_default_diffusion_fast():
    # the del^8 hyperdiffusion barely touches degree 2 at T21
    err, _, _ = relative_height_error(ShallowWater(32, 64), days=1)
    assert err < 1e-6


def test_williamson2_steady_five_days_64x128():
    # 960 RK4 steps at T42: about 5 s on one core
    model = ShallowWater(64, 128)
    err, _, _ = relative_height_error(model, days=5)
    assert err < 1e-3
    assert err < 1e-6  # what the spectral model actually achieves


def test_williamson2_is_in_balance():
    model = ShallowWater(32, 64)
    tend = model.tendency(williamson2(32, 64))
    assert float(tend[0].abs().max()) < 1e-12  # m/s
    assert float(tend[1].abs().max()) < 1e-20
    assert float(tend[2].abs().max()) < 1e-16


def reference_tendency(model, x):
    """The shallow-water tendency written directly with the transform's public API."""
    sht = model.sht
    vrt, div, h = model.to_spectral(x).unbind(-3)
    u, v = sht.uv_from_vrtdiv(vrt, div)
    eta = sht.inverse(vrt) + 2 * model.omega * torch.sin(torch.deg2rad(sht.lat))[:, None]
    hg = sht.inverse(h)
    curl_eta, div_eta = sht.vrtdiv_from_uv(eta * u, eta * v)
    _, div_h = sht.vrtdiv_from_uv(hg * u, hg * v)
    energy = sht.forward(0.5 * (u * u + v * v))
    d_div = curl_eta - sht.laplacian(model.gravity * h + energy)
    return model.to_grid(torch.stack((-div_eta, d_div, -div_h), dim=-3))


@pytest.mark.parametrize(("nlat", "grid"), [(32, "gauss"), (33, "gauss"), (31, "equiangular")])
def test_tendency_matches_direct_evaluation(nlat, grid):
    # the folded, order-major internal transforms give the textbook tendency
    model = ShallowWater(nlat, 2 * nlat, grid=grid)
    gen = torch.Generator().manual_seed(3)
    noise = torch.randn(2, 3, nlat, 2 * nlat, generator=gen, dtype=F64)
    x = galewsky(nlat, 2 * nlat, grid=grid, bump_height=500.0)
    x = x + noise * torch.tensor([10.0, 1e-6, 1e-7], dtype=F64)[:, None, None]
    assert_states_close(model.tendency(x), reference_tendency(model, x), rel=1e-11)


# ------------------------------------------------------------------ Galewsky
def test_galewsky_jet_is_balanced_and_has_the_right_shape():
    nlat, nlon = 64, 128
    model = ShallowWater(nlat, nlon)
    x = galewsky(nlat, nlon, bump_height=0.0)
    u, v = model.wind(x)
    assert abs(float(u.max()) - 80.0) < 2.5  # T42 jet peak (the sharp jet is smoothed)
    assert float(v.abs().max()) < 1e-10
    assert abs(float(model.mass(x)) / (4 * np.pi * model.radius**2) - 1e4) < 1e-4
    # gradient-wind balance: the divergence tendency is small next to its terms
    tend = model.tendency(x)
    scale = float((EARTH_GRAVITY * x[0] - EARTH_GRAVITY * x[0].mean()).abs().max())
    scale /= model.radius**2 / 42**2  # |lap(g h)| at the truncation scale
    assert float(tend[2].abs().max()) < 1e-3 * scale
    assert float(tend[1].abs().max()) < 1e-20  # zonal flow: no vorticity change


def test_galewsky_bump_and_batch():
    lat0 = torch.tensor([40.0, 50.0])
    x = galewsky(32, 64, bump_lat=lat0, bump_lon=torch.tensor([0.0, 180.0]))
    assert x.shape == (2, 3, 32, 64)
    flat = galewsky(32, 64, bump_height=0.0)
    diff = x[:, 0] - flat[0]
    lat = latitude_grid(32, "gauss")[0]
    for k, lon_index in enumerate([0, 32]):
        j = int(diff[k].abs().amax(dim=1).argmax())
        assert abs(float(lat[j]) - float(lat0[k])) < 6.0
        assert int(diff[k, j].argmax()) == lon_index


def test_galewsky_parameters():
    a = galewsky_parameters(4, generator=1)
    b = galewsky_parameters(4, generator=torch.Generator().manual_seed(1))
    c = galewsky_parameters(4, generator=2)
    for key in a:
        assert torch.equal(a[key], b[key])
        assert not torch.equal(a[key], c[key])
    assert float(a["jet_speed"].min()) >= 70 and float(a["jet_speed"].max()) <= 90
    fixed = galewsky_parameters(4, generator=1, jet_speed=75.0)
    assert torch.all(fixed["jet_speed"] == 75.0)
    assert torch.equal(fixed["bump_lat"], a["bump_lat"])  # other draws unchanged
    assert galewsky_parameters(2)["bump_height"].tolist() == [120.0, 120.0]
    with pytest.raises(ConfigError):
        galewsky_parameters(3, jet_speed=[80.0, 81.0])


# --------------------------------------------------------------- conservation
def test_mass_conserved_and_energy_drift_small():
    nlat, nlon = 32, 64
    model = ShallowWater(nlat, nlon)
    x0 = galewsky(nlat, nlon)
    steps = round(DAY / model.dt)
    traj = model.integrate(x0, steps, every=steps // 4)
    mass = model.mass(traj)
    mass_drift = float(((mass - mass[0]) / mass[0]).abs().max())
    energy = model.energy(traj)
    energy_drift = float(((energy - energy[1]) / energy[1]).abs().max())
    print(f"\nGalewsky T21, 1 day: mass drift {mass_drift:.2e}, energy drift {energy_drift:.2e}")
    assert mass_drift < 1e-10
    assert energy_drift < 1e-3


# ---------------------------------------------------------------- batching
def test_batched_run_equals_member_runs():
    nlat, nlon = 16, 32
    model = ShallowWater(nlat, nlon)
    speeds = torch.tensor([[60.0, 70.0], [80.0, 90.0]])
    x = galewsky(nlat, nlon, jet_speed=speeds)  # (2, 2, 3, J, K)
    theta = torch.tensor([[[9.0], [9.5]], [[10.0], [9.80616]]], dtype=F64)
    batched = model.integrate(x, steps=5, theta=theta)
    assert batched.shape == (2, 2, 6, 3, nlat, nlon)
    for i in range(2):
        for j in range(2):
            single = model.integrate(x[i, j], steps=5, theta=theta[i, j])
            assert_states_close(batched[i, j], single)


def test_theta_sets_gravity():
    model = ShallowWater(16, 32)
    x = galewsky(16, 32)
    default = model.step(x)
    same = model.step(x, theta=torch.tensor([EARTH_GRAVITY], dtype=F64))
    assert_states_close(same, default, rel=1e-14)
    other = model.step(x, theta=torch.tensor([9.0], dtype=F64))
    assert float((other - default).abs()[0].max()) > 1e-3


def test_float32_run_is_close_to_float64():
    model = ShallowWater(32, 64)
    x = galewsky(32, 64)
    a = model.integrate(x, steps=8, every=8)[-1]
    b = model.integrate(x.float(), steps=8, every=8)[-1]
    assert b.dtype == torch.float32
    assert float((a[0] - b[0].double()).abs().max()) < 0.05  # metres, depth ~ 1e4
    assert float((a[1] - b[1].double()).abs().max()) < 1e-8


# ---------------------------------------------------------------- gradients
def test_gradcheck_through_ten_steps():
    nlat, nlon = 8, 16
    model = ShallowWater(nlat, nlon, dt=1800.0)
    base = galewsky(nlat, nlon, jet_speed=40.0)
    scale = torch.tensor([10.0, 1e-6, 1e-7], dtype=F64)[:, None, None]

    def run(z, g):
        x = base + scale * z
        out = model.integrate(x, steps=10, every=10, theta=EARTH_GRAVITY + g)[-1]
        return out / scale

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, nlat, nlon, generator=gen, dtype=F64, requires_grad=True)
    g = torch.zeros(1, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (z, g), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.gpu
def test_runs_on_cuda():
    model = ShallowWater(32, 64)
    x = galewsky(32, 64)
    a = model.integrate(x, steps=4)
    b = model.integrate(x.cuda(), steps=4)
    assert b.device.type == "cuda"
    torch.testing.assert_close(b.cpu(), a, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ dataset
SMALL = {"nlat": 16, "nlon": 32, "model_grid": (32, 64), "progress": False}


@pytest.fixture(scope="module")
def small_ds():
    # module-scoped fixtures are built before the per-test thread setting: set it here
    # too (bitwise equality of two runs needs the same number of threads)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return shallow_water(hours=3, trajectories=3, seed=5, **SMALL)
    finally:
        torch.set_num_threads(old)


def test_dataset_structure(small_ds):
    ds = small_ds
    assert dict(ds.sizes) == {"trajectory": 3, "time": 4, "lat": 16, "lon": 32}
    assert set(ds.data_vars) == {"height", "vorticity"}
    for name in ds.data_vars:
        assert ds[name].dims == ("trajectory", "time", "lat", "lon")
        assert ds[name].dtype == np.float32
    assert ds.height.attrs["units"] == "m"
    # a fluid depth: no CF standard name fits (geopotential_height would be wrong)
    assert "standard_name" not in ds.height.attrs
    assert ds.height.attrs["long_name"].startswith("fluid depth")
    assert ds.vorticity.attrs == {
        "standard_name": "atmosphere_relative_vorticity",
        "long_name": "relative vorticity",
        "units": "s-1",
    }
    assert ds.lat.attrs["units"] == "degrees_north" and ds.lat.attrs["axis"] == "Y"
    assert ds.lon.attrs["units"] == "degrees_east" and ds.lon.attrs["axis"] == "X"
    assert float(ds.lon.min()) == 0.0 and float(ds.lon.max()) < 360.0
    assert bool((ds.lat.diff("lat") < 0).all())
    assert ds.time.attrs["standard_name"] == "time" and ds.time.attrs["axis"] == "T"
    assert ds.time.values[0] == np.datetime64("2000-01-01T00:00")
    assert (np.diff(ds.time.values) == np.timedelta64(1, "h")).all()
    assert ds.trajectory.values.tolist() == [0, 1, 2]
    assert ds.jet_speed.dims == ("trajectory",) and ds.jet_speed.attrs["units"] == "m s-1"
    assert ds.attrs["Conventions"] == "CF-1.8"
    for key in ("title", "source", "history"):
        assert ds.attrs[key]
    assert np.isfinite(ds.height).all()
    assert 8000 < float(ds.height.min()) and float(ds.height.max()) < 11000


def test_dataset_cf_xarray(small_ds):
    pytest.importorskip("cf_xarray")
    ds = small_ds
    assert ds.cf["latitude"].name == "lat"
    assert ds.cf["longitude"].name == "lon"
    assert ds.cf["time"].name == "time"
    assert ds.cf.axes == {"X": ["lon"], "Y": ["lat"], "T": ["time"]}
    assert ds.cf["atmosphere_relative_vorticity"].name == "vorticity"


def test_dataset_seeds(small_ds):
    same = shallow_water(hours=3, trajectories=3, seed=5, **SMALL)
    xr.testing.assert_identical(same, small_ds)
    other = shallow_water(hours=3, trajectories=3, seed=6, **SMALL)
    assert not np.allclose(other.height.values, small_ds.height.values)
    assert not np.allclose(other.jet_speed.values, small_ds.jet_speed.values)
    # trajectories of one call differ from each other
    h = small_ds.height.isel(time=-1).values
    assert not np.allclose(h[0], h[1])


def test_dataset_options():
    ds = shallow_water(
        hours=1, output_every="30min", trajectories=2, seed=1, spinup_hours=1,
        variables=("height", "vorticity", "divergence", "u", "v"), jet_speed=[75.0, 85.0],
        grid="equiangular", dtype="float64", **SMALL,
    )
    assert ds.sizes["time"] == 3
    assert ds.jet_speed.values.tolist() == [75.0, 85.0]
    assert ds.u.attrs["standard_name"] == "eastward_wind" and ds.u.dtype == np.float64
    assert ds.v.attrs["standard_name"] == "northward_wind"
    assert ds.divergence.attrs["standard_name"] == "divergence_of_wind"
    assert float(ds.lat.max()) < 90
    assert 20 < float(ds.u.max()) < 100  # T7 on a 16-latitude equiangular grid
    days = shallow_water(days=0.125, output_every=3, **SMALL)
    assert days.sizes["time"] == 2


def test_dataset_default_model_grid_is_t42():
    ds = shallow_water(nlat=32, nlon=64, hours=1, progress=False)
    assert ds.attrs["model_truncation"] == 42 and ds.attrs["output_truncation"] == 31
    assert ds.attrs["model_time_step_seconds"] == 450.0
    same_grid = shallow_water(nlat=32, nlon=64, hours=1, model_grid=(32, 64), progress=False)
    assert same_grid.attrs["model_truncation"] == 21
    # the run at T42 and the run at T21 start from the same (projected) jet
    assert float(abs(ds.height - same_grid.height).isel(time=0).max()) < 50.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variables": ("height", "pressure")},
        {"output_every": "0h"},
        {"hours": 2, "output_every": "45min"},
        {"dt": 700.0},
        {"trajectories": 0},
        {"output_every": "soon"},
    ],
)
def test_dataset_rejects_bad_arguments(kwargs):
    args = {"hours": 2, **SMALL}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        shallow_water(**args)
