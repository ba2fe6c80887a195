"""Tests of xlatda.metrics against xskillscore, properscoring and closed forms."""

from __future__ import annotations

import dask.array
import numpy as np
import properscoring
import pytest
import xarray as xr
import xskillscore as xs
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from xlatda import metrics
from xlatda.errors import (
    ConfigError,
    LayoutError,
    ShapeError,
    VariableNotFoundError,
    XlatdaError,
)

LAT_ATTRS = {"standard_name": "latitude", "units": "degrees_north"}


def grid(seed=0, shape=(6, 5, 8), lat_name="lat", lat_attrs=LAT_ATTRS, name="t2m"):
    rng = np.random.default_rng(seed)
    lat = np.linspace(-75.0, 75.0, shape[1])
    return xr.DataArray(
        rng.normal(size=shape),
        dims=("time", lat_name, "lon"),
        coords={
            "time": np.arange(shape[0]),
            lat_name: (lat_name, lat, dict(lat_attrs)),
            "lon": np.arange(shape[2]) * 45.0,
        },
        name=name,
    )


def ensemble(truth, members=7, seed=1, scale=1.0):
    rng = np.random.default_rng(seed)
    noise = rng.normal(scale=scale, size=(members, *truth.shape))
    ens = truth + xr.DataArray(noise, dims=("member", *truth.dims))
    return ens.transpose(*truth.dims, "member")


def cos_lat(da, lat_name="lat"):
    return np.cos(np.deg2rad(da[lat_name]))


@pytest.fixture
def pair():
    a = grid(0)
    return a, a + grid(1) * 0.5 + 0.1


# ---------------------------------------------------------------------------
# deterministic scores against xskillscore
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs"), [(metrics.rmse, xs.rmse), (metrics.mae, xs.mae), (metrics.bias, xs.me)]
)
@pytest.mark.parametrize("dim", [None, ["lat", "lon"], "time", ["time", "lat"]])
def test_deterministic_match_xskillscore_latitude_weighted(pair, ours, theirs, dim):
    a, b = pair
    xs_dim = list(a.dims) if dim is None else dim
    w = cos_lat(a).broadcast_like(a.isel({d: 0 for d in a.dims if d not in xs_dim}, drop=True))
    expected = theirs(a, b, dim=xs_dim, weights=w if "lat" in xs_dim else None)
    xr.testing.assert_allclose(ours(a, b, dim=dim), expected.rename(a.name))


@pytest.mark.parametrize(
    ("ours", "theirs"), [(metrics.rmse, xs.rmse), (metrics.mae, xs.mae), (metrics.bias, xs.me)]
)
def test_deterministic_unweighted_and_explicit_weights(pair, ours, theirs):
    a, b = pair
    dims = ["lat", "lon"]
    got = ours(a, b, dim=dims, weights=False)
    xr.testing.assert_allclose(got, theirs(a, b, dim=dims).rename(a.name))
    w = xr.DataArray(np.arange(1.0, 9.0), dims="lon")
    got = ours(a, b, dim=dims, weights=w)
    expected = theirs(a, b, dim=dims, weights=w.broadcast_like(a.isel(time=0, drop=True)))
    xr.testing.assert_allclose(got, expected.rename(a.name))


def test_rmse_closed_form_and_sign_of_bias():
    a = xr.DataArray([1.0, 2.0, 3.0, 4.0], dims="time")
    b = a + xr.DataArray([1.0, -1.0, 3.0, 1.0], dims="time")
    assert float(metrics.rmse(a, b)) == pytest.approx(np.sqrt(12 / 4))
    assert float(metrics.mae(a, b)) == pytest.approx(6 / 4)
    assert float(metrics.bias(b, a)) == pytest.approx(1.0)  # mean(b - a)
    assert float(metrics.bias(a, b)) == pytest.approx(-1.0)


def test_skipna_and_nan_propagation():
    a = xr.DataArray([1.0, np.nan, 3.0], dims="time")
    b = xr.DataArray([2.0, 0.0, 3.0], dims="time")
    assert float(metrics.rmse(a, b)) == pytest.approx(np.sqrt(0.5))
    assert np.isnan(float(metrics.rmse(a, b, skipna=False)))


