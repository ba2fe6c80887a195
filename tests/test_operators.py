"""Tests of xlatda.operators: interpolation matrices and the observation operator."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xlatda.errors import ConfigError, LayoutError, ObservationError, ShapeError
from xlatda.operators import (
    ObservationOperator,
    cos_lat_weights,
    grid_interpolation_matrix,
    index_interpolation_matrix,
    index_interpolation_matrix_2d,
    nearest_point_matrix,
)

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --------------------------------------------------------------------------- #
# helpers
# --------------------------------------------------------------------------- #
def dense(h: torch.Tensor) -> np.ndarray:
    return h.to_dense().numpy()


def apply(h: torch.Tensor, values: np.ndarray) -> np.ndarray:
    """Sparse matrix times a flattened field, in NumPy."""
    return (h @ torch.from_numpy(np.ascontiguousarray(values.reshape(-1)))).numpy()


def assert_valid_weights(h: torch.Tensor, max_nnz: int = 4) -> None:
    """CSR invariants hold, rows are non-negative and sum to 1."""
    assert h.layout == torch.sparse_csr
    # rebuild with invariant checks on: sorted, distinct, in-range columns
    torch.sparse_csr_tensor(
        h.crow_indices(), h.col_indices(), h.values(), h.shape, check_invariants=True
    )
    values = h.values().numpy()
    assert (values >= 0).all()
    assert np.allclose(apply(h, np.ones(h.shape[1])), 1.0, atol=1e-12)
    assert int(h.crow_indices().diff().max()) <= max_nnz


def unit_xyz(lat, lon):
    phi, lam = np.deg2rad(lat), np.deg2rad(lon)
    return np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)


def smooth_sphere_field(lat, lon):
    """A smooth function on the sphere (a polynomial in x, y, z)."""
    x, y, z = unit_xyz(lat, lon)
    return 0.3 + x + 2.0 * y * z - z**2 + 0.5 * x * y


def grid_values(f, glat, glon):
    la, lo = np.meshgrid(glat, glon, indexing="ij")
    return f(la, lo)


def interp(glat, glon, field, lat, lon, **kw):
    h = grid_interpolation_matrix(glat, glon, lat, lon, **kw)
    return h, apply(h, field)


# --------------------------------------------------------------------------- #
# grid interpolation: exactness and references
# --------------------------------------------------------------------------- #
@st.composite
def regular_grid_and_points(draw):
    nlat = draw(st.integers(3, 30))
    nlon = draw(st.integers(3, 60))
    lat0 = draw(st.floats(-80.0, 0.0))
    dlat = draw(st.floats(0.5, 5.0))
    lat1 = min(lat0 + dlat * (nlat - 1), 89.0)
    glat = np.linspace(lat0, lat1, nlat)
    if draw(st.booleans()):
        glat = glat[::-1].copy()
    lon0 = draw(st.sampled_from([-180.0, 0.0, -30.0, 100.0]))
    dlon = draw(st.floats(0.25, 360.0 / nlon))
    glon = lon0 + dlon * np.arange(nlon)
    n = draw(st.integers(1, 50))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    lat = rng.uniform(glat.min(), glat.max(), n)
    lon = rng.uniform(glon[0], glon[-1], n)
    shift = draw(st.sampled_from([0.0, 360.0, -360.0, 720.0]))
    return glat, glon, lat, lon, lon + shift, rng


@SETTINGS
@given(regular_grid_and_points())
def test_reproduces_bilinear_fields_exactly(case):
    glat, glon, lat, lon_grid_convention, lon_given, rng = case
    a, b, c, d = rng.normal(size=4)

    def f(la, lo):
        return a + b * la / 90 + c * lo / 360 + d * (la / 90) * (lo / 360)

    h, got = interp(glat, glon, grid_values(f, glat, glon), lat, lon_given)
    np.testing.assert_allclose(got, f(lat, lon_grid_convention), rtol=0, atol=1e-12)
    assert_valid_weights(h)


@pytest.mark.parametrize("lon0", [0.0, -180.0])
def test_seam_cell_is_interpolated_across(lon0):
    glat = np.linspace(-80.0, 80.0, 17)
    glon = lon0 + 2.5 * np.arange(144)  # global, last column 357.5 / 177.5
    centre = lon0 + 180.0

    # |lon - centre| is linear inside the seam cell and continuous across it
    def f(la, lo):
        return 0.5 + la / 90 + np.abs(lo - centre) / 180

    field = grid_values(f, glat, glon)
    rng = np.random.default_rng(3)
    lat = rng.uniform(-80, 80, 50)
    pos = rng.uniform(glon[-1], lon0 + 360.0, 50)  # inside the seam cell
    expected = f(lat, pos)
    for shift in (0.0, -360.0, 360.0, 720.0):
        h, got = interp(glat, glon, field, lat, pos + shift)
        np.testing.assert_allclose(got, expected, atol=1e-12)
        assert_valid_weights(h)
    # the seam cell couples the last and the first column
    h = grid_interpolation_matrix(glat, glon, [0.0], [lon0 - 1.0])
    assert set(h.col_indices().numpy() % 144) == {0, 143}


@pytest.mark.parametrize("descending", [False, True])
def test_matches_xarray_interp(descending):
    xr = pytest.importorskip("xarray")
    rng = np.random.default_rng(0)
    glat = np.linspace(-60.0, 70.0, 27)
    glon = np.linspace(10.0, 100.0, 31)
    if descending:
        glat = glat[::-1].copy()
    values = rng.normal(size=(glat.size, glon.size))
    da = xr.DataArray(values, dims=("lat", "lon"), coords={"lat": glat, "lon": glon})
    lat = rng.uniform(-60.0, 70.0, 500)
    lon = rng.uniform(10.0, 100.0, 500)
    ref = da.interp(lat=xr.DataArray(lat, dims="obs"), lon=xr.DataArray(lon, dims="obs"))
    h = grid_interpolation_matrix(glat, glon, lat, lon)
    np.testing.assert_allclose(dense(h) @ values.reshape(-1), ref.values, rtol=0, atol=1e-12)


def test_descending_equals_ascending():
    glat = np.linspace(-45.0, 45.0, 10)
    glon = np.arange(0.0, 360.0, 7.5)
    field = np.random.default_rng(1).normal(size=(10, glon.size))
    lat = np.random.default_rng(2).uniform(-45, 45, 100)
    lon = np.random.default_rng(3).uniform(-180, 180, 100)
    _, up = interp(glat, glon, field, lat, lon)
    _, down = interp(glat[::-1], glon, field[::-1], lat, lon)
    np.testing.assert_allclose(up, down, atol=1e-13)


def test_lon_conventions_agree():
    glat = np.linspace(-87.5, 87.5, 36)
    lon360 = np.arange(0.0, 360.0, 5.0)
    lon180 = np.arange(-180.0, 180.0, 5.0)
    field360 = grid_values(smooth_sphere_field, glat, lon360)
    field180 = grid_values(smooth_sphere_field, glat, lon180)
    rng = np.random.default_rng(4)
    lat = rng.uniform(-90, 90, 300)
    lon = rng.uniform(-180, 180, 300)
    for pts in (lon, np.mod(lon, 360.0)):
        _, a = interp(glat, lon360, field360, lat, pts)
        _, b = interp(glat, lon180, field180, lat, pts)
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_irregular_latitudes_use_the_right_cell():
    glat = np.array([-80.0, -30.0, -29.0, 0.0, 1.0, 40.0, 85.0])  # Gaussian-like irregular
    glon = np.linspace(0.0, 90.0, 10)
    rng = np.random.default_rng(5)
    lat, lon = rng.uniform(-80, 85, 200), rng.uniform(0, 90, 200)
    b = rng.normal(size=3)

    def f(la, lo):
        return b[0] + b[1] * la + b[2] * lo

    h, got = interp(glat, glon, grid_values(f, glat, glon), lat, lon)
    np.testing.assert_allclose(got, f(lat, lon), atol=1e-11)
    assert_valid_weights(h)


# --------------------------------------------------------------------------- #
# poles
# --------------------------------------------------------------------------- #
CELL_CENTRED_LAT = np.arange(-89.5, 90.0, 1.0)
GLOBAL_LON = np.arange(0.0, 360.0, 1.0)


def test_polar_caps_are_accurate_for_smooth_fields():
    field = grid_values(smooth_sphere_field, CELL_CENTRED_LAT, GLOBAL_LON)
    rng = np.random.default_rng(6)
    n = 2000
    lat = np.concatenate([rng.uniform(88.5, 90.0, n), rng.uniform(-90.0, -88.5, n)])
    lon = rng.uniform(-180, 540, 2 * n)
    h, got = interp(CELL_CENTRED_LAT, GLOBAL_LON, field, lat, lon)
    assert_valid_weights(h)
    # second order in the 1° spacing: (pi / 180)**2 ~ 3e-4
    assert np.abs(got - smooth_sphere_field(lat, lon)).max() < 1e-3
    # poleward of the last row, weights reach across to lon + 180
    h = grid_interpolation_matrix(CELL_CENTRED_LAT, GLOBAL_LON, [89.8], [10.25])
    assert sorted(h.col_indices().numpy() % 360) == [10, 11, 190, 191]


def test_values_are_continuous_across_the_pole():
    field = grid_values(smooth_sphere_field, CELL_CENTRED_LAT, GLOBAL_LON)
    for lam, sign in [(37.3, 1.0), (200.0, -1.0), (-10.6, 1.0)]:
        # walk along the meridian through the pole: s = degrees past the pole
        s = np.linspace(-1.5, 1.5, 3001)
        lat = sign * (90.0 - np.abs(s))
        lon = np.where(s < 0, lam, lam + 180.0)
        _, got = interp(CELL_CENTRED_LAT, GLOBAL_LON, field, lat, lon)
        steps = np.abs(np.diff(got))
        assert steps.max() < 50 * np.deg2rad(s[1] - s[0])  # no jump at the pole
        np.testing.assert_allclose(got, smooth_sphere_field(lat, lon), atol=1e-3)


def test_points_exactly_at_the_poles():
    field = grid_values(smooth_sphere_field, CELL_CENTRED_LAT, GLOBAL_LON)
    lat = np.array([90.0, 90.0, -90.0, -90.0])
    lon = np.array([0.0, 123.4, -77.0, 359.99])
    h, got = interp(CELL_CENTRED_LAT, GLOBAL_LON, field, lat, lon)
    assert_valid_weights(h)
    np.testing.assert_allclose(got, smooth_sphere_field(lat, lon), atol=1e-3)
    # the Cartesian x coordinate is odd under lon -> lon + 180: exact 0 at the pole
    x = grid_values(lambda la, lo: unit_xyz(la, lo)[0], CELL_CENTRED_LAT, GLOBAL_LON)
    np.testing.assert_allclose(apply(h, x), 0.0, atol=1e-14)


def test_grid_with_pole_rows_uses_plain_bilinear():
    glat = np.linspace(90.0, -90.0, 91)  # contains both poles, descending
    glon = np.arange(0.0, 360.0, 2.0)
    field = grid_values(smooth_sphere_field, glat, glon)
    rng = np.random.default_rng(7)
    lat = np.concatenate([[90.0, -90.0], rng.uniform(87, 90, 200), rng.uniform(-90, -87, 200)])
    lon = rng.uniform(0, 360, lat.size)
    h, got = interp(glat, glon, field, lat, lon)
    assert_valid_weights(h)
    assert np.abs(got - smooth_sphere_field(lat, lon)).max() < 5e-3
    # the pole rows are the only rows used by points at the poles
    used = np.flatnonzero(dense(h)[:2].sum(axis=0)) // glon.size
    assert set(used) == {0, 90}


def test_polar_caps_are_off_for_grids_far_from_the_pole():
    glat = np.linspace(-60.0, 60.0, 13)
    with pytest.raises(ObservationError, match="1 of 2"):
        grid_interpolation_matrix(glat, GLOBAL_LON, [70.0, 0.0], [0.0, 0.0])
    # ... and can be switched off on a near-global grid
    with pytest.raises(ObservationError, match=r"lat -89\.5 to 89\.5"):
        grid_interpolation_matrix(CELL_CENTRED_LAT, GLOBAL_LON, [89.9], [0.0], polar_caps=False)
    with pytest.raises(LayoutError, match="global in longitude"):
        grid_interpolation_matrix(
            CELL_CENTRED_LAT, np.arange(0.0, 90.0), [0.0], [1.0], polar_caps=True
        )


def test_polar_caps_forced_on_a_coarse_global_grid():
    glat = np.linspace(-60.0, 60.0, 13)
    h = grid_interpolation_matrix(glat, GLOBAL_LON, [90.0, 75.0], [3.0, 3.0], polar_caps=True)
    assert_valid_weights(h)


# --------------------------------------------------------------------------- #
# regional grids and input checks
# --------------------------------------------------------------------------- #
REG_LAT = np.linspace(30.0, 60.0, 31)
REG_LON = np.linspace(-10.0, 40.0, 51)


def test_regional_grid_refuses_outside_points():
    lat = np.array([45.0, 29.0, 61.0, 45.0, 45.0])
    lon = np.array([0.0, 0.0, 0.0, -11.0, 40.5])  # 40.5 is within half a cell: still outside
    with pytest.raises(ObservationError) as info:
        grid_interpolation_matrix(REG_LAT, REG_LON, lat, lon)
    msg = str(info.value)
    assert "4 of 5" in msg
    assert "lat 30.0 to 60.0" in msg and "lon -10.0 to 40.0" in msg
    assert "Drop" in msg
    assert isinstance(info.value, ValueError)


def test_regional_boundary_is_inside():
    lat = np.array([30.0, 60.0, 30.0, 60.0, 45.0])
    lon = np.array([-10.0, 40.0, 350.0, 400.0, -370.0])  # 350 == -10, 400 == 40
    h = grid_interpolation_matrix(REG_LAT, REG_LON, lat, lon)
    assert_valid_weights(h)
    hits = dense(h).argmax(axis=1)
    assert hits.tolist()[:4] == [0, 31 * 51 - 1, 0, 31 * 51 - 1]
    assert np.isclose(dense(h)[[0, 1, 2, 3], hits[:4]], 1.0).all()


def test_regional_grid_in_0_360_accepts_negative_longitudes():
    glon = np.linspace(200.0, 300.0, 11)
    glat = np.linspace(0.0, 50.0, 6)
    field = grid_values(lambda la, lo: la + lo, glat, glon)
    _, got = interp(glat, glon, field, [25.0], [-110.0])
    np.testing.assert_allclose(got, [25.0 + 250.0], atol=1e-12)


def test_periodic_lon_can_be_forced_off():
    with pytest.raises(ObservationError):
        grid_interpolation_matrix([0.0, 10.0], GLOBAL_LON, [5.0], [359.5], periodic_lon=False)
    h = grid_interpolation_matrix([0.0, 10.0], GLOBAL_LON, [5.0], [359.5])
    assert_valid_weights(h)


def test_grid_spanning_full_circle_with_repeated_column():
    glon = np.linspace(0.0, 360.0, 37)  # 0 and 360 both present
    glat = np.linspace(-80.0, 80.0, 9)
    h = grid_interpolation_matrix(glat, glon, [10.0, 10.0], [-5.0, 359.0])
    assert_valid_weights(h)


@pytest.mark.parametrize(
    ("grid_lat", "grid_lon", "match"),
    [
        ([0.0, 1.0, 0.5], [0.0, 1.0], "monotonic"),
        ([0.0, 1.0], [1.0, 0.0], "ascending"),
        ([0.0, 91.0], [0.0, 1.0], r"\[-90, 90\]"),
        ([0.0], [0.0, 1.0], "at least 2"),
        ([0.0, 1.0], np.arange(0.0, 380.0, 10.0), "more than 360"),
        ([0.0, np.nan], [0.0, 1.0], "non-finite"),
    ],
)
def test_bad_grids_are_refused(grid_lat, grid_lon, match):
    with pytest.raises(LayoutError, match=match):
        grid_interpolation_matrix(grid_lat, grid_lon, [0.5], [0.5])


def test_bad_points_are_refused():
    with pytest.raises(ObservationError, match="non-finite"):
        grid_interpolation_matrix(REG_LAT, REG_LON, [np.nan], [0.0])
    with pytest.raises(ObservationError, match=r"outside \[-90, 90\]"):
        grid_interpolation_matrix(CELL_CENTRED_LAT, GLOBAL_LON, [90.5], [0.0])
    with pytest.raises(ShapeError, match="same length"):
        grid_interpolation_matrix(REG_LAT, REG_LON, [45.0, 46.0], [0.0])
    with pytest.raises(ConfigError, match="dtype"):
        grid_interpolation_matrix(REG_LAT, REG_LON, [45.0], [0.0], dtype=torch.int64)


def test_empty_point_set_and_tensor_inputs():
    h = grid_interpolation_matrix(REG_LAT, REG_LON, [], [])
    assert tuple(h.shape) == (0, 31 * 51)
    h32 = grid_interpolation_matrix(
        torch.tensor(REG_LAT),
        torch.tensor(REG_LON),
        torch.tensor([45.0]),
        torch.tensor([1.0]),
        dtype=torch.float32,
    )
    assert h32.dtype == torch.float32


@SETTINGS
@given(
    nlat=st.integers(2, 40),
    nlon=st.integers(2, 80),
    descending=st.booleans(),
    lon0=st.sampled_from([-180.0, 0.0, 17.5]),
    seed=st.integers(0, 2**31),
)
def test_global_weights_are_valid_everywhere(nlat, nlon, descending, lon0, seed):
    dlat = 180.0 / nlat
    glat = -90.0 + dlat * (np.arange(nlat) + 0.5)  # cell centred: caps at both poles
    if descending:
        glat = glat[::-1].copy()
    glon = lon0 + 360.0 / nlon * np.arange(nlon)
    rng = np.random.default_rng(seed)
    lat = np.concatenate([rng.uniform(-90, 90, 100), [90.0, -90.0, glat[0], glat[-1]]])
    lon = np.concatenate([rng.uniform(-720, 720, 100), [0.0, 180.0, glon[-1], lon0 + 360.0]])
    h = grid_interpolation_matrix(glat, glon, lat, lon)
    assert_valid_weights(h)
    # a constant field is reproduced everywhere
    np.testing.assert_allclose(apply(h, np.full(nlat * nlon, 2.5)), 2.5, atol=1e-12)


# --------------------------------------------------------------------------- #
# the operator
# --------------------------------------------------------------------------- #
def make_operator(n_obs=50, n_channels=3, spatial=(12, 24), seed=0, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    glat = -90.0 + 180.0 / spatial[0] * (np.arange(spatial[0]) + 0.5)  # polar caps
    glon = np.arange(spatial[1]) * 360.0 / spatial[1]
    lat, lon = rng.uniform(-90, 90, n_obs), rng.uniform(-180, 180, n_obs)
    h = grid_interpolation_matrix(glat, glon, lat, lon, dtype=dtype)
    channel = torch.from_numpy(rng.integers(0, n_channels, n_obs))
    return ObservationOperator(h, channel, n_channels, spatial_shape=spatial), h, channel


def test_operator_full_matrix_places_channels():
    op, h, channel = make_operator()
    full = op.dense()
    assert op.shape == (50, 3 * 12 * 24) and tuple(full.shape) == op.shape
    assert op.state_shape == (3, 12, 24)
    expected = torch.zeros(50, 3, 12 * 24, dtype=torch.float64)
    expected[torch.arange(50), channel] = h.to_dense()
    torch.testing.assert_close(full, expected.reshape(50, -1), rtol=0, atol=0)
    assert op.matrix.layout == torch.sparse_csr


@pytest.mark.parametrize("batch", [(), (1,), (5,), (2, 3)])
def test_operator_apply_matches_dense(batch):
    op, _, _ = make_operator()
    x = torch.randn(*batch, 3, 12, 24, dtype=torch.float64)
    y = op(x)
    assert tuple(y.shape) == (*batch, 50)
    ref = (x.reshape(-1, op.shape[1]) @ op.dense().T).reshape(*batch, 50)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)


def test_batched_equals_looped_on_both_code_paths():
    # 320 x 256 points x 13 members crosses the member-by-member threshold
    for spatial, members in [((12, 24), 7), ((320, 256), 13)]:
        op, _, _ = make_operator(n_obs=400, n_channels=1, spatial=spatial, seed=1)
        x = torch.randn(members, 1, *spatial, dtype=torch.float64)
        looped = torch.stack([op(x[m]) for m in range(members)])
        torch.testing.assert_close(op(x), looped, rtol=1e-13, atol=1e-13)


def test_gradients_match_dense_matmul():
    op, _, _ = make_operator()
    x = torch.randn(4, 3, 12, 24, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 50, dtype=torch.float64)
    (op(x) * w).sum().backward()
    expected = (w @ op.dense()).reshape(x.shape)
    torch.testing.assert_close(x.grad, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_and_gradgradcheck():
    op, _, _ = make_operator(n_obs=6, n_channels=2, spatial=(3, 4))
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op, (x,))
    assert torch.autograd.gradgradcheck(op, (x,))
    y = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(op.transpose_apply, (y,))


def test_transpose_apply_is_the_adjoint():
    op, _, _ = make_operator()
    x = torch.randn(2, 3, 12, 24, dtype=torch.float64)
    y = torch.randn(2, 50, dtype=torch.float64)
    hty = op.transpose_apply(y)
    assert tuple(hty.shape) == (2, 3, 12, 24)
    torch.testing.assert_close(hty.reshape(2, -1), y @ op.dense(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close((op(x) * y).sum(), (x * hty).sum(), rtol=1e-12, atol=1e-12)


def test_float32_input_and_cache():
    op, _, _ = make_operator()
    x64 = torch.randn(3, 3, 12, 24, dtype=torch.float64)
    y32 = op(x64.float())
    assert y32.dtype == torch.float32
    torch.testing.assert_close(y32.double(), op(x64), rtol=1e-5, atol=1e-5)
    assert len(op._cache) == 2
    op32 = op.to(dtype=torch.float32)
    assert op32.dtype == torch.float32 and op.dtype == torch.float64
    torch.testing.assert_close(op32(x64.float()), y32)


def test_operator_under_inference_mode_then_autograd():
    op, _, _ = make_operator()
    with torch.inference_mode():
        op(torch.randn(3, 12, 24, dtype=torch.float64))
    x = torch.randn(3, 12, 24, dtype=torch.float64, requires_grad=True)
    op(x).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("scale", [1.0, -2.5])
def test_one_weight_rows_gather_equals_the_two_entry_form(scale):
    # observations on grid points (zero second weights, first or second in the
    # row): one gather (times the weights), equal to the pair formula and dense
    h = index_interpolation_matrix(10, [0.0, 3.0, 9.0, 4.0])
    h = torch.sparse_csr_tensor(h.crow_indices(), h.col_indices(), h.values() * scale, h.size())
    op = ObservationOperator(h)
    x = torch.randn(6, 1, 10, dtype=torch.float64)
    compiled = op._compiled(x)
    assert compiled.single is not None and (compiled.single[1] is None) == (scale == 1.0)
    (c0, c1), (w0, w1) = compiled.pairs
    x2 = x.reshape(6, 10)
    pair_form = x2.index_select(1, c0) * w0 + x2.index_select(1, c1) * w1
    assert torch.equal(op(x), pair_form)
    assert torch.equal(op(x), (x2 @ op.dense().T))
    # one row with two non-zero weights: the pair form is used
    mixed = ObservationOperator(index_interpolation_matrix(10, [0.0, 2.5]))
    assert mixed._compiled(x).single is None


def test_operator_pickles_without_cache():
    op, _, _ = make_operator()
    x = torch.randn(3, 12, 24, dtype=torch.float64)
    y = op(x)
    clone = pickle.loads(pickle.dumps(op))
    assert clone._cache == {}
    torch.testing.assert_close(clone(x), y)


def test_operator_accepts_coo_and_dense_matrices():
    h = index_interpolation_matrix(10, [0.5, 3.2, 9.0])
    ops = [
        ObservationOperator(h),
        ObservationOperator(h.to_dense()),
        ObservationOperator(h.to_dense().to_sparse()),
    ]
    x = torch.arange(10.0, dtype=torch.float64).reshape(1, 10)
    for op in ops:
        torch.testing.assert_close(op(x), torch.tensor([0.5, 3.2, 9.0], dtype=torch.float64))
    assert "n_obs=3" in repr(ops[0])


def test_operator_with_no_observations():
    h = index_interpolation_matrix(10, [])
    op = ObservationOperator(h)
    x = torch.randn(4, 1, 10, requires_grad=True)
    y = op(x)
    assert tuple(y.shape) == (4, 0)
    assert tuple(op.transpose_apply(torch.zeros(4, 0)).shape) == (4, 1, 10)


def test_operator_input_errors():
    h = index_interpolation_matrix(10, [0.5, 3.2])
    with pytest.raises(ConfigError, match=r"\[0, 2\)"):
        ObservationOperator(h, torch.tensor([0, 2]), 2)
    with pytest.raises(ShapeError, match="one entry per matrix row"):
        ObservationOperator(h, torch.tensor([0, 1, 1]), 2)
    with pytest.raises(ShapeError, match="integers"):
        ObservationOperator(h, torch.tensor([0.0, 1.0]), 2)
    with pytest.raises(ShapeError, match="spatial_shape"):
        ObservationOperator(h, spatial_shape=(3, 4))
    with pytest.raises(ConfigError, match="n_channels"):
        ObservationOperator(h, n_channels=0)
    op = ObservationOperator(h, torch.tensor([0, 1]), 2, spatial_shape=(2, 5))
    with pytest.raises(ShapeError, match=r"\(\.\.\., 2, 2, 5\)"):
        op(torch.randn(3, 2, 10))
    with pytest.raises(ConfigError, match="float32 or float64"):
        op(torch.ones(2, 2, 5, dtype=torch.int64))
    with pytest.raises(ShapeError, match=r"\(\.\.\., 2\)"):
        op.transpose_apply(torch.ones(3))


# --------------------------------------------------------------------------- #
# generic index dimensions
# --------------------------------------------------------------------------- #
@SETTINGS
@given(n=st.integers(2, 50), seed=st.integers(0, 2**31))
def test_index_linear_matches_numpy(n, seed):
    rng = np.random.default_rng(seed)
    values = rng.normal(size=n)
    x = np.concatenate([rng.uniform(0, n - 1, 30), [0.0, n - 1.0]])
    h = index_interpolation_matrix(n, x)
    assert_valid_weights(h, max_nnz=2)
    np.testing.assert_allclose(dense(h) @ values, np.interp(x, np.arange(n), values), atol=1e-12)
    # periodic: any real position, same as numpy with period n
    xp = rng.uniform(-3 * n, 3 * n, 30)
    hp = index_interpolation_matrix(n, xp, periodic=True)
    assert_valid_weights(hp, max_nnz=2)
    ref = np.interp(xp, np.arange(n), values, period=n)
    np.testing.assert_allclose(dense(hp) @ values, ref, atol=1e-12)


def test_index_nearest():
    h = index_interpolation_matrix(5, [0.0, 0.49, 0.5, 2.7, 4.0], method="nearest")
    assert dense(h).argmax(axis=1).tolist() == [0, 0, 1, 3, 4]
    hp = index_interpolation_matrix(5, [4.6, -0.4, 9.0], periodic=True, method="nearest")
    assert dense(hp).argmax(axis=1).tolist() == [0, 0, 4]
    assert_valid_weights(hp, max_nnz=1)


def test_index_refuses_outside_positions():
    with pytest.raises(ObservationError, match="2 of 3 positions") as info:
        index_interpolation_matrix(40, [-0.1, 39.0, 39.01])
    assert "periodic=True" in str(info.value)
    with pytest.raises(ObservationError):
        index_interpolation_matrix(40, [40.0], method="nearest")
    with pytest.raises(ConfigError, match="method"):
        index_interpolation_matrix(40, [1.0], method="cubic")
    with pytest.raises(ObservationError, match="not finite"):
        index_interpolation_matrix(40, [np.inf], periodic=True)


def test_index_degenerate_lengths():
    h = index_interpolation_matrix(1, [0.0, 0.3, -2.0], periodic=True)
    np.testing.assert_allclose(dense(h), 1.0)
    assert_valid_weights(h)
    h = index_interpolation_matrix(2, [0.25, 1.75], periodic=True)
    np.testing.assert_allclose(dense(h), [[0.75, 0.25], [0.75, 0.25]])


def test_index_2d_reproduces_bilinear_fields():
    rng = np.random.default_rng(8)
    ny, nx = 7, 9
    iy, ix = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    field = 1.0 + 0.3 * iy - 0.2 * ix + 0.05 * iy * ix
    y, x = rng.uniform(0, ny - 1, 100), rng.uniform(0, nx - 1, 100)
    h = index_interpolation_matrix_2d((ny, nx), y, x)
    assert_valid_weights(h)
    np.testing.assert_allclose(
        dense(h) @ field.reshape(-1), 1.0 + 0.3 * y - 0.2 * x + 0.05 * y * x, atol=1e-12
    )
    hp = index_interpolation_matrix_2d((ny, nx), [-0.5], [8.5], periodic=(True, True))
    assert sorted(hp.col_indices().tolist()) == [0, 8, 54, 62]
    with pytest.raises(ShapeError, match="same length"):
        index_interpolation_matrix_2d((ny, nx), [1.0], [1.0, 2.0])


# --------------------------------------------------------------------------- #
# unstructured points
# --------------------------------------------------------------------------- #
def great_circle(lat1, lon1, lat2, lon2):
    a = np.stack(unit_xyz(lat1, lon1), -1)
    b = np.stack(unit_xyz(lat2, lon2), -1)
    return np.arccos(np.clip(a @ b.T, -1, 1))


@pytest.mark.parametrize("k", [1, 3])
def test_nearest_point_matrix_against_brute_force(k):
    rng = np.random.default_rng(9)
    slat = np.degrees(np.arcsin(rng.uniform(-1, 1, 400)))
    slon = rng.uniform(0, 360, 400)
    lat = np.degrees(np.arcsin(rng.uniform(-1, 1, 150)))
    lon = rng.uniform(-180, 180, 150)
    h = nearest_point_matrix(slat, slon, lat, lon, k=k)
    assert_valid_weights(h, max_nnz=k)
    d = great_circle(lat, lon, slat, slon)
    nearest = np.argsort(d, axis=1)[:, :k]
    w = 1.0 / np.take_along_axis(d, nearest, 1)
    expected = np.zeros_like(d)
    np.put_along_axis(expected, nearest, w / w.sum(1, keepdims=True), 1)
    np.testing.assert_allclose(dense(h), expected, atol=1e-10)


def test_nearest_point_exact_hits_and_errors():
    h = nearest_point_matrix([0.0, 10.0, 20.0], [0.0, 5.0, 10.0], [10.0], [365.0], k=3)
    np.testing.assert_allclose(dense(h), [[0.0, 1.0, 0.0]])
    with pytest.raises(ConfigError, match="k must be"):
        nearest_point_matrix([0.0], [0.0], [1.0], [1.0], k=2)
    with pytest.raises(ObservationError):
        nearest_point_matrix([0.0], [0.0], [100.0], [1.0])


# --------------------------------------------------------------------------- #
# latitude weights and module hygiene
# --------------------------------------------------------------------------- #
def test_cos_lat_weights():
    lat = torch.linspace(-90, 90, 181, dtype=torch.float64)
    w = cos_lat_weights(lat)
    assert w.mean().item() == pytest.approx(1.0)
    assert (w >= 0).all()
    assert w[90] / w[150] == pytest.approx(1 / np.cos(np.deg2rad(60.0)))
    assert cos_lat_weights(torch.tensor([0, 60])).dtype == torch.float64
    with pytest.raises(ConfigError):
        cos_lat_weights(torch.tensor([90.0, -90.0]))


@pytest.mark.parametrize("module", ["operators.py", "obs_geometry.py", "sparse_interp.py"])
def test_module_does_not_import_xarray(module):
    source = Path(__file__).resolve().parents[1] / "xlatda" / module
    tree = ast.parse(source.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    assert "xarray" not in names and "dask" not in names


def test_operators_module_re_exports_the_split_modules():
    import xlatda.obs_geometry as geometry
    import xlatda.operators as operators
    import xlatda.sparse_interp as kernel

    assert operators.ObservationOperator is kernel.ObservationOperator
    for name in geometry.__all__:
        assert getattr(operators, name) is getattr(geometry, name)
    assert set(operators.__all__) == {"ObservationOperator", *geometry.__all__}


# --------------------------------------------------------------------------- #
# accelerator code paths
# --------------------------------------------------------------------------- #
def test_torch_index_paths_match_numpy_paths():
    """The torch bookkeeping used on accelerators gives the same kernels as NumPy."""
    from xlatda.sparse_interp import _Kernel, _transpose

    op, _, _ = make_operator(n_obs=300, n_channels=2, spatial=(10, 20), seed=3)
    h = op.matrix
    x = torch.randn(5, h.shape[1], dtype=torch.float64)
    y = torch.randn(5, h.shape[0], dtype=torch.float64)
    for use_numpy in (True, False):
        kernel = _Kernel(h, sort_rows=True, use_numpy=use_numpy)
        torch.testing.assert_close(kernel(x), x @ op.dense().T, rtol=1e-12, atol=1e-12)
        ht = _transpose(h, use_numpy=use_numpy)
        torch.sparse_csr_tensor(
            ht.crow_indices(), ht.col_indices(), ht.values(), ht.shape, check_invariants=True
        )
        torch.testing.assert_close(ht.to_dense(), op.dense().T)
        back = _Kernel(ht, sort_rows=False, use_numpy=use_numpy)
        torch.testing.assert_close(back(y), y @ op.dense(), rtol=1e-12, atol=1e-12)


@pytest.mark.gpu
def test_operator_on_cuda_matches_cpu():
    op, _, _ = make_operator()
    x = torch.randn(4, 3, 12, 24, dtype=torch.float64)
    expected = op(x)
    xc = x.cuda().requires_grad_(True)
    y = op(xc)
    torch.testing.assert_close(y.cpu(), expected)
    (y**2).sum().backward()
    torch.testing.assert_close(xc.grad.cpu(), 2 * (expected @ op.dense()).reshape(x.shape))
    h = grid_interpolation_matrix([0.0, 10.0], [0.0, 10.0], [5.0], [5.0], device="cuda")
    assert h.device.type == "cuda"
