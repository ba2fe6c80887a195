"""The public path on real files, as a new user calls it (issue: audit of the public path).

Each test is a variation a user makes on a real reanalysis file (dims in another order,
descending latitude, dask chunks, ...) that broke or misbehaved; the synthetic twin of
each runs without the shared data.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import xlatda
from tests.conftest import shared_file


def _era5(n_time: int = 120) -> xr.Dataset:
    ds = xr.open_dataset(shared_file("era5_t2m_2019-03_uk.nc"))[["t2m"]]
    return ds.isel(time=slice(0, n_time)).load()


def _grid(nlat: int = 7, nlon: int = 11, n_time: int = 40, seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    lat = np.linspace(60.0, 48.0, nlat)
    lon = np.linspace(-10.0, 2.0, nlon)
    t = np.arange(n_time)
    field = (280 + 3 * np.sin(2 * np.pi * t / 24)[:, None, None]
             + np.cos(np.deg2rad(lat))[None, :, None] * np.sin(np.deg2rad(3 * lon))[None, None, :]
             + 0.3 * rng.standard_normal((n_time, nlat, nlon)))
    ds = xr.Dataset(
        {"t2m": (("time", "latitude", "longitude"), field.astype("float32"), {"units": "K"})},
        coords={"time": np.datetime64("2019-03-01") + t.astype("timedelta64[h]"),
                "latitude": ("latitude", lat, {"units": "degrees_north"}),
                "longitude": ("longitude", lon, {"units": "degrees_east"})},
    )
    return ds


def _fit(ds: xr.Dataset, **kw):
    kw = {"encoder": "pca", "latent_dim": 6, "seed": 0, "progress": False, **kw}
    return xlatda.fit(ds, **kw)


@pytest.mark.parametrize("source", ["synthetic", "era5"])
def test_fit_on_lon_lat_time_order_equals_fit_on_time_lat_lon(source):
    """A (lon, lat, time) Dataset fits (it crashed in Normalizer.fit on non-square grids)."""
    ds = _grid() if source == "synthetic" else _era5()
    ref = _fit(ds)
    other = _fit(ds.transpose("longitude", "latitude", "time"))
    flipped = ds.transpose("longitude", "latitude", "time")
    # the same training tensor: the same model, bit for bit, whichever order is passed
    np.testing.assert_array_equal(flipped.lda.encode(other).z.values, ds.lda.encode(ref).z.values)
    back = ds.lda.encode(other).lda.decode(other)
    np.testing.assert_array_equal(back.t2m.values, ds.lda.encode(ref).lda.decode(ref).t2m.values)
    # physical layouts keep the file's order; their cos-lat weights follow it
    np.testing.assert_array_equal(xlatda.layout(flipped).area_weights().T,
                                  xlatda.layout(ds).area_weights())


def _reorderings(ds: xr.Dataset) -> dict[str, xr.Dataset]:
    return {
        "south to north": ds.sortby("latitude"),
        "(lon, lat, time)": ds.transpose("longitude", "latitude", "time"),
        "longitudes 0..360": ds.assign_coords(longitude=ds.longitude % 360).sortby("longitude"),
        "extra gridded variable": ds.assign(d2m=ds.t2m - 3.0),
        "static land-sea mask": ds.assign(lsm=ds.t2m.isel(time=0, drop=True) * 0 + 1.0),
    }


@pytest.mark.parametrize("source", ["synthetic", "era5"])
def test_latent_cycle_reads_a_reordered_background_on_the_models_grid(source):
    """The same background in another grid order gives the same analysis, bit for bit.

    Before, a south-to-north background was encoded as if it were north to south (a
    silent 7 K error on ERA5), a (lon, lat) one crashed in the encoder, and an extra
    gridded variable crashed in the normaliser, a static one in the layout.
    """
    ds = _grid(n_time=60) if source == "synthetic" else _era5(264)
    train, test = ds.isel(time=slice(0, -24)), ds.isel(time=slice(-24, None))
    model = _fit(train, dynamics="linear", uncertainty="diagonal")
    obs = xlatda.obs.sample_points(test.isel(time=slice(1, None, 3)), n=8, error_std=0.8, seed=1)
    background = test.isel(time=[0])
    ref = xlatda.cycle(background, obs, model, seed=0, progress=False).analysis
    for name, other in _reorderings(background).items():
        got = xlatda.cycle(other, obs, model, seed=0, progress=False).analysis
        assert got.t2m.dims == ref.t2m.dims, name
        np.testing.assert_array_equal(got.latitude.values, ref.latitude.values, err_msg=name)
        np.testing.assert_array_equal(got.longitude.values, ref.longitude.values, err_msg=name)
        np.testing.assert_array_equal(got.t2m.values, ref.t2m.values, err_msg=name)
        assert list(got.data_vars) == ["t2m"], name


def test_latent_cycle_refuses_a_background_without_the_models_variables():
    ds = _grid(n_time=60)
    model = _fit(ds, dynamics="linear")
    obs = xlatda.obs.sample_points(ds.isel(time=slice(41, 50)), n=5, error_std=0.8, seed=1)
    with pytest.raises(xlatda.errors.VariableNotFoundError, match=r"lacks .*\['t2m'\]"):
        xlatda.cycle(ds.isel(time=[40]).rename(t2m="tas"), obs, model, seed=0, progress=False)


def test_layout_align_reorders_the_same_grid_only():
    ds = _grid(n_time=3)
    L = xlatda.layout(ds)
    flipped = ds.sortby("latitude").transpose("longitude", "latitude", "time")
    back = L.align(flipped)
    assert back.t2m.dims == ds.t2m.dims
    xr.testing.assert_identical(back, ds)
    lazy = L.align(flipped.chunk(time=1))
    assert lazy.t2m.chunks is not None  # reordered lazily
    np.testing.assert_array_equal(lazy.t2m.values, ds.t2m.values)
    other = ds.assign_coords(latitude=ds.latitude + 0.5)  # another grid: left for check()
    assert L.align(other).latitude.values.tolist() == other.latitude.values.tolist()
    with pytest.raises(xlatda.errors.LayoutError):
        L.check(L.align(other))


@pytest.mark.parametrize("source", ["synthetic", "era5"])
@pytest.mark.parametrize("lazy", [False, True])
def test_encode_reads_the_models_grid_in_any_order(source, lazy):
    """ds.lda.encode and xlatda.encode take the model's grid in another order (they refused)."""
    ds = _grid() if source == "synthetic" else _era5(48)
    model = _fit(ds)
    ref = xlatda.encode(ds, model).z.values
    for name, other in _reorderings(ds).items():
        if lazy:
            other = other.chunk(time=16)
        for how, z in (("accessor", other.lda.encode(model)), ("api", xlatda.encode(other, model))):
            assert (z.z.chunks is not None) == lazy, (name, how)  # no hidden compute
            np.testing.assert_array_equal(z.z.values, ref, err_msg=f"{name} {how}")