def test_broadcast_against_a_climatology(pair):
    a, _ = pair
    clim = a.mean("time")
    got = metrics.rmse(a, clim)  # dims shared: lat, lon -> one value per time
    assert got.dims == ("time",)
    expected = xs.rmse(
        a, clim.broadcast_like(a), dim=["lat", "lon"], weights=cos_lat(a).broadcast_like(clim)
    )
    xr.testing.assert_allclose(got, expected.rename(a.name))


# ---------------------------------------------------------------------------
# latitude discovery
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lat_name", "attrs"),
    [
        ("lat", {"standard_name": "latitude"}),
        ("latitude", {"units": "degrees_north"}),
        ("y", {"standard_name": "latitude", "units": "degrees_north"}),
        ("phi", {"units": "degrees_north"}),
    ],
)
def test_cos_latitude_weights_found_whatever_the_name(lat_name, attrs):
    a = grid(0, lat_name=lat_name, lat_attrs=attrs)
    b = grid(1, lat_name=lat_name, lat_attrs=attrs)
    w = cos_lat(a, lat_name)
    expected = np.sqrt(((a - b) ** 2).weighted(w).mean())
    unweighted = np.sqrt(((a - b) ** 2).mean())
    got = metrics.rmse(a, b)
    assert float(got) == pytest.approx(float(expected))
    assert float(got) != pytest.approx(float(unweighted))
    assert float(metrics.rmse(a, b, weights=False)) == pytest.approx(float(unweighted))
    assert float(metrics.rmse(a, b, weights=True)) == pytest.approx(float(expected))


def test_no_cf_latitude_means_no_weighting_and_true_raises():
    a, b = grid(0, lat_attrs={}), grid(1, lat_attrs={})
    assert float(metrics.rmse(a, b)) == pytest.approx(float(np.sqrt(((a - b) ** 2).mean())))
    with pytest.raises(LayoutError, match="weights=True"):
        metrics.rmse(a, b, weights=True)


def test_latitude_not_reduced_gives_plain_mean(pair):
    a, b = pair
    got = metrics.rmse(a, b, dim="time")
    xr.testing.assert_allclose(got, np.sqrt(((a - b) ** 2).mean("time")).rename(a.name))


def test_two_dimensional_latitude_coordinate():
    a = grid(0, lat_attrs={}).drop_vars("lat")
    b = grid(1, lat_attrs={}).drop_vars("lat")
    lat2d = xr.DataArray(
        np.linspace(-60, 60, 40).reshape(5, 8), dims=("lat", "lon"), attrs=LAT_ATTRS
    )
    a, b = a.assign_coords(glat=lat2d), b.assign_coords(glat=lat2d)
    w = np.cos(np.deg2rad(lat2d))
    expected = np.sqrt(((a - b) ** 2).weighted(w).mean())
    assert float(metrics.rmse(a, b)) == pytest.approx(float(expected))


# ---------------------------------------------------------------------------
# ensemble scores
# ---------------------------------------------------------------------------


def test_crps_matches_properscoring_pointwise():
    truth = grid(0)
    ens = ensemble(truth, members=9)
    got = metrics.crps_ensemble(ens, truth, dim=[])
    expected = properscoring.crps_ensemble(truth.values, ens.values)
    np.testing.assert_allclose(got.transpose(*truth.dims).values, expected, rtol=1e-12)


@pytest.mark.filterwarnings("ignore:Mean of empty slice:RuntimeWarning")
def test_crps_ignores_missing_members_like_properscoring():
    truth = grid(0, shape=(3, 2, 4))
    ens = ensemble(truth, members=5)
    vals = ens.values.copy()
    vals[0, 0, 0, [1, 3]] = np.nan
    vals[1, 1, 2, :] = np.nan
    ens = ens.copy(data=vals)
    got = metrics.crps_ensemble(ens, truth, dim=[]).values
    expected = properscoring.crps_ensemble(truth.values, vals)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    assert np.isnan(got[1, 1, 2])


@pytest.mark.parametrize("dim", [None, ["time", "lon"], "lat"])
def test_crps_matches_xskillscore_weighted(dim):
    truth = grid(0)
    ens = ensemble(truth, members=6)
    xs_dim = [d for d in truth.dims] if dim is None else ([dim] if isinstance(dim, str) else dim)
    w = None
    if "lat" in xs_dim:
        w = cos_lat(truth).broadcast_like(
            truth.isel({d: 0 for d in truth.dims if d not in xs_dim}, drop=True)
        )
    expected = xs.crps_ensemble(truth, ens, dim=xs_dim, weights=w)
    xr.testing.assert_allclose(metrics.crps_ensemble(ens, truth, dim=dim), expected.rename("t2m"))


