"""Observation sets from pandas tables (CSV) and station Datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import xlatda
from tests.conftest import SHARED_DATA
from xlatda.errors import ObservationError

DATA = Path(os.environ.get("XLATDA_SHARED_DATA", SHARED_DATA))  # override for worktrees


@pytest.fixture(scope="module")
def state():
    lat = np.linspace(50.0, 58.0, 9)
    lon = np.linspace(-6.0, 2.0, 9)
    t = np.datetime64("2019-03-20") + np.arange(4) * np.timedelta64(3, "h")
    data = 280 + np.arange(4)[:, None, None] + 0.1 * lat[None, :, None] + 0 * lon
    return xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), data, {"units": "K"})},
        coords={"time": t,
                "latitude": ("latitude", lat, {"standard_name": "latitude",
                                               "units": "degrees_north"}),
                "longitude": ("longitude", lon, {"standard_name": "longitude",
                                                 "units": "degrees_east"})})


def test_csv_round_trip_equals_the_observation_set(tmp_path, state):
    obs = xlatda.obs.sample_points(state, n=7, error_std=0.8, seed=0)
    df = pd.DataFrame({"time": pd.to_datetime(obs.time.values).strftime("%Y-%m-%dT%H:%M"),
                       "latitude": obs.latitude.values, "longitude": obs.longitude.values,
                       "t2m": obs.t2m.values})
    path = tmp_path / "stations.csv"
    df.to_csv(path, index=False)
    back = xlatda.obs.from_dataframe(pd.read_csv(path), error_std=0.8, units="K")
    xlatda.obs.validate(back, xlatda.layout(state))
    order = np.lexsort((obs.longitude.values, obs.time.values))
    order_b = np.lexsort((back.lon.values, back.time.values))
    np.testing.assert_array_equal(back.time.values[order_b], obs.time.values[order])
    np.testing.assert_allclose(back.t2m.values[order_b], obs.t2m.values[order])
    t_a = xlatda.obs.to_tensors(obs, xlatda.layout(state))
    t_b = xlatda.obs.to_tensors(back, xlatda.layout(state))
    assert sorted(t_a.values.tolist()) == pytest.approx(sorted(t_b.values.tolist()))
    assert back.lat.attrs["standard_name"] == "latitude"


def test_error_columns_and_renaming():
    df = pd.DataFrame({"Date": ["2019-03-20 00:00", "2019-03-20 03:00"], "LAT": [51.0, 52.0],
                       "Lon": [0.0, 1.0], "temp": [280.0, np.nan], "sigma": [0.5, 0.7]})
    obs = xlatda.obs.from_dataframe(df, values={"temp": "t2m"}, error_std="sigma")
    assert obs.sizes["obs"] == 1  # the NaN row is dropped
    assert obs.t2m_error_std.values.tolist() == [0.5]
    df2 = df.rename(columns={"sigma": "temp_error_std"})
    obs2 = xlatda.obs.from_dataframe(df2)
    assert obs2.temp_error_std.values.tolist() == [0.5]


def test_timezone_aware_times_become_utc():
    df = pd.DataFrame({"time": ["2019-03-20T01:00+01:00"], "lat": [51.0], "lon": [0.0],
                       "t2m": [280.0]})
    obs = xlatda.obs.from_dataframe(df, error_std=1.0)
    assert obs.time.values[0] == np.datetime64("2019-03-20T00:00")


def test_unreadable_times_are_refused_with_the_value():
    df = pd.DataFrame({"time": ["2019-03-20", "yesterday noon"], "lat": [51.0, 52.0],
                       "lon": [0.0, 1.0], "t2m": [280.0, 281.0]})
    with pytest.raises(ObservationError, match="yesterday noon"):
        xlatda.obs.from_dataframe(df, error_std=1.0)


def test_missing_error_and_columns_are_explained():
    df = pd.DataFrame({"lat": [51.0], "lon": [0.0], "t2m": [280.0]})
    with pytest.raises(ObservationError, match=r"error_std=1\.0"):
        xlatda.obs.from_dataframe(df)
    with pytest.raises(ObservationError, match="lat"):
        xlatda.obs.from_dataframe(df.drop(columns="lat"), error_std=1.0)
    obs = xlatda.obs.from_dataframe(df, error_std=1.0)  # no time column: a timeless set
    assert "time" not in obs.coords


def test_station_dataset():
    t = pd.date_range("2000-01-01", periods=3, freq="D")
    ds = xr.Dataset({"tas": (("location", "time"), [[270.0, 271.0, np.nan], [280, 281, 282]],
                             {"units": "K"})},
                    coords={"location": ["A", "B"], "time": t,
                            "lat": ("location", [45.0, 50.0]), "lon": ("location", [-70, -120])})
    obs = xlatda.obs.from_stations(ds, variables={"tas": "t2m"}, error_std=1.5)
    assert obs.sizes["obs"] == 5
    assert list(obs.station.values[:2]) == ["A", "B"]
    assert np.all(np.diff(obs.time.values) >= np.timedelta64(0))
    assert obs.t2m.attrs == {"units": "K", "error_std": 1.5}
    with pytest.raises(ObservationError, match=r"error_std=1\.0"):
        xlatda.obs.from_stations(ds)


@pytest.mark.skipif(not (DATA / "era5_daily_surface_cancities_1990-1993.nc").exists(),
                    reason="shared data absent")
def test_cancities_file():
    ds = xr.open_dataset(DATA / "era5_daily_surface_cancities_1990-1993.nc")
    obs = xlatda.obs.from_stations(ds, variables={"tas": "t2m", "ps": "sp"},
                                   error_std={"t2m": 1.0, "sp": 100.0})
    assert obs.sizes["obs"] == 5 * ds.sizes["time"]
    halifax = obs.where(obs.station == "Halifax", drop=True)
    np.testing.assert_allclose(halifax.t2m.values, ds.tas.sel(location="Halifax").values)
    assert float(halifax.lat[0]) == pytest.approx(float(ds.lat.sel(location="Halifax")))


def test_station_and_error_columns_found_by_name():
    """A CSV like examples/configs/uk_stations_t2m.csv: numeric station ids and an
    'error' column are neither assimilated as variables nor need naming."""
    df = pd.DataFrame({"time": ["2019-03-22T00:00", "2019-03-22T03:00"],
                       "Station_ID": [3772, 3005], "lat": [51.5, 60.1], "lon": [-0.1, -1.2],
                       "t2m": [281.0, 279.5], "error": [0.8, 1.1]})
    obs = xlatda.obs.from_dataframe(df)
    assert list(obs.data_vars) == ["t2m", "t2m_error_std"]
    assert obs.t2m_error_std.values.tolist() == [0.8, 1.1]
    assert obs.station.values.tolist() == ["3772", "3005"]
    # a number wins over the column, which is still not a value
    obs = xlatda.obs.from_dataframe(df, error_std=0.5)
    assert list(obs.data_vars) == ["t2m"] and obs.t2m.attrs["error_std"] == 0.5
    # with two value columns the single 'error' column is ambiguous: refused, with the fix
    two = df.assign(d2m=[275.0, 274.0])
    with pytest.raises(ObservationError, match="t2m_error_std"):
        xlatda.obs.from_dataframe(two)
    assert set(xlatda.obs.from_dataframe(two, error_std="error").data_vars) == {
        "t2m", "t2m_error_std", "d2m", "d2m_error_std"}