def _wfde5(n_time: int) -> xr.Dataset:
    ds = xr.open_dataset(shared_file("wfde5_air_temperature_2017-01_uk.nc"))[["Tair"]]
    return ds.isel(time=slice(0, n_time)).load()


def test_latent_cycle_keeps_the_sea_nan_of_a_land_only_file():
    """xlatda.decode gives NaN at WFDE5's sea cells; the cycled analysis gives the training mean."""
    ds = _wfde5(264)
    train, test = ds.isel(time=slice(0, 240)), ds.isel(time=slice(240, None))
    model = _fit(train, latent_dim=8, dynamics="linear", uncertainty="diagonal")
    sea = np.isnan(test.Tair.isel(time=0).values)
    decoded = test.isel(time=[0]).lda.encode(model).lda.decode(model)
    np.testing.assert_array_equal(np.isnan(decoded.Tair.isel(time=0).values), sea)
    obs = xlatda.obs.sample_points(test.isel(time=slice(1, None, 3)), n=10, error_std=0.8, seed=1)
    res = xlatda.cycle(test.isel(time=[0]), obs, model, seed=0, progress=False)
    for part in (res.analysis, res.background):
        values = part.Tair.values  # (time, member, lat, lon)
        np.testing.assert_array_equal(np.isnan(values), np.broadcast_to(sea, values.shape))