def test_fair_crps_equals_direct_pair_formula():
    rng = np.random.default_rng(3)
    ens_v, y = rng.normal(size=(50, 6)), rng.normal(size=50)
    ens = xr.DataArray(ens_v, dims=("case", "member"))
    truth = xr.DataArray(y, dims="case")
    pairs = np.abs(ens_v[:, :, None] - ens_v[:, None, :]).sum(axis=(1, 2))
    fair = np.abs(ens_v - y[:, None]).mean(axis=1) - pairs / (2 * 6 * 5)
    got = metrics.crps_ensemble(ens, truth, dim=[], fair=True)
    np.testing.assert_allclose(got.values, fair, rtol=1e-12)
    # one member: the CRPS is the absolute error; the fair one is undefined
    one = ens.isel(member=[0])
    np.testing.assert_allclose(metrics.crps_ensemble(one, truth, dim=[]), np.abs(ens_v[:, 0] - y))
    assert np.isnan(metrics.crps_ensemble(one, truth, dim=[], fair=True)).all()


@pytest.mark.parametrize("dim", [None, ["time", "lat"], "time"])
def test_rank_histogram_matches_xskillscore_without_ties(dim):
    truth = grid(0)
    ens = ensemble(truth, members=5, scale=1.3)
    got = metrics.rank_histogram(ens, truth, dim=dim)
    expected = xs.rank_histogram(truth, ens, dim=dim, random_for_tied=False)
    assert got.sizes["rank"] == 6
    np.testing.assert_array_equal(got.transpose(*expected.dims).values, expected.values)
    np.testing.assert_array_equal(got["rank"].values, np.arange(1, 7))
    assert got.dtype == np.int64


def test_rank_histogram_ties_are_broken_randomly_and_reproducibly():
    rng = np.random.default_rng(5)
    truth = xr.DataArray(rng.integers(0, 2, size=(4000,)).astype(float), dims="case")
    ens = xr.DataArray(rng.integers(0, 2, size=(4000, 3)).astype(float), dims=("case", "member"))
    h = metrics.rank_histogram(ens, truth, seed=1)
    assert int(h.sum()) == 4000
    # truth and members are exchangeable: the expected histogram is flat
    np.testing.assert_allclose(h.values / 4000, 0.25, atol=0.03)
    xr.testing.assert_identical(h, metrics.rank_histogram(ens, truth, seed=1))
    assert not h.equals(metrics.rank_histogram(ens, truth, seed=2))
    # the same with any chunking
    chunked = metrics.rank_histogram(ens.chunk(case=333), truth.chunk(case=1000), seed=1)
    xr.testing.assert_identical(chunked.compute(), h)


def test_rank_histogram_skips_missing():
    truth = xr.DataArray([0.5, np.nan, 0.5, 2.0], dims="case")
    ens = xr.DataArray([[0.0, 1.0], [0.0, 1.0], [np.nan, 1.0], [0.0, 1.0]], dims=("case", "member"))
    np.testing.assert_array_equal(metrics.rank_histogram(ens, truth).values, [0, 1, 1])


def test_spread_closed_form_and_spread_skill_ratio():
    truth = grid(0)
    ens = ensemble(truth, members=8)
    w = cos_lat(truth)
    var = ens.var("member", ddof=1)
    assert float(metrics.spread(ens)) == pytest.approx(float(np.sqrt(var.weighted(w).mean())))
    skill = xs.rmse(
        ens.mean("member"), truth, dim=list(truth.dims), weights=w.broadcast_like(truth)
    )
    raw = float(np.sqrt(var.weighted(w).mean())) / float(skill)
    ssr = metrics.spread_skill_ratio(ens, truth, finite_ensemble_correction=False)
    assert float(ssr) == pytest.approx(raw)
    ssr_c = metrics.spread_skill_ratio(ens, truth)
    assert float(ssr_c) == pytest.approx(raw * np.sqrt(9 / 8))


