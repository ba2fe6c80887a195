"""docs/own_data.md runs top to bottom on the real ERA5 file (skipped without shared data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_file
from tests.markdown_blocks import python_blocks, run_blocks

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "own_data.md"


def test_page_is_in_the_docs_toctree_and_has_code():
    assert "own_data" in (ROOT / "docs" / "index.rst").read_text()
    assert len(python_blocks(PAGE)) >= 8


def test_own_data_guide_runs(tmp_path, monkeypatch):
    era5 = shared_file("era5_t2m_2019-03_uk.nc")
    monkeypatch.setenv("XLATDA_ERA5", str(era5))
    monkeypatch.setenv("XLATDA_STATIONS", str(ROOT / "examples/configs/uk_stations_t2m.csv"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(tmp_path)
    ns, seconds = run_blocks(PAGE)
    scores = ns["scores"]
    grid = scores["grid RMSE [K]"]
    assert np.isfinite(scores.iloc[:, :2].to_numpy()).all(), scores
    # sane skill only (the defaults change; issue 14): the observations were used
    assert grid["analysis"] < grid["background"], scores
    assert grid["analysis"] < grid["climatology"], scores
    assert grid["optimal interpolation"] < grid["climatology"], scores
    assert 0 < float(scores["analysis spread [K]"]["analysis"]) < 10
    for name in ("uk_t2m_maps.png", "uk_t2m_rmse.png", "uk_t2m_analysis.nc", "uk_t2m_scores.nc"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert (tmp_path / "uk_t2m_model.zarr").is_dir()
    assert (tmp_path / "uk_t2m_analysis_ensemble.zarr").is_dir()
    # the whole page stays quick enough for the default run
    assert sum(seconds) < 120, seconds


def test_station_routes_agree_without_shared_data(tmp_path):
    """The page's two observation routes give the same set (no ERA5 file needed)."""
    import pandas as pd

    import xlatda

    table = pd.read_csv(ROOT / "examples/configs/uk_stations_t2m.csv")
    obs = xlatda.obs.from_dataframe(table, error_std="error", station="station")
    rows = table.assign(time=pd.to_datetime(table.time))
    stations = rows.set_index(["station", "time"])[["t2m"]].to_xarray()
    places = rows.groupby("station")[["lat", "lon"]].first().to_xarray()
    stations = stations.assign_coords(lat=places.lat, lon=places.lon)
    other = xlatda.obs.from_stations(stations, error_std=0.8)
    a, b = obs.sortby(["time", "station"]), other.sortby(["time", "station"])
    np.testing.assert_array_equal(a.t2m.values, b.t2m.values)
    np.testing.assert_array_equal(a.lat.values, b.lat.values)
    assert (a.time.values == b.time.values).all()
    assert pytest.approx(float(b.t2m.attrs["error_std"])) == 0.8