def _stations(n_time: int) -> xr.Dataset:
    path = shared_file("era5_daily_surface_cancities_1990-1993.nc")
    return xr.open_dataset(path)[["tas"]].isel(time=slice(0, n_time)).load()


def test_station_model_reads_its_stations_in_any_order():
    """A model fitted on 5 city series encoded the cities in another order as if in its own.

    ERA5 daily tas at Halifax ... Victoria (dim ``location``); before, a background with
    the cities reversed gave other latents and another analysis, silently.
    """
    ds = _stations(400)
    train, test = ds.isel(time=slice(0, 365)), ds.isel(time=slice(365, None))
    model = _fit(train, latent_dim=3, dynamics="linear", uncertainty="diagonal")
    reverse = test.isel(location=slice(None, None, -1))
    np.testing.assert_array_equal(reverse.lda.encode(model).z.values,
                                  test.lda.encode(model).z.values)
    obs = xlatda.obs.from_stations(test.isel(time=slice(1, 20), location=[0, 2]), error_std=1.0)
    ref = xlatda.cycle(test.isel(time=[0]), obs, model, seed=0, progress=False).analysis
    got = xlatda.cycle(reverse.isel(time=[0]), obs, model, seed=0, progress=False).analysis
    np.testing.assert_array_equal(got.location.values, ref.location.values)
    np.testing.assert_array_equal(got.tas.values, ref.tas.values)


def test_points_layout_refuses_other_places_or_labels():
    ds = _grid(n_time=4).stack(point=("latitude", "longitude")).reset_index("point")
    ds = ds.assign_coords(point=[f"s{i}" for i in range(ds.sizes["point"])])
    L = xlatda.layout(ds)
    assert L.kind == "points"
    renamed = ds.assign_coords(point=[f"x{i}" for i in range(ds.sizes["point"])])
    with pytest.raises(xlatda.errors.LayoutError, match="other labels"):
        L.check(L.align(renamed))
    moved = ds.assign_coords(latitude=ds.latitude + 1.0)
    with pytest.raises(xlatda.errors.LayoutError, match="other places"):
        L.check(L.align(moved))
    shuffled = ds.isel(point=np.random.default_rng(0).permutation(ds.sizes["point"]))
    xr.testing.assert_identical(L.align(shuffled), ds)


def test_a_squeezed_single_level_is_put_back():
    """hgt_djf.nc has pressure (size 1): a model fitted on it refused ``ds.squeeze()``."""
    ds = xr.open_dataset(shared_file("hgt_djf.nc")).load()
    model = _fit(ds.isel(time=slice(0, 50)), dynamics="linear", uncertainty="diagonal")
    assert model.layout.vertical_dim == "pressure"
    test = ds.isel(time=slice(50, None))
    ref = test.lda.encode(model).z.values
    for name, other in {"squeezed": test.squeeze("pressure"),
                        "squeezed and dropped": test.squeeze("pressure", drop=True),
                        "sel(pressure=500)": test.sel(pressure=500.0)}.items():
        np.testing.assert_array_equal(other.lda.encode(model).z.values, ref, err_msg=name)
    obs = xlatda.obs.sample_points(test.isel(time=slice(1, 6)), n=10, error_std=10.0, seed=0)
    a = xlatda.cycle(test.isel(time=[0]), obs, model, seed=0, progress=False).analysis
    b = xlatda.cycle(test.isel(time=[0]).squeeze("pressure"), obs, model, seed=0,
                     progress=False).analysis
    np.testing.assert_array_equal(b.z.values, a.z.values)
    other_level = test.squeeze("pressure").assign_coords(pressure=850.0)
    with pytest.raises(xlatda.errors.LayoutError, match=r"'pressure' .* is missing"):
        other_level.lda.encode(model)