def test_spread_skill_ratio_of_a_consistent_ensemble_is_one():
    # truth is one more draw from the members' distribution
    rng = np.random.default_rng(11)
    draws = xr.DataArray(rng.normal(size=(40000, 4)), dims=("case", "member"))
    ens, truth = draws.isel(member=slice(0, 3)), draws.isel(member=3, drop=True)
    assert float(metrics.spread_skill_ratio(ens, truth)) == pytest.approx(1.0, abs=0.02)
    raw = float(metrics.spread_skill_ratio(ens, truth, finite_ensemble_correction=False))
    assert raw == pytest.approx(np.sqrt(3 / 4), abs=0.02)


def test_spread_skill_ratio_ignores_points_where_truth_is_missing():
    ens = xr.DataArray([[0.0, 2.0], [0.0, 100.0]], dims=("case", "member"))
    truth = xr.DataArray([0.0, np.nan], dims="case")
    ssr = metrics.spread_skill_ratio(ens, truth, finite_ensemble_correction=False)
    assert float(ssr) == pytest.approx(np.sqrt(2.0) / 1.0)


# ---------------------------------------------------------------------------
# Datasets, chunked == eager, laziness
# ---------------------------------------------------------------------------


def test_dataset_is_scored_per_variable(pair):
    a, b = pair
    ds_a = xr.Dataset({"u": a, "v": 2 * a})
    ds_b = xr.Dataset({"u": b, "v": 2 * b})
    out = metrics.rmse(ds_a, ds_b, dim=["lat", "lon"])
    assert isinstance(out, xr.Dataset)
    xr.testing.assert_allclose(out["u"], metrics.rmse(a, b, dim=["lat", "lon"]).rename("u"))
    xr.testing.assert_allclose(out["v"], 2 * out["u"].rename("v"))
    ens = xr.Dataset({"u": ensemble(a), "v": ensemble(2 * a)})
    crps = metrics.crps_ensemble(ens, ds_a)
    assert set(crps.data_vars) == {"u", "v"}
    hist = metrics.rank_histogram(ens, ds_a, dim="time")
    assert hist["u"].dims == ("lat", "lon", "rank")
    with pytest.raises(VariableNotFoundError, match="same data variables"):
        metrics.rmse(ds_a, ds_b[["u"]])


def _all_metrics(ens, truth, other):
    return {
        "rmse": metrics.rmse(truth, other),
        "mae": metrics.mae(truth, other, dim="time"),
        "bias": metrics.bias(truth, other, dim=["lat", "lon"]),
        "spread": metrics.spread(ens, dim=["lat", "lon"]),
        "ssr": metrics.spread_skill_ratio(ens, truth),
        "crps": metrics.crps_ensemble(ens, truth, dim="time"),
        "crps_pointwise": metrics.crps_ensemble(ens, truth, dim=[]),
        "rank": metrics.rank_histogram(ens, truth, dim=["time", "lon"]),
    }


def test_chunked_equals_eager(pair):
    a, b = pair
    ens = ensemble(a)
    eager = _all_metrics(ens, a, b)
    chunks = {"time": 2, "lat": 3}
    lazy = _all_metrics(ens.chunk({**chunks, "member": -1}), a.chunk(chunks), b.chunk(chunks))
    for key in eager:
        assert isinstance(lazy[key].data, dask.array.Array), key
        xr.testing.assert_allclose(lazy[key].compute(), eager[key])


def test_lazy_in_lazy_out(pair, raise_if_dask_computes):
    a, b = pair
    chunks = {"time": 2, "lat": 3}
    ens = ensemble(a).chunk({**chunks, "member": -1})
    a, b = a.chunk(chunks), b.chunk(chunks)
    w = cos_lat(a).chunk()
    with raise_if_dask_computes():
        out = _all_metrics(ens, a, b)
        out["weighted"] = metrics.rmse(a, b, weights=w)
        out["dataset"] = metrics.crps_ensemble(
            xr.Dataset({"u": ens}), xr.Dataset({"u": a}), dim=["lat"]
        )["u"]
    for key, value in out.items():
        assert isinstance(value.data, dask.array.Array), key


def test_inputs_are_not_changed(pair):
    a, b = pair
    a.attrs["units"] = "K"
    before = a.copy(deep=True)
    out = metrics.rmse(a, b)
    xr.testing.assert_identical(a, before)
    assert out.attrs == {}


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


