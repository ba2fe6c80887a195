"""The examples in examples/ run (at quick sizes)."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from tests.conftest import shared_file

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.py"))
# examples that need the shared real data, and the arguments they get
REAL_DATA = {"real_stations": "era5_t2m_2019-03_uk.nc"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("XLATDA_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(path.parent)
    argv = [str(path)]
    if path.stem in REAL_DATA:
        data = shared_file(REAL_DATA[path.stem])
        argv += ["--data", str(data), "--out", str(tmp_path / "out")]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out.strip()
    if path.stem == "real_stations":
        import pandas as pd

        scores = pd.read_csv(tmp_path / "out" / "scores.csv", index_col=0)
        grid = scores.iloc[:, 0]
        assert grid.notna().all(), scores
        assert grid["analysis"] < grid["background"], scores  # the stations were used
        assert grid["reanalysis (lag 2)"] < grid["background"], scores
        assert scores["spread"]["reanalysis (lag 2)"] > 0, scores
        for name in ("analysis.nc", "maps.png", "rmse.png"):
            assert (tmp_path / "out" / name).stat().st_size > 1000, name
        assert (tmp_path / "out" / "model.zarr").is_dir()


def test_real_stations_refuses_a_missing_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["real_stations.py", "--data", str(tmp_path / "none.nc")])
    path = next(p for p in EXAMPLES if p.stem == "real_stations")
    with pytest.raises(SystemExit, match="no data file"):
        runpy.run_path(str(path), run_name="__main__")