def test_observations_in_the_hole_of_a_0_360_regional_grid_are_refused():
    """The UK box in 0..360 longitudes, sorted: 0..2 and 350..359.75 with a hole between.

    Points at 100 or 180 E were interpolated between the 2 E and 350 E columns (silently,
    278.8 K over Asia); now they are outside the domain, and the seam cell 359.75 -> 360
    is an ordinary cell.
    """
    from xlatda.obs_geometry import grid_interpolation_matrix

    lat = np.array([50.0, 51.0])
    lon = np.concatenate([np.arange(0.0, 2.01, 0.25), np.arange(350.0, 359.9, 0.25)])
    with pytest.raises(xlatda.errors.ObservationError, match=r"no column between 2\.0 and 350\.0"):
        grid_interpolation_matrix(lat, lon, [50.5, 50.5], [100.0, 1.0])
    h = grid_interpolation_matrix(lat, lon, [50.5, 50.5, 50.5], [1.1, -0.1, 359.8]).to_dense()
    field = np.broadcast_to(np.where(lon > 180, lon - 360, lon), (2, lon.size)).reshape(-1)
    np.testing.assert_allclose(h.numpy() @ field, [1.1, -0.1, -0.2], atol=1e-12)
    # a global grid is unchanged: periodic, no hole
    glon = np.arange(0.0, 360.0, 2.5)
    g = grid_interpolation_matrix(lat, glon, [50.5], [359.0]).to_dense().numpy()
    assert g[0].nonzero()[0].tolist() == [0, glon.size - 1, glon.size, 2 * glon.size - 1]


def test_physical_3dvar_on_a_0_360_era5_box_equals_the_minus_180_180_one():
    from xlatda.dynamics import CallableModel

    ds = _era5(13)
    obs = xlatda.obs.sample_points(ds.isel(time=slice(1, None, 3)), n=20, error_std=0.8, seed=1)
    persistence = CallableModel(lambda x, dt, theta: x, state_shape=(1, 33, 49), dt=3600.0)
    wrapped = ds.assign_coords(longitude=ds.longitude % 360).sortby("longitude")
    runs = [xlatda.cycle(b.isel(time=[0]), obs, persistence, method="3dvar", b_std=1.0,
                         progress=False).analysis for b in (ds, wrapped)]
    back = runs[1].assign_coords(longitude=((runs[1].longitude + 180) % 360) - 180)
    np.testing.assert_array_equal(back.sortby("longitude").t2m.values, runs[0].t2m.values)


def test_a_box_across_0e_in_0_360_longitudes_is_told_to_use_minus_180_180():
    ds = _era5(3)
    as_downloaded = ds.assign_coords(longitude=ds.longitude % 360)  # 350..359.75, 0..2
    with pytest.raises(xlatda.errors.LayoutError, match=r"-180\.\.180 instead") as err:
        xlatda.layout(as_downloaded)
    fix = "(ds['longitude'] + 180) % 360 - 180"
    assert fix in str(err.value)
    lon = as_downloaded["longitude"]
    fixed = as_downloaded.assign_coords(longitude=(lon + 180) % 360 - 180).sortby("longitude")
    xr.testing.assert_identical(fixed, ds)


