"""xlatda.baselines: climatology, station interpolation and optimal interpolation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import xlatda
from xlatda.baselines import climatology, interpolate_stations, optimal_interpolation
from xlatda.errors import ConfigError, ObservationError, XlatdaError

LAT = np.linspace(50.0, 56.0, 7)
LON = np.linspace(-6.0, 2.0, 9)


def _grid(n_time=30, seed=0, variables=("t2m",), chunked=False):
    rng = np.random.default_rng(seed)
    times = (np.datetime64("2019-03-01T00:00") + np.arange(n_time) * np.timedelta64(1, "h"))
    data = {}
    for k, v in enumerate(variables):
        # smooth, correlated fields: a few random large-scale patterns
        modes = rng.normal(size=(4, LAT.size, LON.size))
        modes = modes.cumsum(1).cumsum(2)
        amp = rng.normal(size=(n_time, 4))
        data[v] = (("time", "lat", "lon"), 280 + k + np.einsum("tm,mij->tij", amp, modes) / 10,
                   {"units": "K", "long_name": f"field {v}"})
    ds = xr.Dataset(data, coords={
        "time": times.astype("M8[ns]"),
        "lat": ("lat", LAT, {"standard_name": "latitude", "units": "degrees_north"}),
        "lon": ("lon", LON, {"standard_name": "longitude", "units": "degrees_east"})})
    return ds.chunk({"time": 7}) if chunked else ds


def _obs(lat, lon, values, times, err=0.5, name="t2m"):
    df = pd.DataFrame({"time": times, "lat": lat, "lon": lon, name: values})
    return xlatda.obs.from_dataframe(df, error_std=err)


def _dense_blue(train: xr.Dataset, obs: xr.Dataset) -> np.ndarray:
    """x_b + B H^T (H B H^T + R)^-1 (y - H x_b), B formed explicitly, one solve per time."""
    names = list(train.data_vars)
    x = np.stack([train[v].values for v in names], 1).reshape(train.sizes["time"], -1)
    xb = x.mean(0)
    B = np.cov(x, rowvar=False)
    L = xlatda.layout(train)
    table = xlatda.obs.to_tensors(obs, L)
    H = xlatda.obs.build_operator(L, table).matrix.to_dense().numpy()
    y, r = table.values.numpy(), table.error_std.numpy()
    out = []
    for t in np.unique(table.time):
        s = table.time == t
        Ht = H[s]
        K = B @ Ht.T @ np.linalg.inv(Ht @ B @ Ht.T + np.diag(r[s] ** 2))
        out.append(xb + K @ (y[s] - Ht @ xb))
    return np.asarray(out).reshape(-1, len(names), LAT.size, LON.size)


def test_optimal_interpolation_matches_dense_blue_multivariate():
    train = _grid(40, variables=("t2m", "d2m"))
    rng = np.random.default_rng(1)
    rows = []
    # three times with 5, 2 and 7 observations of either variable
    for t, n in zip(["2019-03-03T00:00", "2019-03-03T03:00", "2019-03-03T06:00"], [5, 2, 7]):
        for _ in range(n):
            rows.append({"time": t, "lat": rng.uniform(50.2, 55.8), "lon": rng.uniform(-5.8, 1.8),
                         "t2m": rng.normal(280, 1), "d2m": np.nan})
        rows[-1]["d2m"], rows[-1]["t2m"] = rng.normal(281, 1), np.nan
    obs = xlatda.obs.from_dataframe(pd.DataFrame(rows), error_std={"t2m": 0.5, "d2m": 0.8})
    got = optimal_interpolation(obs, train)
    want = _dense_blue(train, obs)
    assert got.t2m.dims == ("time", "lat", "lon")
    assert got.sizes["time"] == 3
    np.testing.assert_allclose(np.stack([got.t2m.values, got.d2m.values], 1), want,
                               rtol=1e-9, atol=1e-9)
    assert got.t2m.attrs["units"] == "K"
    assert "optimal interpolation" in got.t2m.attrs["long_name"]


def test_optimal_interpolation_precise_obs_are_fitted_and_chunked_input_works():
    train = _grid(40, chunked=True)
    obs = _obs([52.0, 54.5], [-3.0, 0.0], [279.0, 283.0], ["2019-03-05T00:00"] * 2, err=1e-4)
    oi = optimal_interpolation(obs, train)
    at = xlatda.obs.observe(oi, obs)
    np.testing.assert_allclose(at.t2m.values, obs.t2m.values, atol=1e-3)


def test_optimal_interpolation_skips_obs_touching_missing_cells():
    train = _grid(20)
    train["t2m"][:, 0, :] = np.nan  # a masked row, as sea points in a land-only product
    obs = _obs([50.1, 53.0], [0.0, -2.0], [300.0, 281.0], ["2019-03-02T00:00"] * 2)
    oi = optimal_interpolation(obs, train)
    assert np.isnan(oi.t2m.isel(lat=0)).all() and np.isfinite(oi.t2m.isel(lat=slice(1, None))).all()
    only = optimal_interpolation(obs.isel(obs=[1]), train)
    np.testing.assert_allclose(oi.t2m.isel(lat=slice(1, None)), only.t2m.isel(lat=slice(1, None)))


@settings(max_examples=25, deadline=None)
@given(a=st.floats(-3, 3), b=st.floats(-3, 3), c=st.floats(250, 300),
       seed=st.integers(0, 2**16))
def test_linear_interpolation_is_exact_for_planes(a, b, c, seed):
    like = _grid(1)
    rng = np.random.default_rng(seed)
    lat = np.r_[50.0, 50.0, 56.0, 56.0, rng.uniform(50, 56, 5)]
    lon = np.r_[-6.0, 2.0, -6.0, 2.0, rng.uniform(-6, 2, 5)]
    obs = _obs(lat, lon, a * lat + b * lon + c, ["2019-03-02T00:00"] * lat.size)
    got = interpolate_stations(obs, like).t2m.isel(time=0)
    glat, glon = np.meshgrid(LAT, LON, indexing="ij")
    np.testing.assert_allclose(got.values, a * glat + b * glon + c, rtol=0, atol=1e-8)


def test_interpolation_methods_times_and_outside_hull():
    like = _grid(1)
    # time 1: three stations in the south-west; time 2: two stations (nearest only)
    obs = _obs([50.0, 50.0, 52.0, 55.0, 51.0], [-6.0, -4.0, -6.0, 1.0, -5.0],
               [1.0, 2.0, 3.0, 10.0, 20.0],
               ["2019-03-02T00:00"] * 3 + ["2019-03-02T01:00"] * 2)
    lin = interpolate_stations(obs, like)
    assert lin.sizes["time"] == 2 and np.isfinite(lin.t2m).all()
    # north of the first triangle: the nearest station's value (52N 6W)
    assert float(lin.t2m.isel(time=0).sel(lat=56.0, lon=-6.0)) == 3.0
    assert float(lin.t2m.isel(time=1).sel(lat=56.0, lon=2.0)) == 10.0
    near = interpolate_stations(obs, like, method="nearest")
    assert set(np.unique(near.t2m.isel(time=1))) == {10.0, 20.0}
    idw = interpolate_stations(obs, like, method="idw")
    assert float(idw.t2m.isel(time=0).sel(lat=50.0, lon=-6.0)) == pytest.approx(1.0)
    assert float(idw.t2m.min()) >= 1.0 and float(idw.t2m.max()) <= 20.0


def test_climatology_overall_and_by_hour_lazy():
    train = _grid(48, chunked=True)
    times = train.time.values[:3] + np.timedelta64(7, "D")
    clim = climatology(train, times)
    assert clim.t2m.chunks is not None  # lazy in, lazy out
    np.testing.assert_allclose(clim.t2m.isel(time=2), train.t2m.mean("time"))
    hourly = climatology(train, times, by="hour")
    want = train.t2m.isel(time=[1, 25]).mean("time")
    np.testing.assert_allclose(hourly.t2m.isel(time=1), want)
    assert list(hourly.time.values) == list(times)


def test_bad_input_is_refused_with_the_fix():
    train = _grid(5)
    obs = _obs([52.0], [0.0], [280.0], ["2019-03-02T00:00"])
    with pytest.raises(ConfigError, match="method must be one of"):
        interpolate_stations(obs, train, method="kriging")
    with pytest.raises(ObservationError, match="dimension 'obs'"):
        optimal_interpolation(train, train)
    with pytest.raises(ConfigError, match="at least 2 training states"):
        optimal_interpolation(obs, train.isel(time=[0]))
    with pytest.raises(ConfigError, match="by must be None or 'hour'"):
        climatology(train, train.time, by="month")
    with pytest.raises(XlatdaError, match="not in the Dataset"):
        optimal_interpolation(obs, train, variables=["sst"])
