"""Footprint (block-mean) observations: ``xlatda.obs.coarsen`` and its operator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import xlatda
from xlatda.errors import ObservationError
from xlatda.operators import ObservationOperator


def _grid(ntime=2, nlat=24, nlon=48, seed=0, gaps=True):
    rng = np.random.default_rng(seed)
    lat = np.linspace(-86.25, 86.25, nlat)
    lon = np.arange(nlon) * (360.0 / nlon)
    h = rng.standard_normal((ntime, nlat, nlon))
    v = rng.standard_normal((ntime, nlat, nlon))
    if gaps:
        h[0, 3, 5] = np.nan          # one cell of one block at one time
        h[-1, 8:12, 20:28] = np.nan  # whole blocks at another
        h[-1, 1, 1:3] = np.nan       # part of a block
    times = np.array(["2000-01-01T00", "2000-01-01T06"], dtype="datetime64[ns]")[:ntime]
    return xr.Dataset(
        {"h": (("time", "lat", "lon"), h, {"units": "m"}),
         "v": (("time", "lat", "lon"), v, {"units": "s-1"})},
        coords={"time": times,
                "lat": ("lat", lat, {"standard_name": "latitude", "units": "degrees_north"}),
                "lon": ("lon", lon, {"standard_name": "longitude", "units": "degrees_east"})})


def _reference(ds, r, obs, name):
    """xarray's block mean (NaN-skipping) at each observation's time and centre."""
    ref = ds[name].coarsen(lat=r, lon=r, boundary="trim").mean()
    return ref.sel(time=obs.time, lat=obs.lat, lon=obs.lon, method="nearest").values


@pytest.mark.parametrize("r", [2, 4, 8])
@pytest.mark.parametrize("chunked", [False, True])
def test_operator_is_the_block_mean(r, chunked):
    ds = _grid()
    obs = xlatda.obs.coarsen(ds, r, {"h": 0.1, "v": 0.2})
    assert obs.sizes["footprint"] == r * r
    state = ds.chunk({"time": 1}) if chunked else ds
    seen = xlatda.obs.observe(state, obs)
    if chunked:
        assert seen.h.chunks is not None  # lazy through dask
        seen = seen.compute()
    for name in ("h", "v"):
        m = np.isfinite(obs[name].values)
        ref = _reference(ds, r, obs, name)
        np.testing.assert_allclose(obs[name].values[m], ref[m], rtol=0, atol=1e-14)
        # H of the (gappy) field is the NaN-aware block mean, exactly up to rounding
        np.testing.assert_allclose(seen[name].values[m], ref[m], rtol=0, atol=1e-14)
        assert np.isnan(seen[name].values[~m]).all()


def test_block_mean_in_any_dimension_order():
    ds = _grid(ntime=1, gaps=False).isel(time=0)
    obs = xlatda.obs.coarsen(ds, 4, 0.1)
    a = xlatda.obs.observe(ds, obs)
    b = xlatda.obs.observe(ds.transpose("lon", "lat"), obs)
    np.testing.assert_allclose(a.h.values, obs.h.values, rtol=0, atol=1e-14)
    np.testing.assert_allclose(b.h.values, a.h.values, rtol=0, atol=1e-14)


def test_gaps_give_nan_aware_weights_per_variable():
    ds = _grid()
    obs = xlatda.obs.coarsen(ds, 4, 0.1)
    w = obs.footprint_weight.values
    assert set(np.unique(w[np.isfinite(w)])) <= {0.0, 1.0}
    # h and v have different gaps: separate observations, each with its own weights
    h_rows = np.isfinite(obs.h.values)
    v_rows = np.isfinite(obs.v.values)
    assert not (h_rows & v_rows).any()
    assert v_rows.sum() == 2 * (24 // 4) * (48 // 4)
    assert (w[v_rows] == 1).all()
    first = h_rows & (obs.time.values == ds.time.values[0])
    partial = w[first].sum(1) < 16
    assert partial.sum() == 1  # the block with one NaN cell
    assert w[first][partial].sum() == 15


def test_noise_is_seeded_and_points_are_unchanged_by_concat():
    ds = _grid(gaps=False)
    a = xlatda.obs.coarsen(ds, 4, 0.1, seed=3)
    b = xlatda.obs.coarsen(ds, 4, 0.1, seed=3)
    xr.testing.assert_identical(a, b)
    pts = xlatda.obs.sample_points(ds, n=15, error_std=0.1, seed=1)
    alone = xlatda.obs.observe(ds, pts)
    multi = xlatda.obs.concat([a, pts, xlatda.obs.coarsen(ds, 8, 0.1)],
                              kinds=["c4", "station", "c8"])
    assert multi.sizes["footprint"] == 64
    both = xlatda.obs.observe(ds, multi)
    n4 = a.sizes["obs"]
    # the point rows (NaN footprint) are bit-identical to the point-only operator
    np.testing.assert_array_equal(both.h.values[n4:n4 + 30], alone.h.values)
    np.testing.assert_allclose(both.h.values[:n4], xlatda.obs.observe(ds, a).h.values,
                               rtol=0, atol=1e-14)


def test_point_tables_build_the_point_operator():
    ds = _grid(ntime=1, gaps=False).isel(time=0)
    L = xlatda.layout(ds)
    pts = xlatda.obs.sample_points(ds, n=20, error_std=0.1, seed=0)
    table = xlatda.obs.to_tensors(pts, L)
    assert table.footprint_weight is None and xlatda.obs.footprint_points(table) is None
    op = xlatda.obs.build_operator(L, table)
    ref = ObservationOperator(xlatda.obs.spatial_matrix(L, table.lat, table.lon),
                              table.channel, L.n_channels, spatial_shape=L.spatial_shape)
    assert torch.equal(op.matrix.to_dense(), ref.matrix.to_dense())


def test_footprint_points_expand_and_normalise():
    ds = _grid(ntime=1, gaps=False).isel(time=0)
    obs = xlatda.obs.coarsen(ds, 2, 0.1)
    obs = obs.assign_coords(footprint_weight=obs.footprint_weight * 3.0)  # unnormalised
    table = xlatda.obs.to_tensors(obs, xlatda.layout(ds))
    fp = xlatda.obs.footprint_points(table)
    assert fp["weight"].shape == (len(table) * 4,)
    np.testing.assert_allclose(np.bincount(fp["entry"], fp["weight"]), 1.0)
    seen = xlatda.obs.observe(ds, obs)
    np.testing.assert_allclose(seen.h.values, obs.h.values, rtol=0, atol=1e-14)


def _bad(obs, **coords):
    return obs.assign_coords(**coords)


def test_contract_refuses_broken_footprints():
    ds = _grid(ntime=1, gaps=False).isel(time=0)
    L = xlatda.layout(ds)
    obs = xlatda.obs.coarsen(ds, 4, 0.1)
    xlatda.obs.validate(obs, L)
    with pytest.raises(ObservationError, match="no 'footprint_weight'"):
        xlatda.obs.validate(obs.drop_vars("footprint_weight"), L)
    with pytest.raises(ObservationError, match="need a coordinate 'footprint_lon'"):
        xlatda.obs.validate(obs.drop_vars("footprint_lon"), L)
    w = obs.footprint_weight.values.copy()
    w[2, 3] = -1.0
    with pytest.raises(ObservationError, match="non-negative"):
        xlatda.obs.validate(_bad(obs, footprint_weight=(("obs", "footprint"), w)), L)
    w[2, 3] = np.inf
    with pytest.raises(ObservationError, match="non-negative"):
        xlatda.obs.validate(_bad(obs, footprint_weight=(("obs", "footprint"), w)), L)
    lat = obs.footprint_lat.values.copy()
    lat[1, 0] = np.nan
    with pytest.raises(ObservationError, match="NaN or inf where 'footprint_weight'"):
        xlatda.obs.validate(_bad(obs, footprint_lat=(("obs", "footprint"), lat)), L)
    lat[1, 0] = 95.0
    with pytest.raises(ObservationError, match=r"\[-90, 90\]"):
        xlatda.obs.validate(_bad(obs, footprint_lat=(("obs", "footprint"), lat)), L)
    flipped = obs.assign_coords(footprint_lon=obs.footprint_lon.transpose())
    with pytest.raises(ObservationError, match="transpose"):
        xlatda.obs.validate(flipped, L)
    extra = obs.assign_coords(footprint_depth=(("obs", "footprint"), lat))
    with pytest.raises(ObservationError, match="unknown footprint coordinates"):
        xlatda.obs.validate(extra, L)
    wide = obs.assign(h2=(("obs", "footprint"), lat))
    with pytest.raises(ObservationError, match="along 'obs' only"):
        xlatda.obs.validate(wide, L)
    # a footprint row of NaN weights is a point observation at the centre
    w = obs.footprint_weight.values.copy()
    w[0] = np.nan
    point = _bad(obs, footprint_weight=(("obs", "footprint"), w))
    got = xlatda.obs.observe(ds, point).h.values[0]
    at = xlatda.obs.observe(ds, obs.drop_dims("footprint")).h.values[0]
    assert got == at


def test_coarsen_errors():
    ds = _grid(ntime=1, nlat=8, nlon=16, gaps=False).isel(time=0)
    with pytest.raises(ValueError, match="larger than the grid"):
        xlatda.obs.coarsen(ds, 9, 0.1)
    with pytest.raises(ValueError, match="positive integer"):
        xlatda.obs.coarsen(ds, 0, 0.1)


def _fitted(latent=6, seed=1):
    rng = np.random.default_rng(seed)
    base = _grid(ntime=1, gaps=False)
    k = np.arange(base.sizes["lon"]) * 2 * np.pi / base.sizes["lon"]
    la = np.deg2rad(base.lat.values)[:, None]
    times = np.arange(30).astype("timedelta64[h]") + np.datetime64("2000-01-01T00", "ns")
    fields = {n: (("time", "lat", "lon"), np.stack([
        np.cos(la) * (rng.standard_normal() * np.cos(k + rng.uniform(0, 6))
                      + rng.standard_normal() * np.sin(2 * k)[None])
        + 0.1 * rng.standard_normal(la.shape[:1] + k.shape) for _ in times]), base[n].attrs)
        for n in ("h", "v")}
    ds = xr.Dataset(fields, coords={"time": times, "lat": base.lat, "lon": base.lon})
    return ds, xlatda.fit(ds, encoder="pca", latent_dim=latent, progress=False)


@pytest.mark.parametrize("affine", [True, False])
def test_latent_space_observes_block_means_of_the_decoded_field(affine):
    from xlatda.obs import to_tensors
    from xlatda.spaces import LatentSpace

    ds, model = _fitted()
    obs = xlatda.obs.coarsen(ds.isel(time=[3]), 4, {"h": 0.1, "v": 0.2})
    table = to_tensors(obs, model.layout)
    space = LatentSpace(model, 0)
    if not affine:  # the general path: decode at every footprint point, then average
        space._affine = lambda table: None
    z = torch.randn(3, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    seen = space.observe(z, table).numpy()
    zda = xr.DataArray(z.numpy()[None], dims=["time", "member", "latent"],
                       coords={"time": ds.time.values[[3]]})
    coarse = xlatda.decode(zda, model).coarsen(lat=4, lon=4, boundary="trim").mean()
    want = np.stack([
        [float(coarse[v].isel(time=0, member=m).sel(lat=la, lon=lo, method="nearest"))
         for v, la, lo in zip(table.variable, table.lat, table.lon)] for m in range(3)])
    np.testing.assert_allclose(seen, want, rtol=0, atol=1e-6)  # a float32 model
    # reading the block centres instead gives other values
    point = space.model.decode_points(z.to(model.dtype), space.points(table),
                                      table.channel).double().numpy()
    assert np.abs(point - want).max() > 1e-3


def test_encode_obs_refuses_block_means():
    ds, model = _fitted()
    obs = xlatda.obs.coarsen(ds.isel(time=[3]), 4, {"h": 0.1, "v": 0.2})
    with pytest.raises(ObservationError, match="block means"):
        xlatda.encode_obs(obs, model)
