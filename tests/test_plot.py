"""xlatda.plot: figures on lat/lon grids and on Lorenz-96-like generic states."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

import xlatda
from xlatda.errors import ConfigError, VariableNotFoundError

mpl = pytest.importorskip("matplotlib")
mpl.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from xlatda import plot  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def grid_state(members=None, seed=0, noise=0.0):
    """A tiny global grid with unusual coordinate names and CF attributes."""
    rng = np.random.default_rng(seed)
    lat = np.linspace(-75.0, 75.0, 6)
    lon = np.arange(12) * 30.0
    time = np.array(["2000-01-01T00", "2000-01-01T06", "2000-01-01T12"], dtype="datetime64[ns]")
    base = (5000.0 + 100.0 * np.cos(np.deg2rad(lat))[:, None] * np.sin(np.deg2rad(lon))[None, :]
            + 10.0 * np.arange(3)[:, None, None])
    dims, shape = ("time", "yc", "xc"), (3, 6, 12)
    if members:
        dims, shape = ("time", "member", "yc", "xc"), (3, members, 6, 12)
        base = base[:, None]
    values = base + noise * rng.normal(size=shape)
    return xr.Dataset(
        {"height": (dims, values, {"units": "m", "long_name": "geopotential height"})},
        coords={
            "time": ("time", time, {"standard_name": "time"}),
            "yc": ("yc", lat, {"standard_name": "latitude", "units": "degrees_north"}),
            "xc": ("xc", lon, {"standard_name": "longitude", "units": "degrees_east"}),
        },
    )


@pytest.fixture(scope="module")
def grid():
    truth = grid_state()
    background = grid_state(members=5, seed=1, noise=20.0)
    analysis = grid_state(members=5, seed=2, noise=8.0)
    obs = xlatda.obs.sample_points(truth, n=6, error_std=5.0, seed=0)
    return truth, background, analysis, obs


@pytest.fixture(scope="module")
def l96():
    truth = xlatda.datasets.lorenz96(n=8, steps=6, spinup=100)
    background = xlatda.datasets.lorenz96(n=8, steps=6, spinup=100, members=5,
                                          perturbation=1.0)
    analysis = xlatda.datasets.lorenz96(n=8, steps=6, spinup=100, members=5,
                                        perturbation=0.3, seed=0)
    obs = xlatda.obs.sample_points(truth.isel(time=slice(1, None)), n=3, error_std=0.5, seed=0)
    return truth, background, analysis, obs


def saved(fig, tmp_path, name="fig.png"):
    path = tmp_path / name
    fig.savefig(path, dpi=50)
    assert path.stat().st_size > 1000
    return path


# -- import hygiene --------------------------------------------------------------


def test_import_does_not_load_matplotlib():
    code = ("import sys, xlatda, xlatda.plot; "
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_missing_matplotlib_names_the_extra(monkeypatch, l96):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install xlatda\[plot\]"):
        plot.maps(truth=l96[0])


# -- maps -----------------------------------------------------------------------------


def test_maps_grid_four_panels(grid, tmp_path):
    truth, background, analysis, obs = grid
    fig = plot.maps(truth, background, analysis, obs, projection=False)
    panels, bars = fig.axes[:4], fig.axes[4:]
    assert len(panels) == 4 and len(bars) == 4
    titles = [ax.get_title() for ax in panels]
    assert titles[:3] == ["truth [m]", "background [m]", "analysis [m]"]
    assert titles[3].startswith("increment") and titles[3].endswith("[m]")
    assert "2000-01-01T12:00" in fig.get_suptitle()  # the last time by default
    assert "6 observations" in fig.get_suptitle()
    # field + observations on each panel; state panels share limits, increment symmetric
    assert all(len(ax.collections) == 2 for ax in panels)
    lims = [ax.collections[0].get_clim() for ax in panels]
    assert lims[0] == lims[1] == lims[2]
    assert lims[3][0] == pytest.approx(-lims[3][1])
    assert panels[0].get_xlabel() == "longitude [°E]"
    saved(fig, tmp_path)


def test_maps_grid_picks_time_member_and_obs_at_that_time(grid):
    truth, background, analysis, obs = grid
    fig = plot.maps(truth, background, analysis, obs, time="2000-01-01T06", member=2,
                    projection=False)
    assert "2000-01-01T06:00" in fig.get_suptitle() and "member 2" in fig.get_suptitle()
    t = np.datetime64("2000-01-01T06", "ns")
    obs_positions = fig.axes[0].collections[1].get_offsets()
    assert len(obs_positions) == int((obs.time.values == t).sum())
    mesh = fig.axes[2].collections[0].get_array()
    np.testing.assert_allclose(np.ravel(mesh),
                               analysis.height.isel(time=1, member=2).values.ravel())


def test_maps_without_cartopy(grid, monkeypatch):
    monkeypatch.setitem(sys.modules, "cartopy", None)
    monkeypatch.setitem(sys.modules, "cartopy.crs", None)
    truth, *_ = grid
    fig = plot.maps(truth=truth)  # projection=None falls back to plain axes
    assert len(fig.axes) == 2 and fig.axes[0].get_ylabel() == "latitude [°N]"
    with pytest.raises(ImportError, match="cartopy"):
        plot.maps(truth=truth, projection=True)


def test_maps_points_layout(grid, tmp_path):
    truth, *_ = grid
    pts = truth.stack(point=("yc", "xc")).reset_index("point")
    fig = plot.maps(truth=pts.isel(point=slice(0, 40)), projection=False)
    assert len(fig.axes) == 2
    assert len(fig.axes[0].collections[0].get_offsets()) == 40
    saved(fig, tmp_path)


def test_maps_lorenz96_lines(l96, tmp_path):
    truth, background, analysis, obs = l96
    fig = plot.maps(truth, background, analysis, obs)
    state, inc = fig.axes
    assert len(fig.axes) == 2
    assert [line.get_label() for line in state.get_lines()][:3] == [
        "truth", "background", "analysis"]
    assert len(state.collections) >= 2  # spread bands + observation error bars
    assert state.get_ylabel() == "Lorenz-96 state variable [1]"
    assert inc.get_title().endswith("[1]") and state.get_xlabel() == ""
    assert inc.get_xlabel() == "site index"
    np.testing.assert_allclose(
        inc.get_lines()[1].get_ydata(),
        (analysis.x.isel(time=-1).mean("member") - background.x.isel(time=-1).mean("member")),
    )
    assert "3 observations" in state.get_title()
    saved(fig, tmp_path)


def test_maps_single_field(l96):
    fig = plot.maps(analysis=l96[2], member=0)
    assert len(fig.axes) == 1 and "member 0" in fig.axes[0].get_title()


def test_maps_errors(grid, l96):
    truth, _, analysis, _ = grid
    with pytest.raises(ConfigError, match="at least one"):
        plot.maps()
    with pytest.raises(VariableNotFoundError, match="height"):
        plot.maps(truth, variable="wind")
    with pytest.raises(ConfigError, match="not a time"):
        plot.maps(truth, time="1999-01-01")
    with pytest.raises(ConfigError, match="member"):
        plot.maps(analysis=analysis, member=9)
    with pytest.raises(ConfigError, match="no values"):
        plot.maps(truth.isel(time=[0]), analysis=analysis)
    with pytest.raises(ConfigError, match="different layouts"):
        plot.maps(truth=l96[0].x.isel(time=0), analysis=analysis.height)
    with pytest.raises(ConfigError, match="same kind of time"):
        plot.maps(truth=l96[0].x, analysis=analysis.height)


# -- scores ---------------------------------------------------------------------------


def test_rmse_spread_cycle_result(l96, tmp_path):
    from xlatda.dynamics.physical import Lorenz96

    truth, _, _, obs = l96
    res = xlatda.cycle(truth.isel(time=0), obs, Lorenz96(n=8), members=5, init_std=1.0,
                       progress=False, seed=0)
    fig = plot.rmse_spread(res, truth)
    ax = fig.axes[0]
    labels = [line.get_label() for line in ax.get_lines()]
    assert len(labels) == 4 and labels[0].startswith("analysis RMSE")
    assert ax.get_legend() is not None and "[1]" in ax.get_title()
    expected = xlatda.metrics.rmse(res.analysis.x.mean("member"),
                                   truth.x.sel(time=res.analysis.time), dim="k")
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), expected.values)
    saved(fig, tmp_path)


def test_rmse_spread_grid_is_latitude_weighted(grid):
    truth, background, analysis, _ = grid
    fig = plot.rmse_spread({"analysis": analysis, "background": background}, truth)
    lines = fig.axes[0].get_lines()
    assert [ln.get_label().split(" (")[0] for ln in lines] == [
        "background RMSE", "background spread", "analysis RMSE", "analysis spread"]
    expected = xlatda.metrics.spread(analysis.height, dim=["yc", "xc"])
    np.testing.assert_allclose(lines[3].get_ydata(), expected.values)
    assert "[m]" in fig.axes[0].get_title()


def test_rmse_spread_on_given_axes(l96):
    fig, ax = plt.subplots()
    out = plot.rmse_spread(l96[2], l96[0], ax=ax)
    assert out is fig and len(ax.get_lines()) == 2


@pytest.mark.parametrize("which", ["grid", "l96"])
def test_rank_histogram(which, grid, l96, tmp_path):
    truth, _, analysis, _ = grid if which == "grid" else l96
    fig = plot.rank_histogram(analysis, truth)
    ax = fig.axes[0]
    assert len(ax.patches) == 6  # 5 members + 1
    heights = [p.get_height() for p in ax.patches]
    flat = ax.get_lines()[0].get_ydata()[0]
    assert flat == pytest.approx(sum(heights) / 6)
    assert "[" in ax.get_title()
    saved(fig, tmp_path)


@pytest.mark.parametrize("which", ["grid", "l96"])
def test_spread_skill(which, grid, l96, tmp_path):
    truth, background, _, _ = grid if which == "grid" else l96
    fig = plot.spread_skill(background, truth, bins=5)
    ax = fig.axes[0]
    points = ax.collections[0].get_offsets()
    assert 1 <= len(points) <= 5
    one_to_one = ax.get_lines()[0]
    np.testing.assert_allclose(one_to_one.get_xdata(), one_to_one.get_ydata())
    assert ax.get_xlim() == ax.get_ylim()
    saved(fig, tmp_path)
    with pytest.raises(ConfigError, match="bins"):
        plot.spread_skill(background, truth, bins=0)
    with pytest.raises(ConfigError, match="member"):
        plot.spread_skill(truth, truth)


def test_latent_trajectory(tmp_path):
    rng = np.random.default_rng(0)
    z = xr.Dataset({"z": (("member", "time", "latent"), rng.normal(size=(4, 7, 5)))},
                   coords={"time": np.arange(7.0)})
    fig = plot.latent_trajectory(z, components=3)
    ax = fig.axes[0]
    assert len(ax.get_lines()) == 3 and len(ax.collections) == 3  # lines + spread bands
    assert "4 members" in ax.get_title()
    saved(fig, tmp_path)
    with pytest.raises(ConfigError, match="latent"):
        plot.latent_trajectory(z.rename(latent="code"))


def test_analysis_maps_every_variable_and_role():
    import pandas as pd

    t = pd.date_range("2019-03-22", periods=3, freq="h")
    lat = xr.DataArray([50.0, 51.0, 52.0], dims="lat", attrs={"units": "degrees_north"})
    lon = xr.DataArray([0.0, 1.0, 2.0, 3.0], dims="lon", attrs={"units": "degrees_east"})
    rng = np.random.default_rng(0)
    ds = xr.Dataset({"t": (("time", "lat", "lon"), rng.normal(size=(3, 3, 4)), {"units": "K"}),
                     "u": (("time", "lat", "lon"), rng.normal(size=(3, 3, 4)),
                           {"units": "m s-1"})}, coords={"time": t, "lat": lat, "lon": lon})
    obs = xr.Dataset({"t": ("obs", [1.0])}, coords={"lat": ("obs", [51.0]),
                     "lon": ("obs", [1.0]), "time": ("obs", t[-1:])})
    fig = plot.analysis_maps(ds, ds * 0.5, ds * 0.9, obs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [f"{v}: {r} [{u}]" for v, u in (("t", "K"), ("u", "m s-1"))
                      for r in ("truth", "background", "analysis", "analysis − truth")]
    assert "2019-03-22T02:00" in fig._suptitle.get_text()  # the year is shown
    assert fig.axes[0].get_ylabel() == "latitude [°N]"
    # a time given as a string, as ds.sel takes it, picks that time's observations
    fig = plot.analysis_maps(ds, ds * 0.5, ds * 0.9, obs, time="2019-03-22T01:00")
    assert "2019-03-22T01:00" in fig._suptitle.get_text()


def test_score_series_dates_have_the_year():
    import pandas as pd

    t = pd.date_range("2019-03-22", periods=240, freq="h")
    rmse = xr.DataArray(np.linspace(0.01, 2.0, 480).reshape(2, 240), dims=("run", "time"),
                        coords={"run": ["analysis", "background"], "time": t})
    fig = plot.score_series(rmse, ylabel="RMSE [K]")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert "2019" in ax.xaxis.get_major_formatter().get_offset()
    assert ax.get_yscale() == "log"
    labelled = [tk for tk in ax.get_yticklabels() if tk.get_text()]
    assert len(labelled) >= 4