def test_errors_name_the_fix(pair):
    a, b = pair
    ens = ensemble(a)
    with pytest.raises(ConfigError, match="not found"):
        metrics.rmse(a, b, dim="level")
    with pytest.raises(ShapeError, match=r"xr\.align"):
        metrics.rmse(a, b.isel(lat=slice(0, 3)))
    with pytest.raises(ShapeError, match="disagree"):
        metrics.rmse(a, b.assign_coords(lon=b.lon + 1))
    with pytest.raises(ConfigError, match="member_dim="):
        metrics.crps_ensemble(ens, a, member_dim="realization")
    with pytest.raises(ConfigError, match="member dimension"):
        metrics.rank_histogram(ens, a, dim=["time", "member"])
    with pytest.raises(ShapeError, match="must not have"):
        metrics.crps_ensemble(ens, ens)
    with pytest.raises(ShapeError, match=r"chunk\(\{'member': -1\}\)"):
        metrics.crps_ensemble(ens.chunk(member=2), a)
    with pytest.raises(ConfigError, match="weights must be"):
        metrics.rmse(a, b, weights=np.ones(5))
    with pytest.raises(ShapeError, match="weights has dims"):
        metrics.rmse(a, b, weights=xr.DataArray(np.ones(3), dims="level"))
    with pytest.raises(ConfigError, match="DataArray or Dataset"):
        metrics.rmse(a.values, b)
    with pytest.raises(ConfigError, match="seed"):
        metrics.rank_histogram(ens, a, seed=-1)
    with pytest.raises(ValueError):  # errors are also ValueErrors
        metrics.rmse(a, b, dim="level")
    with pytest.raises(XlatdaError):
        metrics.spread(ens.isel(member=[0]), member_dim="m")


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


@st.composite
def two_fields(draw):
    shape = draw(st.tuples(st.integers(1, 4), st.integers(1, 5)))
    a = draw(arrays(np.float64, shape, elements=finite))
    b = draw(arrays(np.float64, shape, elements=finite))
    lat = np.linspace(-80, 80, shape[0])
    coords = {"lat": ("lat", lat, LAT_ATTRS)}
    da = xr.DataArray(a, dims=("lat", "lon"), coords=coords)
    return da, da.copy(data=b)


@settings(max_examples=15, deadline=None)
@given(two_fields())
def test_properties_of_deterministic_scores(fields):
    a, b = fields
    r, m, e = metrics.rmse(a, b), metrics.mae(a, b), metrics.bias(a, b)
    tol = 1e-9 * (1 + float(r))
    assert float(metrics.rmse(a, a)) == 0.0
    assert float(r) >= abs(float(e)) - tol
    assert float(r) >= float(m) - tol
    assert float(m) >= abs(float(e)) - tol
    assert float(metrics.rmse(b, a)) == pytest.approx(float(r), rel=1e-12, abs=1e-12)
    assert float(metrics.bias(b, a)) == pytest.approx(-float(e), rel=1e-9, abs=1e-9)


@settings(max_examples=20, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 6)), elements=finite),
    st.integers(0, 2**32 - 1),
)
def test_properties_of_ensemble_scores(values, seed):
    ens = xr.DataArray(values, dims=("case", "member"))
    truth = xr.DataArray(np.random.default_rng(seed).normal(size=values.shape[0]), dims="case")
    crps = metrics.crps_ensemble(ens, truth, dim=[])
    expected = properscoring.crps_ensemble(truth.values, values)
    np.testing.assert_allclose(crps.values, expected, rtol=1e-9, atol=1e-9)
    assert (crps >= -1e-9).all()
    # CRPS of a single-valued ensemble is the absolute error
    same = xr.DataArray(np.repeat(values[:, :1], values.shape[1], axis=1), dims=ens.dims)
    np.testing.assert_allclose(
        metrics.crps_ensemble(same, truth, dim=[]),
        np.abs(values[:, 0] - truth.values),
        rtol=1e-9,
        atol=1e-9,
    )
    hist = metrics.rank_histogram(ens, truth, seed=seed)
    assert int(hist.sum()) == values.shape[0]
    assert hist.sizes["rank"] == values.shape[1] + 1