def test_a_wrapped_function_cycles_in_physical_space():
    """README: any torch function ``step(x, dt, theta)`` wrapped in CallableModel."""
    from xlatda.dynamics import CallableModel

    ds = _era5(7)
    obs = xlatda.obs.sample_points(ds.isel(time=slice(1, None, 3)), n=10, error_std=0.8, seed=1)
    persistence = CallableModel(lambda x, dt, theta: x, state_shape=(1, 33, 49), dt=3600.0)
    runs = [xlatda.cycle(ds.isel(time=[0]), obs, persistence, method="letkf", members=8,
                         init_std=1.0, radius=3, seed=0, progress=False) for _ in range(2)]
    assert np.isfinite(runs[0].analysis.t2m.values).all()
    np.testing.assert_array_equal(runs[0].analysis.t2m.values, runs[1].analysis.t2m.values)


def test_a_bare_function_is_refused_with_the_wrapper_to_use():
    ds = _grid(n_time=4)
    obs = xlatda.obs.sample_points(ds.isel(time=slice(1, None)), n=5, error_std=0.8, seed=1)
    with pytest.raises(xlatda.errors.ConfigError, match="CallableModel"):
        xlatda.cycle(ds.isel(time=[0]), obs, lambda x, dt, theta: x, members=5, init_std=1.0,
                     progress=False)


def test_station_values_in_degc_without_units_warn_before_the_run():
    """The UK station table in degC (no units attribute) against ERA5 in K.

    Before, every observation was rejected by the gross-error check (n_obs 0 at all 80
    analysis times) and the run returned the free forecast without a word.
    """
    import warnings

    import pandas as pd

    from tests.test_guide_own_data import ROOT

    ds = _era5(504)
    model = _fit(ds, latent_dim=8, dynamics="linear", uncertainty="diagonal")
    table = pd.read_csv(ROOT / "examples/configs/uk_stations_t2m.csv").iloc[:48]
    background = ds.isel(time=[-1])
    celsius = xlatda.obs.from_dataframe(table.assign(t2m=table.t2m - 273.15), error_std="error")
    with pytest.warns(xlatda.errors.ObservationScaleWarning, match=r"48 of 48 .*'t2m'.*'K'"):
        res = xlatda.cycle(background, celsius, model, seed=0, progress=False)
    assert (res.diagnostics.n_obs == 0).all()  # what the warning is about
    kelvin = xlatda.obs.from_dataframe(table, error_std="error")
    with warnings.catch_warnings():
        warnings.simplefilter("error", xlatda.errors.ObservationScaleWarning)
        res = xlatda.cycle(background, kelvin, model, seed=0, progress=False)
    assert (res.diagnostics.n_obs > 0).all()


def test_a_static_field_in_the_file_is_named_with_the_variables_to_keep():
    ds = _era5(48)
    with_mask = ds.assign(lsm=ds.t2m.isel(time=0, drop=True) * 0 + 1.0)
    with pytest.raises(xlatda.errors.LayoutError, match=r"pass variables=\['t2m'\]"):
        xlatda.fit(with_mask, latent_dim=4, progress=False)
    model = xlatda.fit(with_mask, variables=["t2m"], latent_dim=4, progress=False)
    assert model.layout.variables == ("t2m",)


def test_a_table_or_a_model_path_in_place_of_the_objects_says_what_to_call(tmp_path):
    import pandas as pd

    ds = _grid(n_time=30)
    model = _fit(ds, dynamics="linear")
    obs = xlatda.obs.sample_points(ds.isel(time=slice(21, 24)), n=5, error_std=0.8, seed=0)
    table = obs.to_dataframe().reset_index()
    assert isinstance(table, pd.DataFrame)
    with pytest.raises(xlatda.errors.ObservationError, match=r"xlatda\.obs\.from_dataframe"):
        xlatda.cycle(ds.isel(time=[20]), table, model, progress=False)
    model.save(tmp_path / "m.zarr")
    for path in (str(tmp_path / "m.zarr"), tmp_path / "m.zarr"):
        # it was taken for a physical model: "pass init_std=..."
        with pytest.raises(xlatda.errors.ConfigError, match=r"xlatda\.open_model\(path\)"):
            xlatda.cycle(ds.isel(time=[20]), obs, path, progress=False)


