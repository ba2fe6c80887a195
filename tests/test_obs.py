"""Observation sets: building, observing, validating (typed errors with fixes)."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xlatda
from xlatda.errors import ConfigError, ObservationError, UnitsError, VariableNotFoundError


def global_state(ntime=3, nlat=18, nlon=36, seed=0, chunks=None):
    rng = np.random.default_rng(seed)
    lat = -90 + (np.arange(nlat) + 0.5) * 180.0 / nlat  # cell centres: a global grid
    lon = np.arange(nlon) * 360.0 / nlon
    ds = xr.Dataset(
        {
            "h": (("time", "lat", "lon"), rng.normal(size=(ntime, nlat, nlon)) + 10,
                  {"units": "m", "standard_name": "geopotential_height"}),
            "q": (("time", "lat", "lon"), rng.normal(size=(ntime, nlat, nlon)),
                  {"units": "s-1"}),
        },
        coords={
            "time": ("time",
                     np.datetime64("2000-01-01") + np.arange(ntime) * np.timedelta64(1, "h"),
                     {"standard_name": "time"}),
            "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )
    return ds.chunk(chunks) if chunks else ds


def small_obs(**over):
    obs = xr.Dataset(
        {"h": ("obs", [1.0, 2.0, np.nan]), "h_error_std": ("obs", [0.5, 0.5, np.nan]),
         "q": ("obs", [np.nan, np.nan, 3.0]), "q_error_std": ("obs", [np.nan, np.nan, 0.1])},
        coords={"lat": ("obs", [10.0, -20.0, 30.0]), "lon": ("obs", [5.0, 200.0, 33.0]),
                "time": ("obs", np.array(["2000-01-01T00", "2000-01-01T01", "2000-01-01T00"],
                                         dtype="datetime64[ns]"))},
    )
    for k, v in over.items():
        obs[k] = ("obs", v)
    return obs


def test_sample_points_contract_and_values():
    truth = global_state()
    obs = xlatda.obs.sample_points(truth, n=50, error_std={"h": 0.5, "q": 0.1}, seed=3,
                                   noise=False)
    assert obs.sizes["obs"] == 150
    xlatda.obs.validate(obs, xlatda.layout(truth))
    # Perfect values equal xarray's own interpolation away from the seam and poles.
    inner = (np.abs(obs.lat) < 80) & (obs.lon < 350)
    sub = obs.where(inner, drop=True)
    ref = truth.h.interp(lat=sub.lat, lon=sub.lon, time=sub.time)
    np.testing.assert_allclose(sub.h.values, ref.values, rtol=1e-10)
    noisy = xlatda.obs.sample_points(truth, n=50, error_std={"h": 0.5, "q": 0.1}, seed=3)
    resid = (noisy.h - obs.h).values
    assert abs(resid.std() - 0.5) < 0.1
    again = xlatda.obs.sample_points(truth, n=50, error_std={"h": 0.5, "q": 0.1}, seed=3)
    xr.testing.assert_identical(noisy, again)


def test_sample_points_uniform_on_sphere():
    truth = global_state(ntime=1, nlat=36, nlon=72).isel(time=0)
    obs = xlatda.obs.sample_points(truth, n=20000, error_std=1.0, seed=0)
    # Uniform on the sphere: sin(lat) uniform on [-1, 1], so mean 0 and var 1/3.
    s = np.sin(np.deg2rad(obs.lat.values))
    assert abs(s.mean()) < 0.02 and abs(s.var() - 1 / 3) < 0.01
    assert obs.lat.max() > 85  # beyond the last grid row: across-the-pole values


def test_sample_points_random_times():
    truth = global_state(ntime=4)
    obs = xlatda.obs.sample_points(truth, n=30, error_std=1.0, seed=1, times="random",
                                   noise=False)
    t = obs.time.values
    assert t.min() >= truth.time.values[0] and t.max() <= truth.time.values[-1]
    assert len(np.unique(t)) > 4  # off the model times


def test_observe_lazy_and_equal(raise_if_dask_computes):
    truth = global_state()
    obs = xlatda.obs.sample_points(truth, n=20, error_std=1.0, seed=0)
    eager = xlatda.obs.observe(truth, obs)
    lazy_state = truth.chunk({"lat": -1, "lon": -1, "time": 3})
    with raise_if_dask_computes():
        lazy = xlatda.obs.observe(lazy_state, obs)
    assert lazy.h.chunks is not None
    xr.testing.assert_allclose(lazy.compute(), eager)
    np.testing.assert_allclose(eager.h.values, truth.lda.observe(obs).h.values)


def test_from_grid_round_trip():
    ds = global_state(ntime=2)
    gappy = ds.h.where(ds.h > 10)
    gappy.attrs = ds.h.attrs
    obs = xlatda.obs.from_grid(gappy.to_dataset(), error_std=0.3)
    assert obs.sizes["obs"] == int(np.isfinite(gappy.values).sum())
    back = xlatda.obs.observe(ds, obs)
    np.testing.assert_allclose(back.h.values, obs.h.values, rtol=1e-12)


def test_coarsen_sparsify_concat():
    ds = global_state(ntime=1).isel(time=0)
    coarse = xlatda.obs.coarsen(ds, 3, error_std=0.2)
    assert coarse.sizes["obs"] == (18 // 3) * (36 // 3)
    np.testing.assert_allclose(
        coarse.h.values[0], ds.h.isel(lat=slice(0, 3), lon=slice(0, 3)).mean().values
    )
    sparse = xlatda.obs.sparsify(ds, 4, error_std=0.2)
    assert sparse.sizes["obs"] == len(range(0, 18, 4)) * len(range(0, 36, 4))
    stations = xlatda.obs.sample_points(ds, 10, error_std=0.5, seed=0, variables=["h"])
    multi = xlatda.obs.concat([stations, coarse], kinds=["station", "satellite"])
    assert set(np.unique(multi.kind.values)) == {"station", "satellite"}
    assert multi.sizes["obs"] == 10 + coarse.sizes["obs"]
    xlatda.obs.validate(multi, xlatda.layout(ds))


@settings(max_examples=20, deadline=None)
@given(a=st.floats(-5, 5), b=st.floats(-1, 1), c=st.floats(-1, 1), seed=st.integers(0, 100))
def test_linear_field_reproduced(a, b, c, seed):
    lat = np.linspace(-60, 60, 13)
    lon = np.linspace(-50, 50, 21)
    field = a + b * lat[:, None] + c * lon[None, :]
    ds = xr.Dataset({"f": (("lat", "lon"), field)},
                    coords={"lat": ("lat", lat, {"standard_name": "latitude"}),
                            "lon": ("lon", lon, {"standard_name": "longitude"})})
    rng = np.random.default_rng(seed)
    obs = xr.Dataset({"f": ("obs", np.zeros(30), {"error_std": 1.0})},
                     coords={"lat": ("obs", rng.uniform(-60, 60, 30)),
                             "lon": ("obs", rng.uniform(-50, 50, 30))})
    got = xlatda.obs.observe(ds, obs).f.values
    np.testing.assert_allclose(got, a + b * obs.lat.values + c * obs.lon.values, atol=1e-9)


# -- the bad-input catalogue -------------------------------------------------
LAYOUT = xlatda.layout(global_state())


@pytest.mark.parametrize(
    "obs, error, message",
    [
        (small_obs().isel(obs=slice(0, 0)), ObservationError, "empty"),
        (small_obs(h=[np.nan, 2.0, np.nan], q=[np.nan, np.nan, 3.0]), ObservationError,
         "dropna"),
        (small_obs(h_error_std=[0.5, -1.0, np.nan]), ObservationError, "positive"),
        (small_obs(h_error_std=[0.0, 0.5, np.nan]), ObservationError, "positive"),
        (small_obs().rename(h="height", h_error_std="height_error_std"),
         VariableNotFoundError, "drop_vars"),
        (small_obs().assign_coords(lat=("obs", [10.0, 10.0, 30.0]),
                                   lon=("obs", [5.0, 5.0, 33.0]),
                                   time=("obs", np.array(["2000-01-01"] * 3,
                                                         dtype="datetime64[ns]"))),
         ObservationError, "more than once"),
        (small_obs().drop_vars("h_error_std"), ObservationError, "error_std"),
        (small_obs().assign_coords(lat=("obs", [10.0, np.nan, 30.0])), ObservationError, "NaN"),
        (small_obs().assign_coords(lat=("obs", [100.0, 0.0, 30.0])), ObservationError,
         r"\[-90, 90\]"),
        (small_obs().assign_coords(time=("obs", np.array([1, "a", 2], dtype=object))),
         ObservationError, "cannot be sorted"),
        (small_obs().expand_dims(extra=2), ObservationError, "exactly one dimension"),
    ],
)
def test_bad_observations(obs, error, message):
    with pytest.raises(error, match=message):
        xlatda.obs.validate(obs, LAYOUT)


def test_bad_units():
    obs = small_obs()
    obs["h"].attrs["units"] = "km"
    with pytest.raises(UnitsError, match="convert"):
        xlatda.obs.validate(obs, LAYOUT)


def test_outside_regional_domain():
    ds = global_state().sel(lat=slice(0, 50), lon=slice(0, 90))
    obs = small_obs()  # lon 200 and lat -20 are outside
    with pytest.raises(ObservationError, match="outside"):
        xlatda.obs.validate(obs, xlatda.layout(ds))


def test_bad_error_std_argument():
    with pytest.raises(ConfigError, match="positive"):
        xlatda.obs.sample_points(global_state(), n=3, error_std=-1.0)
    with pytest.raises(ConfigError, match="one per variable"):
        xlatda.obs.sample_points(global_state(), n=3, error_std={"h": 1.0})


@pytest.mark.parametrize("values, attrs, match", [
    ([1.0, np.inf], {}, "inf"),
    ([1.0, 9.969e36], {}, "fill value"),
    ([1.0, -999.0], {"_FillValue": -999.0}, "_FillValue"),
    ([1.0, 1e9], {"valid_max": 1e4}, "valid range"),
])
def test_garbage_values_are_refused(values, attrs, match):
    import xlatda
    from xlatda.errors import ObservationError
    from xlatda.obs.contract import validate

    state = xlatda.datasets.lorenz96(n=8, steps=2, seed=0)
    obs = xr.Dataset({"x": ("obs", values, {"error_std": 1.0, **attrs})},
                     coords={"k": ("obs", [0, 3]), "time": ("obs", [0.0, 0.0])})
    with pytest.raises(ObservationError, match=match):
        validate(obs, xlatda.layout(state))
