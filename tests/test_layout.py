"""StateLayout: round trips (hypothesis), real files, laziness, errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xlatda
from tests.conftest import shared_file
from xlatda.errors import LayoutError, ShapeError, VariableNotFoundError, XlatdaError
from xlatda.normalize import Normalizer


def make_state(nvar=2, ntime=3, nlat=4, nlon=5, nlev=0, dtype="float32", member=0,
               lat_name="lat", lon_name="lon", seed=0, descending=False):
    rng = np.random.default_rng(seed)
    lat = np.linspace(-60, 60, nlat)
    if descending:
        lat = lat[::-1]
    coords = {
        "time": ("time", np.arange(ntime) * np.timedelta64(1, "h") + np.datetime64("2000-01-01"),
                 {"standard_name": "time", "axis": "T"}),
        lat_name: (lat_name, lat, {"standard_name": "latitude", "units": "degrees_north"}),
        lon_name: (lon_name, np.arange(nlon) * 360.0 / nlon,
                   {"standard_name": "longitude", "units": "degrees_east"}),
    }
    dims = ["time"]
    if member:
        dims.append("member")
        coords["member"] = np.arange(member)
    if nlev:
        dims.append("level")
        coords["level"] = ("level", np.linspace(1000, 200, nlev), {"axis": "Z", "units": "hPa"})
    dims += [lat_name, lon_name]
    data = {}
    for i in range(nvar):
        shape = [len(np.atleast_1d(coords[d][1] if isinstance(coords[d], tuple) else coords[d]))
                 for d in dims]
        data[f"v{i}"] = (dims, rng.normal(size=shape).astype(dtype),
                         {"units": "m", "long_name": f"variable {i}"})
    ds = xr.Dataset(data, coords=coords, attrs={"title": "test", "Conventions": "CF-1.8"})
    for v in ds.data_vars:
        ds[v].encoding = {"dtype": np.dtype(dtype), "_FillValue": np.nan}
    return ds


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    nvar=st.integers(1, 3), ntime=st.integers(1, 5), nlat=st.integers(2, 5),
    nlon=st.integers(2, 6), nlev=st.sampled_from([0, 2]), member=st.sampled_from([0, 3]),
    dtype=st.sampled_from(["float32", "float64"]), chunk=st.sampled_from([None, 1, 2]),
    names=st.sampled_from([("lat", "lon"), ("latitude", "longitude"), ("y", "x")]),
    descending=st.booleans(),
)
def test_round_trip_identical(nvar, ntime, nlat, nlon, nlev, member, dtype, chunk, names,
                              descending):
    ds = make_state(nvar, ntime, nlat, nlon, nlev, dtype, member, *names,
                    descending=descending)
    L = xlatda.layout(ds)
    assert L.kind == "latlon"
    assert L.spatial_dims == names
    assert L.n_channels == nvar * max(nlev, 1)
    x = L.to_tensor(ds)
    lead = (ntime, member) if member else (ntime,)
    assert tuple(x.shape) == (*lead, L.n_channels, nlat, nlon)
    back = L.to_dataset(x)
    xr.testing.assert_identical(back, ds)
    for v in ds.data_vars:
        assert back[v].encoding == ds[v].encoding
        assert back[v].dtype == ds[v].dtype
    if chunk is not None:
        lazy = ds.chunk({"time": chunk})
        stacked = L.stack(lazy)
        assert stacked.chunks is not None
        xr.testing.assert_identical(L.unstack(stacked).compute(), ds)
        torch.testing.assert_close(L.to_tensor(lazy), x)
    # Serialisation of the layout itself.
    assert xlatda.StateLayout.from_dict(L.to_dict()) == L


def test_stack_stays_lazy(raise_if_dask_computes):
    ds = make_state(ntime=6).chunk({"time": 2})
    L = xlatda.layout(ds)
    with raise_if_dask_computes():
        stacked = L.stack(ds)
        back = L.unstack(stacked)
    assert back["v0"].chunks is not None


@pytest.mark.parametrize(
    "name, sample, spatial, vertical",
    [
        ("era5_t2m_2019-03_uk.nc", ("time",), ("latitude", "longitude"), None),
        ("uwnd_mean.nc", ("time",), ("latitude", "longitude"), None),
        ("hgt_djf.nc", ("time",), ("latitude", "longitude"), "pressure"),
        ("wfde5_air_temperature_2017-01_uk.nc", ("time",), ("lat", "lon"), None),
        ("era5_daily_surface_cancities_1990-1993.nc", ("time",), ("location",), None),
    ],
)
def test_real_files_round_trip(name, sample, spatial, vertical):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_dataset(shared_file(name))
    L = xlatda.layout(ds)
    assert L.sample_dims == sample
    assert L.spatial_dims == spatial
    assert L.vertical_dim == vertical
    back = L.to_dataset(L.to_tensor(ds))
    xr.testing.assert_identical(back, ds)
    for v in ds.variables:
        assert back[v].encoding == ds[v].encoding, v


def test_points_and_generic_layouts():
    pts = xr.Dataset(
        {"t": (("time", "station"), np.ones((3, 4)))},
        coords={"lat": ("station", [1.0, 2, 3, 4], {"standard_name": "latitude"}),
                "lon": ("station", [5.0, 6, 7, 8], {"standard_name": "longitude"})},
    )
    L = xlatda.layout(pts)
    assert L.kind == "points" and L.spatial_dims == ("station",)
    l96 = xr.Dataset({"x": (("time", "k"), np.ones((5, 40)))},
                     coords={"time": ("time", np.arange(5.0), {"axis": "T"})})
    L = xlatda.layout(l96)
    assert L.kind == "generic" and L.spatial_dims == ("k",) and L.sample_dims == ("time",)
    xr.testing.assert_identical(L.to_dataset(L.to_tensor(l96)), l96)


def test_to_dataset_new_sample_coords():
    ds = make_state(ntime=3)
    L = xlatda.layout(ds)
    x = L.to_tensor(ds)[:2]
    new_time = ds.time.values[:2] + np.timedelta64(1, "D")
    out = L.to_dataset(x, sample_coords={"time": new_time})
    np.testing.assert_array_equal(out.time.values, new_time)
    assert out.v0.attrs == ds.v0.attrs
    with pytest.raises(ShapeError, match="sample_coords"):
        L.to_dataset(x)


def test_area_weights_and_normalizer():
    ds = make_state(nlat=5, nlon=4)
    L = xlatda.layout(ds)
    w = L.area_weights()
    assert w.shape == (5, 4)
    np.testing.assert_allclose(w.mean(), 1.0)
    np.testing.assert_allclose(w[:, 0] / w[2, 0], np.cos(np.deg2rad(L.lat)))
    x = L.to_tensor(ds)
    norm = Normalizer.fit(x)
    z = norm.normalize(x)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(norm.denormalize(z), x)
    back = Normalizer.from_dict(norm.to_dict())
    torch.testing.assert_close(back.mean, norm.mean)
    xw = Normalizer.fit(x, weights=torch.as_tensor(w))
    assert not torch.allclose(xw.mean, norm.mean)


def test_normalizer_ignores_nan():
    x = torch.tensor([[[1.0, float("nan"), 3.0]]])
    norm = Normalizer.fit(x)
    assert norm.mean.item() == pytest.approx(2.0)


# -- errors: typed, with the fix in the message ------------------------------
def test_error_no_latitude():
    ds = xr.Dataset({"t": (("time", "y", "x"), np.zeros((1, 2, 3)))},
                    coords={"x": ("x", [0.0, 1, 2], {"standard_name": "longitude"})})
    with pytest.raises(LayoutError, match=r"no latitude.*standard_name='latitude'"):
        xlatda.layout(ds)


def test_error_non_monotonic():
    ds = make_state()
    ds = ds.assign_coords(lat=ds.lat.values[[1, 0, 2, 3]])
    with pytest.raises(LayoutError, match=r"not strictly monotonic.*sortby\('lat'\)"):
        xlatda.layout(ds)


def test_error_time_not_sorted_and_duplicate():
    ds = make_state(ntime=3)
    with pytest.raises(LayoutError, match=r"sortby\('time'\)"):
        xlatda.layout(ds.isel(time=[2, 0, 1]))
    with pytest.raises(LayoutError, match="drop_duplicates"):
        xlatda.layout(ds.isel(time=[0, 0, 1]))


def test_error_time_not_sortable():
    ds = make_state(ntime=2)
    ds = ds.assign_coords(time=("time", np.array([np.datetime64("2000-01-01"), "x"],
                                                 dtype=object), {"axis": "T"}))
    with pytest.raises(LayoutError, match="cannot be sorted"):
        xlatda.layout(ds)


def test_error_unknown_variable():
    with pytest.raises(VariableNotFoundError, match="data variables are") as info:
        xlatda.layout(make_state(), variables=["nope"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, XlatdaError)


def test_error_wrong_tensor_shape():
    ds = make_state()
    L = xlatda.layout(ds)
    with pytest.raises(ShapeError, match="does not fit the layout"):
        L.to_dataset(torch.zeros(3, 5, 4, 5))


def test_error_curvilinear():
    ds = xr.Dataset({"t": (("y", "x"), np.zeros((2, 3)))},
                    coords={"nav_lat": (("y", "x"), np.zeros((2, 3)),
                                        {"standard_name": "latitude"}),
                            "nav_lon": (("y", "x"), np.zeros((2, 3)),
                                        {"standard_name": "longitude"})})
    with pytest.raises(LayoutError, match=r"ds.stack"):
        xlatda.layout(ds)


def test_unstack_shares_indexes_but_nothing_writable():
    # unstack reuses the template's and the input's (immutable) indexes instead of
    # building new ones; attributes and other coordinates stay independent.
    ds = xr.Dataset(
        {"h": (("time", "lat", "lon"), np.random.default_rng(0).normal(size=(4, 3, 5)),
               {"units": "m"})},
        coords={"time": np.arange(4.0),
                "lat": ("lat", [-30.0, 0.0, 30.0], {"standard_name": "latitude",
                                                    "units": "degrees_north"}),
                "lon": ("lon", np.arange(5) * 72.0, {"standard_name": "longitude"}),
                "area": (("lat", "lon"), np.ones((3, 5)))},
    )
    L = xlatda.layout(ds)
    out = L.unstack(L.stack(ds))
    xr.testing.assert_identical(out, ds)
    assert out.xindexes["lat"] is L.template.xindexes["lat"]
    out.lat.attrs["units"] = "changed"
    out["area"].values[0, 0] = 5.0
    assert L.template.lat.attrs["units"] == "degrees_north"
    assert float(L.template.area.values[0, 0]) == 1.0
    with pytest.raises(ValueError, match="read-only"):
        out.lat.values[0] = 99.0
    # a multi-coordinate index on the sample dim comes through whole
    st = L.stack(ds).assign_coords(run=("time", [0, 0, 1, 1]), step=("time", [0, 1, 0, 1]))
    st = st.set_index(time=["run", "step"])
    back = L.unstack(st)
    assert list(back.xindexes["time"].index.names) == ["run", "step"]
    np.testing.assert_array_equal(back.h.values, ds.h.values)