def test_score_cycle_takes_its_start_time_from_a_reordered_background():
    """method='score' reads only the start time of the background: a south-to-north one
    was refused by the layout check."""
    ds = _era5(120)
    model = _fit(ds.isel(time=slice(0, 96)), latent_dim=4)
    model = xlatda.fit_score(ds.isel(time=slice(0, 96)), model, window=2, epochs=2, hidden=16,
                             depth=1, seed=0, progress=False)
    test = ds.isel(time=slice(96, None))
    obs = xlatda.obs.sample_points(test.isel(time=slice(1, 5)), n=6, error_std=0.8, seed=0)
    kw = dict(method="score", window=2, members=3, steps=4, seed=0, progress=False)
    ref = xlatda.cycle(test.isel(time=[0]), obs, model, **kw).analysis
    got = xlatda.cycle(test.isel(time=[0]).sortby("latitude"), obs, model, **kw).analysis
    np.testing.assert_array_equal(got.t2m.values, ref.t2m.values)


def test_a_noleap_calendar_file_fits_and_cycles_like_the_standard_one():
    """ERA5 with cftime (noleap) times, as climate-model output comes.

    Before, fit(dynamics='linear') crashed in float_times; past that, the model got no
    time step and no daily forcing (the cycle differed by up to 9.7 K), evolve could not
    add its leads and climatology(by='hour') refused the dates.
    """
    ds = _era5(264)
    noleap = ds.convert_calendar("noleap", use_cftime=True)
    kw = dict(latent_dim=8, dynamics="linear", uncertainty="diagonal")
    models = [_fit(d.isel(time=slice(0, 240)), **kw) for d in (ds, noleap)]
    assert models[1].time_step == models[0].time_step == {"value": 3600.0, "units": "s"}
    assert models[1].history["dynamics"]["periods"] == models[0].history["dynamics"]["periods"]
    runs = []
    for d, model in zip((ds, noleap), models):
        test = d.isel(time=slice(240, None))
        obs = xlatda.obs.sample_points(test.isel(time=slice(1, None, 3)), n=10, error_std=0.8,
                                       seed=0)
        runs.append(xlatda.cycle(test.isel(time=[0]), obs, model, seed=0,
                                 progress=False).analysis)
    np.testing.assert_array_equal(runs[1].t2m.values, runs[0].t2m.values)
    fc = noleap.isel(time=[240]).lda.encode(models[1]).lda.evolve(models[1], steps=3)
    assert [str(v) for v in fc.valid_time.values[0]] == [
        "2019-03-11 00:00:00", "2019-03-11 01:00:00", "2019-03-11 02:00:00",
        "2019-03-11 03:00:00"]
    clim = [xlatda.baselines.climatology(d.isel(time=slice(0, 240)), d.time[240:], by="hour")
            for d in (ds, noleap)]
    np.testing.assert_array_equal(clim[1].t2m.values, clim[0].t2m.values)


def test_station_series_in_a_360_day_calendar_become_observations_and_cycle():
    """from_stations refused cftime dates ('not convertible to datetime')."""
    ds = _stations(760).convert_calendar("360_day", align_on="year", use_cftime=True)
    model = _fit(ds.isel(time=slice(0, 730)), latent_dim=3, dynamics="linear",
                 uncertainty="diagonal")
    # the annual forcing has the calendar's year: 360 days, not 365.2425
    assert model.history["dynamics"]["periods"] == [360 * 86400.0, 180 * 86400.0]
    test = ds.isel(time=slice(730, None))
    obs = xlatda.obs.from_stations(test.isel(time=slice(1, None), location=[0, 2]),
                                   error_std=1.0)
    assert obs.time.values[0] == test.time.values[1]  # the same cftime dates
    res = xlatda.cycle(test.isel(time=[0]), obs, model, seed=0, progress=False)
    assert res.analysis.sizes["time"] == test.sizes["time"] - 1
    assert np.isfinite(res.analysis.tas.values).all()
